//! Start, stop and terminate.
//!
//! Stopping a running instance is one sequence, `stop_vm`: *press* (SIGTERM to its amivm
//! process, whose VMM sends the guest Ctrl-Alt-Del through the i8042), *wait the grace period*
//! ([`STOP_GRACE`]) for the guest to shut down and the process to release the run lock, then
//! *force* (a second SIGTERM: the VMM stops the VM at once and flushes the volumes), and SIGKILL
//! the process if even that has not ended it [`FORCE_WAIT`] later. `--force` skips the grace
//! period. The process records the end itself; if it was killed, the waiting command records
//! it.
//!
//! Only a process proven to be the instance's is signalled ([`InstanceProcess::verify`]: the
//! recorded start time matches and it holds the run lock). If nobody holds the lock, the
//! instance is treated as stopped and nothing is signalled; if someone else does, the command
//! refuses and changes nothing.

use super::dir::InstanceDir;
use super::launch::{deletable_volumes, delete_volumes, STOP_GRACE};
use super::lock::RunLock;
use super::process::InstanceProcess;
use super::record::{self, Instance};
use super::state::InstanceState;
use super::{InstanceError, Result};
use crate::store::manifest::now_rfc3339;
use crate::store::region::pins;
use crate::store::{AccountId, Store};
use rustix::process::Signal;
use std::time::{Duration, Instant};

/// How long after the forcing SIGTERM a process that has not ended is killed: time for the
/// VMM to stop its vCPU threads and flush the volumes.
pub const FORCE_WAIT: Duration = Duration::from_secs(10);
/// How long to wait for the lock after SIGKILL (the kernel tears the VM down).
const AFTER_KILL: Duration = Duration::from_secs(10);
/// How long `start` waits for a lock held briefly by another command.
const LOCK_RETRY: Duration = Duration::from_secs(3);
/// The grace period of a forced stop: between its two SIGTERMs, longer than the VMM's signal
/// poll interval (50 ms, `POLL_INTERVAL` in src/vmm/vm.rs), so it sees them as two requests.
const FORCE_GAP: Duration = Duration::from_millis(150);
/// How often to look at the lock while waiting.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for a `pending` instance to become `running` before stopping it.
const PENDING_WAIT: Duration = Duration::from_secs(30);

/// Take an instance's run lock, retrying for a short while.
fn lock_soon(dir: &InstanceDir) -> Result<Option<RunLock>> {
    let t0 = Instant::now();
    loop {
        if let Some(l) = RunLock::try_acquire(dir)? {
            return Ok(Some(l));
        }
        if t0.elapsed() > LOCK_RETRY {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Make a stopped instance `pending` again; returns it with its run lock held, ready for
/// [`super::launch::boot`].
pub fn start(store: &Store, caller: &AccountId, id_or_name: &str) -> Result<(Instance, RunLock)> {
    let inst = record::resolve(store, caller, id_or_name)?;
    if inst.state != InstanceState::Stopped {
        return Err(InstanceError::WrongState {
            id: inst.instance_id,
            state: inst.state,
            why: "only a stopped instance can be started".into(),
        });
    }
    let dir = inst.dir(store)?;
    let lock = lock_soon(&dir)?.ok_or_else(|| InstanceError::WrongState {
        id: inst.instance_id.clone(),
        state: inst.state,
        why: "another amivm process holds it".into(),
    })?;
    let inst = record::update(store, &inst.instance_id, |i| {
        i.set_state(InstanceState::Pending, "starting")
    })?;
    Ok((inst, lock))
}

/// Wait for the run lock to be free, up to `limit`.
fn wait_lock(dir: &InstanceDir, limit: Duration) -> Result<Option<RunLock>> {
    let t0 = Instant::now();
    loop {
        if let Some(l) = RunLock::try_acquire(dir)? {
            return Ok(Some(l));
        }
        if t0.elapsed() >= limit {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Wait while the instance is `pending` (its VM being built), so the signal reaches a VMM
/// that handles it.
fn wait_not_pending(store: &Store, caller: &AccountId, inst: Instance) -> Result<Instance> {
    let t0 = Instant::now();
    let mut inst = inst;
    while inst.state == InstanceState::Pending && t0.elapsed() < PENDING_WAIT {
        std::thread::sleep(POLL);
        inst = record::load(store, caller, &inst.instance_id)?;
    }
    Ok(inst)
}

/// Who runs an instance right now.
enum Runner {
    /// Nobody: the run lock was free and is now held by this command.
    Nobody(RunLock),
    /// Its amivm process, verified.
    Process(InstanceProcess),
}

/// Find who runs `inst`: nobody (the lock is free), or its recorded process, if that is
/// provably the lock holder; anything else is refused ([`InstanceError::NotOurProcess`]).
fn runner(inst: &Instance, dir: &InstanceDir) -> Result<Runner> {
    if let Some(lock) = RunLock::try_acquire(dir)? {
        return Ok(Runner::Nobody(lock));
    }
    match inst.process {
        Some(p) => Ok(Runner::Process(InstanceProcess::verify(
            &inst.instance_id,
            p,
            dir,
        )?)),
        None => Err(InstanceError::NotOurProcess(format!(
            "instance {}: another process holds its run lock and none is recorded; not \
             signalling anything",
            inst.instance_id
        ))),
    }
}

/// Stop the VM run by `process`: press, wait the grace period, then force (see the module
/// comment). `force`: no grace period. Returns the run lock, held once the process has ended.
fn stop_vm(
    inst: &Instance,
    dir: &InstanceDir,
    process: &InstanceProcess,
    force: bool,
) -> Result<RunLock> {
    let grace = if force { FORCE_GAP } else { STOP_GRACE };
    // Press: the guest's cue to shut down.
    process.signal(Signal::TERM);
    // Wait the grace period for the guest to shut down (the VMM also stops the VM itself once
    // STOP_GRACE has passed).
    if let Some(l) = wait_lock(dir, grace)? {
        return Ok(l);
    }
    // Force: the VMM stops the VM at once, flushing the volumes.
    process.signal(Signal::TERM);
    if let Some(l) = wait_lock(dir, FORCE_WAIT)? {
        return Ok(l);
    }
    log::warn!(
        "{}: amivm process {} did not stop within {} s of being forced; killing it",
        inst.instance_id,
        process.pid(),
        FORCE_WAIT.as_secs()
    );
    process.signal(Signal::KILL);
    wait_lock(dir, AFTER_KILL)?.ok_or_else(|| InstanceError::WrongState {
        id: inst.instance_id.clone(),
        state: inst.state,
        why: "its amivm process could not be stopped".into(),
    })
}

/// Stop an instance: the guest gets Ctrl-Alt-Del and [`STOP_GRACE`] to shut down (`force`:
/// none). Stopping a stopped instance does nothing.
pub fn stop(store: &Store, caller: &AccountId, id_or_name: &str, force: bool) -> Result<Instance> {
    let inst = record::resolve(store, caller, id_or_name)?;
    let inst = wait_not_pending(store, caller, inst)?;
    match inst.state {
        InstanceState::Stopped => return Ok(inst),
        InstanceState::ShuttingDown | InstanceState::Terminated | InstanceState::Pending => {
            return Err(InstanceError::WrongState {
                id: inst.instance_id,
                state: inst.state,
                why: "it cannot be stopped".into(),
            })
        }
        InstanceState::Running | InstanceState::Stopping => {}
    }
    let id = inst.instance_id.clone();
    let dir = inst.dir(store)?;
    let process = match runner(&inst, &dir)? {
        Runner::Process(p) => p,
        // Its process is gone: reconcile records it as stopped.
        Runner::Nobody(lock) => {
            drop(lock);
            return record::reconcile(store, inst);
        }
    };
    let inst = record::update(store, &id, |i| {
        if i.state == InstanceState::Running {
            i.set_state(InstanceState::Stopping, "stop requested from the host")?;
        }
        Ok(())
    })?;
    let _lock = stop_vm(&inst, &dir, &process, force)?;
    match record::update(store, &id, |i| {
        if i.state.is_active() {
            i.state = InstanceState::Stopped;
            i.state_reason = format!("amivm process was killed at {}", now_rfc3339());
            i.process = None;
            i.network_process = None;
        }
        Ok(())
    }) {
        Ok(i) => Ok(i),
        // `--rm` instances remove themselves when they stop.
        Err(InstanceError::NotFound(_)) => Ok(Instance {
            state: InstanceState::Stopped,
            process: None,
            ..inst
        }),
        Err(e) => Err(e),
    }
}

/// A terminated instance launched from a region no longer keeps what it pinned there (see
/// [`crate::store::region::pins`]). A failure only leaves data in the region: a warning.
fn unpin(store: &Store, inst: &Instance) {
    let Some(name) = &inst.region else { return };
    let res = store
        .open_region(name)
        .and_then(|r| r.s3.block_on(pins::unpin(&r.s3, &inst.instance_id)));
    if let Err(e) = res {
        log::warn!(
            "instance {}: its pin stays in region {name} ({}/{}.json): {e}",
            inst.instance_id,
            pins::PINS_DIR,
            inst.instance_id
        );
    }
}

/// Terminate an instance: stop it if it runs, delete its volumes marked DeleteOnTermination,
/// and leave it `terminated`. Terminating a terminated instance does nothing.
pub fn terminate(
    store: &Store,
    caller: &AccountId,
    id_or_name: &str,
    force: bool,
) -> Result<Instance> {
    let inst = record::resolve(store, caller, id_or_name)?;
    let inst = wait_not_pending(store, caller, inst)?;
    if inst.state == InstanceState::Terminated {
        return Ok(inst);
    }
    let id = inst.instance_id.clone();
    let dir = inst.dir(store)?;
    // Everything it will delete is checked before anything changes.
    deletable_volumes(&inst, &dir)?;
    let runner = if inst.process.is_some() {
        runner(&inst, &dir)?
    } else {
        Runner::Nobody(lock_soon(&dir)?.ok_or_else(|| InstanceError::WrongState {
            id: id.clone(),
            state: inst.state,
            why: "another amivm process holds it".into(),
        })?)
    };
    let inst = record::update(store, &id, |i| {
        if i.state != InstanceState::ShuttingDown {
            i.set_state(InstanceState::ShuttingDown, "terminate requested")?;
        }
        Ok(())
    })?;
    let _lock = match runner {
        Runner::Nobody(lock) => lock,
        Runner::Process(p) => stop_vm(&inst, &dir, &p, force)?,
    };
    match record::update(store, &id, |i| {
        if i.state != InstanceState::Terminated {
            delete_volumes(i, &dir)?;
            i.state = InstanceState::ShuttingDown;
            i.set_state(
                InstanceState::Terminated,
                format!("terminated from the host at {}", now_rfc3339()),
            )?;
        }
        Ok(())
    }) {
        Ok(i) => {
            unpin(store, &i);
            Ok(i)
        }
        // `--rm` instances remove themselves when they stop.
        Err(InstanceError::NotFound(_)) => Ok(Instance {
            state: InstanceState::Terminated,
            process: None,
            ..inst
        }),
        Err(e) => Err(e),
    }
}
