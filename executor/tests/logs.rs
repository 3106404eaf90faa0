//! The shim writing the task's log files itself (`log_files` in the spec, the plugin's
//! `log_collection = "executor"`), through a real shim: logmon's names, index and rotation,
//! every line in order before the exit is recorded, backpressure, a full disk that loses
//! only output (counted, reported) and never the task, and symlinks the task plants.

mod support;

use common::proto::executor::{self as api, TaskState};
use common::spec::{LogFilesSpec, TaskSpec};
use std::path::{Path, PathBuf};
use support::tmpfs::Tmpfs;
use support::*;

/// A spec whose output goes to `<dir>/alloc/logs/t.stdout.<N>` / `t.stderr.<N>`.
fn log_spec(dir: &Path, script: &str, max_files: u32, max_file_size_mb: u64) -> TaskSpec {
    let logs = dir.join("alloc").join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut s = spec(dir, script);
    s.log_files = Some(LogFilesSpec {
        dir: logs,
        stdout_name: "t.stdout".into(),
        stderr_name: "t.stderr".into(),
        max_files,
        max_file_size_mb,
    });
    s
}

fn logs_dir(s: &TaskSpec) -> PathBuf {
    s.log_files.as_ref().unwrap().dir.clone()
}

/// The indexes of `<base>.<N>` files, ascending.
fn indexes(logs: &Path, base: &str) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(logs)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix(&format!("{base}."))?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// One stream, as `nomad alloc logs` shows it: the files in index order.
fn read_stream(logs: &Path, base: &str) -> String {
    indexes(logs, base)
        .iter()
        .map(|i| std::fs::read_to_string(logs.join(format!("{base}.{i}"))).unwrap())
        .collect()
}

fn lines(n: usize) -> String {
    (0..n).map(|i| format!("line {i}\n")).collect()
}

async fn wait_exit(
    c: &mut api::executor_client::ExecutorClient<tonic::transport::Channel>,
) -> api::ExitStatus {
    within("wait", c.wait(api::WaitRequest {}))
        .await
        .unwrap()
        .into_inner()
        .exit
        .unwrap()
}

async fn status(
    c: &mut api::executor_client::ExecutorClient<tonic::transport::Channel>,
) -> api::StatusResponse {
    c.status(api::StatusRequest {}).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_is_in_the_files_in_order_when_the_exit_is_recorded() {
    let dir = short_dir();
    let s = log_spec(
        dir.path(),
        "awk 'BEGIN { for (i = 0; i < 200000; i++) print \"line \" i }'; echo oops >&2; exit 7",
        100,
        1,
    );
    let logs = logs_dir(&s);
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    // Both files exist from the start (nomad alloc logs finds them before the first line).
    assert!(logs.join("t.stdout.0").exists() && logs.join("t.stderr.0").exists());
    assert_eq!(wait_exit(&mut c).await.exit_code, 7);
    let out = read_stream(&logs, "t.stdout");
    assert_eq!(out.len(), lines(200_000).len());
    assert!(
        out == lines(200_000),
        "lines lost, repeated or out of order"
    );
    assert_eq!(read_stream(&logs, "t.stderr"), "oops\n");
    let files = indexes(&logs, "t.stdout");
    assert_eq!(files, (0..files.len() as u64).collect::<Vec<_>>());
    assert!(files.len() >= 3, "2.3 MB in 1 MiB files: {files:?}");
    for i in &files {
        let f = logs.join(format!("t.stdout.{i}"));
        let len = std::fs::metadata(&f).unwrap().len();
        assert!(len <= 1 << 20, "{}: {len}", f.display());
        assert!(std::fs::read_to_string(&f).unwrap().ends_with('\n'));
    }
    let st = status(&mut c).await;
    let l = st.logs.expect("log status");
    assert_eq!(l.collection, "executor");
    assert_eq!(l.dir, logs.display().to_string());
    assert_eq!(l.streams.len(), 2);
    assert_eq!(l.streams[0].name, "stdout");
    assert_eq!(l.streams[0].bytes_written, out.len() as u64);
    assert_eq!(l.streams[1].bytes_written, 5);
    assert!(l
        .streams
        .iter()
        .all(|s| s.bytes_dropped == 0 && s.error.is_empty()));
    assert_eq!(
        l.streams[0].file,
        format!("t.stdout.{}", files.last().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_max_files_and_the_newest_holds_the_last_line() {
    let dir = short_dir();
    let s = log_spec(
        dir.path(),
        "awk 'BEGIN { for (i = 0; i < 400000; i++) print \"line \" i }'",
        3,
        1,
    );
    let logs = logs_dir(&s);
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    assert_eq!(wait_exit(&mut c).await.exit_code, 0);
    let files = indexes(&logs, "t.stdout");
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files[0] >= 2, "old files removed: {files:?}");
    let newest = std::fs::read_to_string(logs.join(format!("t.stdout.{}", files[2]))).unwrap();
    assert!(newest.ends_with("line 399999\n"));
    // What is kept is the tail of the output, whole and in order.
    let kept = read_stream(&logs, "t.stdout");
    assert!(lines(400_000).ends_with(&kept));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_task_continues_the_highest_index() {
    let dir = short_dir();
    let first = log_spec(dir.path(), "echo first", 10, 1);
    let logs = logs_dir(&first);
    std::fs::write(logs.join("t.stdout.4"), "from before\n").unwrap();
    let shim = launch(first, dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    wait_exit(&mut c).await;
    // The next run of the task (a new shim, a new task id) appends to the same file.
    let second = log_spec(dir.path(), "echo second", 10, 1);
    let shim2 = launch(second, dir.path());
    let mut c2 = shim2.client().await;
    c2.start(api::StartRequest {}).await.unwrap();
    wait_exit(&mut c2).await;
    assert_eq!(indexes(&logs, "t.stdout"), [4]);
    assert_eq!(
        std::fs::read_to_string(logs.join("t.stdout.4")).unwrap(),
        "from before\nfirst\nsecond\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_the_task_plants_as_its_next_log_file_touches_nothing_outside() {
    let dir = short_dir();
    let outside = dir.path().join("etc-passwd-stand-in");
    std::fs::write(&outside, "root:x:0:0\n").unwrap();
    // The task itself plants alloc/logs/t.stdout.1 -> the file outside, then logs enough
    // to rotate twice.
    let s = log_spec(
        dir.path(),
        &format!(
            "ln -s {} alloc/logs/t.stdout.1 && awk 'BEGIN {{ for (i = 0; i < 150000; i++) print \"line \" i }}'",
            outside.display()
        ),
        10,
        1,
    );
    let logs = logs_dir(&s);
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    assert_eq!(wait_exit(&mut c).await.exit_code, 0);
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "root:x:0:0\n");
    assert!(std::fs::symlink_metadata(logs.join("t.stdout.1"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Index 1 was passed over; every line is in the regular files 0 and 2.
    let mut out = String::new();
    for i in [0, 2] {
        out.push_str(&std::fs::read_to_string(logs.join(format!("t.stdout.{i}"))).unwrap());
    }
    assert!(out == lines(150_000));
}

/// Waits until the process is blocked writing into a full pipe.
async fn blocked_in_pipe_write(pid: i32) {
    within("the task to block on its full stdout pipe", async {
        loop {
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            if wchan.contains("pipe_write") || wchan.contains("pipe_wait") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shim_blocks_the_task_and_loses_nothing() {
    let dir = short_dir();
    let s = log_spec(
        dir.path(),
        "exec awk 'BEGIN { for (i = 0; i < 300000; i++) print \"line \" i }'",
        100,
        10,
    );
    let logs = logs_dir(&s);
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let shim_pid = nix::unistd::Pid::from_raw(shim.pid());
    nix::sys::signal::kill(shim_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Start is answered once the shim runs again; send it, then stop the shim reading.
    let start = tokio::spawn({
        let mut c = c.clone();
        async move { c.start(api::StartRequest {}).await.unwrap().into_inner() }
    });
    nix::sys::signal::kill(shim_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let started = within("start", start).await.unwrap();
    nix::sys::signal::kill(shim_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The shim reads nothing: the pipe fills and the task waits (no memory grows anywhere).
    blocked_in_pipe_write(started.pid).await;
    nix::sys::signal::kill(shim_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(wait_exit(&mut c).await.exit_code, 0);
    assert!(read_stream(&logs, "t.stdout") == lines(300_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_kills_the_task_and_the_loss_is_counted_and_told() {
    let dir = short_dir();
    let s = log_spec(
        dir.path(),
        "trap 'echo again' USR1; \
         awk 'BEGIN { for (i = 0; i < 100000; i++) print \"line \" i }'; echo done; \
         while :; do sleep 1 & wait $!; done",
        10,
        10,
    );
    let logs = logs_dir(&s);
    let Some(_fs) = Tmpfs::mount(&logs, "size=256k") else {
        return;
    };
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let mut events = c
        .events(api::EventsRequest {
            since_unix_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    c.start(api::StartRequest {}).await.unwrap();
    let ev = within("the loss event", events.message())
        .await
        .unwrap()
        .expect("an event");
    assert!(
        ev.message.contains("cannot write the task's stdout log")
            && ev.message.contains("No space left on device")
            && ev.message.contains("keeps running"),
        "{ev:?}"
    );
    // The task got past all its output (nothing blocked it) and still runs.
    let st = within("the task to reach its sleep", async {
        loop {
            let st = status(&mut c).await;
            let out = &st.logs.as_ref().unwrap().streams[0];
            let total = out.bytes_written + out.bytes_dropped;
            if total == lines(100_000).len() as u64 + 5 {
                return st;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(st.state, TaskState::Running as i32);
    let out = &st.logs.unwrap().streams[0];
    assert!(out.bytes_dropped > 0 && out.bytes_written > 0, "{out:?}");
    assert!(out.error.contains("No space left"), "{out:?}");
    // What was written is a prefix of the output, whole lines up to where the disk filled.
    let kept = read_stream(&logs, "t.stdout");
    assert_eq!(kept.len() as u64, out.bytes_written);
    assert!(lines(100_000).starts_with(&kept[..kept.len() - 200]));

    // Space again: writing resumes, and says so.
    std::fs::write(logs.join("t.stdout.0"), "").unwrap();
    c.signal(api::SignalRequest {
        signal: "SIGUSR1".into(),
    })
    .await
    .unwrap();
    let ev = within("the recovery event", events.message())
        .await
        .unwrap()
        .expect("an event");
    assert!(ev.message.contains("works again"), "{ev:?}");
    assert_eq!(
        std::fs::read_to_string(logs.join("t.stdout.0")).unwrap(),
        "again\n"
    );
    let stop = c
        .stop(api::StopRequest {
            signal: "SIGTERM".into(),
            timeout_ms: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stop.exit.unwrap().signal, 15);
}

/// Level 5: a subscriber that asks for the log counters gets them pushed as they change
/// (the latest within the push period), and the current ones at once when it subscribes
/// late; the counters never come as messages, and a subscriber that does not ask gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_counters_are_pushed_to_who_asks_when_they_change() {
    let dir = short_dir();
    let s = log_spec(
        dir.path(),
        "awk 'BEGIN { for (i = 0; i < 10000; i++) print \"line \" i }'; echo done >&2; \
         while :; do sleep 1 & wait $!; done",
        10,
        10,
    );
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let events_client = c.clone();
    let subscribe = |log_counts| {
        let mut c = events_client.clone();
        async move {
            c.events(api::EventsRequest {
                since_unix_ms: 0,
                log_counts,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let mut counts = subscribe(true).await;
    let mut plain = subscribe(false).await;
    c.start(api::StartRequest {}).await.unwrap();
    let counted = |ev: &api::ShimEvent| {
        let l = ev.logs.as_ref().expect("log counters");
        (l.streams[0].lines_written, l.streams[1].lines_written)
    };
    // Pushed until the latest counts are there (within one 5 s period of the burst's end).
    let last = within("the pushed counts of the whole burst", async {
        loop {
            let ev = counts.message().await.unwrap().expect("an event");
            assert!(ev.message.is_empty(), "{ev:?}");
            if counted(&ev) == (10_000, 1) {
                return ev;
            }
        }
    })
    .await;
    assert_eq!(
        last.logs.unwrap().streams[0].bytes_written,
        lines(10_000).len() as u64
    );
    // A late subscriber gets the current counts at once.
    let mut late = subscribe(true).await;
    let ev = within("the counts on subscription", late.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counted(&ev), (10_000, 1));
    // Who did not ask gets no counters (here: nothing at all, no log write failed).
    let stop = c.stop(api::StopRequest {
        signal: "SIGKILL".into(),
        timeout_ms: 0,
    });
    within("stop", stop).await.unwrap();
    drop(shim);
    let rest = within("the end of the plain stream", async {
        let mut rest = Vec::new();
        while let Ok(Some(ev)) = plain.message().await {
            rest.push(ev);
        }
        rest
    })
    .await;
    assert!(rest.iter().all(|e| e.logs.is_none()), "{rest:?}");
}

/// Level 6: a plugin that gives its notify socket gets the remembered events on a stream that
/// ends at once, then the counters, the events and the runtime's exit as datagrams naming the
/// task; a second subscriber takes over (it gets the current counts, and the exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_subscriber_gets_counters_events_and_the_exit_as_datagrams() {
    use common::notify::{Hub, MAX_DATAGRAM};
    let dir = short_dir();
    let s = log_spec(
        dir.path(),
        "awk 'BEGIN { for (i = 0; i < 1000; i++) print \"line \" i }'; \
         while :; do sleep 1 & wait $!; done",
        10,
        10,
    );
    let task_id = s.task_id.clone();
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    let hubs = [
        Hub::bind(&dir.path().join("n1.sock")).unwrap(),
        Hub::bind(&dir.path().join("n2.sock")).unwrap(),
    ];
    let events_client = c.clone();
    let subscribe = |hub: &Hub| {
        let mut c = events_client.clone();
        let socket = hub.path().display().to_string();
        async move {
            let mut stream = c
                .events(api::EventsRequest {
                    since_unix_ms: 0,
                    log_counts: true,
                    notify_socket: socket,
                })
                .await
                .unwrap()
                .into_inner();
            let mut got = Vec::new();
            while let Some(ev) = stream.message().await.unwrap() {
                got.push(ev);
            }
            got
        }
    };
    let first = within(
        "the first subscription's stream to end",
        subscribe(&hubs[0]),
    )
    .await;
    assert!(first.is_empty(), "nothing happened yet: {first:?}");
    c.start(api::StartRequest {}).await.unwrap();
    let mut buf = vec![0; MAX_DATAGRAM];
    let counted = within("the counters of the whole burst, as datagrams", async {
        loop {
            let r = hubs[0].recv(&mut buf).await.unwrap().unwrap();
            assert_eq!(r.event.task_id, task_id);
            assert!(
                !r.event.exited && r.event.message.is_empty(),
                "{:?}",
                r.event
            );
            if r.event.logs.as_ref().unwrap().streams[0].lines_written == 1000 {
                return r.event;
            }
        }
    })
    .await;
    assert_eq!(
        counted.logs.unwrap().streams[0].bytes_written,
        lines(1000).len() as u64
    );
    // Another plugin subscribes: the current counts on its stream, the exit to it alone.
    let second = within(
        "the second subscription's stream to end",
        subscribe(&hubs[1]),
    )
    .await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(
        second[0].logs.as_ref().unwrap().streams[0].lines_written,
        1000
    );
    let stop = c.stop(api::StopRequest {
        signal: "SIGTERM".into(),
        timeout_ms: 5000,
    });
    within("stop", stop).await.unwrap();
    let exited = within("the exit datagram", async {
        loop {
            let r = hubs[1].recv(&mut buf).await.unwrap().unwrap();
            if r.event.exited {
                return r.event;
            }
        }
    })
    .await;
    assert_eq!(exited.task_id, task_id);
    drop(shim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_dir_is_reported_and_the_task_runs() {
    let dir = short_dir();
    let mut s = log_spec(dir.path(), "echo hi; echo there >&2; exit 0", 10, 1);
    let logs = dir.path().join("no").join("such");
    s.log_files.as_mut().unwrap().dir = logs.clone();
    let shim = launch(s, dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    assert_eq!(wait_exit(&mut c).await.exit_code, 0);
    let l = status(&mut c).await.logs.unwrap();
    assert_eq!(
        (l.streams[0].bytes_dropped, l.streams[1].bytes_dropped),
        (3, 6)
    );
    assert!(
        l.streams[0].last_error.contains("cannot open the log dir"),
        "{l:?}"
    );
    // Published before anyone subscribed: remembered for the plugin.
    let mut events = c
        .events(api::EventsRequest {
            since_unix_ms: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ev = within("an event", events.message()).await.unwrap().unwrap();
    assert!(ev.message.contains(&logs.display().to_string()), "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_log_files_the_output_goes_where_the_spec_says() {
    let dir = short_dir();
    let shim = launch(spec(dir.path(), "echo hi; exit 0"), dir.path());
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    wait_exit(&mut c).await;
    let l = status(&mut c).await.logs.unwrap();
    assert_eq!(l.collection, "none");
    assert!(l.streams.is_empty());
}
