//! elide-executor: one shim per Elide task (`serve`, `run`), and the operator's view of them
//! (`status`, `stop`, `signal`). See docs/executor.md.

use anyhow::Context;
use clap::{Parser, Subcommand};
use executor::serve::{self, Mode, Ready};
use std::path::{Path, PathBuf};

/// `elide-executor --version`: version, git revision and shim API level.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    common::shim_api::version_text(executor::VERSION, executor::REVISION)
});

#[derive(Parser)]
#[command(
    name = "elide-executor",
    version = VERSION.as_str(),
    about = "Per-task shim of nomad-driver-elide, and the operator's view of its tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one shim for the plugin (started by nomad-driver-elide; not for interactive use).
    Serve {
        /// The task spec (JSON, docs/executor.md); `-` reads it from stdin, as the plugin
        /// passes it (the task's environment never touches the disk).
        #[arg(long)]
        spec: PathBuf,
        /// Write `READY` (or `ERROR <message>`) and close this fd once the socket is up.
        #[arg(long)]
        ready_fd: Option<i32>,
        /// The task id (`<alloc id>/<task name>/<n>`), so `ps` shows which task a shim runs;
        /// it must be the spec's `task_id`.
        #[arg(long)]
        task: String,
    },
    /// Run one shim in the foreground without Nomad, for debugging: starts the runtime,
    /// serves the socket (status/stop/signal work), exits with the runtime's exit code.
    Run {
        /// The task spec (JSON, docs/executor.md).
        #[arg(long)]
        spec: PathBuf,
    },
    /// List every Elide task on this node.
    Status {
        /// JSON (an array of objects) instead of a table.
        #[arg(long)]
        json: bool,
        /// The plugin's runtime_dir, holding the sockets and the task index.
        #[arg(long, default_value = common::paths::DEFAULT_RUNTIME_DIR)]
        state_dir: PathBuf,
        /// Only this task: a task id, task key, alloc id prefix (>= 4 chars) or task name.
        task: Option<String>,
    },
    /// Stop one task: send the signal, wait, then SIGKILL its process group.
    Stop {
        #[arg(long, default_value = common::spec::DEFAULT_STOP_SIGNAL)]
        signal: String,
        /// How long to wait after the signal before SIGKILL (e.g. 5s, 1m30s).
        #[arg(long, default_value = "5s")]
        timeout: String,
        #[arg(long, default_value = common::paths::DEFAULT_RUNTIME_DIR)]
        state_dir: PathBuf,
        /// A task id, task key, alloc id prefix or task name.
        task: String,
    },
    /// Run a command inside one running task (its sandbox, cgroup, user, environment and
    /// dir), like `nomad alloc exec`: `elide-executor exec TASK -- /bin/sh`.
    Exec {
        /// Run it on a terminal (default: when stdin and stdout are terminals).
        #[arg(short = 't', long, conflicts_with = "no_tty")]
        tty: bool,
        /// Never run it on a terminal.
        #[arg(short = 'T', long)]
        no_tty: bool,
        #[arg(long, default_value = common::paths::DEFAULT_RUNTIME_DIR)]
        state_dir: PathBuf,
        /// A task id, task key, alloc id prefix or task name.
        task: String,
        /// The program (looked up in the task's PATH) and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Send a signal to one task's runtime.
    Signal {
        /// e.g. SIGUSR1, HUP, 10.
        signal: String,
        #[arg(long, default_value = common::paths::DEFAULT_RUNTIME_DIR)]
        state_dir: PathBuf,
        /// A task id, task key, alloc id prefix or task name.
        task: String,
    },
}

fn main() {
    // The sandbox set-up process the shim starts for each runtime: single-threaded, before
    // any runtime or parser exists (docs/executor.md, "Sandbox"). Not for operators.
    if std::env::args_os().nth(1).as_deref() == Some(executor::sandbox::INIT_COMMAND.as_ref()) {
        executor::sandbox::init::main();
    }
    // The same for a command run inside the task (docs/executor.md, "Exec").
    if std::env::args_os().nth(1).as_deref() == Some(executor::exec::EXEC_COMMAND.as_ref()) {
        executor::exec::helper::main();
    }
    let cli = Cli::parse();
    // Before anything opens an fd (the async runtime's epoll would take a closed
    // --ready-fd's number): the readiness pipe, the signals a shim must survive, and no
    // inherited fd passed on to the runtime.
    let ready = match &cli.cmd {
        Cmd::Serve { ready_fd, .. } => {
            let ready = Ready::from_fd(*ready_fd);
            serve::ignore_stray_signals(&Mode::Serve {
                ready_fd: ready.raw_fd(),
            });
            serve::cloexec_inherited_fds();
            ready
        }
        Cmd::Run { .. } => {
            serve::ignore_stray_signals(&Mode::Run);
            serve::cloexec_inherited_fds();
            Ready::none()
        }
        _ => Ready::none(),
    };
    // Single-threaded on purpose: PR_SET_PDEATHSIG of the runtime is tied to the thread that
    // forked it, so the spawn must happen on this (main) thread; one thread also keeps the
    // shim's RSS small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("elide-executor: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(run(cli, ready)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("elide-executor: {e:#}");
            1
        }
    };
    // Blocking threads (FIFO openers) may still be parked; do not wait for them.
    rt.shutdown_background();
    std::process::exit(code);
}

/// `serve`: everything before READY that can fail reports `ERROR <message>` on the ready fd.
async fn serve_cmd(spec_path: &Path, task: &str, mut ready: Ready) -> anyhow::Result<i32> {
    let spec = match serve::read_spec(spec_path) {
        Ok(s) => s,
        Err(e) => {
            ready.error(&e);
            return Err(e.into());
        }
    };
    // The command line names the task for operators (`ps`); it must not name another one.
    if spec.task_id != task {
        let msg = format!(
            "--task {task:?} is not the spec's task_id {:?}; pass the task id of the spec",
            spec.task_id
        );
        ready.error(&msg);
        anyhow::bail!(msg);
    }
    let dir = spec
        .state_path
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let log = dir.join(common::paths::LOG_FILE);
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|_| executor::logging::to_file(&log))
    {
        let msg = format!(
            "cannot open the shim log {}: {e}; check that the task's state dir is writable",
            log.display()
        );
        ready.error(&msg);
        anyhow::bail!(msg);
    }
    let ready_fd = ready.raw_fd();
    Ok(serve::run(spec, Mode::Serve { ready_fd }, ready).await?)
}

use std::os::unix::fs::DirBuilderExt;

async fn run(cli: Cli, ready: Ready) -> anyhow::Result<i32> {
    match cli.cmd {
        Cmd::Serve { spec, task, .. } => serve_cmd(&spec, &task, ready).await,
        Cmd::Run { spec } => {
            executor::logging::to_stderr();
            let spec = serve::read_spec(&spec)?;
            let code = serve::run(spec, Mode::Run, ready)
                .await
                .context("the shim failed")?;
            Ok(code)
        }
        Cmd::Status {
            json,
            state_dir,
            task,
        } => Ok(executor::cli::status::run(&state_dir, json, task.as_deref()).await?),
        Cmd::Stop {
            signal,
            timeout,
            state_dir,
            task,
        } => Ok(executor::cli::stop::run(&state_dir, &task, &signal, &timeout).await?),
        Cmd::Signal {
            signal,
            state_dir,
            task,
        } => Ok(executor::cli::signal::run(&state_dir, &task, &signal).await?),
        Cmd::Exec {
            tty,
            no_tty,
            state_dir,
            task,
            command,
        } => {
            use executor::cli::exec::Tty;
            let tty = match (tty, no_tty) {
                (true, _) => Tty::Yes,
                (_, true) => Tty::No,
                _ => Tty::Auto,
            };
            Ok(executor::cli::exec::run(&state_dir, &task, tty, command).await?)
        }
    }
}
