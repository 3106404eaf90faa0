//! elide-executor: one shim per Elide task, and the operator's view of them.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "elide-executor",
    version,
    about = "Per-task shim of nomad-driver-elide, and the operator's view of its tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one shim for the plugin (internal: started by nomad-driver-elide).
    Serve {
        #[arg(long)]
        spec: PathBuf,
        /// Write READY or ERROR <message> to this fd once the socket is up.
        #[arg(long)]
        ready_fd: Option<i32>,
    },
    /// Run one shim in the foreground, without Nomad, for debugging (spec: docs/executor.md).
    Run {
        #[arg(long)]
        spec: PathBuf,
    },
    /// List every Elide task on this node.
    Status {
        #[arg(long)]
        json: bool,
        /// The plugin's runtime_dir.
        #[arg(long, default_value = common::paths::DEFAULT_RUNTIME_DIR)]
        state_dir: PathBuf,
        /// A task id, task key, alloc id prefix or task name.
        task: Option<String>,
    },
    /// Stop one task: signal, wait, then SIGKILL.
    Stop {
        #[arg(long, default_value = "SIGTERM")]
        signal: String,
        #[arg(long, default_value = "5s")]
        timeout: String,
        #[arg(long, default_value = common::paths::DEFAULT_RUNTIME_DIR)]
        state_dir: PathBuf,
        task: String,
    },
    /// Send a signal to one task's runtime.
    Signal {
        signal: String,
        #[arg(long, default_value = common::paths::DEFAULT_RUNTIME_DIR)]
        state_dir: PathBuf,
        task: String,
    },
}

fn init_logging(to_file: Option<PathBuf>) {
    use tracing_subscriber::fmt;
    let builder = fmt().with_ansi(false).with_target(false);
    match to_file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    }) {
        Some(f) => {
            let _ = builder
                .json()
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}

fn main() {
    let cli = Cli::parse();
    // Single-threaded on purpose: the runtime's parent-death signal is tied to the thread that
    // forked it, and one thread keeps the shim's RSS small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("elide-executor: cannot start: {e}");
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
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.cmd {
        Cmd::Serve { spec, ready_fd } => {
            // SAFETY: setting signal dispositions to ignore has no handler to be unsafe about.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            }
            let log = spec.parent().map(|d| d.join("executor.log"));
            init_logging(log);
            let code = executor::server::run(&spec, executor::server::Mode::Serve { ready_fd })
                .await
                .context("shim failed")?;
            let _ = code;
            Ok(0)
        }
        Cmd::Run { spec } => {
            init_logging(None);
            Ok(executor::server::run(&spec, executor::server::Mode::Run)
                .await
                .context("shim failed")?)
        }
        Cmd::Status {
            json,
            state_dir,
            task,
        } => {
            let rows = executor::cli::collect(&state_dir)
                .await
                .map_err(anyhow::Error::msg)?;
            let shown = executor::cli::filter(&rows, task.as_deref());
            if let Some(t) = &task {
                if shown.is_empty() {
                    anyhow::bail!("no Elide task matches {t:?} in {}", state_dir.display());
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!("{}", executor::cli::table(&shown));
            }
            // Non-zero when a shim that should be running cannot be reached.
            Ok(
                if shown.iter().any(|r| !r.reachable && r.exit_code.is_none()) {
                    1
                } else {
                    0
                },
            )
        }
        Cmd::Stop {
            signal,
            timeout,
            state_dir,
            task,
        } => {
            let row = executor::cli::find_one(&state_dir, &task)
                .await
                .map_err(anyhow::Error::msg)?;
            let timeout = common::duration::parse(&timeout)?;
            let mut c = executor::cli::client_for(&row)
                .await
                .map_err(anyhow::Error::msg)?;
            let r = c
                .stop(common::proto::executor::StopRequest {
                    signal,
                    timeout_ms: timeout.as_millis() as u64,
                })
                .await
                .map_err(|s| anyhow::anyhow!("stop failed: {}", s.message()))?
                .into_inner();
            let e = r.exit.unwrap_or_default();
            println!(
                "stopped {} ({}): exit code {}, signal {}",
                row.task_name, row.task_id, e.exit_code, e.signal
            );
            Ok(0)
        }
        Cmd::Signal {
            signal,
            state_dir,
            task,
        } => {
            let row = executor::cli::find_one(&state_dir, &task)
                .await
                .map_err(anyhow::Error::msg)?;
            let mut c = executor::cli::client_for(&row)
                .await
                .map_err(anyhow::Error::msg)?;
            c.signal(common::proto::executor::SignalRequest {
                signal: signal.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("signal failed: {}", s.message()))?;
            println!("sent {signal} to {} ({})", row.task_name, row.task_id);
            Ok(0)
        }
    }
}
