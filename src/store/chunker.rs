//! Cutting volumes into chunks: the sources a snapshot can be read from, and the loop that
//! hashes non-zero chunks into a transaction.

use super::error::{Result, StoreError};
use super::ids::ContentHash;
use super::manifest::{MAX_VOLUME_BYTES, MAX_VOLUME_SIZE_GIB};
use super::pipeline;
use super::qcow2::Qcow2Image;
use super::snapshot::{chunk_len, ChunkEntry, CHUNK_SIZE, SECTOR_SIZE};
use super::txn::Txn;
use super::Progress;
use crate::volume::BlockBackend;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Something a snapshot can be read from, chunk by chunk.
pub trait ChunkSource {
    /// Volume size in bytes.
    fn size(&self) -> u64;
    /// The first chunk at or after `from` that may hold data, or `None` if all the rest
    /// reads as zeros. Sources that know their holes skip them here, so that the cost of
    /// chunking follows the data, not the volume size. By default, every chunk may.
    fn next_data(&mut self, from: u64) -> Result<Option<u64>> {
        Ok((from < self.size().div_ceil(CHUNK_SIZE)).then_some(from))
    }
    /// Fill `buf` (exactly the chunk's length) with chunk `index`. May return `false` without
    /// touching `buf` when the chunk is known to be all zeros (a hole in a sparse file).
    fn read_chunk(&mut self, index: u64, buf: &mut [u8]) -> Result<bool>;
}

/// Check that a source size is usable as a volume: whole sectors, at most
/// [`MAX_VOLUME_BYTES`].
pub fn check_volume_size(path: &Path, size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(SECTOR_SIZE) {
        return Err(StoreError::source(
            path,
            format!("size {size} bytes is not a positive multiple of {SECTOR_SIZE}-byte sectors"),
        ));
    }
    if size > MAX_VOLUME_BYTES {
        return Err(StoreError::source(
            path,
            format!("size {size} bytes is more than the largest volume, {MAX_VOLUME_SIZE_GIB} GiB"),
        ));
    }
    Ok(())
}

/// A raw disk image (or block device). Holes of sparse files are skipped with
/// `lseek(SEEK_DATA)` instead of being read.
pub struct RawSource {
    file: File,
    path: PathBuf,
    size: u64,
    /// `(from, data)`: the last SEEK_DATA answer: no data in `[from, data)`. Lets a long run
    /// of hole chunks cost one lseek instead of one each.
    last_seek: Option<(u64, u64)>,
}

impl RawSource {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| StoreError::source(path, e.to_string()))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| StoreError::source(path, e.to_string()))?;
        check_volume_size(path, size)?;
        Ok(RawSource {
            file,
            path: path.to_path_buf(),
            size,
            last_seek: None,
        })
    }

    /// Whether `[start, end)` contains no data (only holes), per SEEK_DATA.
    fn is_hole(&mut self, start: u64, end: u64) -> bool {
        if let Some((from, data)) = self.last_seek {
            if from <= start && end <= data {
                return true;
            }
        }
        let Ok(off) = libc::off_t::try_from(start) else {
            return false;
        };
        // SAFETY: lseek only reads its integer arguments; the fd is owned by self.file. Moving
        // the file offset is harmless: all reads are positioned (pread).
        let data = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        let data = if data < 0 {
            // ENXIO: no data after `start` at all. Anything else (EINVAL on file systems
            // without SEEK_DATA): assume data.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
                return false;
            }
            u64::MAX
        } else {
            u64::try_from(data).unwrap_or(0)
        };
        self.last_seek = Some((start, data));
        data >= end
    }
}

impl ChunkSource for RawSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn next_data(&mut self, from: u64) -> Result<Option<u64>> {
        let start = from.saturating_mul(CHUNK_SIZE);
        if start >= self.size {
            return Ok(None);
        }
        if !self.is_hole(start, self.size) {
            // Data somewhere in [start, size): the last SEEK_DATA answer says where.
            return Ok(Some(match self.last_seek {
                Some((at, data)) if at == start => (data / CHUNK_SIZE).max(from),
                _ => from,
            }));
        }
        Ok(None)
    }

    fn read_chunk(&mut self, index: u64, buf: &mut [u8]) -> Result<bool> {
        let start = index * CHUNK_SIZE;
        if self.is_hole(start, start + buf.len() as u64) {
            return Ok(false);
        }
        self.file
            .read_exact_at(buf, start)
            .map_err(|e| StoreError::source(&self.path, format!("read at {start}: {e}")))?;
        Ok(true)
    }
}

/// A qcow2 image, read with amivm's own reader ([`super::qcow2`]): only the clusters the
/// image allocates are visited, so an empty 1 TiB image costs its L1 table.
pub struct Qcow2Source {
    image: Qcow2Image<File>,
    path: PathBuf,
}

impl Qcow2Source {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| StoreError::source(path, e.to_string()))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::source(path, e.to_string()))?
            .len();
        let image = Qcow2Image::open(Box::new(file), len, MAX_VOLUME_BYTES)
            .map_err(|e| StoreError::source(path, e.to_string()))?;
        check_volume_size(path, image.size())?;
        Ok(Qcow2Source {
            image,
            path: path.to_path_buf(),
        })
    }
}

impl ChunkSource for Qcow2Source {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn next_data(&mut self, from: u64) -> Result<Option<u64>> {
        let next = self
            .image
            .next_allocated(from.saturating_mul(CHUNK_SIZE))
            .map_err(|e| StoreError::source(&self.path, e.to_string()))?;
        Ok(next.map(|off| (off / CHUNK_SIZE).max(from)))
    }

    fn read_chunk(&mut self, index: u64, buf: &mut [u8]) -> Result<bool> {
        self.image
            .read_at(buf, index * CHUNK_SIZE)
            .map_err(|e| StoreError::source(&self.path, e.to_string()))
    }
}

/// Any block backend (an instance's copy-on-write volume, a snapshot view).
pub struct BackendSource<'a> {
    pub volume: &'a mut dyn BlockBackend,
}

impl ChunkSource for BackendSource<'_> {
    fn size(&self) -> u64 {
        self.volume.size()
    }

    fn read_chunk(&mut self, index: u64, buf: &mut [u8]) -> Result<bool> {
        self.volume.read_at(buf, index * CHUNK_SIZE)?;
        Ok(true)
    }
}

/// Whether `buf` is all zeros.
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u128, and align_to keeps the slices in bounds.
        unsafe { buf.align_to::<u128>() }
    };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Which chunks to read from a source.
pub enum ChunkPlan<'p> {
    /// Every chunk.
    All,
    /// Only these chunk indices; the rest are taken from the parent's chunk list.
    Only {
        parent: &'p [ChunkEntry],
        dirty: &'p [u64],
    },
}

/// Read a source's chunks, store the non-zero ones in `txn`, and return the chunk list.
/// Chunks are hashed on all cores ([`pipeline::hasher_count`]); see [`super::pipeline`].
pub fn chunk_volume(
    txn: &mut Txn<'_>,
    src: &mut dyn ChunkSource,
    plan: ChunkPlan<'_>,
    progress: &dyn Progress,
) -> Result<Vec<ChunkEntry>> {
    chunk_volume_with(txn, src, plan, progress, pipeline::hasher_count())
}

/// [`chunk_volume`] with `hashers` hashing threads.
pub fn chunk_volume_with(
    txn: &mut Txn<'_>,
    src: &mut dyn ChunkSource,
    plan: ChunkPlan<'_>,
    progress: &dyn Progress,
    hashers: usize,
) -> Result<Vec<ChunkEntry>> {
    let size = src.size();
    let count = size.div_ceil(CHUNK_SIZE);
    let out = match plan {
        ChunkPlan::All => {
            progress.start("hashing", size);
            // Visit only the chunks the source says may hold data; count the skipped ones
            // as done.
            let mut i = 0;
            let found = pipeline::run(txn, src, hashers, |src| {
                let Some(next) = src.next_data(i)?.map(|n| n.max(i)).filter(|n| *n < count) else {
                    return Ok(None);
                };
                // Chunk `next` is read now; those before it were skipped.
                progress.advance((next - i) * CHUNK_SIZE + chunk_len(size, next));
                i = next + 1;
                Ok(Some(next))
            })?;
            progress.advance(size.saturating_sub(i.saturating_mul(CHUNK_SIZE)));
            found
                .into_iter()
                .filter_map(|(i, h)| h.map(|h| ChunkEntry(i, h)))
                .collect()
        }
        ChunkPlan::Only { parent, dirty } => {
            let mut dirty: Vec<u64> = dirty.iter().copied().filter(|i| *i < count).collect();
            dirty.sort_unstable();
            dirty.dedup();
            progress.start("hashing changed chunks", dirty.len() as u64 * CHUNK_SIZE);
            let mut todo = dirty.iter().copied();
            let fresh = pipeline::run(txn, src, hashers, |_| {
                let next = todo.next();
                if next.is_some() {
                    progress.advance(CHUNK_SIZE);
                }
                Ok(next)
            })?;
            let mut merged: std::collections::BTreeMap<u64, ContentHash> = parent
                .iter()
                .filter(|c| c.0 < count)
                .map(|c| (c.0, c.1))
                .collect();
            for (i, h) in fresh {
                match h {
                    Some(h) => merged.insert(i, h),
                    None => merged.remove(&i),
                };
            }
            merged.into_iter().map(|(i, h)| ChunkEntry(i, h)).collect()
        }
    };
    progress.finish();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        assert!(is_zero(&v[1..]));
        v[4098] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&v[..4098]));
        v[4098] = 0;
        v[17] = 9;
        assert!(!is_zero(&v[3..]));
    }

    #[test]
    fn raw_source_skips_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        let f = File::create(&p).unwrap();
        f.set_len(4 * CHUNK_SIZE).unwrap();
        f.write_all_at(b"hello", 2 * CHUNK_SIZE + 10).unwrap();
        drop(f);
        let mut src = RawSource::open(&p).unwrap();
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        // Whether chunk 0 reads as a hole depends on the file system; its content is zero
        // either way.
        if src.read_chunk(0, &mut buf).unwrap() {
            assert!(is_zero(&buf));
        }
        assert!(src.read_chunk(2, &mut buf).unwrap());
        assert_eq!(&buf[10..15], b"hello");
        // The walk jumps to the data (file systems without SEEK_DATA: every chunk may hold
        // data).
        let first = src.next_data(0).unwrap();
        assert!(first == Some(2) || first == Some(0), "{first:?}");
        assert_eq!(src.next_data(2).unwrap(), Some(2));
        let after = src.next_data(3).unwrap();
        assert!(after.is_none() || after == Some(3), "{after:?}");
        assert_eq!(src.next_data(4).unwrap(), None);
        let odd = dir.path().join("odd.raw");
        std::fs::write(&odd, b"abc").unwrap();
        assert!(RawSource::open(&odd).is_err());
    }
}
