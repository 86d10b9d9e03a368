//! [`SnapshotView`]: a snapshot as a read-only [`BlockBackend`].
//!
//! A read returns, for each chunk it touches, the chunk's bytes if the snapshot stores it, else
//! zeros. Put a copy-on-write overlay in front of it to give an instance a writable volume.

use super::backend::{ObjectNs, ObjectReader, ObjectStore};
use super::error::{Result, StoreError};
use super::ids::ContentHash;
use super::snapshot::{Snapshot, CHUNK_SIZE};
use crate::volume::{BlockBackend, VolumeError};
use std::sync::Arc;

/// Open chunk files kept by one view: enough for a guest's working set of sequential reads
/// without holding thousands of descriptors.
pub const OPEN_CHUNK_CACHE: usize = 64;
/// Bytes of the serial number a virtio-blk device reports (`VIRTIO_BLK_ID_BYTES`, virtio spec
/// 1.2 §5.2.6).
const SERIAL_MAX: usize = 20;

/// A read-only block device over a snapshot.
pub struct SnapshotView {
    backend: Arc<dyn ObjectStore>,
    snap: Snapshot,
    /// The size the view presents: the snapshot's, or more (reads past the snapshot's end
    /// return zeros), for a volume larger than its snapshot.
    size: u64,
    open: Vec<(ContentHash, Box<dyn ObjectReader>)>,
}

impl std::fmt::Debug for SnapshotView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotView")
            .field("snapshot", &self.snap.snapshot_id)
            .field("size", &self.snap.size_bytes)
            .finish()
    }
}

impl SnapshotView {
    /// A view of `snap`, reading chunks from `backend`.
    pub fn new(backend: Arc<dyn ObjectStore>, snap: Snapshot) -> Result<Self> {
        snap.validate()?;
        Ok(SnapshotView {
            backend,
            size: snap.size_bytes,
            snap,
            open: Vec::new(),
        })
    }

    /// Present a volume of `size` bytes (at least the snapshot's, whole sectors): what an
    /// instance gets when a mapping's `VolumeSize` exceeds the snapshot. The bytes past the
    /// snapshot's end read as zeros.
    pub fn with_size(mut self, size: u64) -> Result<Self> {
        if size < self.snap.size_bytes || !size.is_multiple_of(super::snapshot::SECTOR_SIZE) {
            return Err(StoreError::Invalid(format!(
                "volume size {size} must be a multiple of 512 and at least the snapshot's {} bytes",
                self.snap.size_bytes
            )));
        }
        self.size = size;
        Ok(self)
    }

    /// The snapshot behind the view.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// The hash stored for chunk `index`, if it is not a zero chunk.
    pub fn chunk_hash(&self, index: u64) -> Option<ContentHash> {
        self.snap
            .chunks
            .binary_search_by_key(&index, |c| c.0)
            .ok()
            .map(|i| self.snap.chunks[i].1)
    }

    fn reader(&mut self, hash: &ContentHash) -> Result<&dyn ObjectReader> {
        if let Some(pos) = self.open.iter().position(|(h, _)| h == hash) {
            let entry = self.open.remove(pos);
            self.open.insert(0, entry);
        } else {
            let r = self.backend.open_object(ObjectNs::Chunk, hash)?;
            self.open.insert(0, (*hash, r));
            self.open.truncate(OPEN_CHUNK_CACHE);
        }
        Ok(&*self.open[0].1)
    }

    fn read_inner(&mut self, buf: &mut [u8], offset: u64) -> Result<(), VolumeError> {
        let size = self.size;
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(VolumeError::OutOfRange { offset, len, size });
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / CHUNK_SIZE;
            let within = pos % CHUNK_SIZE;
            let n = ((CHUNK_SIZE - within) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            // Bytes of this chunk that the snapshot holds (its last chunk may be short, and a
            // view larger than the snapshot has no chunks past its end).
            let stored = (self.snap.chunk_len(index).saturating_sub(within) as usize).min(n);
            match self.chunk_hash(index) {
                Some(h) if stored > 0 => {
                    let reader = self.reader(&h).map_err(|e| io_err(&h, e))?;
                    reader
                        .read_exact_at(&mut out[..stored], within)
                        .map_err(|e| VolumeError::Io {
                            what: format!("read chunk {h}"),
                            source: e,
                        })?;
                    out[stored..].fill(0);
                }
                _ => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }
}

fn io_err(h: &ContentHash, e: StoreError) -> VolumeError {
    VolumeError::Io {
        what: format!("open chunk {h}"),
        source: std::io::Error::other(e.to_string()),
    }
}

impl BlockBackend for SnapshotView {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), VolumeError> {
        self.read_inner(buf, offset)
    }

    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), VolumeError> {
        Err(VolumeError::ReadOnly)
    }

    fn flush(&mut self) -> Result<(), VolumeError> {
        Ok(())
    }

    fn discard(&mut self, _offset: u64, _len: u64) -> Result<(), VolumeError> {
        Err(VolumeError::ReadOnly)
    }

    fn read_only(&self) -> bool {
        true
    }

    /// The snapshot id without its `snap-` prefix: 17 hex digits fit the 20-byte serial.
    fn serial(&self) -> String {
        let id = self.snap.snapshot_id.as_str();
        let s = id.strip_prefix("snap-").unwrap_or(id);
        s.chars().take(SERIAL_MAX).collect()
    }
}
