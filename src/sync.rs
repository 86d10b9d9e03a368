//! Locking shared by the modules whose mutexes guard caches, memos and device state.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, taking the value over from a thread that panicked while holding it: for data that
/// stays consistent whatever the panic interrupted (a cache checked against its stamp, a memo,
/// a device's registers: a panic elsewhere must not wedge the VM).
pub fn relock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
