//! Opening the files a user names (kernels, initrds, drives, overlays, serial logs, volume
//! sources) without being stopped by what they turn out to be.
//!
//! open(2) of a FIFO blocks until another process opens its other end, and a character device,
//! socket or directory is no kernel or disk. So each caller says which kinds of file it takes
//! ([`Accept`]); the kind is checked with stat(2) before opening, and again with fstat(2) on the
//! opened descriptor, which is opened `O_NONBLOCK` so that a FIFO swapped in between the two
//! cannot block either. `O_NONBLOCK` is cleared again once the file is known to be a regular
//! file or block device (where it has no effect on reads and writes anyway).

use std::fs::{File, Metadata, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a path is, as stat(2) reports it (symbolic links followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
    Other,
}

impl FileKind {
    /// The kind of a file from its metadata.
    pub fn of(meta: &Metadata) -> Self {
        let t = meta.file_type();
        if t.is_file() {
            FileKind::Regular
        } else if t.is_dir() {
            FileKind::Directory
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Other
        }
    }

    /// The kind with its article, for messages ("a FIFO (named pipe)").
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::BlockDevice => "a block device",
            FileKind::CharDevice => "a character device",
            FileKind::Fifo => "a FIFO (named pipe)",
            FileKind::Socket => "a socket",
            FileKind::Other => "not a regular file",
        }
    }
}

/// The kinds of file a caller takes, and how to say so in a message.
#[derive(Debug, Clone, Copy)]
pub struct Accept {
    kinds: &'static [FileKind],
    describe: &'static str,
}

impl Accept {
    /// Whether `kind` is acceptable.
    pub fn allows(&self, kind: FileKind) -> bool {
        self.kinds.contains(&kind)
    }
}

/// Kernels, initrds, overlays, serial logs: regular files only.
pub const REGULAR: Accept = Accept {
    kinds: &[FileKind::Regular],
    describe: "a regular file",
};

/// Disk images (`--drive path=`): a regular file or a block device.
pub const DISK: Accept = Accept {
    kinds: &[FileKind::Regular, FileKind::BlockDevice],
    describe: "a regular file or a block device",
};

/// Volume sources of `image create` (`--root`, `--volume`): a disk image or a directory.
pub const VOLUME_SOURCE: Accept = Accept {
    kinds: &[
        FileKind::Regular,
        FileKind::BlockDevice,
        FileKind::Directory,
    ],
    describe: "a regular file, a block device or a directory",
};

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// stat, open or fstat failed.
    #[error("cannot open {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The path is a kind of file the caller does not take.
    #[error("{what} {path} is {}; it must be {expected}", kind.describe())]
    WrongKind {
        what: &'static str,
        path: String,
        kind: FileKind,
        expected: &'static str,
    },
}

impl FileError {
    /// The reason alone, for callers whose own message names the file already
    /// ("is a FIFO (named pipe); it must be a regular file", "No such file or directory ...").
    pub fn reason(&self) -> String {
        match self {
            FileError::Io { source, .. } => source.to_string(),
            FileError::WrongKind { kind, expected, .. } => {
                format!("is {}; it must be {expected}", kind.describe())
            }
        }
    }

    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

fn io_err(what: &'static str, path: &Path, source: std::io::Error) -> FileError {
    FileError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

fn require(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
    accept: Accept,
) -> Result<(), FileError> {
    let kind = FileKind::of(meta);
    if accept.allows(kind) {
        Ok(())
    } else {
        Err(FileError::WrongKind {
            what,
            path: path.display().to_string(),
            kind,
            expected: accept.describe,
        })
    }
}

/// Check with stat(2) that `path` is a kind `accept` takes; `what` names it in errors
/// ("kernel", "initrd", "drive", ...). Returns its metadata.
pub fn check(path: &Path, what: &'static str, accept: Accept) -> Result<Metadata, FileError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(what, path, e))?;
    require(what, path, &meta, accept)?;
    Ok(meta)
}

/// Like [`check`], but a path that does not exist yet passes (a log file to be created).
pub fn check_if_exists(path: &Path, what: &'static str, accept: Accept) -> Result<(), FileError> {
    match check(path, what, accept) {
        Err(e) if e.is_not_found() => Ok(()),
        r => r.map(|_| ()),
    }
}

/// How to open a file with [`open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read,
    ReadWrite,
    /// Append, creating the file (mode 0644 less the umask) if it does not exist.
    AppendCreate,
}

/// Open `path` as `mode` if it is a kind `accept` takes, without ever blocking in open(2).
pub fn open(
    path: &Path,
    what: &'static str,
    accept: Accept,
    mode: Mode,
) -> Result<File, FileError> {
    match std::fs::metadata(path) {
        Ok(meta) => require(what, path, &meta, accept)?,
        Err(e) if mode == Mode::AppendCreate && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(what, path, e)),
    }
    let mut opts = OpenOptions::new();
    match mode {
        Mode::Read => opts.read(true),
        Mode::ReadWrite => opts.read(true).write(true),
        // A file amivm creates (a console log) is its owner's only, whatever the umask.
        Mode::AppendCreate => opts
            .append(true)
            .create(true)
            .mode(crate::volume::PRIVATE_FILE_MODE),
    };
    let file = opts
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_err(what, path, e))?;
    let meta = file.metadata().map_err(|e| io_err(what, path, e))?;
    require(what, path, &meta, accept)?;
    clear_nonblock(&file).map_err(|e| io_err(what, path, e))?;
    Ok(file)
}

/// Clear `O_NONBLOCK` on an open file.
fn clear_nonblock(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL takes no argument and only reads the flags of a descriptor `file` owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with an integer flag argument on a descriptor `file` owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn refuses_fifos_devices_and_directories_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        let t0 = Instant::now();
        for mode in [Mode::Read, Mode::ReadWrite, Mode::AppendCreate] {
            let e = open(&fifo, "kernel", REGULAR, mode).unwrap_err();
            assert!(matches!(
                e,
                FileError::WrongKind {
                    kind: FileKind::Fifo,
                    ..
                }
            ));
            assert_eq!(
                e.to_string(),
                format!(
                    "kernel {} is a FIFO (named pipe); it must be a regular file",
                    fifo.display()
                )
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        let e = open(Path::new("/dev/null"), "drive", DISK, Mode::ReadWrite).unwrap_err();
        assert_eq!(
            e.to_string(),
            "drive /dev/null is a character device; it must be a regular file or a block device"
        );
        assert!(open(d.path(), "initrd", REGULAR, Mode::Read).is_err());
        assert!(check(d.path(), "root", VOLUME_SOURCE).is_ok());
        assert!(check(&fifo, "root", VOLUME_SOURCE).is_err());
    }

    #[test]
    fn opens_regular_files_blocking_and_creates_logs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let missing = open(&p, "kernel", REGULAR, Mode::Read).unwrap_err();
        assert!(missing.is_not_found());
        let f = open(&p, "serial log", REGULAR, Mode::AppendCreate).unwrap();
        // SAFETY: F_GETFL on a descriptor `f` owns.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "O_NONBLOCK must be cleared");
        drop(f);
        assert!(p.is_file());
        assert!(open(&p, "kernel", REGULAR, Mode::Read).is_ok());
        // A symbolic link to a regular file is that file.
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(open(&l, "kernel", REGULAR, Mode::ReadWrite).is_ok());
    }
}
