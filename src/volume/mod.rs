//! Block storage behind a virtio-blk device.
//!
//! [`BlockBackend`] is the one interface between the device model and whatever holds the
//! bytes: a raw file, a copy-on-write overlay over a read-only base, or (from the image store)
//! a view over a content-addressed snapshot. The device never knows which.

pub mod bitmap;
pub mod cow;
pub mod drive;
pub mod lock;
pub mod raw;
mod vio;

pub use cow::CowOverlay;
pub use drive::DriveSpec;
pub use raw::RawFile;
pub use vm_memory::VolatileSlice;

use thiserror::Error;

/// Mode of the files amivm creates that hold guest data (overlays, console logs, the image
/// store's chunks): owner read/write only, whatever the umask, so other Unix users cannot read
/// an instance's disk or console.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Size of the bounce buffer the default [`BlockBackend::read_vectored_at`] and
/// [`BlockBackend::write_vectored_at`] copy through (a tuning choice, not a format).
const BOUNCE_LEN: usize = 64 * 1024;

/// Errors from a block backend.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// An I/O call on a backing file failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The request reaches beyond the end of the volume.
    #[error("access at offset {offset} length {len} is beyond the volume size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A write or discard on a read-only volume.
    #[error("volume is read-only")]
    ReadOnly,
    /// The overlay's metadata is damaged or does not match its base.
    #[error("overlay {path}: {why}")]
    BadOverlay { path: String, why: String },
    /// The file is not a kind a volume can be, or cannot be opened.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// Another VM (or another drive of this one) holds the file's lock.
    #[error("{}", in_use_message(path, *writing))]
    InUse { path: String, writing: bool },
    /// A guest buffer handed to a vectored call could not be sliced (a caller bug, not guest input).
    #[error("guest buffer: {0}")]
    GuestBuffer(String),
}

fn in_use_message(path: &str, writing: bool) -> String {
    if writing {
        format!("{path} is in use by another VM or drive (a file a VM writes is locked for that VM alone)")
    } else {
        format!("{path} is locked for writing by another VM or drive")
    }
}

impl VolumeError {
    /// Wrap an I/O error with the step that failed.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        VolumeError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Check that `[offset, offset+len)` lies inside a volume of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), VolumeError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(VolumeError::OutOfRange { offset, len, size }),
    }
}

/// Byte-addressed block storage. Offsets and lengths are in bytes; callers (the virtio-blk
/// device) keep them sector-aligned.
pub trait BlockBackend: Send {
    /// Size of the volume in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), VolumeError>;
    /// Write `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), VolumeError>;
    /// Make every completed write durable.
    fn flush(&mut self) -> Result<(), VolumeError>;
    /// Drop the data in the range: it reads back as zeros afterwards.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), VolumeError>;
    /// Whether [`BlockBackend::discard`] is supported (advertised as DISCARD / WRITE_ZEROES).
    fn can_discard(&self) -> bool {
        false
    }
    /// Whether the guest may write.
    fn read_only(&self) -> bool;
    /// A stable identifier reported to the guest by VIRTIO_BLK_T_GET_ID (at most 20 bytes used).
    fn serial(&self) -> String;

    /// Fill the guest buffers `bufs`, one after the other, from `offset`.
    ///
    /// Guest memory may change under us at any time, so it is only ever touched through
    /// [`VolatileSlice`] copies or system calls. The default copies through a bounce buffer with
    /// [`BlockBackend::read_at`]; file-backed volumes override it to `preadv` straight into guest
    /// memory.
    fn read_vectored_at(
        &mut self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), VolumeError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(offset, total as u64, self.size())?;
        let mut tmp = vec![0u8; BOUNCE_LEN.min(total)];
        let mut off = offset;
        for buf in bufs {
            let mut done = 0;
            while done < buf.len() {
                let n = (buf.len() - done).min(tmp.len());
                self.read_at(&mut tmp[..n], off)?;
                vio::subslice(buf, done, n)?.copy_from(&tmp[..n]);
                done += n;
                off += n as u64;
            }
        }
        Ok(())
    }

    /// Write the guest buffers `bufs`, one after the other, at `offset`. The default copies
    /// through a bounce buffer with [`BlockBackend::write_at`].
    fn write_vectored_at(
        &mut self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), VolumeError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(offset, total as u64, self.size())?;
        let mut tmp = vec![0u8; BOUNCE_LEN.min(total)];
        let mut off = offset;
        for buf in bufs {
            let mut done = 0;
            while done < buf.len() {
                let n = (buf.len() - done).min(tmp.len());
                vio::subslice(buf, done, n)?.copy_to(&mut tmp[..n]);
                self.write_at(&tmp[..n], off)?;
                done += n;
                off += n as u64;
            }
        }
        Ok(())
    }
}
