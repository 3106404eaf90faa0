//! `/proc` helpers: process identity (pid + start time, the PID-reuse guard), boot id, memory.

use std::io;
use std::path::Path;

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
pub fn start_time(pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))
}

/// Parses past the `)` that ends `comm` (which may itself contain spaces and parens).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after comm start at field 3 (state); start time is field 22.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// True when `pid` exists, is not a zombie, and started at `start_time` (so it is not a
/// different process that reused the pid).
pub fn is_same_process(pid: i32, start_time_ticks: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    if state == Some("Z") || state == Some("X") {
        return false;
    }
    parse_start_time(&stat) == Some(start_time_ticks)
}

/// This boot's id; pids recorded under another boot id are meaningless.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// VmRSS of a process in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
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

/// Pids whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(stat) =
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        {
            if let Some(i) = stat.rfind(')') {
                // state ppid pgrp
                if stat[i + 1..]
                    .split_whitespace()
                    .nth(2)
                    .and_then(|p| p.parse::<i32>().ok())
                    == Some(pgid)
                {
                    out.push(pid);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_past_odd_comm() {
        let stat =
            "123 (a) b (c)) S 1 123 123 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_process_identity_and_reuse_guard() {
        let me = std::process::id() as i32;
        let st = start_time(me).unwrap();
        assert!(is_same_process(me, st));
        assert!(!is_same_process(me, st + 1));
        assert!(!is_same_process(-1, st));
        assert!(rss_bytes(me).unwrap() > 0);
        assert_eq!(boot_id().len(), 36);
        let pgid = nix::unistd::getpgrp().as_raw();
        assert!(group_members(pgid).contains(&me));
    }
}
