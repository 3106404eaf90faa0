//! Per-task cgroups on v1 and v2: create (or adopt Nomad's), apply limits, place the runtime,
//! read stats and OOM kills, kill everything inside, remove.
//!
//! Hand-written file operations rather than cgroups-rs: the few files involved are the same on
//! every kernel we target, both Nomad layouts (1.6 hands over only a cpuset on v1 / a scope on
//! v2; >= 1.7 creates the task cgroup itself) need adopt-not-create logic cgroups-rs does not
//! model, and a plain root path lets the v2 code be tested against a fake cgroupfs.

use crate::spec::ResourceSpec;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Which hierarchy is mounted at `root`.
pub fn detect(root: &Path) -> Option<Version> {
    if root.join("cgroup.controllers").exists() {
        Some(Version::V2)
    } else if root.join("memory").is_dir() {
        Some(Version::V1)
    } else {
        None
    }
}

/// v1 controllers we manage (each its own hierarchy).
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer"];

#[derive(Debug, Clone, PartialEq)]
pub struct TaskCgroup {
    pub version: Version,
    /// v2: one dir. v1: one dir per controller, plus Nomad's cpuset dir (joined, not owned).
    pub dirs: Vec<PathBuf>,
    /// Dirs we created and must remove (never Nomad's).
    pub owned: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu_usage_ns: Option<u64>,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
    pub memory_usage: Option<u64>,
    pub memory_max_usage: Option<u64>,
    pub memory_rss: Option<u64>,
    pub memory_cache: Option<u64>,
    pub memory_swap: Option<u64>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// runc's conversion of cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

impl TaskCgroup {
    /// Creates the task's cgroup named `name` (e.g. "elide/<task key>"), or adopts
    /// `nomad_cgroup` when Nomad made one for the task (v2, or >= 1.7).
    pub fn create(
        root: &Path,
        version: Version,
        name: &str,
        nomad_cgroup: &str,
    ) -> io::Result<Self> {
        match version {
            Version::V2 => {
                let nomad = Path::new(nomad_cgroup);
                if !nomad_cgroup.is_empty() && nomad.starts_with(root) && nomad.is_dir() {
                    return Ok(TaskCgroup {
                        version,
                        dirs: vec![nomad.to_path_buf()],
                        owned: vec![],
                    });
                }
                let dir = root.join(name);
                if let Some(parent) = dir.parent() {
                    fs::create_dir_all(parent)?;
                    // Delegate the controllers we use to the task level.
                    let _ = write(&parent.join("cgroup.subtree_control"), "+memory +cpu +pids");
                    if let Some(gp) = parent.parent() {
                        if gp.starts_with(root) && gp != root {
                            let _ = write(&gp.join("cgroup.subtree_control"), "+memory +cpu +pids");
                        }
                    }
                    let _ = write(&root.join("cgroup.subtree_control"), "+memory +cpu +pids");
                }
                fs::create_dir_all(&dir)?;
                Ok(TaskCgroup {
                    version,
                    dirs: vec![dir.clone()],
                    owned: vec![dir],
                })
            }
            Version::V1 => {
                let mut dirs = Vec::new();
                for c in V1_CONTROLLERS {
                    let base = root.join(c);
                    if !base.is_dir() {
                        continue;
                    }
                    let dir = base.join(name);
                    fs::create_dir_all(&dir)?;
                    // cpu and cpuacct are often one co-mounted hierarchy behind two names.
                    let canonical = dir.canonicalize().unwrap_or(dir.clone());
                    if !dirs
                        .iter()
                        .any(|d: &PathBuf| d.canonicalize().ok().as_ref() == Some(&canonical))
                    {
                        dirs.push(dir);
                    }
                }
                let owned = dirs.clone();
                // Nomad 1.6 on v1 hands over a cpuset cgroup (shared or reserved cores): join it.
                let nomad = Path::new(nomad_cgroup);
                if !nomad_cgroup.is_empty() && nomad.starts_with(root) && nomad.is_dir() {
                    dirs.push(nomad.to_path_buf());
                }
                Ok(TaskCgroup {
                    version,
                    dirs,
                    owned,
                })
            }
        }
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        match self.version {
            Version::V2 => self.dirs.first().map(PathBuf::as_path),
            Version::V1 => self
                .dirs
                .iter()
                .find(|d| {
                    d.components().any(|c| {
                        c.as_os_str()
                            .to_str()
                            .is_some_and(|n| n.split(',').any(|x| x == controller))
                    })
                })
                .map(PathBuf::as_path),
        }
    }

    /// Applies memory/cpu/pids limits. Returns a note for each limit the kernel refused.
    pub fn apply(&self, r: &ResourceSpec) -> Vec<String> {
        let mut notes = Vec::new();
        let mut set = |dir: Option<&Path>, file: &str, value: String| {
            if let Some(d) = dir {
                let p = d.join(file);
                if p.exists() || self.version == Version::V2 {
                    if let Err(e) = write(&p, &value) {
                        notes.push(format!("cannot set {file}={value}: {e}"));
                    }
                }
            }
        };
        let mib = |m: u64| (m * 1024 * 1024).to_string();
        match self.version {
            Version::V2 => {
                let d = self.dir_of("memory");
                if r.memory_max_mb > 0 {
                    set(d, "memory.max", mib(r.memory_max_mb));
                    set(d, "memory.swap.max", "0".into());
                    if r.memory_mb > 0 && r.memory_mb < r.memory_max_mb {
                        set(d, "memory.low", mib(r.memory_mb));
                    }
                }
                if r.cpu_shares > 0 {
                    set(d, "cpu.weight", shares_to_weight(r.cpu_shares).to_string());
                }
                if !r.cpuset_cpus.is_empty() {
                    set(d, "cpuset.cpus", r.cpuset_cpus.clone());
                }
                if r.pids_limit > 0 {
                    set(d, "pids.max", r.pids_limit.to_string());
                }
            }
            Version::V1 => {
                let m = self.dir_of("memory");
                if r.memory_max_mb > 0 {
                    set(m, "memory.limit_in_bytes", mib(r.memory_max_mb));
                    // No swap, like Nomad's exec driver.
                    set(m, "memory.memsw.limit_in_bytes", mib(r.memory_max_mb));
                    set(m, "memory.swappiness", "0".into());
                    if r.memory_mb > 0 && r.memory_mb < r.memory_max_mb {
                        set(m, "memory.soft_limit_in_bytes", mib(r.memory_mb));
                    }
                }
                if r.cpu_shares > 0 {
                    set(
                        self.dir_of("cpu"),
                        "cpu.shares",
                        r.cpu_shares.max(2).to_string(),
                    );
                }
                if r.pids_limit > 0 {
                    set(self.dir_of("pids"), "pids.max", r.pids_limit.to_string());
                }
            }
        }
        notes
    }

    /// `cgroup.procs` of every dir, prepared before fork so the child can join with raw
    /// `open`/`write` (no allocation between fork and exec).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Moves `pid` into the cgroup (from outside the child).
    pub fn add_pid(&self, pid: i32) -> io::Result<()> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Pids inside the task cgroup.
    pub fn procs(&self) -> Vec<i32> {
        let Some(d) = self.dirs.first() else {
            return vec![];
        };
        fs::read_to_string(d.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills every process in the cgroup so forks cannot escape: v2 `cgroup.kill` (or a
    /// SIGKILL loop on kernels without it), v1 freeze → SIGKILL all → thaw.
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
                let Some(d) = self.dirs.first() else { return };
                if write(&d.join("cgroup.kill"), "1").is_err() {
                    sigkill(self.procs());
                }
            }
            Version::V1 => {
                let freezer = self.dir_of("freezer").map(Path::to_path_buf);
                if let Some(f) = &freezer {
                    let _ = write(&f.join("freezer.state"), "FROZEN");
                }
                let pids = freezer
                    .as_ref()
                    .and_then(|f| fs::read_to_string(f.join("cgroup.procs")).ok())
                    .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
                    .unwrap_or_else(|| self.procs());
                sigkill(pids);
                if let Some(f) = &freezer {
                    let _ = write(&f.join("freezer.state"), "THAWED");
                }
            }
        }
    }

    /// Kernel OOM kills so far (v2 `memory.events` oom_kill; v1 `memory.oom_control`
    /// oom_kill on kernels >= 4.13, else whether the limit was ever hit hard).
    pub fn oom_kills(&self) -> u64 {
        let Some(d) = self.dir_of("memory") else {
            return 0;
        };
        match self.version {
            Version::V2 => keyed(&d.join("memory.events"), "oom_kill").unwrap_or(0),
            Version::V1 => keyed(&d.join("memory.oom_control"), "oom_kill").unwrap_or(0),
        }
    }

    pub fn stats(&self) -> CgroupStats {
        let mut s = CgroupStats::default();
        match self.version {
            Version::V2 => {
                let Some(d) = self.dirs.first() else { return s };
                let cpu = d.join("cpu.stat");
                s.cpu_usage_ns = keyed(&cpu, "usage_usec").map(|u| u * 1000);
                s.cpu_user_ns = keyed(&cpu, "user_usec").map(|u| u * 1000);
                s.cpu_system_ns = keyed(&cpu, "system_usec").map(|u| u * 1000);
                s.throttled_periods = keyed(&cpu, "nr_throttled");
                s.throttled_ns = keyed(&cpu, "throttled_usec").map(|u| u * 1000);
                s.memory_usage = read_u64(&d.join("memory.current"));
                s.memory_max_usage = read_u64(&d.join("memory.peak"));
                s.memory_rss = keyed(&d.join("memory.stat"), "anon");
                s.memory_cache = keyed(&d.join("memory.stat"), "file");
                s.memory_swap = read_u64(&d.join("memory.swap.current"));
            }
            Version::V1 => {
                let ticks_ns = 1_000_000_000 / clock_ticks();
                // cpuacct is its own hierarchy on some hosts, co-mounted with cpu on others.
                if let Some(a) = self.dir_of("cpuacct").or(self.dir_of("cpu")) {
                    s.cpu_usage_ns = read_u64(&a.join("cpuacct.usage"));
                    s.cpu_user_ns = keyed(&a.join("cpuacct.stat"), "user").map(|t| t * ticks_ns);
                    s.cpu_system_ns =
                        keyed(&a.join("cpuacct.stat"), "system").map(|t| t * ticks_ns);
                }
                if let Some(c) = self.dir_of("cpu") {
                    s.throttled_periods = keyed(&c.join("cpu.stat"), "nr_throttled");
                    s.throttled_ns = keyed(&c.join("cpu.stat"), "throttled_time");
                }
                if let Some(m) = self.dir_of("memory") {
                    s.memory_usage = read_u64(&m.join("memory.usage_in_bytes"));
                    s.memory_max_usage = read_u64(&m.join("memory.max_usage_in_bytes"));
                    s.memory_rss = keyed(&m.join("memory.stat"), "total_rss");
                    s.memory_cache = keyed(&m.join("memory.stat"), "total_cache");
                    s.memory_swap = keyed(&m.join("memory.stat"), "total_swap");
                }
            }
        }
        s
    }

    /// Removes the cgroups we created (after everything inside is gone).
    pub fn remove(&self) {
        for d in self.owned.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        d
    }

    #[test]
    fn detects_versions() {
        let v2 = fake_v2();
        assert_eq!(detect(v2.path()), Some(Version::V2));
        let v1 = tempfile::tempdir().unwrap();
        fs::create_dir(v1.path().join("memory")).unwrap();
        assert_eq!(detect(v1.path()), Some(Version::V1));
        assert_eq!(detect(tempfile::tempdir().unwrap().path()), None);
    }

    #[test]
    fn v2_limits_stats_and_oom_on_a_fake_root() {
        let root = fake_v2();
        let cg = TaskCgroup::create(root.path(), Version::V2, "elide.slice/abc", "").unwrap();
        let d = &cg.dirs[0];
        assert!(d.ends_with("elide.slice/abc"));
        let notes = cg.apply(&ResourceSpec {
            memory_mb: 64,
            memory_max_mb: 128,
            cpu_shares: 500,
            cpuset_cpus: "0".into(),
            pids_limit: 50,
            ..Default::default()
        });
        assert!(notes.is_empty(), "{notes:?}");
        let rd = |f: &str| fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(rd("memory.max"), (128u64 << 20).to_string());
        assert_eq!(rd("memory.low"), (64u64 << 20).to_string());
        assert_eq!(rd("memory.swap.max"), "0");
        assert_eq!(rd("cpu.weight"), shares_to_weight(500).to_string());
        assert_eq!(rd("pids.max"), "50");
        assert_eq!(rd("cpuset.cpus"), "0");
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 1);
        fs::write(d.join("cpu.stat"), "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\nnr_periods 4\nnr_throttled 2\nthrottled_usec 30\n").unwrap();
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        fs::write(d.join("memory.stat"), "anon 1024\nfile 2048\n").unwrap();
        let s = cg.stats();
        assert_eq!(s.cpu_usage_ns, Some(2_000_000));
        assert_eq!(s.cpu_user_ns, Some(1_500_000));
        assert_eq!(s.throttled_periods, Some(2));
        assert_eq!(s.throttled_ns, Some(30_000));
        assert_eq!(s.memory_usage, Some(4096));
        assert_eq!(s.memory_rss, Some(1024));
        assert_eq!(s.memory_cache, Some(2048));
        assert_eq!(s.memory_swap, None);
        fs::write(d.join("cgroup.procs"), "12\n34\n").unwrap();
        assert_eq!(cg.procs(), vec![12, 34]);
        assert_eq!(cg.procs_files().len(), 1);
    }

    #[test]
    fn v2_adopts_the_cgroup_nomad_made_and_never_removes_it() {
        let root = fake_v2();
        let nomad = root.path().join("nomad.slice/share.slice/a1.t.scope");
        fs::create_dir_all(&nomad).unwrap();
        let cg = TaskCgroup::create(
            root.path(),
            Version::V2,
            "elide.slice/x",
            nomad.to_str().unwrap(),
        )
        .unwrap();
        assert_eq!(cg.dirs, vec![nomad.clone()]);
        assert!(cg.owned.is_empty());
        cg.remove();
        assert!(nomad.is_dir());
    }

    #[test]
    fn v1_separate_cpuacct_hierarchy_limits_and_stats_on_a_fake_root() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
            fs::create_dir(root.path().join(c)).unwrap();
        }
        assert_eq!(detect(root.path()), Some(Version::V1));
        let cg = TaskCgroup::create(root.path(), Version::V1, "nomad-elide/k", "").unwrap();
        assert_eq!(cg.dirs.len(), 5);
        let dir = |c: &str| root.path().join(c).join("nomad-elide/k");
        for (c, f) in [
            ("cpu", "cpu.shares"),
            ("memory", "memory.limit_in_bytes"),
            ("pids", "pids.max"),
        ] {
            fs::write(dir(c).join(f), "").unwrap();
        }
        let notes = cg.apply(&ResourceSpec {
            memory_mb: 64,
            memory_max_mb: 64,
            cpu_shares: 500,
            pids_limit: 10,
            ..Default::default()
        });
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            fs::read_to_string(dir("cpu").join("cpu.shares")).unwrap(),
            "500"
        );
        assert_eq!(
            fs::read_to_string(dir("memory").join("memory.limit_in_bytes")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            fs::read_to_string(dir("pids").join("pids.max")).unwrap(),
            "10"
        );
        fs::write(dir("cpuacct").join("cpuacct.usage"), "5000\n").unwrap();
        fs::write(dir("cpuacct").join("cpuacct.stat"), "user 3\nsystem 1\n").unwrap();
        fs::write(
            dir("memory").join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let s = cg.stats();
        assert_eq!(s.cpu_usage_ns, Some(5000));
        assert!(s.cpu_user_ns.unwrap() > 0 && s.cpu_system_ns.unwrap() > 0);
        assert_eq!(cg.oom_kills(), 2);
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(1000) * 2 / 2, shares_to_weight(1000));
    }
}
