//! Resource samples for the Stats stream. A [`UsageSource`] reads cumulative counters (from
//! the task cgroup when there is one, else from `/proc` of the runtime's process tree and
//! group); the [`Sampler`] turns CPU time deltas into percent of one core, as Nomad expects.

pub use common::cgroup::Counters;
use common::cgroup::TaskCgroup;
use common::proto::executor::ResourceUsage;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where usage numbers come from.
pub trait UsageSource: Send {
    fn read(&mut self) -> Counters;
}

/// `/proc` of the runtime's process tree plus its process group: utime/stime and VmRSS per
/// process, summed. Children that already exited are not counted (their time is gone with
/// them), like Nomad's universal executor.
pub struct ProcTree {
    pub root: i32,
}

impl UsageSource for ProcTree {
    fn read(&mut self) -> Counters {
        let tick_ns = common::proc::nanos_per_tick();
        let procs = common::proc::task_processes(self.root);
        let (user, sys) = cpu_ns(procs.iter().map(|p| (p.utime, p.stime)), tick_ns);
        let rss = procs
            .iter()
            .map(|p| common::proc::rss_bytes(p.pid).unwrap_or(0))
            .fold(0u64, u64::saturating_add);
        Counters {
            cpu_total_ns: Some(user + sys),
            cpu_user_ns: Some(user),
            cpu_system_ns: Some(sys),
            memory_rss: Some(rss),
            ..Default::default()
        }
    }
}

/// User and system CPU time in ns of processes given as (utime, stime) clock ticks; saturates
/// instead of wrapping (the figures come from `/proc`, summed over many processes).
fn cpu_ns(ticks: impl Iterator<Item = (u64, u64)>, tick_ns: u64) -> (u64, u64) {
    ticks.fold((0u64, 0u64), |(user, sys), (u, s)| {
        (
            user.saturating_add(u.saturating_mul(tick_ns)),
            sys.saturating_add(s.saturating_mul(tick_ns)),
        )
    })
}

/// The task's cgroup (v1 or v2).
pub struct Cgroup(pub Arc<TaskCgroup>);

impl UsageSource for Cgroup {
    fn read(&mut self) -> Counters {
        self.0.counters()
    }
}

/// The best source for a task: its cgroup if it has one, else `/proc`.
pub fn source_for(cgroup: Option<Arc<TaskCgroup>>, runtime_pid: i32) -> Box<dyn UsageSource> {
    match cgroup {
        Some(cg) => Box::new(Cgroup(cg)),
        None => Box::new(ProcTree { root: runtime_pid }),
    }
}

pub struct Sampler {
    source: Box<dyn UsageSource>,
    last: Option<(Instant, Counters)>,
}

impl Sampler {
    pub fn new(source: Box<dyn UsageSource>) -> Self {
        Sampler { source, last: None }
    }

    /// One sample. CPU percentages are measured from the second sample on (the first has no
    /// delta and reports 0, as Nomad's executors do).
    pub fn sample(&mut self) -> ResourceUsage {
        let now = Instant::now();
        let c = self.source.read();
        let mut u = ResourceUsage {
            timestamp_unix_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            ..Default::default()
        };
        let mut measured: Vec<&str> = Vec::new();
        for (v, dst, name) in [
            (c.memory_rss, &mut u.memory_rss, "memory_rss"),
            (c.memory_cache, &mut u.memory_cache, "memory_cache"),
            (c.memory_swap, &mut u.memory_swap, "memory_swap"),
            (c.memory_usage, &mut u.memory_usage, "memory_usage"),
            (
                c.memory_max_usage,
                &mut u.memory_max_usage,
                "memory_max_usage",
            ),
            (
                c.throttled_periods,
                &mut u.throttled_periods,
                "throttled_periods",
            ),
            (
                c.throttled_ns,
                &mut u.throttled_time_ns,
                "throttled_time_ns",
            ),
        ] {
            if let Some(v) = v {
                *dst = v;
                measured.push(name);
            }
        }
        if let Some((then, prev)) = &self.last {
            let wall = now.duration_since(*then).as_nanos().max(1) as f64;
            let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64 / wall * 100.0),
                _ => None,
            };
            u.cpu_percent = pct(c.cpu_total_ns, prev.cpu_total_ns).unwrap_or(0.0);
            u.cpu_user_percent = pct(c.cpu_user_ns, prev.cpu_user_ns).unwrap_or(0.0);
            u.cpu_system_percent = pct(c.cpu_system_ns, prev.cpu_system_ns).unwrap_or(0.0);
        }
        for (v, name) in [
            (c.cpu_total_ns, "cpu_percent"),
            (c.cpu_user_ns, "cpu_user_percent"),
            (c.cpu_system_ns, "cpu_system_percent"),
        ] {
            if v.is_some() {
                measured.push(name);
            }
        }
        self.last = Some((now, c));
        u.measured = measured.into_iter().map(str::to_owned).collect();
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_sums_saturate() {
        assert_eq!(cpu_ns([(1, 2), (3, 4)].into_iter(), 10), (40, 60));
        // Used to overflow (a panic in debug builds, wrapped figures in release).
        assert_eq!(
            cpu_ns(
                [(u64::MAX / 2, 0), (u64::MAX / 2, 1)].into_iter(),
                10_000_000
            ),
            (u64::MAX, 10_000_000)
        );
    }

    /// A source whose counters the test sets.
    struct Fake(std::sync::Arc<std::sync::Mutex<Counters>>);

    impl UsageSource for Fake {
        fn read(&mut self) -> Counters {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn percent_comes_from_deltas_and_only_measured_fields_are_listed() {
        let counters = std::sync::Arc::new(std::sync::Mutex::new(Counters {
            cpu_total_ns: Some(0),
            cpu_user_ns: Some(0),
            cpu_system_ns: Some(0),
            memory_rss: Some(4096),
            ..Default::default()
        }));
        let mut s = Sampler::new(Box::new(Fake(counters.clone())));
        let first = s.sample();
        assert_eq!(first.cpu_percent, 0.0);
        assert_eq!(first.memory_rss, 4096);
        assert!(first.timestamp_unix_nanos > 0);
        let mut m = first.measured.clone();
        m.sort();
        assert_eq!(
            m,
            [
                "cpu_percent",
                "cpu_system_percent",
                "cpu_user_percent",
                "memory_rss"
            ]
        );
        // 2 s of CPU (user) over a wall interval of well under 2 s: more than one core.
        *counters.lock().unwrap() = Counters {
            cpu_total_ns: Some(2_000_000_000),
            cpu_user_ns: Some(2_000_000_000),
            cpu_system_ns: Some(0),
            memory_rss: Some(8192),
            ..Default::default()
        };
        let second = s.sample();
        assert!(second.cpu_percent > 100.0, "{second:?}");
        assert_eq!(second.cpu_percent, second.cpu_user_percent);
        assert_eq!(second.cpu_system_percent, 0.0);
        assert_eq!(second.memory_rss, 8192);
    }

    #[test]
    fn proc_source_measures_a_real_process_group() {
        let me = std::process::id() as i32;
        let mut src = ProcTree { root: me };
        let before = src.read();
        assert!(before.memory_rss.unwrap() > 0);
        // Burn a little CPU so the counters move.
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(x) ^ 7);
        }
        assert!(x != 1);
        let after = src.read();
        assert!(
            after.cpu_total_ns.unwrap() > before.cpu_total_ns.unwrap(),
            "{after:?}"
        );
    }
}
