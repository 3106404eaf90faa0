use super::scrape::{LogCounts, Snapshot, Source, TaskFigures};
use super::*;
use std::sync::Mutex as StdMutex;

fn status(msg: &str) -> Result<(), crate::tasks::TaskError> {
    Err(crate::tasks::TaskError::Permanent(msg.to_owned()))
}

#[test]
fn start_failures_are_classified_by_the_step_that_refused_them() {
    assert_eq!(
        start_outcome(&Ok::<(), crate::tasks::TaskError>(())),
        StartOutcome::started
    );
    for (msg, want) in [
        ("script local/missing.py not found: it does not exist; create it", StartOutcome::script),
        ("invalid elide task config: config.args: …", StartOutcome::config),
        ("cannot run this task: …", StartOutcome::config),
        ("Elide not found on this node (searched /usr/bin/elide); install it", StartOutcome::node),
        ("cannot start the task's elide-executor: spawn failed", StartOutcome::shim),
        ("the task's resource limits cannot be enforced: no memory controller; the task was not started", StartOutcome::cgroup),
        ("cannot start the sandbox: mounting the new root failed", StartOutcome::sandbox),
        ("cannot start /usr/bin/elide: No such file or directory", StartOutcome::runtime),
    ] {
        assert_eq!(start_outcome(&status(msg)), want, "{msg}");
    }
}

#[test]
fn shim_methods_and_codes_are_a_fixed_set() {
    assert_eq!(shim_method("/elide.executor.v1.Executor/Status"), "Status");
    assert_eq!(shim_method("/elide.executor.v1.Executor/Bogus"), "other");
    assert_eq!(code_name(tonic::Code::Unavailable), "unavailable");
}

/// A fake task store: figures set by the test, and the task ids asked for log counts.
#[derive(Default)]
struct Fake {
    figures: StdMutex<Vec<TaskFigures>>,
    asked: StdMutex<Vec<String>>,
}

#[tonic::async_trait]
impl Source for Fake {
    async fn figures(&self, final_counts: &std::collections::HashSet<String>) -> Vec<TaskFigures> {
        let mut out = self.figures.lock().unwrap().clone();
        for f in &mut out {
            if final_counts.contains(&f.task_id) {
                f.logs = None;
            } else {
                self.asked.lock().unwrap().push(f.task_id.clone());
            }
        }
        out
    }
    fn elides(&self) -> Vec<(String, String)> {
        vec![("default".into(), "1.0.0-beta10".into())]
    }
}

fn lines(written: u64, dropped: u64) -> [LogCounts; 2] {
    [
        LogCounts {
            bytes_written: written * 10,
            lines_written: written,
            lines_dropped: dropped,
            write_errors: dropped.min(1),
            ..Default::default()
        },
        LogCounts::default(),
    ]
}

fn task(id: &str, exited: bool, logs: Option<[LogCounts; 2]>) -> TaskFigures {
    TaskFigures {
        task_id: id.into(),
        exited,
        logs,
    }
}

fn encoded(snapshot: &Arc<Snapshot>) -> String {
    let mut r = Registry::with_prefix(PREFIX);
    r.register_collector(Box::new(snapshot.clone()));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
    out
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn log_totals_never_go_down_when_tasks_leave_and_final_counts_are_read_once() {
    let fake = Fake::default();
    let snap = Arc::new(Snapshot::default());
    *fake.figures.lock().unwrap() = vec![
        task("a", false, Some(lines(100, 0))),
        task("b", true, Some(lines(5, 2))),
    ];
    snap.refresh_from(&fake).await;
    let t = encoded(&snap);
    assert_eq!(
        value(&t, "nomad_driver_elide_tasks{state=\"running\"}"),
        Some(1.0),
        "{t}"
    );
    assert_eq!(
        value(&t, "nomad_driver_elide_tasks{state=\"exited\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            "nomad_driver_elide_log_lines_written_total{stream=\"stdout\"}"
        ),
        Some(105.0),
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            "nomad_driver_elide_log_lines_dropped_total{stream=\"stdout\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &t,
            "nomad_driver_elide_log_write_errors_total{stream=\"stdout\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            "nomad_driver_elide_log_written_bytes_total{stream=\"stdout\"}"
        ),
        Some(1050.0),
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            "nomad_driver_elide_elide_binary{name=\"default\",version=\"1.0.0-beta10\"}"
        ),
        Some(1.0),
        "{t}"
    );
    // b exited and was read: final, not asked again. a is destroyed: its counts stay.
    assert!(snap.is_final("b"));
    fake.asked.lock().unwrap().clear();
    *fake.figures.lock().unwrap() = vec![task("b", true, Some(lines(5, 2)))];
    snap.refresh_from(&fake).await;
    assert!(fake.asked.lock().unwrap().is_empty());
    let t = encoded(&snap);
    assert_eq!(
        value(
            &t,
            "nomad_driver_elide_log_lines_written_total{stream=\"stdout\"}"
        ),
        Some(105.0)
    );
    assert_eq!(
        value(&t, "nomad_driver_elide_tasks{state=\"running\"}"),
        Some(0.0)
    );
    // A shim that does not answer keeps its last counts, and is counted as unreadable.
    *fake.figures.lock().unwrap() = vec![task("c", false, Some(lines(7, 0)))];
    snap.refresh_from(&fake).await;
    *fake.figures.lock().unwrap() = vec![task("c", false, None)];
    snap.refresh_from(&fake).await;
    let t = encoded(&snap);
    assert_eq!(
        value(
            &t,
            "nomad_driver_elide_log_lines_written_total{stream=\"stdout\"}"
        ),
        Some(112.0)
    );
    assert_eq!(
        value(&t, "nomad_driver_elide_log_counts_unreadable_tasks"),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_endpoint_speaks_both_formats_and_only_at_metrics() {
    start_finished(Instant::now(), &status("script x not found"));
    shim_call(
        "/elide.executor.v1.Executor/Status",
        Duration::from_millis(3),
        tonic::Code::Unavailable,
    );
    {
        let _s = exec_session("oneshot");
    }
    let text = server::respond(&hyper::Method::GET, "/metrics", None).await;
    assert_eq!(text.status(), 200);
    assert_eq!(
        text.headers()["content-type"],
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    );
    let body = body_of(text).await;
    assert!(
        body.contains("nomad_driver_elide_task_starts_total{outcome=\"script\"}"),
        "{body}"
    );
    assert!(body.contains("# TYPE nomad_driver_elide_start_task_duration_seconds histogram"));
    assert!(body.contains(
        "nomad_driver_elide_shim_call_errors_total{method=\"Status\",code=\"unavailable\"} 1"
    ));
    assert!(body.contains("nomad_driver_elide_exec_sessions_total{kind=\"oneshot\"}"));
    assert!(
        body.contains(&format!(
            "nomad_driver_elide_build_info{{version=\"{}\"",
            crate::VERSION
        )),
        "{body}"
    );
    assert!(!body.contains("# EOF"));
    let om = server::respond(
        &hyper::Method::GET,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert_eq!(om.headers()["content-type"], server::OPENMETRICS);
    assert!(body_of(om).await.ends_with("# EOF\n"));
    assert_eq!(
        server::respond(&hyper::Method::GET, "/other", None)
            .await
            .status(),
        404
    );
    assert_eq!(
        server::respond(&hyper::Method::POST, "/metrics", None)
            .await
            .status(),
        405
    );
}

async fn body_of(r: hyper::Response<http_body_util::Full<hyper::body::Bytes>>) -> String {
    use http_body_util::BodyExt;
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test]
async fn a_tcp_endpoint_serves_scrapes_and_a_taken_address_fails_clearly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    server::configure(Some(listen::Listen::Tcp(addr)))
        .await
        .unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    assert!(out.contains("nomad_driver_elide_build_info"));
    // The same address again keeps the endpoint; off stops it.
    server::configure(Some(listen::Listen::Tcp(addr)))
        .await
        .unwrap();
    server::configure(None).await.unwrap();
    // Taken by someone else: a clear error after the retry window.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let e = server::configure(Some(listen::Listen::Tcp(taken)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot listen on") && e.contains("pick a free address"),
        "{e}"
    );
}
