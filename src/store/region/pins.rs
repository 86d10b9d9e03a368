//! Pins: what keeps `gc --region` and `image rm --region --delete-snapshots` from removing
//! what an instance launched with `amivm run --region` still reads from the region.
//!
//! Such an instance's volumes are overlays over the region's snapshots: a chunk it has not
//! read yet is only in the region, for as long as the instance exists (a stopped one reads it
//! when started again). In EC2 a volume keeps its data whatever happens to the snapshot and
//! the AMI it came from; here each such instance writes `pins/INSTANCE-ID.json` naming its
//! snapshots and its image's kernel and initrd. gc keeps what a pin names (snapshot manifests,
//! their chunks, the blobs), and `image rm --delete-snapshots` keeps pinned snapshot
//! manifests. The pin goes when the instance is terminated (or removed by `--rm`).
//!
//! A pin is made safe the way a writer's lock is ([`super::lock`]): the pin is created, then
//! the locks are listed. A gc that started before the pin existed may not have seen it, so
//! while a live gc lock is listed the pin is not yet safe (it stays, and the check is repeated
//! when that gc is over). With no gc running, every later gc sees the pin. Last, the pinned
//! snapshot manifests must still be there: gc removes a snapshot's manifest before its chunks,
//! so a manifest still in the region means its chunks are too.

use super::lock::{self, LockKind};
use super::s3::S3Dir;
use crate::store::backend::Collection;
use crate::store::error::{Result, StoreError};
use crate::store::ids::{ContentHash, SnapshotId};
use object_store::{ObjectStore as _, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The prefix (under the region's prefix) of the pin objects.
pub const PINS_DIR: &str = "pins";
/// The largest pin object read back: a pin names a few snapshots and blobs (a few hundred
/// bytes each); anything larger is not one of ours.
pub const MAX_PIN_BYTES: u64 = 1 << 20;
/// The longest name (instance id) a pin may have: amivm's ids are `i-` and 17 hex digits.
pub const MAX_PIN_NAME: usize = 64;

/// How long a launch waits before it pins its instance: the boot's own requests (manifests,
/// kernel, first chunks), which the guest waits for, go first. A run that ends sooner makes
/// its pin then (see [`PinTask::finish`]).
pub const PIN_DELAY: Duration = Duration::from_millis(500);
/// The longest the end of a run waits for its instance's pin to be made or removed.
pub const PIN_WAIT: Duration = Duration::from_secs(10);
/// How often a pin made while a gc runs checks again whether that gc is over.
pub const PIN_RETRY: Duration = Duration::from_secs(5);

/// What a pin object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pin {
    pub instance_id: String,
    /// The host the instance lives on (for whoever finds a pin left behind).
    pub host: String,
    pub image_id: String,
    pub snapshots: Vec<SnapshotId>,
    /// The image's kernel and initrd (a stopped instance needs them to start again).
    pub blobs: Vec<ContentHash>,
    pub created: String,
}

impl Pin {
    /// A pin for `instance_id` on this host.
    pub fn new(
        instance_id: &str,
        image_id: &str,
        snapshots: Vec<SnapshotId>,
        blobs: Vec<ContentHash>,
    ) -> Pin {
        Pin {
            instance_id: instance_id.to_string(),
            host: lock::host_name(),
            image_id: image_id.to_string(),
            snapshots,
            blobs,
            created: crate::store::manifest::now_rfc3339(),
        }
    }
}

/// Whether a pin just made is safe yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// Every gc from now on keeps what it names.
    Safe,
    /// A gc (or `image rm --delete-snapshots`) holding this lock may not have seen it.
    GcRunning(String),
}

/// Check that `name` (an instance id) makes a plain key.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PIN_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "'{name}' cannot name a pin (letters, digits and '-', at most {MAX_PIN_NAME})"
        )))
    }
}

/// Where the pin of `instance_id` lives, under the region's prefix.
fn rel(instance_id: &str) -> Result<String> {
    check_name(instance_id)?;
    Ok(format!("{PINS_DIR}/{instance_id}.json"))
}

/// Create `pin` (an existing pin of the same instance is kept: it names the same volumes) and
/// tell whether it is safe yet; an error when a snapshot it names has left the region.
pub async fn pin(s3: &S3Dir, pin: &Pin) -> Result<Pinned> {
    let key = s3.rel_key(&rel(&pin.instance_id)?);
    let body = serde_json::to_vec_pretty(pin)
        .map_err(|e| StoreError::Invalid(format!("pin {}: {e}", pin.instance_id)))?;
    let put = s3
        .client()
        .put_opts(
            &key,
            PutPayload::from(body),
            PutOptions::from(PutMode::Create),
        )
        .await;
    match put {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(s3.err("PUT", &key, e)),
    }
    let locks = lock::list_async(s3).await?;
    if let Some(gc) = lock::blocking(LockKind::Write, &locks) {
        return Ok(Pinned::GcRunning(gc.name.clone()));
    }
    for sid in &pin.snapshots {
        let doc = s3.doc_key(&Collection::Snapshots, sid.as_str());
        match s3.client().head(&doc).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::NotFound(format!(
                    "snapshot {sid} is no longer in region {}: instance {}'s volume chunks \
                     that are not local may be gone",
                    s3.spec().name,
                    pin.instance_id
                )))
            }
            Err(e) => return Err(s3.err("HEAD", &doc, e)),
        }
    }
    Ok(Pinned::Safe)
}

/// Delete the pin of `instance_id` (none is fine).
pub async fn unpin(s3: &S3Dir, instance_id: &str) -> Result<()> {
    s3.remove_rel(&rel(instance_id)?).await
}

/// Remove the pins of `instances`, whose host is gone for good (`amivm region unpin`); every one
/// must exist, else nothing is removed. Returns the pins removed.
pub fn unpin_gone(s3: &S3Dir, instances: &[String]) -> Result<Vec<Pin>> {
    for id in instances {
        check_name(id)?;
    }
    let all = list(s3)?;
    let mut gone = Vec::new();
    for id in instances {
        let p = all.iter().find(|p| &p.instance_id == id).ok_or_else(|| {
            StoreError::NotFound(format!(
                "instance {id} has no pin in region {}",
                s3.spec().name
            ))
        })?;
        gone.push(p.clone());
    }
    for p in &gone {
        s3.block_on(unpin(s3, &p.instance_id))?;
    }
    Ok(gone)
}

/// What a [`PinTask`] is asked to do next.
enum Cmd {
    /// Pin now (the run is over and the instance stays).
    Now,
    /// The instance is gone: stop pinning and delete the pin.
    Remove,
}

/// What a [`PinTask`] reports.
enum Done {
    Pinned(Result<()>),
    Removed(Result<()>),
}

/// An instance's pin, made on a thread of its own after [`PIN_DELAY`] (a launch must not wait
/// for it). The thread is started before the VM sandboxes itself, so its requests are allowed
/// (see [`super::lazy`]), and it owns its handle on the region: the region's runtime is never
/// dropped by one of its own tasks.
pub struct PinTask {
    cmds: Sender<Cmd>,
    done: Receiver<Done>,
    instance_id: String,
    region: String,
}

impl PinTask {
    /// Start pinning `p` in `s3`'s region. `fresh`: the instance was just launched, so no
    /// earlier run can have pinned it (removing a pin never written then sends nothing).
    pub fn start(s3: Arc<S3Dir>, p: Pin, fresh: bool) -> Result<PinTask> {
        let (cmds, cmd_rx) = channel();
        let (done_tx, done) = channel();
        let task = PinTask {
            cmds,
            done,
            instance_id: p.instance_id.clone(),
            region: s3.spec().name.clone(),
        };
        std::thread::Builder::new()
            .name("amivm-pin".into())
            .spawn(move || pin_thread(&s3, &p, fresh, &cmd_rx, &done_tx))
            .map_err(|e| StoreError::io("start the pin thread", std::path::Path::new("-"), e))?;
        Ok(task)
    }

    /// The instance stays: pin it now if that has not happened yet, and wait at most `wait`
    /// for the pin to be safe.
    pub fn finish(&self, wait: Duration) -> Result<()> {
        let _ = self.cmds.send(Cmd::Now);
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline)? {
                Done::Pinned(r) => return r,
                Done::Removed(_) => continue,
            }
        }
    }

    /// The instance is gone: stop pinning and delete its pin, waiting at most `wait`.
    pub fn remove(self, wait: Duration) -> Result<()> {
        let _ = self.cmds.send(Cmd::Remove);
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline)? {
                Done::Removed(r) => return r,
                Done::Pinned(_) => continue,
            }
        }
    }

    fn next(&self, deadline: Instant) -> Result<Done> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.done.recv_timeout(left).map_err(|_| StoreError::Io {
            what: format!(
                "region {}: the pin of instance {}",
                self.region, self.instance_id
            ),
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        })
    }
}

/// The body of a [`PinTask`]'s thread. A task dropped without a word (its launch failed
/// before the VM ran) ends the thread and leaves any pin as it is.
fn pin_thread(s3: &S3Dir, p: &Pin, fresh: bool, cmds: &Receiver<Cmd>, done: &Sender<Done>) {
    // Wait for the boot's requests, unless told otherwise.
    let mut next = cmds.recv_timeout(PIN_DELAY);
    let mut written = !fresh;
    loop {
        match next {
            Ok(Cmd::Remove) => break,
            Err(RecvTimeoutError::Disconnected) => return,
            Ok(Cmd::Now) | Err(RecvTimeoutError::Timeout) => {}
        }
        written = true;
        match s3.block_on(pin(s3, p)) {
            Ok(Pinned::GcRunning(lock)) => {
                log::info!(
                    "region {}: the pin of {} waits for the gc holding {lock}",
                    s3.spec().name,
                    p.instance_id
                );
                next = cmds.recv_timeout(PIN_RETRY);
            }
            r => {
                let _ = done.send(Done::Pinned(r.map(|_| ())));
                // Pinned (or failed): what is left to do is to remove it.
                loop {
                    match cmds.recv() {
                        Ok(Cmd::Remove) => break,
                        Ok(Cmd::Now) => {}
                        Err(_) => return,
                    }
                }
                break;
            }
        }
    }
    let r = if written {
        s3.block_on(unpin(s3, &p.instance_id))
    } else {
        Ok(())
    };
    let _ = done.send(Done::Removed(r));
}

/// Every pin in the region. One that cannot be read whole is an error: what it keeps cannot
/// be known, so gc must not go on without it.
pub fn list(s3: &S3Dir) -> Result<Vec<Pin>> {
    s3.block_on(async {
        let metas = s3.list_under(PINS_DIR).await?;
        let mut pins = Vec::new();
        for m in metas {
            let what = || format!("{} in region {}", m.location, s3.spec().name);
            if m.size > MAX_PIN_BYTES {
                return Err(StoreError::corrupt(
                    what(),
                    format!("it is {} bytes, more than a pin's {MAX_PIN_BYTES}", m.size),
                ));
            }
            let bytes = match s3.client().get(&m.location).await {
                Ok(g) => g.bytes().await.map_err(|e| s3.err("GET", &m.location, e))?,
                // Removed since the listing: its instance is gone.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(s3.err("GET", &m.location, e)),
            };
            let pin: Pin = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::corrupt(what(), format!("not a pin: {e}")))?;
            pins.push(pin);
        }
        Ok(pins)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_plain_keys() {
        assert!(check_name("i-0123456789abcdef0").is_ok());
        for bad in ["", "../x", "i-1/2", "i 1", &"a".repeat(MAX_PIN_NAME + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pins_round_trip_as_json() {
        let p = Pin::new(
            "i-0123456789abcdef0",
            "ami-0123456789abcdef0",
            vec![SnapshotId::parse("snap-0123456789abcdef0").unwrap()],
            vec![crate::store::region::s3::hash_of(b"k")],
        );
        let back: Pin = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let v = serde_json::to_value(&p).unwrap();
        assert!(
            v["Snapshots"].is_array() && v["InstanceId"].is_string(),
            "{v}"
        );
    }
}
