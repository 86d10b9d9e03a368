//! The one way disk analysis reads bytes: [`ReadAt`], positioned reads of a fixed-size disk,
//! and the adapters the partition-table and ext4 crates need on top of it.

use super::DiskError;
use std::io::{Read, Seek, SeekFrom};
use std::rc::Rc;

/// A disk (or a part of one) that can be read at any offset. Reads never change it.
pub trait ReadAt {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`; an error if that reaches past [`ReadAt::size`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

/// The error for a read past the end.
fn past_end(offset: u64, len: usize, size: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset} is past the end ({size} bytes)"),
    )
}

/// Whether `[offset, offset+len)` lies within `size` bytes.
fn in_bounds(offset: u64, len: usize, size: u64) -> bool {
    offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= size)
}

/// An in-memory disk (unit tests, small images).
impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if !in_bounds(offset, buf.len(), self.size()) {
            return Err(past_end(offset, buf.len(), self.size()));
        }
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// A raw disk image file.
#[derive(Debug)]
pub struct FileDisk {
    file: std::fs::File,
    size: u64,
}

impl FileDisk {
    pub fn open(path: &std::path::Path) -> std::io::Result<FileDisk> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileDisk { file, size })
    }
}

impl ReadAt for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if !in_bounds(offset, buf.len(), self.size) {
            return Err(past_end(offset, buf.len(), self.size));
        }
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
}

/// `len` bytes of a disk from `start`: a partition.
#[derive(Clone)]
pub struct Window {
    disk: Rc<dyn ReadAt>,
    start: u64,
    len: u64,
}

impl Window {
    /// The window must lie inside the disk (the partition table checks it first).
    pub fn new(disk: Rc<dyn ReadAt>, start: u64, len: u64) -> Window {
        Window { disk, start, len }
    }
}

impl ReadAt for Window {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if !in_bounds(offset, buf.len(), self.len) {
            return Err(past_end(offset, buf.len(), self.len));
        }
        self.disk.read_exact_at(buf, self.start + offset)
    }
}

/// ext4-view reads the file system through this.
impl ext4_view::Ext4Read for Window {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(ReadAt::read_exact_at(self, dst, start_byte)?)
    }
}

/// A `Read + Seek` view of a disk for the partition-table crates, which read with streams.
/// It stops with an error after `budget` bytes, so a crafted table (a long chain of MBR
/// extended boot records) cannot make them read, or keep, without bound.
pub struct Cursor<'d> {
    disk: &'d dyn ReadAt,
    pos: u64,
    budget: u64,
    exhausted: bool,
}

impl<'d> Cursor<'d> {
    pub fn new(disk: &'d dyn ReadAt, budget: u64) -> Cursor<'d> {
        Cursor {
            disk,
            pos: 0,
            budget,
            exhausted: false,
        }
    }

    /// Whether a read was refused for the budget (the crates report their own, vaguer
    /// error, e.g. "deserialization failed").
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.disk.size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n as u64 > self.budget {
            self.exhausted = true;
            return Err(std::io::Error::other(DiskError::TABLE_TOO_LARGE));
        }
        self.disk.read_exact_at(&mut buf[..n], self.pos)?;
        self.budget -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range");
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.disk.size().checked_add_signed(d).ok_or_else(bad)?,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(bad)?,
        };
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_inside() {
        let disk: Rc<dyn ReadAt> = Rc::new((0u8..=255).collect::<Vec<u8>>());
        let w = Window::new(disk, 16, 32);
        let mut b = [0u8; 4];
        w.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [16, 17, 18, 19]);
        w.read_exact_at(&mut b, 28).unwrap();
        assert_eq!(b, [44, 45, 46, 47]);
        assert!(w.read_exact_at(&mut b, 29).is_err());
        assert!(w.read_exact_at(&mut b, u64::MAX - 1).is_err());
    }

    #[test]
    fn cursor_reads_to_the_end_and_keeps_to_its_budget() {
        let disk = vec![7u8; 100];
        let mut c = Cursor::new(&disk, 1000);
        c.seek(SeekFrom::End(-10)).unwrap();
        let mut buf = Vec::new();
        assert_eq!(c.read_to_end(&mut buf).unwrap(), 10);
        let mut small = Cursor::new(&disk, 50);
        let mut b = [0u8; 40];
        small.read_exact(&mut b).unwrap();
        assert!(!small.exhausted());
        let e = small.read_exact(&mut b).unwrap_err();
        assert!(e.to_string().contains("partition table"), "{e}");
        assert!(small.exhausted());
        assert!(small.seek(SeekFrom::Current(-1000)).is_err());
    }
}
