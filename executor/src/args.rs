//! The command line of `elide-executor`, parsed by hand: six subcommands with a few options
//! each do not need an argument-parsing library in a binary that runs once per task
//! (docs/performance.md). Accepts `--opt value` and `--opt=value`, `--` before a positional
//! that starts with `-`, `-h`/`--help` (also `help [COMMAND]`) and `-V`/`--version`; usage
//! errors exit 2, as they did with clap.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, PartialEq)]
pub enum Cmd {
    Serve {
        spec: PathBuf,
        ready_fd: Option<i32>,
        task: String,
    },
    Run {
        spec: PathBuf,
    },
    Status {
        json: bool,
        state_dir: PathBuf,
        task: Option<String>,
    },
    Stop {
        signal: String,
        timeout: String,
        state_dir: PathBuf,
        task: String,
    },
    Exec {
        tty: bool,
        no_tty: bool,
        state_dir: PathBuf,
        task: String,
        command: Vec<String>,
    },
    Signal {
        signal: String,
        state_dir: PathBuf,
        task: String,
    },
}

/// Not a command to run: what to print instead, and the exit status.
#[derive(Debug, PartialEq)]
pub enum Exit {
    /// Help text on stdout, status 0.
    Help(String),
    /// `--version`, status 0.
    Version,
    /// A usage error on stderr, status 2.
    Usage(String),
}

const ABOUT: &str = "Per-task shim of nomad-driver-elide, and the operator's view of its tasks";

const TOP: &str = "\
Usage: elide-executor <COMMAND>

Commands:
  serve   Run one shim for the plugin (started by nomad-driver-elide; not for interactive use)
  run     Run one shim in the foreground without Nomad, for debugging: starts the runtime,
          serves the socket (status/stop/signal work), exits with the runtime's exit code
  status  List every Elide task on this node
  stop    Stop one task: send the signal, wait, then SIGKILL its process group
  exec    Run a command inside one running task (its sandbox, cgroup, user, environment and
          dir), like `nomad alloc exec`: `elide-executor exec TASK -- /bin/sh`
  signal  Send a signal to one task's runtime
  help    Print this message or the help of the given command

Options:
  -h, --help     Print help
  -V, --version  Print version
";

/// (name, usage line, help body) of each command.
const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "serve",
        "serve --spec <SPEC> [--ready-fd <N>] --task <TASK>",
        "Run one shim for the plugin (started by nomad-driver-elide; not for interactive use)

Options:
      --spec <SPEC>      The task spec (JSON, docs/executor.md); `-` reads it from stdin, as the
                         plugin passes it (the task's environment never touches the disk)
      --ready-fd <N>     Write `READY` (or `ERROR <message>`) and close this fd once the socket is up
      --task <TASK>      The task id (`<alloc id>/<task name>/<n>`), so `ps` shows which task a
                         shim runs; it must be the spec's `task_id`
  -h, --help             Print help
",
    ),
    (
        "run",
        "run --spec <SPEC>",
        "Run one shim in the foreground without Nomad, for debugging: starts the runtime, serves
the socket (status/stop/signal work), exits with the runtime's exit code

Options:
      --spec <SPEC>  The task spec (JSON, docs/executor.md)
  -h, --help         Print help
",
    ),
    (
        "status",
        "status [--json] [--state-dir <STATE_DIR>] [TASK]",
        "List every Elide task on this node

Arguments:
  [TASK]  Only this task: a task id, task key, alloc id prefix (>= 4 chars) or task name

Options:
      --json                   JSON (an array of objects) instead of a table
      --state-dir <STATE_DIR>  The plugin's runtime_dir, holding the sockets and the task index
                               [default: /run/nomad-driver-elide]
  -h, --help                   Print help
",
    ),
    (
        "stop",
        "stop [--signal <SIGNAL>] [--timeout <TIMEOUT>] [--state-dir <STATE_DIR>] <TASK>",
        "Stop one task: send the signal, wait, then SIGKILL its process group

Arguments:
  <TASK>  A task id, task key, alloc id prefix or task name

Options:
      --signal <SIGNAL>        [default: SIGTERM]
      --timeout <TIMEOUT>      How long to wait after the signal before SIGKILL (e.g. 5s, 1m30s)
                               [default: 5s]
      --state-dir <STATE_DIR>  [default: /run/nomad-driver-elide]
  -h, --help                   Print help
",
    ),
    (
        "exec",
        "exec [-t|-T] [--state-dir <STATE_DIR>] <TASK> <COMMAND>...",
        "Run a command inside one running task (its sandbox, cgroup, user, environment and dir),
like `nomad alloc exec`: `elide-executor exec TASK -- /bin/sh`

Arguments:
  <TASK>        A task id, task key, alloc id prefix or task name
  <COMMAND>...  The program (looked up in the task's PATH) and its arguments

Options:
  -t, --tty                    Run it on a terminal (default: when stdin and stdout are terminals)
  -T, --no-tty                 Never run it on a terminal
      --state-dir <STATE_DIR>  [default: /run/nomad-driver-elide]
  -h, --help                   Print help
",
    ),
    (
        "signal",
        "signal [--state-dir <STATE_DIR>] <SIGNAL> <TASK>",
        "Send a signal to one task's runtime

Arguments:
  <SIGNAL>  e.g. SIGUSR1, HUP, 10
  <TASK>    A task id, task key, alloc id prefix or task name

Options:
      --state-dir <STATE_DIR>  [default: /run/nomad-driver-elide]
  -h, --help                   Print help
",
    ),
];

fn top_help() -> String {
    format!("{ABOUT}\n\n{TOP}")
}

fn command_help(name: &str) -> Option<String> {
    let (_, usage, body) = COMMANDS.iter().find(|(n, _, _)| *n == name)?;
    let (about, rest) = body.split_once("\n\n").unwrap_or((body, ""));
    Some(format!(
        "{about}\n\nUsage: elide-executor {usage}\n\n{rest}"
    ))
}

fn usage(cmd: Option<&str>, message: String) -> Exit {
    let line = cmd
        .and_then(|c| COMMANDS.iter().find(|(n, _, _)| *n == c))
        .map(|(_, u, _)| format!("elide-executor {u}"))
        .unwrap_or_else(|| "elide-executor <COMMAND>".into());
    let help = match cmd {
        Some(c) => format!("elide-executor {c} --help"),
        None => "elide-executor --help".into(),
    };
    Exit::Usage(format!(
        "error: {message}\n\nUsage: {line}\n\nFor more information, try '{help}'."
    ))
}

/// The options and positionals after a command name.
struct Words {
    cmd: &'static str,
    options: Vec<(String, Option<String>)>,
    positionals: Vec<String>,
}

impl Words {
    /// Splits `args` by what each option of `cmd` takes (`takes_value`); `--help` anywhere
    /// wins.
    fn split(
        cmd: &'static str,
        args: &mut dyn Iterator<Item = String>,
        known: &[(&str, bool)],
    ) -> Result<Words, Exit> {
        Self::split_trailing(cmd, args, known, &[], usize::MAX)
    }

    /// [`Words::split`] where `short` maps one-letter options to long ones, and the
    /// positional at index `trailing` takes the rest of the line verbatim (a command and its
    /// arguments): once it starts, nothing after it is an option.
    fn split_trailing(
        cmd: &'static str,
        args: &mut dyn Iterator<Item = String>,
        known: &[(&str, bool)],
        short: &[(&str, &str)],
        trailing: usize,
    ) -> Result<Words, Exit> {
        let mut w = Words {
            cmd,
            options: Vec::new(),
            positionals: Vec::new(),
        };
        let mut only_positionals = false;
        while let Some(a) = args.next() {
            if w.positionals.len() > trailing {
                w.positionals.push(a);
                continue;
            }
            if only_positionals || !a.starts_with('-') || a == "-" {
                w.positionals.push(a);
                continue;
            }
            if a == "--" {
                only_positionals = true;
                continue;
            }
            if a == "-h" || a == "--help" {
                return Err(Exit::Help(command_help(cmd).unwrap_or_default()));
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (a.clone(), None),
            };
            let name = short
                .iter()
                .find(|(s, _)| *s == name)
                .map(|(_, long)| (*long).to_owned())
                .unwrap_or(name);
            let Some((_, takes_value)) = known.iter().find(|(n, _)| *n == name) else {
                if w.positionals.len() == trailing {
                    // The command itself may start with a dash.
                    w.positionals.push(a);
                    continue;
                }
                return Err(usage(Some(cmd), format!("unexpected argument '{a}' found")));
            };
            let value = match (takes_value, inline) {
                (true, Some(v)) => Some(v),
                (true, None) => Some(args.next().ok_or_else(|| {
                    usage(
                        Some(cmd),
                        format!("a value is required for '{name}' but none was supplied"),
                    )
                })?),
                (false, None) => None,
                (false, Some(_)) => {
                    return Err(usage(Some(cmd), format!("'{name}' takes no value")))
                }
            };
            if w.options.iter().any(|(n, _)| *n == name) {
                return Err(usage(
                    Some(cmd),
                    format!("the argument '{name}' cannot be used multiple times"),
                ));
            }
            w.options.push((name, value));
        }
        Ok(w)
    }

    fn value(&self, name: &str) -> Option<String> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    }

    fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| n == name)
    }

    fn required(&self, name: &str, value_name: &str) -> Result<String, Exit> {
        self.value(name)
            .ok_or_else(|| self.not_provided([format!("{name} <{value_name}>")]))
    }

    /// The usage error listing required arguments that are missing, clap's way.
    fn not_provided(&self, missing: impl IntoIterator<Item = String>) -> Exit {
        let lines: Vec<String> = missing.into_iter().map(|m| format!("  {m}")).collect();
        usage(
            Some(self.cmd),
            format!(
                "the following required arguments were not provided:\n{}",
                lines.join("\n")
            ),
        )
    }

    /// The positionals of a command whose last one takes the rest of the line: at least
    /// `names.len()` of them.
    fn positionals_and_rest(&self, names: &[&str]) -> Result<Vec<String>, Exit> {
        let n = self.positionals.len();
        if n < names.len() {
            return Err(self.not_provided(names[n..].iter().map(|m| m.to_string())));
        }
        Ok(self.positionals.clone())
    }

    /// Exactly `names.len() - optional` to `names.len()` positionals.
    fn positionals(&self, names: &[&str], optional: usize) -> Result<Vec<String>, Exit> {
        let n = self.positionals.len();
        if n > names.len() {
            return Err(usage(
                Some(self.cmd),
                format!(
                    "unexpected argument '{}' found",
                    self.positionals[names.len()]
                ),
            ));
        }
        if n + optional < names.len() {
            let missing = names[n..names.len() - optional].iter();
            return Err(self.not_provided(missing.map(|m| format!("<{m}>"))));
        }
        Ok(self.positionals.clone())
    }

    fn state_dir(&self) -> PathBuf {
        self.value("--state-dir")
            .unwrap_or_else(|| common::paths::DEFAULT_RUNTIME_DIR.into())
            .into()
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cmd, Exit> {
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    let Some(first) = args.next() else {
        return Err(Exit::Usage(format!(
            "{}\nerror: a command is required",
            top_help()
        )));
    };
    let cmd: &'static str = match first.as_str() {
        "-h" | "--help" => return Err(Exit::Help(top_help())),
        "-V" | "--version" => return Err(Exit::Version),
        "help" => {
            return Err(Exit::Help(match args.next() {
                Some(c) => command_help(&c)
                    .ok_or_else(|| usage(None, format!("unrecognized subcommand '{c}'")))?,
                None => top_help(),
            }))
        }
        c => match COMMANDS.iter().find(|(n, _, _)| *n == c) {
            Some((n, _, _)) => n,
            None => return Err(usage(None, format!("unrecognized subcommand '{c}'"))),
        },
    };
    Ok(match cmd {
        "serve" => {
            let w = Words::split(
                cmd,
                &mut args,
                &[("--spec", true), ("--ready-fd", true), ("--task", true)],
            )?;
            w.positionals(&[], 0)?;
            let ready_fd = match w.value("--ready-fd") {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| {
                    usage(
                        Some(cmd),
                        format!("invalid value '{v}' for '--ready-fd <N>': not a number"),
                    )
                })?),
            };
            Cmd::Serve {
                spec: w.required("--spec", "SPEC")?.into(),
                ready_fd,
                task: w.required("--task", "TASK")?,
            }
        }
        "run" => {
            let w = Words::split(cmd, &mut args, &[("--spec", true)])?;
            w.positionals(&[], 0)?;
            Cmd::Run {
                spec: w.required("--spec", "SPEC")?.into(),
            }
        }
        "status" => {
            let w = Words::split(cmd, &mut args, &[("--json", false), ("--state-dir", true)])?;
            let p = w.positionals(&["TASK"], 1)?;
            Cmd::Status {
                json: w.flag("--json"),
                state_dir: w.state_dir(),
                task: p.into_iter().next(),
            }
        }
        "stop" => {
            let w = Words::split(
                cmd,
                &mut args,
                &[
                    ("--signal", true),
                    ("--timeout", true),
                    ("--state-dir", true),
                ],
            )?;
            let p = w.positionals(&["TASK"], 0)?;
            Cmd::Stop {
                signal: w
                    .value("--signal")
                    .unwrap_or_else(|| common::spec::DEFAULT_STOP_SIGNAL.into()),
                timeout: w.value("--timeout").unwrap_or_else(|| "5s".into()),
                state_dir: w.state_dir(),
                task: p.into_iter().next().unwrap_or_default(),
            }
        }
        "exec" => {
            let w = Words::split_trailing(
                cmd,
                &mut args,
                &[("--tty", false), ("--no-tty", false), ("--state-dir", true)],
                &[("-t", "--tty"), ("-T", "--no-tty")],
                1,
            )?;
            let (tty, no_tty) = (w.flag("--tty"), w.flag("--no-tty"));
            if tty && no_tty {
                return Err(usage(
                    Some(cmd),
                    "the argument '--tty' cannot be used with '--no-tty'".into(),
                ));
            }
            let mut p = w
                .positionals_and_rest(&["<TASK>", "<COMMAND>..."])?
                .into_iter();
            Cmd::Exec {
                tty,
                no_tty,
                state_dir: w.state_dir(),
                task: p.next().unwrap_or_default(),
                command: p.collect(),
            }
        }
        _ => {
            let w = Words::split(cmd, &mut args, &[("--state-dir", true)])?;
            let mut p = w.positionals(&["SIGNAL", "TASK"], 0)?.into_iter();
            Cmd::Signal {
                signal: p.next().unwrap_or_default(),
                task: p.next().unwrap_or_default(),
                state_dir: w.state_dir(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cmd, Exit> {
        parse(args.iter().map(OsString::from))
    }

    fn err(args: &[&str]) -> String {
        match p(args) {
            Err(Exit::Usage(m)) => m,
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
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
            ]),
            Ok(Cmd::Serve {
                spec: "/s.json".into(),
                ready_fd: Some(3),
                task: "a/t/0".into()
            })
        );
        assert_eq!(
            p(&["serve", "--spec", "-", "--task=a/t/0"]),
            Ok(Cmd::Serve {
                spec: "-".into(),
                ready_fd: None,
                task: "a/t/0".into()
            })
        );
        assert_eq!(
            p(&["run", "--spec=/s.json"]),
            Ok(Cmd::Run {
                spec: "/s.json".into()
            })
        );
        assert_eq!(
            p(&["status"]),
            Ok(Cmd::Status {
                json: false,
                state_dir: common::paths::DEFAULT_RUNTIME_DIR.into(),
                task: None
            })
        );
        assert_eq!(
            p(&["status", "web", "--json", "--state-dir", "/r"]),
            Ok(Cmd::Status {
                json: true,
                state_dir: "/r".into(),
                task: Some("web".into())
            })
        );
        assert_eq!(
            p(&["stop", "--signal", "SIGINT", "a1b2"]),
            Ok(Cmd::Stop {
                signal: "SIGINT".into(),
                timeout: "5s".into(),
                state_dir: common::paths::DEFAULT_RUNTIME_DIR.into(),
                task: "a1b2".into()
            })
        );
        assert_eq!(
            p(&["signal", "--state-dir", "/r", "HUP", "--", "-odd-name"]),
            Ok(Cmd::Signal {
                signal: "HUP".into(),
                state_dir: "/r".into(),
                task: "-odd-name".into()
            })
        );
        let exec = |tty, no_tty, task: &str, command: &[&str]| Cmd::Exec {
            tty,
            no_tty,
            state_dir: common::paths::DEFAULT_RUNTIME_DIR.into(),
            task: task.into(),
            command: command.iter().map(|c| c.to_string()).collect(),
        };
        assert_eq!(
            p(&["exec", "web", "--", "/bin/sh", "-c", "echo --tty"]),
            Ok(exec(false, false, "web", &["/bin/sh", "-c", "echo --tty"]))
        );
        // The command starts at its first word: what follows is its own.
        assert_eq!(
            p(&["exec", "-t", "web", "ls", "-la", "--state-dir", "/x"]),
            Ok(exec(
                true,
                false,
                "web",
                &["ls", "-la", "--state-dir", "/x"]
            ))
        );
        assert_eq!(
            p(&["exec", "web", "-T", "-x"]),
            Ok(exec(false, true, "web", &["-x"]))
        );
        assert_eq!(
            p(&["exec", "--state-dir=/r", "--no-tty", "web", "tty"]),
            Ok(Cmd::Exec {
                tty: false,
                no_tty: true,
                state_dir: "/r".into(),
                task: "web".into(),
                command: vec!["tty".into()],
            })
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p(&["--version"]), Err(Exit::Version));
        assert_eq!(p(&["-V"]), Err(Exit::Version));
        let Err(Exit::Help(h)) = p(&["--help"]) else {
            panic!()
        };
        assert!(h.contains("Usage: elide-executor <COMMAND>") && h.contains("signal"));
        assert!(h.contains("  exec    Run a command inside one running task"));
        let Err(Exit::Help(h)) = p(&["stop", "x", "--help"]) else {
            panic!()
        };
        assert!(h.contains("Usage: elide-executor stop") && h.contains("[default: 5s]"));
        assert_eq!(
            p(&["help", "status"]),
            Err(Exit::Help(command_help("status").unwrap()))
        );
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
        assert!(e.contains("try 'elide-executor serve --help'"), "{e}");
        assert!(err(&["serve", "--spec"]).contains("a value is required for '--spec'"));
        assert!(err(&["serve", "--spec", "-"]).contains("not provided:\n  --task <TASK>"));
        assert!(err(&["exec", "web"]).contains("not provided:\n  <COMMAND>..."));
        assert!(err(&["exec"]).contains("not provided:\n  <TASK>\n  <COMMAND>..."));
        assert!(err(&["exec", "-t", "-T", "web", "sh"]).contains("cannot be used with"));
        assert!(err(&["exec", "--jsn", "web", "sh"]).contains("unexpected argument '--jsn'"));
        assert!(err(&["serve", "--spec", "x", "--ready-fd", "three"]).contains("not a number"));
        assert!(err(&["status", "--jsn"]).contains("unexpected argument '--jsn'"));
        assert!(err(&["status", "a", "b"]).contains("unexpected argument 'b'"));
        assert!(err(&["stop"]).contains("<TASK>"));
        assert!(err(&["signal", "HUP"]).contains("<TASK>"));
        assert!(err(&["status", "--json=yes"]).contains("takes no value"));
        assert!(err(&["stop", "--signal", "A", "--signal", "B", "t"]).contains("multiple times"));
        assert!(err(&["launch"]).contains("unrecognized subcommand 'launch'"));
        assert!(err(&[]).contains("a command is required"));
    }
}
