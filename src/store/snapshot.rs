//! Snapshot manifests: a volume's size and its ordered list of non-zero chunks.

use super::error::{Result, StoreError};
use super::ids::{AccountId, ContentHash, SnapshotId};
use super::manifest::{
    char_name, gib_ceil, MANIFEST_VERSION, MAX_VOLUME_BYTES, MAX_VOLUME_SIZE_GIB,
};
use crate::text::find_unsafe_char;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Chunk size: 512 KiB, the block size of EBS snapshots (the EBS direct APIs'
/// `BlockSize`, 524288 bytes).
pub const CHUNK_SIZE: u64 = 512 * 1024;
/// Volumes are whole 512-byte sectors (virtio-blk counts capacity in 512-byte sectors,
/// virtio spec 1.2 §5.2.4).
pub const SECTOR_SIZE: u64 = 512;

/// Snapshot states, as in EC2. Local snapshots are committed whole, so always `completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
}

/// One stored chunk: its index in the volume and its hash. Serialised as `[index, "hex"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry(pub u64, pub ContentHash);

/// A snapshot manifest: `snapshots/snap-….json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Snapshot {
    pub manifest_version: u32,
    pub snapshot_id: SnapshotId,
    pub owner_id: AccountId,
    #[serde(default)]
    pub description: String,
    /// RFC 3339, UTC.
    pub start_time: String,
    pub state: SnapshotState,
    /// Size in GiB, rounded up (EC2's `VolumeSize`).
    pub volume_size: u64,
    /// Exact size in bytes.
    pub size_bytes: u64,
    /// Always [`CHUNK_SIZE`]; recorded so the format can change.
    pub chunk_size: u64,
    /// The snapshot this one is incremental over, if any. Informational: every snapshot
    /// lists all its chunks, so deleting a parent never breaks a child.
    #[serde(default)]
    pub parent_snapshot_id: Option<SnapshotId>,
    /// Bytes of non-zero chunks (what the volume would occupy unshared).
    pub data_bytes: u64,
    /// Non-zero chunks, by increasing index. Absent indices read as zeros.
    pub chunks: Vec<ChunkEntry>,
}

impl Snapshot {
    /// Number of chunk slots in the volume, zero or not.
    pub fn chunk_count(&self) -> u64 {
        self.size_bytes.div_ceil(self.chunk_size)
    }

    /// Length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u64) -> u64 {
        chunk_len(self.size_bytes, index)
    }

    /// Indices whose content differs from `other`'s (including chunks that became zero).
    pub fn changed_chunks_vs(&self, other: &Snapshot) -> Vec<u64> {
        let theirs: std::collections::HashMap<u64, ContentHash> =
            other.chunks.iter().map(|c| (c.0, c.1)).collect();
        let mut changed: Vec<u64> = self
            .chunks
            .iter()
            .filter(|c| theirs.get(&c.0) != Some(&c.1))
            .map(|c| c.0)
            .collect();
        let mine: std::collections::HashSet<u64> = self.chunks.iter().map(|c| c.0).collect();
        changed.extend(
            other
                .chunks
                .iter()
                .map(|c| c.0)
                .filter(|i| !mine.contains(i)),
        );
        changed.sort_unstable();
        changed
    }

    /// Check everything that the types alone do not.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| StoreError::corrupt(format!("snapshot {}", self.snapshot_id), why);
        if self.manifest_version != MANIFEST_VERSION {
            return Err(bad(format!(
                "manifest version {} (this amivm reads version {MANIFEST_VERSION})",
                self.manifest_version
            )));
        }
        if self.chunk_size != CHUNK_SIZE {
            return Err(bad(format!(
                "chunk size {} is not {CHUNK_SIZE}",
                self.chunk_size
            )));
        }
        if self.size_bytes == 0 || !self.size_bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(bad(format!(
                "size {} is not a positive multiple of {SECTOR_SIZE}",
                self.size_bytes
            )));
        }
        let count = self.chunk_count();
        let mut prev: Option<u64> = None;
        let mut data = 0u64;
        for c in &self.chunks {
            if c.0 >= count || prev.is_some_and(|p| c.0 <= p) {
                return Err(bad(format!(
                    "chunk index {} out of order or beyond {count} chunks",
                    c.0
                )));
            }
            prev = Some(c.0);
            data += self.chunk_len(c.0);
        }
        if data != self.data_bytes {
            return Err(bad(format!(
                "DataBytes {} but the chunks hold {data}",
                self.data_bytes
            )));
        }
        Ok(())
    }

    /// The checks a new manifest must pass before it is written (create, copy, import), on
    /// top of [`Snapshot::validate`]: at most [`MAX_VOLUME_BYTES`], a `VolumeSize` that
    /// matches the size, not its own parent, and a description safe to print. (Reads only
    /// [`Snapshot::validate`], so a store written before these checks stays readable.)
    pub fn validate_new(&self) -> Result<()> {
        self.validate()?;
        let bad = |why: String| StoreError::corrupt(format!("snapshot {}", self.snapshot_id), why);
        if self.size_bytes > MAX_VOLUME_BYTES {
            return Err(bad(format!(
                "size {} bytes is more than the largest volume, {MAX_VOLUME_SIZE_GIB} GiB",
                self.size_bytes
            )));
        }
        if self.volume_size != gib_ceil(self.size_bytes) {
            return Err(bad(format!(
                "VolumeSize {} GiB does not match its {} bytes",
                self.volume_size, self.size_bytes
            )));
        }
        if self.parent_snapshot_id.as_ref() == Some(&self.snapshot_id) {
            return Err(bad("it is its own parent".into()));
        }
        if let Some(c) = find_unsafe_char(&self.description) {
            return Err(bad(format!("its description contains {}", char_name(c))));
        }
        Ok(())
    }
}

/// Refuse snapshots whose parent chain loops: follow each one's `ParentSnapshotId` through
/// `new` first, then through `parent_of` (the parents of snapshots already stored; `None` ends
/// the chain), and fail if a snapshot comes back.
pub fn check_parent_chains(
    new: &[Snapshot],
    parent_of: impl Fn(&SnapshotId) -> Option<SnapshotId>,
) -> Result<()> {
    let in_new: HashMap<&SnapshotId, Option<&SnapshotId>> = new
        .iter()
        .map(|s| (&s.snapshot_id, s.parent_snapshot_id.as_ref()))
        .collect();
    for s in new {
        let mut seen = HashSet::from([s.snapshot_id.clone()]);
        let mut cur = s.parent_snapshot_id.clone();
        while let Some(p) = cur {
            if !seen.insert(p.clone()) {
                return Err(StoreError::corrupt(
                    format!("snapshot {}", s.snapshot_id),
                    format!("its chain of parent snapshots loops back to {p}"),
                ));
            }
            cur = match in_new.get(&p) {
                Some(pp) => pp.cloned(),
                None => parent_of(&p),
            };
        }
    }
    Ok(())
}

/// Length of chunk `index` of a volume of `size` bytes.
pub fn chunk_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index * CHUNK_SIZE).min(CHUNK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(size: u64, chunks: Vec<ChunkEntry>) -> Snapshot {
        let data = chunks.iter().map(|c| chunk_len(size, c.0)).sum();
        Snapshot {
            manifest_version: MANIFEST_VERSION,
            snapshot_id: SnapshotId::generate(),
            owner_id: AccountId::generate(),
            description: String::new(),
            start_time: "2024-01-01T00:00:00Z".into(),
            state: SnapshotState::Completed,
            volume_size: 1,
            size_bytes: size,
            chunk_size: CHUNK_SIZE,
            parent_snapshot_id: None,
            data_bytes: data,
            chunks,
        }
    }

    #[test]
    fn chunk_lengths_and_validation() {
        let h = ContentHash::of(b"x");
        let s = snap(CHUNK_SIZE + 1024, vec![ChunkEntry(0, h), ChunkEntry(1, h)]);
        assert_eq!(s.chunk_count(), 2);
        assert_eq!(s.chunk_len(1), 1024);
        assert_eq!(s.data_bytes, CHUNK_SIZE + 1024);
        s.validate().unwrap();
        let mut bad = s.clone();
        bad.chunks.swap(0, 1);
        assert!(bad.validate().is_err());
        let mut bad = s.clone();
        bad.chunks.push(ChunkEntry(2, h));
        assert!(bad.validate().is_err());
        assert!(snap(1000, vec![]).validate().is_err());
    }

    #[test]
    fn new_manifests_have_sane_sizes_and_parents() {
        let h = ContentHash::of(b"x");
        let s = snap(CHUNK_SIZE, vec![ChunkEntry(0, h)]);
        s.validate_new().unwrap();
        let mut own_parent = s.clone();
        own_parent.parent_snapshot_id = Some(s.snapshot_id.clone());
        assert!(own_parent.validate().is_ok(), "reads stay lenient");
        let e = own_parent.validate_new().unwrap_err().to_string();
        assert!(e.contains("its own parent"), "{e}");
        let mut huge = snap(MAX_VOLUME_BYTES + SECTOR_SIZE, vec![]);
        huge.volume_size = gib_ceil(huge.size_bytes);
        assert!(huge
            .validate_new()
            .unwrap_err()
            .to_string()
            .contains("largest volume"));
        let mut lying = s.clone();
        lying.volume_size = 1 << 40;
        assert!(lying.validate_new().is_err());
        let mut esc = s.clone();
        esc.description = "x\x1b[2J".into();
        assert!(esc.validate_new().is_err());
    }

    #[test]
    fn parent_cycles_are_found() {
        let mk = |parent: Option<&Snapshot>| {
            let mut s = snap(CHUNK_SIZE, vec![]);
            s.parent_snapshot_id = parent.map(|p| p.snapshot_id.clone());
            s
        };
        let root = mk(None);
        let child = mk(Some(&root));
        let grandchild = mk(Some(&child));
        // A chain into the store that ends is fine.
        check_parent_chains(&[child.clone(), grandchild.clone()], |_| None).unwrap();
        // Two new snapshots that are each other's parent.
        let mut a = mk(None);
        let mut b = mk(Some(&a));
        a.parent_snapshot_id = Some(b.snapshot_id.clone());
        let e = check_parent_chains(&[a.clone(), b.clone()], |_| None).unwrap_err();
        assert!(e.to_string().contains("loops back"), "{e}");
        // A new snapshot whose stored ancestor names the new one as its parent.
        b.parent_snapshot_id = Some(root.snapshot_id.clone());
        let (rid, bid) = (root.snapshot_id.clone(), b.snapshot_id.clone());
        let e = check_parent_chains(&[b], move |p| (*p == rid).then(|| bid.clone()));
        assert!(e.is_err());
        // Its own parent.
        let mut own = mk(None);
        own.parent_snapshot_id = Some(own.snapshot_id.clone());
        assert!(check_parent_chains(&[own], |_| None).is_err());
    }

    #[test]
    fn changed_chunks() {
        let a = ContentHash::of(b"a");
        let b = ContentHash::of(b"b");
        let s1 = snap(4 * CHUNK_SIZE, vec![ChunkEntry(0, a), ChunkEntry(2, a)]);
        let s2 = snap(4 * CHUNK_SIZE, vec![ChunkEntry(0, a), ChunkEntry(1, b)]);
        assert_eq!(s2.changed_chunks_vs(&s1), vec![1, 2]);
        assert!(s1.changed_chunks_vs(&s1).is_empty());
    }
}
