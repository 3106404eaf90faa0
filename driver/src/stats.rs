//! Turning the shim's resource samples into Nomad's TaskStats.

use common::proto::drivers::{
    cpu_usage, memory_usage, CpuUsage, MemoryUsage, TaskResourceUsage, TaskStats,
};
use common::proto::executor::ResourceUsage;
use common::usage::Sample;

/// MHz of one core, for expressing CPU use as "ticks" (what `nomad alloc status` shows as
/// CPU MHz). Nomad >= 1.7 hands the node's compute over in SetConfig; on 1.6 we read the same
/// source Nomad's CPU fingerprint reads.
pub fn fingerprint_mhz_per_core() -> f64 {
    // Read once per plugin process: `/proc/cpuinfo` costs a millisecond or more (the kernel
    // samples each CPU's frequency for it), and Nomad opens TaskStats for every task at
    // once after each of its restarts.
    static MHZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *MHZ.get_or_init(read_mhz_per_core)
}

fn read_mhz_per_core() -> f64 {
    let khz = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok());
    if let Some(k) = khz.filter(|k| *k > 0.0) {
        return k / 1000.0;
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(1000.0)
}

/// A sample from the shim's Stats stream as Nomad's TaskStats.
pub fn to_task_stats(task_id: &str, u: &ResourceUsage, mhz_per_core: f64) -> TaskStats {
    task_stats(task_id, u, mhz_per_core, |name| {
        u.measured.iter().any(|m| m == name)
    })
}

/// A sample the plugin took itself as Nomad's TaskStats (the same message as
/// [`to_task_stats`] of the shim's sample, with no field names to build and compare: this
/// runs for every task every second).
pub fn sample_to_task_stats(task_id: &str, s: &Sample, mhz_per_core: f64) -> TaskStats {
    task_stats(task_id, &s.values(), mhz_per_core, |name| s.measures(name))
}

/// TaskStats of the figures in `u`, listing as measured the fields `has` names.
#[inline(always)]
fn task_stats(
    task_id: &str,
    u: &ResourceUsage,
    mhz_per_core: f64,
    has: impl Fn(&str) -> bool,
) -> TaskStats {
    let mut cpu_fields = Vec::new();
    let mut mem_fields = Vec::new();
    if has("cpu_percent") {
        cpu_fields.push(cpu_usage::Fields::Percent as i32);
        cpu_fields.push(cpu_usage::Fields::TotalTicks as i32);
    }
    if has("cpu_user_percent") {
        cpu_fields.push(cpu_usage::Fields::UserMode as i32);
    }
    if has("cpu_system_percent") {
        cpu_fields.push(cpu_usage::Fields::SystemMode as i32);
    }
    if has("throttled_periods") {
        cpu_fields.push(cpu_usage::Fields::ThrottledPeriods as i32);
    }
    if has("throttled_time_ns") {
        cpu_fields.push(cpu_usage::Fields::ThrottledTime as i32);
    }
    for (name, f) in [
        ("memory_rss", memory_usage::Fields::Rss),
        ("memory_cache", memory_usage::Fields::Cache),
        ("memory_swap", memory_usage::Fields::Swap),
        ("memory_usage", memory_usage::Fields::Usage),
        ("memory_max_usage", memory_usage::Fields::MaxUsage),
    ] {
        if has(name) {
            mem_fields.push(f as i32);
        }
    }
    let ts = std::time::UNIX_EPOCH
        + std::time::Duration::from_nanos(u.timestamp_unix_nanos.max(0) as u64);
    TaskStats {
        id: task_id.to_owned(),
        timestamp: Some(prost_types::Timestamp::from(ts)),
        agg_resource_usage: Some(TaskResourceUsage {
            cpu: Some(CpuUsage {
                system_mode: u.cpu_system_percent,
                user_mode: u.cpu_user_percent,
                total_ticks: u.cpu_percent / 100.0 * mhz_per_core,
                throttled_periods: u.throttled_periods,
                throttled_time: u.throttled_time_ns,
                percent: u.cpu_percent,
                measured_fields: cpu_fields,
            }),
            memory: Some(MemoryUsage {
                rss: u.memory_rss,
                cache: u.memory_cache,
                max_usage: u.memory_max_usage,
                kernel_usage: 0,
                kernel_max_usage: 0,
                usage: u.memory_usage,
                swap: u.memory_swap,
                measured_fields: mem_fields,
            }),
        }),
        resource_usage_by_pid: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_measured_fields_are_listed_and_ticks_follow_percent() {
        let u = ResourceUsage {
            timestamp_unix_nanos: 1_700_000_000_000_000_000,
            cpu_percent: 50.0,
            memory_rss: 1024,
            measured: vec!["cpu_percent".into(), "memory_rss".into()],
            ..Default::default()
        };
        let s = to_task_stats("t", &u, 2000.0);
        let agg = s.agg_resource_usage.unwrap();
        let cpu = agg.cpu.unwrap();
        assert_eq!(cpu.total_ticks, 1000.0);
        assert_eq!(
            cpu.measured_fields,
            vec![
                cpu_usage::Fields::Percent as i32,
                cpu_usage::Fields::TotalTicks as i32
            ]
        );
        let mem = agg.memory.unwrap();
        assert_eq!(mem.rss, 1024);
        assert_eq!(mem.measured_fields, vec![memory_usage::Fields::Rss as i32]);
        assert_eq!(s.timestamp.unwrap().seconds, 1_700_000_000);
    }

    #[test]
    fn the_plugins_own_sample_gives_the_message_the_shims_sample_gives() {
        use common::cgroup::Counters;
        for counters in [
            Counters {
                cpu_total_ns: Some(5),
                cpu_user_ns: Some(3),
                cpu_system_ns: Some(2),
                throttled_periods: Some(0),
                throttled_ns: Some(0),
                memory_rss: Some(4096),
                memory_cache: Some(8192),
                memory_swap: Some(0),
                memory_usage: Some(12288),
                memory_max_usage: None,
            },
            Counters {
                memory_rss: Some(1),
                memory_max_usage: Some(2),
                ..Default::default()
            },
            Counters::default(),
        ] {
            let sample = Sample {
                timestamp_unix_nanos: 1_700_000_000_123_456_789,
                counters,
                cpu_percent: 12.5,
                cpu_user_percent: 10.0,
                cpu_system_percent: 2.5,
            };
            assert_eq!(
                sample_to_task_stats("t", &sample, 2000.0),
                to_task_stats("t", &sample.to_usage(), 2000.0),
                "{counters:?}"
            );
        }
    }
}
