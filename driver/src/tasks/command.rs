//! The Elide command line and environment for a task (pure functions; see docs/driver.md).
//!
//! `elide [-Xmx<heap>m] [runtime_options…] <mode> --no-pretty -p <task dir>
//!        [--host:allow-env | --env K=V…] [--env:dotenv=false]
//!        [run_flags…] [flags…] ./<script in the task dir> -- [args…]`

use crate::config::{GuestEnv, PluginConfig, TaskConfig};
use std::collections::BTreeMap;
use std::path::Path;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables that are never copied into argv, even in `guest_env = "nomad"` mode.
const NEVER_IN_ARGV: &[&str] = &["NOMAD_TOKEN", "VAULT_TOKEN", "CONSUL_HTTP_TOKEN"];

/// Max heap for the runtime in MiB: `elide_opts.memory_limit` if set, else `heap_percent` of
/// the task's hard memory limit (`memory_max`, else `memory`), at least 16 MiB; None when the
/// task has no memory limit at all (GraalVM then defaults to 80 % of the host's RAM).
pub fn heap_mb(
    memory_limit: Option<u64>,
    task_hard_limit_mb: u64,
    heap_percent: u64,
) -> Option<u64> {
    if let Some(m) = memory_limit {
        return Some(m);
    }
    if task_hard_limit_mb == 0 {
        return None;
    }
    Some((task_hard_limit_mb.saturating_mul(heap_percent) / 100).max(16))
}

pub struct CommandInput<'a> {
    pub elide: &'a Path,
    pub plugin: &'a PluginConfig,
    pub task: &'a TaskConfig,
    /// Nomad's task environment (NOMAD_* and the job's `env {}`).
    pub nomad_env: &'a BTreeMap<String, String>,
    /// The script path as given (relative to the task dir, or absolute).
    pub script: &'a str,
    pub task_hard_limit_mb: u64,
    /// The task dir, passed as Elide's project root so nothing up the tree (a stray `.env`,
    /// `package.json`) is picked up by Elide's upward project search.
    pub task_dir: &'a Path,
}

pub fn argv(input: &CommandInput<'_>) -> Vec<String> {
    let task = input.task;
    let plugin = input.plugin;
    let mut argv = vec![input.elide.display().to_string()];
    let user_runtime: Vec<&String> = plugin
        .runtime_options
        .iter()
        .chain(task.runtime_options.iter())
        .collect();
    let memory_limit = task.elide_opts.as_ref().and_then(|o| o.memory_limit);
    if !user_runtime.iter().any(|o| o.starts_with("-Xmx")) {
        if let Some(h) = heap_mb(memory_limit, input.task_hard_limit_mb, plugin.heap_percent) {
            // GraalVM runtime options must come before the command.
            argv.push(format!("-Xmx{h}m"));
        }
    }
    argv.extend(user_runtime.into_iter().cloned());
    argv.push(task.mode.unwrap_or_default().as_str().to_owned());
    argv.push("--no-pretty".to_owned());
    argv.push("-p".to_owned());
    argv.push(input.task_dir.display().to_string());
    match task.guest_env.unwrap_or(plugin.guest_env) {
        // The runtime's own environment is exactly the task environment the shim builds (not
        // the agent's), so exposing "host" env exposes the task env and nothing else, without
        // putting any value into argv.
        GuestEnv::Host => argv.push("--host:allow-env".to_owned()),
        GuestEnv::Nomad => {
            let mut forwarded: BTreeMap<&str, &str> = BTreeMap::new();
            for (k, v) in input.nomad_env {
                if k.starts_with("NOMAD_") && !NEVER_IN_ARGV.contains(&k.as_str()) {
                    forwarded.insert(k, v);
                }
            }
            for (k, v) in &task.env {
                if !NEVER_IN_ARGV.contains(&k.as_str()) {
                    forwarded.insert(k, v);
                }
            }
            for (k, v) in forwarded {
                // Elide ignores blank values; skip them rather than pass `K=`.
                if !v.is_empty() {
                    argv.push("--env".to_owned());
                    argv.push(format!("{k}={v}"));
                }
            }
        }
        GuestEnv::None => {}
    }
    if task.elide_opts.as_ref().and_then(|o| o.dotenv) == Some(false) {
        // Attached: a separate `false` would be taken for the script (picocli boolean).
        argv.push("--env:dotenv=false".to_owned());
    }
    argv.extend(plugin.run_flags.iter().cloned());
    argv.extend(task.flags.iter().cloned());
    argv.push(input.script.to_owned());
    argv.push("--".to_owned());
    argv.extend(task.args.iter().cloned());
    argv
}

/// The runtime's environment: Nomad's task env (less dynamic-linker `LD_*` variables, which
/// pass only when the task config's `env` sets them), the task config's `env`, then what
/// Elide needs to behave under a supervisor (the contract table in
/// tests/elide-standin/README.md): no colour, a UTF-8 locale, a PATH, and a writable HOME and
/// TMPDIR inside the task dir (`<task dir>/tmp` when `task_tmp_exists`, else `local`).
pub fn environment(
    nomad_env: &BTreeMap<String, String>,
    task: &TaskConfig,
    task_dir: &Path,
    alloc_dir: &Path,
    task_tmp_exists: bool,
) -> BTreeMap<String, String> {
    let mut env = common::env::without_loader_vars(nomad_env, &task.env);
    for (k, v) in &task.env {
        env.insert(k.clone(), v.clone());
    }
    env.insert("NO_COLOR".into(), "1".into());
    env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
    if env.get("PATH").is_none_or(|p| p.is_empty()) {
        env.insert("PATH".into(), DEFAULT_PATH.into());
    }
    let local = task_dir.join("local");
    if !task.env.contains_key("HOME") {
        env.insert("HOME".into(), local.display().to_string());
    }
    if !task.env.contains_key("TMPDIR") {
        let tmp = task_dir.join("tmp");
        let tmp = if task_tmp_exists { tmp } else { local.clone() };
        env.insert("TMPDIR".into(), tmp.display().to_string());
    }
    if task.elide_opts.as_ref().is_some_and(|o| o.enable_ai) && !task.env.contains_key("HF_HOME") {
        // Models survive task restarts in the alloc's shared data dir.
        env.insert(
            "HF_HOME".into(),
            alloc_dir
                .join("alloc/data/huggingface")
                .display()
                .to_string(),
        );
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ElideOpts, RunMode};

    fn task() -> TaskConfig {
        TaskConfig {
            script: "local/app.py".into(),
            args: vec!["--port".into(), "8080".into()],
            ..Default::default()
        }
    }

    fn env() -> BTreeMap<String, String> {
        [
            ("NOMAD_ALLOC_ID", "a1"),
            ("NOMAD_TOKEN", "secret"),
            ("VAULT_TOKEN", "secret2"),
            ("PATH", "/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn run(plugin: &PluginConfig, task: &TaskConfig, limit: u64) -> Vec<String> {
        let e = env();
        argv(&CommandInput {
            elide: Path::new("/usr/bin/elide"),
            plugin,
            task,
            nomad_env: &e,
            script: &task.script,
            task_hard_limit_mb: limit,
            task_dir: Path::new("/t"),
        })
    }

    #[test]
    fn default_command_line_follows_the_cli_contract() {
        let a = run(&PluginConfig::default(), &task(), 256);
        assert_eq!(
            a,
            [
                "/usr/bin/elide",
                "-Xmx192m",
                "run",
                "--no-pretty",
                "-p",
                "/t",
                "--host:allow-env",
                "local/app.py",
                "--",
                "--port",
                "8080"
            ]
        );
    }

    #[test]
    fn heap_comes_from_memory_limit_or_the_task_limit() {
        assert_eq!(heap_mb(Some(512), 128, 75), Some(512));
        assert_eq!(heap_mb(None, 1000, 75), Some(750));
        assert_eq!(heap_mb(None, 10, 75), Some(16));
        assert_eq!(heap_mb(None, 0, 75), None);
        // Used to overflow (a panic in debug builds, a wrapped -Xmx in release).
        assert_eq!(heap_mb(None, u64::MAX, 95), Some(u64::MAX / 100));
        let mut t = task();
        t.runtime_options = vec!["-Xmx1g".into()];
        let a = run(&PluginConfig::default(), &t, 256);
        assert_eq!(&a[1..3], ["-Xmx1g", "run"]);
        t.runtime_options.clear();
        t.elide_opts = Some(ElideOpts {
            memory_limit: Some(300),
            ..Default::default()
        });
        assert_eq!(run(&PluginConfig::default(), &t, 256)[1], "-Xmx300m");
    }

    #[test]
    fn nomad_mode_forwards_nomad_vars_but_never_tokens() {
        let mut t = task();
        t.guest_env = Some(GuestEnv::Nomad);
        t.env.insert("LOG_LEVEL".into(), "info".into());
        let a = run(&PluginConfig::default(), &t, 0).join(" ");
        assert!(a.contains("--env NOMAD_ALLOC_ID=a1"), "{a}");
        assert!(a.contains("--env LOG_LEVEL=info"), "{a}");
        assert!(!a.contains("secret"), "{a}");
        assert!(!a.contains("--host:allow-env"), "{a}");
    }

    #[test]
    fn none_mode_and_mode_and_flags_order() {
        let mut t = task();
        t.guest_env = Some(GuestEnv::None);
        t.mode = Some(RunMode::Serve);
        t.flags = vec!["--js:esm".into()];
        let p = PluginConfig {
            run_flags: vec!["--timeout".into(), "3".into()],
            runtime_options: vec!["-XX:+PrintGC".into()],
            ..Default::default()
        };
        let a = run(&p, &t, 0);
        assert_eq!(
            a,
            [
                "/usr/bin/elide",
                "-XX:+PrintGC",
                "serve",
                "--no-pretty",
                "-p",
                "/t",
                "--timeout",
                "3",
                "--js:esm",
                "local/app.py",
                "--",
                "--port",
                "8080"
            ]
        );
    }

    #[test]
    fn dotenv_off_is_passed_attached_and_on_is_elides_default() {
        let mut t = task();
        let plain = run(&PluginConfig::default(), &t, 0);
        assert!(
            !plain.iter().any(|a| a.starts_with("--env:dotenv")),
            "{plain:?}"
        );
        for (dotenv, want) in [(Some(true), false), (None, false), (Some(false), true)] {
            t.elide_opts = Some(ElideOpts {
                dotenv,
                ..Default::default()
            });
            let a = run(&PluginConfig::default(), &t, 0);
            let at = a.iter().position(|x| x == "--env:dotenv=false");
            assert_eq!(at.is_some(), want, "{dotenv:?}: {a:?}");
            if let Some(i) = at {
                assert!(i < a.iter().position(|x| x == "local/app.py").unwrap());
                assert_eq!(a[i - 1], "--host:allow-env");
            }
        }
    }

    #[test]
    fn environment_sets_runtime_needs_and_keeps_task_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task();
        t.env.insert("LOG_LEVEL".into(), "debug".into());
        let e = environment(&env(), &t, dir.path(), Path::new("/alloc"), true);
        assert_eq!(e["NO_COLOR"], "1");
        assert_eq!(e["LANG"], "C.UTF-8");
        assert_eq!(e["PATH"], "/bin");
        assert_eq!(e["LOG_LEVEL"], "debug");
        assert_eq!(e["NOMAD_ALLOC_ID"], "a1");
        assert_eq!(e["HOME"], dir.path().join("local").display().to_string());
        assert_eq!(e["TMPDIR"], dir.path().join("tmp").display().to_string());
        assert!(!e.contains_key("HF_HOME"));
        let e = environment(&env(), &t, dir.path(), Path::new("/alloc"), false);
        assert_eq!(e["TMPDIR"], dir.path().join("local").display().to_string());
    }

    #[test]
    fn loader_variables_reach_the_runtime_only_from_the_task_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut nomad = env();
        nomad.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
        nomad.insert("LD_LIBRARY_PATH".into(), "/agent/lib".into());
        let mut t = task();
        let e = environment(&nomad, &t, dir.path(), Path::new("/alloc"), true);
        assert!(!e.contains_key("LD_PRELOAD"), "{e:?}");
        assert!(!e.contains_key("LD_LIBRARY_PATH"), "{e:?}");
        t.env.insert("LD_LIBRARY_PATH".into(), "/app/lib".into());
        let e = environment(&nomad, &t, dir.path(), Path::new("/alloc"), true);
        assert_eq!(e["LD_LIBRARY_PATH"], "/app/lib");
        assert!(!e.contains_key("LD_PRELOAD"));
    }
}
