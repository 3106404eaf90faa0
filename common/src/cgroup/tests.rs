//! Fake cgroupfs trees in temp dirs, laid out exactly as the kernel and Nomad lay them out.

use super::*;
use std::fs;

/// A v2 root listing the controllers a real root lists.
fn fake_v2() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(
        d.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    d
}

/// The interface files the kernel gives a v2 cgroup with memory, cpu, cpuset and pids.
fn kernel_v2_files(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for (f, v) in [
        ("memory.min", "0"),
        ("memory.low", "0"),
        ("memory.high", "max"),
        ("memory.max", "max"),
        ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
        ("cpu.weight", "100"),
        ("cpuset.cpus", ""),
        ("pids.max", "max"),
        ("cgroup.procs", ""),
    ] {
        fs::write(dir.join(f), v).unwrap();
    }
}

/// A v1 root with one hierarchy per controller (cpuacct separate from cpu, as on this host).
fn fake_v1() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for c in ["memory", "cpu", "cpuacct", "cpuset", "pids", "freezer"] {
        fs::create_dir(d.path().join(c)).unwrap();
    }
    d
}

fn spec(nomad_cgroup: &str) -> TaskSpec {
    TaskSpec {
        version: crate::spec::TASK_SPEC_VERSION,
        task_id: "a1/web/0a1b2c3d".into(),
        alloc_id: "a1".into(),
        job_id: "j".into(),
        task_group: "g".into(),
        task_name: "web".into(),
        namespace: "default".into(),
        argv: vec!["/bin/true".into()],
        env: Default::default(),
        cwd: "/".into(),
        stdout_path: "/dev/null".into(),
        stderr_path: "/dev/null".into(),
        log_files: None,
        fifo_open_timeout_ms: 1,
        user: String::new(),
        socket_path: "/run/x.sock".into(),
        state_path: "/tmp/state.json".into(),
        netns_path: None,
        resources: ResourceSpec {
            nomad_cgroup: nomad_cgroup.into(),
            ..Default::default()
        },
        linger_after_exit_secs: 1,
        sandbox: None,
    }
}

fn limits(cpuset: &str) -> ResourceSpec {
    ResourceSpec {
        memory_mb: 64,
        memory_max_mb: 128,
        cpu_shares: 500,
        cpuset_cpus: cpuset.into(),
        pids_limit: 50,
        ..Default::default()
    }
}

fn rd(dir: &Path, f: &str) -> String {
    fs::read_to_string(dir.join(f)).unwrap()
}

#[test]
fn detects_versions() {
    let v2 = fake_v2();
    assert_eq!(detect(v2.path()), Some(Version::V2));
    let v1 = fake_v1();
    assert_eq!(detect(v1.path()), Some(Version::V1));
    assert_eq!(detect(tempfile::tempdir().unwrap().path()), None);
}

#[test]
fn v2_own_cgroup_limits_stats_and_oom_on_a_fake_root() {
    let root = fake_v2();
    let cg = TaskCgroup::create(root.path(), Version::V2, "elide.slice/abc", "", "a.t").unwrap();
    let d = root.path().join("elide.slice/abc");
    assert_eq!(cg.dirs(), vec![d.clone()]);
    // Only the controllers we use are delegated, at every level.
    assert_eq!(
        rd(root.path(), "cgroup.subtree_control"),
        "+memory +cpu +pids"
    );
    assert_eq!(
        rd(&root.path().join("elide.slice"), "cgroup.subtree_control"),
        "+memory +cpu +pids"
    );
    kernel_v2_files(&d);
    let notes = cg.apply(&limits("0"));
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(rd(&d, "memory.max"), (128u64 << 20).to_string());
    assert_eq!(rd(&d, "memory.low"), (64u64 << 20).to_string());
    assert_eq!(rd(&d, "memory.swap.max"), "0");
    assert_eq!(rd(&d, "cpu.weight"), shares_to_weight(500).to_string());
    assert_eq!(rd(&d, "pids.max"), "50");
    assert_eq!(rd(&d, "cpuset.cpus"), "0");
    fs::write(
        d.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    )
    .unwrap();
    assert_eq!(cg.oom_kills(), 1);
    fs::write(
        d.join("cpu.stat"),
        "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\nnr_periods 4\nnr_throttled 2\nthrottled_usec 30\n",
    )
    .unwrap();
    fs::write(d.join("memory.current"), "4096\n").unwrap();
    fs::write(d.join("memory.stat"), "anon 1024\nfile 2048\n").unwrap();
    let s = cg.counters();
    assert_eq!(s.cpu_total_ns, Some(2_000_000));
    assert_eq!(s.cpu_user_ns, Some(1_500_000));
    assert_eq!(s.cpu_system_ns, Some(500_000));
    assert_eq!(s.throttled_periods, Some(2));
    assert_eq!(s.throttled_ns, Some(30_000));
    assert_eq!(s.memory_usage, Some(4096));
    assert_eq!(s.memory_rss, Some(1024));
    assert_eq!(s.memory_cache, Some(2048));
    assert_eq!(s.memory_max_usage, None, "no memory.peak on this kernel");
    assert_eq!(
        s.memory_swap,
        Some(0),
        "memory.swap.max = 0: no swap by construction"
    );
    fs::write(d.join("cgroup.procs"), "12\n34\n").unwrap();
    assert_eq!(cg.procs(), vec![12, 34]);
    assert_eq!(cg.procs_files().len(), 1);
    // Ours is removed (a real cgroupfs dir is empty once its processes are gone).
    for f in fs::read_dir(&d).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    cg.remove();
    assert!(!d.exists());
}

#[test]
fn v2_without_the_memory_controller_reports_no_memory_instead_of_panicking() {
    let root = fake_v2();
    let cg = TaskCgroup::create(root.path(), Version::V2, "elide.slice/abc", "", "a.t").unwrap();
    let s = cg.counters();
    assert_eq!(s.memory_usage, None);
    assert_eq!(s.cpu_total_ns, None);
}

/// Nomad >= 1.7 on v2: the client made the task's scope in the share (or, with reserved
/// `cores`, the reserve) partition and passed it in `cpuset_cgroup`. We write the limits
/// there, create nothing of our own, and never remove it (the client kills and removes it).
#[test]
fn v2_adopts_the_scope_nomad_17_made_in_share_and_reserve_slices() {
    for (partition, cpuset) in [("share.slice", "0-1"), ("reserve.slice", "1")] {
        let root = fake_v2();
        let scope = root
            .path()
            .join("nomad.slice")
            .join(partition)
            .join("a1.web.scope");
        kernel_v2_files(&scope);
        let cg = TaskCgroup::create_for(root.path(), Version::V2, &spec(scope.to_str().unwrap()))
            .unwrap();
        assert_eq!(cg.dirs(), vec![scope.clone()], "{partition}");
        assert!(!root.path().join("elide.slice").exists(), "{partition}");
        let notes = cg.apply(&limits(cpuset));
        assert!(notes.is_empty(), "{partition}: {notes:?}");
        assert_eq!(rd(&scope, "memory.max"), (128u64 << 20).to_string());
        assert_eq!(rd(&scope, "memory.low"), (64u64 << 20).to_string());
        assert_eq!(rd(&scope, "cpu.weight"), shares_to_weight(500).to_string());
        assert_eq!(rd(&scope, "cpuset.cpus"), cpuset);
        assert_eq!(cg.describe(), scope.display().to_string());
        // The runtime alone joins (before exec); nothing wrote the shim's pid anywhere.
        assert_eq!(
            cg.procs_files(),
            vec![CString::new(scope.join("cgroup.procs").as_os_str().as_bytes()).unwrap()]
        );
        assert_eq!(rd(&scope, "cgroup.procs"), "");
        cg.remove();
        assert!(
            scope.is_dir(),
            "{partition}: Nomad's scope is never removed by us"
        );
    }
}

#[test]
fn v2_adopts_nomad_16s_flat_scope() {
    let root = fake_v2();
    let scope = root.path().join("nomad.slice/a1.web.scope");
    kernel_v2_files(&scope);
    let cg =
        TaskCgroup::create_for(root.path(), Version::V2, &spec(scope.to_str().unwrap())).unwrap();
    assert_eq!(cg.dirs(), vec![scope.clone()]);
    cg.remove();
    assert!(scope.is_dir());
}

#[test]
fn shares_below_two_are_clamped_before_the_weight_conversion() {
    assert_eq!(shares_to_weight(1), 1, "Nomad #26081: no underflow");
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(1_000_000), 10_000);
    assert_eq!(shares_to_weight(0), 100, "no cpu given: the kernel default");
}

#[test]
fn v1_own_cgroups_with_a_separate_cpuacct_hierarchy() {
    let root = fake_v1();
    let r = root.path();
    let cg = TaskCgroup::create(r, Version::V1, "nomad-elide/k", "", "a1.web").unwrap();
    let dir = |c: &str| r.join(c).join("nomad-elide/k");
    let want: Vec<PathBuf> = ["memory", "cpu", "cpuacct", "pids", "freezer"]
        .iter()
        .map(|c| dir(c))
        .collect();
    assert_eq!(cg.dirs(), want);
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
        cpu_shares: 1,
        pids_limit: 10,
        ..Default::default()
    });
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(
        rd(&dir("cpu"), "cpu.shares"),
        "2",
        "v1 shares are at least 2"
    );
    assert_eq!(
        rd(&dir("memory"), "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(rd(&dir("pids"), "pids.max"), "10");
    // Files this kernel lacks (no swap accounting) are left alone, not created.
    assert!(!dir("memory").join("memory.memsw.limit_in_bytes").exists());
    fs::write(dir("cpuacct").join("cpuacct.usage"), "5000\n").unwrap();
    fs::write(dir("cpuacct").join("cpuacct.stat"), "user 3\nsystem 1\n").unwrap();
    fs::write(
        dir("cpu").join("cpu.stat"),
        "nr_periods 3\nnr_throttled 1\nthrottled_time 77\n",
    )
    .unwrap();
    // A CFS quota (cpu_hard_limit): only then is cpu.stat read for throttling.
    fs::write(dir("cpu").join("cpu.cfs_quota_us"), "10000\n").unwrap();
    fs::write(
        dir("memory").join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    fs::write(dir("memory").join("memory.usage_in_bytes"), "8192\n").unwrap();
    fs::write(
        dir("memory").join("memory.stat"),
        "total_rss 4096\ntotal_cache 1024\n",
    )
    .unwrap();
    let s = cg.counters();
    assert_eq!(s.cpu_total_ns, Some(5000));
    let tick = crate::proc::nanos_per_tick();
    assert_eq!(
        (s.cpu_user_ns, s.cpu_system_ns),
        (Some(3 * tick), Some(tick))
    );
    assert_eq!((s.throttled_periods, s.throttled_ns), (Some(1), Some(77)));
    // rss + cache from memory.stat (memory.usage_in_bytes is fuzzy, and not read).
    assert_eq!(s.memory_usage, Some(5120));
    assert_eq!(s.memory_rss, Some(4096));
    assert_eq!(s.memory_cache, Some(1024));
    assert_eq!(s.memory_swap, None);
    assert_eq!(cg.oom_kills(), 2);
    // Co-mounted cpu,cpuacct (one dir behind two names) is joined once.
    let co = fake_v1();
    fs::remove_dir(co.path().join("cpuacct")).unwrap();
    std::os::unix::fs::symlink(co.path().join("cpu"), co.path().join("cpuacct")).unwrap();
    let cg = TaskCgroup::create(co.path(), Version::V1, "nomad-elide/k", "", "a1.web").unwrap();
    assert_eq!(cg.dirs().len(), 4, "{:?}", cg.dirs());
}

/// Nomad >= 1.7 on v1: the client made `{freezer,cpu,memory}/nomad/<alloc>.<task>` and passed
/// the cpuset (`nomad/share`, or `nomad/reserve/<alloc>.<task>` with reserved cores). We
/// adopt those three, create only what the client did not (cpuacct, pids), join the cpuset,
/// and remove only ours.
#[test]
fn v1_adopts_the_cgroups_nomad_17_made() {
    for cpuset in ["cpuset/nomad/share", "cpuset/nomad/reserve/a1.web"] {
        let root = fake_v1();
        let r = root.path();
        for c in ["freezer", "cpu", "memory"] {
            fs::create_dir_all(r.join(c).join("nomad/a1.web")).unwrap();
        }
        fs::create_dir_all(r.join(cpuset)).unwrap();
        fs::write(r.join("memory/nomad/a1.web/memory.limit_in_bytes"), "").unwrap();
        fs::write(r.join("cpu/nomad/a1.web/cpu.shares"), "").unwrap();
        let given = r.join(cpuset);
        let cg = TaskCgroup::create_for(r, Version::V1, &spec(given.to_str().unwrap())).unwrap();
        let ours = format!("nomad-elide/{}", crate::paths::task_key("a1/web/0a1b2c3d"));
        assert_eq!(
            cg.dirs(),
            vec![
                r.join("memory/nomad/a1.web"),
                r.join("cpu/nomad/a1.web"),
                r.join("cpuacct").join(&ours),
                r.join("pids").join(&ours),
                r.join("freezer/nomad/a1.web"),
                given.clone(),
            ],
            "{cpuset}"
        );
        let notes = cg.apply(&limits(""));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            rd(&r.join("memory/nomad/a1.web"), "memory.limit_in_bytes"),
            (128u64 << 20).to_string()
        );
        assert_eq!(rd(&r.join("cpu/nomad/a1.web"), "cpu.shares"), "500");
        assert!(
            !r.join("memory").join(&ours).exists(),
            "no duplicate memory cgroup"
        );
        cg.remove();
        assert!(!r.join("pids").join(&ours).exists(), "ours are removed");
        for kept in [
            "memory/nomad/a1.web",
            "cpu/nomad/a1.web",
            "freezer/nomad/a1.web",
            cpuset,
        ] {
            assert!(r.join(kept).is_dir(), "{cpuset}: {kept} is Nomad's");
        }
    }
}

#[test]
fn v1_with_nomad_16s_cpuset_creates_ours_and_joins_the_cpuset() {
    let root = fake_v1();
    let r = root.path();
    fs::create_dir_all(r.join("cpuset/nomad/shared")).unwrap();
    let given = r.join("cpuset/nomad/shared");
    let cg = TaskCgroup::create_for(r, Version::V1, &spec(given.to_str().unwrap())).unwrap();
    let dirs = cg.dirs();
    assert_eq!(dirs.len(), 6, "{dirs:?}");
    assert_eq!(dirs.last(), Some(&given));
    assert!(
        dirs[0].starts_with(r.join("memory/nomad-elide")),
        "{dirs:?}"
    );
    cg.remove();
    assert!(given.is_dir());
}

/// `apply` takes any `ResourceSpec` (validation caps specs at 1 PiB, but nothing here may
/// rely on it): a size whose bytes do not fit is a note, never a wrapped limit.
#[test]
fn memory_sizes_that_do_not_fit_in_bytes_are_noted_not_wrapped() {
    let root = fake_v2();
    let cg = TaskCgroup::create(root.path(), Version::V2, "elide.slice/big", "", "a.t").unwrap();
    let d = root.path().join("elide.slice/big");
    kernel_v2_files(&d);
    let huge = ResourceSpec {
        memory_mb: (1 << 44) + 1,
        memory_max_mb: (1 << 44) + 1,
        ..Default::default()
    };
    let notes = cg.apply(&huge);
    // 2^44 + 1 MiB = 2^64 + 2^20 bytes: it used to wrap to a 1 MiB limit.
    assert_eq!(rd(&d, "memory.max"), "max", "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("memory.max") && n.contains("too large")),
        "{notes:?}"
    );
}

#[test]
fn cpu_microseconds_saturate_instead_of_overflowing() {
    let root = fake_v2();
    let cg = TaskCgroup::create(root.path(), Version::V2, "elide.slice/us", "", "a.t").unwrap();
    let d = root.path().join("elide.slice/us");
    kernel_v2_files(&d);
    fs::write(
        d.join("cpu.stat"),
        format!("usage_usec {}\nuser_usec 1\nsystem_usec 0\n", u64::MAX / 10),
    )
    .unwrap();
    assert_eq!(cg.counters().cpu_total_ns, Some(u64::MAX));
}

const NAMES: TaskNames<'static> = TaskNames {
    task_id: "a1/web/0a1b2c3d",
    alloc_id: "a1",
    task_name: "web",
};

fn members_of(cg: &TaskCgroup, root: &Path) -> Vec<(String, bool)> {
    cg.members
        .iter()
        .map(|m| {
            let rel = m.dir.strip_prefix(root).unwrap().display().to_string();
            (rel, m.owned)
        })
        .collect()
}

/// What a dead shim's task left: our own cgroup and Nomad's scope are found (only ours is
/// removable); whatever else a stale or tampered state file names is ignored.
#[test]
fn v2_leftovers_are_ours_and_this_tasks_scope_and_nothing_else() {
    let root = fake_v2();
    let r = root.path();
    let key = crate::paths::task_key(NAMES.task_id);
    fs::create_dir_all(r.join("elide.slice").join(&key)).unwrap();
    fs::create_dir_all(r.join("nomad.slice/share.slice/a1.web.scope")).unwrap();
    fs::create_dir_all(r.join("nomad.slice/share.slice/a2.db.scope")).unwrap();
    fs::create_dir_all(r.join("system.slice/sshd.service")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir_all(outside.path().join(&key)).unwrap();
    std::os::unix::fs::symlink(outside.path(), r.join("escape")).unwrap();
    let recorded = [
        r.join("nomad.slice/share.slice/a1.web.scope"),
        r.join("nomad.slice/share.slice/a2.db.scope"),
        r.join("system.slice/sshd.service"),
        r.join("escape").join(&key),
        r.join("nomad.slice/../system.slice/sshd.service"),
        PathBuf::from("/elsewhere/a1.web.scope"),
    ]
    .iter()
    .map(|p| p.display().to_string())
    .collect::<Vec<_>>()
    .join(",");
    let cg = TaskCgroup::leftovers(r, NAMES, Some(&recorded)).unwrap();
    assert_eq!(
        members_of(&cg, r),
        [
            (format!("elide.slice/{key}"), true),
            ("nomad.slice/share.slice/a1.web.scope".into(), false),
        ]
    );
    let (killed, kept) = cg.kill_and_remove(std::time::Duration::from_millis(50));
    assert!(killed.is_empty() && kept.is_empty(), "{killed:?} {kept:?}");
    assert!(!r.join("elide.slice").join(&key).exists(), "ours removed");
    assert!(
        r.join("nomad.slice/share.slice/a1.web.scope").exists(),
        "Nomad's kept"
    );
    assert!(
        TaskCgroup::leftovers(r, NAMES, None).is_none(),
        "nothing left of ours"
    );
}

#[test]
fn v1_leftovers_never_include_nomads_shared_cpusets() {
    let root = fake_v1();
    let r = root.path();
    let key = crate::paths::task_key(NAMES.task_id);
    for c in ["memory", "freezer"] {
        fs::create_dir_all(r.join(c).join("nomad-elide").join(&key)).unwrap();
    }
    fs::create_dir_all(r.join("cpuset/nomad/shared")).unwrap();
    fs::create_dir_all(r.join("cpuset/nomad/share")).unwrap();
    fs::create_dir_all(r.join("cpu/nomad/a1.web")).unwrap();
    let recorded = format!(
        "{0}/memory/nomad-elide/{key},{0}/cpuset/nomad/shared,{0}/cpuset/nomad/share,{0}/cpu/nomad/a1.web",
        r.display()
    );
    let cg = TaskCgroup::leftovers(r, NAMES, Some(&recorded)).unwrap();
    assert_eq!(
        members_of(&cg, r),
        [
            (format!("memory/nomad-elide/{key}"), true),
            (format!("freezer/nomad-elide/{key}"), true),
            ("cpu/nomad/a1.web".into(), false),
        ]
    );
}

/// Nomad >= 1.7 on v1 with `cores = N`: the client made `cpuset/nomad/reserve/<alloc>.<task>`
/// with `cgroup.clone_children = 0` and only `cpuset.mems`, and leaves `cpuset.cpus` to the
/// driver (joining a v1 cpuset with no cpus fails with ENOSPC). The task's reserved cores go
/// there; the shared partition (every task's) and Nomad 1.6's cpusets are never written.
#[test]
fn v1_writes_the_reserved_cores_into_the_cpuset_nomad_17_made_for_the_task() {
    for (cpuset, written) in [
        ("cpuset/nomad/reserve/a1.web", true),
        ("cpuset/nomad/share", false),
        ("cpuset/nomad/reserved/a1-web", false),
    ] {
        let root = fake_v1();
        let r = root.path();
        let given = r.join(cpuset);
        fs::create_dir_all(&given).unwrap();
        fs::write(given.join("cpuset.cpus"), "").unwrap();
        fs::write(given.join("cpuset.mems"), "0").unwrap();
        let cg = TaskCgroup::create_for(r, Version::V1, &spec(given.to_str().unwrap())).unwrap();
        let notes = cg.apply(&limits("1"));
        assert!(notes.is_empty(), "{cpuset}: {notes:?}");
        let want = if written { "1" } else { "" };
        assert_eq!(rd(&given, "cpuset.cpus"), want, "{cpuset}");
        assert_eq!(rd(&given, "cpuset.mems"), "0", "{cpuset}: mems untouched");
        cg.remove();
        assert!(given.is_dir(), "{cpuset} is Nomad's, never removed");
    }
}
