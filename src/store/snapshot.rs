//! Snapshot manifests: a volume's size and its ordered list of non-zero chunks.

use super::error::{Result, StoreError};
use super::ids::{AccountId, ContentHash, SnapshotId};
use super::manifest::MANIFEST_VERSION;
use serde::{Deserialize, Serialize};

/// Chunk size: 512 KiB, the block size of EBS snapshots (the EBS direct APIs'
/// `BlockSize`, 524288 bytes).
pub const CHUNK_SIZE: u64 = 512 * 1024;
/// Volumes are whole 512-byte sectors (virtio-blk counts capacity in 512-byte sectors,
/// virtio spec 1.2 §5.2.4).
pub const SECTOR_SIZE: u64 = 512;
/// The largest volume the store takes: 64 TiB, the largest EBS volume (io2 Block Express,
/// "Amazon EBS volume types", maximum volume size 64 TiB). Bounds what an image import
/// walks and what a launch has to create.
pub const MAX_VOLUME_SIZE: u64 = 64 << 40;

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
    fn changed_chunks() {
        let a = ContentHash::of(b"a");
        let b = ContentHash::of(b"b");
        let s1 = snap(4 * CHUNK_SIZE, vec![ChunkEntry(0, a), ChunkEntry(2, a)]);
        let s2 = snap(4 * CHUNK_SIZE, vec![ChunkEntry(0, a), ChunkEntry(1, b)]);
        assert_eq!(s2.changed_chunks_vs(&s1), vec![1, 2]);
        assert!(s1.changed_chunks_vs(&s1).is_empty());
    }
}
