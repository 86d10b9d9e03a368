//! The background processes `amivm serve` runs instances in.
//!
//! Each instance the API starts runs in its own `amivm __run-instance` process (as
//! `amivm run --detach` does), in a new session, holding the instance's run lock: the VM
//! outlives a restarted server, and any reader of the store (the next server included) tells
//! a live instance from a dead one by that lock. The server watches each child until it leaves
//! `pending` (recording a launch that failed before the VM ran) and reaps it when it exits.

use crate::instance::detach::{self, DetachOptions, DETACH_WAIT};
use crate::instance::lock::RunLock;
use crate::instance::{Instance, InstanceError};
use crate::store::Store;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The stack of a watcher thread: it only polls the store and waits.
const WATCHER_STACK: usize = 256 * 1024;

/// Starts and watches background instance processes.
#[derive(Debug, Default, Clone)]
pub struct Supervisor {
    running: Arc<AtomicUsize>,
}

impl Supervisor {
    /// How many of this server's instance processes are alive.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Run a pending instance (its run lock held by `lock`) in the background.
    pub fn start(
        &self,
        store: &Store,
        inst: &Instance,
        lock: RunLock,
        opts: &DetachOptions,
    ) -> Result<(), InstanceError> {
        let mut child = detach::spawn(store, inst, lock, opts)?;
        let running = self.running.clone();
        running.fetch_add(1, Ordering::Relaxed);
        let store = store.clone();
        let inst = inst.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("watch {}", inst.instance_id))
            .stack_size(WATCHER_STACK)
            .spawn(move || {
                if let Err(e) = detach::wait_started(&store, &inst, &mut child, DETACH_WAIT) {
                    log::warn!("{}: {e}", inst.instance_id);
                }
                match child.wait() {
                    Ok(st) => log::info!("{}: background process ended ({st})", inst.instance_id),
                    Err(e) => log::warn!("{}: waiting for its process: {e}", inst.instance_id),
                }
                running.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            // No watcher: the child still runs the instance; it is reaped when the server
            // exits, and its state is read from the store as for any instance.
            log::warn!("cannot start a watcher thread: {e}");
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
