//! The task's system-call filter (plugin options `seccomp` and `seccomp_denied_syscalls`).
//!
//! A deny list in the spirit of Docker's default profile: what a task needs no part of and
//! what has been a way out of containers — the kernel keyrings (shared by every process of a
//! uid on the host), new namespaces (user namespaces above all), mounts, BPF, perf, kexec and
//! kernel modules, file handles, userfaultfd, the clocks, swap, reboot, io_uring (whose
//! requests no filter sees) — answered with `EPERM`, never a kill; `clone3` and `openat2`
//! (whose arguments sit in a struct a filter cannot read) answer `ENOSYS`, so libc falls back
//! to `clone` / `openat`, which the filter can check. A file mode with the setuid or setgid bit
//! is refused at the source (`chmod` family, `open`/`openat`/`creat` with `O_CREAT` or
//! `O_TMPFILE`, `mknod`): `nosuid` only holds inside the sandbox, and the task dir is on the
//! host's disk. With the host's PID namespace, `ptrace` and its kin are refused too (a task
//! could otherwise attach to another task running as the same user).
//!
//! The plugin compiles the filter once (SetConfig) with `seccompiler` (the syscall names of
//! each architecture come from its tables) and hands the BPF to the shim in the task spec
//! ([`SeccompSpec`]): the static shim carries no compiler, and `sandbox-init` /
//! `sandbox-exec` only install it (docs/executor.md, "Sandbox").

use crate::error::FieldError;
use seccompiler::TargetArch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Refused with `EPERM` whatever their arguments (names missing on an architecture, such as
/// x86's `iopl` on aarch64, are skipped there).
pub const DEFAULT_DENIED: &[&str] = &[
    // Kernel keyrings: keyed by uid across the whole host, not namespaced by the sandbox.
    "add_key",
    "keyctl",
    "request_key",
    // Namespaces: a user namespace gives a task every capability inside it (and the kernel
    // code that only root could reach before); setns joins someone else's.
    "unshare",
    "setns",
    // Mounts, old and new API.
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    // Kernel programming, tracing and modules.
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "lookup_dcookie",
    "syslog",
    // Opening any file of a mounted file system by its handle (the "shocker" escape).
    "open_by_handle_at",
    // Stalls the kernel on a fault at will: a building block of many exploits.
    "userfaultfd",
    // io_uring: its requests (openat, …) never pass through this filter.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // The host's clocks.
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    // The host itself.
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "quotactl_fd",
    "vhangup",
    "nfsservctl",
    "iopl",
    "ioperm",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
];

/// Refused as well when the task shares the host's PID namespace (`pid_mode = "host"`): with
/// a private one a task only sees its own processes.
pub const HOST_PID_DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
];

/// Answered with `ENOSYS` (their arguments are in a struct the filter cannot read): libc and
/// runtimes fall back to `clone` and `openat`, which the filter checks.
pub const NOT_IMPLEMENTED: &[&str] = &["clone3", "openat2"];

/// The architectures the filter is built for (`std::env::consts::ARCH` names).
pub const ARCHES: &[&str] = &["x86_64", "aarch64"];

const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;
const O_CREAT: u64 = 0o100;
const O_TMPFILE: u64 = 0o20000000;
/// CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
const CLONE_NEW: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];
/// The personalities a program may ask for (Docker's list): Linux, the 32-bit address
/// limit, UNAME26 and the query; others (ASLR off, READ_IMPLIES_EXEC …) are refused.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The filter for one task, as the shim installs it (`TaskSpec.sandbox.seccomp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompSpec {
    /// The architecture it was compiled for (`x86_64`, `aarch64`); the shim refuses another.
    pub arch: String,
    /// Every syscall the filter refuses (for the operator: events and docs), sorted.
    pub denied: Vec<String>,
    /// BPF programs, installed in this order; each instruction is 16 hex digits: `code` (4),
    /// `jt` (2), `jf` (2), `k` (8).
    pub programs: Vec<String>,
}

/// One BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl SeccompSpec {
    /// The programs as instructions; the error says what is malformed.
    pub fn decode(&self) -> Result<Vec<Vec<Insn>>, FieldError> {
        self.instructions().map_err(FieldError::value)
    }

    fn instructions(&self) -> Result<Vec<Vec<Insn>>, String> {
        self.programs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.is_empty() || p.len() % 16 != 0 || p.len() / 16 > 4096 {
                    return Err(format!(
                        "seccomp program {i} is not a BPF program of 1 to 4096 instructions"
                    ));
                }
                (0..p.len() / 16)
                    .map(|n| {
                        let v = u64::from_str_radix(&p[n * 16..n * 16 + 16], 16).map_err(|_| {
                            format!("seccomp program {i}, instruction {n}: not hexadecimal")
                        })?;
                        Ok(Insn {
                            code: (v >> 48) as u16,
                            jt: (v >> 40) as u8,
                            jf: (v >> 32) as u8,
                            k: v as u32,
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// The plugin's compiled filters: one per `pid_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters {
    pub private_pid: SeccompSpec,
    pub host_pid: SeccompSpec,
}

impl Filters {
    /// The default filter plus `extra` for the host's architecture. The error's field is the
    /// bad item's index in `extra` (`[1]`), or empty when the architecture is not supported.
    pub fn compile(extra: &[String]) -> Result<Filters, FieldError> {
        Self::compile_for(std::env::consts::ARCH, extra)
    }

    pub fn compile_for(arch: &str, extra: &[String]) -> Result<Filters, FieldError> {
        let target = target(arch).map_err(FieldError::value)?;
        for (i, name) in extra.iter().enumerate() {
            if !known(target, name) {
                return Err(FieldError::new(
                    format!("[{i}]"),
                    format!(
                        "{name:?} is not a system call on {arch}; use the kernel's name, e.g. \"ptrace\" or \"personality\" (syscalls(2))"
                    ),
                ));
            }
        }
        let private_pid = build(arch, target, extra, false).map_err(FieldError::value)?;
        let host_pid = build(arch, target, extra, true).map_err(FieldError::value)?;
        Ok(Filters {
            private_pid,
            host_pid,
        })
    }

    pub fn for_host_pid(&self, host_pid: bool) -> &SeccompSpec {
        if host_pid {
            &self.host_pid
        } else {
            &self.private_pid
        }
    }
}

fn target(arch: &str) -> Result<TargetArch, String> {
    if !ARCHES.contains(&arch) {
        return Err(format!(
            "the syscall filter is not available on {arch} (only on {}); set seccomp = \"off\" to run tasks without one",
            ARCHES.join(", ")
        ));
    }
    TargetArch::try_from(arch).map_err(|e| format!("{arch}: {e:?}"))
}

/// Whether `name` is a system call of the architecture (seccompiler's table).
fn known(arch: TargetArch, name: &str) -> bool {
    let doc = json!({"f": {"mismatch_action": "allow", "match_action": {"errno": 1},
        "filter": [{"syscall": name}]}});
    seccompiler::compile_from_json(doc.to_string().as_bytes(), arch).is_ok()
}

fn cond(index: u8, op: Value, val: u64) -> Value {
    json!({"index": index, "type": "dword", "op": op, "val": val})
}

fn masked(index: u8, bits: u64) -> Value {
    cond(index, json!({"masked_eq": bits}), bits)
}

/// The rules with argument conditions (syscall → or-ed rules of and-ed conditions).
fn conditional(arch: TargetArch) -> BTreeMap<&'static str, Vec<Vec<Value>>> {
    let mut m: BTreeMap<&'static str, Vec<Vec<Value>>> = BTreeMap::new();
    // clone(flags, …) with any CLONE_NEW* flag (x86_64 and aarch64 both pass flags first).
    m.insert(
        "clone",
        CLONE_NEW.iter().map(|f| vec![masked(0, *f)]).collect(),
    );
    // A setuid or setgid mode: mode is argument `i` of each.
    let modes = |i: u8| vec![vec![masked(i, S_ISUID)], vec![masked(i, S_ISGID)]];
    m.insert("chmod", modes(1));
    m.insert("fchmod", modes(1));
    m.insert("fchmodat", modes(2));
    m.insert("fchmodat2", modes(2));
    m.insert("creat", modes(1));
    m.insert("mknod", modes(1));
    m.insert("mknodat", modes(2));
    // open(path, flags, mode) / openat(dir, path, flags, mode): the mode only counts with
    // O_CREAT or O_TMPFILE (otherwise the register holds anything).
    let create = |flags: u8, mode: u8| {
        let mut rules = Vec::new();
        for how in [O_CREAT, O_TMPFILE] {
            for bit in [S_ISUID, S_ISGID] {
                rules.push(vec![masked(flags, how), masked(mode, bit)]);
            }
        }
        rules
    };
    m.insert("open", create(1, 2));
    m.insert("openat", create(2, 3));
    m.insert(
        "personality",
        vec![PERSONALITIES
            .iter()
            .map(|p| cond(0, json!("ne"), *p))
            .collect()],
    );
    m.retain(|name, _| known(arch, name));
    m
}

fn filter_doc(rules: Vec<Value>, errno: i32) -> Value {
    json!({"f": {"mismatch_action": "allow", "match_action": {"errno": errno}, "filter": rules}})
}

fn compile_doc(doc: &Value, arch: TargetArch) -> Result<Vec<Insn>, String> {
    let mut map = seccompiler::compile_from_json(doc.to_string().as_bytes(), arch)
        .map_err(|e| format!("compiling the syscall filter: {e}"))?;
    let prog = map
        .remove("f")
        .ok_or_else(|| "compiling the syscall filter: no program".to_owned())?;
    Ok(prog
        .into_iter()
        .map(|i| Insn {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

fn hex(prog: &[Insn]) -> String {
    prog.iter()
        .map(|i| {
            format!(
                "{:016x}",
                (u64::from(i.code) << 48)
                    | (u64::from(i.jt) << 40)
                    | (u64::from(i.jf) << 32)
                    | u64::from(i.k)
            )
        })
        .collect()
}

/// x86_64 only: the x32 ABI reaches the same kernel code under numbers with bit 30 set, which
/// the main program does not list; refuse every one of them (`ENOSYS`, as a kernel without
/// x32 does).
fn x32_guard() -> Vec<Insn> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    vec![
        Insn {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 4,
        },
        Insn {
            code: JEQ_K,
            jt: 0,
            jf: 3,
            k: AUDIT_ARCH_X86_64,
        },
        Insn {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        Insn {
            code: JGE_K,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        },
        Insn {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        Insn {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ]
}

fn build(
    arch_name: &str,
    arch: TargetArch,
    extra: &[String],
    host_pid: bool,
) -> Result<SeccompSpec, String> {
    let mut plain: Vec<&str> = DEFAULT_DENIED.to_vec();
    if host_pid {
        plain.extend_from_slice(HOST_PID_DENIED);
    }
    plain.extend(extra.iter().map(String::as_str));
    plain.retain(|n| known(arch, n));
    plain.sort_unstable();
    plain.dedup();
    let cond = conditional(arch);
    let mut rules: Vec<Value> = plain.iter().map(|n| json!({"syscall": n})).collect();
    for (name, alternatives) in &cond {
        // Refused outright already: its conditions would only add instructions.
        if plain.contains(name) {
            continue;
        }
        for args in alternatives {
            rules.push(json!({"syscall": name, "args": args}));
        }
    }
    let mut programs = vec![compile_doc(&filter_doc(rules, libc::EPERM), arch)?];
    let nosys: Vec<Value> = NOT_IMPLEMENTED
        .iter()
        .filter(|n| known(arch, n) && !plain.contains(n))
        .map(|n| json!({"syscall": n}))
        .collect();
    if !nosys.is_empty() {
        programs.push(compile_doc(&filter_doc(nosys, libc::ENOSYS), arch)?);
    }
    if arch_name == "x86_64" {
        programs.push(x32_guard());
    }
    let mut denied: Vec<String> = plain.iter().map(|s| s.to_string()).collect();
    denied.extend(
        NOT_IMPLEMENTED
            .iter()
            .filter(|n| known(arch, n))
            .map(|s| s.to_string()),
    );
    denied.extend(cond.keys().map(|n| format!("{n} (some arguments)")));
    denied.sort();
    denied.dedup();
    Ok(SeccompSpec {
        arch: arch_name.to_owned(),
        denied,
        programs: programs.iter().map(|p| hex(p)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_for_every_supported_arch() {
        for arch in ARCHES {
            let f = Filters::compile_for(arch, &[]).unwrap();
            for s in [&f.private_pid, &f.host_pid] {
                assert_eq!(s.arch, *arch);
                let progs = s.decode().unwrap();
                assert_eq!(progs.len(), if *arch == "x86_64" { 3 } else { 2 });
                // The first instructions check the architecture.
                assert_eq!(progs[0][0].k, 4, "{arch}: loads seccomp_data.arch");
                for n in ["keyctl", "add_key", "unshare", "mount", "bpf", "clone3"] {
                    assert!(s.denied.iter().any(|d| d == n), "{arch}: {n}");
                }
                assert!(s.denied.iter().any(|d| d == "clone (some arguments)"));
                assert!(s.denied.iter().any(|d| d == "fchmodat (some arguments)"));
            }
            assert!(!f.private_pid.denied.iter().any(|d| d == "ptrace"));
            assert!(f.host_pid.denied.iter().any(|d| d == "ptrace"));
        }
        // Small: a few KiB of BPF per task spec, far below the kernel's 4096 instructions.
        for arch in ARCHES {
            let f = Filters::compile_for(arch, &[]).unwrap();
            let sizes: Vec<usize> = f.host_pid.programs.iter().map(|p| p.len() / 16).collect();
            eprintln!("{arch}: instructions per program {sizes:?}");
            assert!(sizes.iter().sum::<usize>() < 1024, "{arch}: {sizes:?}");
        }
        // x86-only names are skipped on aarch64, not an error.
        let a = Filters::compile_for("aarch64", &[]).unwrap();
        assert!(!a.private_pid.denied.iter().any(|d| d == "iopl"));
        let x = Filters::compile_for("x86_64", &[]).unwrap();
        assert!(x.private_pid.denied.iter().any(|d| d == "iopl"));
    }

    #[test]
    fn extra_names_are_checked_and_added() {
        let f = Filters::compile_for("x86_64", &["ptrace".into(), "keyctl".into()]).unwrap();
        assert!(f.private_pid.denied.iter().any(|d| d == "ptrace"));
        let e =
            Filters::compile_for("x86_64", &["keyctl".into(), "nosuchcall".into()]).unwrap_err();
        assert_eq!(e.field, "[1]");
        assert!(
            e.message
                .contains("\"nosuchcall\" is not a system call on x86_64"),
            "{e}"
        );
        let e = Filters::compile_for("aarch64", &["iopl".into()]).unwrap_err();
        assert_eq!(e.field, "[0]");
        let e = Filters::compile_for("s390x", &[]).unwrap_err();
        assert_eq!(e.field, "");
        assert!(e.message.contains("seccomp = \"off\""), "{e}");
    }

    #[test]
    fn programs_round_trip_and_bad_ones_are_refused() {
        let f = Filters::compile_for("x86_64", &[]).unwrap();
        let progs = f.private_pid.decode().unwrap();
        assert_eq!(progs[2], x32_guard());
        assert_eq!(hex(&progs[0]), f.private_pid.programs[0]);
        for bad in ["", "12", "zz00000000000000"] {
            let s = SeccompSpec {
                programs: vec![bad.into()],
                ..f.private_pid.clone()
            };
            assert!(s.decode().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&f.private_pid).unwrap();
        let back: SeccompSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f.private_pid);
    }
}
