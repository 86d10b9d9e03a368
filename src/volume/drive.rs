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
                let mut cow = CowOverlay::open(Box::new(base), overlay, &identity)?
                    .with_read_only(self.read_only);
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
}
