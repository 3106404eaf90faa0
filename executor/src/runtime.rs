//! Spawning the runtime: its own session and process group, the task's cgroup joined before
//! exec, the task user, the group network namespace, and a parent-death signal so it never
//! outlives a killed shim. Everything the child needs is prepared before fork: between fork and
//! exec only async-signal-safe calls run.

use common::spec::TaskSpec;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "task user {0:?} does not exist on this node; fix `user` in the job or create the user"
    )]
    NoSuchUser(String),
    #[error("cannot open the network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot start {program}: {source}; check elide_binary (and that it runs on this node)"
    )]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the task spec has an empty command line")]
    EmptyArgv,
}

struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn resolve_user(user: &str) -> Result<Option<Credentials>, SpawnError> {
    if user.is_empty() {
        return Ok(None);
    }
    let found = if let Ok(uid) = user.parse::<u32>() {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
    } else {
        nix::unistd::User::from_name(user).ok().flatten()
    };
    let u = found.ok_or_else(|| SpawnError::NoSuchUser(user.to_owned()))?;
    let name = CString::new(u.name.clone()).map_err(|_| SpawnError::NoSuchUser(user.to_owned()))?;
    let groups = nix::unistd::getgrouplist(&name, u.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![u.gid.as_raw()]);
    Ok(Some(Credentials {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups,
    }))
}

pub struct Spawned {
    pub pid: i32,
}

/// Starts `spec.argv` with stdout/stderr on the given fds.
pub fn spawn(
    spec: &TaskSpec,
    stdout: OwnedFd,
    stderr: OwnedFd,
    cgroup_procs: Vec<CString>,
) -> Result<Spawned, SpawnError> {
    let (program, args) = spec.argv.split_first().ok_or(SpawnError::EmptyArgv)?;
    let creds = resolve_user(&spec.user)?;
    let netns: Option<OwnedFd> = match &spec.netns_path {
        Some(p) => Some(
            std::fs::File::open(p)
                .map(OwnedFd::from)
                .map_err(|source| SpawnError::Netns {
                    path: p.display().to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let netns_raw = netns.as_ref().map(|f| f.as_raw_fd());
    let shim_pid = std::process::id() as libc::pid_t;

    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: the closure only makes async-signal-safe libc calls on data prepared before
    // fork (CStrings, integers); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            // Its own session and process group: stop/kill can address the whole group, and
            // terminal or agent signals do not reach it.
            if libc::setsid() < 0 {
                return fail();
            }
            // Join the task cgroup before exec, so nothing the runtime forks escapes it. The
            // shim itself stays outside (its memory is not charged to the task).
            for p in &cgroup_procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return fail();
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if r < 0 {
                    return fail();
                }
            }
            if let Some(fd) = netns_raw {
                if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                    return fail();
                }
            }
            if let Some(c) = &creds {
                if libc::setgroups(c.groups.len(), c.groups.as_ptr()) < 0
                    || libc::setgid(c.gid) < 0
                    || libc::setuid(c.uid) < 0
                {
                    return fail();
                }
            }
            // After the credential change (which clears it): die with the shim, and close the
            // race where the shim died before this line.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return fail();
            }
            if libc::getppid() != shim_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // The shim ignores SIGINT/SIGPIPE; ignored dispositions survive exec.
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        program: program.clone(),
        source,
    })?;
    drop(netns);
    // The reaper owns the exit status; std's Child is only dropped (dropping neither waits nor
    // kills).
    Ok(Spawned {
        pid: child.id() as i32,
    })
}
