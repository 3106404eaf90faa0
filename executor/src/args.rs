//! The command line of `elide-executor`: `clap` (derive) for every command, with one exception.
//! The line the plugin starts each shim with (`serve --spec - --ready-fd N --task ID`,
//! driver/src/tasks/launch.rs) is matched by [`plugin_serve`] before clap runs, so the
//! per-task processes never execute clap's parser (its code stays untouched, shared file
//! pages; docs/performance.md). `sandbox-init` and `sandbox-exec` are matched in main.rs
//! before anything else. Anything else, including a malformed `serve` line, goes to clap,
//! which prints the usage errors (exit 2), `--help` and `--version`.

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

const ABOUT: &str = "Per-task shim of nomad-driver-elide, and the operator's view of its tasks";

/// A task, as the operator commands name it.
const TASK_HELP: &str = "A task id, task key, alloc id prefix or task name";

#[derive(Debug, Parser)]
#[command(name = "elide-executor", about = ABOUT, subcommand_required = true)]
#[command(arg_required_else_help = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, PartialEq, Subcommand)]
pub enum Cmd {
    /// Run one shim for the plugin (started by nomad-driver-elide; not for interactive use)
    Serve {
        /// The task spec (JSON, docs/executor.md); `-` reads it from stdin, as the plugin
        /// passes it (the task's environment never touches the disk)
        #[arg(long)]
        spec: PathBuf,
        /// Write `READY` (or `ERROR <message>`) and close this fd once the socket is up
        #[arg(long, value_name = "N")]
        ready_fd: Option<i32>,
        /// The task id (`<alloc id>/<task name>/<n>`), so `ps` shows which task a shim runs;
        /// it must be the spec's `task_id`
        #[arg(long)]
        task: String,
    },
    /// Run one shim in the foreground without Nomad, for debugging: starts the runtime,
    /// serves the socket (status/stop/signal work), exits with the runtime's exit code
    Run {
        /// The task spec (JSON, docs/executor.md)
        #[arg(long)]
        spec: PathBuf,
    },
    /// List every Elide task on this node
    Status {
        /// JSON (an array of objects) instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDir,
        /// Only this task: a task id, task key, alloc id prefix (>= 4 chars) or task name
        task: Option<String>,
    },
    /// Stop one task: send the signal, wait, then SIGKILL its process group
    Stop {
        #[arg(long, default_value = common::spec::DEFAULT_STOP_SIGNAL)]
        signal: String,
        /// How long to wait after the signal before SIGKILL (e.g. 5s, 1m30s)
        #[arg(long, default_value = "5s")]
        timeout: String,
        #[command(flatten)]
        state: StateDir,
        #[arg(help = TASK_HELP)]
        task: String,
    },
    /// Run a command inside one running task (its sandbox, cgroup, user, environment and
    /// dir), like `nomad alloc exec`: `elide-executor exec TASK -- /bin/sh`
    Exec {
        /// Run it on a terminal (default: when stdin and stdout are terminals)
        #[arg(short = 't', long, conflicts_with = "no_tty")]
        tty: bool,
        /// Never run it on a terminal
        #[arg(short = 'T', long)]
        no_tty: bool,
        #[command(flatten)]
        state: StateDir,
        #[arg(help = TASK_HELP)]
        task: String,
        /// The program (looked up in the task's PATH) and its arguments
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Send a signal to one task's runtime
    Signal {
        /// e.g. SIGUSR1, HUP, 10
        signal: String,
        #[arg(help = TASK_HELP)]
        task: String,
        #[command(flatten)]
        state: StateDir,
    },
    /// Print a shell completion script on stdout (e.g. `completions bash >
    /// /etc/bash_completion.d/elide-executor`)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

/// `--state-dir`, shared by the operator commands.
#[derive(Debug, PartialEq, Args)]
pub struct StateDir {
    /// The plugin's runtime_dir, holding the sockets and the task index
    #[arg(long = "state-dir", value_name = "STATE_DIR",
          default_value = common::paths::DEFAULT_RUNTIME_DIR)]
    pub path: PathBuf,
}

/// The line the plugin starts a shim with, exactly: `serve` and `--spec <SPEC>`,
/// `--ready-fd <N>` (optional) and `--task <TASK>`, each once as `--opt value`, in any order.
/// `None` for anything else: clap then parses it (and explains what is wrong).
pub fn plugin_serve(args: &[OsString]) -> Option<Cmd> {
    let (first, rest) = args.split_first()?;
    if first != "serve" || rest.len() % 2 != 0 {
        return None;
    }
    let (mut spec, mut ready_fd, mut task) = (None, None, None);
    for pair in rest.chunks(2) {
        let value = &pair[1];
        let slot_was_empty = match pair[0].to_str()? {
            "--spec" => spec.replace(PathBuf::from(value)).is_none(),
            "--ready-fd" => ready_fd.replace(value.to_str()?.parse().ok()?).is_none(),
            "--task" => task.replace(value.to_str()?.to_owned()).is_none(),
            _ => return None,
        };
        if !slot_was_empty {
            return None;
        }
    }
    Some(Cmd::Serve {
        spec: spec?,
        ready_fd,
        task: task?,
    })
}

/// The clap command, with the version line the plugin's fingerprint reads
/// (`elide-executor <version> (revision …, shim API … level N)`).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let version = common::shim_api::version_text(crate::VERSION, crate::REVISION);
    // Once per process, at its edge: clap keeps the text for the command's lifetime.
    Cli::command()
        .version(&*Box::leak(version.into_boxed_str()))
        // The usage lines name the program, however it is installed or invoked.
        .bin_name("elide-executor")
}

/// Parses the whole command line (program name first); clap's errors, `--help` and
/// `--version` as a [`clap::Error`] to `exit()` with (status 2 for usage errors, 0 otherwise).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cmd, clap::Error> {
    use clap::FromArgMatches;
    let matches = command().try_get_matches_from(args)?;
    Ok(Cli::from_arg_matches(&matches)?.cmd)
}

/// `completions SHELL`: the script on stdout.
pub fn print_completions(shell: clap_complete::Shell) {
    let mut cmd = command();
    clap_complete::generate(shell, &mut cmd, "elide-executor", &mut std::io::stdout());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn p(args: &[&str]) -> Result<Cmd, clap::Error> {
        parse(
            std::iter::once("elide-executor")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    fn err(args: &[&str]) -> String {
        match p(args) {
            Err(e) if e.exit_code() == 2 => e.render().to_string(),
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    fn state(p: &str) -> StateDir {
        StateDir { path: p.into() }
    }

    const RUN: &str = common::paths::DEFAULT_RUNTIME_DIR;

    #[test]
    fn the_plugins_serve_line_needs_no_clap() {
        let serve = Cmd::Serve {
            spec: "-".into(),
            ready_fd: Some(3),
            task: "a/t/0".into(),
        };
        let line = ["serve", "--spec", "-", "--ready-fd", "3", "--task", "a/t/0"];
        assert_eq!(plugin_serve(&os(&line)), Some(serve));
        // Clap reads the same line the same way.
        assert_eq!(p(&line).unwrap(), plugin_serve(&os(&line)).unwrap());
        assert_eq!(
            plugin_serve(&os(&["serve", "--task", "a/t/0", "--spec", "/s.json"])),
            Some(Cmd::Serve {
                spec: "/s.json".into(),
                ready_fd: None,
                task: "a/t/0".into()
            })
        );
        // Anything else is clap's to parse or refuse.
        for other in [
            &["serve"][..],
            &["serve", "--spec", "-"],
            &["serve", "--spec=-", "--task=a/t/0"],
            &["serve", "--spec", "-", "--task", "a", "--task", "b"],
            &["serve", "--spec", "-", "--task", "a", "--ready-fd", "three"],
            &["serve", "--spec", "-", "--task", "a", "--help", "x"],
            &["run", "--spec", "-"],
            &["status"],
            &[],
        ] {
            assert_eq!(plugin_serve(&os(other)), None, "{other:?}");
        }
    }

    #[test]
    fn commands_and_their_options() {
        assert_eq!(
            p(&[
                "serve",
                "--spec",
                "/s.json",
                "--ready-fd=3",
                "--task",
                "a/t/0"
            ])
            .unwrap(),
            Cmd::Serve {
                spec: "/s.json".into(),
                ready_fd: Some(3),
                task: "a/t/0".into()
            }
        );
        assert_eq!(
            p(&["run", "--spec=/s.json"]).unwrap(),
            Cmd::Run {
                spec: "/s.json".into()
            }
        );
        assert_eq!(
            p(&["status"]).unwrap(),
            Cmd::Status {
                json: false,
                state: state(RUN),
                task: None
            }
        );
        assert_eq!(
            p(&["status", "web", "--json", "--state-dir", "/r"]).unwrap(),
            Cmd::Status {
                json: true,
                state: state("/r"),
                task: Some("web".into())
            }
        );
        assert_eq!(
            p(&["stop", "--signal", "SIGINT", "a1b2"]).unwrap(),
            Cmd::Stop {
                signal: "SIGINT".into(),
                timeout: "5s".into(),
                state: state(RUN),
                task: "a1b2".into()
            }
        );
        assert_eq!(
            p(&["signal", "--state-dir", "/r", "HUP", "--", "-odd-name"]).unwrap(),
            Cmd::Signal {
                signal: "HUP".into(),
                state: state("/r"),
                task: "-odd-name".into()
            }
        );
        assert_eq!(
            p(&["signal", "SIGHUP", "--state-dir", "/r", "web"]).unwrap(),
            Cmd::Signal {
                signal: "SIGHUP".into(),
                state: state("/r"),
                task: "web".into()
            }
        );
        let exec = |tty, no_tty, task: &str, command: &[&str]| Cmd::Exec {
            tty,
            no_tty,
            state: state(RUN),
            task: task.into(),
            command: command.iter().map(|c| c.to_string()).collect(),
        };
        assert_eq!(
            p(&["exec", "web", "--", "/bin/sh", "-c", "echo --tty"]).unwrap(),
            exec(false, false, "web", &["/bin/sh", "-c", "echo --tty"])
        );
        // The command starts at its first word: what follows is its own.
        assert_eq!(
            p(&["exec", "-t", "web", "ls", "-la", "--state-dir", "/x"]).unwrap(),
            exec(true, false, "web", &["ls", "-la", "--state-dir", "/x"])
        );
        assert_eq!(
            p(&["exec", "web", "-T", "-x"]).unwrap(),
            exec(false, true, "web", &["-x"])
        );
        assert_eq!(
            p(&["exec", "--state-dir=/r", "--no-tty", "web", "tty"]).unwrap(),
            Cmd::Exec {
                tty: false,
                no_tty: true,
                state: state("/r"),
                task: "web".into(),
                command: vec!["tty".into()],
            }
        );
        assert_eq!(
            p(&["completions", "bash"]).unwrap(),
            Cmd::Completions {
                shell: clap_complete::Shell::Bash
            }
        );
    }

    #[test]
    fn help_and_version() {
        let out = |args: &[&str], kind| match p(args) {
            Err(e) if e.kind() == kind && e.exit_code() == 0 => e.render().to_string(),
            other => panic!("{args:?}: expected {kind:?}, got {other:?}"),
        };
        let v = out(&["--version"], ErrorKind::DisplayVersion);
        assert_eq!(
            v,
            common::shim_api::version_line("elide-executor", crate::VERSION, crate::REVISION)
                + "\n"
        );
        // What the plugin's fingerprint reads.
        assert_eq!(
            common::shim_api::parse_version_line(&v).map(|(_, l)| l),
            Some(common::shim_api::API_LEVEL)
        );
        assert_eq!(out(&["-V"], ErrorKind::DisplayVersion), v);
        let h = out(&["--help"], ErrorKind::DisplayHelp);
        assert!(h.starts_with(ABOUT), "{h}");
        assert!(
            h.contains("Usage: elide-executor <COMMAND>") && h.contains("signal"),
            "{h}"
        );
        assert!(
            h.contains("  exec         Run a command inside one running task"),
            "{h}"
        );
        assert!(h.contains("-V, --version"), "{h}");
        let h = out(&["stop", "x", "--help"], ErrorKind::DisplayHelp);
        assert!(
            h.contains("Usage: elide-executor stop") && h.contains("[default: 5s]"),
            "{h}"
        );
        assert!(h.contains("[default: /run/nomad-driver-elide]"), "{h}");
        let status = out(&["help", "status"], ErrorKind::DisplayHelp);
        assert_eq!(status, out(&["status", "--help"], ErrorKind::DisplayHelp));
        assert!(status.contains("[TASK]  Only this task"), "{status}");
    }

    #[test]
    fn usage_errors_say_what_and_how() {
        let e = err(&["serve"]);
        assert!(
            e.contains("required arguments were not provided:\n  --spec <SPEC>"),
            "{e}"
        );
        assert!(
            e.contains("Usage: elide-executor serve --spec <SPEC>"),
            "{e}"
        );
        assert!(e.contains("try '--help'"), "{e}");
        assert!(err(&["serve", "--spec"]).contains("a value is required for '--spec <SPEC>'"));
        assert!(err(&["serve", "--spec", "-"]).contains("not provided:\n  --task <TASK>"));
        assert!(err(&["exec", "web"]).contains("not provided:\n  <COMMAND>..."));
        assert!(err(&["exec"]).contains("not provided:\n  <TASK>\n  <COMMAND>..."));
        assert!(err(&["exec", "-t", "-T", "web", "sh"]).contains("cannot be used with"));
        assert!(err(&["exec", "--jsn", "web", "sh"]).contains("unexpected argument '--jsn'"));
        let e = err(&["serve", "--spec", "x", "--task", "t", "--ready-fd", "three"]);
        assert!(
            e.contains("invalid value 'three' for '--ready-fd <N>'"),
            "{e}"
        );
        let e = err(&["status", "--jsn"]);
        assert!(
            e.contains("unexpected argument '--jsn'") && e.contains("'--json'"),
            "{e}"
        );
        assert!(err(&["status", "a", "b"]).contains("unexpected argument 'b'"));
        assert!(err(&["stop"]).contains("<TASK>"));
        assert!(err(&["signal", "HUP"]).contains("<TASK>"));
        assert!(err(&["status", "--json=yes"]).contains("unexpected value 'yes'"));
        assert!(err(&["stop", "--signal", "A", "--signal", "B", "t"]).contains("multiple times"));
        assert!(err(&["launch"]).contains("unrecognized subcommand 'launch'"));
        assert!(err(&["completions", "tcsh"]).contains("invalid value 'tcsh'"));
        assert!(err(&[]).contains("Usage: elide-executor <COMMAND>"));
    }
}
