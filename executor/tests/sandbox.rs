//! The task sandbox through a real shim, as root: a probe script reports what it sees and
//! may do. The data dir lives outside /tmp (which the sandbox replaces), laid out as Nomad's:
//! `<data>/alloc/<alloc>/{<task>/{local,secrets,tmp,private},alloc/{data,logs,tmp},.elide}`,
//! another allocation next to it, and `<data>/client/state.db`.

mod support;

use common::proto::executor as api;
use common::sandbox::{FsIsolation, NamespaceMode, SandboxSpec, VolumeSpec};
use common::sandbox::{DEFAULT_HIDDEN_PATHS, DEFAULT_HOST_PATHS};
use common::spec::TaskSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::*;
use tempfile::TempDir;

fn root() -> bool {
    common::testing::root_or_skip("the sandbox needs root")
}

struct Layout {
    _data: TempDir,
    _run: TempDir,
    data: PathBuf,
    alloc: PathBuf,
    task: PathBuf,
    other: PathBuf,
    out: PathBuf,
    outside: PathBuf,
    spec: TaskSpec,
}

fn mkdirs(paths: &[&Path]) {
    for p in paths {
        std::fs::create_dir_all(p).unwrap();
    }
}

/// A Nomad-like alloc dir and a spec running `script` under `sh` with the plugin's default
/// sandbox (the same lists `driver/src/tasks/spec.rs` builds).
fn layout(script: &str) -> Layout {
    let data_tmp = tempfile::Builder::new()
        .prefix("eesb")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Traversable, like Nomad's data dir, so a task user without capabilities gets to its dir.
    std::fs::set_permissions(
        data_tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let run = short_dir();
    let data = data_tmp.path().join("data");
    let alloc = data.join("alloc").join("a1");
    let task = alloc.join("web");
    let other = data.join("alloc").join("a2").join("web");
    mkdirs(&[
        &task.join("local"),
        &task.join("secrets"),
        &task.join("tmp"),
        &task.join("private"),
        &alloc.join("alloc/data"),
        &alloc.join("alloc/logs"),
        &other.join("secrets"),
        &other.join("local"),
        &data.join("client"),
    ]);
    std::fs::write(other.join("secrets/token"), "other-secret").unwrap();
    std::fs::write(other.join("local/app.py"), "other-app").unwrap();
    std::fs::write(task.join("private/x"), "private").unwrap();
    std::fs::write(data.join("client/state.db"), "state").unwrap();
    let outside = data_tmp.path().join("outside");
    mkdirs(&[&outside]);
    let out = data_tmp.path().join("out.txt");
    std::fs::write(&out, "").unwrap();
    let mut s = spec(run.path(), script);
    s.cwd = task.clone();
    s.stdout_path = out.clone();
    s.stderr_path = out.clone();
    let key = common::paths::task_key(&s.task_id);
    s.state_path = alloc.join(".elide").join(&key).join("state.json");
    s.env = BTreeMap::from([
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("TASK".into(), task.display().to_string()),
        ("ALLOC".into(), alloc.join("alloc").display().to_string()),
        ("OTHER".into(), other.display().to_string()),
        ("DATA".into(), data.display().to_string()),
        ("RUN".into(), run.path().join("run").display().to_string()),
        ("OUTSIDE".into(), outside.display().to_string()),
    ]);
    s.sandbox = Some(SandboxSpec {
        writable_paths: vec![task.clone(), alloc.join("alloc")],
        hidden_paths: [
            data.join("alloc"),
            data.clone(),
            run.path().join("run"),
            task.join("private"),
        ]
        .into_iter()
        .chain(DEFAULT_HIDDEN_PATHS.iter().map(PathBuf::from))
        .collect(),
        // readable_paths: the default allow-list (DEFAULT_HOST_PATHS).
        ..Default::default()
    });
    Layout {
        _data: data_tmp,
        _run: run,
        data,
        alloc,
        task,
        other,
        out,
        outside,
        spec: s,
    }
}

impl Layout {
    /// Starts a shim for the spec (not the runtime).
    fn launch(&self) -> Shim {
        let dir = self.spec.socket_path.parent().unwrap().parent().unwrap();
        launch(self.spec.clone(), dir)
    }

    /// Start's error: the sandbox refused to run the spec.
    async fn start_error(&self) -> tonic::Status {
        let shim = self.launch();
        let e = shim.client().await.start(api::StartRequest {}).await;
        e.expect_err("Start should fail")
    }
}

/// Runs the spec to its exit; returns (exit, output as key=value lines).
async fn run(l: &Layout) -> (api::ExitStatus, BTreeMap<String, String>, String) {
    run_to_exit(&l.spec, &l.out).await
}

/// Reads `/proc/self/status` fields as `Name=value` lines.
const STATUS: &str = r#"
for f in CapEff CapPrm CapInh CapBnd CapAmb NoNewPrivs Uid Gid Groups; do
  echo "$f=$(grep "^$f:" /proc/self/status | cut -f2- | tr -s '\t ' ' ' | sed 's/^ //')"
done
"#;

const FILES: &str = r#"
try() { if eval "$2" >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }
try write_etc 'touch /etc/elide-sandbox-probe'
try write_usr 'touch /usr/elide-sandbox-probe'
try write_outside 'touch $OUTSIDE/x'
try write_task 'touch $TASK/x'
try write_local 'touch $TASK/local/x'
try write_secrets 'touch $TASK/secrets/x'
try write_alloc 'touch $ALLOC/data/x'
try write_tmp 'touch /tmp/x'
try write_shm 'touch /dev/shm/x'
try read_other_secret 'cat $OTHER/secrets/token'
try list_other_secrets 'ls $OTHER/secrets'
try list_other_local 'ls $OTHER/local'
try list_allocs 'ls $DATA/alloc/a2'
try read_state_db 'cat $DATA/client/state.db'
try list_run 'test -n "$(ls -A $RUN)"'
try list_private 'test -n "$(ls -A $TASK/private)"'
try list_shim_state 'test -n "$(ls -A $TASK/../.elide)"'
try read_kcore 'test -n "$(head -c1 /proc/kcore)"'
try list_firmware 'test -n "$(ls -A /sys/firmware)"'
try write_sysrq 'echo h > /proc/sysrq-trigger'
try write_proc_sys 'echo 1 > /proc/sys/vm/drop_caches'
try dev_null 'echo x > /dev/null'
try dev_sda 'test -e /dev/sda -o -e /dev/vda'
try mknod 'mknod $TASK/null2 c 1 3 && echo x > $TASK/null2'
echo "pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\n' ' ')"
echo "pid=$$"
for p in /proc/[0-9]*; do echo "cmdline${p#/proc/}=$(tr '\0' ' ' < $p/cmdline)"; done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_sandbox_confines_a_root_task() {
    if !root() {
        return;
    }
    let l = layout(&format!("{STATUS}{FILES}"));
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    let want = common::capabilities::mask_of(&l.spec.sandbox.as_ref().unwrap().capabilities);
    let hex = |k: &str| u64::from_str_radix(&kv[k], 16).unwrap_or_else(|_| panic!("{k}: {text}"));
    assert_eq!(hex("CapEff"), want, "{text}");
    assert_eq!(hex("CapBnd"), want, "{text}");
    assert_eq!(hex("CapPrm"), want, "{text}");
    assert_eq!(kv["NoNewPrivs"], "1", "{text}");
    for (k, v) in [
        ("write_etc", "no"),
        ("write_usr", "no"),
        ("write_outside", "no"),
        ("write_task", "yes"),
        ("write_local", "yes"),
        ("write_secrets", "yes"),
        ("write_alloc", "yes"),
        ("write_tmp", "yes"),
        ("write_shm", "yes"),
        ("read_other_secret", "no"),
        ("list_other_secrets", "no"),
        ("list_other_local", "no"),
        ("list_allocs", "no"),
        ("read_state_db", "no"),
        ("list_run", "no"),
        ("list_private", "no"),
        ("list_shim_state", "no"),
        ("read_kcore", "no"),
        ("list_firmware", "no"),
        ("write_sysrq", "no"),
        ("write_proc_sys", "no"),
        ("dev_null", "yes"),
        ("dev_sda", "no"),
        // CAP_MKNOD is in Nomad's default set, but the task's writable dirs are nodev.
        ("mknod", "no"),
    ] {
        assert_eq!(kv.get(k).map(String::as_str), Some(v), "{k}: {text}");
    }
    // Its own PID namespace: the init as 1, the probe as 2, then the probe's own children;
    // neither the shim nor anything of the host.
    let pids: Vec<u32> = kv["pids"]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(&pids[..2], [1, 2], "{text}");
    assert_eq!(kv["pid"], "2", "{text}");
    assert!(
        kv["cmdline1"].starts_with("elide-executor sandbox-init"),
        "{text}"
    );
    assert!(
        !text.contains("serve --spec"),
        "the shim is visible: {text}"
    );
    assert!(
        pids.len() < 10,
        "more than the probe's own processes: {text}"
    );
    // Nothing leaked onto the host.
    assert!(!Path::new("/etc/elide-sandbox-probe").exists());
    assert!(l.task.join("x").exists() && l.task.join("local/x").exists());
    assert!(l.alloc.join("alloc/data/x").exists());
    assert!(!l.outside.join("x").exists());
    assert!(l.other.join("secrets/token").exists() && l.data.join("client/state.db").exists());
    // The shim recorded the sandbox for `alloc exec`.
    let st = common::state::TaskState::read(&l.spec.state_path).unwrap();
    let sb = st.sandbox.expect("sandbox state");
    assert!(sb.pid_init);
    assert!(sb.namespaces["mnt"].starts_with("mnt:["), "{sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_drop_all_leaves_nothing_and_nobody_gets_its_own_groups() {
    if !root() {
        return;
    }
    let mut l = layout(STATUS);
    l.spec.sandbox.as_mut().unwrap().capabilities = vec![];
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    for k in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(kv[k], "0000000000000000", "{k}: {text}");
    }

    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        panic!("no user nobody on this machine");
    };
    let mut l = layout(STATUS);
    l.spec.user = "nobody".into();
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    let uid = nobody.uid.as_raw().to_string();
    assert!(kv["Uid"].split(' ').all(|u| u == uid), "{text}");
    let groups: Vec<&str> = kv["Groups"].split_whitespace().collect();
    assert!(!groups.contains(&"0"), "root's groups leaked: {text}");
    assert!(
        groups.contains(&nobody.gid.as_raw().to_string().as_str()),
        "{text}"
    );
    // A non-root user gets no capability unless the job's cap_add names it (issue 18: with
    // the default set it could setuid(0)); the bounding set stays the computed one.
    for k in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(kv[k], "0000000000000000", "{k}: {text}");
    }
    let want = common::capabilities::mask_of(&l.spec.sandbox.as_ref().unwrap().capabilities);
    assert_eq!(
        u64::from_str_radix(&kv["CapBnd"], 16).unwrap(),
        want,
        "{text}"
    );

    // Without any capability (no DAC override) the user still reaches its dir: the mount
    // points the sandbox made on the way are traversable.
    let mut l = layout(STATUS);
    l.spec.user = "nobody".into();
    l.spec.sandbox.as_mut().unwrap().capabilities = vec![];
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    assert_eq!(kv["CapEff"], "0000000000000000", "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_pid_mode_and_no_fs_isolation_show_the_host() {
    if !root() {
        return;
    }
    // Harmless probes only: this one runs with the host's file system writable.
    let mut l = layout(
        r#"
try() { if eval "$2" >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }
try write_outside 'touch $OUTSIDE/x'
try read_other_secret 'cat $OTHER/secrets/token'
echo "pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\n' ' ')"
"#,
    );
    let sb = l.spec.sandbox.as_mut().unwrap();
    sb.pid_mode = NamespaceMode::Host;
    sb.fs_isolation = FsIsolation::None;
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    let pids: Vec<u32> = kv["pids"]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        pids.contains(&std::process::id()),
        "the host's processes: {text}"
    );
    assert_eq!(kv["write_outside"], "yes", "{text}");
    assert_eq!(kv["read_other_secret"], "yes", "{text}");
    assert!(l.outside.join("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_bound_beneath_the_task_dir_read_only_or_writable() {
    if !root() {
        return;
    }
    let vols = tempfile::Builder::new()
        .prefix("eevol")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (ro, rw) = (vols.path().join("ro"), vols.path().join("rw"));
    mkdirs(&[&ro, &rw]);
    std::fs::write(ro.join("seed"), "ro-data").unwrap();
    let mut l = layout(
        r#"
try() { if eval "$2" >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }
echo "ro_seed=$(cat srv/ro/seed)"
try write_ro 'touch srv/ro/x'
try write_rw 'touch data/x'
"#,
    );
    l.spec.sandbox.as_mut().unwrap().volumes = vec![
        VolumeSpec {
            host_path: ro.clone(),
            task_path: "/srv/ro".into(),
            read_only: true,
        },
        VolumeSpec {
            host_path: rw.clone(),
            task_path: "data".into(),
            read_only: false,
        },
    ];
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    assert_eq!(kv["ro_seed"], "ro-data", "{text}");
    assert_eq!(kv["write_ro"], "no", "{text}");
    assert_eq!(kv["write_rw"], "yes", "{text}");
    assert!(rw.join("x").exists() && !ro.join("x").exists());
    // The mount points were made inside the task dir, nothing else on the host changed.
    assert!(l.task.join("srv/ro").is_dir() && l.task.join("data").is_dir());
}

/// A symlink planted where a volume goes (an artifact could do it) is never followed by root:
/// the start fails naming the step, and nothing is mounted or created outside the task dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_a_volume_destination_fails_the_start_with_the_step_named() {
    if !root() {
        return;
    }
    let vols = tempfile::Builder::new()
        .prefix("eevol")
        .tempdir_in("/var/tmp")
        .unwrap();
    let target = vols.path().join("elsewhere");
    mkdirs(&[&target]);
    let mut l = layout("exit 0");
    std::os::unix::fs::symlink(&target, l.task.join("srv")).unwrap();
    l.spec.sandbox.as_mut().unwrap().volumes = vec![VolumeSpec {
        host_path: vols.path().to_path_buf(),
        task_path: "/srv/data".into(),
        read_only: false,
    }];
    let e = l.start_error().await;
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let msg = e.message();
    assert!(
        msg.contains("setting up the task's file system view")
            && msg.contains("no symlinks are followed"),
        "{msg}"
    );
    assert!(
        !target.join("data").exists(),
        "a dir was created through the symlink"
    );

    // A missing host volume names itself.
    let mut l = layout("exit 0");
    l.spec.sandbox.as_mut().unwrap().volumes = vec![VolumeSpec {
        host_path: "/nonexistent/volume".into(),
        task_path: "/data".into(),
        read_only: true,
    }];
    let e = l.start_error().await;
    assert!(
        e.message()
            .contains("opening the host volume /nonexistent/volume"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_host_ids_and_unknown_users_fail_the_start_clearly() {
    if !root() {
        return;
    }
    let mut l = layout("exit 0");
    l.spec.sandbox.as_mut().unwrap().denied_uids = "0".into();
    let e = l.start_error().await;
    assert!(
        e.message().starts_with(
            "running as uid 0 is not allowed on this node (the plugin's denied_host_uids = \"0\")"
        ),
        "{e:?}"
    );
    let mut l = layout("exit 0");
    l.spec.user = "no-such-user-x8".into();
    let e = l.start_error().await;
    assert!(
        e.message()
            .contains("task user \"no-such-user-x8\" does not exist"),
        "{e:?}"
    );
}

/// The namespace init forwards signals and reports how the runtime ended: a death by
/// SIGTERM stays a signal (not "exit 143"), a trapped one is the runtime's own exit code; a
/// SIGKILLed shim takes the whole namespace along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_1_forwards_signals_reports_the_runtime_and_dies_with_the_shim() {
    if !root() {
        return;
    }
    let l = layout("exec sleep 1000");
    let shim = l.launch();
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    let init = common::proc::stat(started.pid).unwrap();
    assert_eq!(
        (init.pgrp, init.session, init.ppid),
        (started.pid, started.pid, shim.pid())
    );
    let exit = c
        .stop(api::StopRequest {
            signal: "SIGTERM".into(),
            timeout_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner()
        .exit
        .unwrap();
    assert_eq!(
        (exit.signal, exit.exit_code),
        (libc::SIGTERM, 143),
        "{exit:?}"
    );
    assert!(
        exit.message.is_empty(),
        "not escalated to SIGKILL: {exit:?}"
    );

    // The runtime says when its trap is set: a USR1 before that would kill it (exit 138).
    let mut l = layout("trap 'exit 7' USR1; echo ready; while :; do sleep 0.1; done");
    let mut out = LogFifo::new(l.out.parent().unwrap(), "ready.fifo");
    l.spec.stdout_path = out.path.clone();
    let shim = l.launch();
    let mut c = shim.client().await;
    c.start(api::StartRequest {}).await.unwrap();
    out.until(|line| line == "ready").await;
    c.signal(api::SignalRequest {
        signal: "SIGUSR1".into(),
    })
    .await
    .unwrap();
    let exit = within("wait", c.wait(api::WaitRequest {}))
        .await
        .unwrap()
        .into_inner()
        .exit
        .unwrap();
    assert_eq!((exit.exit_code, exit.signal), (7, 0), "{exit:?}");

    // SIGSTOP cannot be forwarded by an init (it cannot be blocked): it reaches the runtime.
    let l = layout("exec sleep 1000");
    let shim = l.launch();
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    c.signal(api::SignalRequest {
        signal: "SIGSTOP".into(),
    })
    .await
    .unwrap();
    let runtime =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", started.pid)).unwrap();
    let runtime: i32 = runtime.split_whitespace().next().unwrap().parse().unwrap();
    let state = |pid: i32| common::proc::stat(pid).unwrap().state;
    let deadline = std::time::Instant::now() + GUARD;
    while state(runtime) != 'T' && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10)); // no event for a stop
    }
    assert_eq!(state(runtime), 'T', "the runtime is stopped");
    assert_ne!(state(started.pid), 'T', "the init is not");
    drop(shim);

    let l = layout("sleep 1000 & exec sleep 1000");
    let mut shim = l.launch();
    let mut c = shim.client().await;
    let started = c.start(api::StartRequest {}).await.unwrap().into_inner();
    let tree = common::proc::task_processes(started.pid);
    assert!(tree.len() >= 3, "init, runtime and its child: {tree:?}");
    let fds: Vec<PidFd> = tree.iter().map(|p| PidFd::open(p.pid)).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    shim.exited().await;
    for f in &fds {
        assert!(f.exited().await, "a process of the task outlived its shim");
    }
}

/// Of a dir outside the allow-list (like /run) the new root shows what the plugin lists as
/// readable (Elide's home, the target of /etc/resolv.conf), and only that: a file is bound
/// over an empty file. So does the private /tmp (an operator's absolute_script_dirs entry
/// there), read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_paths_stay_visible_below_a_hidden_dir() {
    if !root() {
        return;
    }
    let mut l = layout(
        r#"
echo "resolv=$(cat $RUNLIKE/resolve/stub-resolv.conf)"
echo "listing=$(ls $RUNLIKE | tr '\n' ' ')"
echo "sock=$(test -e $RUNLIKE/docker.sock && echo present || echo absent)"
echo "home=$(cat $RUNLIKE/elide/resources/x)"
echo "script=$(cat $APPS/app.py)"
echo "tmp_sibling=$(test -e $APPS/../sibling && echo present || echo absent)"
echo "write_apps=$(touch $APPS/x 2>/dev/null && echo yes || echo no)"
"#,
    );
    let tmp = tempfile::Builder::new()
        .prefix("eesb")
        .tempdir_in("/tmp")
        .unwrap();
    let apps = tmp.path().join("apps");
    mkdirs(&[&apps]);
    std::fs::write(apps.join("app.py"), "print('app')").unwrap();
    std::fs::write(tmp.path().join("sibling"), "not for tasks").unwrap();
    l.spec.env.insert("APPS".into(), apps.display().to_string());
    let runlike = l.outside.join("run");
    mkdirs(&[&runlike.join("resolve"), &runlike.join("elide/resources")]);
    std::fs::write(
        runlike.join("resolve/stub-resolv.conf"),
        "nameserver 10.0.0.53",
    )
    .unwrap();
    std::fs::write(runlike.join("docker.sock"), "not for tasks").unwrap();
    std::fs::write(runlike.join("elide/resources/x"), "resources").unwrap();
    l.spec
        .env
        .insert("RUNLIKE".into(), runlike.display().to_string());
    let sb = l.spec.sandbox.as_mut().unwrap();
    sb.hidden_paths.push(runlike.clone());
    sb.readable_paths = DEFAULT_HOST_PATHS
        .iter()
        .map(PathBuf::from)
        .chain([
            runlike.join("resolve/stub-resolv.conf"),
            runlike.join("elide"),
            runlike.join("missing-is-skipped"),
            apps.clone(),
        ])
        .collect();
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    assert_eq!(kv["resolv"], "nameserver 10.0.0.53", "{text}");
    assert_eq!(kv["home"], "resources", "{text}");
    assert_eq!(kv["listing"], "elide resolve", "{text}");
    assert_eq!(kv["sock"], "absent", "{text}");
    assert_eq!(kv["script"], "print('app')", "{text}");
    assert_eq!(kv["tmp_sibling"], "absent", "{text}");
    assert_eq!(kv["write_apps"], "no", "{text}");
}

/// Nomad's `network { dns {} }`: the task reads its own resolv.conf at /etc/resolv.conf, even
/// as root cannot write, replace or unmount it, finds no staging left in /tmp, and the host's
/// file stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_config_is_the_tasks_read_only_resolv_conf_and_the_hosts_is_untouched() {
    if !root() {
        return;
    }
    let host_before = std::fs::read("/etc/resolv.conf").ok();
    let mut l = layout(
        r#"
try() { if (eval "$2") >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }
echo "resolv=$(tr '\n' '|' < /etc/resolv.conf)"
try append 'echo "nameserver 6.6.6.6" >> /etc/resolv.conf'
try truncate ': > /etc/resolv.conf'
try remove 'rm -f /etc/resolv.conf'
try unmount 'umount /etc/resolv.conf'
echo "tmp=$(ls -A /tmp | tr '\n' ' ')"
echo "after=$(tr '\n' '|' < /etc/resolv.conf)"
"#,
    );
    l.spec.sandbox.as_mut().unwrap().dns = Some(common::dns::DnsSpec {
        servers: vec!["10.9.8.7".into(), "fd00::53".into()],
        searches: vec!["example.internal".into()],
        options: vec!["ndots:2".into()],
    });
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    let want = "search example.internal|nameserver 10.9.8.7|nameserver fd00::53|options ndots:2|";
    assert_eq!(kv["resolv"], want, "{text}");
    for k in ["append", "truncate", "remove", "unmount"] {
        assert_eq!(kv[k], "no", "{k}: {text}");
    }
    assert_eq!(kv["after"], want, "{text}");
    assert_eq!(kv["tmp"], "", "staging left in the task's /tmp: {text}");
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_before);
}

/// A network namespace of its own (`ip netns`), with `eth0` (one end of a veth pair kept
/// inside: not every kernel has the dummy module) holding `address`; deleted on drop.
struct TestNetns(String);

impl TestNetns {
    fn new(address: &str) -> TestNetns {
        let name = format!("eesb-hosts-{}", std::process::id());
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = TestNetns(name);
        ip(&[
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]);
        ip(&["-n", &ns.0, "addr", "add", address, "dev", "eth0"]);
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Group network mode: the task reads its own /etc/hosts mapping the allocation's address
/// (found in its network namespace, or Nomad's) to its hostname (the node's, or Nomad's), as
/// root cannot write, replace or unmount it, and the host's file stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_network_mode_gives_the_task_a_read_only_etc_hosts_and_the_hosts_is_untouched() {
    if !root() {
        return;
    }
    let host_before = std::fs::read("/etc/hosts").unwrap();
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let netns = TestNetns::new("10.211.0.5/24");
    let script = r#"
try() { if (eval "$2") >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }
echo "entry=$(tail -n 1 /etc/hosts)"
echo "localhost=$(grep -c '^127.0.0.1 localhost$' /etc/hosts)"
echo "hostname=$(hostname)"
try append 'echo "6.6.6.6 evil" >> /etc/hosts'
try truncate ': > /etc/hosts'
try remove 'rm -f /etc/hosts'
try unmount 'umount /etc/hosts'
echo "tmp=$(ls -A /tmp | tr '\n' ' ')"
echo "after=$(tail -n 1 /etc/hosts)"
"#;
    for (given, want) in [
        (
            common::hosts::HostsSpec::default(),
            format!("10.211.0.5 {node}"),
        ),
        (
            common::hosts::HostsSpec {
                hostname: Some("a1b2c3d4e5f6".into()),
                address: Some("172.26.64.9".into()),
            },
            "172.26.64.9 a1b2c3d4e5f6".to_owned(),
        ),
    ] {
        let mut l = layout(script);
        l.spec.netns_path = Some(netns.path());
        l.spec.sandbox.as_mut().unwrap().hosts = Some(given);
        let (exit, kv, text) = run(&l).await;
        assert_eq!(exit.exit_code, 0, "{text}");
        assert_eq!(kv["entry"], want, "{text}");
        assert_eq!(kv["localhost"], "1", "{text}");
        // Like exec: no UTS namespace, the node's hostname.
        assert_eq!(kv["hostname"], node, "{text}");
        for k in ["append", "truncate", "remove", "unmount"] {
            assert_eq!(kv[k], "no", "{k}: {text}");
        }
        assert_eq!(kv["after"], want, "{text}");
        assert_eq!(kv["tmp"], "", "staging left in the task's /tmp: {text}");
    }
    assert_eq!(std::fs::read("/etc/hosts").unwrap(), host_before);
}

/// Root-only host entries a task may still see, each with its reason (docs/executor.md,
/// "Sandbox"): polkit's rules dir is policy, not a secret, and sits in `/usr` (which is not
/// scanned entry by entry at each start: 150k files).
const ROOT_ONLY_ALLOWED: &[&str] = &["/usr/share/polkit-1/rules.d"];

/// Files (and the dirs made for them) planted on the host for a test, removed on drop;
/// host mounts too.
#[derive(Default)]
struct Planted {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
}

impl Planted {
    fn file(&mut self, path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let dir = path.parent().unwrap();
        if !dir.exists() {
            std::fs::create_dir_all(dir).unwrap();
            self.dirs.push(dir.to_path_buf());
        }
        std::fs::write(path, "planted-secret").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        self.files.push(path.to_path_buf());
    }

    fn tmpfs(&mut self, at: &Path) {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64k"),
        )
        .unwrap();
        self.mounts.push(at.to_path_buf());
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Issue #18, items 8 and 12: the task's root is a new one built from the allow-list. A root
/// task (all of Nomad's default capabilities, DAC_OVERRIDE included) walks its whole view and
/// finds no host file only root may read but a short documented list: not the TLS keys of
/// `/etc/ssl/private`, not SSH host keys, not `/etc/shadow` (all planted here if the host
/// lacks them). The root holds the system's dirs and the task's own, nothing else of the host,
/// and `/proc/self/mountinfo` does not name another allocation's mounts (its secrets tmpfs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_is_the_allow_list_without_root_only_files_or_other_allocations_mounts() {
    if !root() {
        return;
    }
    let mut planted = Planted::default();
    let tag = format!("elidetest{}", std::process::id());
    let tls = PathBuf::from(format!("/etc/ssl/private/{tag}.key"));
    let ssh = PathBuf::from(format!("/etc/ssh/ssh_host_{tag}_key"));
    let etc_plain = PathBuf::from(format!("/etc/{tag}-root-only.conf"));
    planted.file(&tls, 0o640);
    planted.file(&ssh, 0o600);
    planted.file(&etc_plain, 0o600);
    let l = layout(
        r#"
try() { if eval "$2" >/dev/null 2>&1; then echo "$1=yes"; else echo "$1=no"; fi; }
echo "root=$(ls -A / | tr '\n' ' ')"
echo "rootonly=$(find / \( -path /proc -o -path /sys -o -path /dev -o -path "$TASK" -o -path "$ALLOC" \) -prune -o ! -type l ! -perm -o=r -print 2>/dev/null | tr '\n' ' ')"
try read_tls "grep -q planted-secret $TLS"
try read_ssh "grep -q planted-secret $SSH"
try read_etc_plain "grep -q planted-secret $ETC_PLAIN"
try list_tls "test -n \"\$(ls -A /etc/ssl/private)\""
try read_shadow 'test -s /etc/shadow'
try read_passwd 'grep -q "^root:" /etc/passwd'
try run_sh '/bin/sh -c true'
echo "mountinfo_other=$(grep -c "$OTHER" /proc/self/mountinfo)"
echo "mountinfo_lines=$(wc -l < /proc/self/mountinfo)"
"#,
    );
    // Nomad mounts a tmpfs at every task's secrets dir: the other allocation's shows up in
    // any mount namespace cloned from the host's.
    planted.tmpfs(&l.other.join("secrets"));
    let mut l = l;
    for (k, v) in [("TLS", &tls), ("SSH", &ssh), ("ETC_PLAIN", &etc_plain)] {
        l.spec.env.insert(k.into(), v.display().to_string());
    }
    let (exit, kv, text) = run(&l).await;
    drop(planted);
    assert_eq!(exit.exit_code, 0, "{text}");
    for (k, v) in [
        ("read_tls", "no"),
        ("read_ssh", "no"),
        ("read_etc_plain", "no"),
        ("list_tls", "no"),
        ("read_shadow", "no"),
        ("read_passwd", "yes"),
        ("run_sh", "yes"),
        ("mountinfo_other", "0"),
    ] {
        assert_eq!(kv.get(k).map(String::as_str), Some(v), "{k}: {text}");
    }
    let found: Vec<&str> = kv["rootonly"]
        .split_whitespace()
        .filter(|p| {
            !ROOT_ONLY_ALLOWED
                .iter()
                .any(|a| Path::new(p).starts_with(a))
        })
        .collect();
    assert!(
        found.is_empty(),
        "root-only host files in the view: {found:?}\n{text}"
    );
    let top: Vec<&str> = kv["root"].split_whitespace().collect();
    for want in ["bin", "dev", "etc", "proc", "sys", "tmp", "usr"] {
        assert!(top.contains(&want), "{want} missing from /: {top:?}");
    }
    for host_only in ["home", "root", "opt", "srv", "mnt", "boot", "media", "work"] {
        assert!(
            !top.contains(&host_only),
            "/{host_only} is in the view: {top:?}"
        );
    }
    let lines: usize = kv["mountinfo_lines"].parse().unwrap();
    assert!(lines < 60, "more mounts than the task's own: {text}");
}

/// A symlink the task left where the sandbox hides something in its dir (`private/`; the
/// task dir outlives a restart) is never followed: the old code mounted the hiding tmpfs
/// wherever it led (here over the task's own `local/`, emptying it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_a_hidden_path_of_the_task_dir_is_not_followed() {
    if !root() {
        return;
    }
    let l = layout(
        r#"
echo "keep=$(cat $TASK/local/keep)"
echo "link=$(readlink $TASK/private)"
"#,
    );
    std::fs::remove_dir_all(l.task.join("private")).unwrap();
    std::fs::write(l.task.join("local/keep"), "kept").unwrap();
    std::os::unix::fs::symlink("local", l.task.join("private")).unwrap();
    let (exit, kv, text) = run(&l).await;
    assert_eq!(exit.exit_code, 0, "{text}");
    assert_eq!(kv["keep"], "kept", "{text}");
    assert_eq!(kv["link"], "local", "{text}");
}

/// Issue #18, item 1, the race: a host volume mounted at `/data` that another task writes,
/// and a second volume at `/data/sub/elide` inside it. While the sandbox sets them up, a
/// thread keeps swapping `sub` with a symlink to the dir above a read-only path of the view
/// (`renameat2(RENAME_EXCHANGE)`, as the reproduction did). With mounts and attribute changes
/// made on paths, a start now and then cleared the read-only flag of that path (the Elide
/// install dir in the report); made on fds, every start either fails on the symlink or
/// gives a task that cannot write there, for as many starts as fit in the time given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_volume_dir_for_a_symlink_during_setup_never_makes_a_read_only_path_writable() {
    if !root() {
        return;
    }
    let vols = tempfile::Builder::new()
        .prefix("eerace")
        .tempdir_in("/var/tmp")
        .unwrap();
    let hv = vols.path().join("hv");
    let inner = vols.path().join("inner");
    let opt = vols.path().join("opt");
    let home = opt.join("elide");
    mkdirs(&[&hv.join("sub"), &inner, &home]);
    std::fs::write(home.join("elide"), "the runtime").unwrap();
    std::os::unix::fs::symlink(&opt, hv.join("evil")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (a, b) = (
            std::ffi::CString::new(hv.join("sub").as_os_str().as_encoded_bytes()).unwrap(),
            std::ffi::CString::new(hv.join("evil").as_os_str().as_encoded_bytes()).unwrap(),
        );
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: two NUL-terminated paths.
                let r = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
                swaps += 1;
            }
            swaps
        })
    };
    // Race for at least 12 s, and on a loaded machine (fewer starts per second) on until both
    // outcomes were seen three times, up to 120 s.
    let began = std::time::Instant::now();
    let (mut started, mut refused) = (0, 0);
    while began.elapsed() < std::time::Duration::from_secs(12)
        || ((started < 3 || refused < 3) && began.elapsed() < std::time::Duration::from_secs(120))
    {
        let mut l = layout(
            r#"
if touch $HOME_RO/pwned 2>/dev/null; then echo "wrote=yes"; else echo "wrote=no"; fi
"#,
        );
        l.spec
            .env
            .insert("HOME_RO".into(), home.display().to_string());
        let sb = l.spec.sandbox.as_mut().unwrap();
        sb.readable_paths.push(home.clone());
        sb.volumes = vec![
            VolumeSpec {
                host_path: hv.clone(),
                task_path: "/data".into(),
                read_only: false,
            },
            VolumeSpec {
                host_path: inner.clone(),
                task_path: "/data/sub/elide".into(),
                read_only: false,
            },
        ];
        let shim = l.launch();
        let mut c = shim.client().await;
        match c.start(api::StartRequest {}).await {
            Ok(_) => {
                within("wait", c.wait(api::WaitRequest {})).await.unwrap();
                let text = std::fs::read_to_string(&l.out).unwrap();
                assert!(text.contains("wrote=no"), "{text}");
                started += 1;
            }
            Err(e) => {
                assert!(
                    e.message()
                        .contains("setting up the task's file system view"),
                    "{e:?}"
                );
                refused += 1;
            }
        }
        assert!(
            !home.join("pwned").exists(),
            "the read-only path was written on the host after {started} starts"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("{started} started, {refused} refused, {swaps} swaps");
    // Both outcomes happen: the swapping really raced the setup.
    assert!(
        started >= 3 && refused >= 3,
        "{started} started, {refused} refused"
    );
    assert!(swaps > 1000, "{swaps} swaps");
    assert_eq!(
        std::fs::read_to_string(home.join("elide")).unwrap(),
        "the runtime"
    );
}
