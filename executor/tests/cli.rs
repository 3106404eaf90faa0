//! The operator CLI against real shims: status (table and JSON), stop, signal.

mod support;

use common::proto::executor as api;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_tasks_and_stop_and_signal_find_them_by_name() {
    let dir = short_dir();
    let mut out = LogFifo::new(dir.path(), "out");
    let mut s = spec(
        dir.path(),
        r#"trap 'echo got-hup' HUP
echo ready
while :; do sleep 1000 & wait $!; done"#,
    );
    s.stdout_path = out.path.clone();
    let running = launch(s, dir.path());
    let done = launch(spec(dir.path(), "exit 9"), dir.path());
    let mut c = running.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    out.until(|l| l == "ready").await;
    let mut d = done.client().await;
    d.start(api::StartRequest {}).await.unwrap();
    d.wait(api::WaitRequest {}).await.unwrap();
    let run_dir = running
        .spec
        .socket_path
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    let (code, stdout, stderr) = cli(&["status", "--json", "--state-dir", &run_dir]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.len(), 2, "{stdout}");
    let row = rows
        .iter()
        .find(|r| r["task_id"] == running.spec.task_id.as_str())
        .unwrap();
    assert_eq!(row["runtime_pid"], started.pid);
    assert_eq!(row["shim_pid"], running.pid());
    assert_eq!(row["state"], "running");
    assert_eq!(row["reachable"], true);
    assert_eq!(row["alloc_id"], running.spec.alloc_id.as_str());
    assert!(row["memory_bytes"].as_u64().unwrap() > 0);
    let other = rows
        .iter()
        .find(|r| r["task_id"] == done.spec.task_id.as_str())
        .unwrap();
    assert_eq!(other["state"], "exited");
    assert_eq!(other["exit_code"], 9);

    // Reading the index leaves nothing behind in it.
    let mut names: Vec<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected = Vec::new();
    for s in [&running.spec, &done.spec] {
        let key = common::paths::task_key(&s.task_id);
        expected.push(format!("{key}.sock"));
        expected.push(format!("{key}.state"));
    }
    expected.sort();
    assert_eq!(names, expected);

    let (code, table, _) = cli(&["status", "--state-dir", &run_dir]);
    assert_eq!(code, 0);
    let header = table.lines().next().unwrap();
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "ALLOC", "JOB", "TASK", "SHIM", "RUNTIME", "STATE", "UPTIME", "EXIT", "MEMORY", "LOGS",
            "VERSION", "SOCKET"
        ]
    );
    assert!(
        table.contains(&started.pid.to_string()) && table.contains("running"),
        "{table}"
    );

    // TASK filters: by name (JSON has just that one).
    let name = running.spec.task_name.clone();
    let (_, stdout, _) = cli(&["status", "--json", "--state-dir", &run_dir, &name]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["executor_version"], executor::VERSION);
    assert_eq!(rows[0]["api_level"], common::shim_api::API_LEVEL);
    assert_eq!(rows[0]["logs"], "fifo", "the runtime writes into the FIFO");
    assert_eq!(rows[0]["log_bytes_dropped"], 0);

    let (code, stdout, stderr) = cli(&["signal", "SIGHUP", "--state-dir", &run_dir, &name]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(out.line().await, "got-hup");

    let (code, _, stderr) = cli(&["signal", "SIGNOPE", "--state-dir", &run_dir, &name]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("unknown signal") && stderr.contains("SIGHUP"),
        "{stderr}"
    );

    let (code, _, stderr) = cli(&["stop", "--state-dir", &run_dir, "no-such-task"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("elide-executor status"), "{stderr}");

    let key = common::paths::task_key(&running.spec.task_id);
    let (code, stdout, stderr) = cli(&[
        "stop",
        "--signal",
        "SIGKILL",
        "--timeout",
        "2s",
        "--state-dir",
        &run_dir,
        &key,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("exited with code 137 (signal SIGKILL)"),
        "{stdout}"
    );
    let exit = c
        .wait(api::WaitRequest {})
        .await
        .unwrap()
        .into_inner()
        .exit
        .unwrap();
    assert_eq!(exit.exit_code, 137);
}

#[test]
fn status_on_a_missing_dir_names_the_fix() {
    let (code, _, stderr) = cli(&["status", "--state-dir", "/nonexistent/elide-run"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--state-dir") && stderr.contains("runtime_dir"),
        "{stderr}"
    );
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Index entries left half-removed (a task ending while `status` runs) or broken: the CLI
/// reports them and creates nothing, neither in the runtime dir nor next to a state file.
#[test]
fn status_creates_no_files_for_broken_or_dangling_index_entries() {
    let dir = short_dir();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let kept = dir.path().join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    // Not a link at all.
    std::fs::write(run.join("0000000000000001.state"), "").unwrap();
    // A link to a state dir that is gone.
    std::os::unix::fs::symlink(
        dir.path().join("gone/state.json"),
        run.join("0000000000000002.state"),
    )
    .unwrap();
    // A link to a state file that is gone from a dir that is still there.
    std::os::unix::fs::symlink(kept.join("state.json"), run.join("0000000000000003.state"))
        .unwrap();
    let (before, kept_before) = (listing(&run), listing(&kept));
    let (code, stdout, stderr) = cli(&["status", "--json", "--state-dir", run.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(
        rows.iter().all(|r| r["state"] == "stale (no state file)"),
        "{stdout}"
    );
    assert_eq!(listing(&run), before, "status wrote into the runtime dir");
    assert_eq!(
        listing(&kept),
        kept_before,
        "status wrote next to a state file"
    );
}

/// A shim whose socket file was deleted still runs its task: `status` says so (and where to
/// look) instead of calling it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_shim_without_its_socket_is_told_apart_from_a_dead_one() {
    let dir = short_dir();
    let alive = launch(spec(dir.path(), "exec sleep 1000"), dir.path());
    let mut dead = launch(spec(dir.path(), "exec sleep 1000"), dir.path());
    for s in [&alive, &dead] {
        s.client().await.start(api::StartRequest {}).await.unwrap();
    }
    std::fs::remove_file(&alive.spec.socket_path).unwrap();
    dead.child.as_mut().unwrap().kill().unwrap();
    dead.exited().await;
    let run_dir = alive
        .spec
        .socket_path
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (code, stdout, stderr) = cli(&["status", "--json", "--state-dir", &run_dir]);
    assert_eq!(
        code, 1,
        "a task nobody can reach is a problem: {stdout}{stderr}"
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let row = |s: &common::spec::TaskSpec| {
        rows.iter()
            .find(|r| r["task_id"] == s.task_id.as_str())
            .unwrap()
            .clone()
    };
    let a = row(&alive.spec);
    assert_eq!(a["state"], "alive (socket missing)", "{stdout}");
    assert_eq!(a["shim_pid"], alive.pid());
    let problem = a["problem"].as_str().unwrap();
    assert!(
        problem.contains("is alive") && problem.contains(&alive.pid().to_string()),
        "{problem}"
    );
    assert_eq!(row(&dead.spec)["state"], "unreachable", "{stdout}");
}

#[test]
fn help_version_usage_errors_and_completions_from_the_binary() {
    let (code, stdout, stderr) = cli(&["--help"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("Usage: elide-executor <COMMAND>"),
        "{stdout}"
    );
    for c in [
        "status",
        "stop",
        "signal",
        "exec",
        "run",
        "serve",
        "completions",
    ] {
        assert!(stdout.contains(&format!("\n  {c} ")), "{c}: {stdout}");
    }
    // What the plugin's fingerprint parses.
    let (code, stdout, _) = cli(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        common::shim_api::parse_version_line(&stdout).map(|(_, level)| level),
        Some(common::shim_api::API_LEVEL),
        "{stdout}"
    );
    let (code, stdout, _) = cli(&["help", "stop"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Usage: elide-executor stop"), "{stdout}");
    // Usage errors: exit 2, on stderr, with the fix.
    let (code, stdout, stderr) = cli(&["stauts"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.contains("unrecognized subcommand 'stauts'") && stderr.contains("'status'"),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("Usage: elide-executor <COMMAND>"),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&["serve", "--spec", "-"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--task <TASK>"), "{stderr}");
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef elide-executor"),
        ("fish", "complete -c elide-executor"),
    ] {
        let (code, stdout, stderr) = cli(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(stdout.contains(marker), "{shell}: {stdout}");
        assert!(stdout.contains("state-dir"), "{shell}: {stdout}");
    }
}
