//! The lifecycle against fake shims on real Unix sockets (see `testing`): start errors, wait
//! after the shim is gone, recover, stop, signal and destroy.

use super::handle::{DriverState, HANDLE_VERSION};
use super::launch::LaunchError;
use super::testing::{driver_config, Harness, RUNTIME_PID};
use common::proto::drivers::{
    DestroyTaskRequest, RecoverTaskRequest, SignalTaskRequest, StopTaskRequest, TaskHandle,
    TaskState,
};
use common::proto::executor as api;
use common::proto::google::rpc::Status as RpcStatus;
use common::proto::structs::RecoverableError;
use common::state::{ExitRecord, TaskState as ShimState, STATE_VERSION};
use prost::Message;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// Whether Nomad may retry a failed StartTask (the RecoverableError detail).
fn recoverable(s: &Status) -> bool {
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let rpc = RpcStatus::decode(s.details()).unwrap();
    RecoverableError::decode(rpc.details[0].value.as_slice())
        .unwrap()
        .recoverable
}

fn recover_req(handle: &TaskHandle) -> RecoverTaskRequest {
    RecoverTaskRequest {
        task_id: handle.config.as_ref().unwrap().id.clone(),
        handle: Some(handle.clone()),
    }
}

/// Writes the shim's state file with `exit`, as the shim does when it reaps the runtime.
fn record_exit(h: &Harness, exit: ExitRecord) {
    let spec = h.launcher.specs.lock().unwrap().last().unwrap().clone();
    let path = spec.state_path.clone();
    ShimState {
        version: STATE_VERSION,
        spec,
        shim_pid: 1,
        shim_start_time: 1,
        boot_id: common::proc::boot_id(),
        runtime_pid: Some(RUNTIME_PID),
        runtime_start_time: Some(77),
        started_at_unix_ms: Some(1),
        cgroup: None,
        exit: Some(exit),
        sandbox: None,
    }
    .write(&path)
    .unwrap();
}

fn exit(code: i32, message: &str) -> ExitRecord {
    ExitRecord {
        exit_code: code,
        signal: 0,
        oom_killed: false,
        message: message.into(),
        exited_at_unix_ms: 1_700_000_000_500,
    }
}

/// A process standing for an orphaned runtime: its own process group, like the real one.
fn orphan() -> (Child, u64) {
    let child = Command::new("sleep")
        .arg("600")
        .process_group(0)
        .spawn()
        .unwrap();
    let start = common::proc::start_time(child.id() as i32).unwrap();
    (child, start)
}

/// Whether `child` dies of SIGKILL within a few seconds (reaping it either way).
fn killed(mut child: Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return std::os::unix::process::ExitStatusExt::signal(&st) == Some(9);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn destroy(task_id: &str, force: bool) -> DestroyTaskRequest {
    DestroyTaskRequest {
        task_id: task_id.to_owned(),
        force,
    }
}

/// A handle whose shim is gone (no socket) and whose runtime is `runtime`.
fn handle_without_shim(h: &Harness, runtime_pid: i32, runtime_start_time: u64) -> TaskHandle {
    let task = h.task("gone");
    let state = DriverState {
        version: HANDLE_VERSION,
        task_id: task.id.clone(),
        alloc_id: task.alloc_id.clone(),
        task_name: task.name.clone(),
        socket_path: h.dir.path().join("run/gone.sock"),
        state_path: h.state_dir(&task).join("state.json"),
        shim_pid: 999_999_999,
        shim_start_time: 1,
        runtime_pid,
        runtime_start_time,
        started_at_unix_ms: 1,
        elide_version: String::new(),
        script: "local/app.py".into(),
        shim_api_level: common::shim_api::API_LEVEL,
        executor_version: String::new(),
        log_collection: String::new(),
    };
    TaskHandle {
        version: HANDLE_VERSION,
        config: Some(task),
        state: TaskState::Running as i32,
        driver_state: state.encode(),
    }
}

// ---------------------------------------------------------------------------------------
// StartTask

#[tokio::test]
async fn start_hands_nomad_a_handle_that_finds_the_shim_again() {
    let mut h = Harness::new();
    let task = h.task("web");
    let handle = h.start(task.clone()).await.unwrap();
    let state = DriverState::decode(&handle.driver_state).unwrap();
    let spec = h.launcher.specs.lock().unwrap()[0].clone();
    assert_eq!(state.task_id, task.id);
    assert_eq!(state.socket_path, spec.socket_path);
    assert_eq!(state.state_path, spec.state_path);
    assert_eq!(
        (state.runtime_pid, state.runtime_start_time),
        (RUNTIME_PID, 77)
    );
    assert!(
        state.shim_start_time > 0,
        "the shim's /proc start time is recorded"
    );
    assert!(h
        .event_messages()
        .iter()
        .any(|m| m == "Starting Elide: local/app.py"));
    let i = h.tasks.inspect(&task.id).await.unwrap();
    assert_eq!(i.task.unwrap().state, TaskState::Running as i32);
    let again = h.start(task).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn start_without_the_script_is_permanent_and_names_the_fix() {
    let h = Harness::new();
    let mut task = h.task("web");
    task.msgpack_driver_config = driver_config(&[("script", "local/missing.py")]);
    let e = h.start(task).await.unwrap_err();
    assert!(!recoverable(&e));
    assert!(e.message().contains("local/missing.py not found"), "{e:?}");
    assert!(e.message().contains("template or artifact"), "{e:?}");
    assert!(
        h.launcher.specs.lock().unwrap().is_empty(),
        "no shim launched"
    );
}

#[tokio::test]
async fn start_with_a_bad_config_is_permanent() {
    let h = Harness::new();
    let mut task = h.task("web");
    task.msgpack_driver_config = driver_config(&[("script", "local/app.py"), ("nope", "1")]);
    let e = h.start(task).await.unwrap_err();
    assert!(!recoverable(&e));
    assert!(e.message().contains("invalid elide task config"), "{e:?}");
}

/// A heap bigger than the task's memory would get the runtime OOM-killed once the heap
/// grows: refused at start, naming both numbers.
#[tokio::test]
async fn a_heap_larger_than_the_task_memory_is_refused() {
    use common::proto::drivers::{AllocatedMemoryResources, AllocatedTaskResources, Resources};
    use rmpv::Value;
    let h = Harness::new();
    let mut task = h.task("web");
    let config = Value::Map(vec![
        (Value::from("script"), Value::from("local/app.py")),
        (
            Value::from("elide_opts"),
            Value::Array(vec![Value::Map(vec![(
                Value::from("memory_limit"),
                Value::from(4096),
            )])]),
        ),
    ]);
    task.msgpack_driver_config.clear();
    rmpv::encode::write_value(&mut task.msgpack_driver_config, &config).unwrap();
    task.resources = Some(Resources {
        allocated_resources: Some(AllocatedTaskResources {
            memory: Some(AllocatedMemoryResources {
                memory_mb: 64,
                memory_max_mb: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = h.start(task).await.unwrap_err();
    assert!(!recoverable(&e));
    assert!(
        e.message().contains(
            "elide_opts.memory_limit (4096 MiB) is more than the task's memory limit (64 MiB)"
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn start_clears_the_scripts_execute_bits_and_says_so() {
    let mut h = Harness::new();
    let task = h.task("web");
    let script = std::path::Path::new(&task.alloc_dir).join("web/local/app.py");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.start(task).await.unwrap();
    let mode = std::fs::metadata(&script).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0);
    assert!(h
        .event_messages()
        .iter()
        .any(|m| m.starts_with("Cleared the execute bits of local/app.py")));
}

#[tokio::test]
async fn start_without_elide_on_the_node_is_recoverable() {
    let h = Harness::new();
    let mut cfg = h.plugin.config();
    cfg.elide_binary = Some(h.dir.path().join("nowhere/elide"));
    h.plugin.set_config(cfg, None);
    let e = h.start(h.task("web")).await.unwrap_err();
    assert!(recoverable(&e), "installing Elide fixes it");
    assert!(e.message().contains("Elide not found"), "{e:?}");
}

#[tokio::test]
async fn a_shim_that_cannot_start_fails_recoverably_or_for_good() {
    let h = Harness::new();
    let log = h.dir.path().join("executor.log");
    *h.launcher.fail.lock().unwrap() = Some(LaunchError::Timeout(Duration::from_secs(30), log));
    let e = h.start(h.task("web")).await.unwrap_err();
    assert!(recoverable(&e), "{e:?}");
    *h.launcher.fail.lock().unwrap() = Some(LaunchError::Refused("bad spec".into()));
    let e = h.start(h.task("web")).await.unwrap_err();
    assert!(!recoverable(&e), "{e:?}");
    assert!(e.message().contains("bad spec"), "{e:?}");
}

#[tokio::test]
async fn a_refused_start_shuts_the_shim_down_and_keeps_the_retry_class() {
    let h = Harness::new();
    *h.script().start_error.lock().unwrap() =
        Some(Status::unavailable("no reader on log FIFO after 10s"));
    let e = h.start(h.task("web")).await.unwrap_err();
    assert!(recoverable(&e), "logmon may come: retry");
    assert!(e.message().contains("no reader on log FIFO"), "{e:?}");
    assert_eq!(*h.script().shutdowns.lock().unwrap(), 1, "no orphaned shim");
    *h.script().start_error.lock().unwrap() =
        Some(Status::failed_precondition("cannot start /x: not found"));
    let e = h.start(h.task("api")).await.unwrap_err();
    assert!(!recoverable(&e), "{e:?}");
    assert_eq!(*h.script().shutdowns.lock().unwrap(), 2);
}

/// A start given up on after the shim was launched (here: Start refused; also an error
/// dialling it, or Nomad dropping the call) tells the shim to leave, so it does not wait out
/// its start deadline beside Nomad's retry.
#[tokio::test]
async fn a_start_given_up_on_tells_its_launched_shim_to_leave() {
    let h = Harness::new();
    *h.script().start_error.lock().unwrap() = Some(Status::unavailable("setup timed out"));
    h.start(h.task("web")).await.unwrap_err();
    // The fake shim's pid is a `sleep` process: SIGTERM ends it.
    let mut child = h.launcher.processes.lock().unwrap().pop().unwrap();
    let pid = child.id();
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .unwrap_or_else(|_| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        panic!("the launched shim was left running")
    })
    .unwrap()
    .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

// ---------------------------------------------------------------------------------------
// WaitTask

#[tokio::test]
async fn wait_returns_the_exit_and_publishes_its_explanation_once() {
    let mut h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    let oom = api::ExitStatus {
        exit_code: 137,
        signal: 9,
        oom_killed: true,
        message: "OOM killed: the task exceeded its memory limit of 64 MiB".into(),
        exited_at_unix_ms: 5,
    };
    h.script().exit.send_replace(Some(oom));
    let (a, b) = tokio::join!(h.tasks.wait(&task.id), h.tasks.wait(&task.id));
    for w in [a, b] {
        let r = w.result.unwrap();
        assert_eq!((r.exit_code, r.signal, r.oom_killed), (137, 9, true));
        assert_eq!(w.err, "", "an OOM kill is an exit, not a driver error");
    }
    let oom_events = h
        .event_messages()
        .into_iter()
        .filter(|m| m.starts_with("OOM killed"))
        .count();
    assert_eq!(oom_events, 1);
    let i = h.tasks.inspect(&task.id).await.unwrap().task.unwrap();
    assert_eq!(i.state, TaskState::Exited as i32);
    assert_eq!(i.result.unwrap().exit_code, 137);
}

/// Level 6: once started, a task's shim is not connected to (the plugin waits for its exit
/// datagram); a level-5 shim keeps its connection and its Wait call. Both report the exit.
#[tokio::test]
async fn a_level_6_task_holds_no_shim_connection_and_still_gets_its_exit() {
    for level in [6, 5] {
        let h = Harness::new();
        *h.script().api_level.lock().unwrap() = level;
        let task = h.task("web");
        h.start(task.clone()).await.unwrap();
        let entry = h.tasks.store.get(&task.id).unwrap();
        assert_eq!(entry.watched(), level >= 6, "level {level}");
        assert_eq!(entry.has_cached_client().await, level < 6, "level {level}");
        let waiting = h.tasks.wait(&task.id);
        h.script().exit.send_replace(Some(api::ExitStatus {
            exit_code: 3,
            ..Default::default()
        }));
        let r = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("WaitTask answered");
        assert_eq!(r.result.unwrap().exit_code, 3, "level {level}");
    }
}

/// A watched task whose shim dies (no datagram can say so) is noticed through its pidfd.
#[tokio::test]
async fn a_watched_tasks_dead_shim_is_noticed_without_a_connection() {
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    assert!(h.tasks.store.get(&task.id).unwrap().watched());
    let waiting = h.tasks.wait(&task.id);
    h.launcher.kill_shims();
    let r = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("WaitTask answered");
    assert_eq!(r.result.unwrap().exit_code, -1);
    assert!(r.err.contains("died unexpectedly"), "{}", r.err);
}

#[tokio::test]
async fn wait_after_the_shim_is_gone_reads_the_exit_from_the_state_file() {
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    record_exit(&h, exit(3, ""));
    h.launcher.kill_shims();
    let w = h.tasks.wait(&task.id).await;
    assert_eq!(w.result.unwrap().exit_code, 3);
    assert_eq!(w.err, "");
}

#[tokio::test]
async fn wait_when_the_shim_died_without_an_exit_fails_the_task_and_says_why() {
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    h.launcher.kill_shims();
    let w = h.tasks.wait(&task.id).await;
    assert_eq!(w.result.unwrap().exit_code, -1);
    assert!(w.err.contains("died unexpectedly"), "{}", w.err);
}

#[tokio::test]
async fn wait_for_an_unknown_task_says_so() {
    let h = Harness::new();
    let w = h.tasks.wait("a1/x/1").await;
    assert!(w.err.contains("task not found"), "{}", w.err);
}

// ---------------------------------------------------------------------------------------
// RecoverTask

#[tokio::test]
async fn recover_reattaches_to_the_running_shim_in_a_new_plugin_process() {
    let h = Harness::new();
    let task = h.task("web");
    let handle = h.start(task.clone()).await.unwrap();
    let fresh = h.restarted_plugin();
    fresh.recover(recover_req(&handle)).await.unwrap();
    fresh.recover(recover_req(&handle)).await.unwrap();
    let i = fresh.inspect(&task.id).await.unwrap().task.unwrap();
    assert_eq!(i.state, TaskState::Running as i32);
    fresh
        .signal(SignalTaskRequest {
            task_id: task.id.clone(),
            signal: "SIGHUP".into(),
        })
        .await
        .unwrap();
    assert_eq!(*h.script().signals.lock().unwrap(), ["SIGHUP"]);
}

#[tokio::test]
async fn recover_refuses_a_shim_that_serves_another_task() {
    let h = Harness::new();
    let handle = h.start(h.task("web")).await.unwrap();
    *h.script().status_task_id.lock().unwrap() = Some("a9/other/1".into());
    let e = h
        .restarted_plugin()
        .recover(recover_req(&handle))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("refusing to adopt"), "{e:?}");
    // Nor a handle whose driver_state belongs to another task.
    let mut other = handle.clone();
    other.config.as_mut().unwrap().id = "a1/web/ffffffff".into();
    let e = h
        .restarted_plugin()
        .recover(recover_req(&other))
        .await
        .unwrap_err();
    assert!(e.message().contains("holds the state of task"), "{e:?}");
}

#[tokio::test]
async fn recover_with_the_shim_gone_keeps_the_exit_it_recorded() {
    let h = Harness::new();
    let task = h.task("web");
    let handle = h.start(task.clone()).await.unwrap();
    record_exit(&h, exit(0, ""));
    h.launcher.kill_shims();
    let fresh = h.restarted_plugin();
    fresh.recover(recover_req(&handle)).await.unwrap();
    let w = fresh.wait(&task.id).await;
    assert_eq!((w.result.unwrap().exit_code, w.err.as_str()), (0, ""));
}

#[tokio::test]
async fn recover_with_the_shim_gone_and_no_exit_kills_the_orphaned_runtime() {
    let h = Harness::new();
    let (runtime, start) = orphan();
    let handle = handle_without_shim(&h, runtime.id() as i32, start);
    let e = h.tasks.recover(recover_req(&handle)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("what was left of the task (its process group and cgroup) was killed"),
        "{e:?}"
    );
    assert!(killed(runtime), "the orphaned runtime's group got SIGKILL");
}

/// The runtime died with its shim (PDEATHSIG), but what it started lives on in its process
/// group with parent 1: recovery kills the group all the same (the group id cannot have been
/// reused while members are left).
#[tokio::test]
async fn recover_with_shim_and_runtime_gone_kills_what_the_runtime_left_in_its_group() {
    let h = Harness::new();
    let mut runtime = Command::new("sh")
        .args(["-c", "sleep 600 & echo $!"])
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runtime_pid = runtime.id() as i32;
    let start = common::proc::start_time(runtime_pid).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(runtime.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let child: i32 = line.trim().parse().unwrap();
    let child_start = common::proc::start_time(child).unwrap();
    runtime.wait().unwrap();
    assert!(common::proc::is_same_process(child, child_start));
    let handle = handle_without_shim(&h, runtime_pid, start);
    let e = h.tasks.recover(recover_req(&handle)).await.unwrap_err();
    assert!(e.message().contains("killed"), "{e:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::proc::is_same_process(child, child_start) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !common::proc::is_same_process(child, child_start),
        "the runtime's child outlived the cleanup"
    );
}

#[tokio::test]
async fn recover_never_kills_a_process_that_only_reuses_the_runtimes_pid() {
    let h = Harness::new();
    let (stranger, start) = orphan();
    let handle = handle_without_shim(&h, stranger.id() as i32, start + 1);
    let e = h.tasks.recover(recover_req(&handle)).await.unwrap_err();
    assert!(!e.message().contains("killed"), "{e:?}");
    let mut stranger = stranger;
    assert!(stranger.try_wait().unwrap().is_none(), "still running");
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

// ---------------------------------------------------------------------------------------
// StopTask, SignalTask, DestroyTask

#[tokio::test]
async fn stop_passes_nomads_signal_and_timeout_and_defaults_to_sigterm() {
    let h = Harness::new();
    let web = h.task("web");
    let api_task = h.task("api");
    h.start(web.clone()).await.unwrap();
    h.start(api_task.clone()).await.unwrap();
    h.tasks
        .stop(StopTaskRequest {
            task_id: web.id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
            signal: "SIGINT".into(),
        })
        .await
        .unwrap();
    h.tasks
        .stop(StopTaskRequest {
            task_id: api_task.id.clone(),
            timeout: None,
            signal: String::new(),
        })
        .await
        .unwrap();
    let stops = h.script().stops.lock().unwrap().clone();
    assert_eq!(
        (stops[0].signal.as_str(), stops[0].timeout_ms),
        ("SIGINT", 3000)
    );
    assert_eq!(
        (stops[1].signal.as_str(), stops[1].timeout_ms),
        ("SIGTERM", 5000)
    );
    // A stopped task is not stopped again; the exit is known.
    h.tasks
        .stop(StopTaskRequest {
            task_id: web.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.script().stops.lock().unwrap().len(), 2);
    // A timeout whose milliseconds overflow a u64 waits "forever", not a truncated while.
    let huge = h.task("huge");
    h.start(huge.clone()).await.unwrap();
    h.tasks
        .stop(StopTaskRequest {
            task_id: huge.id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: i64::MAX,
                nanos: 0,
            }),
            signal: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(h.script().stops.lock().unwrap()[2].timeout_ms, u64::MAX);
    assert_eq!(h.tasks.wait(&web.id).await.result.unwrap().exit_code, 143);
}

#[tokio::test]
async fn a_stop_escalated_to_sigkill_is_explained_in_a_task_event() {
    let mut h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    let mut script_exit = h.script().stop_exit.clone();
    script_exit.exit_code = 137;
    script_exit.signal = 9;
    script_exit.message = "killed with SIGKILL after the 5s stop timeout".into();
    h.script().exit.send_replace(Some(script_exit));
    h.tasks
        .stop(StopTaskRequest {
            task_id: task.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let w = h.tasks.wait(&task.id).await;
    assert_eq!(w.result.unwrap().signal, 9);
    assert!(h
        .event_messages()
        .iter()
        .any(|m| m == "killed with SIGKILL after the 5s stop timeout"));
}

#[tokio::test]
async fn stop_with_a_hung_shim_asks_for_a_retry_and_with_a_dead_one_settles_the_exit() {
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    *h.script().stop_error.lock().unwrap() = Some(Status::unavailable("transport"));
    let req = StopTaskRequest {
        task_id: task.id.clone(),
        ..Default::default()
    };
    let e = h.tasks.stop(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("alive but does not answer"), "{e:?}");
    h.launcher.kill_shims();
    h.tasks.stop(req).await.unwrap();
    let w = h.tasks.wait(&task.id).await;
    assert_eq!(w.result.unwrap().exit_code, -1);
    assert!(w.err.contains("died unexpectedly"), "{}", w.err);
}

#[tokio::test]
async fn stop_with_a_signal_the_shim_rejects_is_invalid_argument() {
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    *h.script().stop_error.lock().unwrap() = Some(Status::invalid_argument("unknown signal"));
    let e = h
        .tasks
        .stop(StopTaskRequest {
            task_id: task.id.clone(),
            signal: "SIGFOO".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains(&task.id), "{e:?}");
}

#[tokio::test]
async fn destroy_refuses_a_running_task_unless_forced() {
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    let e = h.tasks.destroy(destroy(&task.id, false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("stop it first or destroy with force"),
        "{e:?}"
    );
    assert_eq!(*h.script().shutdowns.lock().unwrap(), 0);
    h.tasks.destroy(destroy(&task.id, true)).await.unwrap();
    assert_eq!(*h.script().shutdowns.lock().unwrap(), 1);
    assert!(!h.state_dir(&task).exists(), "state dir removed");
    let gone = h.tasks.inspect(&task.id).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn destroy_after_the_exit_needs_no_force_and_cleans_up_without_a_shim() {
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    record_exit(&h, exit(0, ""));
    h.launcher.kill_shims();
    h.tasks.destroy(destroy(&task.id, false)).await.unwrap();
    let spec = h.launcher.specs.lock().unwrap()[0].clone();
    assert!(!spec.socket_path.exists(), "the stale socket is removed");
    assert!(!h.state_dir(&task).exists());
    // Unknown tasks: nothing to do, no error for Nomad to retry.
    h.tasks.destroy(destroy(&task.id, true)).await.unwrap();
}

#[tokio::test]
async fn signal_reaches_the_shim_and_unknown_tasks_are_not_found() {
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    h.tasks
        .signal(SignalTaskRequest {
            task_id: task.id.clone(),
            signal: "SIGUSR1".into(),
        })
        .await
        .unwrap();
    assert_eq!(*h.script().signals.lock().unwrap(), ["SIGUSR1"]);
    let e = h
        .tasks
        .signal(SignalTaskRequest {
            task_id: "a1/none/1".into(),
            signal: "SIGUSR1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

// ---------------------------------------------------------------------------------------
// Logs (log_collection)

/// Nomad's FIFO paths for `task`, as it sends them whether or not a logmon reads them.
fn with_log_paths(
    mut task: common::proto::drivers::TaskConfig,
) -> common::proto::drivers::TaskConfig {
    let logs = Path::new(&task.alloc_dir).join("alloc").join("logs");
    task.stdout_path = logs
        .join(format!(".{}.stdout.fifo", task.name))
        .display()
        .to_string();
    task.stderr_path = logs
        .join(format!(".{}.stderr.fifo", task.name))
        .display()
        .to_string();
    task
}

/// Waits for a task event with this text (the forwarder runs in the background).
async fn task_event(h: &mut Harness, text: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = h.events.recv().await.unwrap();
            if e.message.contains(text) {
                return e.message;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no task event with {text:?}"))
}

async fn subscribed(h: &Harness, n: usize) -> Vec<i64> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let subs = h.script().event_subscriptions.lock().unwrap().clone();
            if subs.len() >= n {
                return subs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the plugin never subscribed to the shim's events")
}

#[tokio::test]
async fn the_shims_log_files_are_recorded_and_its_events_become_task_events() {
    let mut h = Harness::new();
    let task = with_log_paths(h.task("web"));
    let handle = h.start(task.clone()).await.unwrap();
    let state = DriverState::decode(&handle.driver_state).unwrap();
    assert_eq!(state.log_collection, "executor");
    let spec = h.launcher.specs.lock().unwrap()[0].clone();
    let files = spec.log_files.expect("the shim writes the log files");
    assert_eq!(files.dir, Path::new(&task.alloc_dir).join("alloc/logs"));
    // Everything the shim remembers since it started.
    assert_eq!(subscribed(&h, 1).await, [0]);
    h.script()
        .events
        .send(api::ShimEvent {
            message: "cannot write the task's stdout log: disk full".into(),
            at_unix_ms: 1,
            ..Default::default()
        })
        .unwrap();
    task_event(&mut h, "cannot write the task's stdout log").await;
}

#[tokio::test]
async fn recover_reports_what_was_lost_meanwhile_and_follows_new_events() {
    let mut h = Harness::new();
    let task = with_log_paths(h.task("web"));
    let handle = h.start(task.clone()).await.unwrap();
    subscribed(&h, 1).await;
    *h.script().logs.lock().unwrap() = Some(api::LogStatus {
        collection: "executor".into(),
        dir: "/x/alloc/logs".into(),
        streams: vec![api::LogStream {
            name: "stdout".into(),
            bytes_dropped: 1234,
            last_error: "Read-only file system (os error 30)".into(),
            ..Default::default()
        }],
    });
    let before = common::state::now_ms();
    let fresh = h.restarted_plugin();
    fresh.recover(recover_req(&handle)).await.unwrap();
    let m = task_event(&mut h, "1234 bytes of stdout").await;
    assert!(m.contains("Read-only file system"), "{m}");
    // Only new events: what happened before is in the summary.
    let subs = subscribed(&h, 2).await;
    assert!(subs[1] >= before, "{subs:?}");
    // A level-5 shim is asked for its log counters again (they are sent on subscription).
    assert_eq!(*h.script().event_log_counts.lock().unwrap(), [true, true]);
}

/// A shim's log status with `lines` lines of stdout (7 bytes each) and one of stderr.
fn log_status(lines: u64) -> api::LogStatus {
    api::LogStatus {
        collection: "executor".into(),
        dir: "/x/alloc/logs".into(),
        streams: vec![
            api::LogStream {
                name: "stdout".into(),
                lines_written: lines,
                bytes_written: lines * 7,
                ..Default::default()
            },
            api::LogStream {
                name: "stderr".into(),
                lines_written: 1,
                bytes_written: 5,
                ..Default::default()
            },
        ],
    }
}

/// The log counters as a level-5 shim pushes them on its event stream.
fn pushed(lines: u64) -> api::ShimEvent {
    api::ShimEvent {
        message: String::new(),
        at_unix_ms: 2,
        logs: Some(log_status(lines)),
        ..Default::default()
    }
}

/// The one task's figures as a metrics scrape reads them.
async fn scraped(h: &Harness) -> crate::metrics::scrape::TaskFigures {
    use crate::metrics::scrape::Source;
    let mut all = h.tasks.figures(&Default::default()).await;
    assert_eq!(all.len(), 1);
    all.remove(0)
}

fn stdout_lines(f: &crate::metrics::scrape::TaskFigures) -> Option<u64> {
    f.logs.map(|l| l[0].lines_written)
}

fn status_calls(h: &Harness) -> u32 {
    *h.script().status_calls.lock().unwrap()
}

#[tokio::test]
async fn a_scrape_reads_the_counts_the_shim_pushed_without_a_status_call() {
    let mut h = Harness::new();
    let task = with_log_paths(h.task("web"));
    h.start(task.clone()).await.unwrap();
    subscribed(&h, 1).await;
    assert_eq!(*h.script().event_log_counts.lock().unwrap(), [true]);
    // Status would say 1 line: what the scrape reads must be what was pushed.
    *h.script().logs.lock().unwrap() = Some(log_status(1));
    h.script().events.send(pushed(10_000)).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while stdout_lines(&scraped(&h).await) != Some(10_000) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the pushed counts never reached the scrape");
    let before = status_calls(&h);
    for _ in 0..5 {
        let f = scraped(&h).await;
        assert!(!f.exited);
        let l = f.logs.unwrap();
        assert_eq!((l[0].bytes_written, l[1].lines_written), (70_000, 1));
    }
    assert_eq!(
        status_calls(&h),
        before,
        "a scrape called the shim's Status"
    );
    // A later push replaces the counts; a smaller (older) figure never lowers them.
    h.script().events.send(pushed(10_500)).unwrap();
    h.script().events.send(pushed(3)).unwrap();
    h.script()
        .events
        .send(api::ShimEvent {
            message: "cannot write the task's stdout log: disk full".into(),
            at_unix_ms: 3,
            ..Default::default()
        })
        .unwrap();
    // The message after the pushes: once it is a task event, the pushes were taken in.
    task_event(&mut h, "disk full").await;
    assert_eq!(stdout_lines(&scraped(&h).await), Some(10_500));
    assert_eq!(status_calls(&h), before);
    // Counter pushes are no task events.
    let _ = h.event_messages();
    h.script().events.send(pushed(10_600)).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while stdout_lines(&scraped(&h).await) != Some(10_600) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(h.event_messages(), Vec::<String>::new());

    // Once the task has exited, its exact final counts come from one Status call (the
    // shim records the exit after the last output is in the files), then never again.
    *h.script().logs.lock().unwrap() = Some(log_status(10_777));
    h.script()
        .exit
        .send_replace(Some(api::ExitStatus::default()));
    h.tasks.wait(&task.id).await.result.unwrap();
    let snap = crate::metrics::scrape::Snapshot::default();
    snap.refresh_from(&h.tasks).await;
    assert_eq!(status_calls(&h), before + 1);
    assert!(snap.is_final(&task.id));
    snap.refresh_from(&h.tasks).await;
    assert_eq!(status_calls(&h), before + 1);
}

#[tokio::test]
async fn a_level_4_shim_is_not_asked_to_push_and_each_scrape_asks_its_status() {
    let h = Harness::new();
    *h.script().api_level.lock().unwrap() = 4;
    let task = with_log_paths(h.task("web"));
    let handle = h.start(task.clone()).await.unwrap();
    let state = DriverState::decode(&handle.driver_state).unwrap();
    assert_eq!(state.shim_api_level, 4);
    subscribed(&h, 1).await;
    assert_eq!(*h.script().event_log_counts.lock().unwrap(), [false]);
    *h.script().logs.lock().unwrap() = Some(log_status(7));
    let before = status_calls(&h);
    assert_eq!(stdout_lines(&scraped(&h).await), Some(7));
    assert_eq!(stdout_lines(&scraped(&h).await), Some(7));
    assert_eq!(status_calls(&h), before + 2);
    // Recovered by a new plugin process: still no push asked, still Status.
    let fresh = h.restarted_plugin();
    fresh.recover(recover_req(&handle)).await.unwrap();
    subscribed(&h, 2).await;
    assert_eq!(*h.script().event_log_counts.lock().unwrap(), [false, false]);
}

#[tokio::test]
async fn when_the_shims_event_stream_ends_a_scrape_asks_status_again() {
    let h = Harness::new();
    let task = with_log_paths(h.task("web"));
    h.start(task.clone()).await.unwrap();
    subscribed(&h, 1).await;
    h.script().events.send(pushed(42)).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while stdout_lines(&scraped(&h).await) != Some(42) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // The shim dies: its counts are no longer known (not the stale pushed ones).
    h.launcher.kill_shims();
    tokio::time::timeout(Duration::from_secs(30), async {
        while scraped(&h).await.logs.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the scrape kept the counts of a shim that is gone");
}

#[tokio::test]
async fn with_log_collection_nomad_the_fifos_stay_and_task_overrides_are_explained() {
    let mut h = Harness::new();
    let mut cfg = h.plugin.config();
    cfg.log_collection = crate::config::LogCollection::Nomad;
    h.plugin.set_config(cfg, None);
    let mut task = with_log_paths(h.task("web"));
    task.msgpack_driver_config = {
        let map = rmpv::Value::Map(vec![
            ("script".into(), "local/app.py".into()),
            ("log_max_files".into(), 3.into()),
        ]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &map).unwrap();
        b
    };
    let handle = h.start(task.clone()).await.unwrap();
    let state = DriverState::decode(&handle.driver_state).unwrap();
    assert_eq!(state.log_collection, "nomad");
    let spec = h.launcher.specs.lock().unwrap()[0].clone();
    assert_eq!(spec.log_files, None);
    assert_eq!(spec.stdout_path, Path::new(&task.stdout_path));
    assert!(h
        .event_messages()
        .iter()
        .any(|m| m.contains("apply only with the plugin's log_collection = \"executor\"")));
}

// ---------------------------------------------------------------------------------------
// TaskStats

#[tokio::test]
async fn stats_of_a_task_with_a_cgroup_are_read_by_the_plugin_without_waking_the_shim() {
    use tokio_stream::StreamExt;
    let h = Harness::new();
    let task = h.task("web");
    h.start(task.clone()).await.unwrap();
    // A v2 cgroup as the shim reports it.
    let cg = h.dir.path().join("cg");
    std::fs::create_dir(&cg).unwrap();
    std::fs::write(cg.join("cgroup.controllers"), "cpu memory\n").unwrap();
    std::fs::write(
        cg.join("cpu.stat"),
        "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n",
    )
    .unwrap();
    std::fs::write(cg.join("memory.current"), "65536\n").unwrap();
    std::fs::write(cg.join("memory.stat"), "anon 4096\nfile 8192\n").unwrap();
    *h.script().cgroup.lock().unwrap() = cg.display().to_string();
    let req = common::proto::drivers::TaskStatsRequest {
        task_id: task.id.clone(),
        collection_interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
    };
    let mut stream = h.tasks.stats(req.clone()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mem = first
        .stats
        .unwrap()
        .agg_resource_usage
        .unwrap()
        .memory
        .unwrap();
    assert_eq!((mem.rss, mem.cache, mem.usage), (4096, 8192, 65536));
    // The task ran (its CPU time moved) and charged memory: both are read again.
    std::fs::write(
        cg.join("cpu.stat"),
        "usage_usec 2000\nuser_usec 1200\nsystem_usec 800\n",
    )
    .unwrap();
    std::fs::write(cg.join("memory.current"), "131072\n").unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mem = second
        .stats
        .unwrap()
        .agg_resource_usage
        .unwrap()
        .memory
        .unwrap();
    assert_eq!(mem.usage, 131072);
    assert_eq!(
        *h.script().stats_calls.lock().unwrap(),
        0,
        "the shim was not asked"
    );
    // Nomad opening TaskStats again (after its own restart): the cgroup the shim told is
    // kept, the shim is not asked again.
    let status_before = status_calls(&h);
    let _again = h.tasks.stats(req.clone()).await.unwrap();
    assert_eq!(status_calls(&h), status_before);
    // A task without a cgroup: the shim's Stats measures (here: the fake refuses).
    *h.script().cgroup.lock().unwrap() = String::new();
    let other = h.task("api");
    h.start(other.clone()).await.unwrap();
    let req = common::proto::drivers::TaskStatsRequest {
        task_id: other.id.clone(),
        ..req
    };
    assert!(h.tasks.stats(req).await.is_err());
    assert_eq!(*h.script().stats_calls.lock().unwrap(), 1);
}

/// The job's config with an `elide_opts` block holding `opts`.
fn config_with_elide_opts(opts: &[(&str, &str)]) -> Vec<u8> {
    use rmpv::Value;
    let block = Value::Map(
        opts.iter()
            .map(|(k, v)| (Value::from(*k), Value::from(*v)))
            .collect(),
    );
    let map = Value::Map(vec![
        (Value::from("script"), Value::from("local/app.py")),
        (Value::from("elide_opts"), block),
    ]);
    let mut b = Vec::new();
    rmpv::encode::write_value(&mut b, &map).unwrap();
    b
}

/// Issue #18 item 3: the job picks among the operator's Elide binaries only. Any other
/// program (a host binary, another allocation's file, a relative path) is refused naming
/// what is allowed; a listed one runs, by name or by its exact path, and only its install
/// dir is made visible.
#[tokio::test]
async fn a_job_runs_only_an_elide_the_operator_listed() {
    let h = Harness::new();
    let v11_dir = h.dir.path().join("elide-1.1");
    std::fs::create_dir_all(&v11_dir).unwrap();
    let v11 = v11_dir.join("elide");
    std::fs::write(&v11, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&v11, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = h.plugin.config();
    cfg.elide_versions = [("1.1".to_owned(), v11.clone())].into_iter().collect();
    h.plugin.set_config(cfg, None);
    let other_alloc = h.dir.path().join("alloc/web/local/app.py");
    for (i, bad) in [
        "/bin/cat",
        "local/elide",
        "../../../bin/sh",
        &other_alloc.display().to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut task = h.task(&format!("t{i}"));
        task.msgpack_driver_config = config_with_elide_opts(&[("elide_binary", bad)]);
        let e = h.start(task).await.unwrap_err();
        assert!(!recoverable(&e), "{e:?}");
        let m = e.message();
        assert!(
            m.starts_with(&format!(
                "config.elide_opts.elide_binary {bad:?} is not an Elide binary the operator allows"
            )) && m.contains(&format!(
                "use elide_version = one of \"1.1\" ({})",
                v11.display()
            )),
            "{m}"
        );
    }
    let mut task = h.task("u");
    task.msgpack_driver_config = config_with_elide_opts(&[("elide_version", "2.0")]);
    let m = h.start(task).await.unwrap_err().message().to_owned();
    assert!(
        m.starts_with("config.elide_opts.elide_version \"2.0\" is not an Elide version of this node; use elide_version = one of \"1.1\""),
        "{m}"
    );
    assert!(
        h.launcher.specs.lock().unwrap().is_empty(),
        "nothing was launched"
    );
    // By name and by the listed path: that binary runs, its dir is the visible install dir.
    let real = std::fs::canonicalize(&v11).unwrap();
    for (name, opts) in [
        ("n", ("elide_version", "1.1")),
        ("p", ("elide_binary", v11.to_str().unwrap())),
    ] {
        let mut task = h.task(name);
        task.msgpack_driver_config = config_with_elide_opts(&[opts]);
        h.start(task).await.unwrap();
        let spec = h.launcher.specs.lock().unwrap().last().unwrap().clone();
        assert_eq!(Path::new(&spec.argv[0]), real);
        let sandbox = spec.sandbox.unwrap();
        // After the host's allow-list: the chosen install's dir, never the default one's.
        let n = common::sandbox::DEFAULT_HOST_PATHS.len();
        assert_eq!(sandbox.readable_paths[n], real.parent().unwrap());
        let default_dir = std::fs::canonicalize(h.plugin.config().elide_binary.unwrap()).unwrap();
        assert!(
            !sandbox
                .readable_paths
                .iter()
                .any(|p| p == default_dir.parent().unwrap()),
            "{:?}",
            sandbox.readable_paths
        );
    }
}

/// Without elide_versions, a job's elide_binary may only name the default binary.
#[tokio::test]
async fn without_versions_a_job_can_only_name_the_default_elide() {
    let h = Harness::new();
    let default = h.plugin.config().elide_binary.unwrap();
    let mut task = h.task("a");
    task.msgpack_driver_config = config_with_elide_opts(&[("elide_binary", "/usr/bin/env")]);
    let m = h.start(task).await.unwrap_err().message().to_owned();
    assert!(
        m.contains("this node lists no elide_versions")
            && m.contains(&default.display().to_string()),
        "{m}"
    );
    let mut task = h.task("b");
    task.msgpack_driver_config =
        config_with_elide_opts(&[("elide_binary", default.to_str().unwrap())]);
    h.start(task).await.unwrap();
}

/// The fingerprint's check applies at start too: an Elide in a world-writable dir is refused.
#[tokio::test]
async fn start_refuses_an_elide_others_could_replace() {
    let h = Harness::new();
    let bin = h.plugin.config().elide_binary.unwrap();
    let dir = bin.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = h.start(h.task("web")).await.unwrap_err();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        e.message().starts_with("cannot run Elide: ") && e.message().contains("world-writable"),
        "{e:?}"
    );
}

/// Issue #18 (2, 5): the task dir is `<alloc>/<name>`; a name that is the alloc dir, its
/// parent, the shims' state root or the shared dir is refused before any shim runs, naming
/// the rule and the fix.
#[tokio::test]
async fn task_names_the_alloc_dir_keeps_for_itself_are_refused_before_any_shim() {
    let h = Harness::new();
    for name in [".elide", ".", "..", "alloc"] {
        let e = h.start(h.task(name)).await.unwrap_err();
        assert!(!recoverable(&e), "{name}: {e:?}");
        assert!(
            e.message()
                .contains(&format!("task name {name:?} is refused"))
                && e.message().contains("rename the task"),
            "{name}: {e:?}"
        );
    }
    assert!(
        h.launcher.specs.lock().unwrap().is_empty(),
        "no shim launched"
    );
    let root = h.dir.path().join("alloc/.elide");
    let made: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        made,
        ["local"],
        "no state dir made in the refused task's dir"
    );
}

/// A state root the driver did not make (Nomad built it as the task dir of a task named
/// `.elide`, of any driver: world-writable) is not used: the start fails, naming it.
#[tokio::test]
async fn a_state_root_that_is_not_the_drivers_own_fails_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new();
    let task = h.task("web");
    let root = h.dir.path().join("alloc/.elide");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = h.start(task).await.unwrap_err();
    assert!(!recoverable(&e), "{e:?}");
    assert!(
        e.message().contains("refusing to use") && e.message().contains("mode 0777"),
        "{e:?}"
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    assert!(
        h.launcher.specs.lock().unwrap().is_empty(),
        "no shim launched"
    );
}
