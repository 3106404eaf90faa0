//! The task lifecycle through a real shim: start, exit codes, wait, stop, signal, kill -9,
//! shutdown, linger.

mod support;

use common::proto::executor::{self as api, TaskState};
use support::*;
use tonic::Code;

fn exit_of(r: api::WaitResponse) -> api::ExitStatus {
    r.exit.expect("Wait always carries an exit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_propagates_and_is_recorded_on_disk() {
    let dir = short_dir();
    let shim = launch(spec(dir.path(), "exit 3"), dir.path());
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    assert!(
        started.pid > 0 && started.started_at_unix_ms > 0,
        "{started:?}"
    );
    let exit = exit_of(
        within("wait", c.wait(api::WaitRequest {}))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (3, 0, false)
    );
    assert!(exit.message.is_empty(), "{exit:?}");
    // On disk as soon as it is known (Wait returned after the state file was written).
    let st = shim.state();
    let rec = st.exit.expect("exit recorded");
    assert_eq!((rec.exit_code, rec.signal), (3, 0));
    assert_eq!(st.runtime_pid, Some(started.pid));
    assert_eq!(st.shim_pid, shim.pid());
    assert_eq!(st.boot_id, common::proc::boot_id());
    let status = c.status(api::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.state, TaskState::Exited as i32);
    assert_eq!(status.exit.unwrap().exit_code, 3);
    // One runtime per shim.
    let again = c.start(api::StartRequest {}).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_by_signal_reports_the_signal_and_128_plus_n() {
    let dir = short_dir();
    let shim = launch(spec(dir.path(), "kill -TERM $$"), dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    let exit = exit_of(
        within("wait", c.wait(api::WaitRequest {}))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!((exit.exit_code, exit.signal), (143, 15), "{exit:?}");
    let rec = shim.state().exit.unwrap();
    assert_eq!((rec.exit_code, rec.signal), (143, 15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_answers_concurrent_callers_and_is_repeatable() {
    let dir = short_dir();
    let go = dir.path().join("go");
    make_fifo(&go);
    let script = format!("read x < {}; exit 4", go.display());
    let shim = launch(spec(dir.path(), &script), dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.wait(api::WaitRequest {}).await })
        })
        .collect();
    // A round trip on the same connection: the waits are in, and none has an answer yet.
    c.status(api::StatusRequest {}).await.unwrap();
    assert!(waiters.iter().all(|w| !w.is_finished()));
    // Let the task exit (the open blocks until the task's `read` opened its end).
    let go2 = go.clone();
    within(
        "releasing the task",
        tokio::task::spawn_blocking(move || std::fs::write(go2, "go\n")),
    )
    .await
    .unwrap()
    .unwrap();
    for w in waiters {
        let exit = exit_of(within("a waiter", w).await.unwrap().unwrap().into_inner());
        assert_eq!(exit.exit_code, 4);
    }
    // After the exit: answered at once, as often as asked, also on new connections.
    for _ in 0..3 {
        let mut fresh = shim.client().await;
        let exit = exit_of(fresh.wait(api::WaitRequest {}).await.unwrap().into_inner());
        assert_eq!(exit.exit_code, 4);
    }
}

/// Ignores SIGTERM and has a grandchild (which inherits the ignored SIGTERM).
const STUBBORN: &str = r#"trap "" TERM
sleep 1000 &
echo "grandchild $!"
while :; do wait; done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_after_the_timeout_and_leaves_no_grandchild() {
    let dir = short_dir();
    let mut out = LogFifo::new(dir.path(), "out");
    let mut s = spec(dir.path(), STUBBORN);
    s.stdout_path = out.path.clone();
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    let line = out.until(|l| l.starts_with("grandchild ")).await;
    let grandchild: i32 = line["grandchild ".len()..].parse().unwrap();
    let runtime_fd = PidFd::open(started.pid);
    let grandchild_fd = PidFd::open(grandchild);
    let r = within(
        "stop",
        c.stop(api::StopRequest {
            signal: "SIGTERM".into(),
            timeout_ms: 300,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let exit = r.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, 9), "{exit:?}");
    assert!(
        exit.message
            .contains("killed with SIGKILL after the 0.3s stop timeout"),
        "{exit:?}"
    );
    assert!(runtime_fd.exited().await);
    assert!(grandchild_fd.exited().await, "the grandchild outlived Stop");
    // Stop returns only once the group is gone: nothing of it is left now.
    assert!(common::proc::group_members(started.pid).is_empty());
    // Stop after the exit answers with the same exit.
    let again = c
        .stop(api::StopRequest {
            signal: String::new(),
            timeout_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.exit.unwrap().exit_code, 137);
    assert_eq!(shim.state().exit.unwrap().message, exit.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_left_the_process_group_dies_with_the_task() {
    let dir = short_dir();
    let mut out = LogFifo::new(dir.path(), "out");
    // `setsid` leaves the runtime's session and group (the daemon reports its pid only
    // after that); the runtime then exits, so the daemon is re-parented to the shim (a
    // subreaper), out of reach of a group kill.
    let mut s = spec(
        dir.path(),
        "setsid sh -c 'echo \"daemon $$\"; exec sleep 1000' & read x < go; exit 0",
    );
    s.stdout_path = out.path.clone();
    let go = dir.path().join("go");
    make_fifo(&go);
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    let line = out.until(|l| l.starts_with("daemon ")).await;
    let daemon: i32 = line["daemon ".len()..].parse().unwrap();
    let daemon_fd = PidFd::open(daemon);
    let st = common::proc::stat(daemon).unwrap();
    assert_ne!(st.pgrp, started.pid, "the daemon should have its own group");
    within(
        "releasing the task",
        tokio::task::spawn_blocking(move || std::fs::write(go, "go\n")),
    )
    .await
    .unwrap()
    .unwrap();
    let exit = exit_of(
        within("wait", c.wait(api::WaitRequest {}))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(exit.exit_code, 0);
    assert!(daemon_fd.exited().await, "the daemon outlived its task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_a_cooperative_task_returns_its_own_exit() {
    let dir = short_dir();
    let mut out = LogFifo::new(dir.path(), "out");
    let mut s = spec(
        dir.path(),
        r#"trap 'echo bye; exit 0' INT
echo ready
while :; do sleep 1000 & wait $!; done"#,
    );
    s.stdout_path = out.path.clone();
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    out.until(|l| l == "ready").await;
    let r = within(
        "stop",
        c.stop(api::StopRequest {
            signal: "int".into(),
            timeout_ms: 30_000,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let exit = r.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (0, 0), "{exit:?}");
    assert!(exit.message.is_empty(), "{exit:?}");
    assert_eq!(out.line().await, "bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_reaches_the_runtime_and_bad_names_list_the_valid_ones() {
    let dir = short_dir();
    let mut out = LogFifo::new(dir.path(), "out");
    let mut s = spec(
        dir.path(),
        r#"trap 'echo got-usr1' USR1
echo ready
while :; do sleep 1000 & wait $!; done"#,
    );
    s.stdout_path = out.path.clone();
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let e = c
        .signal(api::SignalRequest {
            signal: "SIGUSR1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("never started"), "{e:?}");
    c.start(api::StartRequest {}).await.unwrap();
    out.until(|l| l == "ready").await;
    for name in ["SIGUSR1", "usr1", "10"] {
        c.signal(api::SignalRequest {
            signal: name.into(),
        })
        .await
        .unwrap();
        assert_eq!(out.line().await, "got-usr1", "after {name}");
    }
    // SIGNULL only checks that it is alive.
    c.signal(api::SignalRequest {
        signal: "SIGNULL".into(),
    })
    .await
    .unwrap();
    let e = c
        .signal(api::SignalRequest {
            signal: "SIGBOGUS".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("SIGBOGUS") && e.message().contains("SIGUSR1"),
        "{e:?}"
    );
    c.stop(api::StopRequest {
        signal: "SIGKILL".into(),
        timeout_ms: 0,
    })
    .await
    .unwrap();
    let e = c
        .signal(api::SignalRequest {
            signal: "SIGUSR1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("exited with code 137"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_without_reader_fails_start_as_unavailable_and_a_retry_works() {
    let dir = short_dir();
    let fifo = dir.path().join("stdout.fifo");
    make_fifo(&fifo);
    let mut s = spec(dir.path(), "echo hello; exit 0");
    s.stdout_path = fifo.clone();
    s.fifo_open_timeout_ms = 300;
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let e = within("start", c.start(api::StartRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&format!(
            "no reader on log FIFO {} after 300ms",
            fifo.display()
        )),
        "{e:?}"
    );
    assert!(e.message().contains("logmon"), "{e:?}");
    let st = c.status(api::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.state, TaskState::Pending as i32);
    // Logmon shows up: the retry succeeds and the output arrives.
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)
        .unwrap();
    c.start(api::StartRequest {}).await.unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(rx).lines();
    let l = within("output", lines.next_line()).await.unwrap().unwrap();
    assert_eq!(l, "hello");
    let exit = exit_of(c.wait(api::WaitRequest {}).await.unwrap().into_inner());
    assert_eq!(exit.exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_log_paths_and_missing_binaries_are_failed_precondition() {
    let dir = short_dir();
    let target = dir.path().join("real.log");
    std::fs::write(&target, "").unwrap();
    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut s = spec(dir.path(), "exit 0");
    s.stderr_path = link;
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let e = c.start(api::StartRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("symlink"), "{e:?}");

    let mut s = spec(dir.path(), "");
    s.argv = vec!["/nonexistent/elide".into(), "run".into()];
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let e = c.start(api::StartRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("cannot start /nonexistent/elide")
            && e.message().contains("check elide_binary"),
        "{e:?}"
    );
    let e = c.wait(api::WaitRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    let mut s = spec(dir.path(), "exit 0");
    s.cwd = dir.path().join("no-such-dir");
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let e = c.start(api::StartRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("working directory"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_shim_takes_the_runtime_along_and_leaves_no_exit() {
    let dir = short_dir();
    let mut shim = launch(spec(dir.path(), "exec sleep 1000"), dir.path());
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    let runtime = PidFd::open(started.pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = shim.exited().await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(runtime.exited().await, "the runtime outlived its shim");
    let st = shim.state();
    assert!(st.exit.is_none(), "{:?}", st.exit);
    assert_eq!(st.runtime_pid, Some(started.pid));
    assert!(!common::proc::is_same_process(
        started.pid,
        started.pid_start_time
    ));
    // The operator view calls it lost, says why, and exits 1.
    let run_dir = shim
        .spec
        .socket_path
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (code, stdout, stderr) = cli(&["status", "--state-dir", &run_dir]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("unreachable"), "{stdout}");
    assert!(
        stderr.contains("stale socket") && stderr.contains("no recorded exit"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_the_runtime_removes_everything_and_exits_0() {
    let dir = short_dir();
    let mut shim = launch(spec(dir.path(), "exec sleep 1000"), dir.path());
    let link = shim.index_link();
    assert_eq!(std::fs::read_link(&link).unwrap(), shim.spec.state_path);
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    let runtime = PidFd::open(started.pid);
    within("shutdown", c.shutdown(api::ShutdownRequest {}))
        .await
        .unwrap();
    assert!(runtime.exited().await);
    let status = shim.exited().await;
    assert_eq!(status.code(), Some(0));
    assert!(!shim.spec.socket_path.exists());
    assert!(std::fs::symlink_metadata(&link).is_err());
    assert!(!shim.spec.state_path.parent().unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_linger_time_the_shim_goes_and_the_exit_stays_on_disk() {
    let dir = short_dir();
    let mut s = spec(dir.path(), "exit 7");
    s.linger_after_exit_secs = 1;
    let mut shim = launch(s, dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    let status = shim.exited().await;
    assert_eq!(status.code(), Some(0));
    assert!(!shim.spec.socket_path.exists());
    assert!(std::fs::symlink_metadata(shim.index_link()).is_err());
    assert_eq!(shim.state().exit.unwrap().exit_code, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_shim_stops_the_task_then_a_second_one_ends_the_linger() {
    let dir = short_dir();
    let mut shim = launch(spec(dir.path(), "exec sleep 1000"), dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    let term = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap()
    };
    term();
    let exit = exit_of(
        within("wait", c.wait(api::WaitRequest {}))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!((exit.exit_code, exit.signal), (143, 15));
    // Still there (lingering) and answering.
    let st = c.status(api::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.state, TaskState::Exited as i32);
    term();
    assert_eq!(shim.exited().await.code(), Some(0));
    assert!(!shim.spec.socket_path.exists());
    assert_eq!(shim.state().exit.unwrap().exit_code, 143);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_stats_describe_the_running_task() {
    let dir = short_dir();
    let shim = launch(spec(dir.path(), "exec sleep 1000"), dir.path());
    let mut c = shim.client().await;
    let st = c.status(api::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.state, TaskState::Pending as i32);
    assert_eq!(st.task_id, shim.spec.task_id);
    assert_eq!(st.shim_pid, shim.pid());
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    let st = c.status(api::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.state, TaskState::Running as i32);
    assert_eq!(st.runtime_pid, started.pid);
    assert_eq!(
        st.runtime_start_time,
        common::proc::start_time(started.pid).unwrap()
    );
    assert_eq!(st.runtime_start_time, started.pid_start_time);
    assert_eq!(st.alloc_id, shim.spec.alloc_id);
    assert_eq!(st.job_id, "job");
    assert_eq!(st.task_name, shim.spec.task_name);
    assert_eq!(st.socket_path, shim.spec.socket_path.display().to_string());
    assert_eq!(st.state_path, shim.spec.state_path.display().to_string());
    // The build this shim is, and the API level the plugin records (docs: Compatibility).
    assert_eq!(st.executor_version, executor::VERSION);
    assert_eq!(st.executor_revision, executor::REVISION);
    assert_eq!(st.api_level, common::shim_api::API_LEVEL);
    assert_eq!(
        (started.api_level, started.executor_version.as_str()),
        (common::shim_api::API_LEVEL, executor::VERSION)
    );
    assert!(st.memory_bytes > 0);
    assert!(st.exit.is_none());
    // The runtime has its own session and process group, and the shim as parent.
    let ps = common::proc::stat(started.pid).unwrap();
    assert_eq!(
        (ps.pgrp, ps.session, ps.ppid),
        (started.pid, started.pid, shim.pid())
    );

    let mut stream = c
        .stats(api::StatsRequest { interval_ms: 100 })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        let u = within("a sample", stream.message()).await.unwrap().unwrap();
        assert!(u.timestamp_unix_nanos > 0);
        assert!(u.measured.iter().any(|m| m == "cpu_percent"), "{u:?}");
        assert!(u.measured.iter().any(|m| m.starts_with("memory_")), "{u:?}");
    }
    c.stop(api::StopRequest {
        signal: "SIGKILL".into(),
        timeout_ms: 0,
    })
    .await
    .unwrap();
    // The stream ends with the task.
    loop {
        match within("the stream to end", stream.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => panic!("stats stream failed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_user_applies_and_the_parent_death_signal_survives_the_switch() {
    if !common::testing::root_or_skip("switching users needs root") {
        return;
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        eprintln!("skipped: no user `nobody` on this machine");
        return;
    };
    let dir = short_dir();
    let mut out = LogFifo::new(dir.path(), "out");
    let mut s = spec(
        dir.path(),
        "echo \"uid=$(id -u) gid=$(id -g)\"; exec sleep 1000",
    );
    s.user = "nobody".into();
    s.stdout_path = out.path.clone();
    let mut shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    assert_eq!(
        out.line().await,
        format!("uid={} gid={}", nobody.uid, nobody.gid)
    );
    // PR_SET_PDEATHSIG is cleared by a credential change; it is set after it.
    let runtime = PidFd::open(started.pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    shim.exited().await;
    assert!(runtime.exited().await, "the runtime outlived its shim");
}
