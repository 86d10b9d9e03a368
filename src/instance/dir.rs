//! An instance's private directory (`STORE/records/instances/i-…/`), and the only way the
//! instance code reaches the files in it.
//!
//! Instance records are JSON files anyone with write access to the store can edit, so nothing
//! a record says is trusted as a path. The directory is opened one component at a time below
//! the store's root with `O_NOFOLLOW | O_DIRECTORY` (`records`, `instances`, the id), and every
//! file in it is opened, examined and deleted relative to that descriptor (openat(2),
//! fstatat(2), unlinkat(2)), never following a symbolic link, by a name that must be one plain
//! path component ([`check_file_name`]). A `..`, a `/`, an absolute path or a symbolic link is
//! refused with [`InstanceError::Outside`], so no record can make amivm read, write or delete
//! a file outside the instance's directory.

use super::{InstanceError, Result};
use crate::store::Store;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// The longest file name in the directory (Linux's NAME_MAX, `<linux/limits.h>`).
pub const MAX_FILE_NAME: usize = 255;

/// An open instance directory.
#[derive(Debug)]
pub struct InstanceDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// How to open a file in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only; the file must exist.
    Read,
    /// Read and write, created (mode 0600) if missing.
    ReadWriteCreate,
    /// Append, created (mode 0600) if missing.
    AppendCreate,
}

/// Check that `name` is one plain file name: ASCII letters, digits, `.`, `_` and `-`, not
/// starting with `.` (so neither `.` nor `..`), at most [`MAX_FILE_NAME`] bytes.
pub fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InstanceError::Outside(format!(
            "file name {name:?} is not a plain name inside the instance's directory"
        )))
    }
}

impl InstanceDir {
    /// The directory of instance `id` in `store`, created if missing.
    pub fn open(store: &Store, kind: &str, id: &str) -> Result<InstanceDir> {
        let path = store.record_data_dir(kind, id)?;
        let rel = path.strip_prefix(store.dir()).map_err(|_| {
            InstanceError::Outside(format!(
                "{} is not inside the store {}",
                path.display(),
                store.dir().display()
            ))
        })?;
        Self::open_beneath(store.dir(), rel)
    }

    /// Open `root/rel`, where no component of `rel` may be a symbolic link, `..` or absolute
    /// (`root` itself is trusted: the user named it).
    pub fn open_beneath(root: &Path, rel: &Path) -> Result<InstanceDir> {
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = rustix::fs::open(root, dir_flags, Mode::empty())
            .map_err(|e| InstanceError::io(format!("open {}", root.display()), e.into()))?;
        let mut path = root.to_path_buf();
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(InstanceError::Outside(format!(
                    "{} leaves {}",
                    rel.display(),
                    root.display()
                )));
            };
            path.push(name);
            fd = rustix::fs::openat(&fd, name, dir_flags | OFlags::NOFOLLOW, Mode::empty())
                .map_err(|e| match e {
                    rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => InstanceError::Outside(
                        format!("{} is a symbolic link or not a directory", path.display()),
                    ),
                    e => InstanceError::io(format!("open {}", path.display()), e.into()),
                })?;
        }
        Ok(InstanceDir { path, fd })
    }

    /// The directory's path (for messages, and for code that opens files by path after
    /// [`InstanceDir::file_path`] checked them).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `name` is in the directory: `None` if absent; refused unless a plain name of a
    /// regular file.
    pub fn file_type(&self, name: &str) -> Result<Option<FileType>> {
        check_file_name(name)?;
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let t = FileType::from_raw_mode(st.st_mode);
                if t == FileType::RegularFile {
                    Ok(Some(t))
                } else {
                    Err(InstanceError::Outside(format!(
                        "{} is not a regular file ({t:?})",
                        self.path.join(name).display()
                    )))
                }
            }
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(InstanceError::io(
                format!("stat {}", self.path.join(name).display()),
                e.into(),
            )),
        }
    }

    /// The path of file `name` for code that opens it by path (a volume, the console log):
    /// refused unless `name` is a plain name and, if it exists, a regular file.
    pub fn file_path(&self, name: &str) -> Result<PathBuf> {
        self.file_type(name)?;
        Ok(self.path.join(name))
    }

    /// Open file `name` without following a symbolic link.
    pub fn open_file(&self, name: &str, access: Access) -> Result<File> {
        check_file_name(name)?;
        let base = OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY;
        let flags = match access {
            Access::Read => base | OFlags::RDONLY,
            Access::ReadWriteCreate => base | OFlags::RDWR | OFlags::CREATE,
            Access::AppendCreate => base | OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
        };
        let path = self.path.join(name);
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::RUSR | Mode::WUSR).map_err(
            |e| match e {
                rustix::io::Errno::LOOP => {
                    InstanceError::Outside(format!("{} is a symbolic link", path.display()))
                }
                e => InstanceError::io(format!("open {}", path.display()), e.into()),
            },
        )?;
        let file = File::from(fd);
        let is_file = file
            .metadata()
            .map_err(|e| InstanceError::io(format!("stat {}", path.display()), e))?
            .is_file();
        if !is_file {
            return Err(InstanceError::Outside(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(file)
    }

    /// Delete each of `names` (absent ones are fine). All are checked first: if any is not a
    /// plain name of a regular file, nothing is deleted.
    pub fn remove_files(&self, names: &[&str]) -> Result<()> {
        for name in names {
            self.file_type(name)?;
        }
        for name in names {
            match rustix::fs::unlinkat(&self.fd, *name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    return Err(InstanceError::io(
                        format!("delete {}", self.path.join(name).display()),
                        e.into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The device and inode of file `name` (not following a symbolic link).
    pub fn file_identity(&self, name: &str) -> Result<(u64, u64)> {
        check_file_name(name)?;
        let st = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
            InstanceError::io(format!("stat {}", self.path.join(name).display()), e.into())
        })?;
        Ok((st.st_dev, st.st_ino))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn only_plain_names_pass() {
        for ok in ["vda.cow", "console.log", "run.lock", "nvme0n1.cow", "a_b-c"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_FILE_NAME + 1);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "../../..",
            "/etc/passwd",
            "a/b",
            ".hidden",
            "a b",
            "a\0b",
            long.as_str(),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_are_refused_and_nothing_outside_is_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("records/instances/i-1")).unwrap();
        std::fs::write(root.join("secret"), b"secret").unwrap();
        let d = InstanceDir::open_beneath(root, Path::new("records/instances/i-1")).unwrap();
        assert_eq!(d.path(), root.join("records/instances/i-1"));

        // A file symlinked out of the directory is neither read nor deleted.
        std::os::unix::fs::symlink(root.join("secret"), d.path().join("vda.cow")).unwrap();
        assert!(matches!(
            d.open_file("vda.cow", Access::Read),
            Err(InstanceError::Outside(_))
        ));
        assert!(d.file_path("vda.cow").is_err());
        std::fs::write(d.path().join("vdb.cow"), b"x").unwrap();
        assert!(d.remove_files(&["vdb.cow", "vda.cow"]).is_err());
        assert!(d.path().join("vdb.cow").exists(), "deleted before refusing");
        assert!(d.remove_files(&["../../../secret"]).is_err());
        assert_eq!(std::fs::read(root.join("secret")).unwrap(), b"secret");

        // Regular files work; absent ones are fine to delete.
        let mut s = String::new();
        d.open_file("vdb.cow", Access::Read)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "x");
        d.remove_files(&["vdb.cow", "gone.cow"]).unwrap();
        assert!(!d.path().join("vdb.cow").exists());

        // A symlinked instance directory, or a path leaving the root, is refused.
        std::os::unix::fs::symlink(root.join("records"), root.join("records/instances/i-2"))
            .unwrap();
        for rel in ["records/instances/i-2", "records/../..", "/etc"] {
            assert!(
                matches!(
                    InstanceDir::open_beneath(root, Path::new(rel)),
                    Err(InstanceError::Outside(_))
                ),
                "{rel}"
            );
        }
    }
}
