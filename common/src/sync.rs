//! Locking that outlives a panic.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data over even when a thread panicked while holding it: every mutex
/// in this workspace guards data that stays consistent between statements (a map, a cache, a
/// writer), so a poisoned lock is no reason to lose a task, an event or a log line.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_hands_out_its_data() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let held = m.clone();
        let r = std::thread::spawn(move || {
            let mut g = held.lock().unwrap();
            g.push(2);
            panic!("poison the lock");
        })
        .join();
        assert!(r.is_err());
        assert!(m.is_poisoned());
        lock(&m).push(3);
        assert_eq!(*lock(&m), [1, 2, 3]);
    }
}
