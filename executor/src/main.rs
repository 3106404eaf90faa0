//! elide-executor: one shim per Elide task (`serve`, `run`), and the operator's view of them
//! (`status`, `stop`, `signal`, `exec`). See docs/executor.md.

use anyhow::Context;
use executor::args::{self, Cmd};
use executor::serve::{self, Mode, Ready};
use std::path::Path;

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
    shim_main()
}

/// Everything but the two hidden modes above. Its own function, so that its frame (the
/// async runtime, the whole shim future: some KiB, every page of which the stack probes
/// touch) is not on the stack of a sandbox's PID 1, which stays for the task's life.
#[inline(never)]
fn shim_main() -> ! {
    // The plugin's `serve` line without clap; everything else (operators) through clap.
    let argv: Vec<_> = std::env::args_os().collect();
    let cli = match args::plugin_serve(argv.get(1..).unwrap_or_default()) {
        Some(cmd) => cmd,
        None => args::parse(argv).unwrap_or_else(|e| e.exit()),
    };
    // Before anything opens an fd (the async runtime's epoll would take a closed
    // --ready-fd's number): the readiness pipe, the signals a shim must survive, and no
    // inherited fd passed on to the runtime.
    let ready = match &cli {
        Cmd::Serve { ready_fd, .. } => {
            let ready = Ready::from_fd(*ready_fd);
            let mode = Mode::Serve {
                ready_fd: ready.raw_fd(),
            };
            serve::ignore_stray_signals(&mode);
            serve::block_handled_signals(&mode);
            serve::cloexec_inherited_fds();
            ready
        }
        Cmd::Run { .. } => {
            serve::ignore_stray_signals(&Mode::Run);
            serve::block_handled_signals(&Mode::Run);
            serve::cloexec_inherited_fds();
            Ready::none()
        }
        Cmd::Exec { .. } => {
            executor::cli::exec::block_window_changes();
            Ready::none()
        }
        _ => Ready::none(),
    };
    // Single-threaded on purpose: PR_SET_PDEATHSIG of the runtime is tied to the thread that
    // forked it, so the spawn must happen on this (main) thread; one thread also keeps the
    // shim's RSS small. A shim has a handful of fds, so 64 events per poll (tokio's default
    // is 1,024: a 12 KiB array) lose nothing.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .max_io_events_per_tick(64)
        .on_thread_park(executor::memory::on_park)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("elide-executor: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // On the heap, not twice on the main stack (here and in block_on's frame): the shim idles
    // in this future for its task's life, and its stack pages stay resident.
    let code = match rt.block_on(Box::pin(run(cli, ready))) {
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
    if let Err(e) = executor::logging::to_state_dir(&dir) {
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

async fn run(cmd: Cmd, ready: Ready) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Serve { spec, task, .. } => serve_cmd(&spec, &task, ready).await,
        Cmd::Run { spec } => {
            executor::logging::to_stderr();
            let spec = serve::read_spec(&spec)?;
            let code = serve::run(spec, Mode::Run, ready)
                .await
                .context("the shim failed")?;
            Ok(code)
        }
        Cmd::Status { json, state, task } => {
            Ok(executor::cli::status::run(&state.path, json, task.as_deref()).await?)
        }
        Cmd::Stop {
            signal,
            timeout,
            state,
            task,
        } => Ok(executor::cli::stop::run(&state.path, &task, &signal, &timeout).await?),
        Cmd::Signal {
            signal,
            state,
            task,
        } => Ok(executor::cli::signal::run(&state.path, &task, &signal).await?),
        Cmd::Completions { shell } => {
            args::print_completions(shell);
            Ok(0)
        }
        Cmd::Exec {
            tty,
            no_tty,
            state,
            task,
            command,
        } => {
            use executor::cli::exec::Tty;
            let tty = match (tty, no_tty) {
                (true, _) => Tty::Yes,
                (_, true) => Tty::No,
                _ => Tty::Auto,
            };
            Ok(executor::cli::exec::run(&state.path, &task, tty, command).await?)
        }
    }
}
