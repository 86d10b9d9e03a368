//! The instance index: every instance record held in memory by a long-lived process
//! (`amivm serve`), so listing 100 instances is a scan of memory plus one `flock(2)` per
//! instance that should have a process, instead of 100 file reads, 100 JSON parses and a
//! directory walk per instance that [`record::list`] does.
//!
//! # Coherence
//! The records are re-read whenever the store's stamp of `records/instances/`
//! ([`Store::record_stamp`]) differs from the one they were read under. The stamp is rewritten
//! by every commit that changes an instance record, in any process (the instances' own amivm
//! processes record `running` and `stopped` that way), after the record is in place and before
//! the store lock is released; the rules are the image index's ([`crate::store::image_index`]):
//! a lookup after a finished commit sees it, and a set read while a commit raced with it
//! carries the old stamp, so the next lookup reads again.
//!
//! # Liveness
//! A record says what the instance's process last committed; a process that is killed commits
//! nothing. As [`record::list`] does, every instance whose record says a process should be
//! running it (`pending`, `running`, `stopping`, `shutting-down`) is checked on every lookup by
//! its run lock ([`super::lock`]): held means the process is alive, and the record stands; free
//! means it died, and [`record::reconcile`] records that (its commit moves the stamp). The
//! lock file stays open between lookups ([`LockProbe`]), so the check is one system call. A
//! server restart starts with an empty index: the first lookup reads every record and checks
//! every lock, so it finds each instance's real state.

use super::lock::LockProbe;
use super::record::{self, Instance, KIND};
use super::{InstanceError, InstanceState, Result};
use crate::store::{AccountId, Store};
use std::collections::HashMap;
// A poisoned lock still holds a consistent value here (so `relock`): at worst an old (stamp, set)
// pair, which the next lookup checks against the stamp like any other, or a probe map.
use crate::sync::relock;
use std::sync::{Arc, Mutex};

/// Most run locks kept open at once. Bounded so the index never takes the descriptors the
/// server's connection limit counts on (`amivm serve` adds this many to the open-file limit it
/// asks for); instances beyond it are checked by opening the lock each time.
pub const MAX_OPEN_PROBES: usize = 256;

/// The stored instance records at one moment, oldest first.
type Records = Arc<Vec<Arc<Instance>>>;

/// See the module docs.
#[derive(Default)]
pub struct InstanceIndex {
    /// The records and the stamp they were read under.
    current: Mutex<Option<(String, Records)>>,
    /// Open run locks by instance id.
    probes: Mutex<HashMap<String, LockProbe>>,
}

impl std::fmt::Debug for InstanceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceIndex").finish_non_exhaustive()
    }
}

/// Whether an amivm process should be running an instance in this state (and the record is to
/// be checked against its run lock).
fn expects_process(s: InstanceState) -> bool {
    s.is_active() || s == InstanceState::ShuttingDown
}

impl InstanceIndex {
    /// Every stored instance record, checked ([`Instance::check`]; a record that fails is
    /// skipped with a warning, as [`record::list`] skips it), current as of the last finished
    /// commit. Shared, not copied, while nothing changes.
    fn records(&self, store: &Store) -> Result<Records> {
        let stamp = store.record_stamp(KIND)?;
        // Held while reading, so concurrent lookups wait for one read instead of each doing it.
        let mut current = relock(&self.current);
        if let (Some(stamp), Some((read_under, set))) = (&stamp, &*current) {
            if stamp == read_under {
                return Ok(set.clone());
            }
        }
        let mut all = Vec::new();
        for r in store.list_records::<Instance>(KIND)? {
            match r.data.check(&r.id) {
                Ok(()) => all.push(Arc::new(r.data)),
                Err(e) => log::warn!("skipping an instance record that cannot be used: {e}"),
            }
        }
        all.sort_by(|a, b| (&a.launch_time, &a.instance_id).cmp(&(&b.launch_time, &b.instance_id)));
        let set = Arc::new(all);
        // Locks of instances that are gone, or no longer expect a process, are closed.
        relock(&self.probes).retain(|id, _| {
            set.iter()
                .any(|i| i.instance_id == *id && expects_process(i.state))
        });
        *current = stamp.map(|s| (s, set.clone()));
        Ok(set)
    }

    /// Whether someone holds `inst`'s run lock right now.
    fn lock_held(&self, store: &Store, inst: &Instance) -> Result<bool> {
        let mut probes = relock(&self.probes);
        if let Some(p) = probes.get(&inst.instance_id) {
            match p.is_held() {
                Ok(held) => return Ok(held),
                Err(e) => {
                    probes.remove(&inst.instance_id);
                    return Err(e);
                }
            }
        }
        let probe = LockProbe::open(&inst.dir(store)?)?;
        let held = probe.is_held()?;
        if probes.len() < MAX_OPEN_PROBES {
            probes.insert(inst.instance_id.clone(), probe);
        }
        Ok(held)
    }

    /// Every instance `caller` owns, oldest first, with dead processes noticed: what
    /// [`record::list`] answers, from memory.
    pub fn list(&self, store: &Store, caller: &AccountId) -> Result<Vec<Arc<Instance>>> {
        let all = self.records(store)?;
        let mut out = Vec::new();
        for inst in all.iter().filter(|i| i.owner_id == *caller) {
            if !expects_process(inst.state) || self.lock_held(store, inst)? {
                out.push(inst.clone());
                continue;
            }
            // Its process is gone (or between two runs): record::reconcile takes the lock
            // itself, re-reads the record under the store lock and records what happened.
            match record::reconcile(store, Instance::clone(inst)) {
                Ok(i) => out.push(Arc::new(i)),
                // Removed meanwhile (`--rm`, a failed launch cleaned up).
                Err(InstanceError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_that_expect_a_process() {
        use InstanceState::*;
        for s in [Pending, Running, Stopping, ShuttingDown] {
            assert!(expects_process(s), "{s}");
        }
        for s in [Stopped, Terminated] {
            assert!(!expects_process(s), "{s}");
        }
    }
}
