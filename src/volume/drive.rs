//! A drive as the user asked for it (`--drive path=FILE[,ro][,overlay=FILE][,id=NAME]`), and
//! how it becomes a [`BlockBackend`].

use super::{BlockBackend, CowOverlay, RawFile, VolumeError};
use std::path::PathBuf;

/// One `--drive` argument, parsed but not yet opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// The image file. With an overlay it is opened read-only.
    pub path: PathBuf,
    /// The guest may not write (BLK_F_RO; writes get IOERR).
    pub read_only: bool,
    /// Copy-on-write overlay file, created if missing.
    pub overlay: Option<PathBuf>,
    /// Serial reported to the guest (VIRTIO_BLK_T_GET_ID); default: the image's file name.
    pub id: Option<String>,
}

impl DriveSpec {
    /// Open the files: the image itself (read-write unless `ro`), or the image read-only under
    /// its overlay. The overlay records the image's canonical path and size as its base identity.
    /// A file opened for writing is locked for this drive alone (see [`super::lock`]); an
    /// overlay with `ro` is opened read-only and unlocked, like the base.
    pub fn open(&self) -> Result<Box<dyn BlockBackend>, VolumeError> {
        match &self.overlay {
            None => {
                let mut raw = RawFile::open(&self.path, self.read_only)?;
                if let Some(id) = &self.id {
                    raw = raw.with_serial(id.clone());
                }
                Ok(Box::new(raw))
            }
            Some(overlay) => {
                let base = RawFile::open(&self.path, true)?;
                let identity = std::fs::canonicalize(&self.path)
                    .map_err(|e| VolumeError::io(format!("resolve {}", self.path.display()), e))?
                    .display()
                    .to_string();
                let mut cow = if self.read_only {
                    CowOverlay::open_read_only(Box::new(base), overlay, &identity)?
                } else {
                    CowOverlay::open(Box::new(base), overlay, &identity)?
                };
                if let Some(id) = &self.id {
                    cow = cow.with_serial(id.clone());
                }
                Ok(Box::new(cow))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::VolumeError;

    #[test]
    fn opens_raw_and_overlay_drives() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, vec![3u8; 8192]).unwrap();
        let mut spec = DriveSpec {
            path: img.clone(),
            read_only: true,
            overlay: None,
            id: None,
        };
        let mut d = spec.open().unwrap();
        assert!(d.read_only());
        assert_eq!(d.serial(), "disk.img");
        assert!(d.write_at(&[0], 0).is_err());

        spec.read_only = false;
        spec.overlay = Some(dir.path().join("o.cow"));
        spec.id = Some("vol-0abc".into());
        let mut d = spec.open().unwrap();
        assert!(!d.read_only());
        assert_eq!(d.serial(), "vol-0abc");
        d.write_at(&[9u8; 512], 0).unwrap();
        d.flush().unwrap();
        drop(d);
        assert_eq!(std::fs::read(&img).unwrap(), vec![3u8; 8192]);
        let mut b = [0u8; 1];
        spec.open().unwrap().read_at(&mut b, 0).unwrap();
        assert_eq!(b[0], 9);
    }

    /// Issue 8: a drive opened for writing is locked for that drive alone; read-only opens of a
    /// base may be shared, but not with a writer.
    #[test]
    fn writable_drives_are_exclusive_read_only_ones_shared() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, vec![0u8; 8192]).unwrap();
        let spec = |read_only: bool, overlay: Option<&str>| DriveSpec {
            path: img.clone(),
            read_only,
            overlay: overlay.map(|o| dir.path().join(o)),
            id: None,
        };
        let w = spec(false, None).open().unwrap();
        let e = spec(false, None).open().err().unwrap();
        assert!(matches!(e, VolumeError::InUse { writing: true, .. }), "{e}");
        let e = spec(true, None).open().err().unwrap();
        assert!(
            matches!(e, VolumeError::InUse { writing: false, .. }),
            "{e}"
        );
        assert!(
            spec(false, Some("a.cow")).open().is_err(),
            "base being written"
        );
        drop(w);
        let (r1, r2) = (
            spec(true, None).open().unwrap(),
            spec(true, None).open().unwrap(),
        );
        // Two overlays over one shared base, each with its own writer.
        let (o1, o2) = (
            spec(false, Some("a.cow")).open().unwrap(),
            spec(false, Some("b.cow")).open().unwrap(),
        );
        assert!(
            spec(false, Some("a.cow")).open().is_err(),
            "overlay a in use"
        );
        assert!(spec(true, Some("a.cow")).open().is_ok(), "a read-only look");
        assert!(spec(false, None).open().is_err(), "the base is shared");
        drop((r1, r2, o1, o2));
        assert!(spec(false, None).open().is_ok());
    }

    /// Issue 8: a character device or FIFO is refused up front, without blocking.
    #[test]
    fn only_regular_files_and_block_devices_are_drives() {
        let null = DriveSpec {
            path: "/dev/null".into(),
            read_only: false,
            overlay: None,
            id: None,
        };
        let e = null.open().err().unwrap();
        assert_eq!(
            e.to_string(),
            "drive /dev/null is a character device; it must be a regular file or a block device"
        );
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for read_only in [false, true] {
            let spec = DriveSpec {
                path: fifo.clone(),
                read_only,
                overlay: None,
                id: None,
            };
            assert!(spec.open().err().unwrap().to_string().contains("FIFO"));
        }
    }
}
