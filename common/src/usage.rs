//! Resource usage samples, as Nomad's TaskStats wants them: a [`UsageSource`] reads
//! cumulative counters, the [`Sampler`] turns CPU time deltas into percent of one core.
//! [`CounterReader`] is the source for a task cgroup: it keeps the few counter files open and
//! reads each with one `pread` per sample. Nomad asks for a sample of every task every
//! second, so this is the one thing that runs per task while everything is idle
//! (docs/performance.md): the plugin reads the counters of all its tasks in one pass per
//! interval ([`until_aligned`]), and the shim (the Stats RPC, for tasks without a cgroup and
//! for operators) the same way.

use crate::cgroup::Counters;
use crate::proto::executor::ResourceUsage;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where usage numbers come from.
pub trait UsageSource: Send {
    fn read(&mut self) -> Counters;
}

/// The counter files of a task cgroup (v1: one dir per controller; v2: one dir), as few as
/// give Nomad's fields, since the plugin holds them open for every task it runs (fds per
/// task, docs/operator-guide.md):
///
/// - v2: `cpu.stat` (CPU time, user, system, throttling) and `memory.current`;
///   `memory.swap.current` only where the task may swap (the shim sets `memory.swap.max` to
///   0, so normally not); `memory.stat` (anon, file) is opened when read (below);
/// - v1: `cpuacct.usage_all` (user and system ns per CPU) on hosts of up to
///   [`USAGE_ALL_MAX_CPUS`] CPUs, else `cpuacct.stat` alone (user and system in ticks, their
///   sum the CPU time; `cpuacct.usage` + `cpuacct.stat` on kernels without `usage_all`), and
///   `memory.usage_in_bytes` (the charge, only to see it move);
///   `memory.stat` (total_rss, total_cache, total_swap; usage is rss + cache, the figure the
///   kernel documents as exact where `memory.usage_in_bytes` is fuzzy) opened when read;
///   `cpu.stat` only where a CFS quota is set.
///
/// `memory.stat` is read again only when the charge moved since its last read, and at least
/// every [`MEMORY_SPLIT_MAX_AGE`] while the task uses CPU; the charge itself only when the task
/// used CPU since the last sample (a task that ran no code charged no memory), and at least
/// every [`MEMORY_SPLIT_MAX_AGE`] (the kernel's reclaim moves it without the task).
///
/// Without a quota nothing is ever throttled: throttling is then reported as a measured 0.
/// The peak (`memory.peak`, `memory.max_usage_in_bytes`) is not read: Nomad's own v2
/// executor does not report it either, and it would be one more fd per task.
#[derive(Debug)]
pub struct CounterReader {
    v2: bool,
    /// v2 `cpu.stat`; v1 `cpuacct.usage_all`, or `cpuacct.usage` on kernels without it, or
    /// none on a host of many CPUs (`cpu_split` alone).
    cpu: Option<File>,
    /// v1 `cpuacct.stat` (user and system in ticks) where `cpuacct.usage_all` is not read; the
    /// CPU time too when `cpu` is none.
    cpu_split: Option<File>,
    /// v1 `cpu.stat` where a CFS quota is set.
    throttling: Option<File>,
    /// v1 without a CFS quota: throttling is 0 by construction.
    unthrottled: bool,
    /// `memory.stat`, held only where no charge file tells when to read it again (see
    /// [`MEMORY_SPLIT_MAX_AGE`]); else opened, read and closed when needed, from this path.
    memory_stat: Option<File>,
    memory_stat_path: Option<PathBuf>,
    /// v1 `memory.usage_in_bytes`: the charge, read every sample to know whether
    /// `memory.stat` can have changed.
    memory_charge: Option<File>,
    /// The split `memory.stat` gave, with the charge it was read at.
    last_split: Option<MemorySplit>,
    /// The CPU time of the last sample: a task that used none since cannot have charged
    /// memory, so its charge is not even read (the split is reused, within its max age).
    last_cpu_ns: Option<u64>,
    /// v2 `memory.current` (also v2's charge).
    memory_usage: Option<File>,
    /// v2 `memory.swap.current` where swap is allowed.
    memory_swap: Option<File>,
    /// v2 with `memory.swap.max` = 0: swap is 0 by construction.
    no_swap: bool,
}

/// The longest a task's memory split (rss, cache, swap from `memory.stat`) is reused while
/// its charge (`memory.usage_in_bytes`, `memory.current`) has not changed. `memory.stat` is
/// the costly read of a sample (the kernel formats its ~40 lines on every read: about half
/// the plugin's CPU per sample, docs/performance.md "At scale"); an idle task's charge does
/// not move, so its split is read once per this period instead of every second.
pub const MEMORY_SPLIT_MAX_AGE: Duration = Duration::from_secs(10);

/// The most CPUs a v1 host may have for `cpuacct.usage_all` to be read. The kernel formats a
/// line per possible CPU on every read of it (1.4 µs a read on 2 CPUs, growing by the CPU),
/// so on a large host it would be most of a sample's cost; `cpuacct.stat` is a fixed two
/// lines (the kernel sums the CPUs without formatting them: 0.7 µs on 2 CPUs), at the
/// price of the user/system split in ticks (10 ms) instead of ns.
pub const USAGE_ALL_MAX_CPUS: usize = 8;

/// How many CPUs `cpuacct.usage_all`'s text lists (a line each after its header).
fn usage_all_cpus(f: &File) -> usize {
    let mut buf = Vec::new();
    read_text(Some(f), &mut buf)
        .map(|t| {
            t.split(|&c| c == b'\n')
                .skip(1)
                .filter(|l| !l.trim_ascii().is_empty())
                .count()
        })
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
struct MemorySplit {
    charge: u64,
    read_at: Instant,
    rss: Option<u64>,
    cache: Option<u64>,
    swap: Option<u64>,
}

thread_local! {
    /// What every reader's `pread`s read into on this thread, kept from sample to sample (a
    /// sample allocates nothing). One per thread, not one per reader: a buffer per task was
    /// 8 KiB of the plugin's resident memory per task (8 MiB at 1,000 tasks), and a sample
    /// parses what it read before the next reader runs on the thread.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The first of `dirs` that has file `name`, opened.
fn open_in(dirs: &[PathBuf], name: &str) -> Option<File> {
    dirs.iter().find_map(|d| File::open(d.join(name)).ok())
}

/// The path of file `name` in the first of `dirs` that has it.
fn path_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.exists())
}

/// The trimmed text of file `name` in the first of `dirs` that has it (read once, at open).
fn read_in(dirs: &[PathBuf], name: &str) -> Option<String> {
    dirs.iter()
        .find_map(|d| std::fs::read_to_string(d.join(name)).ok())
        .map(|t| t.trim().to_owned())
}

impl CounterReader {
    /// Opens the counter files found in `dirs` (`v2`: the unified hierarchy). None when
    /// there is none at all.
    pub fn open(v2: bool, dirs: &[PathBuf]) -> Option<CounterReader> {
        let r = if v2 {
            let no_swap = read_in(dirs, "memory.swap.max").as_deref() == Some("0");
            CounterReader {
                v2,
                cpu: open_in(dirs, "cpu.stat"),
                cpu_split: None,
                throttling: None,
                unthrottled: false,
                memory_stat: None,
                memory_stat_path: path_in(dirs, "memory.stat"),
                memory_charge: None,
                last_split: None,
                last_cpu_ns: None,
                // memory.current exists only where the memory controller is enabled.
                memory_usage: open_in(dirs, "memory.current"),
                memory_swap: if no_swap {
                    None
                } else {
                    open_in(dirs, "memory.swap.current")
                },
                no_swap,
            }
        } else {
            let (cpu, cpu_split) = match open_in(dirs, "cpuacct.usage_all") {
                Some(all) if usage_all_cpus(&all) <= USAGE_ALL_MAX_CPUS => (Some(all), None),
                // Many CPUs: the fixed-size stat alone (usage_all kept if stat is missing).
                Some(all) => match open_in(dirs, "cpuacct.stat") {
                    Some(stat) => (None, Some(stat)),
                    None => (Some(all), None),
                },
                None => (
                    open_in(dirs, "cpuacct.usage"),
                    open_in(dirs, "cpuacct.stat"),
                ),
            };
            // No quota ("-1", or no cpu controller at all): nothing to throttle.
            let quota = read_in(dirs, "cpu.cfs_quota_us");
            let unthrottled = quota.as_deref().is_none_or(|q| q.starts_with('-'));
            CounterReader {
                v2,
                cpu,
                cpu_split,
                throttling: if unthrottled {
                    None
                } else {
                    open_in(dirs, "cpu.stat")
                },
                unthrottled,
                memory_stat: None,
                memory_stat_path: path_in(dirs, "memory.stat"),
                memory_charge: open_in(dirs, "memory.usage_in_bytes"),
                last_split: None,
                last_cpu_ns: None,
                memory_usage: None,
                memory_swap: None,
                no_swap: false,
            }
        };
        let mut r = r;
        // Without a charge to watch, memory.stat is held and read every sample.
        let charge = if r.v2 {
            &r.memory_usage
        } else {
            &r.memory_charge
        };
        if charge.is_none() {
            r.memory_stat = r.memory_stat_path.take().and_then(|p| File::open(p).ok());
        }
        let any = r.cpu.is_some() || r.memory_stat.is_some() || r.memory_stat_path.is_some();
        any.then_some(r)
    }

    /// Like [`CounterReader::open`], telling v2 from v1 by `cgroup.controllers` (only the
    /// unified hierarchy has it), for a list of dirs as the shim records it.
    pub fn open_dirs(dirs: &[PathBuf]) -> Option<CounterReader> {
        let v2 = dirs.iter().any(|d| d.join("cgroup.controllers").exists());
        Self::open(v2, dirs)
    }

    /// How many files this reader holds open (for the bench and the operator guide).
    pub fn open_files(&self) -> usize {
        [
            &self.cpu,
            &self.cpu_split,
            &self.throttling,
            &self.memory_stat,
            &self.memory_charge,
            &self.memory_usage,
            &self.memory_swap,
        ]
        .iter()
        .filter(|f| f.is_some())
        .count()
    }

    /// One sample: one `pread` per open file, into the thread's buffer, and one pass over
    /// each file's text for the keys it needs.
    pub fn counters(&mut self) -> Counters {
        READ_BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => self.counters_into(&mut buf),
            // Only re-entered if a reader ran inside another's read: never, but not a panic.
            Err(_) => self.counters_into(&mut Vec::new()),
        })
    }

    fn counters_into(&mut self, buf: &mut Vec<u8>) -> Counters {
        let mut s = Counters::default();
        if self.v2 {
            if let Some(stat) = read_text(self.cpu.as_ref(), buf) {
                let (mut usage, mut user, mut system, mut throttled) = (None, None, None, None);
                keyed_many(
                    stat,
                    &mut [
                        (b"usage_usec", &mut usage),
                        (b"user_usec", &mut user),
                        (b"system_usec", &mut system),
                        (b"throttled_usec", &mut throttled),
                        (b"nr_throttled", &mut s.throttled_periods),
                    ],
                );
                let ns = |u: Option<u64>| u.map(|u| u.saturating_mul(1000));
                s.cpu_total_ns = ns(usage);
                s.cpu_user_ns = ns(user);
                s.cpu_system_ns = ns(system);
                s.throttled_ns = ns(throttled);
            }
            let idle = s.cpu_total_ns.is_some() && s.cpu_total_ns == self.last_cpu_ns;
            self.last_cpu_ns = s.cpu_total_ns;
            let fresh = self
                .last_split
                .filter(|l| l.read_at.elapsed() < MEMORY_SPLIT_MAX_AGE);
            if let (Some(l), true) = (fresh, idle) {
                (s.memory_usage, s.memory_rss, s.memory_cache) = (Some(l.charge), l.rss, l.cache);
                s.memory_swap = self.no_swap.then_some(0).or(l.swap);
            } else if self.memory_usage.is_some() {
                s.memory_usage = read_text(self.memory_usage.as_ref(), buf).and_then(number);
                let split = memory_split(
                    &mut self.last_split,
                    s.memory_usage,
                    idle,
                    &self.memory_stat,
                    &self.memory_stat_path,
                    buf,
                    [b"anon", b"file", b""],
                );
                (s.memory_rss, s.memory_cache) = (split.rss, split.cache);
                s.memory_swap = if self.no_swap {
                    Some(0)
                } else {
                    read_text(self.memory_swap.as_ref(), buf).and_then(number)
                };
                // Kept with the split, for the samples that reuse it.
                if let Some(l) = self.last_split.as_mut() {
                    l.swap = s.memory_swap;
                }
            }
            return s;
        }
        if self.cpu_split.is_none() {
            // cpuacct.usage_all.
            if let Some(all) = read_text(self.cpu.as_ref(), buf) {
                let (user, system) = per_cpu_sums(all);
                s.cpu_user_ns = user;
                s.cpu_system_ns = system;
                s.cpu_total_ns = user.zip(system).map(|(u, y)| u.saturating_add(y));
            }
        } else {
            // cpuacct.usage (if held) + cpuacct.stat.
            s.cpu_total_ns = read_text(self.cpu.as_ref(), buf).and_then(number);
            if let Some(stat) = read_text(self.cpu_split.as_ref(), buf) {
                let (mut user, mut system) = (None, None);
                keyed_many(stat, &mut [(b"user", &mut user), (b"system", &mut system)]);
                let tick = crate::proc::nanos_per_tick();
                s.cpu_user_ns = user.map(|t| t.saturating_mul(tick));
                s.cpu_system_ns = system.map(|t| t.saturating_mul(tick));
            }
            if self.cpu.is_none() {
                // Their sum is the task's CPU time, in ticks: recent kernels scale stat's
                // user and system to its exact run time (cputime_adjust; on this project's
                // 6.x kernels the sum equals cpuacct.usage), older ones sample it per tick.
                s.cpu_total_ns = s
                    .cpu_user_ns
                    .zip(s.cpu_system_ns)
                    .map(|(u, y)| u.saturating_add(y));
            }
        }
        if self.unthrottled {
            (s.throttled_ns, s.throttled_periods) = (Some(0), Some(0));
        } else if let Some(stat) = read_text(self.throttling.as_ref(), buf) {
            keyed_many(
                stat,
                &mut [
                    (b"throttled_time", &mut s.throttled_ns),
                    (b"nr_throttled", &mut s.throttled_periods),
                ],
            );
        }
        // A task that used no CPU since the last sample cannot have charged memory: its
        // charge is not even read (the split is reused, within its max age).
        let idle = s.cpu_total_ns.is_some() && s.cpu_total_ns == self.last_cpu_ns;
        self.last_cpu_ns = s.cpu_total_ns;
        if self.memory_stat.is_some() || self.memory_stat_path.is_some() {
            let fresh = self
                .last_split
                .filter(|l| l.read_at.elapsed() < MEMORY_SPLIT_MAX_AGE);
            let charge = match fresh {
                Some(l) if idle => Some(l.charge),
                _ => read_text(self.memory_charge.as_ref(), buf).and_then(number),
            };
            let split = memory_split(
                &mut self.last_split,
                charge,
                idle,
                &self.memory_stat,
                &self.memory_stat_path,
                buf,
                [b"total_rss", b"total_cache", b"total_swap"],
            );
            (s.memory_rss, s.memory_cache, s.memory_swap) = (split.rss, split.cache, split.swap);
            s.memory_usage = s
                .memory_rss
                .zip(s.memory_cache)
                .map(|(r, c)| r.saturating_add(c));
        }
        s
    }
}

/// The memory split (rss, cache, swap) from `memory.stat` (`keys`; an empty key is not
/// read): the last one again while the charge is what it was when it was read and it is
/// younger than [`MEMORY_SPLIT_MAX_AGE`] (or the task is `idle`: it used no CPU since the last
/// sample), else read now (the held file, or the path opened
/// for this read and closed after it, so no fd is held for it).
fn memory_split(
    last: &mut Option<MemorySplit>,
    charge: Option<u64>,
    idle: bool,
    held: &Option<File>,
    path: &Option<PathBuf>,
    buf: &mut Vec<u8>,
    keys: [&[u8]; 3],
) -> MemorySplit {
    if let (Some(l), Some(c)) = (last.as_mut(), charge) {
        if l.charge == c && l.read_at.elapsed() < MEMORY_SPLIT_MAX_AGE {
            return *l;
        }
        // A task that ran no code since the split was read cannot have moved pages between
        // anon and file at the same charge: the split stays good for another period (the
        // kernel's reclaim or swap-out would have moved the charge).
        if l.charge == c && idle {
            l.read_at = Instant::now();
            return *l;
        }
    }
    let opened = if held.is_none() {
        path.as_ref().and_then(|p| File::open(p).ok())
    } else {
        None
    };
    let file = if held.is_some() { held } else { &opened };
    let (mut rss, mut cache, mut swap) = (None, None, None);
    if let Some(stat) = read_text(file.as_ref(), buf) {
        // An empty key matches no line with a number (a blank line has none).
        keyed_many(
            stat,
            &mut [
                (keys[0], &mut rss),
                (keys[1], &mut cache),
                (keys[2], &mut swap),
            ],
        );
    }
    let split = MemorySplit {
        charge: charge.unwrap_or(u64::MAX),
        read_at: Instant::now(),
        rss,
        cache,
        swap,
    };
    // Only a read at a known charge can be reused.
    *last = charge.map(|_| split);
    split
}

/// The whole of `f` (one `pread` from offset 0; a second only for a file larger than the
/// buffer, such as `cpuacct.usage_all` on a host with hundreds of CPUs) in `buf`, which keeps
/// its size for the next read (it is not cleared: only the bytes read are returned).
fn read_text<'a>(f: Option<&File>, buf: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let f = f?;
    if buf.len() < 8192 {
        buf.resize(8192, 0);
    }
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], len as u64).ok()?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    Some(&buf[..len])
}

/// A decimal number, surrounded by whitespace or not.
fn number(t: &[u8]) -> Option<u64> {
    parse_u64(t.trim_ascii())
}

/// `t` as a u64 when it is only ASCII digits (as `str::parse::<u64>` takes them, without a
/// sign), None on anything else or overflow.
fn parse_u64(t: &[u8]) -> Option<u64> {
    if t.is_empty() {
        return None;
    }
    t.iter().try_fold(0u64, |n, &c| {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Fills each `(key, value)` from a flat-keyed cgroup file's text (`cpu.stat`,
/// `memory.stat`…) in one pass: the number after the first line whose first field is `key`
/// and whose second is a number, as [`keyed`] finds it; keys not found stay None. Each line
/// costs a scan to its first space and a length compare with the keys, the number is parsed
/// only on the lines wanted (`memory.stat` has ~40 lines, and this runs every second for
/// every task).
fn keyed_many(text: &[u8], keys: &mut [(&[u8], &mut Option<u64>)]) {
    let mut missing = keys.len();
    for line in text.split(|&c| c == b'\n') {
        if missing == 0 {
            return;
        }
        let line = line.trim_ascii_start();
        let end = line
            .iter()
            .position(|c| c.is_ascii_whitespace())
            .unwrap_or(line.len());
        let (k, rest) = line.split_at(end);
        let Some((_, value)) = keys.iter_mut().find(|(key, _)| *key == k) else {
            continue;
        };
        if value.is_some() {
            continue;
        }
        // The second field: up to the next whitespace.
        let rest = rest.trim_ascii_start();
        let v = rest
            .iter()
            .position(|c| c.is_ascii_whitespace())
            .map_or(rest, |e| &rest[..e]);
        if let Some(n) = parse_u64(v) {
            **value = Some(n);
            missing -= 1;
        }
    }
}

/// The fields of a line, split at ASCII whitespace.
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|c| c.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
}

/// User and system ns summed over the CPUs of `cpuacct.usage_all` ("cpu user system", then
/// one line per CPU).
fn per_cpu_sums(text: &[u8]) -> (Option<u64>, Option<u64>) {
    let mut lines = text.split(|&c| c == b'\n');
    let mut header = fields(lines.next().unwrap_or_default());
    let expected: [&[u8]; 3] = [b"cpu", b"user", b"system"];
    if !expected.iter().all(|e| header.next() == Some(e)) || header.next().is_some() {
        return (None, None);
    }
    let (mut user, mut system) = (0u64, 0u64);
    for l in lines {
        let mut it = fields(l);
        let Some(_cpu) = it.next() else {
            // The empty "line" after the last newline (a blank line counts as none).
            continue;
        };
        match (it.next().and_then(parse_u64), it.next().and_then(parse_u64)) {
            (Some(u), Some(y)) => {
                user = user.saturating_add(u);
                system = system.saturating_add(y);
            }
            _ => return (None, None),
        }
    }
    (Some(user), Some(system))
}

impl UsageSource for CounterReader {
    fn read(&mut self) -> Counters {
        self.counters()
    }
}

/// The value of `key` in a flat-keyed cgroup file's text (`cpu.stat`, `memory.stat`…).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// The time until the next multiple of `interval` on the monotonic clock, which every
/// process shares: every task of a node is sampled at the same moments, so the plugin (and
/// the agent) wake once per interval for all of them instead of once per task. At least a
/// quarter interval (a sample just before a boundary is not followed by another at once).
pub fn until_aligned(interval: Duration) -> Duration {
    let step = interval.as_nanos().max(1);
    let now = monotonic().as_nanos();
    let wait = step - now % step;
    let wait = if wait < step / 4 { wait + step } else { wait };
    Duration::from_nanos(wait.min(u64::MAX as u128) as u64)
}

/// CLOCK_MONOTONIC now.
fn monotonic() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Turns counters into samples.
pub struct Sampler {
    source: Box<dyn UsageSource>,
    last: Option<(Instant, Counters)>,
}

/// One sample: the counters as read (None: not measured here) and the CPU use since the
/// previous sample in percent of one core (0 for the first, which has no delta, as Nomad's
/// executors report it; measured wherever the CPU counter is).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub timestamp_unix_nanos: i64,
    pub counters: Counters,
    pub cpu_percent: f64,
    pub cpu_user_percent: f64,
    pub cpu_system_percent: f64,
}

/// The names of `ResourceUsage.measured`, in the order a sample lists them.
const MEASURED: [&str; 10] = [
    "memory_rss",
    "memory_cache",
    "memory_swap",
    "memory_usage",
    "memory_max_usage",
    "throttled_periods",
    "throttled_time_ns",
    "cpu_percent",
    "cpu_user_percent",
    "cpu_system_percent",
];

impl Sample {
    /// Whether the field `ResourceUsage.measured` names `name` was measured.
    pub fn measures(&self, name: &str) -> bool {
        let c = &self.counters;
        match name {
            "memory_rss" => c.memory_rss.is_some(),
            "memory_cache" => c.memory_cache.is_some(),
            "memory_swap" => c.memory_swap.is_some(),
            "memory_usage" => c.memory_usage.is_some(),
            "memory_max_usage" => c.memory_max_usage.is_some(),
            "throttled_periods" => c.throttled_periods.is_some(),
            "throttled_time_ns" => c.throttled_ns.is_some(),
            "cpu_percent" => c.cpu_total_ns.is_some(),
            "cpu_user_percent" => c.cpu_user_ns.is_some(),
            "cpu_system_percent" => c.cpu_system_ns.is_some(),
            _ => false,
        }
    }

    /// The figures as the shim's message carries them, without `measured` (see
    /// [`Sample::to_usage`]).
    pub fn values(&self) -> ResourceUsage {
        let c = &self.counters;
        ResourceUsage {
            timestamp_unix_nanos: self.timestamp_unix_nanos,
            cpu_percent: self.cpu_percent,
            cpu_user_percent: self.cpu_user_percent,
            cpu_system_percent: self.cpu_system_percent,
            memory_rss: c.memory_rss.unwrap_or(0),
            memory_cache: c.memory_cache.unwrap_or(0),
            memory_swap: c.memory_swap.unwrap_or(0),
            memory_usage: c.memory_usage.unwrap_or(0),
            memory_max_usage: c.memory_max_usage.unwrap_or(0),
            throttled_periods: c.throttled_periods.unwrap_or(0),
            throttled_time_ns: c.throttled_ns.unwrap_or(0),
            measured: Vec::new(),
        }
    }

    /// The sample as the shim's Stats stream sends it.
    pub fn to_usage(&self) -> ResourceUsage {
        ResourceUsage {
            measured: MEASURED
                .iter()
                .filter(|n| self.measures(n))
                .map(|n| (*n).to_owned())
                .collect(),
            ..self.values()
        }
    }
}

impl Sampler {
    pub fn new(source: Box<dyn UsageSource>) -> Self {
        Sampler { source, last: None }
    }

    /// One sample, as the shim's Stats stream sends it.
    pub fn sample(&mut self) -> ResourceUsage {
        self.next_sample().to_usage()
    }

    /// One sample. CPU percentages are measured from the second sample on (the first has no
    /// delta and reports 0, as Nomad's executors do).
    pub fn next_sample(&mut self) -> Sample {
        let now = Instant::now();
        let c = self.source.read();
        let mut s = Sample {
            timestamp_unix_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            counters: c,
            ..Default::default()
        };
        if let Some((then, prev)) = &self.last {
            let wall = now.duration_since(*then).as_nanos().max(1) as f64;
            let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64 / wall * 100.0),
                _ => None,
            };
            s.cpu_percent = pct(c.cpu_total_ns, prev.cpu_total_ns).unwrap_or(0.0);
            s.cpu_user_percent = pct(c.cpu_user_ns, prev.cpu_user_ns).unwrap_or(0.0);
            s.cpu_system_percent = pct(c.cpu_system_ns, prev.cpu_system_ns).unwrap_or(0.0);
        }
        self.last = Some((now, c));
        s
    }
}

/// The dirs of a task cgroup as the shim records them (`StatusResponse.cgroup`, the state
/// file's `cgroup`): comma-separated.
pub fn cgroup_dirs(recorded: &str) -> Vec<PathBuf> {
    recorded
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose counters the test sets.
    struct Fake(std::sync::Arc<std::sync::Mutex<Counters>>);

    impl UsageSource for Fake {
        fn read(&mut self) -> Counters {
            *self.0.lock().unwrap()
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
    fn samples_are_aligned_to_the_interval_on_the_shared_clock() {
        let interval = Duration::from_millis(1000);
        let wait = until_aligned(interval);
        assert!(
            wait >= interval / 4 && wait <= interval + interval / 4,
            "{wait:?}"
        );
        let at = monotonic() + wait;
        // Within a few ms of a whole second (the computation itself takes microseconds).
        let off = at.as_nanos() % interval.as_nanos();
        assert!(!(5_000_000..=995_000_000).contains(&off), "{off}");
    }

    #[test]
    fn counter_files_are_found_in_whichever_dir_has_them_and_read_again_each_time() {
        let t = tempfile::tempdir().unwrap();
        let (cpu, acct, mem, cpuset) = (
            t.path().join("cpu"),
            t.path().join("cpuacct"),
            t.path().join("mem"),
            t.path().join("s"),
        );
        for d in [&cpu, &acct, &mem, &cpuset] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(
            acct.join("cpuacct.usage_all"),
            "cpu user system\n0 3000 1000\n1 2000 0\n",
        )
        .unwrap();
        // Files the reader must not need when usage_all is there.
        std::fs::write(acct.join("cpuacct.usage"), "1\n").unwrap();
        std::fs::write(acct.join("cpuacct.stat"), "user 1\nsystem 1\n").unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(cpu.join("cpu.stat"), "nr_throttled 2\nthrottled_time 9\n").unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "1\n").unwrap();
        std::fs::write(mem.join("memory.max_usage_in_bytes"), "1\n").unwrap();
        std::fs::write(mem.join("memory.stat"), "total_rss 4096\ntotal_cache 1\n").unwrap();
        let dirs = vec![cpuset, cpu.clone(), acct.clone(), mem.clone()];
        let mut r = CounterReader::open_dirs(&dirs).expect("v1 counters");
        // cpuacct.usage_all and memory.usage_in_bytes; memory.stat is opened when read.
        assert_eq!(r.open_files(), 2, "{r:?}");
        let c = r.counters();
        assert_eq!(c.cpu_total_ns, Some(6000));
        assert_eq!((c.cpu_user_ns, c.cpu_system_ns), (Some(5000), Some(1000)));
        // No quota: nothing is throttled (cpu.stat is not read).
        assert_eq!((c.throttled_periods, c.throttled_ns), (Some(0), Some(0)));
        assert_eq!(
            (c.memory_usage, c.memory_rss, c.memory_cache),
            (Some(4097), Some(4096), Some(1))
        );
        assert_eq!(c.memory_max_usage, None);
        // memory.stat is read again when the charge moved (a cgroup file regenerates; here
        // the test rewrites it); while the charge stays, the split read at it is reused.
        std::fs::write(mem.join("memory.stat"), "total_rss 8192\ntotal_cache 0\n").unwrap();
        assert_eq!(r.counters().memory_usage, Some(4097));
        std::fs::write(mem.join("memory.usage_in_bytes"), "2\n").unwrap();
        // A task that used no CPU since cannot have charged memory: not even the charge is
        // read. Once it used some, the moved charge has memory.stat read.
        assert_eq!(r.counters().memory_usage, Some(4097));
        std::fs::write(
            acct.join("cpuacct.usage_all"),
            "cpu user system\n0 3001 1000\n1 2000 0\n",
        )
        .unwrap();
        assert_eq!(r.counters().memory_usage, Some(8192));
        // Once the split is MEMORY_SPLIT_MAX_AGE old, an idle task has its charge read again
        // (not memory.stat, while the charge stays)...
        std::fs::write(mem.join("memory.stat"), "total_rss 100\ntotal_cache 0\n").unwrap();
        assert_eq!(r.counters().memory_usage, Some(8192));
        let age = |r: &mut CounterReader| {
            if let Some(l) = r.last_split.as_mut() {
                l.read_at -= MEMORY_SPLIT_MAX_AGE;
            }
        };
        age(&mut r);
        assert_eq!(r.counters().memory_usage, Some(8192));
        age(&mut r);
        std::fs::write(mem.join("memory.usage_in_bytes"), "3\n").unwrap();
        assert_eq!(r.counters().memory_usage, Some(100));
        // ...and a task that uses CPU has memory.stat read again at that age, charge or not.
        std::fs::write(mem.join("memory.stat"), "total_rss 200\ntotal_cache 0\n").unwrap();
        std::fs::write(
            acct.join("cpuacct.usage_all"),
            "cpu user system\n0 3002 1000\n1 2000 0\n",
        )
        .unwrap();
        assert_eq!(r.counters().memory_usage, Some(100));
        age(&mut r);
        std::fs::write(
            acct.join("cpuacct.usage_all"),
            "cpu user system\n0 3003 1000\n1 2000 0\n",
        )
        .unwrap();
        assert_eq!(r.counters().memory_usage, Some(200));

        // With a quota, cpu.stat is read; a kernel without usage_all: usage + stat.
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "50000\n").unwrap();
        std::fs::remove_file(acct.join("cpuacct.usage_all")).unwrap();
        std::fs::write(acct.join("cpuacct.usage"), "5000\n").unwrap();
        std::fs::write(acct.join("cpuacct.stat"), "user 3\nsystem 1\n").unwrap();
        let mut r = CounterReader::open_dirs(&dirs).unwrap();
        // usage, stat, cpu.stat, usage_in_bytes.
        assert_eq!(r.open_files(), 4, "{r:?}");
        let c = r.counters();
        let tick = crate::proc::nanos_per_tick();
        assert_eq!(c.cpu_total_ns, Some(5000));
        assert_eq!(
            (c.cpu_user_ns, c.cpu_system_ns),
            (Some(3 * tick), Some(tick))
        );
        assert_eq!((c.throttled_periods, c.throttled_ns), (Some(2), Some(9)));

        // v2: one dir; no memory controller, no memory figures.
        let v2 = t.path().join("v2");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "cpu\n").unwrap();
        std::fs::write(
            v2.join("cpu.stat"),
            "usage_usec 7\nuser_usec 4\nsystem_usec 3\n",
        )
        .unwrap();
        let mut r = CounterReader::open_dirs(std::slice::from_ref(&v2)).unwrap();
        let c = r.counters();
        assert_eq!(c.cpu_total_ns, Some(7000));
        assert_eq!(c.memory_usage, None);
        // With memory: swap.max = 0 (as the shim sets it) means no swap file held.
        std::fs::write(v2.join("memory.stat"), "anon 10\nfile 20\n").unwrap();
        std::fs::write(v2.join("memory.current"), "40\n").unwrap();
        std::fs::write(v2.join("memory.swap.max"), "0\n").unwrap();
        std::fs::write(v2.join("memory.swap.current"), "7\n").unwrap();
        let mut r = CounterReader::open_dirs(std::slice::from_ref(&v2)).unwrap();
        // cpu.stat and memory.current; memory.stat is opened when read.
        assert_eq!(r.open_files(), 2, "{r:?}");
        let c = r.counters();
        assert_eq!(
            (c.memory_rss, c.memory_cache, c.memory_usage, c.memory_swap),
            (Some(10), Some(20), Some(40), Some(0))
        );
        std::fs::write(v2.join("memory.swap.max"), "max\n").unwrap();
        let mut r = CounterReader::open_dirs(std::slice::from_ref(&v2)).unwrap();
        assert_eq!((r.open_files(), r.counters().memory_swap), (3, Some(7)));

        assert!(CounterReader::open_dirs(&[t.path().join("none")]).is_none());
        assert_eq!(
            cgroup_dirs("/a, /b,"),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }

    #[test]
    fn a_v1_host_of_many_cpus_has_cpuacct_stat_read_not_usage_all() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let usage_all = |cpus: usize| {
            let mut text = String::from("cpu user system\n");
            for cpu in 0..cpus {
                text.push_str(&format!("{cpu} 1000 1000\n"));
            }
            std::fs::write(dir.join("cpuacct.usage_all"), text).unwrap();
        };
        std::fs::write(dir.join("cpuacct.usage"), "999\n").unwrap();
        std::fs::write(dir.join("cpuacct.stat"), "user 30\nsystem 10\n").unwrap();
        std::fs::write(dir.join("memory.usage_in_bytes"), "1\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "total_rss 1\ntotal_cache 0\n").unwrap();
        let dirs = [dir.clone()];

        // Up to USAGE_ALL_MAX_CPUS: usage_all, summed (ns).
        usage_all(USAGE_ALL_MAX_CPUS);
        let mut r = CounterReader::open(false, &dirs).unwrap();
        assert!(r.cpu.is_some() && r.cpu_split.is_none(), "{r:?}");
        let c = r.counters();
        let n = USAGE_ALL_MAX_CPUS as u64;
        assert_eq!(
            (c.cpu_user_ns, c.cpu_total_ns),
            (Some(1000 * n), Some(2000 * n))
        );

        // One more CPU: cpuacct.stat alone, still one CPU fd (and the charge's).
        usage_all(USAGE_ALL_MAX_CPUS + 1);
        let mut r = CounterReader::open(false, &dirs).unwrap();
        assert!(r.cpu.is_none() && r.cpu_split.is_some(), "{r:?}");
        assert_eq!(r.open_files(), 2, "{r:?}");
        let tick = crate::proc::nanos_per_tick();
        let c = r.counters();
        assert_eq!(
            (c.cpu_user_ns, c.cpu_system_ns, c.cpu_total_ns),
            (Some(30 * tick), Some(10 * tick), Some(40 * tick))
        );
        // Read again each sample, and an idle task (no tick more) is seen as idle.
        std::fs::write(dir.join("cpuacct.stat"), "user 31\nsystem 10\n").unwrap();
        assert_eq!(r.counters().cpu_total_ns, Some(41 * tick));
        assert_eq!(r.counters().cpu_total_ns, Some(41 * tick));
        assert_eq!(r.last_cpu_ns, Some(41 * tick));

        // Without cpuacct.stat, usage_all is read however many CPUs there are.
        std::fs::remove_file(dir.join("cpuacct.stat")).unwrap();
        let mut r = CounterReader::open(false, &dirs).unwrap();
        assert!(r.cpu.is_some() && r.cpu_split.is_none(), "{r:?}");
        assert_eq!(r.counters().cpu_total_ns, Some(2000 * (n + 1)));
    }

    #[test]
    fn usage_all_is_summed_over_cpus_and_a_file_larger_than_the_buffer_is_read_whole() {
        let mut text = String::from("cpu user system\n");
        for cpu in 0..1000 {
            text.push_str(&format!("{cpu} 1000000000 2\n"));
        }
        assert!(text.len() > 8192);
        assert_eq!(
            per_cpu_sums(text.as_bytes()),
            (Some(1000 * 1_000_000_000), Some(2000))
        );
        assert_eq!(per_cpu_sums(b"garbage\n"), (None, None));
        assert_eq!(per_cpu_sums(b"cpu user system\n0 1 x\n"), (None, None));
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), &text).unwrap();
        let f = Some(File::open(t.path()).unwrap());
        let mut buf = Vec::new();
        assert_eq!(read_text(f.as_ref(), &mut buf), Some(text.as_bytes()));
        // The buffer is kept, larger, and a shorter text read into it is returned alone.
        std::fs::write(t.path(), "cpu user system\n0 1 2\n").unwrap();
        let cap = buf.len();
        assert!(cap > 8192);
        assert_eq!(
            per_cpu_sums(read_text(f.as_ref(), &mut buf).unwrap()),
            (Some(1), Some(2))
        );
        assert_eq!(buf.len(), cap);
    }

    #[test]
    fn keys_are_found_in_one_pass_as_keyed_finds_them_one_by_one() {
        let text = "rss 1\ncache 2\ntotal_rss_huge 9\ntotal_rss x\n total_rss  4096 \n\
                    total_cache 8192\ntotal_rss 5\nfoo\n\ntotal_swap 18446744073709551615\n";
        let (mut rss, mut cache, mut swap, mut none) = (None, None, None, None);
        keyed_many(
            text.as_bytes(),
            &mut [
                (b"total_rss", &mut rss),
                (b"total_cache", &mut cache),
                (b"total_swap", &mut swap),
                (b"total_shmem", &mut none),
            ],
        );
        assert_eq!(
            (rss, cache, swap, none),
            (Some(4096), Some(8192), Some(u64::MAX), None)
        );
        for (k, v) in [
            ("total_rss", rss),
            ("total_cache", cache),
            ("total_swap", swap),
        ] {
            assert_eq!(keyed(text, k), v, "{k}");
        }
        assert_eq!(number(b" 42\n"), Some(42));
        for bad in [&b""[..], b"-1", b"+1", b"1 2", b"18446744073709551616"] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }
}
