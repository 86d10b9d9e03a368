//! Positional, vectored I/O between files and guest memory ([`VolatileSlice`]s).
//!
//! Guest memory is never turned into a Rust reference: the kernel reads or writes it directly
//! through `preadv(2)` / `pwritev(2)` on the slices' raw pointers.

use super::{VolatileSlice, VolumeError};
use std::fs::File;
use std::os::fd::AsRawFd;

/// Most iovecs one `preadv`/`pwritev` call accepts (Linux `UIO_MAXIOV`, include/uapi/linux/uio.h).
const IOV_MAX: usize = 1024;

/// `len` bytes of `buf` from `start`, as a slice of its own.
pub(crate) fn subslice<'a>(
    buf: &VolatileSlice<'a>,
    start: usize,
    len: usize,
) -> Result<VolatileSlice<'a>, VolumeError> {
    buf.subslice(start, len)
        .map_err(|e| VolumeError::GuestBuffer(e.to_string()))
}

/// The bytes `[start, start+len)` of the concatenation of `bufs`, as a list of slices.
pub(crate) fn sub_bufs<'a>(
    bufs: &[VolatileSlice<'a>],
    start: usize,
    len: usize,
) -> Result<Vec<VolatileSlice<'a>>, VolumeError> {
    let mut out = Vec::new();
    let mut skip = start;
    let mut want = len;
    for b in bufs {
        if want == 0 {
            break;
        }
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let n = (b.len() - skip).min(want);
        out.push(subslice(b, skip, n)?);
        skip = 0;
        want -= n;
    }
    if want != 0 {
        return Err(VolumeError::GuestBuffer(format!(
            "range {start}+{len} is beyond the buffers"
        )));
    }
    Ok(out)
}

/// Total length of `bufs` in bytes.
pub(crate) fn total_len(bufs: &[VolatileSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Which way a vectored call moves bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// File to memory (`preadv`).
    Read,
    /// Memory to file (`pwritev`).
    Write,
}

/// Fill all of `bufs` from `file` at `offset`; end of file before that is an error.
pub(crate) fn preadv_exact(
    file: &File,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
    what: &str,
) -> Result<(), VolumeError> {
    vectored(file, bufs, offset, what, Dir::Read)
}

/// Write all of `bufs` to `file` at `offset`.
pub(crate) fn pwritev_all(
    file: &File,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
    what: &str,
) -> Result<(), VolumeError> {
    vectored(file, bufs, offset, what, Dir::Write)
}

/// `offset` as an `off_t` for the positioned I/O calls.
fn file_pos(offset: u64, what: &str) -> Result<libc::off_t, VolumeError> {
    libc::off_t::try_from(offset).map_err(|_| {
        VolumeError::io(
            what,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset too large"),
        )
    })
}

/// The result of one `pread(v)`/`pwrite(v)`: bytes moved, `None` to retry after EINTR, or the
/// error (a zero-byte transfer is end of file / a write that cannot proceed).
fn transferred(n: isize, what: &str, dir: Dir) -> Result<Option<usize>, VolumeError> {
    if n < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(VolumeError::io(what, err));
    }
    if n == 0 {
        let kind = match dir {
            Dir::Read => std::io::ErrorKind::UnexpectedEof,
            Dir::Write => std::io::ErrorKind::WriteZero,
        };
        return Err(VolumeError::io(
            what,
            std::io::Error::new(kind, "short transfer"),
        ));
    }
    Ok(Some(n as usize))
}

fn vectored(
    file: &File,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
    what: &str,
    dir: Dir,
) -> Result<(), VolumeError> {
    if let [one] = bufs {
        return single(file, one, offset, what, dir);
    }
    let mut pending: Vec<VolatileSlice<'_>> =
        bufs.iter().filter(|b| !b.is_empty()).copied().collect();
    let mut idx = 0;
    let mut off = offset;
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(pending.len().min(IOV_MAX));
    while idx < pending.len() {
        let pos = file_pos(off, what)?;
        let batch = &pending[idx..pending.len().min(idx + IOV_MAX)];
        iov.clear();
        for b in batch {
            iov.push(libc::iovec {
                iov_base: b.ptr_guard_mut().as_ptr().cast::<libc::c_void>(),
                iov_len: b.len(),
            });
        }
        let n = match dir {
            // SAFETY: every iovec points at a live VolatileSlice of guest memory (mmap-backed, so
            // its pointer guard is a plain pointer that stays valid while `bufs` borrows the
            // memory) and is exactly that slice's length; the kernel writes only inside them.
            Dir::Read => unsafe {
                libc::preadv(
                    file.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                    pos,
                )
            },
            // SAFETY: as above; the kernel only reads the slices.
            Dir::Write => unsafe {
                libc::pwritev(
                    file.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                    pos,
                )
            },
        };
        let Some(mut n) = transferred(n, what, dir)? else {
            continue;
        };
        off += n as u64;
        while n > 0 && idx < pending.len() {
            let len = pending[idx].len();
            if n >= len {
                n -= len;
                idx += 1;
            } else {
                pending[idx] = subslice(&pending[idx], n, len - n)?;
                n = 0;
            }
        }
    }
    Ok(())
}

/// The common case of one buffer: plain `pread`/`pwrite`, no iovec array.
fn single(
    file: &File,
    buf: &VolatileSlice<'_>,
    offset: u64,
    what: &str,
    dir: Dir,
) -> Result<(), VolumeError> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = file_pos(offset.saturating_add(done as u64), what)?;
        let rest = subslice(buf, done, buf.len() - done)?;
        let ptr = rest.ptr_guard_mut().as_ptr().cast::<libc::c_void>();
        let n = match dir {
            // SAFETY: `ptr` points at `rest.len()` bytes of live guest memory (an mmap-backed
            // VolatileSlice borrowed for this call); the kernel writes only inside it.
            Dir::Read => unsafe { libc::pread(file.as_raw_fd(), ptr, rest.len(), pos) },
            // SAFETY: as above; the kernel only reads it.
            Dir::Write => unsafe { libc::pwrite(file.as_raw_fd(), ptr, rest.len(), pos) },
        };
        let Some(n) = transferred(n, what, dir)? else {
            continue;
        };
        done += n;
    }
    Ok(())
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: drop the blocks of `[offset, offset+len)` so they read
/// back as zeros. Returns `Ok(false)` when the file system cannot punch holes.
pub(crate) fn punch_hole(
    file: &File,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<bool, VolumeError> {
    if len == 0 {
        return Ok(true);
    }
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(VolumeError::OutOfRange {
            offset,
            len,
            size: i64::MAX as u64,
        });
    };
    loop {
        // SAFETY: fallocate on an owned, open file descriptor; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV) => return Ok(false),
            _ => return Err(VolumeError::io(what, err)),
        }
    }
}

/// Write `len` zero bytes at `offset` (the fallback when holes cannot be punched).
pub(crate) fn write_zeros(
    file: &File,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; super::BOUNCE_LEN];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)
            .map_err(|e| VolumeError::io(what, e))?;
        done += n as u64;
    }
    Ok(())
}
