//! `elide-executor sandbox-init`: sets the sandbox up (see the module above) and then either
//! becomes the runtime (host PID namespace) or stays as the PID namespace's init.
//!
//! As PID 1 it must do what the kernel expects of an init: a namespace init only receives the
//! signals it handles, so it blocks every signal and takes them with `sigwaitinfo` (as tini
//! does), forwarding each to the runtime; it reaps every zombie that is re-parented to it; and
//! when the runtime exits it writes the runtime's raw wait status to the shim's status pipe
//! (a namespace init cannot die by a signal it sends itself, so its own exit status could not
//! tell "killed by SIGTERM" from "exit 143") and exits, which makes the kernel kill whatever
//! is left in the namespace. SIGKILL from the shim (stop timeout, kill -9 of the task) kills
//! it and with it the whole namespace; so does the shim's death (PR_SET_PDEATHSIG).

use super::report::{Failure, Step};
use super::{Plan, ALIVE_FD, ERROR_FD, NETNS_FD, PLAN_FD, STATUS_FD};
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Runs `sandbox-init` and exits; never returns.
pub fn main() -> ! {
    // The set-up returns (its frames gone) before PID 1 starts the runtime and stays: the
    // loop then runs a few frames from the top of the stack for the task's whole life.
    let code = match super::report::catch_panic("sandbox-init", run).and_then(|cmd| {
        // Unwinding past the Command only drops it.
        let cmd = std::panic::AssertUnwindSafe(cmd);
        super::report::catch_panic("sandbox-init", move || {
            let cmd = cmd;
            pid1(cmd.0)
        })
    }) {
        Ok(code) => code,
        Err(f) => {
            f.send(ERROR_FD);
            127
        }
    };
    crate::coverage::helper_dump();
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(code) }
}

fn os_err(step: Step, detail: impl Into<String>) -> Failure {
    Failure::new(step, detail, &io::Error::last_os_error())
}

/// Sets the sandbox up; returns the runtime's command when this process stays as the PID
/// namespace's init, and execs the runtime itself otherwise. Never inlined: its frame (the
/// plan, the mounts) must be gone, not below `main`'s, when PID 1's loop runs.
#[inline(never)]
fn run() -> Result<Command, Failure> {
    crate::coverage::helper_start();
    for fd in [PLAN_FD, ERROR_FD, ALIVE_FD, STATUS_FD, NETNS_FD] {
        // SAFETY: fcntl on an fd number only changes its flags (EBADF when not passed).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let mut plan: Plan = read_plan()?;
    // The shim's umask (077) came along: the mount points made in the hiding tmpfs dirs must
    // be traversable by the task user. The task's own umask is set at the end.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    if plan.netns {
        // SAFETY: setns on the fd the shim passed; closed right after.
        let r = unsafe { libc::setns(NETNS_FD, libc::CLONE_NEWNET) };
        if r < 0 {
            return Err(os_err(Step::Netns, ""));
        }
        // SAFETY: closing an fd this process owns.
        unsafe { libc::close(NETNS_FD) };
    }
    if let Some(m) = &plan.mounts {
        super::mounts::apply(m)?;
    }
    plan.process.credentials.apply()?;
    // The user switch cleared the parent-death signal set before the exec of this process.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } < 0 {
        return Err(os_err(Step::ParentDeath, ""));
    }
    if shim_gone() {
        // Nobody would reap, stop or record this task: do not start it.
        return Err(Failure::new(
            Step::ParentGone,
            "the shim exited during the setup",
            &io::Error::from_raw_os_error(libc::ESRCH),
        ));
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(plan.process.umask as libc::mode_t) };
    std::env::set_current_dir(&plan.process.cwd)
        .map_err(|e| Failure::new(Step::Cwd, plan.process.cwd.display().to_string(), &e))?;
    let (program, args) = plan.process.argv.split_first().ok_or_else(|| {
        Failure::new(
            Step::Plan,
            "empty argv",
            &io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().envs(&plan.process.env);
    // Last: everything above may need a call the filter refuses. As PID 1 this process is
    // filtered too (it only waits, forwards signals and forks the runtime). Taken out of
    // the plan: the init does not keep the program's text for the task's whole life.
    if let Some(f) = plan.process.credentials.seccomp.take() {
        super::seccomp::install(&f)?;
    }
    crate::coverage::helper_dump();
    if plan.pid_init {
        // PID 1 lives as long as the task: nothing of the plan stays allocated.
        return Ok(cmd);
    }
    let e = cmd.exec();
    Err(Failure::new(Step::Exec, "", &e))
}

/// Reads the plan (JSON) from [`PLAN_FD`]; `sandbox-exec` reads its own the same way.
pub(crate) fn read_plan<T: serde::de::DeserializeOwned>() -> Result<T, Failure> {
    // SAFETY: PLAN_FD was passed for this process alone; the File owns and closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(PLAN_FD) };
    let mut body = Vec::new();
    f.read_to_end(&mut body)
        .map_err(|e| Failure::new(Step::Plan, "", &e))?;
    serde_json::from_slice(&body).map_err(|e| {
        Failure::new(
            Step::Plan,
            format!("invalid plan: {e}"),
            &io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

/// Whether every write end of the alive pipe is closed: only the shim holds one.
fn shim_gone() -> bool {
    let mut p = libc::pollfd {
        fd: ALIVE_FD,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll of one live pollfd, no wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    // SAFETY: closing an fd this process owns.
    unsafe { libc::close(ALIVE_FD) };
    r > 0 && p.revents & libc::POLLHUP != 0
}

/// The exit code of a raw wait status, Nomad's way (128 + n for signal n).
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

fn all_signals() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

fn pid1(mut cmd: Command) -> Result<i32, Failure> {
    let all = all_signals();
    // SAFETY: blocking signals of this single-threaded process; prctl with integers.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        // Not ptrace-able nor readable through /proc by the task, even as the same user.
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
    }
    // SAFETY: setsid and sigprocmask are async-signal-safe; the set is a local copy.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The runtime starts with no signal blocked (it inherits the mask, not our job).
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| Failure::new(Step::Exec, "", &e))?;
    let runtime = child.id() as libc::pid_t;
    drop(child);
    drop(cmd);
    // std's spawn does not leave our mask as it found it: block everything again. A SIGCHLD
    // that came in between is caught by the first reaping pass below.
    // SAFETY: as above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) };
    // Started: EOF on the error pipe tells the shim.
    // SAFETY: closing an fd this process owns.
    unsafe { libc::close(ERROR_FD) };
    // What the set-up touched of the stack (the plan's parsing, the mounts, the spawn) is
    // not needed again: this loop runs a few frames from the top for the task's life.
    crate::memory::release_dead_stack();
    let mut sig = libc::SIGCHLD;
    loop {
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: kill with integer arguments.
            unsafe { libc::kill(runtime, sig) };
        }
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes one int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == runtime {
                let bytes = status.to_le_bytes();
                // SAFETY: a write of a live 4-byte buffer.
                unsafe { libc::write(STATUS_FD, bytes.as_ptr().cast(), bytes.len()) };
                return Ok(exit_code(status));
            }
        }
        // SAFETY: sigwaitinfo fills a zeroed siginfo_t for the blocked set.
        sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(&all, &mut info)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_nomads_convention() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(exit_code(0), 0);
    }
}
