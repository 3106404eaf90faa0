//! Exec (`nomad alloc exec`, ExecTask) through a real shim, as root: commands run inside the
//! running task's sandbox — its namespaces, cgroup, user, environment and dir — over pipes or
//! a pty, die with the task or when the caller goes away, and bad commands are refused
//! clearly while the task keeps running.

mod support;

use common::proto::executor::{self as api, executor_client::ExecutorClient};
use common::sandbox::SandboxSpec;
use std::collections::BTreeMap;
use std::path::PathBuf;
use support::*;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

fn root() -> bool {
    common::testing::root_or_skip("entering a sandbox needs root")
}

/// A running task whose runtime sleeps: its own dir outside /tmp (which the sandbox
/// replaces), the plugin's default sandbox unless `sandboxed` is false.
struct Task {
    _data: TempDir,
    _run: TempDir,
    dir: PathBuf,
    shim: Shim,
    client: ExecutorClient<Channel>,
}

async fn task_with(sandboxed: bool, user: &str) -> Task {
    let data = tempfile::Builder::new()
        .prefix("eeex")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        data.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = data.path().join("task");
    std::fs::create_dir_all(dir.join("local")).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let run = short_dir();
    let mut s = spec(run.path(), "exec sleep 100000");
    s.cwd = dir.clone();
    s.user = user.into();
    s.state_path = data.path().join("st").join("state.json");
    s.env = BTreeMap::from([
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("MARK".into(), "the-task's-env".into()),
    ]);
    if sandboxed {
        s.sandbox = Some(SandboxSpec {
            writable_paths: vec![dir.clone()],
            hidden_paths: vec![run.path().join("run")],
            ..Default::default()
        });
    }
    let shim = launch(s, run.path());
    let mut client = shim.client().await;
    client.start(api::StartRequest {}).await.expect("start");
    Task {
        _data: data,
        _run: run,
        dir,
        shim,
        client,
    }
}

async fn task() -> Task {
    task_with(true, "").await
}

/// One exec as a caller sees it.
#[derive(Debug, Default)]
struct Outcome {
    pid: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_closed: bool,
    stderr_closed: bool,
    exit: Option<api::ExitStatus>,
}

impl Outcome {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn code(&self) -> i32 {
        self.exit.as_ref().expect("an exit").exit_code
    }
}

fn setup(command: &[&str], tty: bool) -> api::ExecRequest {
    api::ExecRequest {
        setup: Some(api::ExecSetup {
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
            tty_size: tty.then_some(api::TerminalSize {
                rows: 30,
                cols: 100,
            }),
        }),
        ..Default::default()
    }
}

fn stdin(data: &[u8]) -> api::ExecRequest {
    api::ExecRequest {
        stdin: data.to_vec(),
        ..Default::default()
    }
}

fn close() -> api::ExecRequest {
    api::ExecRequest {
        stdin_close: true,
        ..Default::default()
    }
}

/// An open Exec call: requests go in through `tx`.
struct Call {
    tx: mpsc::Sender<api::ExecRequest>,
    replies: tonic::Streaming<api::ExecResponse>,
}

async fn open(c: &Task, first: api::ExecRequest) -> Result<Call, tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.unwrap();
    let mut client = c.client.clone();
    let replies = within(
        "Exec to answer",
        client.exec(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await?
    .into_inner();
    Ok(Call { tx, replies })
}

impl Call {
    /// The first reply: the command's pid.
    async fn pid(&mut self) -> i32 {
        let m = within("the pid", self.replies.message())
            .await
            .expect("Exec stream")
            .expect("a first reply");
        assert!(m.pid > 0, "the first reply carries the pid: {m:?}");
        m.pid
    }

    /// Everything up to the end of the stream.
    async fn finish(mut self, o: &mut Outcome) {
        while let Some(m) = within("Exec replies", self.replies.message())
            .await
            .expect("Exec stream")
        {
            if m.pid > 0 {
                o.pid = m.pid;
            }
            o.stdout.extend_from_slice(&m.stdout);
            o.stderr.extend_from_slice(&m.stderr);
            o.stdout_closed |= m.stdout_closed;
            o.stderr_closed |= m.stderr_closed;
            if let Some(e) = m.exit {
                assert!(o.exit.is_none(), "two exits");
                o.exit = Some(e);
            }
        }
        drop(self.tx);
    }
}

/// Runs `command` to its end with `input` on stdin (then closed).
async fn exec(c: &Task, command: &[&str], tty: bool, input: &[u8]) -> Outcome {
    let mut call = open(c, setup(command, tty)).await.expect("Exec");
    let mut o = Outcome {
        pid: call.pid().await,
        ..Default::default()
    };
    // (A command that already ended takes no more input: its stream is gone.)
    if !input.is_empty() {
        let _ = call.tx.send(stdin(input)).await;
    }
    if !tty {
        let _ = call.tx.send(close()).await;
    }
    call.finish(&mut o).await;
    o
}

async fn still_running(c: &Task) {
    let s = c
        .client
        .clone()
        .status(api::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, api::TaskState::Running as i32, "{s:?}");
}

fn runtime_pid(c: &Task) -> i32 {
    c.shim.state().runtime_pid.expect("a runtime pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_stay_separate_with_the_exit_code_env_and_dir_of_the_task() {
    if !root() {
        return;
    }
    let t = task().await;
    let o = exec(
        &t,
        &["/bin/sh", "-c", "echo $MARK; pwd; echo e >&2; exit 3"],
        false,
        b"",
    )
    .await;
    assert_eq!(
        o.out(),
        format!("the-task's-env\n{}\n", t.dir.display()),
        "{o:?}"
    );
    assert_eq!(o.err(), "e\n", "{o:?}");
    assert_eq!((o.code(), o.exit.as_ref().unwrap().signal), (3, 0));
    assert!(o.stdout_closed && o.stderr_closed, "{o:?}");
    // Nothing else of the shim's environment.
    let o = exec(&t, &["env"], false, b"").await;
    let out = o.out();
    let mut names: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
    names.sort();
    assert_eq!(names, ["MARK", "PATH"], "{out}");
    // A death by a signal is reported as one.
    let o = exec(&t, &["/bin/sh", "-c", "kill -TERM $$"], false, b"").await;
    let e = o.exit.unwrap();
    assert_eq!((e.exit_code, e.signal), (143, 15));
    still_running(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_joins_the_tasks_namespaces_and_cgroup_and_sees_no_host_process() {
    if !root() {
        return;
    }
    let t = task().await;
    let init = runtime_pid(&t);
    let o = exec(
        &t,
        &[
            "/bin/sh",
            "-c",
            "for n in mnt pid ipc net; do readlink /proc/self/ns/$n; done; \
             cat /proc/self/cgroup; echo pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '); \
             tr '\\0' ' ' < /proc/1/cmdline; echo; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
        ],
        false,
        b"",
    )
    .await;
    assert_eq!(o.code(), 0, "{o:?}");
    let out = o.out();
    let host_ns: Vec<String> = ["mnt", "pid", "ipc", "net"]
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/{init}/ns/{n}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        host_ns.iter().map(String::as_str).collect::<Vec<_>>()[..],
        "{out}"
    );
    // The same cgroup as the task: its memory counts against the task.
    let cgroup = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert!(
        out.contains(&cgroup),
        "task cgroup:\n{cgroup}\nexec:\n{out}"
    );
    // Inside the task's PID namespace: its init as 1, nothing of the host (the shim's pid
    // is far above what a fresh namespace hands out).
    let pids_line = lines.iter().find(|l| l.starts_with("pids=")).unwrap();
    let pids: Vec<i32> = pids_line[5..]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.contains(&1) && !pids.contains(&t.shim.pid()), "{out}");
    assert!(pids.len() < 10, "{out}");
    assert!(out.contains("elide-executor sandbox-init"), "{out}");
    // The task's capabilities and no_new_privs.
    let caps = common::capabilities::mask_of(&SandboxSpec::default().capabilities);
    assert!(out.contains(&format!("CapEff:\t{caps:016x}")), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // The host's pid of the command is what the shim reported, and it is gone now.
    assert!(!std::path::Path::new(&format!("/proc/{}", o.pid)).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_user_runs_the_command() {
    if !root() {
        return;
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        panic!("no user nobody on this machine");
    };
    let t = task_with(true, "nobody").await;
    let o = exec(&t, &["id", "-u"], false, b"").await;
    assert_eq!(o.out().trim(), nobody.uid.as_raw().to_string(), "{o:?}");
    // Its terminal is its own.
    let o = exec(&t, &["/bin/sh", "-c", "stat -c %u $(tty)"], true, b"").await;
    assert_eq!(o.out().trim(), nobody.uid.as_raw().to_string(), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_when_asked_with_its_size_and_resizes() {
    if !root() {
        return;
    }
    let t = task().await;
    let o = exec(
        &t,
        &["/bin/sh", "-c", "tty; stty size; echo err >&2"],
        true,
        b"",
    )
    .await;
    assert_eq!(o.code(), 0, "{o:?}");
    let out = o.out();
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    // Both streams on the terminal (\r\n: a terminal's output processing).
    assert!(out.ends_with("\r\n30 100\r\nerr\r\n"), "{out:?}");
    assert!(o.stderr.is_empty(), "{o:?}");

    // Typed input, echoed by the terminal; a resize reaches the program.
    let mut call = open(
        &t,
        setup(&["/bin/sh", "-c", "read x; stty size; echo got $x"], true),
    )
    .await
    .unwrap();
    let pid = call.pid().await;
    call.tx
        .send(api::ExecRequest {
            tty_size: Some(api::TerminalSize { rows: 50, cols: 40 }),
            ..Default::default()
        })
        .await
        .unwrap();
    call.tx.send(stdin(b"hello\n")).await.unwrap();
    let mut o = Outcome {
        pid,
        ..Default::default()
    };
    call.finish(&mut o).await;
    assert_eq!(o.out(), "hello\r\n50 40\r\ngot hello\r\n", "{o:?}");

    // Stdin's end is the terminal's end-of-file character.
    let mut call = open(&t, setup(&["cat"], true)).await.unwrap();
    call.pid().await;
    call.tx.send(stdin(b"abc\n")).await.unwrap();
    call.tx.send(close()).await.unwrap();
    let mut o = Outcome::default();
    call.finish(&mut o).await;
    assert_eq!((o.code(), o.out().matches("abc").count()), (0, 2), "{o:?}");

    // The leader's exit ends the session, whatever it left in the background (`docker exec
    // -it` semantics; the terminal's hangup ends the rest).
    let o = exec(
        &t,
        &[
            "/bin/sh",
            "-c",
            "(( sleep 3; echo from background ) & ); echo from main; exec sleep 1",
        ],
        true,
        b"",
    )
    .await;
    assert_eq!((o.code(), o.out().as_str()), (0, "from main\r\n"), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_megabytes_through_stdin_arrive_byte_identical() {
    if !root() {
        return;
    }
    let t = task().await;
    let data: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut call = open(&t, setup(&["cat"], false)).await.unwrap();
    let mut o = Outcome {
        pid: call.pid().await,
        ..Default::default()
    };
    let tx = call.tx.clone();
    let input = data.clone();
    // In 64 KiB messages, while the output is read.
    let feeder = tokio::spawn(async move {
        for chunk in input.chunks(64 * 1024) {
            tx.send(stdin(chunk)).await.unwrap();
        }
        tx.send(close()).await.unwrap();
    });
    call.finish(&mut o).await;
    feeder.await.unwrap();
    assert_eq!(o.code(), 0);
    assert_eq!(o.stdout.len(), data.len());
    assert!(o.stdout == data, "the bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_killed_when_the_caller_goes_away() {
    if !root() {
        return;
    }
    let t = task().await;
    let mut call = open(
        &t,
        setup(&["/bin/sh", "-c", "sleep 1000 & exec sleep 1001"], false),
    )
    .await
    .unwrap();
    let pid = call.pid().await;
    let watch = PidFd::open(pid);
    drop(call);
    assert!(watch.exited().await, "pid {pid} survived its caller");
    still_running(&t).await;
    // Its process group (the background sleep) went too.
    let o = exec(&t, &["/bin/sh", "-c", "pgrep -x sleep | wc -l"], false, b"").await;
    assert_eq!(
        o.out().trim(),
        "1",
        "only the task's own sleep is left: {o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_execs_at_once_all_answer() {
    if !root() {
        return;
    }
    let t = task().await;
    let runs = (0..8).map(|i| {
        let t = &t;
        async move {
            let n = i.to_string();
            let o = exec(t, &["/bin/sh", "-c", "sleep 0.3; echo $0", &n], false, b"").await;
            (n, o)
        }
    });
    for (n, o) in futures::future::join_all(runs).await {
        assert_eq!((o.code(), o.out()), (0, format!("{n}\n")), "{o:?}");
    }
    still_running(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_refused_clearly_and_the_task_keeps_running() {
    if !root() {
        return;
    }
    let t = task().await;
    let e = open(&t, setup(&["no-such-command"], false))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message()
            .contains("\"no-such-command\" was not found inside the task (its PATH there is \"/usr/bin:/bin\")"),
        "{}",
        e.message()
    );
    let e = open(&t, setup(&["/no/such/program"], false))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    std::fs::write(t.dir.join("local/script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let script = t.dir.join("local/script.sh").display().to_string();
    let e = open(&t, setup(&[&script], false)).await.err().unwrap();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("permission denied"), "{}", e.message());
    for empty in [&[][..], &[""][..]] {
        let e = open(&t, setup(empty, false)).await.err().unwrap();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("no command given"), "{}", e.message());
    }
    let e = open(&t, setup(&["echo", "a\0b"], false))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = open(&t, stdin(b"no setup")).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    still_running(&t).await;
    let o = exec(&t, &["true"], false, b"").await;
    assert_eq!(o.code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_dies_with_the_task_and_none_runs_before_or_after_it() {
    if !root() {
        return;
    }
    let mut t = task().await;
    let mut call = open(&t, setup(&["sleep", "1000"], false)).await.unwrap();
    let pid = call.pid().await;
    let watch = PidFd::open(pid);
    t.client
        .stop(api::StopRequest {
            signal: "SIGTERM".into(),
            timeout_ms: 5000,
        })
        .await
        .expect("stop");
    assert!(watch.exited().await, "the exec survived the task");
    let mut o = Outcome::default();
    call.finish(&mut o).await;
    assert_eq!(o.exit.map(|e| e.signal), Some(9), "killed with the task");
    let e = open(&t, setup(&["true"], false)).await.err().unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("the task is not running"),
        "{}",
        e.message()
    );
    t.shim.child.take().map(|mut c| c.kill());

    // Before Start.
    let run = short_dir();
    let shim = launch(spec(run.path(), "true"), run.path());
    let mut c = shim.client().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(setup(&["true"], false)).await.unwrap();
    let e = c
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("never started"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_a_sandbox_runs_commands_on_the_host_in_its_cgroup_dir_and_env() {
    if !root() {
        return;
    }
    let t = task_with(false, "").await;
    let o = exec(
        &t,
        &[
            "/bin/sh",
            "-c",
            "echo $MARK; pwd; readlink /proc/self/ns/mnt; cat /proc/self/cgroup",
        ],
        false,
        b"",
    )
    .await;
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", runtime_pid(&t))).unwrap();
    assert_eq!(
        o.out(),
        format!(
            "the-task's-env\n{}\n{}\n{cgroup}",
            t.dir.display(),
            host_mnt.display()
        ),
        "{o:?}"
    );
    // Concurrent output of both streams through a tty-less exec, interleaved by the program.
    let o = exec(
        &t,
        &[
            "/bin/sh",
            "-c",
            "for i in 1 2 3; do echo o$i; echo e$i >&2; done",
        ],
        false,
        b"",
    )
    .await;
    assert_eq!(
        (o.out().as_str(), o.err().as_str()),
        ("o1\no2\no3\n", "e1\ne2\ne3\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_cli_runs_a_command_in_a_task_by_name() {
    if !root() {
        return;
    }
    let t = task().await;
    let dir = t
        .shim
        .spec
        .socket_path
        .parent()
        .unwrap()
        .display()
        .to_string();
    let name = t.shim.spec.task_name.clone();
    let run = move |args: &[&str], input: &[u8]| {
        let mut child = std::process::Command::new(BIN)
            .args(["exec", "--state-dir", &dir])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let a = run(
            &[
                &name,
                "--",
                "/bin/sh",
                "-c",
                "echo $MARK; cat; echo e >&2; exit 4",
            ],
            b"piped in\n",
        );
        let b = run(&[&name, "--", "no-such-command"], b"");
        let c = run(&["-t", &name, "--", "tty"], b"");
        (a, b, c)
    })
    .await
    .map(|(a, b, c)| {
        assert_eq!(b.0, Some(127), "{b:?}");
        assert!(b.2.contains("was not found inside the task"), "{b:?}");
        assert_eq!(c.0, Some(0), "{c:?}");
        assert!(c.1.starts_with("/dev/pts/"), "{c:?}");
        a
    })
    .unwrap();
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(4), "the-task's-env\npiped in\n", "e\n")
    );
}
