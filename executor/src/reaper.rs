//! Reaping: the shim is the runtime's parent and a child subreaper, so every process of the
//! task that loses its parent (double-forking daemons, orphaned grandchildren) ends up as its
//! child too. On each SIGCHLD it collects every exited child with `waitpid(-1, WNOHANG)`.
//! (Not tokio::process: its own SIGCHLD handling would race this loop for the statuses.)

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// One reaped child, with Nomad's exit-code convention: a signal death reports
/// `signal = n` and `exit_code = 128 + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: i32,
    pub exit_code: i32,
    pub signal: i32,
}

/// Maps a wait status to an exit; None for statuses that are not an exit (stop/continue).
pub fn decode(status: WaitStatus) -> Option<Reaped> {
    match status {
        WaitStatus::Exited(pid, code) => Some(Reaped {
            pid: pid.as_raw(),
            exit_code: code,
            signal: 0,
        }),
        WaitStatus::Signaled(pid, sig, _core) => Some(Reaped {
            pid: pid.as_raw(),
            exit_code: 128 + sig as i32,
            signal: sig as i32,
        }),
        _ => None,
    }
}

/// Reaps every child that has exited so far, without blocking.
pub fn reap_exited() -> Vec<Reaped> {
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return out,
            Ok(status) => out.extend(decode(status)),
            // ECHILD: no children left. EINTR cannot happen with WNOHANG.
            Err(_) => return out,
        }
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
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn exit_codes_follow_nomads_convention() {
        let p = Pid::from_raw(42);
        assert_eq!(
            decode(WaitStatus::Exited(p, 3)),
            Some(Reaped {
                pid: 42,
                exit_code: 3,
                signal: 0
            })
        );
        assert_eq!(
            decode(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(Reaped {
                pid: 42,
                exit_code: 137,
                signal: 9
            })
        );
        assert_eq!(decode(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
        assert_eq!(decode(WaitStatus::StillAlive), None);
    }
}
