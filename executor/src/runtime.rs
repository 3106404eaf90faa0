//! Spawning the runtime: a forked child in the task's new namespaces joins the task cgroup,
//! gets its own session and a parent-death signal, and execs `elide-executor sandbox-init`,
//! which sets up the sandbox from the plan and starts the runtime (`sandbox` module). Start
//! returns once the runtime was exec'd; a failed step comes back named.
//!
//! Everything the child needs is prepared before the fork; between fork and exec only
//! async-signal-safe calls run (no allocation: the shim may have helper threads). This must be
//! called on the shim's main thread (the runtime is a tokio current_thread one):
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.

use crate::sandbox::{self, creds, report};
use common::sandbox::IdRanges;
use common::spec::TaskSpec;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The umask the runtime gets (the one the shim inherited; the shim itself runs with 077).
static TASK_UMASK: AtomicU32 = AtomicU32::new(0o022);

/// Sets the umask the runtime will get.
pub fn set_task_umask(mask: libc::mode_t) {
    TASK_UMASK.store(mask, Ordering::Relaxed);
}

/// The umask the task's processes get (the runtime, and commands exec'd into the task).
pub(crate) fn task_umask() -> u32 {
    TASK_UMASK.load(Ordering::Relaxed)
}

/// The program that runs `sandbox-init`: this very binary (`/proc/self/exe`, so an upgrade on
/// disk never mixes versions), unless a test that is not elide-executor names it.
static INIT_BINARY: Mutex<Option<PathBuf>> = Mutex::new(None);

/// For callers that are not `elide-executor` themselves (tests): the binary to run.
pub fn set_init_binary(path: PathBuf) {
    *common::sync::lock(&INIT_BINARY) = Some(path);
}

fn init_binary() -> PathBuf {
    common::sync::lock(&INIT_BINARY)
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// How long the sandbox setup may take before Start gives up (a hung host volume, say).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the task spec has an empty argv; put the runtime's command line in `argv`")]
    EmptyArgv,
    #[error(
        "task user {0:?} does not exist on this node; fix `user` in the job or create the user"
    )]
    NoSuchUser(String),
    #[error("running as {what} {id} is not allowed on this node (the plugin's {option} = {ranges:?}); set `user` in the job to another user")]
    DeniedId {
        what: &'static str,
        id: u32,
        option: &'static str,
        ranges: String,
    },
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
    #[error("cannot start {program}: {what} failed: {source}")]
    Setup {
        program: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl SpawnError {
    /// A failure a later attempt can get past: the sandbox setup timing out (a node starting
    /// a thousand tasks at once can take longer than a minute to set one up) — as opposed to
    /// a bad spec, a missing user or a denied id, which fail the same way every time.
    pub fn is_transient(&self) -> bool {
        matches!(self, SpawnError::Setup { source, .. } if source.raw_os_error() == Some(libc::ETIMEDOUT))
    }
}

/// A started runtime.
#[derive(Debug)]
pub struct Spawned {
    /// The process the shim waits on, signals and kills: the runtime itself, or the init of
    /// its PID namespace (which forwards signals and dies with everything in it).
    pub pid: i32,
    /// PID-namespace mode: where the init writes the runtime's raw wait status when it exits.
    pub status: Option<OwnedFd>,
}

/// Resolves a user name or numeric uid to uid, primary gid and supplementary groups (the
/// user's own, as initgroups would set them; computed here because the user database is the
/// host's, read before the sandbox exists): see `crate::users`.
pub(crate) fn resolve_user(user: &str) -> Result<Option<creds::User>, SpawnError> {
    if user.is_empty() {
        return Ok(None);
    }
    let u = crate::users::lookup(user).ok_or_else(|| SpawnError::NoSuchUser(user.to_owned()))?;
    Ok(Some(creds::User {
        uid: u.uid,
        gid: u.gid,
        groups: u.groups,
    }))
}

/// Refuses a uid or any gid (primary or supplementary) in the plugin's denied ranges; with no
/// task user, the shim's own ids are what the task gets.
pub(crate) fn check_denied(
    denied_uids: &str,
    denied_gids: &str,
    user: Option<&creds::User>,
) -> Result<(), SpawnError> {
    let (uid, gids) = match user {
        Some(u) => {
            let mut g = u.groups.clone();
            g.push(u.gid);
            (u.uid, g)
        }
        None => {
            let mut g: Vec<u32> = nix::unistd::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default();
            g.push(nix::unistd::getgid().as_raw());
            (nix::unistd::getuid().as_raw(), g)
        }
    };
    let uids = IdRanges::parse(denied_uids).unwrap_or_default();
    if uids.contains(uid) {
        return Err(SpawnError::DeniedId {
            what: "uid",
            id: uid,
            option: "denied_host_uids",
            ranges: denied_uids.to_owned(),
        });
    }
    let denied = IdRanges::parse(denied_gids).unwrap_or_default();
    if let Some(gid) = gids.into_iter().find(|g| denied.contains(*g)) {
        return Err(SpawnError::DeniedId {
            what: "gid",
            id: gid,
            option: "denied_host_gids",
            ranges: denied_gids.to_owned(),
        });
    }
    Ok(())
}

fn setup_err(program: &str, what: &str) -> impl FnOnce(std::io::Error) -> SpawnError {
    let (program, what) = (program.to_owned(), what.to_owned());
    move |source| SpawnError::Setup {
        program,
        what,
        source,
    }
}

/// The plan in a sealed-off memfd (not a pipe: it may be larger than a pipe buffer, and the
/// child reads it whenever it gets there).
pub(crate) fn plan_memfd(plan: &impl serde::Serialize) -> std::io::Result<OwnedFd> {
    let body = serde_json::to_vec(plan).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"elide-sandbox-plan".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd, owned from here on.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(&body)?;
    // SAFETY: lseek on the fd we own.
    if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f.into())
}

/// A copy of `fd` numbered 100 or above and close-on-exec, so that the child's `dup2`s onto
/// 0..=7 can never overwrite a source it still has to move.
fn high(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a live fd returns a new one we own.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The fds a forked child takes, as `(source, target)` for its `dup2`s: each source a
/// [`high`] copy, so no `dup2` overwrites a source still to be moved.
#[derive(Default)]
pub(crate) struct ChildFds {
    sources: Vec<(OwnedFd, RawFd)>,
}

impl ChildFds {
    /// The child gets a copy of `fd` as `target`.
    pub(crate) fn add(&mut self, fd: &impl AsRawFd, target: RawFd) -> std::io::Result<()> {
        self.sources.push((high(fd.as_raw_fd())?, target));
        Ok(())
    }

    pub(crate) fn moves(&self) -> Vec<(RawFd, RawFd)> {
        self.sources
            .iter()
            .map(|(s, t)| (s.as_raw_fd(), *t))
            .collect()
    }
}

pub(crate) fn pipe(flags: nix::fcntl::OFlag) -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | flags).map_err(std::io::Error::from)
}

/// Starts `spec.argv` (through `sandbox-init`) with stdin on /dev/null and stdout/stderr on the
/// given fds; joins the `cgroup.procs` files in `cgroup_procs` before anything else runs.
/// The caller reaps the returned pid.
pub fn spawn(
    spec: &TaskSpec,
    stdout: OwnedFd,
    stderr: OwnedFd,
    cgroup_procs: Vec<CString>,
) -> Result<Spawned, SpawnError> {
    let (program, _) = spec.argv.split_first().ok_or(SpawnError::EmptyArgv)?;
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
    let nul = spec.argv.iter().any(|a| a.contains('\0'))
        || spec
            .env
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0'));
    if nul {
        return Err(SpawnError::InvalidArgs {
            program: program.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "nul byte found in provided data",
            ),
        });
    }
    let user = resolve_user(&spec.user)?;
    if let Some(s) = &spec.sandbox {
        check_denied(&s.denied_uids, &s.denied_gids, user.as_ref())?;
    }
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
    let umask = task_umask();
    let plan = sandbox::plan_for(spec, user, umask);
    let plan_fd = plan_memfd(&plan).map_err(setup_err(program, "writing the sandbox plan"))?;
    let (err_r, err_w) =
        pipe(nix::fcntl::OFlag::empty()).map_err(setup_err(program, "creating the setup pipe"))?;
    let (alive_r, alive_w) =
        pipe(nix::fcntl::OFlag::empty()).map_err(setup_err(program, "creating the setup pipe"))?;
    let status = if plan.pid_init {
        Some(
            pipe(nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(setup_err(program, "creating the status pipe"))?,
        )
    } else {
        None
    };
    let stdin: OwnedFd = std::fs::File::open("/dev/null")
        .map_err(setup_err(program, "opening /dev/null"))?
        .into();
    let mut fds = ChildFds::default();
    let mut add = |fd: &OwnedFd, target: RawFd| -> Result<(), SpawnError> {
        fds.add(fd, target)
            .map_err(setup_err(program, "arranging the child's fds"))
    };
    add(&stdin, 0)?;
    add(&stdout, 1)?;
    add(&stderr, 2)?;
    add(&plan_fd, sandbox::PLAN_FD)?;
    add(&err_w, sandbox::ERROR_FD)?;
    add(&alive_r, sandbox::ALIVE_FD)?;
    if let Some((_, w)) = &status {
        add(w, sandbox::STATUS_FD)?;
    }
    if let Some(n) = &netns {
        add(n, sandbox::NETNS_FD)?;
    }
    let flags = sandbox::clone_flags(spec);
    let pid = fork_helper(sandbox::INIT_COMMAND, flags, &fds.moves(), &cgroup_procs).map_err(
        setup_err(
            program,
            "clone (creating the task's namespaces; the shim must run as root)",
        ),
    )?;
    // The child has its copies; ours must go, or EOF on the error pipe never comes.
    drop(fds);
    drop((stdin, stdout, stderr, plan_fd, err_w, alive_r, netns));
    let status = status.map(|(r, _w)| r);
    let failure = read_failure(err_r, SETUP_TIMEOUT);
    // The shim was alive all along: close the alive pipe only now.
    drop(alive_w);
    match failure {
        Ok(None) => Ok(Spawned { pid, status }),
        Ok(Some(f)) => Err(match f.step {
            report::Step::Exec => exec_error(spec, program.clone(), f.error()),
            step => SpawnError::Setup {
                program: program.clone(),
                what: if f.detail.is_empty() {
                    step.describe().to_owned()
                } else {
                    format!("{} ({})", step.describe(), f.detail)
                },
                source: f.error(),
            },
        }),
        Err(e) => {
            // SAFETY: kill with integer arguments; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(SpawnError::Setup {
                program: program.clone(),
                what: format!(
                    "the sandbox setup (it did not finish within {}s; a host volume or path may hang)",
                    SETUP_TIMEOUT.as_secs()
                ),
                source: e,
            })
        }
    }
}

/// Forks a child that gets its own session, joins the `cgroup.procs` files in `cgroup_procs`,
/// arms `PR_SET_PDEATHSIG`, takes the fds `moves` (`(source, target)`; sources numbered above
/// every target, see [`high`]) and execs `elide-executor <mode>` (a hidden mode of this
/// binary). `flags`: namespaces for `clone` (0: a plain fork). A step that fails before that
/// exec is reported as a frame on the child's [`sandbox::ERROR_FD`]. Returns the child's pid;
/// the caller reaps it. Call it on the shim's main thread (see the module doc).
pub(crate) fn fork_helper(
    mode: &str,
    flags: libc::c_int,
    moves: &[(RawFd, RawFd)],
    cgroup_procs: &[CString],
) -> std::io::Result<i32> {
    let err_fd = moves
        .iter()
        .find(|(_, to)| *to == sandbox::ERROR_FD)
        .map(|(from, _)| *from)
        .unwrap_or(-1);
    let init_path = CString::new(init_binary().as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let argv0 = c"elide-executor";
    let argv1 =
        CString::new(mode).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let argv: [*const libc::c_char; 3] = [argv0.as_ptr(), argv1.as_ptr(), std::ptr::null()];
    // Empty, but for LLVM_PROFILE_FILE in a coverage build (src/coverage.rs).
    let profile_env = crate::coverage::helper_env();
    let envp: [*const libc::c_char; 2] = [
        profile_env
            .as_ref()
            .map_or(std::ptr::null(), |e| e.as_ptr()),
        std::ptr::null(),
    ];
    let child = Child {
        err_fd,
        cgroup_procs,
        moves,
        init: &init_path,
        argv: &argv,
        envp: &envp,
    };
    // SAFETY: clone without CLONE_VM is fork with namespace flags: the child gets a copy of
    // this thread only and runs `Child::run`, which makes only async-signal-safe calls on data
    // prepared above and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: see above; we are the child.
        unsafe { child.run() }
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid as i32)
}

/// Every signal back to its default action and none blocked, for a process about to exec
/// something that must not inherit the shim's (or a helper's) signal state.
///
/// # Safety
/// Async-signal-safe calls only; it changes the calling process's signal state.
pub(crate) unsafe fn default_signals() {
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
}

/// What the forked child needs, all prepared before the fork.
struct Child<'a> {
    err_fd: RawFd,
    cgroup_procs: &'a [CString],
    moves: &'a [(RawFd, RawFd)],
    init: &'a CString,
    argv: &'a [*const libc::c_char; 3],
    envp: &'a [*const libc::c_char; 2],
}

impl Child<'_> {
    /// Reports `step` with the current errno on the error pipe and exits.
    ///
    /// # Safety
    /// Only in the forked child before exec: it writes to the raw error-pipe fd and ends the
    /// process with `_exit`, running no destructor or atexit handler of the parent's state.
    unsafe fn fail(&self, step: report::Step) -> ! {
        let errno = *libc::__errno_location();
        let h = report::header(step, errno, 0);
        libc::write(self.err_fd, h.as_ptr().cast(), h.len());
        libc::_exit(127)
    }

    /// The child between fork and exec: async-signal-safe calls only, no allocation.
    ///
    /// # Safety
    /// Only in the child of a `fork`/`clone` of a multi-threaded process, before exec: every
    /// pointer in `self` must stay valid (they point into the parent's memory, copied into
    /// the child), and nothing here may allocate or take a lock another thread could hold.
    unsafe fn run(&self) -> ! {
        // Its own session and process group: stop/kill address the whole group, and terminal
        // or agent signals never reach it.
        if libc::setsid() < 0 {
            self.fail(report::Step::Session);
        }
        // Join the task cgroup before anything else runs, so nothing the runtime forks escapes
        // it. The shim itself stays outside (its memory is not charged to the task, and Nomad
        // >= 1.7 kills everything in the task cgroup at teardown).
        for p in self.cgroup_procs {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                self.fail(report::Step::Cgroup);
            }
            libc::close(fd);
        }
        // Die with the shim (set again after the user switch, which clears it).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            self.fail(report::Step::ParentDeath);
        }
        for (from, to) in self.moves {
            if libc::dup2(*from, *to) < 0 {
                self.fail(report::Step::Fds);
            }
        }
        // A clean signal state: the shim ignores SIGINT and SIGPIPE, and ignored dispositions
        // survive exec.
        default_signals();
        libc::execve(self.init.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        self.fail(report::Step::ExecInit)
    }
}

/// Reads the error pipe to EOF (started) or the first failure frame, within `timeout`.
fn read_failure(r: OwnedFd, timeout: Duration) -> std::io::Result<Option<report::Failure>> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut f = std::fs::File::from(r);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll of one live pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        match f.read(&mut chunk) {
            Ok(0) => return Ok(report::Failure::decode(&buf)),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The runtime's raw wait status from an init's status pipe, if it wrote one.
pub fn read_status(fd: &OwnedFd) -> Option<libc::c_int> {
    let mut b = [0u8; 4];
    // SAFETY: a read into a live 4-byte buffer from a non-blocking pipe.
    let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 4) };
    (n == 4).then(|| libc::c_int::from_le_bytes(b))
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
    fn only_a_sandbox_setup_that_timed_out_is_transient() {
        let setup = |errno| SpawnError::Setup {
            program: "elide".into(),
            what: "the sandbox setup".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        assert!(setup(libc::ETIMEDOUT).is_transient());
        assert!(!setup(libc::EPERM).is_transient());
        assert!(!SpawnError::EmptyArgv.is_transient());
        assert!(!SpawnError::NoSuchUser("x".into()).is_transient());
    }

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
            sandbox: None,
        }
    }

    fn devnull() -> OwnedFd {
        std::fs::File::create("/dev/null").unwrap().into()
    }

    #[test]
    fn nul_bytes_are_refused_before_anything_runs_and_not_blamed_on_elide_binary() {
        // (E2BIG and a missing binary need the real sandbox-init: executor/tests/setup.rs.)
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
    }

    #[test]
    fn denied_ids_cover_the_uid_and_every_group() {
        let nobody = creds::User {
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 27],
        };
        assert!(check_denied("0", "0", Some(&nobody)).is_ok());
        let e = check_denied("0,60000-65534", "", Some(&nobody)).unwrap_err();
        assert!(
            e.to_string().starts_with("running as uid 65534 is not allowed on this node (the plugin's denied_host_uids = \"0,60000-65534\")"),
            "{e}"
        );
        let e = check_denied("", "20-30", Some(&nobody)).unwrap_err();
        assert!(e.to_string().contains("gid 27"), "{e}");
        // No task user: the shim's own ids count.
        let me = nix::unistd::getuid().as_raw();
        assert!(check_denied(&me.to_string(), "", None).is_err());
    }
}
