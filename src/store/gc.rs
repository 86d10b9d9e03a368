//! Garbage collection: delete chunks and blobs nothing references, and leftover staging.
//!
//! Roots are every snapshot manifest (they list all their chunks), every image manifest
//! (kernel and initrd blobs) and every record's [`super::StoreRefs`]. gc holds `gc.lock`
//! exclusively, so it runs only when no transaction is staging data, and the store lock, so
//! no commit happens meanwhile. A manifest it cannot read stops it: it never deletes on a
//! guess.

use super::backend::{Collection, ObjectNs};
use super::error::{Result, StoreError};
use super::fsio::{FileLock, LockMode};
use super::ids::{ContentHash, ImageId, SnapshotId};
use super::Store;
use std::collections::HashSet;
use std::path::Path;

/// What gc removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GcReport {
    pub chunks_removed: u64,
    pub chunk_bytes_freed: u64,
    pub chunks_kept: u64,
    pub blobs_removed: u64,
    pub blob_bytes_freed: u64,
    pub blobs_kept: u64,
    /// Entries of `tmp/` removed (files and staging directories of dead transactions).
    pub temp_entries_removed: u64,
    pub temp_bytes_freed: u64,
}

impl Store {
    /// Whether gc could start now (no transaction holds `gc.lock`).
    pub fn gc_would_wait(&self) -> Result<bool> {
        Ok(FileLock::try_acquire(&self.layout().gc_lock(), LockMode::Exclusive)?.is_none())
    }

    /// Collect garbage, waiting for running transactions to finish.
    pub fn gc(&self) -> Result<GcReport> {
        let _gc = FileLock::acquire(&self.layout().gc_lock(), LockMode::Exclusive)?;
        let _lock = self.lock()?;
        let mut report = GcReport::default();
        let backend = self.backend();

        let mut chunks: HashSet<ContentHash> = HashSet::new();
        for id in backend.list_docs(&Collection::Snapshots)? {
            let snap = self.snapshot(&SnapshotId::parse(&id)?)?;
            chunks.extend(snap.chunks.iter().map(|c| c.1));
        }
        let mut blobs: HashSet<ContentHash> = HashSet::new();
        for id in backend.list_docs(&Collection::Images)? {
            let img = self.image(&ImageId::parse(&id)?)?;
            blobs.extend(img.blobs());
        }
        blobs.extend(self.record_refs()?.blobs);

        for (ns, keep, removed, freed, kept) in [
            (
                ObjectNs::Chunk,
                &chunks,
                &mut report.chunks_removed,
                &mut report.chunk_bytes_freed,
                &mut report.chunks_kept,
            ),
            (
                ObjectNs::Blob,
                &blobs,
                &mut report.blobs_removed,
                &mut report.blob_bytes_freed,
                &mut report.blobs_kept,
            ),
        ] {
            for (hash, len) in backend.list_objects(ns)? {
                if keep.contains(&hash) {
                    *kept += 1;
                } else {
                    backend.delete_object(ns, &hash)?;
                    *removed += 1;
                    *freed += len;
                }
            }
        }

        for ent in super::backend::read_dir_sorted(&self.layout().tmp())? {
            report.temp_bytes_freed += tree_bytes(&ent);
            let res = if ent.is_dir() && !ent.is_symlink() {
                std::fs::remove_dir_all(&ent)
            } else {
                std::fs::remove_file(&ent)
            };
            res.map_err(|e| StoreError::io("remove", &ent, e))?;
            report.temp_entries_removed += 1;
        }
        Ok(report)
    }
}

/// Bytes of the files under `p`.
fn tree_bytes(p: &Path) -> u64 {
    let Ok(meta) = p.symlink_metadata() else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}
