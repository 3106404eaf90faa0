//! `elide-executor exec [-t|-T] TASK -- COMMAND [ARGS…]`: runs a command inside a running
//! task on this node, through its shim's Exec — the same path as `nomad alloc exec`, without
//! Nomad. Exits with the command's exit code (128 + n for a death by signal n).

use super::{client_for, find_one, CliError};
use common::proto::executor as api;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use tokio::sync::mpsc;

/// Exit codes for a command that could not be run, as a shell gives them.
const NOT_FOUND: i32 = 127;
const NOT_EXECUTABLE: i32 = 126;

/// Whether to run the command on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tty {
    Yes,
    No,
    /// When stdin and stdout are terminals (like `nomad alloc exec`).
    Auto,
}

/// The local terminal in raw mode while the command runs on its remote twin; restored on drop.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// The size of the terminal on stdin, if it is one.
fn terminal_size() -> Option<api::TerminalSize> {
    // SAFETY: a winsize is plain integers; all zero is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into a live struct.
    let r = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some(api::TerminalSize {
        rows: ws.ws_row as u32,
        cols: ws.ws_col as u32,
    })
}

fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// Stdin in chunks as they come, read by a thread of its own (it may be a terminal, a pipe or
/// a file; only the first two could be polled). None: end of input.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// Blocks SIGWINCH (read from a signalfd while a terminal session runs: `crate::signals`).
/// Call it in `main` before the async runtime starts any thread.
pub fn block_window_changes() {
    // A failure cannot happen for a valid set; the session then just misses size changes.
    let _ = crate::signals::block(&[nix::sys::signal::Signal::SIGWINCH]);
}

pub async fn run(dir: &Path, task: &str, tty: Tty, command: Vec<String>) -> Result<i32, CliError> {
    let tty = match tty {
        Tty::Yes => true,
        Tty::No => false,
        Tty::Auto => is_terminal(0) && is_terminal(1),
    };
    let row = find_one(dir, task).await?;
    let mut client = client_for(&row).await?;
    let (tx, rx) = mpsc::channel::<api::ExecRequest>(16);
    let _ = tx
        .send(api::ExecRequest {
            setup: Some(api::ExecSetup {
                command,
                tty,
                tty_size: if tty { terminal_size() } else { None },
            }),
            ..Default::default()
        })
        .await;
    let call = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let mut replies = match call {
        Ok(r) => r.into_inner(),
        Err(s) => return refused(&s),
    };
    let _raw = tty.then(RawMode::enter);
    // Local stdin → the command; on a terminal, size changes too.
    let feeder = tokio::spawn(async move {
        // SIGWINCH is blocked from `main` on (`block_window_changes`), so no thread loses one.
        let mut winch = tty
            .then(|| crate::signals::Signals::new(&[nix::sys::signal::Signal::SIGWINCH]).ok())
            .flatten();
        let mut stdin = stdin_chunks();
        loop {
            let changed = async {
                match winch.as_mut() {
                    Some(w) => Some(w.recv().await),
                    None => std::future::pending().await,
                }
            };
            let msg = tokio::select! {
                chunk = stdin.recv() => match chunk {
                    None => api::ExecRequest { stdin_close: true, ..Default::default() },
                    Some(data) => api::ExecRequest { stdin: data, ..Default::default() },
                },
                Some(_) = changed => api::ExecRequest { tty_size: terminal_size(), ..Default::default() },
            };
            let last = msg.stdin_close;
            if tx.send(msg).await.is_err() || last {
                // Nothing more to send; on a terminal the stream stays open until the end.
                if last && tty {
                    std::future::pending::<()>().await;
                }
                return;
            }
        }
    });
    let mut code = 1;
    loop {
        let m = match replies.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(s) => {
                drop(_raw);
                feeder.abort();
                return Err(CliError::Rpc {
                    verb: "exec",
                    message: s.message().to_owned(),
                });
            }
        };
        if !m.stdout.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&m.stdout).and_then(|_| out.flush());
        }
        if !m.stderr.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&m.stderr).and_then(|_| err.flush());
        }
        if let Some(e) = m.exit {
            code = e.exit_code;
        }
    }
    feeder.abort();
    Ok(code)
}

/// A command the shim refused: the message on stderr, and a shell's exit code for it.
fn refused(s: &tonic::Status) -> Result<i32, CliError> {
    let code = match s.code() {
        tonic::Code::NotFound => NOT_FOUND,
        tonic::Code::PermissionDenied => NOT_EXECUTABLE,
        _ => {
            return Err(CliError::Rpc {
                verb: "exec",
                message: s.message().to_owned(),
            })
        }
    };
    eprintln!("elide-executor: exec: {}", s.message());
    Ok(code)
}
