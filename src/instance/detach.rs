//! Running an instance in the background: `amivm run --detach`, `amivm start` and the
//! instances `amivm serve` launches.
//!
//! [`spawn`] starts `amivm __run-instance ID --lock-fd N` in a new session with the instance's
//! run lock inherited (so no command ever sees a pending instance without a lock holder), its
//! stderr appended to `amivm.log` in the instance directory. [`wait_started`] watches it until
//! the instance leaves `pending` and records a background process that died before it could
//! say why. The caller keeps the [`Child`] and reaps it.

use super::dir::Access;
use super::launch::LAUNCH_FAILED;
use super::lock::RunLock;
use super::record::{self, Instance};
use super::state::InstanceState;
use super::{InstanceError, Result};
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The background process's own diagnostics (not the console) go to this file in the
/// instance directory.
pub const DETACHED_LOG: &str = "amivm.log";
/// How long [`wait_started`] waits for the instance to leave `pending` (callers pass it).
pub const DETACH_WAIT: Duration = Duration::from_secs(30);
/// How often it looks.
const DETACH_POLL: Duration = Duration::from_millis(20);

/// How to run the instance in the background.
#[derive(Debug, Clone)]
pub struct DetachOptions {
    /// The amivm executable to start.
    pub exe: PathBuf,
    /// `--log-level` for the background process.
    pub log_level: String,
    /// `--timeout` seconds.
    pub timeout: Option<f64>,
    /// `--expect` regex.
    pub expect: Option<String>,
    /// The instance's first boot (a VM that cannot be built terminates it).
    pub first_launch: bool,
    /// More arguments for the background process (`--jail` and its ids).
    pub extra_args: Vec<String>,
}

/// Start the background process for a pending instance whose run lock `lock` is held; the
/// lock passes to the child.
pub fn spawn(store: &Store, inst: &Instance, lock: RunLock, opts: &DetachOptions) -> Result<Child> {
    let dir = inst.dir(store)?;
    let log = dir.open_file(DETACHED_LOG, Access::AppendCreate)?;
    let fd = lock.share_with_child()?;
    let mut cmd = Command::new(&opts.exe);
    cmd.arg("--store")
        .arg(store.dir())
        .arg("--account")
        .arg(inst.owner_id.as_str())
        .arg("--log-level")
        .arg(&opts.log_level)
        .arg("__run-instance")
        .arg(&inst.instance_id)
        .arg("--lock-fd")
        .arg(fd.to_string());
    if let Some(t) = opts.timeout {
        cmd.arg("--timeout").arg(t.to_string());
    }
    if let Some(e) = &opts.expect {
        cmd.arg("--expect").arg(e);
    }
    if opts.first_launch {
        cmd.arg("--first-launch");
        // `run --serial-log`: this first run's console goes there (later starts use the
        // instance's own log).
        if let Some(p) = &inst.serial_log {
            cmd.arg("--serial-log").arg(p);
        }
    }
    cmd.args(&opts.extra_args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let spawned = cmd.spawn();
    // The child has its own copy of the lock descriptor now (or failed to start).
    drop(lock);
    spawned.map_err(|e| {
        mark_failed(
            store,
            inst,
            &format!("cannot start the background amivm process: {e}"),
        );
        InstanceError::io("cannot start the background amivm process", e)
    })
}

/// How the background start went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The instance left `pending` (it runs, or already ended).
    Left,
    /// `--rm`: it ran, ended and removed itself.
    Removed,
    /// Still pending after `limit`.
    StillPending,
}

/// Watch `child` until the instance leaves `pending`; a process that exits while the instance
/// is still pending is a failed launch, recorded and returned as an error.
pub fn wait_started(
    store: &Store,
    inst: &Instance,
    child: &mut Child,
    limit: Duration,
) -> Result<Started> {
    let dir = inst.dir(store)?;
    let t0 = Instant::now();
    loop {
        let exited = child
            .try_wait()
            .map_err(|e| InstanceError::io("wait for the background amivm process", e))?;
        match record::get(store, &inst.instance_id)? {
            None => return Ok(Started::Removed),
            Some(i) if i.state == InstanceState::Pending => {
                if exited.is_some() {
                    let why = last_line(&dir.path().join(DETACHED_LOG));
                    mark_failed(store, inst, &format!("{LAUNCH_FAILED}: {why}"));
                    return Err(not_started(inst, &why));
                }
            }
            Some(i) if i.state_reason.starts_with(LAUNCH_FAILED) => {
                return Err(not_started(inst, &i.state_reason));
            }
            Some(_) => return Ok(Started::Left),
        }
        if t0.elapsed() > limit {
            return Ok(Started::StillPending);
        }
        std::thread::sleep(DETACH_POLL);
    }
}

fn not_started(inst: &Instance, why: &str) -> InstanceError {
    InstanceError::NotStarted {
        id: inst.instance_id.clone(),
        why: why.to_string(),
    }
}

/// The last non-empty line of a log file, without amivm's error prefix.
pub fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim_start_matches("amivm: error: ").to_string())
        })
        .unwrap_or_else(|| "the background amivm process exited".into())
}

/// Record a failed background start (the lock is free by then).
pub fn mark_failed(store: &Store, inst: &Instance, why: &str) {
    let _ = record::update(store, &inst.instance_id, |i| {
        i.state = InstanceState::Stopped;
        i.state_reason = why.to_string();
        i.process = None;
        Ok(())
    });
}
