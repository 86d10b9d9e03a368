//! A volume that is one plain file (or block device), read and written in place.

use super::lock::{lock, LockKind};
use super::vio;
use super::{check_range, BlockBackend, VolatileSlice, VolumeError};
use crate::files::{self, Mode};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A raw image file or block device. Opened read-only, it is never written: not even its
/// timestamps. While open it is locked (see [`super::lock`]): exclusively when writable, shared
/// when read-only.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    serial: String,
    label: String,
    /// Cleared the first time the file system refuses to punch a hole; discards then write zeros.
    punch_works: bool,
}

impl RawFile {
    /// Open `path`, read-only or read-write, and lock it. It must be a regular file or a block
    /// device (a FIFO or character device is refused before open(2) can block on it). The
    /// serial defaults to the file's name.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, VolumeError> {
        let label = path.display().to_string();
        let mode = if read_only {
            Mode::Read
        } else {
            Mode::ReadWrite
        };
        let file = files::open(path, "drive", files::DISK, mode)?;
        let kind = if read_only {
            LockKind::Shared
        } else {
            LockKind::Exclusive
        };
        lock(&file, &label, kind)?;
        let serial = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::from_file(file, read_only, serial, label)
    }

    /// Wrap an already open file. `label` names it in error messages.
    pub fn from_file(
        file: File,
        read_only: bool,
        serial: String,
        label: String,
    ) -> Result<Self, VolumeError> {
        let size = file_size(&file).map_err(|e| VolumeError::io(format!("size of {label}"), e))?;
        Ok(RawFile {
            file,
            size,
            read_only,
            serial,
            label,
            punch_works: true,
        })
    }

    /// Replace the serial reported to the guest.
    pub fn with_serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = serial.into();
        self
    }

    fn writable(&self) -> Result<(), VolumeError> {
        if self.read_only {
            Err(VolumeError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

/// Size of a regular file or of a block device (whose metadata length is 0).
fn file_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices report their size through lseek(SEEK_END).
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), VolumeError> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| VolumeError::io(format!("read {}", self.label), e))
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), VolumeError> {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.size)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| VolumeError::io(format!("write {}", self.label), e))
    }

    fn read_vectored_at(
        &mut self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), VolumeError> {
        check_range(offset, vio::total_len(bufs) as u64, self.size)?;
        vio::preadv_exact(&self.file, bufs, offset, &self.label)
    }

    fn write_vectored_at(
        &mut self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), VolumeError> {
        self.writable()?;
        check_range(offset, vio::total_len(bufs) as u64, self.size)?;
        vio::pwritev_all(&self.file, bufs, offset, &self.label)
    }

    fn flush(&mut self) -> Result<(), VolumeError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| VolumeError::io(format!("fdatasync {}", self.label), e))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        if self.punch_works && vio::punch_hole(&self.file, offset, len, &self.label)? {
            return Ok(());
        }
        self.punch_works = false;
        vio::write_zeros(&self.file, offset, len, &self.label)
    }

    fn can_discard(&self) -> bool {
        !self.read_only
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn serial(&self) -> String {
        self.serial.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn reads_writes_and_rejects_out_of_range() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let f = image(&data);
        let mut raw = RawFile::open(f.path(), false).unwrap();
        assert_eq!(raw.size(), 8192);
        let mut buf = [0u8; 100];
        raw.read_at(&mut buf, 1000).unwrap();
        assert_eq!(&buf[..], &data[1000..1100]);
        raw.write_at(&[7u8; 10], 8182).unwrap();
        assert!(matches!(
            raw.write_at(&[7u8; 11], 8182),
            Err(VolumeError::OutOfRange { .. })
        ));
        assert!(raw.read_at(&mut buf, u64::MAX - 5).is_err());
        raw.flush().unwrap();
        assert_eq!(&std::fs::read(f.path()).unwrap()[8182..], &[7u8; 10]);
    }

    #[test]
    fn vectored_io_moves_bytes_to_and_from_memory() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 256) as u8).collect();
        let f = image(&data);
        let mut raw = RawFile::open(f.path(), false).unwrap();
        let mut a = vec![0u8; 1000];
        let mut b = vec![0u8; 3096];
        {
            let bufs = [
                VolatileSlice::from(&mut a[..]),
                VolatileSlice::from(&mut b[..]),
            ];
            raw.read_vectored_at(&bufs, 512).unwrap();
        }
        assert_eq!(&a[..], &data[512..1512]);
        assert_eq!(&b[..], &data[1512..4608]);
        let mut w = vec![0xabu8; 4096];
        raw.write_vectored_at(&[VolatileSlice::from(&mut w[..])], 4096)
            .unwrap();
        assert_eq!(&std::fs::read(f.path()).unwrap()[4096..], &w[..]);
    }

    #[test]
    fn read_only_file_refuses_writes_and_discards() {
        let f = image(&[1u8; 4096]);
        let mut raw = RawFile::open(f.path(), true).unwrap();
        assert!(raw.read_only());
        assert!(!raw.can_discard());
        assert!(matches!(raw.write_at(&[0], 0), Err(VolumeError::ReadOnly)));
        assert!(matches!(raw.discard(0, 512), Err(VolumeError::ReadOnly)));
        assert_eq!(std::fs::read(f.path()).unwrap(), vec![1u8; 4096]);
    }

    #[test]
    fn discard_reads_back_as_zeros_and_keeps_the_size() {
        let f = image(&[0x5au8; 64 * 1024]);
        let mut raw = RawFile::open(f.path(), false).unwrap();
        assert!(raw.can_discard());
        raw.discard(4096, 8192).unwrap();
        raw.discard(20000, 100).unwrap();
        let back = std::fs::read(f.path()).unwrap();
        assert_eq!(back.len(), 64 * 1024);
        assert!(back[4096..12288].iter().all(|&b| b == 0));
        assert!(back[20000..20100].iter().all(|&b| b == 0));
        assert_eq!(back[4095], 0x5a);
        assert_eq!(back[12288], 0x5a);
        assert_eq!(back[20100], 0x5a);
    }
}
