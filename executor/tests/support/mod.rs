//! Test harness: runs the real `elide-executor serve` the way the plugin does (own session,
//! stdio on /dev/null, fd 3 = readiness pipe) in a short temp dir, and talks to it over its
//! socket. "Runtimes" are plain `sh` scripts.
#![allow(dead_code)]

pub mod tmpfs;

use common::proto::executor::executor_client::ExecutorClient;
use common::spec::{ResourceSpec, TaskSpec, TASK_SPEC_VERSION};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_elide-executor");

/// The binary under test: [`BIN`], or `ELIDE_EXECUTOR_BIN` (the footprint bench measures a
/// given build, e.g. the static release one).
pub fn bin() -> String {
    std::env::var("ELIDE_EXECUTOR_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// Guard against hangs only (no test asserts on time): every await gets this long.
pub const GUARD: Duration = Duration::from_secs(60);

pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A temp dir with a short path (sockets must stay under 108 bytes).
pub fn short_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ee")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A spec running `script` with `sh -c`, output to /dev/null, in `dir`.
pub fn spec(dir: &Path, script: &str) -> TaskSpec {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let alloc = format!(
        "{:08x}-{}-{n}",
        std::process::id(),
        dir.file_name().unwrap().to_string_lossy()
    );
    let task_id = format!("{alloc}/t{n}/0a1b2c3d");
    let key = common::paths::task_key(&task_id);
    let run_dir = dir.join("run");
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), "/usr/bin:/bin".to_string());
    TaskSpec {
        version: TASK_SPEC_VERSION,
        task_id: task_id.clone(),
        alloc_id: alloc,
        job_id: "job".into(),
        task_group: "group".into(),
        task_name: format!("t{n}"),
        namespace: "default".into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env,
        cwd: dir.to_path_buf(),
        stdout_path: "/dev/null".into(),
        stderr_path: "/dev/null".into(),
        log_files: None,
        fifo_open_timeout_ms: 5000,
        user: String::new(),
        socket_path: common::paths::socket_path(&run_dir, &task_id).unwrap(),
        state_path: dir.join("st").join(&key).join("state.json"),
        netns_path: None,
        // Without root no cgroup can be made: let such runs go without limits, as an
        // operator would with allow_no_cgroup.
        resources: ResourceSpec {
            allow_no_cgroup: !nix::unistd::geteuid().is_root(),
            ..Default::default()
        },
        linger_after_exit_secs: 300,
        sandbox: None,
    }
}

/// A log FIFO with a logmon-like reader (opened read-write, so it never sees EOF).
pub struct LogFifo {
    pub path: PathBuf,
    lines: tokio::io::Lines<BufReader<tokio::net::unix::pipe::Receiver>>,
}

impl LogFifo {
    pub fn new(dir: &Path, name: &str) -> LogFifo {
        let path = dir.join(name);
        make_fifo(&path);
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .expect("open fifo reader");
        LogFifo {
            path,
            lines: BufReader::new(rx).lines(),
        }
    }

    pub async fn line(&mut self) -> String {
        within("a log line", self.lines.next_line())
            .await
            .expect("read log fifo")
            .expect("log fifo closed")
    }

    /// Reads lines until one satisfies `pred`; returns it.
    pub async fn until(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self.line().await;
            if pred(&l) {
                return l;
            }
        }
    }
}

pub fn make_fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// A running shim.
pub struct Shim {
    pub spec: TaskSpec,
    pub spec_path: PathBuf,
    pub child: Option<Child>,
    pub ready_line: String,
}

pub fn write_spec(spec: &TaskSpec, dir: &Path) -> PathBuf {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let p = dir.join(format!("spec{n}.json"));
    std::fs::write(&p, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    p
}

/// How [`spawn_serve`] sets up the shim's fds and limits.
#[derive(Default, Clone, Copy)]
pub struct ServeFds {
    /// Fd 3 (`--ready-fd 3`): this fd dup'ed there, or fd 3 left closed.
    pub fd3: Option<i32>,
    /// An fd left open (not CLOEXEC) in the shim as fd 7.
    pub fd7: Option<i32>,
    /// `RLIMIT_NOFILE` of the shim.
    pub nofile: Option<u64>,
    /// Stdin on a pipe (for `--spec -`) instead of /dev/null.
    pub piped_stdin: bool,
}

/// Spawns `elide-executor serve --spec <spec> --ready-fd 3 --task <task_id>` the way the
/// plugin does (own session, stdout/stderr on /dev/null), with `fds` arranged in the child.
pub fn spawn_serve(spec: &Path, task_id: &str, fds: ServeFds) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--spec"])
        .arg(spec)
        .args(["--ready-fd", "3", "--task", task_id])
        .stdin(if fds.piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::setsid() < 0 {
                return fail();
            }
            if let Some(n) = fds.nofile {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) < 0 {
                    return fail();
                }
            }
            if let Some(e) = fds.fd7 {
                if libc::dup2(e, 7) < 0 {
                    return fail();
                }
            }
            match fds.fd3 {
                None => {
                    libc::close(3);
                }
                Some(3) => {
                    libc::fcntl(3, libc::F_SETFD, 0);
                }
                Some(fd) => {
                    if libc::dup2(fd, 3) < 0 {
                        return fail();
                    }
                }
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn elide-executor")
}

/// A readiness pipe: (read end, write end's raw number for [`ServeFds::fd3`]). Keep the
/// write end until the shim is spawned, then drop it.
pub fn ready_pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// Reads the readiness line (to EOF: the shim closes the pipe after it).
pub fn read_ready(r: OwnedFd) -> String {
    let mut line = String::new();
    std::fs::File::from(r)
        .read_to_string(&mut line)
        .expect("read the ready pipe");
    line
}

/// The task id a spec file names, for `--task`; a placeholder for a file that is missing or
/// not a spec (the shim refuses those before it compares `--task`).
pub fn task_id_of(spec_path: &Path) -> String {
    std::fs::read(spec_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("task_id")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "no-spec/t/0".into())
}

/// [`spawn_serve`] with a readiness pipe as fd 3 (`fds.fd3` is set here), `stdin` written to
/// the shim's stdin (the spec, for `--spec -`; needs `fds.piped_stdin`), then the readiness
/// line read: `READY\n` or `ERROR <why>`.
pub fn spawn_ready(
    spec_path: &Path,
    task_id: &str,
    fds: ServeFds,
    stdin: Option<&[u8]>,
) -> (Child, String) {
    let (r, w) = ready_pipe();
    let mut child = spawn_serve(
        spec_path,
        task_id,
        ServeFds {
            fd3: Some(w.as_raw_fd()),
            ..fds
        },
    );
    drop(w);
    if let Some(bytes) = stdin {
        use std::io::Write;
        let mut pipe = child
            .stdin
            .take()
            .expect("spawn_ready: stdin needs piped_stdin");
        pipe.write_all(bytes).expect("write the shim's stdin");
    }
    (child, read_ready(r))
}

/// Starts `elide-executor serve` like the plugin does and reads its readiness line.
/// `extra_fd`: an fd left open (not CLOEXEC) in the shim as fd 7, to check the shim does not
/// pass inherited fds on to the runtime.
pub fn launch_raw(spec_path: &Path, extra_fd: Option<&OwnedFd>) -> (Child, String) {
    let fds = ServeFds {
        fd7: extra_fd.map(|f| f.as_raw_fd()),
        ..Default::default()
    };
    spawn_ready(spec_path, &task_id_of(spec_path), fds, None)
}

/// A shim for `spec` (written at `spec_path`, or `-` with `stdin`), started like the plugin
/// does with `fds`, once it said READY.
pub fn launch_with(spec: TaskSpec, spec_path: &Path, fds: ServeFds, stdin: Option<&[u8]>) -> Shim {
    let (child, line) = spawn_ready(spec_path, &spec.task_id, fds, stdin);
    assert_eq!(line, "READY\n", "the shim did not get ready");
    Shim::of(spec, spec_path, child, line)
}

/// A shim for `spec` (its spec file written in `dir`), once it said READY.
pub fn launch(spec: TaskSpec, dir: &Path) -> Shim {
    let spec_path = write_spec(&spec, dir);
    launch_with(spec, &spec_path, ServeFds::default(), None)
}

/// Launches a shim for `spec` (in the parent of its socket dir), starts the task and waits
/// for its exit; returns (exit, the `key=value` lines of `out`, the whole of `out`).
pub async fn run_to_exit(
    spec: &TaskSpec,
    out: &Path,
) -> (
    common::proto::executor::ExitStatus,
    BTreeMap<String, String>,
    String,
) {
    use common::proto::executor as api;
    let dir = spec.socket_path.parent().unwrap().parent().unwrap();
    let shim = launch(spec.clone(), dir);
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.expect("start");
    let exit = within("wait", c.wait(api::WaitRequest {}))
        .await
        .unwrap()
        .into_inner()
        .exit
        .unwrap();
    let text = std::fs::read_to_string(out).unwrap();
    let kv = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (exit, kv, text)
}

impl Shim {
    /// A shim spawned by hand (see [`spawn_serve`]).
    pub fn of(spec: TaskSpec, spec_path: &Path, child: Child, ready_line: String) -> Shim {
        Shim {
            spec,
            spec_path: spec_path.to_path_buf(),
            child: Some(child),
            ready_line,
        }
    }

    /// Waits (bounded) until something accepts on the shim's socket; for shims that have no
    /// readiness pipe to say so.
    pub async fn until_serving(self) -> Shim {
        within("the shim to serve its socket", async {
            while std::os::unix::net::UnixStream::connect(&self.spec.socket_path).is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub async fn client(&self) -> ExecutorClient<Channel> {
        within("connect", common::client::connect(&self.spec.socket_path))
            .await
            .expect("connect to the shim")
    }

    /// Waits for the shim process to exit (it is our child).
    pub async fn exited(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("shim already reaped");
        within(
            "the shim to exit",
            tokio::task::spawn_blocking(move || child.wait().expect("wait for the shim")),
        )
        .await
        .expect("join")
    }

    pub fn index_link(&self) -> PathBuf {
        common::paths::index_link(self.spec.socket_path.parent().unwrap(), &self.spec.task_id)
    }

    pub fn state(&self) -> common::state::TaskState {
        common::state::TaskState::read(&self.spec.state_path).expect("read the state file")
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Killing the shim takes its runtime along (PDEATHSIG).
            let _ = c.kill();
            let _ = c.wait();
        }
        // What the plugin does for a dead shim removes the rest (tests that kill shims would
        // otherwise pile up empty cgroups on the host).
        {
            let st = common::state::TaskState::read(&self.spec.state_path).ok();
            let spec = &self.spec;
            common::remains::clean_up(
                &common::remains::Remains {
                    names: common::cgroup::TaskNames {
                        task_id: &spec.task_id,
                        alloc_id: &spec.alloc_id,
                        task_name: &spec.task_name,
                    },
                    runtime_pid: st.as_ref().and_then(|s| s.runtime_pid).unwrap_or(0),
                    runtime_start_time: st.and_then(|s| s.runtime_start_time).unwrap_or(0),
                    state_path: &spec.state_path,
                    socket_path: &spec.socket_path,
                },
                Path::new(common::cgroup::DEFAULT_ROOT),
            );
        }
    }
}

/// A pidfd on `pid`, opened while the process is known to exist.
pub struct PidFd(OwnedFd);

impl PidFd {
    pub fn open(pid: i32) -> PidFd {
        // SAFETY: pidfd_open with a pid and no flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd from the kernel.
        PidFd(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
    }

    /// Waits until the process has exited (readable pidfd). False if still alive at `GUARD`.
    pub async fn exited(&self) -> bool {
        let fd = self.0.as_raw_fd();
        tokio::task::spawn_blocking(move || {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, GUARD.as_millis() as i32) };
            n == 1
        })
        .await
        .unwrap()
    }
}

/// Runs the CLI; returns (exit status, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run elide-executor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
