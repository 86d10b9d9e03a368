//! File locks that keep two VMs from writing one volume file.
//!
//! A file a VM writes (a raw drive opened read-write, a copy-on-write overlay) is locked
//! exclusively with flock(2) for as long as it is open, that is for the life of the VM; a raw
//! drive opened read-only (also the base under an overlay) takes a shared lock. So any number
//! of VMs may read one base image, but a second writer, or a writer and a reader, are refused
//! with [`VolumeError::InUse`] instead of silently losing each other's writes. The kernel drops
//! the lock when the descriptor is closed, however the process ends. Locks are advisory: they
//! bind amivm processes (and other flock users), not every program.

use super::VolumeError;
use std::fs::File;
use std::os::fd::AsRawFd;

/// Which lock to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Readers: many at once, no writer.
    Shared,
    /// A writer: alone.
    Exclusive,
}

/// Take the lock on `file` (named `label` in errors) without waiting. A file system without
/// flock support (ENOLCK, EOPNOTSUPP) is used unlocked, with a warning.
pub fn lock(file: &File, label: &str, kind: LockKind) -> Result<(), VolumeError> {
    let op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::Exclusive => libc::LOCK_EX,
    };
    loop {
        // SAFETY: flock only reads its two integer arguments; the descriptor is owned by `file`,
        // which lives across the call.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(VolumeError::InUse {
                    path: label.to_string(),
                    writing: kind == LockKind::Exclusive,
                })
            }
            Some(libc::ENOLCK | libc::EOPNOTSUPP) => {
                log::warn!("{label}: the file system cannot lock it ({err}); using it unlocked");
                return Ok(());
            }
            _ => return Err(VolumeError::io(format!("flock {label}"), err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flock locks belong to open file descriptions, so two opens in one process conflict just
    /// as two processes do.
    #[test]
    fn one_writer_or_many_readers() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let open = || File::open(f.path()).unwrap();
        let (r1, r2) = (open(), open());
        lock(&r1, "f", LockKind::Shared).unwrap();
        lock(&r2, "f", LockKind::Shared).unwrap();
        let w = open();
        let e = lock(&w, "f", LockKind::Exclusive).unwrap_err();
        assert!(matches!(e, VolumeError::InUse { writing: true, .. }), "{e}");
        drop((r1, r2));
        lock(&w, "f", LockKind::Exclusive).unwrap();
        let e = lock(&open(), "f", LockKind::Shared).unwrap_err();
        assert!(
            matches!(e, VolumeError::InUse { writing: false, .. }),
            "{e}"
        );
        assert!(lock(&open(), "f", LockKind::Exclusive).is_err());
        drop(w);
        lock(&open(), "f", LockKind::Exclusive).unwrap();
    }
}
