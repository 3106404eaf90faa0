//! elide-executor: one shim per Elide task (`serve`, `run`), and the operator's view of them
//! (`status`, `stop`, `signal`). See docs/executor.md.

use anyhow::Context;
use executor::args::{self, Cmd, Exit};
use executor::serve::{self, Mode, Ready};
use std::path::Path;

fn main() {
    let cli = match args::parse(std::env::args_os().skip(1)) {
        Ok(cmd) => cmd,
        Err(Exit::Help(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(Exit::Version) => {
            println!(
                "elide-executor {}",
                common::shim_api::version_text(executor::VERSION, executor::REVISION)
            );
            std::process::exit(0);
        }
        Err(Exit::Usage(text)) => {
            eprintln!("{text}");
            std::process::exit(2);
        }
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
    let code = match rt.block_on(run(cli)) {
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
async fn serve_cmd(spec_path: &Path, ready_fd: Option<i32>) -> anyhow::Result<i32> {
    // A Ctrl-C in the agent's terminal reaches its whole foreground process group; like
    // go-plugin servers, ignore it (we are in our own session anyway). SIGPIPE: errors, not
    // death, on a closed socket.
    // SAFETY: setting dispositions to SIG_IGN installs no handler.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut ready = Ready::from_fd(ready_fd);
    serve::cloexec_inherited_fds();
    let spec = match serve::read_spec(spec_path) {
        Ok(s) => s,
        Err(e) => {
            ready.error(&e);
            return Err(e.into());
        }
    };
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
    Ok(serve::run(spec, Mode::Serve { ready_fd }, ready).await?)
}

use std::os::unix::fs::DirBuilderExt;

async fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Serve { spec, ready_fd } => serve_cmd(&spec, ready_fd).await,
        Cmd::Run { spec } => {
            executor::logging::to_stderr();
            let spec = serve::read_spec(&spec)?;
            let code = serve::run(spec, Mode::Run, Ready::from_fd(None))
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
    }
}
