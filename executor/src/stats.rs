//! Resource samples for the Stats stream. A [`UsageSource`] reads cumulative counters (from
//! the task cgroup when there is one, else from `/proc` of the runtime's process tree and
//! group); the [`Sampler`] turns CPU time deltas into percent of one core, as Nomad expects.

pub use common::cgroup::Counters;
use common::cgroup::TaskCgroup;
pub use common::usage::{Sampler, UsageSource};
use std::sync::Arc;

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

    #[test]
    fn proc_source_measures_a_real_process_group() {
        let me = std::process::id() as i32;
        let mut src = ProcTree { root: me };
        let before = src.read();
        assert!(before.memory_rss.unwrap() > 0);
        // Burn a little CPU so the counters move.
        let mut x = 0u64;
        let start = std::time::Instant::now();
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
