//! The instance record kept in the store, and loading it with dead processes noticed.

use super::dir::{check_file_name, InstanceDir};
use super::lock::{same_process_alive, RunLock};
use super::state::{InstanceState, ShutdownBehavior};
use super::{InstanceError, Result};
use crate::store::manifest::now_rfc3339;
use crate::store::{AccountId, Image, Record, SnapshotId, Store, StoreRefs};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The record kind instances use in the store (`records/instances/`).
pub const KIND: &str = "instances";
/// `i-` then 17 lowercase hex digits: EC2's "longer resource ID" format.
pub const ID_PREFIX: &str = "i-";
/// Hex digits in an instance id.
pub const ID_HEX_LEN: usize = 17;
/// How an overlay's file name ends (`vda.cow`).
pub const OVERLAY_SUFFIX: &str = ".cow";

/// One volume of an instance: a copy-on-write overlay over a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceVolume {
    /// `vol-` + 17 hex digits.
    pub volume_id: String,
    /// `/dev/vda`, ...
    pub device_name: String,
    /// The snapshot the volume was created from (its base, never written).
    pub snapshot_id: SnapshotId,
    /// The overlay's file name in the instance directory: one plain name ending in
    /// [`OVERLAY_SUFFIX`] (see [`Instance::check`]).
    pub overlay: String,
    /// Volume size in bytes (the snapshot's).
    pub size_bytes: u64,
    pub delete_on_termination: bool,
    pub read_only: bool,
    /// The overlay was deleted (on termination).
    #[serde(default)]
    pub deleted: bool,
}

impl InstanceVolume {
    /// The serial the guest reads (VIRTIO_BLK_T_GET_ID, 20 bytes): `vol` + the 17 hex digits,
    /// as EC2's NVMe EBS volumes report it.
    pub fn serial(&self) -> String {
        self.volume_id.replace('-', "")
    }
}

/// The amivm process running an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessInfo {
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_ticks: u64,
}

/// The network of records written before instances had one.
fn no_network() -> crate::net::NetworkSpec {
    crate::net::NetworkSpec::None
}

/// An instance, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub instance_id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub owner_id: AccountId,
    /// The image at launch (kept whole, so the instance can start again after the image is
    /// deregistered, and create-image can build on it).
    pub image: Image,
    pub instance_type: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The image's command line plus `--append`.
    pub kernel_command_line: String,
    /// `--user-data` (RunInstances' `UserData`), base64 as EC2 carries it; at most 16 KiB
    /// decoded. Served at `/latest/user-data` ([`super::metadata`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// `--metadata-options` (RunInstances' `MetadataOptions`).
    #[serde(default)]
    pub metadata_options: super::metadata::MetadataOptions,
    /// `--network` (records from before networking: none).
    #[serde(default = "no_network")]
    pub network: crate::net::NetworkSpec,
    /// `--publish`: host ports forwarded to the guest (with `--network user`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<crate::net::Publish>,
    /// The network card's MAC address (`aa:bb:cc:dd:ee:ff`, from the instance id); absent
    /// without a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    pub state: InstanceState,
    /// Why it is in this state (EC2's `StateReason`).
    #[serde(default)]
    pub state_reason: String,
    pub shutdown_behavior: ShutdownBehavior,
    /// `--rm`: delete the instance entirely when it stops.
    #[serde(default)]
    pub remove_on_stop: bool,
    pub launch_time: String,
    /// `--serial-log`: the file the first run's console went to, instead of the instance's
    /// `console.log`. Shown to the user, never opened again (a record is not trusted with
    /// paths; see [`super::dir`]).
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    pub volumes: Vec<InstanceVolume>,
    /// The process running it, while it is active.
    #[serde(default)]
    pub process: Option<ProcessInfo>,
    /// passt's process while it runs with `--network user`: `ps` shows the network lost when it
    /// is gone ([`Instance::network_lost`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_process: Option<ProcessInfo>,
    /// Tags (`amivm serve`: RunInstances' TagSpecifications, CreateTags, DeleteTags).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// The key pair it was launched with (`--key-name`, RunInstances' KeyName).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// That key pair's OpenSSH public key at launch, kept even if the key pair is deleted
    /// (as EC2 keeps serving it as the instance's `public-keys/0/openssh-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// `run --region R`: its image lives in region R, whose chunks its volumes fetch when the
    /// guest first reads them (and keep locally); every `start` opens R again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl Instance {
    /// Whether a running instance's network backend (passt) has gone: the guest runs on
    /// without a network (the console log says so too).
    pub fn network_lost(&self) -> bool {
        self.state == InstanceState::Running
            && self
                .network_process
                .is_some_and(|p| !same_process_alive(p.pid, p.start_ticks))
    }

    /// What the record keeps alive in the store: the kernel and initrd, and the snapshots
    /// under volumes that still exist. Nothing for an instance launched from a region: those
    /// live in the region (kept there by the instance's pin, see
    /// [`crate::store::region::pins`]), not in the local store.
    pub fn refs(&self) -> StoreRefs {
        if self.region.is_some() || self.volumes.iter().all(|v| v.deleted) {
            return StoreRefs::default();
        }
        let mut refs = StoreRefs::of_image(&self.image);
        refs.snapshot_ids = self
            .volumes
            .iter()
            .filter(|v| !v.deleted)
            .map(|v| v.snapshot_id.clone())
            .collect();
        refs
    }

    /// The instance's private directory in the store.
    pub fn dir(&self, store: &Store) -> Result<InstanceDir> {
        InstanceDir::open(store, KIND, &self.instance_id)
    }

    /// Where the instance's own console log is (`console.log` in its directory), for display.
    pub fn console_log_path(&self, store: &Store) -> PathBuf {
        store
            .layout()
            .dir(crate::store::layout::RECORDS_DIR)
            .join(KIND)
            .join(&self.instance_id)
            .join(super::launch::CONSOLE_LOG)
    }

    /// Check what a stored record says before acting on it: the id is an instance id and the
    /// record's own, and every overlay is a plain file name ending in [`OVERLAY_SUFFIX`] (so
    /// none can name a file outside the instance's directory, nor its lock or logs).
    pub fn check(&self, record_id: &str) -> Result<()> {
        if !looks_like_id(&self.instance_id) || self.instance_id != record_id {
            return Err(InstanceError::Outside(format!(
                "record {record_id} names instance {:?}",
                self.instance_id
            )));
        }
        for v in &self.volumes {
            if check_file_name(&v.overlay).is_err() || !v.overlay.ends_with(OVERLAY_SUFFIX) {
                return Err(InstanceError::Outside(format!(
                    "instance {record_id}: volume {} has overlay {:?}, not a plain file name \
                     ending in {OVERLAY_SUFFIX} inside the instance's directory",
                    v.volume_id, v.overlay
                )));
            }
        }
        Ok(())
    }

    /// The record to store.
    pub fn to_record(&self) -> Record<Instance> {
        Record {
            id: self.instance_id.clone(),
            refs: self.refs(),
            data: self.clone(),
        }
    }

    /// Move to `next`, with a reason.
    pub fn set_state(&mut self, next: InstanceState, reason: impl Into<String>) -> Result<()> {
        if !self.state.can_become(next) {
            return Err(InstanceError::WrongState {
                id: self.instance_id.clone(),
                state: self.state,
                why: format!("cannot become {next}"),
            });
        }
        self.state = next;
        self.state_reason = reason.into();
        if matches!(next, InstanceState::Stopped | InstanceState::Terminated) {
            self.process = None;
        }
        Ok(())
    }
}

/// A new random instance id.
pub fn generate_id() -> String {
    format!("{ID_PREFIX}{}", random_hex(ID_HEX_LEN))
}

/// A new random volume id.
pub fn generate_volume_id() -> String {
    format!("vol-{}", random_hex(ID_HEX_LEN))
}

fn random_hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Whether `s` has the form of an instance id.
pub fn looks_like_id(s: &str) -> bool {
    s.strip_prefix(ID_PREFIX).is_some_and(|h| {
        h.len() == ID_HEX_LEN
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Longest instance name (EC2 tag values may have 256 characters; names are shown in tables).
pub const MAX_NAME_LEN: usize = 128;

/// Whether `s` is shaped like an instance id in any case and length (`i-` and hex digits,
/// like EC2's 8- and 17-digit ids): such a name would read as an id, and one of exactly
/// [`looks_like_id`]'s shape could not be reached by name at all.
pub fn shaped_like_id(s: &str) -> bool {
    s.get(..ID_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(ID_PREFIX))
        && s.len() > ID_PREFIX.len()
        && s[ID_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Check an instance `--name`: 1 to [`MAX_NAME_LEN`] printable characters, not shaped like an
/// instance id ([`shaped_like_id`]).
pub fn validate_name(name: &str) -> Result<()> {
    if shaped_like_id(name) {
        return Err(InstanceError::Invalid(format!(
            "invalid instance name {name:?}: it has the shape of an instance id (i- and hex \
             digits), so it would not be found by name"
        )));
    }
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_LEN
        && !name
            .chars()
            .any(|c| crate::text::is_unsafe_char(c) || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(InstanceError::Invalid(format!(
            "invalid instance name {name:?}: 1 to {MAX_NAME_LEN} characters without spaces"
        )))
    }
}

/// Write a new record (under the store lock).
pub fn put(store: &Store, inst: &Instance) -> Result<()> {
    store.put_record(KIND, &inst.to_record())?;
    Ok(())
}

/// Read-modify-write an instance under the store lock; `f` sees the current instance.
pub fn update<F>(store: &Store, id: &str, f: F) -> Result<Instance>
where
    F: FnOnce(&mut Instance) -> Result<()>,
{
    let mut err: Option<InstanceError> = None;
    let rec = store.update_record::<Instance, _>(KIND, id, |cur| {
        let Some(rec) = cur else {
            err = Some(InstanceError::NotFound(id.to_string()));
            return Ok(None);
        };
        if let Err(e) = rec.data.check(&rec.id) {
            err = Some(e);
            return Ok(Some(rec));
        }
        let original = rec.data.clone();
        let mut inst = rec.data;
        if let Err(e) = f(&mut inst) {
            err = Some(e);
            return Ok(Some(original.to_record()));
        }
        Ok(Some(inst.to_record()))
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    rec.map(|r| r.data)
        .ok_or_else(|| InstanceError::NotFound(id.to_string()))
}

/// If the instance should be running but nobody holds its run lock, its amivm process died:
/// record it as stopped (or, if it was being terminated, finish terminating it). Returns the
/// (possibly updated) instance.
pub fn reconcile(store: &Store, inst: Instance) -> Result<Instance> {
    if !(inst.state.is_active() || inst.state == InstanceState::ShuttingDown) {
        return Ok(inst);
    }
    let dir = inst.dir(store)?;
    let Some(_lock) = RunLock::try_acquire(&dir)? else {
        return Ok(inst);
    };
    // Holding the lock, nobody can be running it: re-read and fix under the store lock.
    update(store, &inst.instance_id, |i| {
        let why = match i.process {
            Some(p) if same_process_alive(p.pid, p.start_ticks) => format!(
                "amivm process {} released the instance without recording its end",
                p.pid
            ),
            Some(p) => format!("amivm process {} died", p.pid),
            None => "amivm process died before the VM started".to_string(),
        };
        if i.state == InstanceState::ShuttingDown {
            super::launch::delete_volumes(i, &dir)?;
            i.set_state(
                InstanceState::Terminated,
                format!("terminated ({why}) at {}", now_rfc3339()),
            )?;
        } else if i.state.is_active() {
            log::info!("{}: {why}", i.instance_id);
            i.state = InstanceState::Stopped;
            i.state_reason = format!("{why} at {}", now_rfc3339());
            i.process = None;
        }
        Ok(())
    })
}

/// A stored record, checked ([`Instance::check`]).
fn checked(rec: Record<Instance>) -> Result<Instance> {
    rec.data.check(&rec.id)?;
    Ok(rec.data)
}

/// An instance by id as stored (no owner check, no liveness check); `None` if absent.
pub fn get(store: &Store, id: &str) -> Result<Option<Instance>> {
    store
        .get_record::<Instance>(KIND, id)?
        .map(checked)
        .transpose()
}

/// One instance the caller owns, with a dead process noticed.
pub fn load(store: &Store, caller: &AccountId, id: &str) -> Result<Instance> {
    if !looks_like_id(id) {
        return Err(InstanceError::Invalid(format!(
            "'{id}' is not an instance id (i- and {ID_HEX_LEN} hex digits)"
        )));
    }
    match store.get_record::<Instance>(KIND, id)? {
        Some(r) if r.data.owner_id == *caller => reconcile(store, checked(r)?),
        _ => Err(InstanceError::NotFound(id.to_string())),
    }
}

/// Every instance the caller owns, oldest first, with dead processes noticed.
pub fn list(store: &Store, caller: &AccountId) -> Result<Vec<Instance>> {
    let mut out = Vec::new();
    for r in store.list_records::<Instance>(KIND)? {
        if r.data.owner_id == *caller {
            // A tampered record is refused wherever it is used by id; a listing shows the rest.
            match checked(r) {
                Ok(i) => out.push(reconcile(store, i)?),
                Err(e) => log::warn!("skipping an instance record that cannot be used: {e}"),
            }
        }
    }
    out.sort_by(|a, b| (&a.launch_time, &a.instance_id).cmp(&(&b.launch_time, &b.instance_id)));
    Ok(out)
}

/// Find an instance by id or by unique `--name`.
pub fn resolve(store: &Store, caller: &AccountId, id_or_name: &str) -> Result<Instance> {
    if looks_like_id(id_or_name) {
        return load(store, caller, id_or_name);
    }
    let matches: Vec<Instance> = list(store, caller)?
        .into_iter()
        .filter(|i| i.name.as_deref() == Some(id_or_name) && i.state != InstanceState::Terminated)
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().unwrap_or_else(|| unreachable!())),
        0 => Err(InstanceError::NotFound(id_or_name.to_string())),
        _ => Err(InstanceError::Invalid(format!(
            "name '{id_or_name}' matches {}; use an instance id",
            matches
                .iter()
                .map(|i| i.instance_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_ec2_form() {
        let id = generate_id();
        assert_eq!(id.len(), 2 + ID_HEX_LEN);
        assert!(looks_like_id(&id), "{id}");
        assert_ne!(id, generate_id());
        assert!(!looks_like_id("i-123"));
        assert!(!looks_like_id("i-0123456789abcdefG"));
        assert!(!looks_like_id("ami-0123456789abcdef0"));
        assert!(validate_name("h2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&id).is_err());
        for like_id in [
            "i-0123456789abcdef0",
            "i-0123456789ABCDEF0",
            "I-0123456789abcdef0",
            "i-1234abcd",
            "i-0",
            "i-0123456789abcdef01",
        ] {
            let e = validate_name(like_id).unwrap_err().to_string();
            assert!(e.contains("shape of an instance id"), "{like_id}: {e}");
        }
        for fine in ["i-web", "i-", "web-i-0123", "i-0123-db", "ec2-i-1"] {
            assert!(validate_name(fine).is_ok(), "{fine}");
        }
        let v = InstanceVolume {
            volume_id: generate_volume_id(),
            device_name: "/dev/vda".into(),
            snapshot_id: SnapshotId::generate(),
            overlay: "vda.cow".into(),
            size_bytes: 0,
            delete_on_termination: true,
            read_only: false,
            deleted: false,
        };
        assert_eq!(v.serial().len(), 20);
        assert!(v.serial().starts_with("vol"));
    }
}
