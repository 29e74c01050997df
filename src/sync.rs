//! The one way cessfs takes a std mutex: a panic elsewhere never wedges the lock for everyone
//! else (the data it guards stays consistent because no critical section leaves it half-made).

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the guard back from a thread that panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Exclusive holds on numbered things (inodes), each independent of the others: holding one
/// never waits for another.
#[derive(Default)]
pub struct Holds {
    held: Mutex<std::collections::HashSet<u64>>,
    released: std::sync::Condvar,
}

/// A hold on one number, released when dropped.
pub struct Hold<'a> {
    holds: &'a Holds,
    key: u64,
}

impl Holds {
    /// Waits until nobody holds `key`, then holds it.
    pub fn hold(&self, key: u64) -> Hold<'_> {
        let mut held = lock(&self.held);
        while held.contains(&key) {
            held = self.released.wait(held).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        held.insert(key);
        Hold { holds: self, key }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        lock(&self.holds.held).remove(&self.key);
        self.holds.released.notify_all();
    }
}

/// A stop signal for threads that work now and then: they wait on it between rounds.
#[derive(Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Stop {
    /// Tells every waiter to stop.
    pub fn stop(&self) {
        *lock(&self.stopped) = true;
        self.changed.notify_all();
    }

    /// Waits up to `timeout`; whether the signal came.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let stopped = lock(&self.stopped);
        let (stopped, _) =
            self.changed.wait_timeout_while(stopped, timeout, |s| !*s).unwrap_or_else(|poisoned| poisoned.into_inner());
        *stopped
    }
}
