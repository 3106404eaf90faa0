//! Per-task cgroups on v1 and v2, through `cgroups-rs`: adopt the cgroups Nomad made for the
//! task or create ours, apply limits, hand the runtime the `cgroup.procs` files to join before
//! exec (the shim itself stays outside), read usage and OOM kills, kill everything inside,
//! remove what we created.
//!
//! - v2: Nomad's scope when it passed one ([`nomad`]), else ours, `elide.slice/<task key>`.
//! - v1: per controller, the cgroup Nomad >= 1.7 made (freezer, cpu, memory), else ours,
//!   `nomad-elide/<task key>` (memory, cpu, cpuacct, pids, freezer); plus Nomad's cpuset,
//!   joined only.
//!
//! [`hierarchy`] is the small hand-written part (a hierarchy at any root; see why there).

mod hierarchy;
mod nomad;

pub use hierarchy::{detect, Version};

use crate::spec::{ResourceSpec, TaskSpec};
use cgroups_rs::cpu::CpuController;
use cgroups_rs::cpuset::CpuSetController;
use cgroups_rs::freezer::FreezerController;
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{Cgroup, CgroupPid, ControllIdentifier, Controller, MaxValue, Subsystem};
use hierarchy::Rooted;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// v1 controllers a task gets (each its own hierarchy on most hosts).
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer"];
/// v2 controllers delegated down to our own task cgroups.
const V2_CONTROLLERS: &[&str] = &["memory", "cpu", "pids"];

/// Cumulative usage counters; `None` = not measured here.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub cpu_total_ns: Option<u64>,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
    pub memory_rss: Option<u64>,
    pub memory_cache: Option<u64>,
    pub memory_swap: Option<u64>,
    pub memory_usage: Option<u64>,
    pub memory_max_usage: Option<u64>,
}

/// One cgroup the runtime joins: v2 has one for everything, v1 one per controller.
#[derive(Debug)]
struct Member {
    cgroup: Cgroup,
    dir: PathBuf,
    /// Created by us and so removed by us; Nomad's are never removed here.
    owned: bool,
}

#[derive(Debug)]
pub struct TaskCgroup {
    version: Version,
    members: Vec<Member>,
    /// The counter files, opened at the first sample ([`TaskCgroup::counters`]).
    counter_files: std::sync::Mutex<Option<crate::usage::CounterReader>>,
    /// The cpuset is this task's alone, so [`TaskCgroup::apply`] writes its `cpuset.cpus`:
    /// always on v2 (the task's scope), and on v1 the cpuset Nomad >= 1.7 made for reserved
    /// cores, `cpuset/<parent>/reserve/<alloc>.<task>` (made with only `cpuset.mems`: joining
    /// it before `cpuset.cpus` is written fails with ENOSPC). Never a shared partition.
    task_cpuset: bool,
}

/// runc's conversion of cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000). Shares
/// are clamped to at least 2 first: below that the formula underflows (Nomad #26081).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

use crate::usage::keyed;

fn io_err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl TaskCgroup {
    /// The task's cgroup under the host's cgroup root, if the host has one we can use.
    pub fn for_task(spec: &TaskSpec) -> Option<io::Result<TaskCgroup>> {
        let root = Path::new(DEFAULT_ROOT);
        let version = detect(root)?;
        Some(Self::create_for(root, version, spec))
    }

    /// [`TaskCgroup::create`] with the names of `spec`'s task.
    pub fn create_for(root: &Path, version: Version, spec: &TaskSpec) -> io::Result<TaskCgroup> {
        let key = crate::paths::task_key(&spec.task_id);
        let own = match version {
            Version::V2 => format!("elide.slice/{key}"),
            Version::V1 => format!("nomad-elide/{key}"),
        };
        let alloc_task = format!("{}.{}", spec.alloc_id, spec.task_name);
        Self::create(
            root,
            version,
            &own,
            &spec.resources.nomad_cgroup,
            &alloc_task,
        )
    }

    /// Creates the task's cgroup `own` (below the root, or below each v1 controller), or
    /// adopts what Nomad made: `nomad_cgroup` is `LinuxResources.cpuset_cgroup`, `alloc_task`
    /// `<alloc id>.<task name>`.
    pub fn create(
        root: &Path,
        version: Version,
        own: &str,
        nomad_cgroup: &str,
        alloc_task: &str,
    ) -> io::Result<TaskCgroup> {
        let handed = nomad::handed_over(root, nomad_cgroup);
        let own = Path::new(own);
        let mut members = Vec::new();
        let mut task_cpuset = version == Version::V2;
        match version {
            Version::V2 => {
                let (rel, owned) = match handed {
                    Some(rel) => (rel, false),
                    None => {
                        hierarchy::create_v2(root, own, V2_CONTROLLERS)?;
                        (own.to_path_buf(), true)
                    }
                };
                members.push(Member {
                    cgroup: Rooted::load(root, version, &rel, &[]),
                    dir: root.join(&rel),
                    owned,
                });
            }
            Version::V1 => {
                let client = handed
                    .as_deref()
                    .map(|cpuset| nomad::v1_client_cgroups(root, cpuset, alloc_task))
                    .unwrap_or_default();
                for c in V1_CONTROLLERS {
                    if !root.join(c).is_dir() {
                        continue;
                    }
                    let adopted = client.iter().find(|(n, _)| n == c).map(|(_, r)| r);
                    let rel = adopted.cloned().unwrap_or_else(|| own.to_path_buf());
                    let cgroup = Rooted::load(root, version, &rel, &[c]);
                    let dir = root.join(c).join(&rel);
                    if adopted.is_none() {
                        // cgroups-rs only logs a failed mkdir on v1: check the result here.
                        cgroup
                            .create()
                            .map_err(|e| io_err(&dir.display().to_string(), e))?;
                        if !dir.is_dir() {
                            return Err(io_err(&dir.display().to_string(), "cannot create"));
                        }
                    }
                    members.push(Member {
                        cgroup,
                        dir,
                        owned: adopted.is_none(),
                    });
                }
                // Nomad's cpuset (shared or reserved cores): joined; its cpuset.cpus is
                // written only when it is the task's own (Nomad >= 1.7's reserve/<alloc>.<task>).
                if let Some(rel) = handed {
                    task_cpuset = nomad::v1_reserved_task_cpuset(&rel, alloc_task);
                    let controller = rel.iter().next().and_then(|c| c.to_str()).unwrap_or("");
                    let inner: PathBuf = rel.iter().skip(1).collect();
                    members.push(Member {
                        cgroup: Rooted::load(root, version, &inner, &[controller]),
                        dir: root.join(&rel),
                        owned: false,
                    });
                }
            }
        }
        Ok(TaskCgroup {
            version,
            members,
            counter_files: Default::default(),
            task_cpuset,
        })
    }

    /// Every distinct directory the runtime joins (co-mounted v1 controllers count once).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut out = Vec::new();
        for m in &self.members {
            let canonical = m.dir.canonicalize().unwrap_or_else(|_| m.dir.clone());
            if !seen.contains(&canonical) {
                seen.push(canonical);
                out.push(m.dir.clone());
            }
        }
        out
    }

    /// The dirs, comma-separated (the state file's and `status`'s `cgroup`).
    pub fn describe(&self) -> String {
        self.dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cgroup (and its dir) holding controller `T`.
    fn with<'a, T>(&'a self) -> Option<(&'a T, &'a Path)>
    where
        &'a T: From<&'a Subsystem>,
        T: Controller + ControllIdentifier,
    {
        self.members
            .iter()
            .find_map(|m| Some((m.cgroup.controller_of::<T>()?, m.dir.as_path())))
    }

    /// Applies memory/cpu/cpuset/pids limits. Returns a note for each limit not applied.
    pub fn apply(&self, r: &ResourceSpec) -> Vec<String> {
        let v2 = self.version == Version::V2;
        let mut notes = Vec::new();
        // Bytes as the cgroup files take them (i64), or None when they do not fit.
        let mib = |m: u64| crate::spec::mib_to_bytes(m).and_then(|b| i64::try_from(b).ok());
        if let Some((_, d)) = self.with::<MemController>() {
            if r.memory_max_mb > 0 && mib(r.memory_max_mb).is_none() {
                let file = if v2 {
                    "memory.max"
                } else {
                    "memory.limit_in_bytes"
                };
                notes.push(format!(
                    "cannot set {file} in {}: {} MiB is too large to express in bytes",
                    d.display(),
                    r.memory_max_mb
                ));
            }
        }
        // v1 files a kernel does not have (memsw without swap accounting) are skipped.
        let mut set =
            |dir: &Path, file: &str, value: String, result: cgroups_rs::error::Result<()>| {
                if let Err(e) = result {
                    notes.push(format!(
                        "cannot set {file}={value} in {}: {e}",
                        dir.display()
                    ));
                }
            };
        let present = |dir: &Path, file: &str| v2 || dir.join(file).exists();
        if let Some((mem, d)) = self.with::<MemController>() {
            let max = mib(r.memory_max_mb);
            if let Some(max) = max.filter(|_| r.memory_max_mb > 0) {
                let (limit, swap, soft) = if v2 {
                    ("memory.max", "memory.swap.max", "memory.low")
                } else {
                    (
                        "memory.limit_in_bytes",
                        "memory.memsw.limit_in_bytes",
                        "memory.soft_limit_in_bytes",
                    )
                };
                if present(d, limit) {
                    set(d, limit, max.to_string(), mem.set_limit(max));
                }
                // No swap, like Nomad's exec driver (v1: memory+swap = memory).
                let swap_limit = if v2 { 0 } else { max };
                if present(d, swap) {
                    set(
                        d,
                        swap,
                        swap_limit.to_string(),
                        mem.set_memswap_limit(swap_limit),
                    );
                }
                if !v2 && present(d, "memory.swappiness") {
                    set(d, "memory.swappiness", "0".into(), mem.set_swappiness(0));
                }
                if r.memory_mb > 0 && r.memory_mb < r.memory_max_mb && present(d, soft) {
                    if let Some(low) = mib(r.memory_mb) {
                        set(d, soft, low.to_string(), mem.set_soft_limit(low));
                    }
                }
            }
        }
        if let Some((cpu, d)) = self.with::<CpuController>() {
            if r.cpu_shares > 0 {
                let (file, value) = if v2 {
                    ("cpu.weight", shares_to_weight(r.cpu_shares))
                } else {
                    ("cpu.shares", r.cpu_shares.max(2))
                };
                if present(d, file) {
                    set(d, file, value.to_string(), cpu.set_shares(value));
                }
            }
        }
        // The task's own cpuset takes the cores (v2: its scope; v1: Nomad >= 1.7's reserved
        // cpuset). Nomad's shared v1 partitions and 1.6's cpusets are joined as they are.
        if self.task_cpuset && !r.cpuset_cpus.is_empty() {
            if let Some((cpuset, d)) = self.with::<CpuSetController>() {
                set(
                    d,
                    "cpuset.cpus",
                    r.cpuset_cpus.clone(),
                    cpuset.set_cpus(&r.cpuset_cpus),
                );
            }
        }
        if let Some((pids, d)) = self.with::<PidController>() {
            if r.pids_limit > 0 && present(d, "pids.max") {
                let n = r.pids_limit as i64;
                set(
                    d,
                    "pids.max",
                    n.to_string(),
                    pids.set_pid_max(MaxValue::Value(n)),
                );
            }
        }
        notes
    }

    /// `cgroup.procs` of every dir, prepared before fork so the child can join with raw
    /// `open`/`write` (no allocation between fork and exec).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs()
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Pids inside the task cgroup.
    pub fn procs(&self) -> Vec<i32> {
        self.members
            .first()
            .map(|m| pids(m.cgroup.procs()))
            .unwrap_or_default()
    }

    /// Kills every process in the cgroup so forks cannot escape: v2 `cgroup.kill` (or a
    /// SIGKILL loop on kernels before 5.14), v1 freeze → SIGKILL all → thaw.
    pub fn kill_all(&self) {
        let sigkill = |pids: Vec<i32>| {
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        };
        match self.version {
            Version::V2 => {
                let Some(m) = self.members.first() else {
                    return;
                };
                if m.cgroup.kill().is_err() {
                    sigkill(self.procs());
                }
            }
            Version::V1 => {
                let freezer = self
                    .members
                    .iter()
                    .find_map(|m| Some((m.cgroup.controller_of::<FreezerController>()?, m)));
                match freezer {
                    Some((f, m)) => {
                        let _ = f.freeze();
                        sigkill(pids(m.cgroup.procs()));
                        let _ = f.thaw();
                    }
                    None => sigkill(self.procs()),
                }
            }
        }
    }

    /// Kernel OOM kills so far (v2 `memory.events` oom_kill; v1 `memory.oom_control`
    /// oom_kill, kernels >= 4.13).
    pub fn oom_kills(&self) -> u64 {
        let Some((mem, d)) = self.with::<MemController>() else {
            return 0;
        };
        match self.version {
            // cgroups-rs 0.3 has no reader for memory.events.
            Version::V2 => std::fs::read_to_string(d.join("memory.events"))
                .ok()
                .and_then(|t| keyed(&t, "oom_kill"))
                .unwrap_or(0),
            Version::V1 => mem.memory_stat().oom_control.oom_kill,
        }
    }

    /// Cumulative usage of everything in the cgroup.
    pub fn counters(&self) -> Counters {
        // Only the files a sample needs, opened once, each read with one pread
        // (crate::usage): this runs every second for every task.
        let mut reader = crate::sync::lock(&self.counter_files);
        if reader.is_none() {
            *reader = crate::usage::CounterReader::open(self.version == Version::V2, &self.dirs());
        }
        reader.as_mut().map(|r| r.counters()).unwrap_or_default()
    }

    /// Removes the cgroups we created (after everything inside is gone); never Nomad's.
    pub fn remove(&self) {
        *crate::sync::lock(&self.counter_files) = None;
        for m in self.members.iter().rev().filter(|m| m.owned) {
            let _ = m.cgroup.delete();
        }
    }
}

/// Who a task is, to find the cgroups it may have left behind.
#[derive(Debug, Clone, Copy)]
pub struct TaskNames<'a> {
    pub task_id: &'a str,
    pub alloc_id: &'a str,
    pub task_name: &'a str,
}

impl TaskNames<'_> {
    /// Whether a cgroup dir's name is this task's: ours (the task key) or a cgroup Nomad
    /// made for exactly this task (`<alloc>.<task>.scope` on v2, `<alloc>.<task>` on v1
    /// since Nomad 1.7, `<alloc>-<task>` for 1.6's reserved cpusets). Nomad's shared
    /// cpusets (`shared`, `share`) hold every task of the node and never match.
    fn owns(&self, dir_name: &str) -> bool {
        let at = format!("{}.{}", self.alloc_id, self.task_name);
        let nomads = !self.alloc_id.is_empty()
            && !self.task_name.is_empty()
            && (dir_name == format!("{at}.scope")
                || dir_name == at
                || dir_name == format!("{}-{}", self.alloc_id, self.task_name));
        nomads || dir_name == crate::paths::task_key(self.task_id)
    }
}

impl TaskCgroup {
    /// The cgroups at `root` a task whose shim died may have left: our own
    /// (`elide.slice/<key>`, `<controller>/nomad-elide/<key>`) and those its state file
    /// recorded (`recorded`, the comma-separated `cgroup` field) — but only a recorded dir
    /// whose name is this task's (see [`TaskNames`]) and whose canonical path lies under the
    /// canonical root: a stale or tampered state file can never name another cgroup. Nomad's
    /// are killed but never removed. None when none exists.
    pub fn leftovers(
        root: &Path,
        task: TaskNames<'_>,
        recorded: Option<&str>,
    ) -> Option<TaskCgroup> {
        let version = detect(root)?;
        let real_root = root.canonicalize().ok()?;
        let key = crate::paths::task_key(task.task_id);
        let own: Vec<PathBuf> = match version {
            Version::V2 => vec![PathBuf::from(format!("elide.slice/{key}"))],
            Version::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| PathBuf::from(format!("{c}/nomad-elide/{key}")))
                .collect(),
        };
        let recorded_rels = recorded
            .unwrap_or("")
            .split(',')
            .filter_map(|d| Some(Path::new(d.trim()).strip_prefix(root).ok()?.to_path_buf()))
            .filter(|rel| {
                rel.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
                    && rel
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| task.owns(n))
            });
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut members = Vec::new();
        for rel in own.iter().cloned().chain(recorded_rels) {
            let Ok(real) = root.join(&rel).canonicalize() else {
                continue;
            };
            if !real.starts_with(&real_root) || !real.is_dir() || seen.contains(&real) {
                continue;
            }
            seen.push(real);
            let owned = own.contains(&rel);
            let cgroup = match version {
                Version::V2 => Rooted::load(root, version, &rel, &[]),
                Version::V1 => {
                    let controller = rel.iter().next().and_then(|c| c.to_str()).unwrap_or("");
                    let inner: PathBuf = rel.iter().skip(1).collect();
                    Rooted::load(root, version, &inner, &[controller])
                }
            };
            members.push(Member {
                cgroup,
                dir: root.join(&rel),
                owned,
            });
        }
        (!members.is_empty()).then_some(TaskCgroup {
            version,
            members,
            counter_files: Default::default(),
            task_cpuset: false,
        })
    }

    /// Kills everything inside ([`TaskCgroup::kill_all`]), waits up to `wait` for every dir
    /// to empty, then removes the ones we created. Returns the pids that were inside, and
    /// the dirs of ours that could not be removed.
    pub fn kill_and_remove(&self, wait: std::time::Duration) -> (Vec<i32>, Vec<PathBuf>) {
        let inside = |m: &Member| pids(m.cgroup.procs());
        let mut killed: Vec<i32> = self.members.iter().flat_map(inside).collect();
        killed.sort_unstable();
        killed.dedup();
        let deadline = std::time::Instant::now() + wait;
        loop {
            self.kill_all();
            let left = self.members.iter().any(|m| !inside(m).is_empty());
            if !left || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.remove();
        let kept = self
            .members
            .iter()
            .filter(|m| m.owned && m.dir.exists())
            .map(|m| m.dir.clone())
            .collect();
        (killed, kept)
    }
}

fn pids(p: Vec<CgroupPid>) -> Vec<i32> {
    p.into_iter().map(|p| p.pid as i32).collect()
}

#[cfg(test)]
mod tests;
