//! One fetch per object at a time ([`InFlight`]): the first reader of an object that is not
//! local claims it and fetches it; every later reader of the same object, until that fetch
//! ends, waits for its result instead of sending a second request. [`super::lazy`] uses it
//! for chunks the guest reads, chunks read ahead or prefetched at boot, and kernels fetched
//! while the snapshot manifests are read.
//!
//! Pure: no I/O, no runtime; the caller starts the fetch and fills the slot.

use crate::store::error::StoreError;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What a fetch produced: the object's verified bytes, or why it failed.
pub type Fetched = Result<Arc<Vec<u8>>, Arc<StoreError>>;

/// Where one fetch's result appears (by default an object's bytes).
pub struct Slot<T = Fetched> {
    result: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            result: Mutex::new(None),
            ready: Condvar::new(),
        }
    }
}

impl<T: Clone> Slot<T> {
    /// Publish the result and wake every waiter. Only the first result counts.
    pub fn fill(&self, result: T) {
        let mut r = crate::sync::relock(&self.result);
        if r.is_none() {
            *r = Some(result);
        }
        self.ready.notify_all();
    }

    /// The result, waiting at most `timeout` for it; `None` when it did not come in time.
    pub fn wait(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut r = crate::sync::relock(&self.result);
        loop {
            if let Some(res) = r.as_ref() {
                return Some(res.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            r = match self.ready.wait_timeout(r, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The fetches under way, by object.
pub struct InFlight<K, T = Fetched> {
    map: Mutex<HashMap<K, Arc<Slot<T>>>>,
}

impl<K, T> Default for InFlight<K, T> {
    fn default() -> Self {
        InFlight {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, T> InFlight<K, T> {
    /// The slot of `key`'s fetch, and `true` when there was none: the caller now owns the
    /// fetch, must [`Slot::fill`] the slot and then call [`InFlight::finish`].
    pub fn claim(&self, key: &K) -> (Arc<Slot<T>>, bool) {
        let mut map = crate::sync::relock(&self.map);
        if let Some(slot) = map.get(key) {
            return (slot.clone(), false);
        }
        let slot = Arc::new(Slot::default());
        map.insert(key.clone(), slot.clone());
        (slot, true)
    }

    /// The slot of `key`'s fetch when one is under way.
    pub fn get(&self, key: &K) -> Option<Arc<Slot<T>>> {
        crate::sync::relock(&self.map).get(key).cloned()
    }

    /// The fetch of `key` ended (its slot is filled and its object kept, or not): the next
    /// reader finds the object local, or claims a new fetch.
    pub fn finish(&self, key: &K) {
        crate::sync::relock(&self.map).remove(key);
    }

    /// Fetches under way.
    pub fn len(&self) -> usize {
        crate::sync::relock(&self.map).len()
    }

    /// Whether no fetch is under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(20);
    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_claim_owns_the_fetch_and_later_ones_share_its_slot() {
        let f = InFlight::<u32>::default();
        let (a, mine) = f.claim(&7);
        assert!(mine);
        let (b, again) = f.claim(&7);
        assert!(!again);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(f.get(&8).is_none());
        assert_eq!(f.len(), 1);
        f.finish(&7);
        assert!(f.is_empty());
        // After the end, a new reader claims a new fetch.
        let (c, mine) = f.claim(&7);
        assert!(mine);
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn waiters_get_the_result_filled_by_another_thread() {
        let f = Arc::new(InFlight::<u32>::default());
        let (slot, _) = f.claim(&1);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let (s, mine) = f.claim(&1);
                    assert!(!mine);
                    s.wait(LONG)
                })
            })
            .collect();
        std::thread::sleep(SHORT);
        slot.fill(Ok(Arc::new(vec![1, 2, 3])));
        for w in waiters {
            let got = w.join().expect("waiter");
            assert_eq!(got.expect("in time").expect("ok").as_slice(), &[1, 2, 3]);
        }
    }

    #[test]
    fn a_failed_fetch_reaches_every_waiter_and_only_the_first_result_counts() {
        let f = InFlight::<u32>::default();
        let (slot, _) = f.claim(&1);
        slot.fill(Err(Arc::new(StoreError::NotFound("gone".into()))));
        slot.fill(Ok(Arc::new(vec![9])));
        let err = slot
            .wait(SHORT)
            .expect("filled")
            .expect_err("the first result");
        assert_eq!(err.to_string(), "gone");
    }

    #[test]
    fn a_fetch_that_never_ends_times_out() {
        let f = InFlight::<u32>::default();
        let (slot, _) = f.claim(&1);
        let t = Instant::now();
        assert!(slot.wait(SHORT).is_none());
        assert!(t.elapsed() >= SHORT);
    }
}
