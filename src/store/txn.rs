//! Transactions: stage chunks, blobs and manifests, then make them visible in one commit.
//!
//! A [`Txn`] holds the store's gc lock shared from start to end, so `gc` never deletes data
//! that a transaction wrote but has not committed yet. Everything is staged in a private
//! directory under `tmp/`; [`Txn::commit`] takes the store lock, runs the caller's final
//! checks, moves objects into place and applies the manifests as one journalled batch.
//! Dropping a transaction without committing removes its staging directory; if the process
//! dies instead, `gc` removes it.

use super::backend::{Collection, DocOp, ObjectNs};
use super::error::{Result, StoreError};
/// Pretty JSON with a trailing newline (kept here for the callers that stage documents).
pub use super::fsio::to_json;
use super::fsio::{self, FileLock, LockMode};
use super::ids::{ContentHash, ImageId, SnapshotId};
use super::manifest::{BlobRef, Image};
use super::snapshot::Snapshot;
use super::syncer::Syncer;
use super::Store;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Buffer size for copying blobs while hashing them.
const COPY_BUF: usize = 1 << 20;

/// A set of changes to the store that becomes visible all at once, or not at all.
pub struct Txn<'s> {
    store: &'s Store,
    _gc_lock: FileLock,
    dir: PathBuf,
    objects: Vec<(ObjectNs, ContentHash, PathBuf)>,
    staged: HashSet<(ObjectNs, ContentHash)>,
    docs: Vec<DocOp>,
    new_chunks: u64,
    new_bytes: u64,
    /// Staged chunks are fsynced in the background while the next ones are made.
    syncer: Syncer,
}

impl<'s> Txn<'s> {
    pub(super) fn begin(store: &'s Store) -> Result<Self> {
        let gc_lock = FileLock::acquire(&store.layout().gc_lock(), LockMode::Shared)?;
        let dir = store.layout().tmp().join(fsio::temp_name("txn"));
        fsio::mkdirs(&dir)?;
        Ok(Txn {
            store,
            _gc_lock: gc_lock,
            dir,
            objects: Vec::new(),
            staged: HashSet::new(),
            docs: Vec::new(),
            new_chunks: 0,
            new_bytes: 0,
            syncer: Syncer::default(),
        })
    }

    /// The store this transaction writes to.
    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// A private scratch directory, removed with the transaction.
    pub fn scratch_dir(&self) -> &Path {
        &self.dir
    }

    /// Chunks this transaction stored that the store did not have.
    pub fn new_chunks(&self) -> (u64, u64) {
        (self.new_chunks, self.new_bytes)
    }

    /// The files this transaction staged for objects of kind `ns` (under its scratch
    /// directory until the commit moves them): what a reader of a staged snapshot needs
    /// besides the store's own objects.
    pub fn staged_files(&self, ns: ObjectNs) -> HashMap<ContentHash, PathBuf> {
        self.objects
            .iter()
            .filter(|(n, _, _)| *n == ns)
            .map(|(_, h, p)| (*h, p.clone()))
            .collect()
    }

    fn have(&self, ns: ObjectNs, hash: &ContentHash) -> Result<bool> {
        Ok(self.staged.contains(&(ns, *hash)) || self.store.backend().object_exists(ns, hash)?)
    }

    /// Stage a chunk unless the store (or this transaction) already has it.
    pub fn put_chunk(&mut self, hash: &ContentHash, data: &[u8]) -> Result<()> {
        if self.have(ObjectNs::Chunk, hash)? {
            return Ok(());
        }
        let p = self.dir.join(hash.to_hex());
        let mut f =
            fsio::create_private(&p).map_err(|e| fsio::not_writable_or_io("create", &p, e))?;
        f.write_all(data)
            .map_err(|e| fsio::not_writable_or_io("write", &p, e))?;
        // Start writing it back now, and have it fsynced while the next chunks are made, so
        // the fsync at commit finds little left to do.
        fsio::start_writeback(&f);
        self.syncer.sync(f, p.clone());
        self.objects.push((ObjectNs::Chunk, *hash, p));
        self.staged.insert((ObjectNs::Chunk, *hash));
        self.new_chunks += 1;
        self.new_bytes += data.len() as u64;
        Ok(())
    }

    /// Stage an already-verified object file (import), consuming it.
    pub fn put_verified_object(
        &mut self,
        ns: ObjectNs,
        hash: &ContentHash,
        file: PathBuf,
    ) -> Result<()> {
        if self.have(ns, hash)? {
            fsio::remove_if_exists(&file)?;
            return Ok(());
        }
        self.objects.push((ns, *hash, file));
        self.staged.insert((ns, *hash));
        Ok(())
    }

    /// Copy a file into a staged blob while hashing it.
    pub fn put_blob_file(&mut self, src: &Path) -> Result<BlobRef> {
        let mut input = File::open(src).map_err(|e| StoreError::source(src, e.to_string()))?;
        let tmp = self.dir.join(fsio::temp_name("blob"));
        let mut out =
            fsio::create_private(&tmp).map_err(|e| fsio::not_writable_or_io("create", &tmp, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; COPY_BUF];
        let mut size = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| StoreError::source(src, e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| fsio::not_writable_or_io("write", &tmp, e))?;
            size += n as u64;
        }
        drop(out);
        let hash = ContentHash::from_digest(hasher.finalize());
        if self.have(ObjectNs::Blob, &hash)? {
            fsio::remove_if_exists(&tmp)?;
        } else {
            self.objects.push((ObjectNs::Blob, hash, tmp));
            self.staged.insert((ObjectNs::Blob, hash));
        }
        Ok(BlobRef { blob: hash, size })
    }

    /// Stage a snapshot manifest.
    pub fn put_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        snap.validate_new()?;
        self.docs.push(DocOp::Put {
            collection: Collection::Snapshots,
            id: snap.snapshot_id.to_string(),
            bytes: to_json(snap)?,
        });
        Ok(())
    }

    /// Stage an image manifest.
    pub fn put_image(&mut self, image: &Image) -> Result<()> {
        image.validate()?;
        self.docs.push(DocOp::Put {
            collection: Collection::Images,
            id: image.image_id.to_string(),
            bytes: to_json(image)?,
        });
        Ok(())
    }

    /// Stage the removal of an image manifest.
    pub fn delete_image(&mut self, id: &ImageId) {
        self.docs.push(DocOp::Delete {
            collection: Collection::Images,
            id: id.to_string(),
        });
    }

    /// Stage the removal of a snapshot manifest.
    pub fn delete_snapshot(&mut self, id: &SnapshotId) {
        self.docs.push(DocOp::Delete {
            collection: Collection::Snapshots,
            id: id.to_string(),
        });
    }

    /// Stage any document change.
    pub fn push_doc(&mut self, op: DocOp) {
        self.docs.push(op);
    }

    /// Make everything visible. `check` runs under the store lock, after any interrupted
    /// commit was finished and before anything is changed: it re-validates what the
    /// transaction assumed (names still free, snapshots still there).
    pub fn commit(mut self, check: impl FnOnce(&Store) -> Result<()>) -> Result<()> {
        std::mem::take(&mut self.syncer).finish()?;
        let _lock = self.store.lock()?;
        check(self.store)?;
        let backend = self.store.backend();
        backend.put_objects(&self.objects)?;
        backend.commit_docs(self.docs.clone())?;
        Ok(())
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
