//! Giving memory back once a long-lived process is done with it: a shim and a sandbox's PID 1
//! live as long as their task, and the stack pages they touched while starting it stay
//! resident (and private to them) unless they say otherwise (docs/performance.md, "Where a
//! task's memory goes").

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by [`release_dead_stack_when_idle`], taken by [`on_park`].
static RELEASE_WHEN_IDLE: AtomicBool = AtomicBool::new(false);

/// Asks for [`release_dead_stack`] the next time the async runtime parks (nothing to run):
/// its park hook ([`on_park`]) runs a few frames from the top of the stack, fewer than any
/// task's poll.
pub fn release_dead_stack_when_idle() {
    RELEASE_WHEN_IDLE.store(true, Ordering::Relaxed);
}

/// The shim's runtime's `on_thread_park` hook: one atomic load unless a release was asked for.
pub fn on_park() {
    if RELEASE_WHEN_IDLE.swap(false, Ordering::Relaxed) {
        release_dead_stack();
    }
}

/// Left alone right below the caller's frame: `madvise`'s own frame (a few words) and the
/// red zone. No signal handler runs on these stacks (the shim reads its signals from a
/// signalfd, PID 1 with `sigwaitinfo`; the rest are ignored).
const KEEP: usize = 4 * 1024;

/// Frees the stack pages below the caller's frame on the process's main stack: the pages a
/// deeper call (parsing the spec, setting the sandbox up, forking the runtime) touched before
/// and that nothing uses now. They would stay private memory until the process exits; after
/// this a later deeper call gets fresh zeroed pages, as it did the first time.
///
/// Only where the caller runs on the main stack (the `[stack]` mapping of
/// `/proc/self/maps`): on a thread's stack, or when the maps cannot be read, it does nothing.
#[inline(never)]
pub fn release_dead_stack() {
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    // SAFETY: sysconf with a valid name.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    let Some((lo, _)) = main_stack_around(sp) else {
        return;
    };
    let hi = sp.saturating_sub(KEEP) & !(page - 1);
    if hi <= lo {
        return;
    }
    // SAFETY: [lo, hi) is the part of this thread's own stack mapping more than KEEP below
    // the deepest live frame (this one; `madvise`'s own is within KEEP): no live frame is
    // there, so MADV_DONTNEED only drops pages nothing uses.
    unsafe {
        libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED);
    }
}

/// The `[stack]` mapping of this process, if `sp` lies in it. Its own frame (and the read
/// buffer, on the heap) is gone by the time the caller uses the answer.
#[inline(never)]
fn main_stack_around(sp: usize) -> Option<(usize, usize)> {
    let maps = std::fs::read("/proc/self/maps").ok()?;
    stack_mapping(&maps).filter(|(lo, hi)| (*lo..*hi).contains(&sp))
}

/// The bounds of the `[stack]` line of a `/proc/<pid>/maps` text.
fn stack_mapping(maps: &[u8]) -> Option<(usize, usize)> {
    let line = maps
        .split(|b| *b == b'\n')
        .find(|l| l.ends_with(b" [stack]"))?;
    let range = line.split(|b| *b == b' ').next()?;
    let range = std::str::from_utf8(range).ok()?;
    let (lo, hi) = range.split_once('-')?;
    Some((
        usize::from_str_radix(lo, 16).ok()?,
        usize::from_str_radix(hi, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_line_of_the_maps_is_found() {
        let maps = b"00400000-00401000 r--p 00000000 00:1f 123 /usr/bin/x\n\
            7ffe8c5d2000-7ffe8c5f3000 rw-p 00000000 00:00 0                          [stack]\n\
            7ffe8c5fa000-7ffe8c5fe000 r--p 00000000 00:00 0                          [vvar]\n";
        assert_eq!(stack_mapping(maps), Some((0x7ffe8c5d2000, 0x7ffe8c5f3000)));
        assert_eq!(
            stack_mapping(b"00400000-00401000 r--p 0 00:1f 1 /x [stack]x\n"),
            None
        );
        assert_eq!(stack_mapping(b""), None);
    }

    #[inline(never)]
    fn deep(n: u64) -> u64 {
        let buf = std::hint::black_box([n as u8; 4096]);
        match n {
            0 => 0,
            _ => deep(n - 1) + buf[4095] as u64,
        }
    }

    /// On the main stack (`--test-threads=1`) it releases what `deep` touched; on a thread's
    /// (the harness's default) it does nothing. Either way the caller's frames survive and a
    /// deeper call afterwards works on fresh pages.
    #[test]
    fn the_frames_above_survive_and_deeper_calls_still_work() {
        let live = std::hint::black_box([5u8; 2048]);
        assert_eq!(deep(16), 136);
        release_dead_stack();
        assert_eq!(live.iter().map(|b| *b as u32).sum::<u32>(), 5 * 2048);
        assert_eq!(deep(16), 136);
    }
}
