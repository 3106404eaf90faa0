//! The plugin config (agent `plugin "nomad-driver-elide" { config {…} }`) and the task config
//! (job `config {…}`): their hclspec schemas, cty-msgpack decoding and validation.
//! Reference: docs/driver.md.

use crate::cty::{self, CtyError, Obj};
use crate::hclspec::{attr, block, block_list, default_, hcl_quote, literal, object};
use crate::runtime_args::{self, RuntimeArg};
use common::capabilities::{self, CapName};
use common::error::FieldError;
use common::paths::{DEFAULT_RUNTIME_DIR, MAX_SOCKET_PATH};
use common::proto::hclspec::Spec;
use common::sandbox::{FsIsolation, IdRanges, NamespaceMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cty(#[from] CtyError),
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(FieldError::new(field, message))
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

/// Who writes a task's log files (`log_collection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogCollection {
    /// The task's shim reads its output and writes Nomad's rotated log files; the plugin
    /// reports `DisableLogCollection`, so Nomad (>= 1.6) starts no `logmon` for the task.
    #[default]
    Executor,
    /// Nomad's `logmon` per task, fed through FIFOs (rotation from the job's `logs {}`).
    Nomad,
}

impl LogCollection {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogCollection::Executor => "executor",
            LogCollection::Nomad => "nomad",
        }
    }

    fn parse(field: &str, v: &str) -> Result<Self, ConfigError> {
        match v {
            "executor" => Ok(LogCollection::Executor),
            "nomad" => Ok(LogCollection::Nomad),
            other => Err(invalid(
                field,
                format!("{other:?} is not one of \"executor\", \"nomad\""),
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
    /// Capabilities a task may have (Nomad exec's `allow_caps`).
    pub allow_caps: Vec<CapName>,
    pub default_pid_mode: NamespaceMode,
    pub default_ipc_mode: NamespaceMode,
    pub fs_isolation: FsIsolation,
    /// Host paths no task may see, inside the allow-listed view (on top of the credential
    /// stores of `/etc`, Nomad's data dir and the runtime dir, which the view never shows).
    pub hidden_paths: Vec<PathBuf>,
    /// Host paths the task sees read-only at their own paths, on top of the default
    /// allow-list (`common::sandbox::DEFAULT_HOST_PATHS`).
    pub extra_host_paths: Vec<PathBuf>,
    /// raw_exec's `denied_host_uids` / `denied_host_gids` (`"0,1000-1999"`).
    pub denied_host_uids: String,
    pub denied_host_gids: String,
    /// Directories whose files a job may name as an absolute `script` (outside its task
    /// dir). Empty: absolute scripts outside the task dir are refused.
    pub absolute_script_dirs: Vec<PathBuf>,
    pub log_collection: LogCollection,
    /// Defaults of the tasks' `log_max_files` / `log_max_file_size` (MiB), for
    /// `log_collection = "executor"`.
    pub log_max_files: u32,
    pub log_max_file_size: u64,
    /// Named Elide installs a job may pick (`elide_opts.elide_version`), besides the default
    /// (`elide_binary`). Only these binaries (and the default) ever run, and only their
    /// install dirs are made visible in the sandbox.
    pub elide_versions: BTreeMap<String, PathBuf>,
    /// Operator consent for a job's `pid_mode = "host"` / `ipc_mode = "host"` (a
    /// `default_*_mode = "host"` counts as consent too).
    pub allow_host_pid: bool,
    pub allow_host_ipc: bool,
    /// Whether a task whose cgroup (or one of its limits) cannot be set up may still run,
    /// without limits. Default: such a task fails to start.
    pub allow_no_cgroup: bool,
    /// The tasks' syscall filter (`seccomp = "default"`), compiled for this host with the
    /// operator's `seccomp_denied_syscalls`; None with `seccomp = "off"`.
    pub seccomp: Option<common::seccomp::Filters>,
    pub seccomp_denied_syscalls: Vec<String>,
    /// The node-wide model cache (`elide_opts { model {} }`, driver/src/models): a
    /// root-only directory, never visible to tasks.
    pub model_cache_dir: PathBuf,
    /// Unreferenced models are evicted, least recently used first, above this size (MiB).
    pub model_cache_max_mb: u64,
    /// Replaces `https://huggingface.co` for the `repo`/`file` shorthand (air-gapped nodes).
    pub model_mirror: String,
    /// Hosts on internal (loopback, private, link-local …) addresses a job's model may be
    /// fetched from; public addresses need no listing (driver/src/models/egress.rs).
    pub model_internal_hosts: Vec<String>,
    /// `telemetry { prometheus_listen = "…" }`: where the plugin serves its Prometheus
    /// metrics (checked and bound by the plugin, driver/src/metrics); None: off.
    pub prometheus_listen: Option<String>,
}

/// `model_cache_dir` when the plugin config names none.
pub const DEFAULT_MODEL_CACHE_DIR: &str = "/var/lib/nomad-driver-elide/models";
/// `model_cache_max_mb` when the plugin config names none: 50 GiB.
pub const DEFAULT_MODEL_CACHE_MAX_MB: u64 = 50 * 1024;

impl PluginConfig {
    /// Whether jobs may run in the host's PID namespace.
    pub fn host_pid_allowed(&self) -> bool {
        self.allow_host_pid || self.default_pid_mode == NamespaceMode::Host
    }

    /// Whether jobs may run in the host's IPC namespace.
    pub fn host_ipc_allowed(&self) -> bool {
        self.allow_host_ipc || self.default_ipc_mode == NamespaceMode::Host
    }
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
            fifo_open_timeout: common::spec::DEFAULT_FIFO_OPEN_TIMEOUT,
            allow_caps: capabilities::driver_defaults(),
            default_pid_mode: NamespaceMode::Private,
            default_ipc_mode: NamespaceMode::Private,
            fs_isolation: FsIsolation::Readonly,
            hidden_paths: common::sandbox::DEFAULT_HIDDEN_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
            extra_host_paths: Vec::new(),
            denied_host_uids: String::new(),
            denied_host_gids: String::new(),
            absolute_script_dirs: Vec::new(),
            log_collection: LogCollection::Executor,
            log_max_files: common::spec::DEFAULT_LOG_MAX_FILES,
            log_max_file_size: common::spec::DEFAULT_LOG_MAX_FILE_SIZE_MB,
            elide_versions: BTreeMap::new(),
            allow_host_pid: false,
            allow_host_ipc: false,
            allow_no_cgroup: false,
            // None only on an architecture without a filter, where SetConfig says so.
            seccomp: common::seccomp::Filters::compile(&[]).ok(),
            seccomp_denied_syscalls: Vec::new(),
            model_cache_dir: PathBuf::from(DEFAULT_MODEL_CACHE_DIR),
            model_cache_max_mb: DEFAULT_MODEL_CACHE_MAX_MB,
            model_mirror: String::new(),
            model_internal_hosts: Vec::new(),
            prometheus_listen: None,
        }
    }
}

/// One option of a config block, described once: the schema Nomad sees, the keys decoding
/// accepts and the defaults all derive from the option tables ([`PLUGIN_OPTIONS`],
/// [`TASK_OPTIONS`], …). Decoding reads each option by name (`from_msgpack`).
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: OptionKind,
    /// What the option does, in a line (docs/driver.md has the long form).
    pub doc: &'static str,
}

/// How an option is declared in the hclspec schema.
#[derive(Debug, Clone, Copy)]
pub enum OptionKind {
    /// `attr(name, ty, required)`: Nomad refuses a config without it.
    Required { ty: &'static str },
    /// `attr(name, ty)`: null when absent.
    Optional { ty: &'static str },
    /// `default(attr(name, ty), literal)`: Nomad fills the literal in when absent, so the
    /// literal is the option's default value.
    Defaulted {
        ty: &'static str,
        default: DefaultLiteral,
    },
    /// A nested block, built by hand (its own options usually come from a table too).
    Block(fn() -> Spec),
}

/// A default, as the HCL expression text of the schema's `literal`.
#[derive(Debug, Clone, Copy)]
pub enum DefaultLiteral {
    /// An expression as written: `true`, `75`, `[]`.
    Hcl(&'static str),
    /// A string, quoted for HCL.
    Str(&'static str),
    /// An expression computed from a Rust constant (a list, a number).
    Computed(fn() -> String),
}

impl DefaultLiteral {
    /// The HCL expression text.
    pub fn hcl(&self) -> String {
        match self {
            DefaultLiteral::Hcl(expr) => (*expr).to_owned(),
            DefaultLiteral::Str(text) => hcl_quote(text),
            DefaultLiteral::Computed(expr) => expr(),
        }
    }
}

impl OptionSpec {
    const fn required(name: &'static str, ty: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            kind: OptionKind::Required { ty },
            doc,
        }
    }

    const fn optional(name: &'static str, ty: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            kind: OptionKind::Optional { ty },
            doc,
        }
    }

    const fn defaulted(
        name: &'static str,
        ty: &'static str,
        default: DefaultLiteral,
        doc: &'static str,
    ) -> Self {
        Self {
            name,
            kind: OptionKind::Defaulted { ty, default },
            doc,
        }
    }

    const fn block(name: &'static str, build: fn() -> Spec, doc: &'static str) -> Self {
        Self {
            name,
            kind: OptionKind::Block(build),
            doc,
        }
    }

    /// The option's `(key, spec)` entry in its block's schema object.
    fn schema_entry(&self) -> (&'static str, Spec) {
        let spec = match self.kind {
            OptionKind::Required { ty } => attr(self.name, ty, true),
            OptionKind::Optional { ty } => attr(self.name, ty, false),
            // The attribute inside a Default needs its name.
            OptionKind::Defaulted { ty, default } => {
                default_(attr(self.name, ty, false), literal(&default.hcl()))
            }
            OptionKind::Block(build) => build(),
        };
        (self.name, spec)
    }
}

/// The schema object of a table's options.
pub fn options_schema(options: &[OptionSpec]) -> Spec {
    object(options.iter().map(OptionSpec::schema_entry).collect())
}

/// The keys of a table's options (what `deny_unknown` accepts).
pub fn option_names(options: &[OptionSpec]) -> Vec<&'static str> {
    options.iter().map(|o| o.name).collect()
}

use DefaultLiteral::{Computed, Hcl, Str};

/// The plugin config. Every option has a default (or is a block), so Nomad sends all of
/// them and an empty block means defaults; `PluginConfig::default()` must decode from these
/// literals (tested).
#[rustfmt::skip]
pub const PLUGIN_OPTIONS: &[OptionSpec] = &[
    OptionSpec::defaulted("enabled", "bool", Hcl("true"), "false: the driver fingerprints as disabled"),
    OptionSpec::defaulted("elide_binary", "string", Str(""), "the default Elide binary; empty: searched (docs/driver.md)"),
    OptionSpec::defaulted("executor_binary", "string", Str(""), "the per-task shim; empty: searched (docs/driver.md)"),
    OptionSpec::defaulted("runtime_dir", "string", Str(DEFAULT_RUNTIME_DIR), "shim sockets and the node-wide task index"),
    OptionSpec::defaulted("guest_env", "string", Str("host"), "what guest code sees of the task env: host, nomad, none"),
    OptionSpec::defaulted("runtime_options", "list(string)", Hcl("[]"), "Elide runtime options for every task"),
    OptionSpec::defaulted("run_flags", "list(string)", Hcl("[]"), "`elide run` flags for every task"),
    OptionSpec::defaulted("fingerprint_period", "string", Str("30s"), "how often the node is fingerprinted"),
    OptionSpec::defaulted("version_timeout", "string", Str("10s"), "how long `elide --version` may take"),
    OptionSpec::defaulted("pids_limit", "number", Hcl("0"), "0: unlimited; else a ceiling for jobs"),
    OptionSpec::defaulted("heap_percent", "number", Hcl("75"), "-Xmx share of the task's memory limit"),
    OptionSpec::defaulted("fifo_open_timeout", "string", Str("10s"), "how long the shim waits for Nomad's log FIFOs (log_collection = \"nomad\")"),
    OptionSpec::defaulted("allow_caps", "list(string)", Computed(|| quoted_list(capabilities::DRIVER_DEFAULTS)), "capabilities a task may have"),
    OptionSpec::defaulted("default_pid_mode", "string", Str("private"), "the tasks' PID namespace: private or host"),
    OptionSpec::defaulted("default_ipc_mode", "string", Str("private"), "the tasks' IPC namespace: private or host"),
    OptionSpec::defaulted("fs_isolation", "string", Str("readonly"), "the tasks' view of the host: readonly or none"),
    OptionSpec::defaulted("hidden_paths", "list(string)", Computed(|| quoted_list(common::sandbox::DEFAULT_HIDDEN_PATHS)), "host paths no task may see"),
    OptionSpec::defaulted("extra_host_paths", "list(string)", Hcl("[]"), "host paths tasks see read-only, beyond the defaults"),
    OptionSpec::defaulted("denied_host_uids", "string", Str(""), "user IDs a task may not run as"),
    OptionSpec::defaulted("denied_host_gids", "string", Str(""), "group IDs a task may not run as"),
    OptionSpec::defaulted("absolute_script_dirs", "list(string)", Hcl("[]"), "directories a job's absolute `script` may be in"),
    OptionSpec::defaulted("log_collection", "string", Str("executor"), "who writes the task logs: executor or nomad"),
    OptionSpec::defaulted("log_max_files", "number", Computed(|| common::spec::DEFAULT_LOG_MAX_FILES.to_string()), "rotated log files kept per stream"),
    OptionSpec::defaulted("log_max_file_size", "number", Computed(|| common::spec::DEFAULT_LOG_MAX_FILE_SIZE_MB.to_string()), "log file size (MiB) before rotation"),
    // `list(map(string))`: the agent's HCL1 parser hands a map attribute of a plugin config
    // over as a one-element list of maps (as with the task config's `env`).
    OptionSpec::defaulted("elide_versions", "list(map(string))", Hcl("[]"), "named Elide binaries a job may pick"),
    OptionSpec::defaulted("allow_host_pid", "bool", Hcl("false"), "whether a job may use the host PID namespace"),
    OptionSpec::defaulted("allow_host_ipc", "bool", Hcl("false"), "whether a job may use the host IPC namespace"),
    OptionSpec::defaulted("allow_no_cgroup", "bool", Hcl("false"), "whether a task may run without its cgroup limits"),
    OptionSpec::defaulted("seccomp", "string", Str("default"), "the tasks' syscall filter: default or off"),
    OptionSpec::defaulted("seccomp_denied_syscalls", "list(string)", Hcl("[]"), "syscalls denied on top of the default filter"),
    OptionSpec::defaulted("model_cache_dir", "string", Str(DEFAULT_MODEL_CACHE_DIR), "the node's model cache"),
    OptionSpec::defaulted("model_cache_max_mb", "number", Computed(|| DEFAULT_MODEL_CACHE_MAX_MB.to_string()), "model cache size (MiB) above which models are evicted"),
    OptionSpec::defaulted("model_mirror", "string", Str(""), "a Hugging Face mirror for the repo/file shorthand"),
    OptionSpec::defaulted("model_internal_hosts", "list(string)", Hcl("[]"), "hosts on internal addresses models may come from"),
    OptionSpec::block("telemetry", telemetry_block, "`telemetry { prometheus_listen }`: the metrics endpoint; absent: off"),
];

/// `telemetry { … }` in the plugin config.
const TELEMETRY_OPTIONS: &[OptionSpec] = &[OptionSpec::optional(
    "prometheus_listen",
    "string",
    "host:port of the Prometheus metrics endpoint",
)];

fn telemetry_block() -> Spec {
    block("telemetry", false, options_schema(TELEMETRY_OPTIONS))
}

/// `pids_limit` may not exceed the kernel's PID_MAX_LIMIT.
const MAX_PIDS: i64 = common::spec::MAX_PIDS_LIMIT as i64;

/// Room a socket name needs inside runtime_dir: "/" + 16 hex + ".sock".
const SOCKET_NAME_LEN: usize = 22;

fn duration_field(
    field: &str,
    v: Option<String>,
    default: Duration,
    (min, max): (Duration, Duration),
) -> Result<Duration, ConfigError> {
    let Some(s) = v else { return Ok(default) };
    let d = common::duration::parse(&s).map_err(|e| invalid(field, e.to_string()))?;
    if d < min || d > max {
        return Err(invalid(
            field,
            format!(
                "must be between {} and {}, got {s:?}",
                common::duration::format(min),
                common::duration::format(max)
            ),
        ));
    }
    Ok(d)
}

/// Ranges of the plugin's durations: long enough to work, short enough to mean something
/// (and to be added to a clock or sent as milliseconds without overflow).
const FINGERPRINT_PERIOD_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3_600));
const VERSION_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(600));
const FIFO_OPEN_TIMEOUT_RANGE: (Duration, Duration) = (
    Duration::from_millis(100),
    Duration::from_millis(common::spec::MAX_FIFO_OPEN_TIMEOUT_MS),
);

fn no_nul(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.contains('\0') {
        return Err(invalid(field, "contains a NUL byte; remove it"));
    }
    Ok(())
}

/// A path setting where "" (or blanks) means "not set, search for it".
fn optional_path(field: &str, v: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    match v.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => {
            no_nul(field, &s)?;
            Ok(Some(PathBuf::from(s)))
        }
    }
}

/// Where a list of extra options goes on Elide's command line.
#[derive(Debug, Clone, Copy)]
enum OptionList {
    /// Before the subcommand: only the words GraalVM's runtime takes (see [`runtime_args`]).
    Runtime { flags_field: &'static str },
    /// After the subcommand: Elide's own flags.
    Flags { runtime_field: &'static str },
}

/// Extra Elide options: every item is one option (values joined with "=", as in
/// `--python:engine=native`), so nothing can be taken for the script, and none ends option
/// parsing early. Runtime options must be words GraalVM's runtime takes; flags must not be,
/// since GraalVM would take them wherever they stand (docs/elide.md).
fn check_options(field: &str, opts: &[String], list: OptionList) -> Result<(), ConfigError> {
    for (i, o) in opts.iter().enumerate() {
        let item = format!("{field}[{i}]");
        no_nul(&item, o)?;
        if o == "--" {
            return Err(invalid(
                &item,
                "\"--\" is added by the driver before the script's args; remove it",
            ));
        }
        if !o.starts_with('-') || o == "-" {
            return Err(invalid(
                &item,
                format!(
                    "{o:?} is not an option; every item must start with \"-\" (give an option's value in the same item, e.g. \"--timeout=5\")"
                ),
            ));
        }
        let kind = runtime_args::classify(o);
        match list {
            OptionList::Runtime { flags_field } => check_runtime_option(&item, o, kind, flags_field)?,
            OptionList::Flags { runtime_field } => match kind {
                Some(k) if k.is_runtime_option() => {
                    return Err(invalid(
                        &item,
                        format!(
                            "{o:?} is a GraalVM runtime option, not an Elide flag: {}; put it in {runtime_field}",
                            k.why()
                        ),
                    ))
                }
                Some(k) => {
                    return Err(invalid(
                        &item,
                        format!("{o:?} would not reach Elide's option parser: {}; remove it", k.why()),
                    ))
                }
                None => {}
            },
        }
    }
    Ok(())
}

fn check_runtime_option(
    item: &str,
    o: &str,
    kind: Option<RuntimeArg>,
    flags_field: &str,
) -> Result<(), ConfigError> {
    let message = match kind {
        Some(RuntimeArg::Size(s)) if !runtime_args::is_valid_size(&o[s.flag().len()..]) => format!(
            "{o:?}: {} needs a size such as 512m or 2g (digits and an optional k, m, g or t); GraalVM aborts Elide on anything else",
            s.flag()
        ),
        Some(RuntimeArg::VmOption) if !runtime_args::is_valid_vm_option(o) => format!(
            "{o:?} is not a valid -XX option: use -XX:+Name, -XX:-Name or -XX:Name=value"
        ),
        Some(k) if k.is_runtime_option() => return Ok(()),
        Some(RuntimeArg::BareProperty) => format!(
            "{o:?} has no value: GraalVM takes only -D<name>=<value> as a system property, e.g. \"{o}=true\""
        ),
        _ => format!(
            "{o:?} is not a GraalVM runtime option (-XX:..., -Xmx/-Xms/-Xmn/-Xss<size>, -D<name>=<value>); Elide's own flags go in {flags_field}"
        ),
    };
    Err(invalid(item, message))
}

/// Guest args are passed after `--`, but GraalVM's runtime and Elide take some words out of
/// the whole command line before `main` (see [`runtime_args`]): refuse them, all named at once.
fn check_guest_args(args: &[String]) -> Result<(), ConfigError> {
    let taken: Vec<String> = args
        .iter()
        .enumerate()
        .filter_map(|(i, a)| runtime_args::classify(a).map(|k| format!("[{i}] {a:?}: {}", k.why())))
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    Err(invalid(
        "config.args",
        format!(
            "{} never reach the guest: {}. Give the guest such values another way (config.env, a file, or an option spelled without a leading \"-D\"/\"-X\", e.g. \"--mode=fast\"); settings for Elide itself go in config.runtime_options, its heap in elide_opts.memory_limit",
            if taken.len() == 1 { "1 argument would".to_owned() } else { format!("{} arguments would", taken.len()) },
            taken.join("; ")
        ),
    ))
}

impl PluginConfig {
    pub fn schema() -> Spec {
        options_schema(PLUGIN_OPTIONS)
    }

    /// Decodes and validates `SetConfigRequest.msgpack_config` (empty = all defaults).
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, ConfigError> {
        let value = cty::decode(bytes)?;
        let o = Obj::root(&value, "")?;
        o.deny_unknown(&option_names(PLUGIN_OPTIONS))?;
        let d = PluginConfig::default();
        let runtime_dir =
            optional_path("runtime_dir", o.string("runtime_dir")?)?.unwrap_or(d.runtime_dir);
        if !runtime_dir.is_absolute() {
            return Err(invalid(
                "runtime_dir",
                format!(
                    "{} must be an absolute path, e.g. {DEFAULT_RUNTIME_DIR}",
                    runtime_dir.display()
                ),
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
        check_options(
            "runtime_options",
            &runtime_options,
            OptionList::Runtime {
                flags_field: "run_flags",
            },
        )?;
        let run_flags = o.string_list("run_flags")?;
        check_options(
            "run_flags",
            &run_flags,
            OptionList::Flags {
                runtime_field: "runtime_options",
            },
        )?;
        let mut absolute_script_dirs = Vec::new();
        for (i, dir) in o.string_list("absolute_script_dirs")?.iter().enumerate() {
            let field = format!("absolute_script_dirs[{i}]");
            no_nul(&field, dir)?;
            let p = PathBuf::from(dir);
            let plain = p
                .components()
                .all(|c| !matches!(c, std::path::Component::ParentDir));
            if !p.is_absolute() || !plain || p.parent().is_none() {
                return Err(invalid(
                    &field,
                    format!("{dir:?} must be an absolute directory other than \"/\", without \"..\", e.g. \"/opt/elide-apps\""),
                ));
            }
            absolute_script_dirs.push(p);
        }
        let (seccomp, seccomp_denied_syscalls) = seccomp_filters(&o)?;
        let model_cache_dir = optional_path("model_cache_dir", o.string("model_cache_dir")?)?
            .unwrap_or(d.model_cache_dir);
        if !model_cache_dir.is_absolute() || model_cache_dir.parent().is_none() {
            return Err(invalid(
                "model_cache_dir",
                format!(
                    "{} must be an absolute directory other than \"/\", e.g. {DEFAULT_MODEL_CACHE_DIR}",
                    model_cache_dir.display()
                ),
            ));
        }
        let model_mirror = o.string("model_mirror")?.unwrap_or_default();
        let model_mirror = model_mirror.trim().to_owned();
        let is_url = model_mirror.starts_with("http://") || model_mirror.starts_with("https://");
        if !model_mirror.is_empty() && !is_url {
            return Err(invalid(
                "model_mirror",
                format!(
                    "{:?} must be an http:// or https:// base URL (a Hugging Face mirror), or empty",
                    crate::model_ref::redact_url(&model_mirror)
                ),
            ));
        }
        let mut model_internal_hosts = Vec::new();
        for (i, host) in o.string_list("model_internal_hosts")?.iter().enumerate() {
            if !crate::models::egress::is_plain_host(host) {
                return Err(invalid(
                    &format!("model_internal_hosts[{i}]"),
                    format!("{host:?} must be a host name or IP address, without scheme, port or path, e.g. \"models.internal\" or \"10.0.0.5\""),
                ));
            }
            model_internal_hosts.push(host.trim().to_owned());
        }
        Ok(PluginConfig {
            model_internal_hosts,
            model_cache_dir,
            model_cache_max_mb: o
                .integer("model_cache_max_mb", 0, 1 << 40)?
                .map(|n| n as u64)
                .unwrap_or(d.model_cache_max_mb),
            model_mirror,
            seccomp,
            seccomp_denied_syscalls,
            absolute_script_dirs,
            enabled: o.bool("enabled")?.unwrap_or(d.enabled),
            elide_binary: optional_path("elide_binary", o.string("elide_binary")?)?,
            executor_binary: optional_path("executor_binary", o.string("executor_binary")?)?,
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
                FINGERPRINT_PERIOD_RANGE,
            )?,
            version_timeout: duration_field(
                "version_timeout",
                o.string("version_timeout")?,
                d.version_timeout,
                VERSION_TIMEOUT_RANGE,
            )?,
            pids_limit: o
                .integer("pids_limit", 0, MAX_PIDS)?
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
                FIFO_OPEN_TIMEOUT_RANGE,
            )?,
            // Present but empty allows nothing; absent (no schema defaults applied) is the
            // default list.
            allow_caps: match o.get("allow_caps") {
                Some(_) => cap_names("allow_caps", &o.string_list("allow_caps")?)?,
                None => d.allow_caps,
            },
            default_pid_mode: namespace_mode("default_pid_mode", o.string("default_pid_mode")?)?
                .unwrap_or(d.default_pid_mode),
            default_ipc_mode: namespace_mode("default_ipc_mode", o.string("default_ipc_mode")?)?
                .unwrap_or(d.default_ipc_mode),
            fs_isolation: match o.string("fs_isolation")? {
                None => d.fs_isolation,
                Some(v) => FsIsolation::parse(&v).ok_or_else(|| {
                    invalid(
                        "fs_isolation",
                        format!("{v:?} is not one of \"readonly\", \"none\""),
                    )
                })?,
            },
            // Present but empty hides nothing more; absent is the default list.
            hidden_paths: match o.get("hidden_paths") {
                Some(_) => host_path_list("hidden_paths", o.string_list("hidden_paths")?)?,
                None => d.hidden_paths,
            },
            extra_host_paths: host_path_list(
                "extra_host_paths",
                o.string_list("extra_host_paths")?,
            )?,
            denied_host_uids: id_ranges("denied_host_uids", o.string("denied_host_uids")?)?,
            denied_host_gids: id_ranges("denied_host_gids", o.string("denied_host_gids")?)?,
            log_collection: match o.string("log_collection")? {
                Some(s) => LogCollection::parse("log_collection", &s)?,
                None => d.log_collection,
            },
            log_max_files: log_max_files(&o, "log_max_files")?.unwrap_or(d.log_max_files),
            log_max_file_size: log_max_file_size(&o, "log_max_file_size")?
                .unwrap_or(d.log_max_file_size),
            elide_versions: elide_versions(o.string_map("elide_versions")?)?,
            allow_host_pid: o.bool("allow_host_pid")?.unwrap_or(d.allow_host_pid),
            allow_host_ipc: o.bool("allow_host_ipc")?.unwrap_or(d.allow_host_ipc),
            allow_no_cgroup: o.bool("allow_no_cgroup")?.unwrap_or(d.allow_no_cgroup),
            prometheus_listen: match o.block("telemetry")? {
                Some(t) => {
                    t.deny_unknown(&option_names(TELEMETRY_OPTIONS))?;
                    t.string("prometheus_listen")?.filter(|a| !a.is_empty())
                }
                None => None,
            },
        })
    }
}

/// Whether `name` can name an Elide install: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting
/// with `-` or `.` (e.g. "1.0", "beta10", "current").
pub fn is_version_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `elide_versions`: names as [`is_version_name`], each an absolute path without `..`.
fn elide_versions(map: BTreeMap<String, String>) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, path) in map {
        let field = format!("elide_versions.{name}");
        if !is_version_name(&name) {
            return Err(invalid(
                "elide_versions",
                format!("{name:?} is not a valid name: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '-' or '.', e.g. \"1.0\""),
            ));
        }
        no_nul(&field, &path)?;
        let p = PathBuf::from(&path);
        let plain = p
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
        if !p.is_absolute() || !plain || p.file_name().is_none() {
            return Err(invalid(
                &field,
                format!("{path:?} must be the absolute path of an Elide binary, without \"..\", e.g. \"/opt/elide-1.0/elide\""),
            ));
        }
        out.insert(name, p);
    }
    Ok(out)
}

/// `seccomp` ("default" or "off") and `seccomp_denied_syscalls`, compiled for this host.
fn seccomp_filters(
    o: &Obj<'_>,
) -> Result<(Option<common::seccomp::Filters>, Vec<String>), ConfigError> {
    let extra = o.string_list("seccomp_denied_syscalls")?;
    for (i, n) in extra.iter().enumerate() {
        no_nul(&format!("seccomp_denied_syscalls[{i}]"), n)?;
    }
    match o.string("seccomp")?.as_deref().unwrap_or("default") {
        "default" => common::seccomp::Filters::compile(&extra)
            .map(|f| (Some(f), extra))
            .map_err(|e| match e.field.as_str() {
                "" => e.within("seccomp").into(),
                _ => e.within("seccomp_denied_syscalls").into(),
            }),
        "off" if !extra.is_empty() => Err(invalid(
            "seccomp_denied_syscalls",
            "has no effect with seccomp = \"off\"; remove it or set seccomp = \"default\"",
        )),
        "off" => Ok((None, extra)),
        other => Err(invalid(
            "seccomp",
            format!("{other:?} is not one of \"default\", \"off\""),
        )),
    }
}

/// An HCL list literal of strings.
fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|c| format!("{c:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A list of capability names (`allow_caps`, `cap_add`, `cap_drop`), normalised.
fn cap_names(field: &str, names: &[String]) -> Result<Vec<CapName>, ConfigError> {
    capabilities::parse_names(names).map_err(|e| e.within(field).into())
}

fn namespace_mode(field: &str, v: Option<String>) -> Result<Option<NamespaceMode>, ConfigError> {
    v.map(|v| {
        NamespaceMode::parse(&v)
            .ok_or_else(|| invalid(field, format!("{v:?} is not one of \"private\", \"host\"")))
    })
    .transpose()
}

/// `hidden_paths`, `extra_host_paths`: absolute paths, never `/` itself.
fn host_path_list(name: &str, list: Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
    list.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("{name}[{i}]");
            no_nul(&field, &p)?;
            let path = PathBuf::from(&p);
            if !path.is_absolute() || path.parent().is_none() {
                return Err(invalid(
                    &field,
                    format!("{p:?} must be an absolute path other than \"/\""),
                ));
            }
            Ok(path)
        })
        .collect()
}

fn id_ranges(field: &str, v: Option<String>) -> Result<String, ConfigError> {
    let v = v.unwrap_or_default();
    IdRanges::parse(&v).map_err(|e| e.within(field))?;
    Ok(v.trim().to_owned())
}

/// `log_max_files` (plugin or task config): 1 or more.
fn log_max_files(o: &Obj<'_>, key: &str) -> Result<Option<u32>, ConfigError> {
    Ok(o.integer(key, 1, common::spec::MAX_LOG_MAX_FILES as i64)?
        .map(|n| n as u32))
}

/// `log_max_file_size` (plugin or task config), MiB: 1 or more.
fn log_max_file_size(o: &Obj<'_>, key: &str) -> Result<Option<u64>, ConfigError> {
    Ok(
        o.integer(key, 1, common::spec::MAX_LOG_MAX_FILE_SIZE_MB as i64)?
            .map(|n| n as u64),
    )
}

/// `elide_opts { … }` in the task config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ElideOpts {
    pub languages: Vec<String>,
    /// MiB; becomes `-Xmx<n>m`.
    pub memory_limit: Option<u64>,
    pub enable_ai: bool,
    /// One of the operator's Elide binaries by path: the plugin's `elide_binary` or an
    /// `elide_versions` entry (anything else is refused at start, naming what is allowed).
    pub elide_binary: Option<PathBuf>,
    /// One of the operator's `elide_versions` by name.
    pub elide_version: Option<String>,
    /// Whether Elide loads `.env`/`.env.local` from the project root (the task dir) into the
    /// guest env; `None` = Elide's default (on). `Some(false)` passes `--env:dotenv=false`.
    pub dotenv: Option<bool>,
    /// `model { … }` blocks: files fetched into the node's model cache and bound read-only
    /// at `local/models/<name>` (crate::model_ref).
    pub models: Vec<crate::model_ref::ModelRef>,
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
    /// Nomad exec's `cap_add` / `cap_drop` (checked against `allow_caps` at start).
    pub cap_add: Vec<CapName>,
    pub cap_drop: Vec<CapName>,
    /// Overrides `default_pid_mode` / `default_ipc_mode`.
    pub pid_mode: Option<NamespaceMode>,
    pub ipc_mode: Option<NamespaceMode>,
    /// Overrides of the plugin's `log_max_files` / `log_max_file_size` (MiB) for this task
    /// (Nomad does not pass the job's `logs {}` block to drivers).
    pub log_max_files: Option<u32>,
    pub log_max_file_size: Option<u64>,
}

/// The task config (the job's `config {}`): only `script` is required; absent options are
/// null and `TaskConfig::default()` / the plugin's settings apply.
#[rustfmt::skip]
pub const TASK_OPTIONS: &[OptionSpec] = &[
    OptionSpec::required("script", "string", "the app to run, e.g. local/app.py"),
    OptionSpec::optional("args", "list(string)", "arguments for the app"),
    // `list(map(string))`, like the docker driver's `labels`: Nomad's job parser hands a map
    // attribute of a driver config block over as a one-element list of maps.
    OptionSpec::optional("env", "list(map(string))", "environment variables for the app"),
    OptionSpec::optional("mode", "string", "run, serve or test"),
    OptionSpec::optional("guest_env", "string", "overrides the plugin's guest_env"),
    OptionSpec::optional("runtime_options", "list(string)", "Elide runtime options"),
    OptionSpec::optional("flags", "list(string)", "`elide run` flags"),
    OptionSpec::optional("pids_limit", "number", "the task's PID limit"),
    OptionSpec::optional("cap_add", "list(string)", "capabilities to add (within allow_caps)"),
    OptionSpec::optional("cap_drop", "list(string)", "capabilities to drop"),
    OptionSpec::optional("pid_mode", "string", "overrides default_pid_mode"),
    OptionSpec::optional("ipc_mode", "string", "overrides default_ipc_mode"),
    OptionSpec::optional("log_max_files", "number", "overrides the plugin's log_max_files"),
    OptionSpec::optional("log_max_file_size", "number", "overrides the plugin's log_max_file_size (MiB)"),
    OptionSpec::block("elide_opts", elide_opts_block, "`elide_opts { … }`: languages, heap, AI, Elide version, models"),
];

/// `elide_opts { … }` in the task config.
#[rustfmt::skip]
const ELIDE_OPTS_OPTIONS: &[OptionSpec] = &[
    OptionSpec::optional("languages", "list(string)", "guest languages to enable"),
    OptionSpec::optional("memory_limit", "number", "JVM heap (MiB), -Xmx"),
    OptionSpec::optional("enable_ai", "bool", "true: HF_HOME in alloc/data so models survive restarts"),
    OptionSpec::optional("elide_binary", "string", "one of the operator's Elide binaries, by path"),
    OptionSpec::optional("elide_version", "string", "one of the operator's elide_versions, by name"),
    OptionSpec::optional("dotenv", "bool", "whether Elide loads .env files"),
    OptionSpec::block("model", model_block, "`model { … }` blocks: files from the node's model cache"),
];

/// `model { … }` in `elide_opts`.
#[rustfmt::skip]
const MODEL_OPTIONS: &[OptionSpec] = &[
    OptionSpec::optional("source", "string", "the model's URL"),
    OptionSpec::optional("sha256", "string", "the file's SHA-256 (required)"),
    OptionSpec::optional("name", "string", "the file name under local/models/; default: the file's base name"),
    OptionSpec::optional("repo", "string", "Hugging Face repo (with file)"),
    OptionSpec::optional("file", "string", "file in the Hugging Face repo"),
    OptionSpec::optional("revision", "string", "Hugging Face revision; default main"),
];

fn elide_opts_block() -> Spec {
    block("elide_opts", false, options_schema(ELIDE_OPTS_OPTIONS))
}

fn model_block() -> Spec {
    block_list("model", 0, 0, options_schema(MODEL_OPTIONS))
}

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

/// What `elide_opts.languages` accepts: [`LANGUAGES`] plus the aliases `js` and `ts`.
pub const LANGUAGE_NAMES: &[&str] = &[
    "python",
    "js",
    "javascript",
    "ts",
    "typescript",
    "jvm",
    "java",
    "kotlin",
    "ruby",
    "wasm",
    "llvm",
    "pkl",
];

/// Lower-cases and resolves the aliases `js` → `javascript`, `ts` → `typescript`.
pub fn normalise_language(field: &str, l: &str) -> Result<String, ConfigError> {
    let lower = l.trim().to_ascii_lowercase();
    let n = match lower.as_str() {
        "js" => "javascript",
        "ts" => "typescript",
        other => other,
    };
    if LANGUAGES.contains(&n) {
        Ok(n.to_owned())
    } else {
        Err(invalid(
            field,
            format!(
                "{l:?} is not a language Elide runs; use one of {}",
                LANGUAGE_NAMES.join(", ")
            ),
        ))
    }
}

impl TaskConfig {
    pub fn schema() -> Spec {
        options_schema(TASK_OPTIONS)
    }

    /// Decodes and validates `TaskConfig.msgpack_driver_config`.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, ConfigError> {
        let value = cty::decode(bytes)?;
        let o = Obj::root(&value, "config")?;
        o.deny_unknown(&option_names(TASK_OPTIONS))?;
        let script = o
            .string("script")?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                invalid(
                    "config.script",
                    "is required: the path of the app to run, e.g. \"local/app.py\"",
                )
            })?;
        no_nul("config.script", &script)?;
        let has_ext = std::path::Path::new(&script)
            .extension()
            .is_some_and(|e| !e.is_empty());
        if !has_ext {
            return Err(invalid(
                "config.script",
                format!("{script:?} has no file extension; Elide picks the language from it (.py, .js, .ts, .jar, …)"),
            ));
        }
        if script.contains('=') {
            // Elide's `--env` (picocli, arity 0..N) takes every following KEY=VALUE word.
            return Err(invalid(
                "config.script",
                format!("{script:?} contains \"=\": Elide's --env option takes every KEY=VALUE word that follows it, so the script could be read as an environment variable; rename the file"),
            ));
        }
        let args = o.string_list("args")?;
        for (i, a) in args.iter().enumerate() {
            no_nul(&format!("config.args[{i}]"), a)?;
        }
        check_guest_args(&args)?;
        let env = o.string_map("env")?;
        for (k, v) in &env {
            // A valid name never starts with "-", which with guest_env = "nomad" would make
            // the argv word "K=V" after `--env` read as an option.
            common::env::check_var(k, v).map_err(|e| invalid("config.env", e.to_string()))?;
        }
        let runtime_options = o.string_list("runtime_options")?;
        check_options(
            "config.runtime_options",
            &runtime_options,
            OptionList::Runtime {
                flags_field: "config.flags",
            },
        )?;
        let flags = o.string_list("flags")?;
        check_options(
            "config.flags",
            &flags,
            OptionList::Flags {
                runtime_field: "config.runtime_options",
            },
        )?;
        let elide_opts = match o.block("elide_opts")? {
            None => None,
            Some(b) => {
                b.deny_unknown(&option_names(ELIDE_OPTS_OPTIONS))?;
                let mut languages: Vec<String> = Vec::new();
                for (i, l) in b.string_list("languages")?.iter().enumerate() {
                    let n = normalise_language(&format!("config.elide_opts.languages[{i}]"), l)?;
                    if !languages.contains(&n) {
                        languages.push(n);
                    }
                }
                let memory_limit = b
                    .integer("memory_limit", 1, common::spec::MAX_MEMORY_MB as i64)?
                    .map(|n| n as u64);
                if memory_limit.is_some() && runtime_options.iter().any(|o| o.starts_with("-Xmx")) {
                    return Err(invalid(
                        "config.elide_opts.memory_limit",
                        "and an -Xmx in config.runtime_options both set the heap; keep one",
                    ));
                }
                let elide_binary =
                    optional_path("config.elide_opts.elide_binary", b.string("elide_binary")?)?;
                let elide_version = b.string("elide_version")?.filter(|s| !s.trim().is_empty());
                if let Some(v) = &elide_version {
                    if !is_version_name(v) {
                        return Err(invalid(
                            "config.elide_opts.elide_version",
                            format!("{v:?} is not a version name (letters, digits, '.', '_', '-'); use a name from the node's driver.elide.versions attribute"),
                        ));
                    }
                    if elide_binary.is_some() {
                        return Err(invalid(
                            "config.elide_opts.elide_version",
                            "and elide_binary both pick the Elide binary; keep one (elide_version, by name)",
                        ));
                    }
                }
                let mut models = Vec::new();
                for (i, m) in b.block_list("model")?.iter().enumerate() {
                    m.deny_unknown(&option_names(MODEL_OPTIONS))?;
                    let raw = crate::model_ref::RawModel {
                        source: m.string("source")?,
                        sha256: m.string("sha256")?,
                        name: m.string("name")?,
                        repo: m.string("repo")?,
                        file: m.string("file")?,
                        revision: m.string("revision")?,
                    };
                    let field = format!("config.elide_opts.model[{i}]");
                    models.push(
                        crate::model_ref::parse(&field, raw)
                            .map_err(|e| invalid(&e.field, e.message))?,
                    );
                }
                crate::model_ref::check_list("config.elide_opts.model", &models)
                    .map_err(|e| invalid(&e.field, e.message))?;
                Some(ElideOpts {
                    models,
                    languages,
                    memory_limit,
                    enable_ai: b.bool("enable_ai")?.unwrap_or(false),
                    elide_binary,
                    elide_version,
                    dotenv: b.bool("dotenv")?,
                })
            }
        };
        Ok(TaskConfig {
            script,
            args,
            env,
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
            pids_limit: o.integer("pids_limit", 0, MAX_PIDS)?.map(|n| n as u64),
            elide_opts,
            cap_add: cap_names("config.cap_add", &o.string_list("cap_add")?)?,
            cap_drop: cap_names("config.cap_drop", &o.string_list("cap_drop")?)?,
            pid_mode: namespace_mode("config.pid_mode", o.string("pid_mode")?)?,
            ipc_mode: namespace_mode("config.ipc_mode", o.string("ipc_mode")?)?,
            log_max_files: log_max_files(&o, "log_max_files")?,
            log_max_file_size: log_max_file_size(&o, "log_max_file_size")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cty::payload::{enc, obj, s, strs};
    use common::proto::hclspec::spec::Block as B;
    use rmpv::Value;

    /// The top-level keys of a schema (and of a nested block's object).
    fn schema_keys(spec: &Spec) -> Vec<String> {
        let Some(B::Object(o)) = spec.block.as_ref() else {
            panic!("not an object: {}", crate::hclspec::render(spec))
        };
        let mut keys: Vec<String> = o.attributes.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// The payload Nomad sends for a plugin block with defaults applied: every key present,
    /// sorted, ints in their smallest form.
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
            ("allow_caps", strs(capabilities::DRIVER_DEFAULTS)),
            ("default_pid_mode", s("private")),
            ("default_ipc_mode", s("private")),
            ("fs_isolation", s("readonly")),
            ("hidden_paths", strs(common::sandbox::DEFAULT_HIDDEN_PATHS)),
            ("extra_host_paths", Value::Array(vec![])),
            ("denied_host_uids", s("")),
            ("denied_host_gids", s("")),
            ("absolute_script_dirs", Value::Array(vec![])),
            ("log_collection", s("executor")),
            ("log_max_files", Value::from(10u8)),
            ("log_max_file_size", Value::from(10u8)),
            ("elide_versions", Value::Array(vec![])),
            ("allow_host_pid", Value::Boolean(false)),
            ("allow_host_ipc", Value::Boolean(false)),
            ("allow_no_cgroup", Value::Boolean(false)),
            ("seccomp", s("default")),
            ("seccomp_denied_syscalls", Value::Array(vec![])),
            ("model_cache_dir", s(DEFAULT_MODEL_CACHE_DIR)),
            (
                "model_cache_max_mb",
                Value::from(DEFAULT_MODEL_CACHE_MAX_MB),
            ),
            ("model_mirror", s("")),
            ("model_internal_hosts", Value::Array(vec![])),
            // A block, not an attribute: null when the agent config has none.
            ("telemetry", Value::Nil),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            m.keys().copied().collect::<Vec<_>>(),
            schema_keys(&PluginConfig::schema())
        );
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
        // An empty object (no schema defaults applied) also gives the defaults.
        assert_eq!(
            PluginConfig::from_msgpack(&[0x80]).unwrap(),
            PluginConfig::default()
        );
    }

    #[test]
    fn plugin_values_decode_including_decimal_strings() {
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![
            ("enabled", Value::Boolean(false)),
            ("elide_binary", s("/opt/elide/elide")),
            ("executor_binary", s("  ")),
            ("runtime_dir", s("/run/x")),
            ("guest_env", s("nomad")),
            ("pids_limit", s("512")),
            ("heap_percent", Value::F64(60.0)),
            ("fingerprint_period", s("1m")),
            ("version_timeout", s("2.5s")),
            ("fifo_open_timeout", s("500ms")),
            ("log_collection", s("nomad")),
            ("log_max_files", s("3")),
            ("log_max_file_size", Value::from(1u8)),
            (
                "runtime_options",
                strs(&["-XX:+PrintGC", "-Xss4m", "-Dfoo=a=b", "-Djdk.graal.Dump="]),
            ),
            ("run_flags", strs(&["--js:esm", "--python:engine=native"])),
            ("absolute_script_dirs", strs(&["/opt/apps"])),
        ]))
        .unwrap();
        assert!(!c.enabled);
        assert_eq!(c.absolute_script_dirs, [PathBuf::from("/opt/apps")]);
        assert_eq!(
            c.elide_binary.as_deref(),
            Some(std::path::Path::new("/opt/elide/elide"))
        );
        assert_eq!(c.executor_binary, None);
        assert_eq!(c.runtime_dir, PathBuf::from("/run/x"));
        assert_eq!(c.guest_env, GuestEnv::Nomad);
        assert_eq!(c.pids_limit, 512);
        assert_eq!(c.heap_percent, 60);
        assert_eq!(c.fingerprint_period, Duration::from_secs(60));
        assert_eq!(c.version_timeout, Duration::from_millis(2500));
        assert_eq!(c.fifo_open_timeout, Duration::from_millis(500));
        assert_eq!(c.log_collection, LogCollection::Nomad);
        assert_eq!((c.log_max_files, c.log_max_file_size), (3, 1));
        assert_eq!(
            c.runtime_options,
            ["-XX:+PrintGC", "-Xss4m", "-Dfoo=a=b", "-Djdk.graal.Dump="]
        );
        assert_eq!(c.run_flags, ["--js:esm", "--python:engine=native"]);
    }

    /// `elide_versions` (as the agent's HCL1 parser sends a map: a list of one map, or a
    /// map) and the isolation consents; bad names and paths name the entry.
    #[test]
    fn elide_versions_and_consents_decode_and_are_checked() {
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![
            (
                "elide_versions",
                Value::Array(vec![obj(vec![
                    ("1.0", s("/opt/elide-1.0/elide")),
                    ("beta11", s("/opt/elide-beta11/bin/elide")),
                ])]),
            ),
            ("allow_host_pid", Value::Boolean(true)),
            ("allow_no_cgroup", Value::Boolean(true)),
        ]))
        .unwrap();
        assert_eq!(
            c.elide_versions,
            [
                ("1.0".to_owned(), PathBuf::from("/opt/elide-1.0/elide")),
                (
                    "beta11".to_owned(),
                    PathBuf::from("/opt/elide-beta11/bin/elide")
                ),
            ]
            .into_iter()
            .collect()
        );
        assert!(c.allow_host_pid && !c.allow_host_ipc && c.allow_no_cgroup);
        assert!(c.host_pid_allowed() && !c.host_ipc_allowed());
        // A host default is the operator's consent too.
        let d = PluginConfig::from_msgpack(&plugin_payload(vec![("default_ipc_mode", s("host"))]))
            .unwrap();
        assert!(d.host_ipc_allowed() && !d.host_pid_allowed());
        let plain = obj(vec![("cur", s("/opt/e/elide"))]);
        let c =
            PluginConfig::from_msgpack(&plugin_payload(vec![("elide_versions", plain)])).unwrap();
        assert_eq!(c.elide_versions["cur"], PathBuf::from("/opt/e/elide"));
        for (v, want) in [
            (
                obj(vec![("-x", s("/opt/e/elide"))]),
                "elide_versions: \"-x\" is not a valid name",
            ),
            (
                obj(vec![("a b", s("/opt/e/elide"))]),
                "elide_versions: \"a b\" is not a valid name",
            ),
            (
                obj(vec![("1.0", s("elide"))]),
                "elide_versions.1.0: \"elide\" must be the absolute path of an Elide binary",
            ),
            (
                obj(vec![("1.0", s("/opt/../tmp/elide"))]),
                "elide_versions.1.0: \"/opt/../tmp/elide\" must be",
            ),
            (obj(vec![("1.0", Value::from(1u8))]), "elide_versions"),
        ] {
            let e = PluginConfig::from_msgpack(&plugin_payload(vec![("elide_versions", v)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "want {want:?} at the start of {e:?}");
        }
        let e = PluginConfig::from_msgpack(&plugin_payload(vec![("allow_host_ipc", s("yes"))]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("allow_host_ipc: expected a bool"), "{e}");
    }

    #[test]
    fn a_job_picks_elide_by_version_name_or_listed_path_never_both() {
        let t = TaskConfig::from_msgpack(&task_payload(vec![(
            "elide_opts",
            elide_opts(vec![("elide_version", s("1.0"))]),
        )]))
        .unwrap();
        assert_eq!(t.elide_opts.unwrap().elide_version.as_deref(), Some("1.0"));
        for (opts, want) in [
            (
                vec![("elide_version", s("--version"))],
                "config.elide_opts.elide_version: \"--version\" is not a version name",
            ),
            (
                vec![
                    ("elide_version", s("1.0")),
                    ("elide_binary", s("/opt/e/elide")),
                ],
                "config.elide_opts.elide_version: and elide_binary both pick",
            ),
        ] {
            let e = TaskConfig::from_msgpack(&task_payload(vec![("elide_opts", elide_opts(opts))]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "want {want:?} at the start of {e:?}");
        }
    }

    #[test]
    fn seccomp_is_on_by_default_extendable_and_names_are_checked() {
        let d = PluginConfig::from_msgpack(&plugin_payload(vec![])).unwrap();
        let f = d.seccomp.expect("a filter by default");
        assert!(f.private_pid.denied.iter().any(|n| n == "keyctl"));
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![(
            "seccomp_denied_syscalls",
            strs(&["ptrace", "personality"]),
        )]))
        .unwrap();
        assert_eq!(c.seccomp_denied_syscalls, ["ptrace", "personality"]);
        let f = c.seccomp.unwrap();
        assert!(f.private_pid.denied.iter().any(|n| n == "ptrace"));
        let off = PluginConfig::from_msgpack(&plugin_payload(vec![("seccomp", s("off"))])).unwrap();
        assert!(off.seccomp.is_none());
        for (field, v, want) in [
            (
                "seccomp_denied_syscalls",
                strs(&["keyctl", "keyctll"]),
                "seccomp_denied_syscalls[1]: \"keyctll\" is not a system call on",
            ),
            (
                "seccomp",
                s("strict"),
                "seccomp: \"strict\" is not one of \"default\", \"off\"",
            ),
        ] {
            let e = PluginConfig::from_msgpack(&plugin_payload(vec![(field, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e}");
        }
        let e = PluginConfig::from_msgpack(&plugin_payload(vec![
            ("seccomp", s("off")),
            ("seccomp_denied_syscalls", strs(&["ptrace"])),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("no effect with seccomp = \"off\""), "{e}");
    }

    #[test]
    fn runtime_dir_must_leave_room_for_sockets() {
        // len + 22 > 107 is refused: 85 bytes is the longest allowed.
        let ok = format!("/{}", "d".repeat(84));
        assert_eq!(ok.len(), 85);
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![("runtime_dir", s(&ok))])).unwrap();
        assert_eq!(c.runtime_dir, PathBuf::from(&ok));
        let long = format!("/{}", "d".repeat(85));
        let e = PluginConfig::from_msgpack(&plugin_payload(vec![("runtime_dir", s(&long))]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("runtime_dir: {long} is 86 bytes")),
            "{e}"
        );
        assert!(e.contains("at most 85 bytes"), "{e}");
    }

    #[test]
    fn sandbox_options_decode_and_name_the_field_when_wrong() {
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![
            ("allow_caps", strs(&["CAP_KILL", "chown", "kill"])),
            ("default_pid_mode", s("host")),
            ("default_ipc_mode", s("host")),
            ("fs_isolation", s("none")),
            ("hidden_paths", strs(&["/root", "/etc/nomad.d"])),
            ("extra_host_paths", strs(&["/srv/models", "/var/lib/app"])),
            ("denied_host_uids", s(" 0,1000-1999 ")),
            ("denied_host_gids", s("0")),
        ]))
        .unwrap();
        assert_eq!(
            c.allow_caps.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            ["kill", "chown"]
        );
        assert_eq!(c.default_pid_mode, NamespaceMode::Host);
        assert_eq!(c.default_ipc_mode, NamespaceMode::Host);
        assert_eq!(c.fs_isolation, FsIsolation::None);
        assert_eq!(
            c.hidden_paths,
            [PathBuf::from("/root"), PathBuf::from("/etc/nomad.d")]
        );
        assert_eq!(
            c.extra_host_paths,
            [PathBuf::from("/srv/models"), PathBuf::from("/var/lib/app")]
        );
        assert_eq!(c.denied_host_uids, "0,1000-1999");
        assert_eq!(c.denied_host_gids, "0");
        let none =
            PluginConfig::from_msgpack(&plugin_payload(vec![("allow_caps", Value::Array(vec![]))]))
                .unwrap();
        assert!(
            none.allow_caps.is_empty(),
            "an empty allow_caps allows nothing"
        );
        for (over, want) in [
            (
                ("allow_caps", strs(&["chown", "sys_admn"])),
                "allow_caps[1]: \"sys_admn\" is not a Linux capability",
            ),
            (
                ("default_pid_mode", s("shared")),
                "default_pid_mode: \"shared\" is not one of \"private\", \"host\"",
            ),
            (
                ("fs_isolation", s("chroot")),
                "fs_isolation: \"chroot\" is not one of \"readonly\", \"none\"",
            ),
            (
                ("hidden_paths", strs(&["relative"])),
                "hidden_paths[0]: \"relative\" must be an absolute path",
            ),
            (
                ("hidden_paths", strs(&["/"])),
                "hidden_paths[0]: \"/\" must be",
            ),
            (
                ("extra_host_paths", strs(&["/srv", "srv"])),
                "extra_host_paths[1]: \"srv\" must be an absolute path",
            ),
            (
                ("denied_host_uids", s("0-x")),
                "denied_host_uids: \"0-x\" is not an id or a range",
            ),
            (
                ("denied_host_gids", s("9-1")),
                "denied_host_gids: \"9-1\": the lower bound is greater",
            ),
        ] {
            let e = PluginConfig::from_msgpack(&plugin_payload(vec![over]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "want {want:?} at the start of {e:?}");
        }
    }

    #[test]
    fn telemetry_block_is_off_by_default_and_carries_the_listen_address() {
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![])).unwrap();
        assert_eq!(c.prometheus_listen, None);
        let t = |v: Value| obj(vec![("prometheus_listen", v)]);
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![(
            "telemetry",
            t(s("127.0.0.1:9469")),
        )]))
        .unwrap();
        assert_eq!(c.prometheus_listen.as_deref(), Some("127.0.0.1:9469"));
        // An empty block (or address) is off.
        let c = PluginConfig::from_msgpack(&plugin_payload(vec![("telemetry", t(Value::Nil))]))
            .unwrap();
        assert_eq!(c.prometheus_listen, None);
    }

    #[test]
    fn plugin_errors_name_the_field() {
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (
                vec![("enabled", s("maybe"))],
                "enabled: expected a bool, got string \"maybe\"",
            ),
            (
                vec![("guest_env", s("everything"))],
                "guest_env: \"everything\" is not one of \"host\", \"nomad\", \"none\"",
            ),
            (
                vec![("pids_limit", s("lots"))],
                "pids_limit: expected a whole number, got string \"lots\"",
            ),
            (
                vec![("pids_limit", Value::from(-1i8))],
                "pids_limit: must be between 0 and 4194304, got -1",
            ),
            (
                vec![("pids_limit", Value::from(u64::MAX))],
                "pids_limit: must be between 0 and 4194304, got 18446744073709551615",
            ),
            (
                vec![("fingerprint_period", s("2562047h"))],
                "fingerprint_period: must be between 1s and 24h0m0s",
            ),
            (
                vec![("fifo_open_timeout", s("2h"))],
                "fifo_open_timeout: must be between 100ms and 1h0m0s",
            ),
            (
                vec![("log_collection", s("logmon"))],
                "log_collection: \"logmon\" is not one of \"executor\", \"nomad\"",
            ),
            (
                vec![("log_max_file_size", Value::from(0u8))],
                "log_max_file_size: must be between 1 and 1048576, got 0",
            ),
            (
                vec![("heap_percent", Value::from(99u8))],
                "heap_percent: must be between 10 and 95, got 99",
            ),
            (
                vec![("heap_percent", s("50.5"))],
                "heap_percent: must be a whole number, got 50.5",
            ),
            (
                vec![("runtime_dir", s("relative"))],
                "runtime_dir: relative must be an absolute path",
            ),
            (
                vec![("absolute_script_dirs", strs(&["/opt/ok", "apps"]))],
                "absolute_script_dirs[1]: \"apps\" must be an absolute directory",
            ),
            (
                vec![("absolute_script_dirs", strs(&["/"]))],
                "absolute_script_dirs[0]: \"/\" must be an absolute directory other than",
            ),
            (
                vec![("absolute_script_dirs", strs(&["/opt/../etc"]))],
                "absolute_script_dirs[0]: \"/opt/../etc\" must be",
            ),
            (
                vec![("elide_binary", s("/x\0y"))],
                "elide_binary: contains a NUL byte",
            ),
            (
                vec![("fingerprint_period", s("soon"))],
                "fingerprint_period: invalid duration \"soon\"",
            ),
            (
                vec![("fingerprint_period", s("500ms"))],
                "fingerprint_period: must be between 1s and 24h0m0s, got \"500ms\"",
            ),
            (
                vec![("version_timeout", s("0s"))],
                "version_timeout: must be between 100ms and 10m0s",
            ),
            (
                vec![("fifo_open_timeout", Value::from(10u8))],
                "fifo_open_timeout: expected a string, got number 10",
            ),
            (
                vec![("run_flags", strs(&["--"]))],
                "run_flags[0]: \"--\" is added by the driver",
            ),
            (
                vec![("run_flags", strs(&["--timeout", "5"]))],
                "run_flags[1]: \"5\" is not an option; every item must start with \"-\"",
            ),
            (
                vec![("runtime_options", strs(&["Xmx1g"]))],
                "runtime_options[0]: \"Xmx1g\" is not an option",
            ),
            (
                vec![("runtime_options", s("-Xmx1g"))],
                "runtime_options: expected a list of strings, got string \"-Xmx1g\"",
            ),
            (
                vec![("runtime_options", strs(&["-XX:+PrintGC", "--vm.Xss=4m"]))],
                "runtime_options[1]: \"--vm.Xss=4m\" is not a GraalVM runtime option (-XX:..., -Xmx/-Xms/-Xmn/-Xss<size>, -D<name>=<value>); Elide's own flags go in run_flags",
            ),
            (
                vec![("runtime_options", strs(&["-Xmx1.5g"]))],
                "runtime_options[0]: \"-Xmx1.5g\": -Xmx needs a size such as 512m or 2g",
            ),
            (
                vec![("runtime_options", strs(&["-XX:PrintGC"]))],
                "runtime_options[0]: \"-XX:PrintGC\" is not a valid -XX option",
            ),
            (
                vec![("runtime_options", strs(&["-Dverbose"]))],
                "runtime_options[0]: \"-Dverbose\" has no value: GraalVM takes only -D<name>=<value>",
            ),
            (
                vec![("run_flags", strs(&["--js:esm", "-Xmx2g"]))],
                "run_flags[1]: \"-Xmx2g\" is a GraalVM runtime option, not an Elide flag: GraalVM's runtime takes every -Xmx<size> word",
            ),
            (
                vec![("run_flags", strs(&["-Dx"]))],
                "run_flags[0]: \"-Dx\" would not reach Elide's option parser: Elide sets every -D<name> word",
            ),
            (
                vec![("bogus", Value::Nil)],
                "bogus: unknown key; remove it (valid keys: enabled, ",
            ),
        ];
        for (over, want) in cases {
            let e = PluginConfig::from_msgpack(&plugin_payload(over))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "want {want:?} at the start of {e:?}");
        }
        let e = PluginConfig::from_msgpack(&[0x81, 0xa1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid msgpack"), "{e}");
    }

    /// A task payload as cty encodes it: every schema key present, nil when absent.
    fn task_payload(overrides: Vec<(&str, Value)>) -> Vec<u8> {
        let mut m: BTreeMap<&str, Value> = option_names(TASK_OPTIONS)
            .iter()
            .map(|k| (*k, Value::Nil))
            .collect();
        m.insert("script", s("local/app.py"));
        for (k, v) in overrides {
            m.insert(k, v);
        }
        enc(&obj(m.into_iter().collect()))
    }

    /// An elide_opts block as cty encodes it (every nested key present).
    fn elide_opts(overrides: Vec<(&str, Value)>) -> Value {
        let mut m: BTreeMap<&str, Value> = option_names(ELIDE_OPTS_OPTIONS)
            .iter()
            .map(|k| (*k, Value::Nil))
            .collect();
        for (k, v) in overrides {
            m.insert(k, v);
        }
        obj(m.into_iter().collect())
    }

    #[test]
    fn model_blocks_decode_and_bad_ones_name_the_field() {
        let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let model = |pairs: Vec<(&str, &str)>| {
            let mut m: BTreeMap<&str, Value> = option_names(MODEL_OPTIONS)
                .iter()
                .map(|k| (*k, Value::Nil))
                .collect();
            for (k, v) in pairs {
                m.insert(k, s(v));
            }
            obj(m.into_iter().collect())
        };
        let payload = |models: Vec<Value>| {
            task_payload(vec![(
                "elide_opts",
                elide_opts(vec![("model", Value::Array(models))]),
            )])
        };
        let t = TaskConfig::from_msgpack(&payload(vec![
            model(vec![
                ("source", "https://h/t.gguf"),
                ("sha256", sha),
                ("name", "t.gguf"),
            ]),
            model(vec![("repo", "o/r"), ("file", "x.gguf"), ("sha256", sha)]),
        ]))
        .unwrap();
        let models = t.elide_opts.unwrap().models;
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].name, "t.gguf");
        assert_eq!(
            models[1].url(""),
            "https://huggingface.co/o/r/resolve/main/x.gguf"
        );
        let e = TaskConfig::from_msgpack(&payload(vec![model(vec![
            ("source", "https://h/t.gguf"),
            ("name", "t.gguf"),
        ])]))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config.elide_opts.model[0].sha256: is required"),
            "{e}"
        );
        let e = TaskConfig::from_msgpack(&payload(vec![model(vec![
            ("source", "https://h/t.gguf"),
            ("sha256", sha),
            ("name", "../../etc/passwd"),
        ])]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("config.elide_opts.model[0].name:"), "{e}");
        let p =
            PluginConfig::from_msgpack(&plugin_payload(vec![("model_cache_dir", s("relative"))]))
                .unwrap_err()
                .to_string();
        assert!(p.starts_with("model_cache_dir:"), "{p}");
        let p = PluginConfig::from_msgpack(&plugin_payload(vec![("model_mirror", s("ftp://x"))]))
            .unwrap_err()
            .to_string();
        assert!(p.starts_with("model_mirror:"), "{p}");
        let p = PluginConfig::from_msgpack(&plugin_payload(vec![(
            "model_internal_hosts",
            strs(&["models.internal", "http://10.0.0.5:8080/"]),
        )]))
        .unwrap_err()
        .to_string();
        assert!(p.starts_with("model_internal_hosts[1]:"), "{p}");
        let ok = PluginConfig::from_msgpack(&plugin_payload(vec![(
            "model_internal_hosts",
            strs(&["models.internal", "10.0.0.5"]),
        )]))
        .unwrap();
        assert_eq!(ok.model_internal_hosts, ["models.internal", "10.0.0.5"]);
    }

    #[test]
    fn task_payload_keys_match_the_schema() {
        let spec = TaskConfig::schema();
        assert_eq!(schema_keys(&spec), sorted(&option_names(TASK_OPTIONS)));
        let Some(B::Object(o)) = spec.block.as_ref() else {
            unreachable!()
        };
        let Some(B::BlockValue(b)) = o.attributes["elide_opts"].block.as_ref() else {
            panic!("elide_opts must be a single block")
        };
        assert_eq!(b.name, "elide_opts");
        assert!(!b.required);
        assert_eq!(
            schema_keys(b.nested.as_deref().unwrap()),
            sorted(&option_names(ELIDE_OPTS_OPTIONS))
        );
    }

    #[test]
    fn task_minimal_and_full() {
        let t = TaskConfig::from_msgpack(&task_payload(vec![])).unwrap();
        assert_eq!(
            t,
            TaskConfig {
                script: "local/app.py".into(),
                ..TaskConfig::default()
            }
        );
        let opts = elide_opts(vec![
            ("languages", strs(&["python", "js", "TS", "javascript"])),
            ("memory_limit", s("512")),
            ("enable_ai", Value::Boolean(true)),
            ("elide_binary", s("/opt/elide/1.0/elide")),
            ("dotenv", Value::Boolean(false)),
        ]);
        let env_list = Value::Array(vec![
            obj(vec![("LOG_LEVEL", s("info")), ("B", s("1"))]),
            obj(vec![("B", s("2"))]),
        ]);
        let env_map = obj(vec![("LOG_LEVEL", s("info")), ("B", s("2"))]);
        for (elide_opts, env) in [
            (opts.clone(), env_list),
            (Value::Array(vec![opts]), env_map),
        ] {
            let t = TaskConfig::from_msgpack(&task_payload(vec![
                ("script", s("/abs/app.mjs")),
                ("args", strs(&["--port", "8080", ""])),
                ("env", env),
                ("mode", s("serve")),
                ("guest_env", s("none")),
                ("runtime_options", strs(&["-Xss4m"])),
                ("flags", strs(&["--js:esm"])),
                ("pids_limit", Value::from(100u8)),
                ("log_max_files", Value::from(3u8)),
                ("log_max_file_size", s("2")),
                ("elide_opts", elide_opts),
                ("cap_add", strs(&["NET_RAW"])),
                ("cap_drop", strs(&["all"])),
                ("pid_mode", s("host")),
                ("ipc_mode", s("private")),
            ]))
            .unwrap();
            assert_eq!(t.cap_add[0].as_str(), "net_raw");
            assert!(t.cap_drop[0].is_all());
            assert_eq!(t.pid_mode, Some(NamespaceMode::Host));
            assert_eq!(t.ipc_mode, Some(NamespaceMode::Private));
            assert_eq!(t.script, "/abs/app.mjs");
            // A name starting with "-" is fine: Elide gets it as "./-x.py" (tasks/script.rs).
            let dash = TaskConfig::from_msgpack(&task_payload(vec![("script", s("-Xmx1g.py"))]));
            assert_eq!(dash.unwrap().script, "-Xmx1g.py");
            assert_eq!(t.args, ["--port", "8080", ""]);
            assert_eq!(t.env.len(), 2);
            assert_eq!(t.env["LOG_LEVEL"], "info");
            assert_eq!(t.env["B"], "2");
            assert_eq!(t.mode, Some(RunMode::Serve));
            assert_eq!(t.guest_env, Some(GuestEnv::None));
            assert_eq!(t.runtime_options, ["-Xss4m"]);
            assert_eq!(t.flags, ["--js:esm"]);
            assert_eq!(t.pids_limit, Some(100));
            assert_eq!((t.log_max_files, t.log_max_file_size), (Some(3), Some(2)));
            let o = t.elide_opts.unwrap();
            assert_eq!(o.languages, ["python", "javascript", "typescript"]);
            assert_eq!(o.memory_limit, Some(512));
            assert!(o.enable_ai);
            assert_eq!(o.elide_binary, Some(PathBuf::from("/opt/elide/1.0/elide")));
            assert_eq!(o.dotenv, Some(false));
        }
        // A present but empty block.
        let t = TaskConfig::from_msgpack(&task_payload(vec![("elide_opts", elide_opts(vec![]))]))
            .unwrap();
        assert_eq!(t.elide_opts, Some(ElideOpts::default()));
        // An absent block as cty sends a BlockList-shaped null: an empty list.
        let t = TaskConfig::from_msgpack(&task_payload(vec![("elide_opts", Value::Array(vec![]))]))
            .unwrap();
        assert_eq!(t.elide_opts, None);
    }

    #[test]
    fn task_errors_name_the_field() {
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (vec![("script", Value::Nil)], "config.script: is required"),
            (vec![("script", s("  "))], "config.script: is required"),
            (
                vec![("script", s("local/app"))],
                "config.script: \"local/app\" has no file extension",
            ),
            (
                vec![("script", s("local/.env"))],
                "config.script: \"local/.env\" has no file extension",
            ),
            (
                vec![("script", s("local/a\0.py"))],
                "config.script: contains a NUL byte",
            ),
            (
                vec![("script", Value::from(5u8))],
                "config.script: expected a string, got number 5",
            ),
            (
                vec![("args", s("x"))],
                "config.args: expected a list of strings, got string \"x\"",
            ),
            (
                vec![("args", strs(&["ok", "a\0b"]))],
                "config.args[1]: contains a NUL byte",
            ),
            (
                vec![("args", strs(&["input.csv", "-Xmx4g"]))],
                "config.args: 1 argument would never reach the guest: [1] \"-Xmx4g\": GraalVM's runtime takes every -Xmx<size> word out of Elide's command line as the maximum heap size, overriding the heap the driver derives from the task's memory, even after \"--\"",
            ),
            (
                vec![("args", strs(&["-Dmode=fast", "--flag", "-XX:+X", "--use-version=1.0.0"]))],
                "config.args: 3 arguments would never reach the guest: [0] \"-Dmode=fast\": GraalVM's runtime takes every -D<name>=<value> word out of Elide's command line as a Java system property of Elide itself, even after \"--\"; [2] \"-XX:+X\": ",
            ),
            (
                vec![("script", s("local/a=b.py"))],
                "config.script: \"local/a=b.py\" contains \"=\": Elide's --env option",
            ),
            (
                vec![("env", Value::Array(vec![obj(vec![("-Dx", s("1"))])]))],
                "config.env: \"-Dx\" is not a valid environment variable name",
            ),
            (
                vec![("flags", strs(&["--js:esm", "-Dmode=fast"]))],
                "config.flags[1]: \"-Dmode=fast\" is a GraalVM runtime option, not an Elide flag: ",
            ),
            (
                vec![("runtime_options", strs(&["--js:esm"]))],
                "config.runtime_options[0]: \"--js:esm\" is not a GraalVM runtime option (-XX:..., -Xmx/-Xms/-Xmn/-Xss<size>, -D<name>=<value>); Elide's own flags go in config.flags",
            ),
            (
                vec![
                    ("runtime_options", strs(&["-Xmx1g"])),
                    ("elide_opts", elide_opts(vec![("memory_limit", Value::from(512u16))])),
                ],
                "config.elide_opts.memory_limit: and an -Xmx in config.runtime_options both set the heap; keep one",
            ),
            (
                vec![("elide_opts", elide_opts(vec![("dotenv", s("no"))]))],
                "config.elide_opts.dotenv: expected a bool",
            ),
            (
                vec![("env", Value::Array(vec![obj(vec![("A=B", s("1"))])]))],
                "config.env: \"A=B\" is not a valid environment variable name",
            ),
            (
                vec![("env", Value::Array(vec![obj(vec![("A", Value::Array(vec![]))])]))],
                "config.env[0].A: expected a string",
            ),
            (
                vec![("mode", s("daemon"))],
                "config.mode: \"daemon\" is not one of \"run\", \"serve\", \"test\"",
            ),
            (
                vec![("guest_env", s("all"))],
                "config.guest_env: \"all\" is not one of",
            ),
            (
                vec![("pids_limit", s("-5"))],
                "config.pids_limit: must be between 0 and 4194304, got -5",
            ),
            (
                vec![("log_max_files", Value::from(0u8))],
                "config.log_max_files: must be between 1 and 100000, got 0",
            ),
            (
                vec![("log_max_file_size", s("big"))],
                "config.log_max_file_size: expected a whole number, got string \"big\"",
            ),
            (
                vec![(
                    "env",
                    Value::Array(vec![obj(vec![("LD_PRELOAD=/tmp/x.so\nFOO", s("1"))])]),
                )],
                "config.env: \"LD_PRELOAD=/tmp/x.so\\nFOO\" is not a valid environment variable name",
            ),
            (
                vec![("env", Value::Array(vec![obj(vec![("1A", s("1"))])]))],
                "config.env: \"1A\" is not a valid environment variable name",
            ),
            (
                vec![("env", Value::Array(vec![obj(vec![("A", s("x\0y"))])]))],
                "config.env: the value of A contains a NUL byte",
            ),
            (
                vec![(
                    "env",
                    Value::Array(vec![obj(vec![("BIG", s(&"x".repeat(3 << 20)))])]),
                )],
                "config.env: the variable BIG is 3145733 bytes",
            ),
            (
                vec![(
                    "elide_opts",
                    elide_opts(vec![("languages", strs(&["python", "cobol"]))]),
                )],
                "config.elide_opts.languages[1]: \"cobol\" is not a language Elide runs; use one of python, js, javascript, ts, typescript, jvm, java, kotlin, ruby, wasm, llvm, pkl",
            ),
            (
                vec![("elide_opts", elide_opts(vec![("memory_limit", s("lots"))]))],
                "config.elide_opts.memory_limit: expected a whole number, got string \"lots\"",
            ),
            (
                vec![("elide_opts", elide_opts(vec![("memory_limit", s("0.1"))]))],
                "config.elide_opts.memory_limit: must be a whole number, got 0.1",
            ),
            (
                vec![("elide_opts", elide_opts(vec![("memory_limit", Value::from(0u8))]))],
                "config.elide_opts.memory_limit: must be between 1 and",
            ),
            (
                vec![("elide_opts", elide_opts(vec![("enable_ai", s("yes"))]))],
                "config.elide_opts.enable_ai: expected a bool",
            ),
            (
                vec![(
                    "elide_opts",
                    Value::Array(vec![elide_opts(vec![]), elide_opts(vec![])]),
                )],
                "config.elide_opts: only one elide_opts block is allowed, got 2",
            ),
            (
                vec![("elide_opts", s("x"))],
                "config.elide_opts: expected a block/object, got string \"x\"",
            ),
            (
                vec![("elide_opts", elide_opts(vec![("colour", s("x"))]))],
                "config.elide_opts.colour: unknown key",
            ),
            (
                vec![("flags", strs(&["--"]))],
                "config.flags[0]: \"--\" is added by the driver",
            ),
            (
                vec![("flags", strs(&["app2.js"]))],
                "config.flags[0]: \"app2.js\" is not an option",
            ),
            (
                vec![("runtime_options", strs(&["-"]))],
                "config.runtime_options[0]: \"-\" is not an option",
            ),
            (
                vec![("cap_add", strs(&["sys_admin", "bogus"]))],
                "config.cap_add[1]: \"bogus\" is not a Linux capability",
            ),
            (
                vec![("cap_drop", s("all"))],
                "config.cap_drop: expected a list of strings",
            ),
            (
                vec![("pid_mode", s("container"))],
                "config.pid_mode: \"container\" is not one of \"private\", \"host\"",
            ),
            (
                vec![("ipc_mode", s("none"))],
                "config.ipc_mode: \"none\" is not one of",
            ),
            (vec![("colour", s("x"))], "config.colour: unknown key"),
        ];
        for (over, want) in cases {
            let e = TaskConfig::from_msgpack(&task_payload(over))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "want {want:?} at the start of {e:?}");
        }
        let e = TaskConfig::from_msgpack(&[]).unwrap_err().to_string();
        assert!(e.starts_with("config.script: is required"), "{e}");
    }

    /// The schemas as rendered before they were derived from the option tables
    /// (tests/fixtures/config_schemas.txt): what Nomad sees must not change by accident.
    /// After a change on purpose, `NDE_UPDATE_FIXTURES=1 cargo test -p nomad-driver-elide
    /// schemas_equal` rewrites the fixture (review its diff).
    #[test]
    fn schemas_equal_the_snapshot() {
        let text = format!(
            "plugin: {}\ntask: {}\n",
            crate::hclspec::render(&PluginConfig::schema()),
            crate::hclspec::render(&TaskConfig::schema())
        );
        if std::env::var_os("NDE_UPDATE_FIXTURES").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/config_schemas.txt"
            );
            std::fs::write(path, &text).unwrap();
            return;
        }
        assert_eq!(
            text,
            include_str!("../tests/fixtures/config_schemas.txt"),
            "a schema changed; if on purpose, update the fixture"
        );
    }

    /// A JSON value (the HCL literals the option tables use are JSON) as cty msgpack.
    fn json_to_msgpack(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Boolean(b),
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(u) => Value::from(u),
                None => Value::from(n.as_f64().unwrap()),
            },
            serde_json::Value::String(t) => s(&t),
            serde_json::Value::Array(a) => {
                Value::Array(a.into_iter().map(json_to_msgpack).collect())
            }
            serde_json::Value::Object(_) => panic!("no object literals in the option tables"),
        }
    }

    /// `PluginConfig::default()` is what an empty plugin block decodes to once Nomad has
    /// applied the schema's defaults: the table and `Default` cannot disagree.
    #[test]
    fn plugin_default_is_what_the_tables_defaults_decode_to() {
        let pairs: Vec<(&str, Value)> = PLUGIN_OPTIONS
            .iter()
            .map(|o| {
                let v = match o.kind {
                    OptionKind::Defaulted { default, .. } => {
                        let hcl = default.hcl();
                        json_to_msgpack(
                            serde_json::from_str(&hcl)
                                .unwrap_or_else(|e| panic!("{}: {hcl}: {e}", o.name)),
                        )
                    }
                    OptionKind::Block(_) => Value::Nil,
                    OptionKind::Required { .. } | OptionKind::Optional { .. } => {
                        panic!("{}: every plugin option needs a default", o.name)
                    }
                };
                (o.name, v)
            })
            .collect();
        let payload = enc(&obj(pairs));
        assert_eq!(
            PluginConfig::from_msgpack(&payload).unwrap(),
            PluginConfig::default()
        );
        assert_eq!(payload, plugin_payload(vec![]));
    }

    #[test]
    fn every_option_is_documented_once() {
        for table in [
            PLUGIN_OPTIONS,
            TELEMETRY_OPTIONS,
            TASK_OPTIONS,
            ELIDE_OPTS_OPTIONS,
            MODEL_OPTIONS,
        ] {
            let mut names = option_names(table);
            names.sort();
            names.dedup();
            assert_eq!(names.len(), table.len(), "a name repeats in {names:?}");
            for o in table {
                assert!(!o.doc.trim().is_empty(), "{} has no doc", o.name);
            }
        }
    }

    #[test]
    fn schemas_pass_nomads_rules_and_defaults_are_named() {
        for spec in [PluginConfig::schema(), TaskConfig::schema()] {
            crate::hclspec::check(&spec).unwrap();
        }
        let plugin = PluginConfig::schema();
        let Some(B::Object(o)) = plugin.block.as_ref() else {
            panic!("root must be an object")
        };
        // Every plugin key has a Default, so every key is present in the payload, and the
        // Attr inside carries its name.
        for (k, v) in &o.attributes {
            if k == "telemetry" {
                // The one block (`telemetry { … }`): absent means off.
                assert!(matches!(v.block, Some(B::BlockValue(_))), "{k}");
                continue;
            }
            let Some(B::Default(d)) = v.block.as_ref() else {
                panic!("{k}: every plugin key needs a default")
            };
            let Some(B::Attr(a)) = d.primary.as_ref().and_then(|p| p.block.as_ref()) else {
                panic!("{k}: default must wrap an attr")
            };
            assert_eq!(&a.name, k, "an Attr inside a Default needs its name");
            assert!(!a.required, "{k}");
        }
        assert_eq!(schema_keys(&plugin), sorted(&option_names(PLUGIN_OPTIONS)));
        let r = crate::hclspec::render(&plugin);
        for want in [
            r#"enabled = default(attr("enabled", bool), true)"#,
            r#"elide_binary = default(attr("elide_binary", string), "")"#,
            &format!(
                r#"runtime_dir = default(attr("runtime_dir", string), "{DEFAULT_RUNTIME_DIR}")"#
            ),
            r#"guest_env = default(attr("guest_env", string), "host")"#,
            r#"runtime_options = default(attr("runtime_options", list(string)), [])"#,
            r#"fingerprint_period = default(attr("fingerprint_period", string), "30s")"#,
            r#"pids_limit = default(attr("pids_limit", number), 0)"#,
            r#"heap_percent = default(attr("heap_percent", number), 75)"#,
        ] {
            assert!(r.contains(want), "{want} not in {r}");
        }

        let task = TaskConfig::schema();
        let r = crate::hclspec::render(&task);
        assert!(
            r.contains(r#"script = attr("script", string, required)"#),
            "{r}"
        );
        assert!(r.contains(r#"elide_opts = block("elide_opts", {"#), "{r}");
        let mut names = Vec::new();
        crate::hclspec::attribute_names(&task, &mut names);
        assert!(names.iter().all(|n| !n.is_empty()), "{names:?}");
    }

    #[test]
    fn enums_serialise_lowercase() {
        for (g, name) in [
            (GuestEnv::Host, "host"),
            (GuestEnv::Nomad, "nomad"),
            (GuestEnv::None, "none"),
        ] {
            assert_eq!(g.as_str(), name);
            assert_eq!(serde_json::to_string(&g).unwrap(), format!("\"{name}\""));
            let back: GuestEnv = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, g);
        }
        for (m, name) in [
            (RunMode::Run, "run"),
            (RunMode::Serve, "serve"),
            (RunMode::Test, "test"),
        ] {
            assert_eq!(m.as_str(), name);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{name}\""));
        }
        assert_eq!(GuestEnv::default(), GuestEnv::Host);
        assert_eq!(RunMode::default(), RunMode::Run);
    }
}
