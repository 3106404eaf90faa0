//! Issue 18, items 6, 7 and 9 through a real shim, as root: a task (root, or `nobody`) tries
//! the escapes a hostile job tried — the kernel keyring, a user namespace, a mount,
//! `setresuid(0)` as a non-root user, a setuid file on the host's disk — and each is refused
//! by the credentials (creds.rs) and the syscall filter (seccomp.rs) the plugin's defaults
//! give it, while ordinary work (threads, subprocesses, plain chmod) still runs.

mod support;

use common::sandbox::SandboxSpec;
use common::spec::TaskSpec;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::*;
use tempfile::TempDir;

fn root() -> bool {
    common::testing::root_or_skip("the sandbox needs root")
}

/// Each attempt runs in a child process; prints `name=ok` or `name=<errno name>`.
const PROBE: &str = r#"
import ctypes, errno, os, platform, stat, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
X86 = platform.machine() == "x86_64"
NR = {"keyctl": 250 if X86 else 219, "add_key": 248 if X86 else 217,
      "clone": 56 if X86 else 220, "clone3": 435}
def name(code):
    return "ok" if code == 0 else errno.errorcode.get(code, str(code))
def in_child(label, f):
    pid = os.fork()
    if pid == 0:
        try:
            ctypes.set_errno(0)
            r = f()
            e = ctypes.get_errno()
            os._exit(0 if r is None or r >= 0 else (e or 255))
        except OSError as x:
            os._exit(x.errno or 255)
        except BaseException:
            os._exit(254)
    _, st = os.waitpid(pid, 0)
    print(f"{label}={name(os.waitstatus_to_exitcode(st))}", flush=True)
local = os.path.join(os.environ["TASK"], "local")
sh = open("/bin/sh", "rb").read()
def plant(path, mode):
    with open(path, "wb") as f:
        f.write(sh)
    os.chmod(path, mode)
in_child("keyctl", lambda: libc.syscall(NR["keyctl"], 0, ctypes.c_long(-4), 0))
in_child("add_key", lambda: libc.syscall(NR["add_key"], b"user", b"probe", b"x", 1, ctypes.c_long(-2)))
in_child("unshare_user", lambda: libc.unshare(0x10000000))
in_child("clone_newuser", lambda: libc.syscall(NR["clone"], 0x10000000 | 17, 0, 0, 0, 0))
in_child("clone3", lambda: libc.syscall(NR["clone3"], None, 0))
in_child("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
in_child("setresuid0", lambda: libc.setresuid(0, 0, 0))
in_child("personality", lambda: libc.personality(0x0040000))
in_child("chmod_suid", lambda: plant(os.path.join(local, "sh-chmod"), 0o4755))
in_child("chmod_sgid", lambda: plant(os.path.join(local, "sh-sgid"), 0o2755))
in_child("open_suid", lambda: os.close(os.open(os.path.join(local, "sh-open"), os.O_CREAT | os.O_WRONLY, 0o4755)))
in_child("mknod_suid", lambda: os.mknod(os.path.join(local, "sh-mknod"), stat.S_IFREG | 0o4755))
in_child("chmod_plain", lambda: plant(os.path.join(local, "sh-plain"), 0o755))
in_child("spawn", lambda: subprocess.run(["/bin/true"]).returncode)
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("thread=ok", flush=True)
for f in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "Seccomp", "Uid"):
    for line in open("/proc/self/status"):
        if line.startswith(f + ":"):
            print(f + "=" + " ".join(line.split()[1:]), flush=True)
if os.environ.get("THEN_ROOT_EXEC"):
    # With CAP_SETUID from cap_add: become uid 0, then exec; NOROOT keeps the root set away.
    r = libc.setresuid(0, 0, 0)
    print(f"setresuid0_then={'ok' if r == 0 else errno.errorcode[ctypes.get_errno()]}", flush=True)
    os.execv("/bin/sh", ["sh", "-c", "echo after_exec_$(grep ^CapEff: /proc/self/status | tr -d '\\t ')"])
"#;

struct Task {
    _data: TempDir,
    _run: TempDir,
    task: PathBuf,
    out: PathBuf,
    spec: TaskSpec,
}

/// A task dir (with `local/`) in a traversable temp dir, running the probe with the plugin's
/// default sandbox and syscall filter (private PID namespace).
fn task(user: &str, user_caps: &[&str]) -> Task {
    let data = tempfile::Builder::new()
        .prefix("eesc")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(data.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let task = data.path().join("web");
    std::fs::create_dir_all(task.join("local")).unwrap();
    // The task user owns its dir, as Nomad's task dirs are writable by the task user.
    if let Some(u) = nix::unistd::User::from_name(user).ok().flatten() {
        for d in [&task, &task.join("local")] {
            nix::unistd::chown(d, Some(u.uid), Some(u.gid)).unwrap();
        }
    }
    let out = data.path().join("out.txt");
    std::fs::write(&out, "").unwrap();
    let run = short_dir();
    let mut s = spec(run.path(), "");
    s.argv = vec!["/usr/bin/python3".into(), "-c".into(), PROBE.into()];
    s.cwd = task.clone();
    s.stdout_path = out.clone();
    s.stderr_path = out.clone();
    s.user = user.into();
    s.env = BTreeMap::from([
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("TASK".into(), task.display().to_string()),
    ]);
    let filters = common::seccomp::Filters::compile(&[]).expect("a filter for this host");
    let mut sb = SandboxSpec {
        writable_paths: vec![task.clone()],
        hidden_paths: vec![run.path().join("run")],
        seccomp: Some(filters.private_pid.clone()),
        ..Default::default()
    };
    sb.user_capabilities = user_caps.iter().map(|c| c.to_string()).collect();
    s.sandbox = Some(sb);
    Task {
        _data: data,
        _run: run,
        task,
        out,
        spec: s,
    }
}

async fn run(t: &Task) -> (i32, BTreeMap<String, String>, String) {
    let (exit, kv, text) = run_to_exit(&t.spec, &t.out).await;
    (exit.exit_code, kv, text)
}

/// Every file below `dir` with the setuid or setgid bit (symlinks not followed).
fn setid_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.permissions().mode() & 0o6000 != 0 {
                found.push(e.path());
            }
        }
    }
    found
}

fn expect(kv: &BTreeMap<String, String>, text: &str, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(kv.get(*k).map(String::as_str), Some(*v), "{k}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_task_cannot_reach_the_keyring_namespaces_mounts_or_plant_a_setuid_file() {
    if !root() {
        return;
    }
    let t = task("root", &[]);
    let (code, kv, text) = run(&t).await;
    assert_eq!(code, 0, "{text}");
    expect(
        &kv,
        &text,
        &[
            ("keyctl", "EPERM"),
            ("add_key", "EPERM"),
            ("unshare_user", "EPERM"),
            ("clone_newuser", "EPERM"),
            ("clone3", "ENOSYS"),
            ("mount", "EPERM"),
            ("personality", "EPERM"),
            ("chmod_suid", "EPERM"),
            ("chmod_sgid", "EPERM"),
            ("open_suid", "EPERM"),
            ("mknod_suid", "EPERM"),
            // Ordinary work still runs under the filter.
            ("chmod_plain", "ok"),
            ("spawn", "ok"),
            ("thread", "ok"),
            // 2 = SECCOMP_MODE_FILTER.
            ("Seccomp", "2"),
        ],
    );
    assert_eq!(setid_files(&t.task), Vec::<PathBuf>::new(), "{text}");
    assert!(t.task.join("local/sh-plain").exists(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_has_no_capabilities_and_cannot_become_root() {
    if !root() {
        return;
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        panic!("no user nobody on this machine");
    };
    let t = task("nobody", &[]);
    let (code, kv, text) = run(&t).await;
    assert_eq!(code, 0, "{text}");
    let uid = nobody.uid.as_raw().to_string();
    assert!(kv["Uid"].split(' ').all(|u| u == uid), "{text}");
    expect(
        &kv,
        &text,
        &[
            ("setresuid0", "EPERM"),
            ("CapEff", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapInh", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
            ("keyctl", "EPERM"),
            ("unshare_user", "EPERM"),
            ("spawn", "ok"),
        ],
    );
    let bnd = common::capabilities::mask_of(&t.spec.sandbox.as_ref().unwrap().capabilities);
    assert_eq!(kv["CapBnd"], format!("{bnd:016x}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_add_gives_nobody_only_what_it_names_and_uid_0_brings_nothing_back() {
    if !root() {
        return;
    }
    let mut t = task("nobody", &["CAP_NET_BIND_SERVICE", "CAP_SETUID"]);
    t.spec.env.insert("THEN_ROOT_EXEC".into(), "1".into());
    let (code, kv, text) = run(&t).await;
    assert_eq!(code, 0, "{text}");
    let want = common::capabilities::mask_of(&["CAP_NET_BIND_SERVICE".into(), "CAP_SETUID".into()]);
    for k in ["CapEff", "CapPrm", "CapAmb"] {
        assert_eq!(kv[k], format!("{want:016x}"), "{k}: {text}");
    }
    // It may become uid 0 (the operator allowed CAP_SETUID and the job asked for it), but an
    // exec as uid 0 does not hand it the bounding set (SECBIT_NOROOT, locked): it keeps only
    // its own (ambient) set.
    expect(&kv, &text, &[("setresuid0_then", "ok")]);
    assert!(
        text.contains(&format!("after_exec_CapEff:{want:016x}")),
        "uid 0 gained capabilities at exec: {text}"
    );
}
