//! `amivm store verify`: a scrub. Every chunk and blob is read and hashed again and compared
//! with its name; every manifest is parsed; every chunk, blob and snapshot that a manifest or a
//! record uses must exist. Damage is reported with the snapshots, images and records it
//! affects. Reads only: the store may be opened read-only.
//!
//! Also the pieces that `image export` and `snapshot dump` use to check what they read.

use super::backend::{Collection, ObjectNs};
use super::error::{Result, StoreError};
use super::ids::{ContentHash, ImageId, SnapshotId};
use super::manifest::Image;
use super::snapshot::CHUNK_SIZE;
use super::{Progress, Store};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most threads that hash objects at once (each reads one file at a time; beyond this the disk,
/// not the CPU, is the limit).
pub const MAX_VERIFY_THREADS: usize = 8;
/// Read buffer of each hashing thread.
const READ_BUF: usize = 1 << 20;

/// The error for a store object whose content is not what its name says.
pub fn damaged_object(ns: ObjectNs, hash: &ContentHash, why: &str) -> StoreError {
    let noun = match ns {
        ObjectNs::Chunk => "chunk",
        ObjectNs::Blob => "blob",
    };
    StoreError::corrupt(
        format!("{noun} {hash} in the store"),
        format!("{why}; run `amivm store verify` to see what it affects"),
    )
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been read.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sha256 of what was read so far.
    pub fn hash(&self) -> ContentHash {
        ContentHash::from_digest(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// One damaged thing and what it affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Damage {
    /// `chunk`, `blob`, `snapshot`, `image` or `records`.
    pub kind: String,
    /// Its hash or id.
    pub id: String,
    pub problem: String,
    /// Snapshots that use it (a chunk), or the snapshot itself.
    pub snapshots: Vec<SnapshotId>,
    /// Images that use it (directly, or through a snapshot).
    pub images: Vec<ImageId>,
    /// Records (`instances/i-…`) that use it.
    pub records: Vec<String>,
}

/// What `verify` checked and found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyReport {
    pub snapshots_checked: u64,
    pub images_checked: u64,
    pub chunks_checked: u64,
    pub chunk_bytes_checked: u64,
    pub blobs_checked: u64,
    pub blob_bytes_checked: u64,
    pub damaged: Vec<Damage>,
}

impl VerifyReport {
    /// Whether nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }

    /// Distinct snapshots and images that some damage affects.
    pub fn affected(&self) -> (BTreeSet<&SnapshotId>, BTreeSet<&ImageId>) {
        let snaps = self.damaged.iter().flat_map(|d| &d.snapshots).collect();
        let images = self.damaged.iter().flat_map(|d| &d.images).collect();
        (snaps, images)
    }
}

/// Who uses what, from every manifest and record.
#[derive(Default)]
struct Users {
    chunk_snaps: BTreeMap<ContentHash, BTreeSet<SnapshotId>>,
    snap_images: BTreeMap<SnapshotId, BTreeSet<ImageId>>,
    snap_records: BTreeMap<SnapshotId, BTreeSet<String>>,
    blob_images: BTreeMap<ContentHash, BTreeSet<ImageId>>,
    blob_records: BTreeMap<ContentHash, String>,
    snapshots: BTreeSet<SnapshotId>,
}

impl Users {
    fn damage(&self, kind: &str, id: String, problem: String, snaps: &[SnapshotId]) -> Damage {
        let mut images = BTreeSet::new();
        let mut records = BTreeSet::new();
        for s in snaps {
            images.extend(self.snap_images.get(s).into_iter().flatten().cloned());
            records.extend(self.snap_records.get(s).into_iter().flatten().cloned());
        }
        Damage {
            kind: kind.into(),
            id,
            problem,
            snapshots: snaps.to_vec(),
            images: images.into_iter().collect(),
            records: records.into_iter().collect(),
        }
    }

    fn object_damage(&self, ns: ObjectNs, hash: &ContentHash, problem: String) -> Damage {
        match ns {
            ObjectNs::Chunk => {
                let snaps: Vec<SnapshotId> = self
                    .chunk_snaps
                    .get(hash)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                self.damage("chunk", hash.to_hex(), problem, &snaps)
            }
            ObjectNs::Blob => {
                let mut d = self.damage("blob", hash.to_hex(), problem, &[]);
                d.images = self
                    .blob_images
                    .get(hash)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                d.records.extend(self.blob_records.get(hash).cloned());
                d
            }
        }
    }
}

/// Hash one object file: `None` if it matches its name, else what is wrong.
fn check_object(store: &Store, ns: ObjectNs, hash: &ContentHash) -> (u64, Option<String>) {
    let res = (|| -> std::io::Result<(u64, ContentHash)> {
        let path = store
            .backend()
            .object_path(ns, hash)
            .map_err(std::io::Error::other)?;
        let mut r = HashingReader::new(std::fs::File::open(path)?);
        let mut buf = vec![0u8; READ_BUF];
        while r.read(&mut buf)? > 0 {}
        Ok((r.len(), r.hash()))
    })();
    match res {
        Err(e) => (0, Some(format!("unreadable: {e}"))),
        Ok((len, _)) if ns == ObjectNs::Chunk && len > CHUNK_SIZE => {
            (len, Some(format!("{len} bytes, more than a chunk")))
        }
        Ok((len, h)) if h != *hash => (len, Some(format!("content hashes to {h}"))),
        Ok((len, _)) => (len, None),
    }
}

impl Store {
    /// Scrub the store (see the module docs). Damage is in the report, not an error; errors
    /// are failures to run the check at all.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let _gc = self.gc_shared_lock()?;
        let mut report = VerifyReport::default();
        let mut users = Users::default();
        let mut damaged = Vec::new();
        let backend = self.backend();

        let mut bad_snaps = Vec::new();
        for id in backend.list_docs(&Collection::Snapshots)? {
            report.snapshots_checked += 1;
            match SnapshotId::parse(&id).and_then(|sid| self.snapshot(&sid)) {
                Ok(s) => {
                    for c in &s.chunks {
                        users
                            .chunk_snaps
                            .entry(c.1)
                            .or_default()
                            .insert(s.snapshot_id.clone());
                    }
                    users.snapshots.insert(s.snapshot_id);
                }
                Err(e) => bad_snaps.push((id, e.to_string())),
            }
        }
        let mut images: Vec<Image> = Vec::new();
        for id in backend.list_docs(&Collection::Images)? {
            report.images_checked += 1;
            match self.read_doc::<Image>(&Collection::Images, &id) {
                Ok(Some(img)) => images.push(img),
                Ok(None) => {}
                Err(e) => damaged.push(users.damage("image", id, e.to_string(), &[])),
            }
        }
        for img in &images {
            for s in img.snapshot_ids() {
                let set = users.snap_images.entry(s.clone()).or_default();
                set.insert(img.image_id.clone());
            }
            for b in img.blobs() {
                let set = users.blob_images.entry(b).or_default();
                set.insert(img.image_id.clone());
            }
        }
        match self.record_refs() {
            Ok(r) => {
                for (s, rec) in r.snapshot_users {
                    users.snap_records.entry(s).or_default().insert(rec);
                }
                users.blob_records = r.blob_users;
            }
            Err(e) => damaged.push(users.damage("records", "records".into(), e.to_string(), &[])),
        }
        for (id, why) in bad_snaps {
            let sid: Vec<SnapshotId> = SnapshotId::parse(&id).into_iter().collect();
            damaged.push(users.damage("snapshot", id, why, &sid));
        }
        let used_snaps: BTreeSet<&SnapshotId> = users
            .snap_images
            .keys()
            .chain(users.snap_records.keys())
            .collect();
        for s in used_snaps {
            if !users.snapshots.contains(s) && !damaged.iter().any(|d| d.id == s.as_str()) {
                let d = users.damage(
                    "snapshot",
                    s.to_string(),
                    "missing".into(),
                    std::slice::from_ref(s),
                );
                damaged.push(d);
            }
        }

        let chunks = backend.list_objects(ObjectNs::Chunk)?;
        let blobs = backend.list_objects(ObjectNs::Blob)?;
        for (ns, listed, used) in [
            (
                ObjectNs::Chunk,
                &chunks,
                users.chunk_snaps.keys().collect::<Vec<_>>(),
            ),
            (
                ObjectNs::Blob,
                &blobs,
                users
                    .blob_images
                    .keys()
                    .chain(users.blob_records.keys())
                    .collect(),
            ),
        ] {
            let have: BTreeSet<&ContentHash> = listed.iter().map(|(h, _)| h).collect();
            for h in used.into_iter().collect::<BTreeSet<_>>() {
                if !have.contains(h) {
                    damaged.push(users.object_damage(ns, h, "missing".into()));
                }
            }
        }

        let objects: Vec<(ObjectNs, ContentHash)> = chunks
            .iter()
            .map(|(h, _)| (ObjectNs::Chunk, *h))
            .chain(blobs.iter().map(|(h, _)| (ObjectNs::Blob, *h)))
            .collect();
        let total: u64 = chunks.iter().chain(&blobs).map(|(_, len)| len).sum();
        progress.start("verifying", total);
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_VERIFY_THREADS);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let tx = tx.clone();
                let (next, objects) = (&next, &objects);
                s.spawn(move || {
                    while let Some((ns, h)) = objects.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let (len, problem) = check_object(self, *ns, h);
                        if tx.send((*ns, *h, len, problem)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            for (ns, h, len, problem) in rx {
                progress.advance(len);
                match ns {
                    ObjectNs::Chunk => {
                        report.chunks_checked += 1;
                        report.chunk_bytes_checked += len;
                    }
                    ObjectNs::Blob => {
                        report.blobs_checked += 1;
                        report.blob_bytes_checked += len;
                    }
                }
                if let Some(p) = problem {
                    damaged.push(users.object_damage(ns, &h, p));
                }
            }
        });
        progress.finish();
        damaged.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
        report.damaged = damaged;
        Ok(report)
    }
}
