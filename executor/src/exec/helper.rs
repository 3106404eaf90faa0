//! `elide-executor sandbox-exec`: enters a running task and runs one command in it (see the
//! module above). A fresh single-threaded process, so it may `setns` into a mount namespace,
//! allocate, and fork freely.
//!
//! 1. open `/proc/<target>/ns/<kind>` for each namespace of the plan (the host's `/proc`, before
//!    any is joined) and check its inode against the one recorded at Start;
//! 2. join them (`ipc`, `net`, `mnt`, `pid`), or the group network namespace on [`NETNS_FD`];
//! 3. with a tty: open a pty inside the task's mount namespace (its private devpts);
//! 4. fork — the child is a process of the task's PID namespace: its own session (the pty as
//!    controlling terminal), the task user with the task's capabilities and no_new_privs
//!    ([`Credentials::apply`](crate::sandbox::creds::Credentials::apply)), `PR_SET_PDEATHSIG`,
//!    the task's umask and cwd, default signals, and the exec of the command with exactly the
//!    task's environment (the program is looked up in its `PATH`), the task's syscall filter
//!    installed right before that exec;
//! 5. report: a failed step as a frame on [`ERROR_FD`], else `S<pid>` (+ the pty master) on
//!    [`CONTROL_FD`] and EOF on [`ERROR_FD`];
//! 6. wait: SIGTERM/SIGINT/SIGHUP kill the command's process group, the command's exit ends
//!    this process the same way (exit code, or the same signal; no core dump: not dumpable).

use super::{clone_flag, Plan, WindowSize, CONTROL_FD, ERROR_FD, NETNS_FD, PLAN_FD, STARTED};
use crate::sandbox::report::{Failure, Step};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Runs `sandbox-exec` and exits; never returns.
pub fn main() -> ! {
    match crate::sandbox::report::catch_panic("sandbox-exec", run) {
        Ok(status) => end_like(status),
        Err(f) => {
            f.send(ERROR_FD);
            crate::coverage::helper_dump();
            // SAFETY: _exit ends the process without running anything else.
            unsafe { libc::_exit(127) }
        }
    }
}

fn os_err(step: Step, detail: impl Into<String>) -> Failure {
    Failure::new(step, detail, &io::Error::last_os_error())
}

fn all_signals() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// Returns the command's raw wait status.
fn run() -> Result<libc::c_int, Failure> {
    crate::coverage::helper_start();
    for fd in [PLAN_FD, ERROR_FD, CONTROL_FD, NETNS_FD] {
        // SAFETY: fcntl on an fd number only changes its flags (EBADF when not passed).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let all = all_signals();
    // SAFETY: blocking signals of this single-threaded process (taken with sigwaitinfo
    // below); prctl with integers: not ptrace-able, no core dump when it ends like the
    // command.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
    }
    let plan: Plan = crate::sandbox::init::read_plan()?;
    let namespaces = open_namespaces(&plan)?;
    if plan.netns {
        // SAFETY: setns on the fd the shim passed.
        if unsafe { libc::setns(NETNS_FD, libc::CLONE_NEWNET) } < 0 {
            return Err(os_err(Step::Netns, ""));
        }
    }
    for (kind, flag, fd) in &namespaces {
        // SAFETY: setns on an fd we opened.
        if unsafe { libc::setns(fd.as_raw_fd(), *flag) } < 0 {
            return Err(os_err(Step::Enter, format!("joining its {kind} namespace")));
        }
    }
    drop(namespaces);
    let pty = plan.tty.map(|size| open_pty(size, &plan)).transpose()?;
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Failure::new(Step::Fds, "the command's report pipe", &io::Error::from(e)))?;
    // SAFETY: this process has one thread; the child only runs `command`, which never returns.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(os_err(
            Step::Enter,
            "fork into the task's PID namespace (is the task exiting?)",
        ));
    }
    if child == 0 {
        drop(report_r);
        command(&plan, pty.as_ref().map(|p| &p.1), report_w);
    }
    drop(report_w);
    let master = pty.map(|(master, slave)| {
        drop(slave);
        master
    });
    if let Some(f) = read_report(report_r) {
        // The command never ran; collect its zombie.
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        return Err(f);
    }
    if let Err(e) = send_started(child, master.as_ref()) {
        kill_command(child);
        return Err(Failure::new(
            Step::Fds,
            "telling the shim the command runs",
            &e,
        ));
    }
    drop(master);
    // The command has its stdio: let go of ours, so the shim sees EOF when the command's
    // side closes, not only when this process ends.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        for fd in 0..=2 {
            // SAFETY: dup2 onto our own stdio fds.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // Started: EOF on the error pipe.
    // SAFETY: closing an fd this process owns.
    unsafe { libc::close(ERROR_FD) };
    loop {
        // SAFETY: sigwaitinfo fills a zeroed siginfo_t for the blocked set.
        let sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(&all, &mut info)
        };
        match sig {
            libc::SIGCHLD => {
                let mut status: libc::c_int = 0;
                // SAFETY: waitpid writes one int.
                if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
                    return Ok(status);
                }
            }
            libc::SIGTERM | libc::SIGINT | libc::SIGHUP => kill_command(child),
            _ => {}
        }
    }
}

/// SIGKILL to the command's process group (its own session) and to the command itself, which
/// has not been reaped (this process is its parent), so the pid cannot be someone else's.
fn kill_command(pid: libc::pid_t) {
    // SAFETY: kill with integer arguments.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Opens every namespace of the plan from the host's `/proc` and checks it is the recorded one.
fn open_namespaces(plan: &Plan) -> Result<Vec<(String, libc::c_int, OwnedFd)>, Failure> {
    plan.namespaces
        .iter()
        .map(|ns| {
            let flag = clone_flag(&ns.kind).ok_or_else(|| {
                Failure::new(
                    Step::Plan,
                    format!("unknown namespace kind {:?}", ns.kind),
                    &io::Error::from_raw_os_error(libc::EINVAL),
                )
            })?;
            let path = format!("/proc/{}/ns/{}", plan.target_pid, ns.kind);
            let file = std::fs::File::open(&path).map_err(|e| {
                Failure::new(
                    Step::Enter,
                    format!("opening {path}: the task's runtime (pid {}) is gone", plan.target_pid),
                    &e,
                )
            })?;
            let inode = std::os::unix::fs::MetadataExt::ino(
                &file
                    .metadata()
                    .map_err(|e| Failure::new(Step::Enter, path.clone(), &e))?,
            );
            if inode != ns.inode {
                return Err(Failure::new(
                    Step::Enter,
                    format!(
                        "pid {} is in {}:[{inode}], not the task's {}:[{}] (the runtime is gone and its pid reused)",
                        plan.target_pid, ns.kind, ns.kind, ns.inode
                    ),
                    &io::Error::from_raw_os_error(libc::ESRCH),
                ));
            }
            Ok((ns.kind.clone(), flag, OwnedFd::from(file)))
        })
        .collect()
}

/// A new pty in the current mount namespace (the task's devpts): (master, slave), the slave
/// owned by the task user and of the given size.
fn open_pty(size: WindowSize, plan: &Plan) -> Result<(OwnedFd, OwnedFd), Failure> {
    let term = |detail: &str| {
        let detail = detail.to_owned();
        move |e: nix::Error| Failure::new(Step::Terminal, detail, &io::Error::from(e))
    };
    let flags = nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY;
    let master = nix::pty::posix_openpt(flags | nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(term("opening /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(term("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(term("unlockpt"))?;
    // The peer straight from the master (no path lookup), falling back to its name.
    // SAFETY: TIOCGPTPEER on the master we own returns a new fd or -1.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = if peer >= 0 {
        // SAFETY: a fresh fd from the kernel.
        unsafe { OwnedFd::from_raw_fd(peer) }
    } else {
        let name = nix::pty::ptsname_r(&master).map_err(term("ptsname"))?;
        nix::fcntl::open(
            name.as_str(),
            flags | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        // SAFETY: a fresh fd from open.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .map_err(term("opening the pty"))?
    };
    let ws = size.winsize();
    // SAFETY: TIOCSWINSZ reads a winsize from a live struct.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(os_err(Step::Terminal, "setting the window size"));
    }
    if let Some(u) = &plan.process.credentials.user {
        // The task user may reopen its terminal (/dev/pts/N), as login would allow it.
        // SAFETY: fchown on an fd we own.
        if unsafe { libc::fchown(slave.as_raw_fd(), u.uid, u.gid) } < 0 {
            return Err(os_err(Step::Terminal, "giving the pty to the task user"));
        }
    }
    // SAFETY: the master's fd, handed over from the PtyMaster that owned it.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok((master, slave))
}

/// The command's side of the fork: never returns. A failed step goes to `report` as a frame.
fn command(plan: &Plan, tty: Option<&OwnedFd>, report: OwnedFd) -> ! {
    let failure = become_command(plan, tty);
    failure.send(report.as_raw_fd());
    // SAFETY: _exit ends the forked child without running the parent's destructors.
    unsafe { libc::_exit(127) }
}

fn become_command(plan: &Plan, tty: Option<&OwnedFd>) -> Failure {
    // Outside our PID namespace the parent reads as 0: whatever it reads now, a change means
    // it died before PR_SET_PDEATHSIG was armed.
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    // SAFETY: setsid has no preconditions.
    if unsafe { libc::setsid() } < 0 {
        return os_err(Step::Session, "");
    }
    if let Some(t) = tty {
        let fd = t.as_raw_fd();
        // SAFETY: ioctl and dup2 on fds this process owns.
        unsafe {
            if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                return os_err(Step::Terminal, "making the pty the controlling terminal");
            }
            for target in 0..=2 {
                if libc::dup2(fd, target) < 0 {
                    return os_err(Step::Fds, "");
                }
            }
        }
    }
    if let Err(f) = plan.process.credentials.apply() {
        return f;
    }
    // SAFETY: prctl with integer arguments (the user switch cleared any earlier setting).
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } < 0 {
        return os_err(Step::ParentDeath, "");
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Failure::new(
            Step::ParentGone,
            "sandbox-exec exited during the setup",
            &io::Error::from_raw_os_error(libc::ESRCH),
        );
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(plan.process.umask as libc::mode_t) };
    if let Err(e) = std::env::set_current_dir(&plan.process.cwd) {
        return Failure::new(Step::Cwd, plan.process.cwd.display().to_string(), &e);
    }
    // Default dispositions and no blocked signal (ours are all blocked).
    // SAFETY: this single-threaded child only changes its own signal state.
    unsafe { crate::runtime::default_signals() };
    let Some((program, args)) = plan.process.argv.split_first() else {
        return Failure::new(
            Step::Plan,
            "empty command",
            &io::Error::from_raw_os_error(libc::EINVAL),
        );
    };
    // The task's syscall filter, last (as sandbox-init does before the runtime's exec).
    if let Some(f) = &plan.process.credentials.seccomp {
        if let Err(f) = crate::sandbox::seccomp::install(f) {
            return f;
        }
    }
    // With the environment replaced, the program is looked up in the task's PATH.
    let e = Command::new(program)
        .args(args)
        .env_clear()
        .envs(&plan.process.env)
        .exec();
    Failure::new(Step::Exec, program.clone(), &e)
}

/// The command's report: None once its exec closed the pipe, else its failed step.
fn read_report(r: OwnedFd) -> Option<Failure> {
    let mut buf = Vec::new();
    let _ = io::Read::read_to_end(&mut std::fs::File::from(r), &mut buf);
    Failure::decode(&buf)
}

/// `S<pid>` on the control socket, with the pty master attached.
fn send_started(pid: libc::pid_t, master: Option<&OwnedFd>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut msg = vec![STARTED];
    msg.extend_from_slice(&pid.to_le_bytes());
    let iov = [io::IoSlice::new(&msg)];
    let fds: Vec<RawFd> = master.iter().map(|m| m.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(CONTROL_FD, &iov, &cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// Ends this process the way the command ended: its exit code, or death by the same signal.
fn end_like(status: libc::c_int) -> ! {
    crate::coverage::helper_dump();
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restoring the default action and unblocking the one signal, then sending it
        // to ourselves; _exit if it did not end us (SIGKILL and SIGSTOP cannot be caught).
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::kill(libc::getpid(), sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::_exit(128 + sig)
        }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}
