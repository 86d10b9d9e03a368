//! Start, stop and terminate.
//!
//! `stop` and `terminate` of a running instance signal its amivm process (SIGTERM: the VMM sends
//! the guest Ctrl-Alt-Del through the i8042 and stops the VM after [`STOP_GRACE`]), wait for
//! the process to release the run lock, and SIGKILL it if it has not done so by
//! [`KILL_AFTER`]. The process records the end itself; if it was killed, the waiting command
//! records it.

use super::launch::{delete_volumes, STOP_GRACE};
use super::lock::{same_process_alive, RunLock};
use super::record::{self, Instance};
use super::state::InstanceState;
use super::{InstanceError, Result};
use crate::store::manifest::now_rfc3339;
use crate::store::{AccountId, Store};
use std::time::{Duration, Instant};

/// How long after SIGTERM a process that has not ended is killed: the grace the guest gets,
/// plus time for the VMM to stop its vCPU threads and flush the volumes.
pub const KILL_AFTER: Duration = Duration::from_secs(STOP_GRACE.as_secs() + 10);
/// How long to wait for the lock after SIGKILL (the kernel tears the VM down).
const AFTER_KILL: Duration = Duration::from_secs(10);
/// How long `start` waits for a lock held briefly by another command.
const LOCK_RETRY: Duration = Duration::from_secs(3);
/// Between the two SIGTERMs of a forced stop: longer than the VMM's signal poll interval
/// (50 ms, src/vmm/vm.rs), so it sees them as two requests.
const FORCE_GAP: Duration = Duration::from_millis(150);
/// How often to look at the lock while waiting.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for a `pending` instance to become `running` before stopping it.
const PENDING_WAIT: Duration = Duration::from_secs(30);

/// Take an instance's run lock, retrying for a short while.
fn lock_soon(dir: &std::path::Path) -> Result<Option<RunLock>> {
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

/// Send `sig` to the instance's process if it is still the process that started it.
fn signal(inst: &Instance, sig: libc::c_int) -> bool {
    let Some(p) = inst.process else {
        return false;
    };
    if !same_process_alive(p.pid, p.start_ticks) {
        return false;
    }
    let Ok(pid) = libc::pid_t::try_from(p.pid) else {
        return false;
    };
    // SAFETY: kill only reads its integer arguments; the pid was checked to be the instance's
    // process (same start time) just above.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Wait for the run lock to be free, up to `limit`.
fn wait_lock(dir: &std::path::Path, limit: Duration) -> Result<Option<RunLock>> {
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

/// Ask the running process to stop the VM and wait until it has; returns the held run lock.
fn stop_process(inst: &Instance, dir: &std::path::Path, force: bool) -> Result<RunLock> {
    signal(inst, libc::SIGTERM);
    if force {
        std::thread::sleep(FORCE_GAP);
        signal(inst, libc::SIGTERM);
    }
    if let Some(l) = wait_lock(dir, KILL_AFTER)? {
        return Ok(l);
    }
    log::warn!(
        "{}: the amivm process did not stop within {} s; killing it",
        inst.instance_id,
        KILL_AFTER.as_secs()
    );
    signal(inst, libc::SIGKILL);
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
    let inst = record::update(store, &id, |i| {
        if i.state == InstanceState::Running {
            i.set_state(InstanceState::Stopping, "stop requested from the host")?;
        }
        Ok(())
    })?;
    let dir = inst.dir(store)?;
    let _lock = stop_process(&inst, &dir, force)?;
    match record::update(store, &id, |i| {
        if i.state.is_active() {
            i.state = InstanceState::Stopped;
            i.state_reason = format!("amivm process was killed at {}", now_rfc3339());
            i.process = None;
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
    let inst = record::update(store, &id, |i| {
        if i.state != InstanceState::ShuttingDown {
            i.set_state(InstanceState::ShuttingDown, "terminate requested")?;
        }
        Ok(())
    })?;
    let dir = inst.dir(store)?;
    let _lock = if inst.process.is_some() {
        stop_process(&inst, &dir, force)?
    } else {
        lock_soon(&dir)?.ok_or_else(|| InstanceError::WrongState {
            id: id.clone(),
            state: inst.state,
            why: "another amivm process holds it".into(),
        })?
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
        Ok(i) => Ok(i),
        // `--rm` instances remove themselves when they stop.
        Err(InstanceError::NotFound(_)) => Ok(Instance {
            state: InstanceState::Terminated,
            process: None,
            ..inst
        }),
        Err(e) => Err(e),
    }
}
