//! Locking shared by the modules whose mutexes guard caches or memos.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, taking the value over from a thread that panicked while holding it: for data that
/// stays consistent whatever the panic interrupted (a cache checked against its stamp, a memo).
pub fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
