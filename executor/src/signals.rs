//! Signals read from a signalfd, for the shim's serve loop (SIGCHLD, SIGTERM; `run`: SIGINT,
//! SIGHUP) and the operator's `exec` (SIGWINCH).
//!
//! Not `tokio::signal`: with it (or `tokio::process`) compiled in, every runtime that has I/O
//! builds tokio's signal registry, a channel for each of the 64 signal numbers, used or not
//! (~22 KiB of heap and a socket pair in every shim: docs/performance.md). The shim's tokio
//! has neither feature; a signalfd is one fd.
//!
//! A signalfd only sees a signal that every thread blocks: [`block`] it in `main` before the
//! async runtime starts a thread (they inherit the mask). Every child the shim starts gets an
//! empty mask back before its exec (`runtime::default_signals`; std's `Command` does the same).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::unix::AsyncFd;

fn set(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    set
}

/// Blocks `signals` in the calling thread and in the threads it starts from now on.
pub fn block(signals: &[Signal]) -> std::io::Result<()> {
    Ok(set(signals).thread_block()?)
}

/// An async signalfd.
pub struct Signals(AsyncFd<SignalFd>);

impl Signals {
    /// Takes `signals` (blocking them in this thread too; see the module doc for the others).
    pub fn new(signals: &[Signal]) -> std::io::Result<Signals> {
        block(signals)?;
        let fd = SignalFd::with_flags(
            &set(signals),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )?;
        // SAFETY: the AsyncFd owns the SignalFd, which keeps the same open fd until dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(Signals(fd))
    }

    /// The next signal's number (a signal sent several times before this read counts once).
    pub async fn recv(&mut self) -> i32 {
        loop {
            let Ok(mut ready) = self.0.readable_mut().await else {
                // Only a runtime shutting down fails this: nothing to receive any more.
                return std::future::pending().await;
            };
            match ready.get_inner().read_signal() {
                Ok(Some(info)) => return info.ssi_signo as i32,
                // Nothing pending (EAGAIN), or a read error: wait for the next readiness.
                Ok(None) | Err(_) => ready.clear_ready(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_sent_to_the_process_is_read() {
        // SIGURG: ignored by default, so a thread of the test harness that does not block it
        // loses nothing but this test's copy; this test's thread blocks it and reads it.
        let mut s = Signals::new(&[Signal::SIGURG]).unwrap();
        // SAFETY: pthread_kill of this thread with a signal it blocks.
        let sent = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGURG) };
        assert_eq!(sent, 0);
        assert_eq!(s.recv().await, libc::SIGURG);
    }
}
