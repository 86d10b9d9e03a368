//! Snapshot operations: create (full or incremental), list, who uses one, delete, dump.

use super::accounts::can_see_snapshot;
use super::backend::ObjectNs;
use super::backend::{Collection, DocOp};
use super::chunker::{chunk_volume, BackendSource, ChunkPlan};
use super::error::{Result, StoreError};
use super::ids::{AccountId, ContentHash, SnapshotId};
use super::manifest::{gib_ceil, now_rfc3339, MANIFEST_VERSION};
use super::snapshot::{ChunkEntry, Snapshot, SnapshotState, CHUNK_SIZE};
use super::txn::Txn;
use super::verify::damaged_object;
use super::{NoProgress, Progress, Store};
use crate::volume::BlockBackend;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

impl Txn<'_> {
    /// Stage a snapshot manifest over chunks already staged or stored.
    pub fn stage_snapshot(
        &mut self,
        owner: &AccountId,
        size_bytes: u64,
        chunks: Vec<ChunkEntry>,
        parent: Option<&SnapshotId>,
        description: &str,
    ) -> Result<Snapshot> {
        let data_bytes = chunks
            .iter()
            .map(|c| super::snapshot::chunk_len(size_bytes, c.0))
            .sum();
        let snap = Snapshot {
            manifest_version: MANIFEST_VERSION,
            snapshot_id: SnapshotId::generate(),
            owner_id: owner.clone(),
            description: description.to_string(),
            start_time: now_rfc3339(),
            state: SnapshotState::Completed,
            volume_size: gib_ceil(size_bytes),
            size_bytes,
            chunk_size: CHUNK_SIZE,
            parent_snapshot_id: parent.cloned(),
            data_bytes,
            chunks,
        };
        self.put_snapshot(&snap)?;
        Ok(snap)
    }

    /// Stage a snapshot of `volume` that is incremental over `parent`: only the chunks listed
    /// in `dirty_chunks` (chunk indices, `offset / CHUNK_SIZE`) are read and hashed; every
    /// other chunk is taken from the parent. Chunks beyond the parent's end that are not
    /// dirty read as zeros. The volume may be larger than the parent (a grown volume).
    pub fn snapshot_incremental(
        &mut self,
        owner: &AccountId,
        parent: &SnapshotId,
        volume: &mut dyn BlockBackend,
        dirty_chunks: &[u64],
        description: &str,
        progress: &dyn Progress,
    ) -> Result<Snapshot> {
        let parent_snap = self.store().snapshot(parent)?;
        let size = volume.size();
        super::chunker::check_volume_size(Path::new(parent.as_str()), size)?;
        let mut src = BackendSource { volume };
        let chunks = chunk_volume(
            self,
            &mut src,
            ChunkPlan::Only {
                parent: &parent_snap.chunks,
                dirty: dirty_chunks,
            },
            progress,
        )?;
        self.stage_snapshot(owner, size, chunks, Some(parent), description)
    }

    /// Stage a full snapshot of a block backend (every chunk read).
    pub fn snapshot_full(
        &mut self,
        owner: &AccountId,
        volume: &mut dyn BlockBackend,
        description: &str,
        progress: &dyn Progress,
    ) -> Result<Snapshot> {
        let size = volume.size();
        super::chunker::check_volume_size(Path::new("volume"), size)?;
        let mut src = BackendSource { volume };
        let chunks = chunk_volume(self, &mut src, ChunkPlan::All, progress)?;
        self.stage_snapshot(owner, size, chunks, None, description)
    }
}

/// The chunk indices that hold any of `blocks` (indices of `block_size`-byte blocks, e.g. a
/// copy-on-write overlay's dirty 4 KiB blocks): the `dirty_chunks` argument of
/// [`Store::create_snapshot_incremental`]. Sorted, without duplicates.
pub fn dirty_chunks_from_blocks(
    blocks: impl IntoIterator<Item = u64>,
    block_size: u64,
) -> Vec<u64> {
    let mut v: Vec<u64> = blocks
        .into_iter()
        .flat_map(|b| {
            let start = b * block_size;
            start / CHUNK_SIZE..=(start + block_size.max(1) - 1) / CHUNK_SIZE
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Who uses a snapshot.
#[derive(Debug, Clone, Default)]
pub struct SnapshotUsers {
    pub images: Vec<super::ImageId>,
    /// Records (e.g. `instances/i-…`).
    pub records: Vec<String>,
}

impl Store {
    /// Create and commit a snapshot incremental over `parent` (see
    /// [`Txn::snapshot_incremental`]). Returns the new snapshot's id.
    pub fn create_snapshot_incremental(
        &self,
        owner: &AccountId,
        parent: &SnapshotId,
        volume: &mut dyn BlockBackend,
        dirty_chunks: &[u64],
        description: &str,
    ) -> Result<SnapshotId> {
        let mut txn = self.begin()?;
        let snap = txn.snapshot_incremental(
            owner,
            parent,
            volume,
            dirty_chunks,
            description,
            &NoProgress,
        )?;
        txn.commit(|_| Ok(()))?;
        Ok(snap.snapshot_id)
    }

    /// Snapshots `caller` owns or can reach through a visible image.
    pub fn list_snapshots(&self, caller: &AccountId) -> Result<Vec<Snapshot>> {
        let images = self.images()?;
        Ok(self
            .all_snapshots()?
            .into_iter()
            .filter(|s| can_see_snapshot(caller, s, images.as_slice()))
            .collect())
    }

    /// A snapshot `caller` can see.
    pub fn resolve_snapshot(&self, caller: &AccountId, id: &str) -> Result<Snapshot> {
        let id = SnapshotId::parse(id)?;
        let snap = self.snapshot(&id)?;
        if !can_see_snapshot(caller, &snap, self.images()?.as_slice()) {
            return Err(StoreError::NotFound(format!(
                "snapshot {id} not found (or not visible to account {caller})"
            )));
        }
        Ok(snap)
    }

    /// Images and records that use each snapshot.
    pub fn snapshot_users(&self) -> Result<BTreeMap<SnapshotId, SnapshotUsers>> {
        let mut out: BTreeMap<SnapshotId, SnapshotUsers> = BTreeMap::new();
        for img in self.images()?.as_slice() {
            for s in img.snapshot_ids() {
                out.entry(s.clone())
                    .or_default()
                    .images
                    .push(img.image_id.clone());
            }
        }
        for (s, r) in self.record_refs()?.snapshot_users {
            out.entry(s).or_default().records.push(r);
        }
        Ok(out)
    }

    /// Delete a snapshot the caller owns and nothing uses.
    pub fn delete_snapshot(&self, caller: &AccountId, id: &SnapshotId) -> Result<()> {
        let _lock = self.lock()?;
        let snap = self.snapshot(id)?;
        if snap.owner_id != *caller {
            return Err(StoreError::PermissionDenied(format!(
                "snapshot {id} belongs to account {}: only its owner can delete it",
                snap.owner_id
            )));
        }
        if let Some(u) = self.snapshot_users()?.get(id) {
            let by = u
                .images
                .iter()
                .map(|i| format!("image {i}"))
                .chain(u.records.iter().cloned())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(StoreError::InUse(format!(
                "snapshot {id} is in use by {by}"
            )));
        }
        self.backend().commit_docs(vec![DocOp::Delete {
            collection: Collection::Snapshots,
            id: id.to_string(),
        }])
    }

    /// Write a snapshot's volume to `out` as a sparse raw file (zero chunks become holes).
    /// Every chunk is checked against its hash: a damaged store fails the dump.
    pub fn dump_snapshot(
        &self,
        snap: &Snapshot,
        out: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        let tmp = out.with_file_name(format!(
            ".{}.{}",
            out.file_name().and_then(|n| n.to_str()).unwrap_or("dump"),
            super::fsio::temp_name("part")
        ));
        let res = (|| {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| StoreError::io("create", &tmp, e))?;
            f.set_len(snap.size_bytes)
                .map_err(|e| StoreError::io("size", &tmp, e))?;
            let mut view = super::SnapshotView::new(self.backend_arc(), snap.clone())?;
            let mut buf = vec![0u8; CHUNK_SIZE as usize];
            progress.start("writing", snap.data_bytes);
            for c in &snap.chunks {
                let len = snap.chunk_len(c.0) as usize;
                view.read_at(&mut buf[..len], c.0 * CHUNK_SIZE)
                    .map_err(|e| damaged_object(ObjectNs::Chunk, &c.1, &e.to_string()))?;
                // Hashing a chunk costs far less than writing it: never dump damaged data.
                if ContentHash::of(&buf[..len]) != c.1 {
                    return Err(damaged_object(
                        ObjectNs::Chunk,
                        &c.1,
                        "its content does not match its hash",
                    ));
                }
                f.write_all_at(&buf[..len], c.0 * CHUNK_SIZE)
                    .map_err(|e| StoreError::io("write", &tmp, e))?;
                progress.advance(len as u64);
            }
            progress.finish();
            f.sync_all().map_err(|e| StoreError::io("fsync", &tmp, e))?;
            std::fs::rename(&tmp, out).map_err(|e| StoreError::io("rename to", out, e))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_blocks_to_chunks() {
        // 4 KiB blocks: 128 per chunk.
        assert_eq!(
            dirty_chunks_from_blocks([0, 1, 127, 128, 1000], 4096),
            vec![0, 1, 7]
        );
        // A block size that does not divide the chunk size can straddle two chunks.
        assert_eq!(dirty_chunks_from_blocks([1], CHUNK_SIZE - 512), vec![0, 1]);
        assert!(dirty_chunks_from_blocks([], 4096).is_empty());
    }
}
