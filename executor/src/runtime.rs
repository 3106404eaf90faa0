//! Spawning the runtime: its own session and process group, the task's cgroup joined before
//! exec, the group network namespace, the task user, and a parent-death signal so it never
//! outlives a killed shim.
//!
//! Everything the child needs is prepared before fork; between fork and exec only
//! async-signal-safe calls run. This must be called on the shim's main thread (the runtime is
//! a tokio current_thread one): `PR_SET_PDEATHSIG` fires when the *thread* that forked the
//! child exits, not the process.

use common::spec::TaskSpec;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The umask the runtime gets (the one the shim inherited; the shim itself runs with 077).
static TASK_UMASK: AtomicU32 = AtomicU32::new(0o022);

/// Sets the umask the runtime will get.
pub fn set_task_umask(mask: libc::mode_t) {
    TASK_UMASK.store(mask, Ordering::Relaxed);
}

/// Which step of the child setup failed (sent back over a pipe; see `spawn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Session = 1,
    Cgroup = 2,
    Netns = 3,
    User = 4,
    ParentDeath = 5,
}

impl Step {
    fn from_byte(b: u8) -> Option<Step> {
        Some(match b {
            1 => Step::Session,
            2 => Step::Cgroup,
            3 => Step::Netns,
            4 => Step::User,
            5 => Step::ParentDeath,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the task spec has an empty argv; put the runtime's command line in `argv`")]
    EmptyArgv,
    #[error(
        "task user {0:?} does not exist on this node; fix `user` in the job or create the user"
    )]
    NoSuchUser(String),
    #[error("working directory {path} is not a directory ({why}); it should be the task dir Nomad created")]
    Cwd { path: String, why: String },
    #[error(
        "cannot open the network namespace {path}: {source}; Nomad's group network may be gone"
    )]
    NetnsOpen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}: its command line ({argv_bytes} bytes) and environment ({env_bytes} bytes) are too large for exec (E2BIG, limit {limit} bytes); shorten env values or args, or pass large data in a file")]
    TooBig {
        program: String,
        argv_bytes: usize,
        env_bytes: usize,
        limit: usize,
    },
    #[error("cannot start {program}: the kernel refused its arguments or environment (EINVAL: {source}); remove NUL bytes and check env names")]
    InvalidArgs {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}; check elide_binary (it must exist, be executable and run on this node)")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}: {what} failed in the child: {source}")]
    Setup {
        program: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Resolves a user name or numeric uid to uid, primary gid and supplementary groups (what
/// initgroups would set, computed before fork because initgroups is not async-signal-safe):
/// see `crate::users`.
fn resolve_user(user: &str) -> Result<Option<Credentials>, SpawnError> {
    if user.is_empty() {
        return Ok(None);
    }
    let u = crate::users::lookup(user).ok_or_else(|| SpawnError::NoSuchUser(user.to_owned()))?;
    Ok(Some(Credentials {
        uid: u.uid,
        gid: u.gid,
        groups: u.groups,
    }))
}

/// Starts `spec.argv` with stdin on /dev/null and stdout/stderr on the given fds; joins the
/// `cgroup.procs` files in `cgroup_procs` before exec. Returns the runtime's pid; the caller
/// reaps it (std's `Child` is dropped, which neither waits nor kills).
pub fn spawn(
    spec: &TaskSpec,
    stdout: OwnedFd,
    stderr: OwnedFd,
    cgroup_procs: Vec<CString>,
) -> Result<i32, SpawnError> {
    let (program, args) = spec.argv.split_first().ok_or(SpawnError::EmptyArgv)?;
    match std::fs::metadata(&spec.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SpawnError::Cwd {
                path: spec.cwd.display().to_string(),
                why: "it is a file".into(),
            })
        }
        Err(e) => {
            return Err(SpawnError::Cwd {
                path: spec.cwd.display().to_string(),
                why: e.to_string(),
            })
        }
    }
    let creds = resolve_user(&spec.user)?;
    let netns: Option<OwnedFd> = match &spec.netns_path {
        Some(p) => Some(
            std::fs::File::open(p)
                .map(OwnedFd::from)
                .map_err(|source| SpawnError::NetnsOpen {
                    path: p.display().to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let netns_raw = netns.as_ref().map(|f| f.as_raw_fd());
    let shim_pid = std::process::id() as libc::pid_t;
    let umask = TASK_UMASK.load(Ordering::Relaxed) as libc::mode_t;
    // The child reports which setup step failed on this pipe (CLOEXEC: a successful exec
    // closes it, so an empty read means the exec itself failed).
    let (step_r, step_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Setup {
            program: program.clone(),
            what: "pipe",
            source: e.into(),
        })?;
    let step_fd = step_w.as_raw_fd();

    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: the closure only makes async-signal-safe libc calls on data prepared before
    // fork (CStrings, integers, a Vec it only reads); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let fail = |step: Step| {
                let err = std::io::Error::last_os_error();
                let b = step as u8;
                libc::write(step_fd, (&b as *const u8).cast(), 1);
                Err(err)
            };
            // Its own session and process group: stop/kill address the whole group, and
            // terminal or agent signals never reach it.
            if libc::setsid() < 0 {
                return fail(Step::Session);
            }
            // Join the task cgroup before exec, so nothing the runtime forks escapes it. The
            // shim itself stays outside (its memory is not charged to the task, and Nomad
            // >= 1.7 kills everything in the task cgroup at teardown).
            for p in &cgroup_procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return fail(Step::Cgroup);
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                if r < 0 {
                    let e = fail(Step::Cgroup);
                    libc::close(fd);
                    return e;
                }
                libc::close(fd);
            }
            // setns needs CAP_SYS_ADMIN: before dropping privileges.
            if let Some(fd) = netns_raw {
                if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                    return fail(Step::Netns);
                }
            }
            if let Some(c) = &creds {
                if libc::setgroups(c.groups.len(), c.groups.as_ptr()) < 0
                    || libc::setgid(c.gid) < 0
                    || libc::setuid(c.uid) < 0
                {
                    return fail(Step::User);
                }
            }
            // After the credential change (which clears it): die with the shim. Then close
            // the race where the shim died before this line.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return fail(Step::ParentDeath);
            }
            if libc::getppid() != shim_pid {
                // The shim is already gone: nobody would reap or control this runtime.
                libc::_exit(127);
            }
            // A clean signal state: the shim ignores SIGINT and SIGPIPE, and ignored
            // dispositions survive exec (handlers and the mask are reset by std/exec, but
            // do it explicitly for the mask too).
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            libc::umask(umask);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(step_w);
    drop(netns);
    let child = match spawned {
        Ok(c) => c,
        Err(source) => {
            let mut b = [0u8; 1];
            let step = match std::fs::File::from(step_r).read(&mut b) {
                Ok(1) => Step::from_byte(b[0]),
                _ => None,
            };
            let program = program.clone();
            let setup = |what| SpawnError::Setup {
                program: program.clone(),
                what,
                source: std::io::Error::from_raw_os_error(source.raw_os_error().unwrap_or(0)),
            };
            return Err(match step {
                None => exec_error(spec, program, source),
                Some(Step::Session) => setup("setsid"),
                Some(Step::Cgroup) => setup("joining the task cgroup"),
                Some(Step::Netns) => setup("entering the network namespace (setns)"),
                Some(Step::User) => {
                    setup("switching to the task user (the plugin must run as root to use `user`)")
                }
                Some(Step::ParentDeath) => setup("prctl(PR_SET_PDEATHSIG)"),
            });
        }
    };
    Ok(child.id() as i32)
}

/// Why `execve` (or std before it) refused to start the program, in words that name the fix:
/// only a missing or broken binary is about elide_binary.
fn exec_error(spec: &TaskSpec, program: String, source: std::io::Error) -> SpawnError {
    use common::env::exec_bytes;
    match source.raw_os_error() {
        Some(libc::E2BIG) => SpawnError::TooBig {
            program,
            argv_bytes: exec_bytes(spec.argv.iter().map(String::len)),
            env_bytes: exec_bytes(spec.env.iter().map(|(k, v)| k.len() + 1 + v.len())),
            limit: common::env::arg_max(),
        },
        // std refuses a NUL in argv or env before it forks (InvalidInput, no errno).
        Some(libc::EINVAL) => SpawnError::InvalidArgs { program, source },
        None if source.kind() == std::io::ErrorKind::InvalidInput => {
            SpawnError::InvalidArgs { program, source }
        }
        _ => SpawnError::Exec { program, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_name_and_uid_and_unknown_ones_say_so() {
        assert!(resolve_user("").unwrap().is_none());
        let root = resolve_user("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(resolve_user("0").unwrap().unwrap().uid, 0);
        let e = resolve_user("no-such-user-xyz").err().unwrap().to_string();
        assert!(e.contains("no-such-user-xyz") && e.contains("user"), "{e}");
    }

    fn spec_with(argv: Vec<String>, env: &[(&str, String)]) -> TaskSpec {
        let dir = std::env::temp_dir();
        TaskSpec {
            version: common::spec::TASK_SPEC_VERSION,
            task_id: "a/t/0".into(),
            alloc_id: String::new(),
            job_id: String::new(),
            task_group: String::new(),
            task_name: String::new(),
            namespace: String::new(),
            argv,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            cwd: dir.clone(),
            stdout_path: "/dev/null".into(),
            stderr_path: "/dev/null".into(),
            log_files: None,
            fifo_open_timeout_ms: 1000,
            user: String::new(),
            socket_path: dir.join("x.sock"),
            state_path: dir.join("state.json"),
            netns_path: None,
            resources: Default::default(),
            linger_after_exit_secs: 1,
        }
    }

    fn devnull() -> OwnedFd {
        std::fs::File::create("/dev/null").unwrap().into()
    }

    #[test]
    fn too_big_and_nul_are_not_blamed_on_elide_binary() {
        // 3 MiB in one variable: execve says E2BIG.
        let s = spec_with(vec!["/bin/true".into()], &[("BIG", "x".repeat(3 << 20))]);
        let e = spawn(&s, devnull(), devnull(), vec![]).unwrap_err();
        assert!(matches!(e, SpawnError::TooBig { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("E2BIG") && msg.contains("shorten env values"),
            "{msg}"
        );
        assert!(!msg.contains("elide_binary"), "{msg}");

        for s in [
            spec_with(vec!["/bin/true".into(), "a\0b".into()], &[]),
            spec_with(vec!["/bin/true".into()], &[("A", "x\0y".into())]),
        ] {
            let e = spawn(&s, devnull(), devnull(), vec![]).unwrap_err();
            assert!(matches!(e, SpawnError::InvalidArgs { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("remove NUL bytes"), "{msg}");
            assert!(!msg.contains("elide_binary"), "{msg}");
        }

        let s = spec_with(vec!["/no/such/elide".into()], &[]);
        let e = spawn(&s, devnull(), devnull(), vec![]).unwrap_err();
        assert!(e.to_string().contains("check elide_binary"), "{e}");
    }

    #[test]
    fn step_bytes_round_trip() {
        for s in [
            Step::Session,
            Step::Cgroup,
            Step::Netns,
            Step::User,
            Step::ParentDeath,
        ] {
            assert_eq!(Step::from_byte(s as u8), Some(s));
        }
        assert_eq!(Step::from_byte(0), None);
    }
}
