//! Block storage behind a virtio-blk device.
//!
//! [`BlockBackend`] is the one interface between the device model and whatever holds the
//! bytes: a raw file, a copy-on-write overlay over a read-only base, or (from the image store)
//! a view over a content-addressed snapshot. The device never knows which.

use thiserror::Error;

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
}
