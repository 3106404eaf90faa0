//! The shim under hostile or careless conditions: what it finds at its socket path, a
//! readiness fd that is not what it should be, fds inherited in `run` mode, more idle
//! connections than it has fds, and signals nobody meant for it.

mod support;

use common::proto::executor as api;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// CPU time (user + system, clock ticks) a process has used so far.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}

#[test]
fn a_file_at_the_socket_path_that_is_not_a_socket_is_kept_and_named() {
    let dir = short_dir();
    let s = spec(dir.path(), "exit 0");
    std::fs::create_dir_all(s.socket_path.parent().unwrap()).unwrap();
    std::fs::write(&s.socket_path, "precious").unwrap();
    let p = write_spec(&s, dir.path());
    let (mut child, line) = launch_raw(&p, None);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(
        line.starts_with("ERROR ") && line.contains("not a socket"),
        "{line}"
    );
    assert_eq!(std::fs::read_to_string(&s.socket_path).unwrap(), "precious");
}

/// `serve --ready-fd 3` with fd 3 closed: the shim must not take the fd its async runtime
/// opens next (epoll) for the readiness pipe, write to it and close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_ready_fd_is_not_adopted() {
    let dir = short_dir();
    let s = spec(dir.path(), "exit 7");
    let p = write_spec(&s, dir.path());
    let child = spawn_serve(&p, &s.task_id, ServeFds::default());
    let shim = Shim::of(s, &p, child, String::new()).until_serving().await;
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    let exit = within("wait", c.wait(api::WaitRequest {}))
        .await
        .unwrap()
        .into_inner()
        .exit
        .unwrap();
    assert_eq!(exit.exit_code, 7);
}

/// A `--ready-fd` that is open but not a pipe (a file here) is left alone: no line is
/// written into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_fd_that_is_not_a_pipe_is_left_alone() {
    let dir = short_dir();
    let s = spec(dir.path(), "exit 0");
    let p = write_spec(&s, dir.path());
    let victim = dir.path().join("victim.txt");
    let file = OwnedFd::from(std::fs::File::create(&victim).unwrap());
    let child = spawn_serve(
        &p,
        &s.task_id,
        ServeFds {
            fd3: Some(file.as_raw_fd()),
            ..Default::default()
        },
    );
    drop(file);
    let shim = Shim::of(s, &p, child, String::new()).until_serving().await;
    shim.client()
        .await
        .status(api::StatusRequest {})
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "");
}

/// `run` is started by an operator's shell, which may leave fds open: the runtime gets
/// only 0, 1 and 2, as under `serve`.
#[test]
fn run_mode_passes_no_inherited_fds_to_the_runtime() {
    let dir = short_dir();
    let out = dir.path().join("out.txt");
    std::fs::write(&out, "").unwrap();
    let mut s = spec(dir.path(), "exec ls /proc/self/fd");
    s.stdout_path = out.clone();
    let p = write_spec(&s, dir.path());
    let (_r, leaked): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    let raw = leaked.as_raw_fd();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--spec"])
        .arg(&p)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: async-signal-safe calls only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    assert!(status.success());
    let fds: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // 3 is ls's own handle on /proc/self/fd.
    assert_eq!(fds, ["0", "1", "2", "3"], "the runtime inherited fds");
}

/// More idle connections than the shim has fds for: it must neither spin on EMFILE nor stop
/// serving. Measured as the shim's CPU time while the connections sit there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_fd_limit_neither_spin_nor_lock_out_a_client() {
    let dir = short_dir();
    let s = spec(dir.path(), "exec sleep 1000");
    let p = write_spec(&s, dir.path());
    let fds = ServeFds {
        nofile: Some(64),
        ..Default::default()
    };
    let shim = launch_with(s, &p, fds, None);
    let mut idle: Vec<std::os::unix::net::UnixStream> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&shim.spec.socket_path).unwrap())
        .collect();
    // Let the shim accept what it will, then measure a quiet second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(shim.pid());
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(shim.pid()) - before;
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    let budget = ticks_per_sec * t.elapsed().as_millis() as u64 / 1000 / 10;
    assert!(
        used <= budget,
        "the shim used {used} ticks of CPU in {:?} with idle connections (budget {budget})",
        t.elapsed()
    );
    // Keep the ones the shim accepted first (they hold every slot it has): the shim closes
    // them once they never speak, and a real client gets its answer.
    idle.truncate(32);
    let mut c = shim.client().await;
    within("status", c.status(api::StatusRequest {}))
        .await
        .unwrap();
    drop(idle);
}

/// SIGHUP, SIGUSR1, SIGUSR2, SIGALRM and SIGPIPE kill a process that does not handle them;
/// a shim must survive them (they come from careless scripts, `kill -HUP` of a process
/// group, a closed terminal) and keep its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_signals_do_not_kill_the_shim() {
    let dir = short_dir();
    let shim = launch(spec(dir.path(), "exec sleep 1000"), dir.path());
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    let pid = nix::unistd::Pid::from_raw(shim.pid());
    use nix::sys::signal::Signal::*;
    for sig in [SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGPIPE] {
        nix::sys::signal::kill(pid, sig).unwrap();
        let st = within("status", c.status(api::StatusRequest {}))
            .await
            .unwrap_or_else(|e| panic!("the shim died of {sig}: {e}"))
            .into_inner();
        assert_eq!(st.runtime_pid, started.pid);
        assert_eq!(st.state, api::TaskState::Running as i32, "{sig}");
    }
}

/// Everything under a directory, as one string (file names and contents).
fn everything_under(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            out.push_str(&p.display().to_string());
            out.push('\n');
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
                out.push('\n');
            } else if t.is_symlink() {
                out.push_str(&std::fs::read_link(&p).unwrap().display().to_string());
            }
        }
    }
    out
}

/// The plugin hands the spec over on the shim's stdin (`--spec -`): the task's environment
/// (NOMAD_TOKEN, VAULT_TOKEN…) lives in the shim's memory and the runtime's environ only,
/// never in the state dir, the runtime dir or `status --json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_env_reaches_the_runtime_but_never_the_disk() {
    const SECRET: &str = "s3cr3t-t0ken-value";
    let dir = short_dir();
    let mut out = LogFifo::new(dir.path(), "out");
    let mut s = spec(dir.path(), "echo \"token=$NOMAD_TOKEN\"; exec sleep 1000");
    s.env.insert("NOMAD_TOKEN".into(), SECRET.into());
    s.env.insert("VAULT_TOKEN".into(), SECRET.into());
    s.stdout_path = out.path.clone();
    let fds = ServeFds {
        piped_stdin: true,
        ..Default::default()
    };
    let json = serde_json::to_vec(&s).unwrap();
    let shim = launch_with(s, Path::new("-"), fds, Some(&json));
    // The shim keeps nothing of the pipe it read the spec from.
    let stdin = std::fs::read_link(format!("/proc/{}/fd/0", shim.pid())).unwrap();
    assert_eq!(stdin, Path::new("/dev/null"));
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    assert_eq!(out.line().await, format!("token={SECRET}"));
    let run_dir = shim.spec.socket_path.parent().unwrap();
    let state_dir = shim.spec.state_path.parent().unwrap();
    for d in [run_dir, state_dir] {
        let all = everything_under(d);
        assert!(
            !all.contains(SECRET),
            "the secret is on disk under {}:\n{all}",
            d.display()
        );
    }
    let (code, json, err) = cli(&["status", "--json", "--state-dir", run_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!json.contains(SECRET), "{json}");
    // The state file still says what runs (names the operator needs), without values.
    let st = shim.state();
    assert_eq!(st.spec.argv, shim.spec.argv);
    assert!(st.spec.env.is_empty(), "{:?}", st.spec.env);
}

/// `kill -9` of a shim: the runtime dies of PDEATHSIG, but what it started lives on with
/// parent 1 — in the runtime's process group, or (after setsid) only in the task cgroup.
/// What the plugin runs when it finds the shim dead (common::remains) kills both and removes
/// the task's own cgroups, which used to pile up empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_shim_leaves_is_killed_and_its_cgroups_removed() {
    let dir = short_dir();
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 1000 & echo $! >> {p}; setsid sleep 1000 & echo $! >> {p}; echo done >> {p}; exec sleep 1000",
        p = pids.display()
    );
    let mut shim = launch(spec(dir.path(), &script), dir.path());
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    within("the runtime's children", async {
        while !std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .contains("done")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let children: Vec<(i32, u64)> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .map(|p| (p, common::proc::start_time(p).unwrap()))
        .collect();
    assert_eq!(children.len(), 2);
    let st = shim.state();
    let root = nix::unistd::Uid::effective().is_root();
    let cgroups: Vec<String> = st
        .cgroup
        .clone()
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    if root {
        assert!(!cgroups.is_empty(), "a root shim puts its task in a cgroup");
    }
    shim.child.as_mut().unwrap().kill().unwrap();
    shim.exited().await;
    // The setsid'd child is outside the group: only the cgroup holds it (root only).
    let survivors = |from: &[(i32, u64)]| -> Vec<i32> {
        from.iter()
            .filter(|(p, s)| common::proc::is_same_process(*p, *s))
            .map(|(p, _)| *p)
            .collect()
    };
    assert_eq!(survivors(&children).len(), 2, "both outlive the shim");
    let spec = &shim.spec;
    let cleaned = common::remains::clean_up(
        &common::remains::Remains {
            names: common::cgroup::TaskNames {
                task_id: &spec.task_id,
                alloc_id: &spec.alloc_id,
                task_name: &spec.task_name,
            },
            runtime_pid: started.pid,
            runtime_start_time: started.pid_start_time,
            state_path: &spec.state_path,
            socket_path: &spec.socket_path,
        },
        Path::new(common::cgroup::DEFAULT_ROOT),
    );
    assert!(cleaned.group_killed, "{cleaned:?}");
    let expect_gone = if root { &children[..] } else { &children[..1] };
    within("the leftovers to die", async {
        while !survivors(expect_gone).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let key = common::paths::task_key(&spec.task_id);
    for d in cgroups.iter().filter(|d| d.ends_with(&key)) {
        assert!(!Path::new(d).exists(), "{d} was left behind");
    }
    assert!(cleaned.kept_cgroups.is_empty(), "{cleaned:?}");
    assert!(
        !spec.socket_path.exists(),
        "the dead shim's socket is removed"
    );
    assert!(std::fs::symlink_metadata(shim.index_link()).is_err());
    if !root {
        // Not root: no cgroup, and the setsid'd child escaped; clean it up ourselves.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(children[1].0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Issue #18 (2): Nomad builds a task dir (owner nobody, mode 0777) for a task named
/// `.elide` before StartTask, so `<alloc>/.elide` may be anybody's. The shim neither creates
/// its state dir in it nor follows a symlink in its place: it refuses to start, naming it.
#[test]
fn a_state_root_the_driver_did_not_make_fails_the_start_and_stays_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let dir = short_dir();
    let alloc = dir.path().join("alloc-dir");
    std::fs::create_dir(&alloc).unwrap();
    let mut s = spec(dir.path(), "exit 0");
    s.state_path = common::paths::state_dir(&alloc, &s.task_id).join("state.json");
    let root = alloc.join(".elide");

    // World-writable, as Nomad leaves a task dir.
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let p = write_spec(&s, dir.path());
    let (mut child, line) = launch_raw(&p, None);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(
        line.starts_with("ERROR ") && line.contains("refusing to use") && line.contains(".elide"),
        "{line}"
    );
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "nothing made in it"
    );

    // A symlink in its place: not followed.
    std::fs::remove_dir(&root).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &root).unwrap();
    let (mut child, line) = launch_raw(&p, None);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(line.contains("symlink"), "{line}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert!(!s.socket_path.exists());
}
