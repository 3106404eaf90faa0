//! Resource samples for the Stats stream: from the task cgroup when there is one, else from
//! `/proc` of the runtime's process group.

use common::cgroup::TaskCgroup;
use common::proto::executor::ResourceUsage;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct Sampler {
    cgroup: Option<TaskCgroup>,
    pid: Option<i32>,
    last: Option<(Instant, u64, u64, u64)>,
}

fn ticks_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / if t > 0 { t as u64 } else { 100 }
}

/// (total, user, system) CPU ns and RSS bytes of a process group, from /proc.
fn proc_usage(pgid: i32) -> (u64, u64, u64, u64) {
    let (mut user, mut sys, mut rss) = (0u64, 0u64, 0u64);
    let tick = ticks_ns();
    for pid in common::proc::group_members(pgid) {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(i) = stat.rfind(')') {
                let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
                // utime and stime are fields 14 and 15 (index 11, 12 after comm).
                user += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * tick;
                sys += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * tick;
            }
        }
        rss += common::proc::rss_bytes(pid).unwrap_or(0);
    }
    (user + sys, user, sys, rss)
}

impl Sampler {
    pub fn new(cgroup: Option<TaskCgroup>, pid: Option<i32>) -> Self {
        Sampler {
            cgroup,
            pid,
            last: None,
        }
    }

    pub fn sample(&mut self) -> ResourceUsage {
        let now = Instant::now();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let mut u = ResourceUsage {
            timestamp_unix_nanos: ts,
            ..Default::default()
        };
        let mut measured: Vec<&str> = Vec::new();
        let (total, user, sys) = match &self.cgroup {
            Some(cg) => {
                let s = cg.stats();
                for (v, dst, name) in [
                    (s.memory_rss, &mut u.memory_rss, "memory_rss"),
                    (s.memory_cache, &mut u.memory_cache, "memory_cache"),
                    (s.memory_swap, &mut u.memory_swap, "memory_swap"),
                    (s.memory_usage, &mut u.memory_usage, "memory_usage"),
                    (
                        s.memory_max_usage,
                        &mut u.memory_max_usage,
                        "memory_max_usage",
                    ),
                    (
                        s.throttled_periods,
                        &mut u.throttled_periods,
                        "throttled_periods",
                    ),
                    (
                        s.throttled_ns,
                        &mut u.throttled_time_ns,
                        "throttled_time_ns",
                    ),
                ] {
                    if let Some(v) = v {
                        *dst = v;
                        measured.push(name);
                    }
                }
                (s.cpu_usage_ns, s.cpu_user_ns, s.cpu_system_ns)
            }
            None => match self.pid {
                Some(p) => {
                    let (t, us, sy, rss) = proc_usage(p);
                    u.memory_rss = rss;
                    measured.push("memory_rss");
                    (Some(t), Some(us), Some(sy))
                }
                None => (None, None, None),
            },
        };
        if let (Some(t), Some(us), Some(sy)) = (total, user, sys) {
            if let Some((then, t0, u0, s0)) = self.last {
                let wall = now.duration_since(then).as_nanos().max(1) as f64;
                u.cpu_percent = t.saturating_sub(t0) as f64 / wall * 100.0;
                u.cpu_user_percent = us.saturating_sub(u0) as f64 / wall * 100.0;
                u.cpu_system_percent = sy.saturating_sub(s0) as f64 / wall * 100.0;
            }
            measured.extend(["cpu_percent", "cpu_user_percent", "cpu_system_percent"]);
            self.last = Some((now, t, us, sy));
        }
        u.measured = measured.into_iter().map(str::to_owned).collect();
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fallback_measures_own_group() {
        let pg = nix::unistd::getpgrp().as_raw();
        let mut s = Sampler::new(None, Some(pg));
        let first = s.sample();
        assert!(first.memory_rss > 0);
        assert!(first.measured.contains(&"cpu_percent".to_string()));
        // Burn a little CPU so the second sample has a delta.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let second = s.sample();
        assert!(second.cpu_percent > 0.0, "{second:?}");
    }
}
