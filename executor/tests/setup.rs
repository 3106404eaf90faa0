//! Everything before READY, and the process hygiene of `serve` and `run`.

mod support;

use common::proto::executor as api;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use support::*;

fn ready_line_for(spec: &common::spec::TaskSpec, dir: &std::path::Path) -> (i32, String) {
    let p = write_spec(spec, dir);
    let (mut child, line) = launch_raw(&p, None);
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, line)
}

#[test]
fn a_bad_spec_is_reported_on_the_ready_fd_with_the_fix() {
    let dir = short_dir();
    let mut s = spec(dir.path(), "exit 0");
    s.version = 99;
    let (code, line) = ready_line_for(&s, dir.path());
    assert_eq!(code, 1);
    assert!(
        line.starts_with("ERROR ") && line.ends_with('\n'),
        "{line:?}"
    );
    assert_eq!(line.lines().count(), 1, "one line: {line:?}");
    assert!(
        line.contains("version 99") && line.contains("elide-executor that ships"),
        "{line}"
    );

    let mut s = spec(dir.path(), "exit 0");
    s.socket_path = dir.path().join("d".repeat(120)).join("x.sock");
    let (code, line) = ready_line_for(&s, dir.path());
    assert_eq!(code, 1);
    assert!(
        line.contains("107-byte limit") && line.contains("shorter"),
        "{line}"
    );

    let mut s = spec(dir.path(), "exit 0");
    s.cwd = "relative/dir".into();
    let (_, line) = ready_line_for(&s, dir.path());
    assert!(line.contains("cwd") && line.contains("absolute"), "{line}");

    let missing = dir.path().join("missing.json");
    let (mut child, line) = launch_raw(&missing, None);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(
        line.starts_with("ERROR cannot read the task spec"),
        "{line}"
    );

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"version\": 1, \"nope\": true}").unwrap();
    let (mut child, line) = launch_raw(&garbage, None);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(
        line.contains("is invalid") && line.contains("docs/executor.md"),
        "{line}"
    );
}

/// `--task` shows operators which task a shim runs (`ps`); it cannot name another task than
/// the spec's.
#[test]
fn the_command_line_names_the_specs_task_and_nothing_else() {
    let dir = short_dir();
    let s = spec(dir.path(), "exit 0");
    let p = write_spec(&s, dir.path());
    let (mut child, line) = spawn_ready(&p, "other-alloc/web/0", ServeFds::default(), None);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(
        line.starts_with("ERROR --task \"other-alloc/web/0\" is not the spec's task_id")
            && line.contains(&s.task_id),
        "{line}"
    );

    let shim = launch(s.clone(), dir.path());
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", shim.pid())).unwrap();
    let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert!(
        words
            .windows(2)
            .any(|w| w[0] == b"--task" && w[1] == s.task_id.as_bytes()),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
}

#[test]
fn out_of_range_numbers_and_bad_env_are_refused_before_anything_runs() {
    let dir = short_dir();
    type Change = Box<dyn Fn(&mut common::spec::TaskSpec)>;
    let cases: Vec<(Change, &str)> = vec![
        // 2^44 + 1 MiB is 2^64 + 1 MiB in bytes: it used to wrap to a 1 MiB limit.
        (
            Box::new(|s| s.resources.memory_max_mb = (1 << 44) + 1),
            "resources.memory_max_mb: 17592186044417 is more than the 1073741824 MiB",
        ),
        // Used to pass, then panic adding it to the clock once the runtime had started.
        (
            Box::new(|s| s.linger_after_exit_secs = u64::MAX),
            "linger_after_exit_secs: 18446744073709551615 is more than",
        ),
        (
            Box::new(|s| s.fifo_open_timeout_ms = u64::MAX),
            "fifo_open_timeout_ms: 18446744073709551615 is more than",
        ),
        (
            Box::new(|s| s.resources.pids_limit = u64::MAX),
            "resources.pids_limit",
        ),
        (
            Box::new(|s| {
                s.env
                    .insert("LD_PRELOAD=/tmp/x.so\nFOO".into(), "bar".into());
            }),
            "is not a valid environment variable name",
        ),
        (
            Box::new(|s| {
                s.env.insert("A=B".into(), "c".into());
            }),
            "\"A=B\" is not a valid environment variable name",
        ),
        (
            Box::new(|s| {
                s.env.insert("BIG".into(), "x".repeat(3 << 20));
            }),
            "the variable BIG is 3145733 bytes",
        ),
        (
            Box::new(|s| {
                s.env.insert("A".into(), "x\0y".into());
            }),
            "the value of A contains a NUL byte",
        ),
        (
            Box::new(|s| s.argv.push("a\0b".into())),
            "argv: argv[3] contains a NUL byte",
        ),
    ];
    for (change, want) in cases {
        let mut s = spec(dir.path(), "exit 0");
        change(&mut s);
        let (code, line) = ready_line_for(&s, dir.path());
        assert_eq!(code, 1, "{line}");
        assert!(
            line.starts_with("ERROR ") && line.contains(want),
            "want {want:?} in {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_private_a_stale_one_is_replaced_a_live_one_is_not() {
    let dir = short_dir();
    let s = spec(dir.path(), "exec sleep 1000");
    // A stale socket file from a dead shim.
    std::fs::create_dir_all(s.socket_path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&s.socket_path).unwrap());
    let shim = launch(s.clone(), dir.path());
    let meta = std::fs::metadata(&shim.spec.socket_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let state_meta = std::fs::metadata(&shim.spec.state_path).unwrap();
    assert_eq!(
        state_meta.permissions().mode() & 0o777,
        0o600,
        "the state is private"
    );
    let state_dir = std::fs::metadata(shim.spec.state_path.parent().unwrap()).unwrap();
    assert_eq!(state_dir.permissions().mode() & 0o777, 0o700);
    let st = shim.state();
    assert_eq!(st.shim_pid, shim.pid());
    assert_eq!(
        st.shim_start_time,
        common::proc::start_time(shim.pid()).unwrap()
    );
    assert!(st.runtime_pid.is_none() && st.exit.is_none());
    // The spec without its env: the task's environment never goes to disk.
    let mut recorded = shim.spec.clone();
    recorded.env.clear();
    assert_eq!(st.spec, recorded);
    let log = shim.spec.state_path.parent().unwrap().join("executor.log");
    let log_meta = std::fs::metadata(&log).unwrap();
    assert_eq!(log_meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("shim ready"));
    // A second shim for the same socket refuses and says why.
    let (code, line) = ready_line_for(&s, dir.path());
    assert_eq!(code, 1);
    assert!(
        line.starts_with("ERROR another elide-executor already serves"),
        "{line}"
    );
    // The first one is unaffected.
    let mut c = shim.client().await;
    c.status(api::StatusRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_inherits_no_stray_fds() {
    let dir = short_dir();
    let mut s = spec(dir.path(), "");
    s.argv = vec!["/bin/sleep".into(), "1000".into()];
    let p = write_spec(&s, dir.path());
    // A non-CLOEXEC fd the "plugin" leaked into the shim (as fd 7).
    let (_r, leaked): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    let (child, line) = launch_raw(&p, Some(&leaked));
    assert_eq!(line, "READY\n");
    let shim = Shim::of(s, &p, child, line);
    let fds_of = |pid: i32| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    // The shim still has the leaked fd (only marked CLOEXEC), so the check below means
    // something.
    assert!(fds_of(shim.pid()).contains(&"7".to_string()));
    let mut c = shim.client().await;
    // Start returns after the exec succeeded: the runtime's fds are final.
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    assert_eq!(
        fds_of(started.pid),
        ["0", "1", "2"],
        "the runtime inherited fds"
    );
    let stdin = std::fs::read_link(format!("/proc/{}/fd/0", started.pid)).unwrap();
    assert_eq!(stdin, std::path::Path::new("/dev/null"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_gets_exactly_the_spec_env_and_cwd_and_the_shims_umask() {
    let dir = short_dir();
    let mut out = LogFifo::new(dir.path(), "out");
    let mut s = spec(
        dir.path(),
        "echo \"cwd=$(pwd) foo=$FOO home=${HOME-unset} umask=$(umask)\"",
    );
    s.env.insert("FOO".into(), "bar baz".into());
    s.stdout_path = out.path.clone();
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    let line = out.line().await;
    // The shim creates its own files 0600, but hands the runtime the umask it inherited.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(
        line,
        format!(
            "cwd={} foo=bar baz home=unset umask={mask}",
            dir.path().display()
        )
    );
}

#[test]
fn run_mode_exits_with_the_runtime_code_and_prints_it() {
    let dir = short_dir();
    let s = spec(dir.path(), "echo to-stdout; exit 5");
    let p = write_spec(&s, dir.path());
    let (code, stdout, stderr) = cli(&["run", "--spec", p.to_str().unwrap()]);
    assert_eq!(code, 5, "{stdout}{stderr}");
    assert!(
        stderr.contains("the runtime exited with code 5"),
        "{stderr}"
    );
    // The socket goes, the exit stays.
    assert!(!s.socket_path.exists());
    let st = common::state::TaskState::read(&s.state_path).unwrap();
    assert_eq!(st.exit.unwrap().exit_code, 5);

    let mut s = spec(dir.path(), "");
    s.argv = vec!["/nonexistent/elide".into()];
    let p = write_spec(&s, dir.path());
    let (code, _, stderr) = cli(&["run", "--spec", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot start /nonexistent/elide"),
        "{stderr}"
    );
}

/// Nomad >= 1.7 on cgroup v2 hands over the task's scope: the runtime joins it between fork
/// and exec; the shim never writes itself into it (the client kills everything in the scope
/// at teardown, and the shim's memory must not count against the task). On a fake cgroupfs.
#[test]
fn the_runtime_joins_nomads_scope_before_exec_and_the_shim_stays_out() {
    use common::cgroup::{TaskCgroup, Version};
    let dir = short_dir();
    let root = dir.path().join("cgroup");
    let scope = root.join("nomad.slice/share.slice/a1.web.scope");
    std::fs::create_dir_all(&scope).unwrap();
    std::fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
    std::fs::write(scope.join("cgroup.procs"), "").unwrap();
    let mut spec = spec(dir.path(), "exit 0");
    spec.resources.nomad_cgroup = scope.display().to_string();
    let cg = TaskCgroup::create_for(&root, Version::V2, &spec).unwrap();
    assert_eq!(cg.dirs(), vec![scope.clone()]);
    let null = || OwnedFd::from(std::fs::File::create("/dev/null").unwrap());
    executor::runtime::set_init_binary(BIN.into());
    let pid = executor::runtime::spawn(&spec, null(), null(), cg.procs_files())
        .unwrap()
        .pid;
    let pid = nix::unistd::Pid::from_raw(pid);
    let status = nix::sys::wait::waitpid(pid, None).unwrap();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
    // "0" is how a process writes itself into cgroup.procs: only the child did.
    assert_eq!(
        std::fs::read_to_string(scope.join("cgroup.procs")).unwrap(),
        "0"
    );
    assert!(
        !root.join("elide.slice").exists(),
        "no cgroup of our own next to Nomad's"
    );
}

/// What execve refuses is reported by sandbox-init with the errno: E2BIG is not blamed on
/// elide_binary; a missing binary is.
#[test]
fn exec_errors_name_their_cause() {
    use executor::runtime::{spawn, SpawnError};
    executor::runtime::set_init_binary(BIN.into());
    let dir = short_dir();
    let null = || OwnedFd::from(std::fs::File::create("/dev/null").unwrap());
    let mut s = spec(dir.path(), "");
    s.argv = vec!["/bin/true".into()];
    // 3 MiB in one variable: execve says E2BIG.
    s.env.insert("BIG".into(), "x".repeat(3 << 20));
    let e = spawn(&s, null(), null(), vec![]).unwrap_err();
    assert!(matches!(e, SpawnError::TooBig { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("E2BIG") && msg.contains("shorten env values"),
        "{msg}"
    );
    assert!(!msg.contains("elide_binary"), "{msg}");

    let mut s = spec(dir.path(), "");
    s.argv = vec!["/no/such/elide".into()];
    let e = spawn(&s, null(), null(), vec![]).unwrap_err();
    assert!(e.to_string().contains("check elide_binary"), "{e}");
}
