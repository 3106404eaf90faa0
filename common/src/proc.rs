//! `/proc` helpers: process identity (pid + start time, the PID-reuse guard), boot id,
//! memory, and listing a task's processes (its process group and its process tree).

use std::io;

/// The fields of `/proc/<pid>/stat` this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// Field 3: R, S, D, Z (zombie), X (dead), T, t, …
    pub state: char,
    /// Field 4.
    pub ppid: i32,
    /// Field 5: process group id.
    pub pgrp: i32,
    /// Field 6: session id.
    pub session: i32,
    /// Fields 14 and 15: user and system CPU time in clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// Zombie or dead: the process has exited (only its exit status is left to reap).
    pub fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses a `/proc/<pid>/stat` line. `comm` (field 2) is whatever the process named itself:
/// any bytes (not UTF-8 at all, spaces, parens), so the line is taken as bytes and the fixed
/// fields are counted from the *last* `)`.
pub fn parse_stat(stat: impl AsRef<[u8]>) -> Option<Stat> {
    let stat = stat.as_ref();
    let open = stat.iter().position(|b| *b == b'(')?;
    let close = stat.iter().rposition(|b| *b == b')')?;
    let pid = std::str::from_utf8(stat.get(..open)?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3.
    let field = |n: usize| f.get(n - 3).copied();
    Some(Stat {
        pid,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

fn invalid(pid: i32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unparsable /proc/{pid}/stat"),
    )
}

/// The parsed `/proc/<pid>/stat` of one process.
pub fn stat(pid: i32) -> io::Result<Stat> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid pid {pid}"),
        ));
    }
    let bytes = std::fs::read(format!("/proc/{pid}/stat"))?;
    parse_stat(&bytes).ok_or_else(|| invalid(pid))
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
pub fn start_time(pid: i32) -> io::Result<u64> {
    stat(pid).map(|s| s.start_time)
}

/// True when `pid` exists, has not exited (zombies count as gone), and started at
/// `start_time` — so it is not a different process that reused the pid.
pub fn is_same_process(pid: i32, start_time_ticks: u64) -> bool {
    match stat(pid) {
        Ok(s) => !s.is_exited() && s.start_time == start_time_ticks,
        Err(_) => false,
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`); pids recorded under another boot id
/// are meaningless. Empty if unreadable.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `utime`, `stime` and `start_time`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Nanoseconds per clock tick, to turn tick counts (`utime`, cgroup v1 `cpuacct.stat`) into
/// time.
pub fn nanos_per_tick() -> u64 {
    1_000_000_000 / clock_ticks_per_sec()
}

/// VmRSS of a process in bytes (None for a gone process or a kernel thread).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    status_kb(pid, "VmRSS:").map(|kb| kb.saturating_mul(1024))
}

fn status_kb(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every process on the node that has not exited (one scan of `/proc`).
pub fn all_processes() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| stat(pid).ok())
        .filter(|s| !s.is_exited())
        .collect()
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|s| s.pgrp == pgid)
        .map(|s| s.pid)
        .collect()
}

/// SIGKILLs the process group `pgid` of a runtime that started at `leader_start` (clock
/// ticks), when it provably is that runtime's group: its leader is that very process, or the
/// leader is gone and members are left — the kernel never hands out a pid that is still some
/// group's id, so a group without its leader is still the original one. A leader pid now
/// held by another process (different start time) means the group is someone else's: left
/// alone. Returns whether a signal was sent.
pub fn kill_group_if_ours(pgid: i32, leader_start: u64) -> bool {
    if pgid <= 1 || leader_start == 0 {
        return false;
    }
    // The leader as it is, zombies included: a zombie that reused the pid is not ours.
    match stat(pgid) {
        Ok(leader) if leader.start_time != leader_start => return false,
        Ok(_) => {}
        Err(_) if group_members(pgid).is_empty() => return false,
        Err(_) => {}
    }
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .is_ok()
}

/// `root` and all its live descendants, from a list of processes.
pub fn tree_of(procs: &[Stat], root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if procs.iter().any(|s| s.pid == root) {
        out.push(root);
    }
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            procs
                .iter()
                .filter(|s| s.ppid == parent && s.pid != parent)
                .map(|s| s.pid),
        );
        i += 1;
    }
    out
}

/// `root`'s descendants (not `root`), from the kernel's per-thread `children` lists: reads only
/// the subtree, where scanning all of /proc reads every process of the node (the shim does this
/// whenever a task ends, and with hundreds of tasks the scans were most of the stop time).
/// None when this kernel has no `children` files (CONFIG_PROC_CHILDREN).
pub fn descendants(root: i32) -> Option<Vec<i32>> {
    let children = |pid: i32| -> Option<Vec<i32>> {
        let mut out = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let text = std::fs::read_to_string(t.path().join("children")).ok()?;
            out.extend(
                text.split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
        Some(out)
    };
    let mut out = children(root)?;
    let mut i = 0;
    while i < out.len() {
        // A child that exited meanwhile has no files left: nothing below it either.
        out.extend(children(out[i]).unwrap_or_default());
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The task's processes: `root`'s live descendants plus everything still in `root`'s process
/// group (orphans that were re-parented away from the tree). Sorted, no duplicates.
pub fn task_processes(root: i32) -> Vec<Stat> {
    let procs = all_processes();
    let tree = tree_of(&procs, root);
    let mut out: Vec<Stat> = procs
        .into_iter()
        .filter(|s| s.pgrp == root || tree.contains(&s.pid))
        .collect();
    out.sort_by_key(|s| s.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};

    #[test]
    fn descendants_walk_the_kernels_children_lists() {
        let mut sh = Command::new("/bin/sh")
            .args(["-c", "sleep 100 & (sleep 100 & wait) & echo ready; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(sh.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let root = sh.id() as i32;
        let is_sleep = |p: &i32| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        };
        // The shells fork and exec in their own time: look until both sleeps are there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let found = descendants(root).expect("this kernel has children files");
            if found.iter().filter(|p| is_sleep(p)).count() == 2 {
                break found;
            }
            assert!(std::time::Instant::now() < deadline, "{found:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        // The second sleep is a grandchild (below the subshell).
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(!found.contains(&root));
        for p in &found {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        sh.kill().unwrap();
        sh.wait().unwrap();
        assert_eq!(descendants(root), None, "gone");
    }

    #[test]
    fn parses_stat_past_odd_comm() {
        let line =
            "123 (a) b (c)) S 1 123 120 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 98765 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 123,
                state: 'S',
                ppid: 1,
                pgrp: 123,
                session: 120,
                utime: 5,
                stime: 6,
                start_time: 98765,
            }
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert!(parse_stat(line.replace(" S ", " Z ")).unwrap().is_exited());
    }

    /// `comm` is the name the process gave itself: a process whose name is not UTF-8 must
    /// still be seen (kill_leftovers, the process tree), or it escapes every cleanup.
    #[test]
    fn a_process_whose_comm_is_not_utf8_is_still_listed() {
        use std::os::unix::ffi::OsStrExt;
        let mut line =
            b"77 (bad\xff\xfe) name) S 1 77 77 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 555 0 0".to_vec();
        let s = parse_stat(&line).unwrap();
        assert_eq!((s.pid, s.pgrp, s.utime, s.start_time), (77, 77, 3, 555));
        line.truncate(20);
        assert_eq!(parse_stat(&line), None);

        // A real one: exec'd under a name that is not UTF-8 (comm is the file name).
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"sl\xffp");
        let link = dir.path().join(name);
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        let mut child = std::process::Command::new(&link)
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Until exec the child's comm is still ours: wait for the new one.
        let comm = format!("/proc/{pid}/comm");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read(&comm).unwrap() != b"sl\xffp\n" {
            assert!(std::time::Instant::now() < deadline, "never exec'd");
            std::thread::yield_now();
        }
        let st = stat(pid);
        let members = group_members(pid);
        let listed = all_processes().iter().any(|p| p.pid == pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(st.unwrap().pgrp, pid);
        assert_eq!(members, vec![pid]);
        assert!(listed);
    }

    #[test]
    fn own_process_identity_and_reuse_guard() {
        let me = std::process::id() as i32;
        let st = start_time(me).unwrap();
        assert!(is_same_process(me, st));
        assert!(!is_same_process(me, st + 1));
        assert!(!is_same_process(-1, st));
        assert!(!is_same_process(0, st));
        assert!(rss_bytes(me).unwrap() > 0);
        assert_eq!(boot_id().len(), 36);
        assert!(clock_ticks_per_sec() > 0);
        let pgid = nix::unistd::getpgrp().as_raw();
        assert!(group_members(pgid).contains(&me));
    }

    #[test]
    fn zombies_are_not_the_same_process() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Until reaped it is a zombie (or still running briefly); wait for the zombie state
        // by reaping with WNOWAIT, which leaves it in place.
        nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(nix::unistd::Pid::from_raw(pid)),
            nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
        )
        .unwrap();
        let s = stat(pid).unwrap();
        assert!(s.is_exited(), "{s:?}");
        assert!(!is_same_process(pid, s.start_time));
        child.wait().unwrap();
        assert!(stat(pid).is_err());
    }

    #[test]
    fn tree_and_group_of_a_real_process_tree() {
        // sh (own group) → sleep; sh prints the sleep's pid once it exists.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 100 & echo $!; wait"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let sh = child.id() as i32;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let sleep: i32 = line.trim().parse().unwrap();
        let procs = all_processes();
        assert_eq!(tree_of(&procs, sh), vec![sh, sleep]);
        assert!(tree_of(&procs, -5).is_empty());
        let mut group = group_members(sh);
        group.sort();
        assert_eq!(group, vec![sh, sleep]);
        let task: Vec<i32> = task_processes(sh).iter().map(|s| s.pid).collect();
        assert_eq!(task, vec![sh, sleep]);
        assert_eq!(stat(sleep).unwrap().ppid, sh);
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(sh),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
    }
}
