//! Reaping: the shim is the runtime's parent and a child subreaper, so every process of the
//! task that loses its parent (double-forking daemons, orphaned grandchildren) ends up as its
//! child too. On each SIGCHLD it collects every exited child with `waitpid(-1, WNOHANG)`.
//! (Not tokio::process: its own SIGCHLD handling would race this loop for the statuses.)
//!
//! Besides the runtime, the shim starts children whose exits someone waits for (the helpers
//! that run `nomad alloc exec` commands): [`Children`] maps their pids to their waiters, so
//! the loop hands each exit to whoever waits for it instead of discarding it as an orphan's.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// One reaped child, with Nomad's exit-code convention: a signal death reports
/// `signal = n` and `exit_code = 128 + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: i32,
    pub exit_code: i32,
    pub signal: i32,
}

/// Maps a raw wait status to an exit; None for statuses that are not an exit (stop/continue).
/// Raw, not nix's `WaitStatus`: that one cannot represent a death by a real-time signal
/// (SIGRTMIN+n) and turns it into an error after the kernel has already reaped the child,
/// which would lose the exit.
pub fn decode(pid: i32, status: libc::c_int) -> Option<Reaped> {
    if libc::WIFEXITED(status) {
        return Some(Reaped {
            pid,
            exit_code: libc::WEXITSTATUS(status),
            signal: 0,
        });
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        return Some(Reaped {
            pid,
            exit_code: 128 + sig,
            signal: sig,
        });
    }
    None
}

/// Reaps every child that has exited so far, without blocking.
pub fn reap_exited() -> Vec<Reaped> {
    let mut out = Vec::new();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one int through a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        // 0: children left, none exited. -1: ECHILD, no children (EINTR cannot happen with
        // WNOHANG).
        if pid <= 0 {
            return out;
        }
        out.extend(decode(pid, status));
    }
}

/// Children of the shim other than the runtime whose exits are awaited: pid → waiter.
///
/// A child must be registered ([`Children::expect`]) before the reaping loop can run again
/// after its fork: the shim runs on one thread, so registering right after the fork, before
/// the next `.await`, guarantees its exit is never taken for an orphan's.
#[derive(Debug, Default)]
pub struct Children {
    waiters: Mutex<HashMap<i32, oneshot::Sender<Reaped>>>,
}

impl Children {
    /// Registers `pid`; the receiver gets its exit once it is reaped.
    pub fn expect(&self, pid: i32) -> oneshot::Receiver<Reaped> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(pid, tx);
        rx
    }

    /// Hands an exit to its waiter. Gives it back when nobody registered the pid (the
    /// runtime, or an orphan re-parented to the shim).
    pub fn deliver(&self, r: Reaped) -> Option<Reaped> {
        match self.lock().remove(&r.pid) {
            Some(tx) => {
                // A waiter that went away no longer cares; the exit is still consumed.
                let _ = tx.send(r);
                None
            }
            None => Some(r),
        }
    }

    /// How many registered children have not been reaped yet.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<Reaped>>> {
        common::sync::lock(&self.waiters)
    }
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_follow_nomads_convention() {
        let exited = std::process::ExitStatus::from_raw(3 << 8).into_raw();
        assert_eq!(
            decode(42, exited),
            Some(Reaped {
                pid: 42,
                exit_code: 3,
                signal: 0
            })
        );
        assert_eq!(
            decode(42, libc::SIGKILL),
            Some(Reaped {
                pid: 42,
                exit_code: 137,
                signal: 9
            })
        );
        // Stopped by SIGSTOP: 0x7f in the low byte, the signal above it.
        assert_eq!(decode(42, (libc::SIGSTOP << 8) | 0x7f), None);
    }

    #[test]
    fn registered_children_get_their_exit_and_others_are_given_back() {
        let children = Children::default();
        let mut rx = children.expect(10);
        let _dropped = children.expect(11);
        assert_eq!(children.pending(), 2);
        let exit = Reaped {
            pid: 10,
            exit_code: 3,
            signal: 0,
        };
        assert_eq!(children.deliver(exit), None);
        assert_eq!(rx.try_recv(), Ok(exit));
        // Not registered: the runtime or an orphan, handled by the caller.
        let orphan = Reaped {
            pid: 12,
            exit_code: 0,
            signal: 0,
        };
        assert_eq!(children.deliver(orphan), Some(orphan));
        // Delivered once only; a waiter that is gone does not keep its pid registered.
        assert_eq!(children.deliver(exit), Some(exit));
        drop(_dropped);
        assert_eq!(
            children.deliver(Reaped {
                pid: 11,
                exit_code: 1,
                signal: 0
            }),
            None
        );
        assert_eq!(children.pending(), 0);
    }

    #[test]
    fn a_death_by_a_real_time_signal_is_an_exit() {
        assert_eq!(
            decode(7, 40),
            Some(Reaped {
                pid: 7,
                exit_code: 168,
                signal: 40
            })
        );
        // Reaped below with waitpid itself, the function under test.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        common::signals::parse("SIGRTMIN+6")
            .unwrap()
            .unwrap()
            .send(pid)
            .unwrap();
        let mut status = 0;
        // SAFETY: as in reap_exited.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(decode(pid, status).map(|r| r.signal), Some(40));
    }
}
