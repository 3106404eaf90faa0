//! Recognising the cgroups Nomad made for a task, so they are adopted, never duplicated. What
//! Nomad passes is `LinuxResources.cpuset_cgroup` (layouts from Nomad's
//! `client/lib/cgroupslib`; docs/executor.md, "Cgroups"):
//!
//! | Nomad | v2 | v1 |
//! |---|---|---|
//! | 1.6 | `nomad.slice/<alloc>.<task>.scope` | a cpuset only: `cpuset/nomad/shared` or `…/reserved/<alloc>-<task>` |
//! | ≥ 1.7 | `nomad.slice/{share,reserve}.slice/<alloc>.<task>.scope` | the cpuset `cpuset/nomad/{share,reserve}[/<alloc>.<task>]`; the client also made `{freezer,cpu,memory}/nomad/<alloc>.<task>` |

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// The v1 controllers whose task cgroups Nomad >= 1.7 creates next to the cpuset.
pub const V1_CLIENT_CONTROLLERS: &[&str] = &["freezer", "cpu", "memory"];

/// `nomad_cgroup` relative to `root`, when it names an existing directory inside it. Checked
/// on the canonical paths (symlinks and `..` resolved), not on the text: nothing Nomad passes
/// can point us outside the cgroup tree. What comes back is where the path really leads.
pub fn handed_over(root: &Path, nomad_cgroup: &str) -> Option<PathBuf> {
    if nomad_cgroup.is_empty() || !Path::new(nomad_cgroup).starts_with(root) {
        return None;
    }
    let real_root = root.canonicalize().ok()?;
    let real = Path::new(nomad_cgroup).canonicalize().ok()?;
    let rel = real.strip_prefix(&real_root).ok()?;
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && rel.components().next().is_some() && real.is_dir()).then(|| rel.to_path_buf())
}

/// Nomad >= 1.7 on v1: the task's freezer, cpu and memory cgroups the client made next to the
/// cpuset it passed (`cpuset/<parent>/{share,reserve}[/<alloc>.<task>]` →
/// `<controller>/<parent>/<alloc>.<task>`), as (controller, path inside the controller) for
/// those that exist. `alloc_task` (`<alloc id>.<task name>`) names them when the cpuset is the
/// shared partition itself. Nothing for Nomad 1.6's `shared`/`reserved` cpusets.
pub fn v1_client_cgroups(
    root: &Path,
    cpuset_rel: &Path,
    alloc_task: &str,
) -> Vec<(&'static str, PathBuf)> {
    let parts: Vec<&OsStr> = cpuset_rel.iter().collect();
    if parts.first().copied() != Some(OsStr::new("cpuset")) {
        return Vec::new();
    }
    let Some(at) = parts
        .iter()
        .position(|p| *p == OsStr::new("share") || *p == OsStr::new("reserve"))
    else {
        return Vec::new();
    };
    let parent: PathBuf = parts[1..at].iter().collect();
    let scope = match &parts[at + 1..] {
        [] => OsStr::new(alloc_task),
        [scope] => scope,
        _ => return Vec::new(),
    };
    if parent.as_os_str().is_empty() || scope.is_empty() {
        return Vec::new();
    }
    let rel = parent.join(scope);
    V1_CLIENT_CONTROLLERS
        .iter()
        .filter(|c| root.join(c).join(&rel).is_dir())
        .map(|c| (*c, rel.clone()))
        .collect()
}

/// Whether the v1 cpuset Nomad passed (`cpuset_rel`, below the root) is the one Nomad >= 1.7
/// made for this task's reserved cores, `cpuset/<parent>/reserve/<alloc>.<task>`: the client
/// creates it with `cgroup.clone_children = 0` and only `cpuset.mems`, and leaves
/// `cpuset.cpus` to the driver. Not Nomad's `share` partition (every task's) nor 1.6's
/// `reserved/<alloc>-<task>` (whose cores 1.6's client writes itself).
pub fn v1_reserved_task_cpuset(cpuset_rel: &Path, alloc_task: &str) -> bool {
    let parts: Vec<&OsStr> = cpuset_rel.iter().collect();
    matches!(
        parts.as_slice(),
        [first, .., reserve, scope] if parts.len() >= 4
            && *first == OsStr::new("cpuset")
            && *reserve == OsStr::new("reserve")
            && !alloc_task.is_empty()
            && *scope == OsStr::new(alloc_task)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn only_dirs_inside_the_root_are_handed_over() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("nomad.slice/a.t.scope")).unwrap();
        let given = r.join("nomad.slice/a.t.scope");
        assert_eq!(
            handed_over(r, given.to_str().unwrap()),
            Some(PathBuf::from("nomad.slice/a.t.scope"))
        );
        assert_eq!(handed_over(r, ""), None);
        assert_eq!(handed_over(r, r.to_str().unwrap()), None);
        assert_eq!(handed_over(r, "/elsewhere/nomad.slice/a.t.scope"), None);
        let escape = format!("{}/nomad.slice/../../etc", r.display());
        assert_eq!(handed_over(r, &escape), None);
        assert_eq!(handed_over(r, &format!("{}/missing", r.display())), None);
    }

    #[test]
    fn a_symlink_out_of_the_cgroup_root_is_never_adopted() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cgroup");
        fs::create_dir_all(root.join("nomad.slice")).unwrap();
        fs::create_dir_all(t.path().join("tmp/x")).unwrap();
        std::os::unix::fs::symlink(t.path().join("tmp"), root.join("nomad.slice/up")).unwrap();
        let via_link = format!("{}/nomad.slice/up/x", root.display());
        assert_eq!(handed_over(&root, &via_link), None);
        // A symlink that stays inside (v1's cpu -> cpu,cpuacct) is resolved to where it leads.
        fs::create_dir_all(root.join("cpu,cpuacct/nomad/a.t")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        let inside = format!("{}/cpu/nomad/a.t", root.display());
        assert_eq!(
            handed_over(&root, &inside),
            Some(PathBuf::from("cpu,cpuacct/nomad/a.t"))
        );
    }

    #[test]
    fn v1_client_cgroups_follow_nomads_partitions() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for c in ["freezer", "cpu", "memory"] {
            fs::create_dir_all(r.join(c).join("nomad/a1.web")).unwrap();
        }
        let want: Vec<(&str, PathBuf)> = V1_CLIENT_CONTROLLERS
            .iter()
            .map(|c| (*c, PathBuf::from("nomad/a1.web")))
            .collect();
        for cpuset in [
            "cpuset/nomad/share",
            "cpuset/nomad/share/a1.web",
            "cpuset/nomad/reserve/a1.web",
        ] {
            assert_eq!(
                v1_client_cgroups(r, Path::new(cpuset), "a1.web"),
                want,
                "{cpuset}"
            );
        }
        // Nomad 1.6's cpusets, another task's scope, or not a cpuset at all: nothing.
        for cpuset in [
            "cpuset/nomad/shared",
            "cpuset/nomad/reserved/a1-web",
            "cpuset/nomad/reserve/a2.api",
            "memory/nomad/share",
        ] {
            assert!(
                v1_client_cgroups(r, Path::new(cpuset), "a1.web").is_empty(),
                "{cpuset}"
            );
        }
    }

    #[test]
    fn only_nomad_17s_reserved_cpuset_of_this_task_is_the_tasks_own() {
        let own = |p: &str| v1_reserved_task_cpuset(Path::new(p), "a1.web");
        assert!(own("cpuset/nomad/reserve/a1.web"));
        assert!(own("cpuset/custom/parent/reserve/a1.web"));
        for not in [
            "cpuset/nomad/share",
            "cpuset/nomad/reserve",
            "cpuset/nomad/reserve/a2.api",
            "cpuset/nomad/reserved/a1-web",
            "cpuset/reserve/a1.web",
            "memory/nomad/reserve/a1.web",
        ] {
            assert!(!own(not), "{not}");
        }
        assert!(!v1_reserved_task_cpuset(
            Path::new("cpuset/nomad/reserve/x"),
            ""
        ));
    }
}
