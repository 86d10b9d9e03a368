//! Copy-on-write overlay: a read-only base volume plus a sparse overlay file that holds every
//! block the guest wrote, at 4 KiB granularity.
//!
//! Reads take each block from the overlay when its dirty bit is set, else from the base. A write
//! covering a whole block goes straight to the overlay; a partial write to a clean block first
//! copies the block from the base (read-modify-write). A discard marks whole blocks dirty and
//! punches them out of the overlay, so they read back as zeros.
//!
//! Durability ([`BlockBackend::flush`]): the overlay's data is synced first, then the bitmap
//! pages that changed are written in place and synced. After a crash the volume therefore holds
//! everything written before the last completed flush, and a block whose bit is set always holds
//! data the guest wrote (see [`super::bitmap`] for why a torn bitmap page is harmless). The base
//! is never written: the overlay only ever calls its read methods.
//!
//! The on-disk format is described in [`super::bitmap`].

use super::bitmap::{align_up, DirtyBitmap, Header, BLOCK_SIZE, HEADER_LEN, MAX_IDENTITY_LEN};
use super::lock::{lock, LockKind};
use super::vio;
use super::{check_range, BlockBackend, VolatileSlice, VolumeError};
use crate::files::{self, Mode};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// A base volume seen through a writable overlay file.
pub struct CowOverlay {
    base: Box<dyn BlockBackend>,
    file: File,
    label: String,
    header: Header,
    bitmap: DirtyBitmap,
    /// Data was written to the overlay since the last sync.
    data_unsynced: bool,
    read_only: bool,
    /// The overlay file is open for writing (and locked); else the volume is always read-only.
    writable: bool,
    serial: String,
    /// Cleared the first time the file system refuses to punch a hole; discards then write zeros.
    punch_works: bool,
    /// Tests: drop without the final flush, as a crash would.
    #[cfg(test)]
    crashed: bool,
}

impl std::fmt::Debug for CowOverlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CowOverlay")
            .field("overlay", &self.label)
            .field("base_size", &self.header.base_size)
            .field("dirty_blocks", &self.bitmap.count_dirty())
            .finish()
    }
}

impl CowOverlay {
    /// Open the overlay at `overlay_path` over `base` for writing, creating it if it does not
    /// exist, and lock it exclusively (see [`super::lock`]): a second VM, or a second drive,
    /// on the same overlay is refused with [`VolumeError::InUse`].
    ///
    /// `base_identity` names the base (an image file's canonical path, a snapshot id): an
    /// existing overlay is accepted only if it was made for a base of the same size and identity.
    /// The base is only ever read.
    pub fn open(
        base: Box<dyn BlockBackend>,
        overlay_path: &Path,
        base_identity: &str,
    ) -> Result<Self, VolumeError> {
        Self::open_as(base, overlay_path, base_identity, true)
    }

    /// Create the overlay file of a new volume over a base of `base_size` bytes known as
    /// `base_identity`, without the base at hand (nothing is read from it): [`CowOverlay::open`]
    /// checks both against the real base later. An overlay already there is kept.
    pub fn create_new(
        overlay_path: &Path,
        base_size: u64,
        base_identity: &str,
    ) -> Result<(), VolumeError> {
        if base_identity.len() > MAX_IDENTITY_LEN {
            return Err(VolumeError::BadOverlay {
                path: overlay_path.display().to_string(),
                why: format!("base identity longer than {MAX_IDENTITY_LEN} bytes"),
            });
        }
        create(overlay_path, &Header::for_base(base_size, base_identity))
    }

    /// Open the overlay read-only (creating it if it does not exist), without a lock: readers
    /// may look at an overlay a running VM writes (`create-image --no-reboot` images what it has
    /// flushed). The guest gets a read-only drive.
    pub fn open_read_only(
        base: Box<dyn BlockBackend>,
        overlay_path: &Path,
        base_identity: &str,
    ) -> Result<Self, VolumeError> {
        Self::open_as(base, overlay_path, base_identity, false)
    }

    fn open_as(
        base: Box<dyn BlockBackend>,
        overlay_path: &Path,
        base_identity: &str,
        writable: bool,
    ) -> Result<Self, VolumeError> {
        let label = overlay_path.display().to_string();
        let bad = |why: String| VolumeError::BadOverlay {
            path: label.clone(),
            why,
        };
        if base_identity.len() > MAX_IDENTITY_LEN {
            return Err(bad(format!(
                "base identity longer than {MAX_IDENTITY_LEN} bytes"
            )));
        }
        let base_size = base.size();
        let mode = if writable {
            Mode::ReadWrite
        } else {
            Mode::Read
        };
        let file = match files::open(overlay_path, "overlay", files::REGULAR, mode) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => {
                create(overlay_path, &Header::for_base(base_size, base_identity))?;
                files::open(overlay_path, "overlay", files::REGULAR, mode)?
            }
            Err(e) => return Err(e.into()),
        };
        if writable {
            lock(&file, &label, LockKind::Exclusive)?;
        }
        let len = file
            .metadata()
            .map_err(|e| VolumeError::io(format!("stat {label}"), e))?
            .len();
        if len < HEADER_LEN {
            return Err(bad("too short to be an overlay".into()));
        }
        let mut page = vec![0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut page, 0)
            .map_err(|e| VolumeError::io(format!("read header of {label}"), e))?;
        let header = Header::decode(&page).map_err(bad)?;
        if header.base_size != base_size {
            return Err(bad(format!(
                "made for a base of {} bytes, this base has {base_size}",
                header.base_size
            )));
        }
        if header.identity != base_identity {
            return Err(bad(format!(
                "made for base {:?}, not {base_identity:?}",
                header.identity
            )));
        }
        if len < header.data_offset + align_up(base_size, BLOCK_SIZE) {
            return Err(bad("truncated".into()));
        }
        let mut bits = vec![0u8; header.bitmap_len as usize];
        file.read_exact_at(&mut bits, header.bitmap_offset)
            .map_err(|e| VolumeError::io(format!("read bitmap of {label}"), e))?;
        let bitmap = DirtyBitmap::from_bytes(bits, base_size.div_ceil(BLOCK_SIZE));
        let serial = base.serial();
        Ok(CowOverlay {
            base,
            file,
            label,
            header,
            bitmap,
            data_unsynced: false,
            read_only: !writable,
            writable,
            serial,
            punch_works: true,
            #[cfg(test)]
            crashed: false,
        })
    }

    /// Refuse guest writes (the overlay is still read for blocks written earlier). An overlay
    /// opened with [`CowOverlay::open_read_only`] stays read-only.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only || !self.writable;
        self
    }

    /// Replace the serial reported to the guest (default: the base's).
    pub fn with_serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = serial.into();
        self
    }

    /// Close the overlay without its final flush, as a crash leaves it (tests only).
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        self.crashed = true;
    }

    /// Size of one overlay block: the granularity of [`CowOverlay::dirty_blocks`].
    pub const fn block_size() -> u64 {
        BLOCK_SIZE
    }

    /// Indices of the blocks the overlay holds (written or discarded since it was created), in
    /// increasing order: what an incremental snapshot must copy.
    pub fn dirty_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.bitmap.iter_dirty()
    }

    /// How many blocks the overlay holds.
    pub fn dirty_count(&self) -> u64 {
        self.bitmap.count_dirty()
    }

    /// The base identity recorded in the overlay's header.
    pub fn base_identity(&self) -> &str {
        &self.header.identity
    }

    fn writable(&self) -> Result<(), VolumeError> {
        if self.read_only {
            Err(VolumeError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// End of the block that holds `pos` (the volume's end for the last, partial block).
    fn block_end(&self, pos: u64) -> u64 {
        ((pos / BLOCK_SIZE + 1) * BLOCK_SIZE).min(self.header.base_size)
    }

    /// The whole blocks from `pos` (block aligned) up to `end`: their end, or `pos` if none.
    fn full_blocks_end(&self, pos: u64, end: u64) -> u64 {
        if !pos.is_multiple_of(BLOCK_SIZE) {
            return pos;
        }
        if end >= self.header.base_size {
            self.header.base_size
        } else {
            end / BLOCK_SIZE * BLOCK_SIZE
        }
    }

    fn mark(&mut self, start: u64, end: u64) {
        for b in start / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE) {
            self.bitmap.set(b);
        }
    }

    /// Write `[pos, seg_end)` (inside one block) from `src`: straight into a dirty block, or by
    /// read-modify-write of the base block into a clean one.
    fn write_partial(
        &mut self,
        src: &[VolatileSlice<'_>],
        pos: u64,
        seg_end: u64,
    ) -> Result<(), VolumeError> {
        let block = pos / BLOCK_SIZE;
        if self.bitmap.get(block) {
            return vio::pwritev_all(&self.file, src, self.header.data_offset + pos, &self.label);
        }
        let bstart = block * BLOCK_SIZE;
        let bend = self.block_end(pos);
        let mut tmp = vec![0u8; (bend - bstart) as usize];
        self.base.read_at(&mut tmp, bstart)?;
        let mut at = (pos - bstart) as usize;
        for s in src {
            s.copy_to(&mut tmp[at..at + s.len()]);
            at += s.len();
        }
        debug_assert_eq!(at as u64, seg_end - bstart);
        self.file
            .write_all_at(&tmp, self.header.data_offset + bstart)
            .map_err(|e| VolumeError::io(format!("write {}", self.label), e))?;
        self.bitmap.set(block);
        Ok(())
    }
}

/// Make a new overlay file atomically: write it under a temporary name, sync, rename, sync the
/// directory. A crash leaves either no overlay or a complete empty one. The rename never
/// replaces a file: when two processes create the same overlay at once, both go on to open the
/// one that got there first (and its lock lets only one of them use it).
fn create(path: &Path, header: &Header) -> Result<(), VolumeError> {
    let label = path.display().to_string();
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let io = |what: &str, e| VolumeError::io(format!("{what} {label}"), e);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    let result = (|| {
        f.write_all_at(&header.encode(), 0)
            .map_err(|e| io("write header of", e))?;
        f.set_len(header.data_offset + align_up(header.base_size, BLOCK_SIZE))
            .map_err(|e| io("size", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        match rename_noreplace(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&tmp);
                return Ok(());
            }
            r => r.map_err(|e| io("rename into place", e))?,
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync directory of", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// rename(2) that fails with `AlreadyExists` instead of replacing `to` (renameat2
/// RENAME_NOREPLACE). On a file system without it, a plain rename.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both paths are valid NUL-terminated strings that live across the call; AT_FDCWD
    // makes them relative to the working directory like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => std::fs::rename(from, to),
        _ => Err(err),
    }
}

impl BlockBackend for CowOverlay {
    fn size(&self) -> u64 {
        self.header.base_size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), VolumeError> {
        self.read_vectored_at(&[VolatileSlice::from(buf)], offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), VolumeError> {
        let mut copy = buf.to_vec();
        self.write_vectored_at(&[VolatileSlice::from(&mut copy[..])], offset)
    }

    fn read_vectored_at(
        &mut self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), VolumeError> {
        let total = vio::total_len(bufs) as u64;
        check_range(offset, total, self.size())?;
        let end = offset + total;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let max = end.div_ceil(BLOCK_SIZE) - block;
            let (dirty, n) = self.bitmap.run(block, max);
            let run_end = ((block + n) * BLOCK_SIZE).min(end);
            let sub_store;
            let sub = if pos == offset && run_end == end {
                // One run covers the whole request (the usual case): no re-slicing.
                bufs
            } else {
                sub_store = vio::sub_bufs(bufs, (pos - offset) as usize, (run_end - pos) as usize)?;
                &sub_store[..]
            };
            if dirty {
                vio::preadv_exact(&self.file, sub, self.header.data_offset + pos, &self.label)?;
            } else {
                self.base.read_vectored_at(sub, pos)?;
            }
            pos = run_end;
        }
        Ok(())
    }

    fn write_vectored_at(
        &mut self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), VolumeError> {
        self.writable()?;
        let total = vio::total_len(bufs) as u64;
        check_range(offset, total, self.size())?;
        let end = offset + total;
        let mut pos = offset;
        while pos < end {
            self.data_unsynced = true;
            let full_end = self.full_blocks_end(pos, end);
            if full_end > pos {
                let sub = vio::sub_bufs(bufs, (pos - offset) as usize, (full_end - pos) as usize)?;
                vio::pwritev_all(&self.file, &sub, self.header.data_offset + pos, &self.label)?;
                self.mark(pos, full_end);
                pos = full_end;
            } else {
                let seg_end = self.block_end(pos).min(end);
                let sub = vio::sub_bufs(bufs, (pos - offset) as usize, (seg_end - pos) as usize)?;
                self.write_partial(&sub, pos, seg_end)?;
                pos = seg_end;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), VolumeError> {
        if self.data_unsynced {
            self.file
                .sync_data()
                .map_err(|e| VolumeError::io(format!("fdatasync {}", self.label), e))?;
            self.data_unsynced = false;
        }
        if self.bitmap.has_changes() {
            for (off, bytes) in self.bitmap.changed_pages() {
                self.file
                    .write_all_at(bytes, self.header.bitmap_offset + off as u64)
                    .map_err(|e| VolumeError::io(format!("write bitmap of {}", self.label), e))?;
            }
            self.file
                .sync_data()
                .map_err(|e| VolumeError::io(format!("fdatasync {}", self.label), e))?;
            self.bitmap.mark_written();
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.writable()?;
        check_range(offset, len, self.size())?;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            self.data_unsynced = true;
            let full_end = self.full_blocks_end(pos, end);
            if full_end > pos {
                let at = self.header.data_offset + pos;
                let n = full_end - pos;
                if !(self.punch_works && vio::punch_hole(&self.file, at, n, &self.label)?) {
                    self.punch_works = false;
                    vio::write_zeros(&self.file, at, n, &self.label)?;
                }
                self.mark(pos, full_end);
                pos = full_end;
            } else {
                let seg_end = self.block_end(pos).min(end);
                let mut zeros = vec![0u8; (seg_end - pos) as usize];
                self.write_partial(&[VolatileSlice::from(&mut zeros[..])], pos, seg_end)?;
                pos = seg_end;
            }
        }
        Ok(())
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

impl Drop for CowOverlay {
    /// A clean shutdown keeps every write, as if the guest had flushed.
    fn drop(&mut self) {
        #[cfg(test)]
        if self.crashed {
            return;
        }
        if let Err(e) = self.flush() {
            log::warn!("overlay {}: final flush failed: {e}", self.label);
        }
    }
}

#[cfg(test)]
#[path = "cow_tests.rs"]
mod tests;
