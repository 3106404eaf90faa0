//! The one piece of cgroup handling `cgroups-rs` cannot do for us: a hierarchy rooted at an
//! arbitrary directory.
//!
//! Why hand-written: `cgroups_rs::hierarchies::V2` keeps its root private and fixed at
//! `/sys/fs/cgroup`, and reads its controller list from the real `/sys/fs/cgroup` whatever the
//! root; `V1` finds its controllers in `/proc/self/mountinfo`; and `Cgroup::new` on v2 checks
//! and enables controllers against the real root too (every root controller, at every level).
//! None of that can be pointed at a fake cgroupfs in a temp dir, which is how the unit tests
//! check the exact layouts Nomad creates (a v1 host cannot mount a v2 tree). So this module
//! implements `cgroups_rs::Hierarchy` over a root directory, and creates our own v2 cgroup
//! delegating only the controllers we use. Production uses it with `/sys/fs/cgroup`, so the
//! tested code is the code that runs; every limit, stat, freeze and kill goes through
//! `cgroups-rs` controllers.

use cgroups_rs::cpu::CpuController;
use cgroups_rs::cpuacct::CpuAcctController;
use cgroups_rs::cpuset::CpuSetController;
use cgroups_rs::freezer::FreezerController;
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{Cgroup, Hierarchy, Subsystem};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

/// A cgroup hierarchy (v1: one dir per controller below `root`; v2: `root` itself).
#[derive(Debug, Clone)]
pub struct Rooted {
    root: PathBuf,
    version: Version,
}

impl Rooted {
    pub fn boxed(root: &Path, version: Version) -> Box<dyn Hierarchy> {
        Box::new(Rooted {
            root: root.to_path_buf(),
            version,
        })
    }

    /// A handle on the cgroup at `rel` (below the root, or below each v1 controller dir),
    /// limited to `controllers` on v1.
    pub fn load(root: &Path, version: Version, rel: &Path, controllers: &[&str]) -> Cgroup {
        let hier = Rooted::boxed(root, version);
        match version {
            Version::V2 => Cgroup::load(hier, rel),
            Version::V1 => Cgroup::load_with_specified_controllers(
                hier,
                rel,
                controllers.iter().map(|c| c.to_string()).collect(),
            ),
        }
    }
}

impl Hierarchy for Rooted {
    fn subsystems(&self) -> Vec<Subsystem> {
        let r = &self.root;
        match self.version {
            Version::V2 => {
                let listed = fs::read_to_string(r.join("cgroup.controllers")).unwrap_or_default();
                // The freezer is core v2 functionality (cgroup.freeze), not a listed controller.
                let mut subs = vec![Subsystem::Freezer(FreezerController::new(r.clone(), true))];
                for c in listed.split_whitespace() {
                    subs.extend(match c {
                        "cpu" => Some(Subsystem::Cpu(CpuController::new(r.clone(), true))),
                        "cpuset" => Some(Subsystem::CpuSet(CpuSetController::new(r.clone(), true))),
                        "memory" => Some(Subsystem::Mem(MemController::new(r.clone(), true))),
                        "pids" => Some(Subsystem::Pid(PidController::new(r.clone(), true))),
                        _ => None,
                    });
                }
                subs
            }
            Version::V1 => {
                let mut subs = Vec::new();
                let dir = |c: &str| Some(r.join(c)).filter(|d| d.is_dir());
                if let Some(d) = dir("memory") {
                    subs.push(Subsystem::Mem(MemController::new(d, false)));
                }
                if let Some(d) = dir("cpu") {
                    subs.push(Subsystem::Cpu(CpuController::new(d, false)));
                }
                if let Some(d) = dir("cpuacct") {
                    subs.push(Subsystem::CpuAcct(CpuAcctController::new(d)));
                }
                if let Some(d) = dir("cpuset") {
                    subs.push(Subsystem::CpuSet(CpuSetController::new(d, false)));
                }
                if let Some(d) = dir("pids") {
                    subs.push(Subsystem::Pid(PidController::new(d, false)));
                }
                if let Some(d) = dir("freezer") {
                    subs.push(Subsystem::Freezer(FreezerController::new(d, false)));
                }
                subs
            }
        }
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn root_control_group(&self) -> Cgroup {
        Cgroup::load(Box::new(self.clone()), "")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        Cgroup::load(Box::new(self.clone()), parent)
    }

    fn v2(&self) -> bool {
        self.version == Version::V2
    }
}

/// Creates the v2 cgroup `root/rel` and delegates `controllers` down to it (each level's
/// `cgroup.subtree_control`, best effort: a controller the parent lacks is simply not
/// delegated, and the limits that need it are reported when they are written).
pub fn create_v2(root: &Path, rel: &Path, controllers: &[&str]) -> io::Result<()> {
    let enable: String = controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut level = root.to_path_buf();
    for part in rel.components() {
        let _ = fs::write(level.join("cgroup.subtree_control"), &enable);
        level.push(part);
        match fs::create_dir(&level) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", level.display()),
                ))
            }
        }
    }
    Ok(())
}
