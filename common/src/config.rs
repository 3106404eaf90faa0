//! The plugin config (agent `plugin "nomad-driver-elide" { config {…} }`) and the task config
//! (job `config {…}`): their hclspec schemas, cty-msgpack decoding and validation.
//! Reference: docs/driver.md.

use crate::cty::{self, CtyError, Obj};
use crate::hclspec::{attr, block, default_, literal, literal_string, object};
use crate::paths::{DEFAULT_RUNTIME_DIR, MAX_SOCKET_PATH};
use crate::proto::hclspec::Spec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cty(#[from] CtyError),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// What guest code sees of the task environment (Elide hides host env by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestEnv {
    /// `--host:allow-env`: the runtime's own env, which is the task env.
    #[default]
    Host,
    /// `--env K=V` for NOMAD_* and the config `env` (values land in argv).
    Nomad,
    /// Nothing but what Elide always sets.
    None,
}

impl GuestEnv {
    pub const NAMES: &'static [&'static str] = &["host", "nomad", "none"];

    pub fn as_str(&self) -> &'static str {
        match self {
            GuestEnv::Host => "host",
            GuestEnv::Nomad => "nomad",
            GuestEnv::None => "none",
        }
    }

    fn parse(field: &str, v: &str) -> Result<Self, ConfigError> {
        match v {
            "host" => Ok(GuestEnv::Host),
            "nomad" => Ok(GuestEnv::Nomad),
            "none" => Ok(GuestEnv::None),
            other => Err(invalid(
                field,
                format!("{other:?} is not one of \"host\", \"nomad\", \"none\""),
            )),
        }
    }
}

/// Elide's subcommand for the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    #[default]
    Run,
    Serve,
    Test,
}

impl RunMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunMode::Run => "run",
            RunMode::Serve => "serve",
            RunMode::Test => "test",
        }
    }

    fn parse(field: &str, v: &str) -> Result<Self, ConfigError> {
        match v {
            "run" => Ok(RunMode::Run),
            "serve" => Ok(RunMode::Serve),
            "test" => Ok(RunMode::Test),
            other => Err(invalid(
                field,
                format!("{other:?} is not one of \"run\", \"serve\", \"test\""),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub enabled: bool,
    pub elide_binary: Option<PathBuf>,
    pub executor_binary: Option<PathBuf>,
    pub runtime_dir: PathBuf,
    pub guest_env: GuestEnv,
    pub runtime_options: Vec<String>,
    pub run_flags: Vec<String>,
    pub fingerprint_period: Duration,
    pub version_timeout: Duration,
    pub pids_limit: u64,
    pub heap_percent: u64,
    pub fifo_open_timeout: Duration,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            elide_binary: None,
            executor_binary: None,
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            guest_env: GuestEnv::Host,
            runtime_options: Vec::new(),
            run_flags: Vec::new(),
            fingerprint_period: Duration::from_secs(30),
            version_timeout: Duration::from_secs(10),
            pids_limit: 0,
            heap_percent: 75,
            fifo_open_timeout: Duration::from_secs(10),
        }
    }
}

const PLUGIN_KEYS: &[&str] = &[
    "enabled",
    "elide_binary",
    "executor_binary",
    "runtime_dir",
    "guest_env",
    "runtime_options",
    "run_flags",
    "fingerprint_period",
    "version_timeout",
    "pids_limit",
    "heap_percent",
    "fifo_open_timeout",
];

/// Room a socket name needs inside runtime_dir: "/" + 16 hex + ".sock".
const SOCKET_NAME_LEN: usize = 22;

fn with_default(name: &str, ty: &str, default: crate::proto::hclspec::Spec) -> Spec {
    default_(attr(name, ty, false), default)
}

fn duration_field(
    field: &str,
    v: Option<String>,
    default: Duration,
    min: Duration,
) -> Result<Duration, ConfigError> {
    let Some(s) = v else { return Ok(default) };
    let d = crate::duration::parse(&s).map_err(|e| invalid(field, e.to_string()))?;
    if d < min {
        return Err(invalid(
            field,
            format!("must be at least {}s, got {s:?}", min.as_secs_f64()),
        ));
    }
    Ok(d)
}

fn optional_path(v: Option<String>) -> Option<PathBuf> {
    v.filter(|s| !s.trim().is_empty()).map(PathBuf::from)
}

/// Extra Elide options must look like options, and never end option parsing early.
fn check_options(field: &str, opts: &[String]) -> Result<(), ConfigError> {
    for (i, o) in opts.iter().enumerate() {
        if o == "--" {
            return Err(invalid(
                &format!("{field}[{i}]"),
                "\"--\" is added by the driver before the script's args; remove it",
            ));
        }
        if o.contains('\0') {
            return Err(invalid(&format!("{field}[{i}]"), "contains a NUL byte"));
        }
    }
    if let Some(first) = opts.first() {
        if !first.starts_with('-') {
            return Err(invalid(
                &format!("{field}[0]"),
                format!("{first:?} is not an option (options start with \"-\")"),
            ));
        }
    }
    Ok(())
}

impl PluginConfig {
    pub fn schema() -> Spec {
        object(vec![
            ("enabled", with_default("enabled", "bool", literal("true"))),
            (
                "elide_binary",
                with_default("elide_binary", "string", literal_string("")),
            ),
            (
                "executor_binary",
                with_default("executor_binary", "string", literal_string("")),
            ),
            (
                "runtime_dir",
                with_default("runtime_dir", "string", literal_string(DEFAULT_RUNTIME_DIR)),
            ),
            (
                "guest_env",
                with_default("guest_env", "string", literal_string("host")),
            ),
            (
                "runtime_options",
                with_default("runtime_options", "list(string)", literal("[]")),
            ),
            (
                "run_flags",
                with_default("run_flags", "list(string)", literal("[]")),
            ),
            (
                "fingerprint_period",
                with_default("fingerprint_period", "string", literal_string("30s")),
            ),
            (
                "version_timeout",
                with_default("version_timeout", "string", literal_string("10s")),
            ),
            (
                "pids_limit",
                with_default("pids_limit", "number", literal("0")),
            ),
            (
                "heap_percent",
                with_default("heap_percent", "number", literal("75")),
            ),
            (
                "fifo_open_timeout",
                with_default("fifo_open_timeout", "string", literal_string("10s")),
            ),
        ])
    }

    /// Decodes and validates `SetConfigRequest.msgpack_config` (empty = all defaults).
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, ConfigError> {
        let value = cty::decode(bytes)?;
        let o = Obj::root(&value, "")?;
        o.deny_unknown(PLUGIN_KEYS)?;
        let d = PluginConfig::default();
        let runtime_dir = optional_path(o.string("runtime_dir")?).unwrap_or(d.runtime_dir);
        if !runtime_dir.is_absolute() {
            return Err(invalid(
                "runtime_dir",
                format!("{} must be an absolute path", runtime_dir.display()),
            ));
        }
        let len = runtime_dir.as_os_str().len();
        if len + SOCKET_NAME_LEN > MAX_SOCKET_PATH {
            return Err(invalid(
                "runtime_dir",
                format!(
                    "{} is {len} bytes; task sockets inside it would exceed the {MAX_SOCKET_PATH}-byte Unix socket limit, use a directory of at most {} bytes",
                    runtime_dir.display(),
                    MAX_SOCKET_PATH - SOCKET_NAME_LEN
                ),
            ));
        }
        let runtime_options = o.string_list("runtime_options")?;
        check_options("runtime_options", &runtime_options)?;
        let run_flags = o.string_list("run_flags")?;
        check_options("run_flags", &run_flags)?;
        Ok(PluginConfig {
            enabled: o.bool("enabled")?.unwrap_or(d.enabled),
            elide_binary: optional_path(o.string("elide_binary")?),
            executor_binary: optional_path(o.string("executor_binary")?),
            runtime_dir,
            guest_env: match o.string("guest_env")? {
                Some(s) => GuestEnv::parse("guest_env", &s)?,
                None => d.guest_env,
            },
            runtime_options,
            run_flags,
            fingerprint_period: duration_field(
                "fingerprint_period",
                o.string("fingerprint_period")?,
                d.fingerprint_period,
                Duration::from_secs(1),
            )?,
            version_timeout: duration_field(
                "version_timeout",
                o.string("version_timeout")?,
                d.version_timeout,
                Duration::from_millis(100),
            )?,
            pids_limit: o
                .integer("pids_limit", 0, i64::MAX)?
                .map(|n| n as u64)
                .unwrap_or(0),
            heap_percent: o
                .integer("heap_percent", 10, 95)?
                .map(|n| n as u64)
                .unwrap_or(d.heap_percent),
            fifo_open_timeout: duration_field(
                "fifo_open_timeout",
                o.string("fifo_open_timeout")?,
                d.fifo_open_timeout,
                Duration::from_millis(100),
            )?,
        })
    }
}

/// `elide_opts { … }` in the task config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ElideOpts {
    pub languages: Vec<String>,
    /// MiB; becomes `-Xmx<n>m`.
    pub memory_limit: Option<u64>,
    pub enable_ai: bool,
    pub elide_binary: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskConfig {
    pub script: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub mode: Option<RunMode>,
    pub guest_env: Option<GuestEnv>,
    pub runtime_options: Vec<String>,
    pub flags: Vec<String>,
    pub pids_limit: Option<u64>,
    pub elide_opts: Option<ElideOpts>,
}

const TASK_KEYS: &[&str] = &[
    "script",
    "args",
    "env",
    "mode",
    "guest_env",
    "runtime_options",
    "flags",
    "pids_limit",
    "elide_opts",
];
const ELIDE_OPTS_KEYS: &[&str] = &["languages", "memory_limit", "enable_ai", "elide_binary"];

/// Guest languages Elide knows (aliases normalised).
pub const LANGUAGES: &[&str] = &[
    "python",
    "javascript",
    "typescript",
    "jvm",
    "java",
    "kotlin",
    "ruby",
    "wasm",
    "llvm",
    "pkl",
];

fn normalise_language(field: &str, l: &str) -> Result<String, ConfigError> {
    let l = l.trim().to_ascii_lowercase();
    let n = match l.as_str() {
        "js" => "javascript",
        "ts" => "typescript",
        "py" => "python",
        "kt" => "kotlin",
        other => other,
    };
    if LANGUAGES.contains(&n) {
        Ok(n.to_owned())
    } else {
        Err(invalid(
            field,
            format!(
                "{l:?} is not a language Elide runs; use one of {}",
                LANGUAGES.join(", ")
            ),
        ))
    }
}

impl TaskConfig {
    pub fn schema() -> Spec {
        object(vec![
            ("script", attr("script", "string", true)),
            ("args", attr("args", "list(string)", false)),
            // `list(map(string))`, like the docker driver's `labels`: Nomad's job parser hands a
            // map attribute of a driver config block over as a one-element list of maps.
            ("env", attr("env", "list(map(string))", false)),
            ("mode", attr("mode", "string", false)),
            ("guest_env", attr("guest_env", "string", false)),
            (
                "runtime_options",
                attr("runtime_options", "list(string)", false),
            ),
            ("flags", attr("flags", "list(string)", false)),
            ("pids_limit", attr("pids_limit", "number", false)),
            (
                "elide_opts",
                block(
                    "elide_opts",
                    false,
                    object(vec![
                        ("languages", attr("languages", "list(string)", false)),
                        ("memory_limit", attr("memory_limit", "number", false)),
                        ("enable_ai", attr("enable_ai", "bool", false)),
                        ("elide_binary", attr("elide_binary", "string", false)),
                    ]),
                ),
            ),
        ])
    }

    /// Decodes and validates `TaskConfig.msgpack_driver_config`.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, ConfigError> {
        let value = cty::decode(bytes)?;
        let o = Obj::root(&value, "config")?;
        o.deny_unknown(TASK_KEYS)?;
        let script = o
            .string("script")?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                invalid(
                    "config.script",
                    "is required: the path of the app to run, e.g. \"local/app.py\"",
                )
            })?;
        if script.contains('\0') {
            return Err(invalid("config.script", "contains a NUL byte"));
        }
        let has_ext = std::path::Path::new(&script)
            .extension()
            .is_some_and(|e| !e.is_empty());
        if !has_ext {
            return Err(invalid(
                "config.script",
                format!("{script:?} has no file extension; Elide picks the language from it (.py, .js, .ts, .jar, …)"),
            ));
        }
        let runtime_options = o.string_list("runtime_options")?;
        check_options("config.runtime_options", &runtime_options)?;
        let flags = o.string_list("flags")?;
        check_options("config.flags", &flags)?;
        let elide_opts = match o.block("elide_opts")? {
            None => None,
            Some(b) => {
                b.deny_unknown(ELIDE_OPTS_KEYS)?;
                let languages = b
                    .string_list("languages")?
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        normalise_language(&format!("config.elide_opts.languages[{i}]"), l)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(ElideOpts {
                    languages,
                    memory_limit: b.integer("memory_limit", 1, 1 << 30)?.map(|n| n as u64),
                    enable_ai: b.bool("enable_ai")?.unwrap_or(false),
                    elide_binary: optional_path(b.string("elide_binary")?),
                })
            }
        };
        Ok(TaskConfig {
            script,
            args: o.string_list("args")?,
            env: o.string_map("env")?,
            mode: o
                .string("mode")?
                .map(|m| RunMode::parse("config.mode", &m))
                .transpose()?,
            guest_env: o
                .string("guest_env")?
                .map(|g| GuestEnv::parse("config.guest_env", &g))
                .transpose()?,
            runtime_options,
            flags,
            pids_limit: o.integer("pids_limit", 0, i64::MAX)?.map(|n| n as u64),
            elide_opts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::hclspec::spec::Block as B;
    use rmpv::Value;

    fn enc(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    }
    fn s(x: &str) -> Value {
        Value::from(x)
    }
    /// An object as cty encodes it: keys sorted bytewise.
    fn obj(mut pairs: Vec<(&str, Value)>) -> Value {
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        Value::Map(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
    }
    fn strs(xs: &[&str]) -> Value {
        Value::Array(xs.iter().map(|x| s(x)).collect())
    }

    /// The payload Nomad sends for a plugin block with defaults applied.
    fn plugin_payload(overrides: Vec<(&str, Value)>) -> Vec<u8> {
        let mut m: BTreeMap<&str, Value> = [
            ("enabled", Value::Boolean(true)),
            ("elide_binary", s("")),
            ("executor_binary", s("")),
            ("runtime_dir", s(DEFAULT_RUNTIME_DIR)),
            ("guest_env", s("host")),
            ("runtime_options", Value::Array(vec![])),
            ("run_flags", Value::Array(vec![])),
            ("fingerprint_period", s("30s")),
            ("version_timeout", s("10s")),
            ("pids_limit", Value::from(0u8)),
            ("heap_percent", Value::from(75u8)),
            ("fifo_open_timeout", s("10s")),
        ]
        .into_iter()
        .collect();
        for (k, v) in overrides {
            m.insert(k, v);
        }
        enc(&obj(m.into_iter().collect()))
    }

    #[test]
    fn plugin_defaults_round_trip() {
        assert_eq!(
            PluginConfig::from_msgpack(&plugin_payload(vec![])).unwrap(),
            PluginConfig::default()
        );
        assert_eq!(
            PluginConfig::from_msgpack(&[]).unwrap(),
            PluginConfig::default()
        );
    }

    #[test]
    fn plugin_values_decode_including_decimal_strings() {
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![
            ("elide_binary", s("/opt/elide/elide")),
            ("guest_env", s("nomad")),
            ("pids_limit", s("512")),
            ("heap_percent", Value::F64(60.0)),
            ("fingerprint_period", s("1m")),
            ("run_flags", strs(&["--js:esm"])),
        ]))
        .unwrap();
        assert_eq!(
            c.elide_binary.as_deref(),
            Some(std::path::Path::new("/opt/elide/elide"))
        );
        assert_eq!(c.guest_env, GuestEnv::Nomad);
        assert_eq!(c.pids_limit, 512);
        assert_eq!(c.heap_percent, 60);
        assert_eq!(c.fingerprint_period, Duration::from_secs(60));
        assert_eq!(c.run_flags, ["--js:esm"]);
    }

    #[test]
    fn plugin_errors_name_the_field() {
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (vec![("enabled", s("maybe"))], "enabled: expected a bool"),
            (
                vec![("guest_env", s("everything"))],
                "guest_env: \"everything\" is not one of",
            ),
            (
                vec![("pids_limit", s("lots"))],
                "pids_limit: expected a whole number",
            ),
            (
                vec![("heap_percent", Value::from(99u8))],
                "heap_percent: must be between 10 and 95",
            ),
            (
                vec![("runtime_dir", s("relative"))],
                "runtime_dir: relative must be an absolute path",
            ),
            (
                vec![("runtime_dir", s(&format!("/{}", "x".repeat(90))))],
                "runtime_dir:",
            ),
            (
                vec![("fingerprint_period", s("soon"))],
                "fingerprint_period: invalid duration",
            ),
            (vec![("run_flags", strs(&["--"]))], "run_flags[0]"),
            (
                vec![("runtime_options", strs(&["Xmx1g"]))],
                "runtime_options[0]",
            ),
            (vec![("bogus", Value::Nil)], "bogus: unknown key"),
        ];
        for (over, want) in cases {
            let e = PluginConfig::from_msgpack(&plugin_payload(over))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "want {want:?} in {e:?}");
        }
    }

    /// A task payload as cty encodes it: every schema key present, nil when absent.
    fn task_payload(overrides: Vec<(&str, Value)>) -> Vec<u8> {
        let mut m: BTreeMap<&str, Value> = TASK_KEYS.iter().map(|k| (*k, Value::Nil)).collect();
        m.insert("script", s("local/app.py"));
        for (k, v) in overrides {
            m.insert(k, v);
        }
        enc(&obj(m.into_iter().collect()))
    }

    #[test]
    fn task_minimal_and_full() {
        let t = TaskConfig::from_msgpack(&task_payload(vec![])).unwrap();
        assert_eq!(t.script, "local/app.py");
        assert!(t.args.is_empty() && t.env.is_empty() && t.elide_opts.is_none());
        let opts = obj(vec![
            ("languages", strs(&["python", "js"])),
            ("memory_limit", s("512")),
            ("enable_ai", Value::Boolean(true)),
            ("elide_binary", Value::Nil),
        ]);
        for elide_opts in [opts.clone(), Value::Array(vec![opts])] {
            let t = TaskConfig::from_msgpack(&task_payload(vec![
                ("args", strs(&["--port", "8080"])),
                (
                    "env",
                    Value::Array(vec![
                        obj(vec![("LOG_LEVEL", s("info"))]),
                        obj(vec![("B", s("2"))]),
                    ]),
                ),
                ("mode", s("serve")),
                ("guest_env", s("none")),
                ("pids_limit", Value::from(100u8)),
                ("elide_opts", elide_opts),
            ]))
            .unwrap();
            assert_eq!(t.args, ["--port", "8080"]);
            assert_eq!(t.env["LOG_LEVEL"], "info");
            assert_eq!(t.env["B"], "2");
            assert_eq!(t.mode, Some(RunMode::Serve));
            assert_eq!(t.guest_env, Some(GuestEnv::None));
            assert_eq!(t.pids_limit, Some(100));
            let o = t.elide_opts.unwrap();
            assert_eq!(o.languages, ["python", "javascript"]);
            assert_eq!(o.memory_limit, Some(512));
            assert!(o.enable_ai);
        }
    }

    #[test]
    fn task_errors_name_the_field() {
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (vec![("script", Value::Nil)], "config.script: is required"),
            (
                vec![("script", s("local/app"))],
                "config.script: \"local/app\" has no file extension",
            ),
            (
                vec![("script", Value::from(5u8))],
                "config.script: expected a string, got number 5",
            ),
            (
                vec![("args", s("x"))],
                "config.args: expected a list of strings",
            ),
            (
                vec![("mode", s("daemon"))],
                "config.mode: \"daemon\" is not one of",
            ),
            (
                vec![("elide_opts", obj(vec![("languages", strs(&["cobol"]))]))],
                "config.elide_opts.languages[0]: \"cobol\" is not a language",
            ),
            (
                vec![("elide_opts", obj(vec![("memory_limit", s("lots"))]))],
                "config.elide_opts.memory_limit: expected a whole number",
            ),
            (vec![("flags", strs(&["--"]))], "config.flags[0]"),
            (vec![("colour", s("x"))], "config.colour: unknown key"),
        ];
        for (over, want) in cases {
            let e = TaskConfig::from_msgpack(&task_payload(over))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "want {want:?} in {e:?}");
        }
    }

    #[test]
    fn schemas_have_named_attrs_and_object_roots() {
        for spec in [PluginConfig::schema(), TaskConfig::schema()] {
            let Some(B::Object(o)) = spec.block.as_ref() else {
                panic!("root must be an object")
            };
            for (k, v) in &o.attributes {
                if let Some(B::Default(d)) = v.block.as_ref() {
                    let Some(B::Attr(a)) = d.primary.as_ref().and_then(|p| p.block.as_ref()) else {
                        panic!("{k}: default must wrap an attr")
                    };
                    assert_eq!(&a.name, k, "an Attr inside a Default needs its name");
                }
            }
        }
        let mut names = Vec::new();
        crate::hclspec::attribute_names(&PluginConfig::schema(), &mut names);
        names.sort();
        let mut keys: Vec<String> = PLUGIN_KEYS.iter().map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(names, keys);
        let Some(B::Object(o)) = TaskConfig::schema().block else {
            unreachable!()
        };
        let Some(B::Attr(script)) = o.attributes["script"].block.clone() else {
            unreachable!()
        };
        assert!(script.required);
    }
}
