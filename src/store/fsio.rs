//! File-system primitives: flock(2) locks, durable atomic writes, parallel fsync, and the
//! private modes of everything the store creates.

use super::error::{Result, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Mode of every directory the store creates, the store itself included: owner only
/// (`rwx------`). Volumes of private images, overlays and console logs live there, so other
/// Unix users must not read them whatever the umask is.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file the store creates: owner read/write only (`rw-------`).
pub use crate::volume::PRIVATE_FILE_MODE;
/// The permission bits of group and others.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Create a new file (or truncate an existing one) for writing, mode [`PRIVATE_FILE_MODE`]
/// whatever the umask.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// Make `dir` (an existing store directory) private: remove group and other permissions, so
/// stores made before the store was private stop being readable by other users. A directory
/// that cannot be changed (another user's) is left as it is, with a warning.
pub fn make_private(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| StoreError::io("stat", dir, e))?;
    let mode = meta.permissions().mode();
    if mode & GROUP_OTHER_BITS != 0 {
        let private = std::fs::Permissions::from_mode(mode & !GROUP_OTHER_BITS);
        if let Err(e) = std::fs::set_permissions(dir, private) {
            log::warn!(
                "{} is readable by other users and cannot be made private: {e}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Lock modes of [`FileLock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// An flock(2) lock on a file, released when dropped (or when the process dies, which is
/// what makes `kill -9` safe).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Wait for the lock.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<FileLock> {
        Self::lock(path, mode, true)?.ok_or_else(|| {
            StoreError::io(
                "lock",
                path,
                std::io::Error::from(std::io::ErrorKind::WouldBlock),
            )
        })
    }

    /// Take the lock only if it is free right now.
    pub fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        Self::lock(path, mode, false)
    }

    /// Wait for the lock on an existing lock file opened read-only (a store opened
    /// read-only: nothing is created). `None` when the file does not exist: no command has
    /// ever taken that lock.
    pub fn acquire_existing(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("open lock file", path, e)),
        };
        Self::flock(file, path, mode, true)
    }

    fn lock(path: &Path, mode: LockMode, wait: bool) -> Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(path)
            .map_err(|e| not_writable_or_io("open lock file", path, e))?;
        Self::flock(file, path, mode, wait)
    }

    fn flock(file: File, path: &Path, mode: LockMode, wait: bool) -> Result<Option<FileLock>> {
        let mut op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        loop {
            // SAFETY: flock only reads its two integer arguments; the fd is owned by `file`,
            // which lives across the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(Some(FileLock { _file: file }));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
                _ => return Err(StoreError::io("flock", path, err)),
            }
        }
    }
}

/// Map permission and read-only-filesystem errors to [`StoreError::NotWritable`].
pub fn not_writable_or_io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::ENOTDIR) => {
            StoreError::NotWritable {
                path: path.display().to_string(),
                source: e,
            }
        }
        _ => StoreError::io(what, path, e),
    }
}

/// A unique file name for temporary files: `PREFIX-PID-RANDOM`.
pub fn temp_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// fsync a directory, so that renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| StoreError::io("open directory", dir, e))?;
    f.sync_all()
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

/// Ask the kernel to start writing a file's dirty pages back, without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a hint: durability still comes from fsync.
pub fn start_writeback(f: &File) {
    // SAFETY: sync_file_range only reads its integer arguments; the fd is owned by `f`.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Threads that fsync in parallel: concurrent fsyncs share journal commits (ext4/xfs group
/// commit), so a batch of small files becomes durable in a few commits instead of one each.
pub const FSYNC_THREADS: usize = 32;

/// fsync every file or directory in `paths`, on up to [`FSYNC_THREADS`] threads.
pub fn fsync_all(paths: &[PathBuf]) -> Result<()> {
    parallel_each(paths, |p| {
        let f = File::open(p).map_err(|e| StoreError::io("open", p, e))?;
        f.sync_all().map_err(|e| StoreError::io("fsync", p, e))
    })
}

/// Run `f` on every item, on up to [`FSYNC_THREADS`] threads (work that mostly waits for the
/// disk, such as fsync). Stops taking new items after the first error, and returns it.
pub fn parallel_each<T: Sync>(items: &[T], f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let threads = FSYNC_THREADS.min(items.len());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while !failed.load(std::sync::atomic::Ordering::Relaxed) {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        if let Err(e) = f(item) {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(StoreError::Invalid("a worker thread panicked".into())))
            })
            .collect::<Result<Vec<()>>>()
            .map(|_| ())
    })
}

/// Create `dir` and its missing parents, mode [`PRIVATE_DIR_MODE`] (as the XDG Base Directory
/// Specification asks of the directories it names).
pub fn mkdirs(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| not_writable_or_io("create directory", dir, e))
}

/// Write `bytes` to a new file `tmp_dir/…`, fsync it, rename it to `dest`, and fsync `dest`'s
/// directory: readers see either the old file or the whole new one.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(tmp_dir, "write", bytes)?;
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io("rename into", dest, e));
    }
    if let Some(parent) = dest.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Write `bytes` to a new fsynced file in `tmp_dir`, mode exactly [`PRIVATE_FILE_MODE`]
/// whatever the umask; returns its path.
pub fn write_temp(tmp_dir: &Path, prefix: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = tmp_dir.join(temp_name(prefix));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&tmp)?;
        // The umask can only take bits away; set the mode exactly anyway.
        f.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(not_writable_or_io("write", &tmp, e));
    }
    Ok(tmp)
}

/// Pretty JSON with a trailing newline: how the store writes every JSON file.
pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut b =
        serde_json::to_vec_pretty(v).map_err(|e| StoreError::Invalid(format!("JSON: {e}")))?;
    b.push(b'\n');
    Ok(b)
}

/// The format version of a versioned store file (`{"Version": N, ...}`); absent reads as 0.
#[derive(Deserialize)]
struct VersionField {
    #[serde(rename = "Version", default)]
    version: u32,
}

/// Read a versioned JSON file of the store's (`access-keys.json`, `key-pairs.json`,
/// `regions.json`, `config.json`): `None` when it does not exist. A file that is not JSON, is
/// of another format version than `version`, or does not parse as `T` is corrupt. The version
/// is checked before the rest, so a newer amivm's file is reported as such, not as a parse
/// error.
pub fn read_versioned_json<T: DeserializeOwned>(path: &Path, version: u32) -> Result<Option<T>> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    let corrupt = |why: String| StoreError::corrupt(path.display().to_string(), why);
    let found: VersionField = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if found.version != version {
        return Err(corrupt(format!(
            "version {} (this amivm reads {version})",
            found.version
        )));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

/// Replace `dest` with `value` as JSON ([`to_json`]), atomically and durably, mode exactly
/// [`PRIVATE_FILE_MODE`] (see [`write_atomic`]). Callers that read, change and write hold the
/// store lock.
pub fn write_private_json<T: Serialize>(tmp_dir: &Path, dest: &Path, value: &T) -> Result<()> {
    write_atomic(tmp_dir, dest, &to_json(value)?)
}

/// Read a whole file, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", path, e)),
    }
}

/// Remove a file; a missing file is fine. Returns whether it existed.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.json");
        write_atomic(dir.path(), &dest, b"one").unwrap();
        write_atomic(dir.path(), &dest, b"two").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let lock = dir.path().join("lock");
        let a = FileLock::acquire(&lock, LockMode::Shared).unwrap();
        let b = FileLock::try_acquire(&lock, LockMode::Shared).unwrap();
        assert!(b.is_some());
        assert!(FileLock::try_acquire(&lock, LockMode::Exclusive)
            .unwrap()
            .is_none());
        drop((a, b));
        assert!(FileLock::try_acquire(&lock, LockMode::Exclusive)
            .unwrap()
            .is_some());
        fsync_all(&[dest.clone(), dir.path().to_path_buf()]).unwrap();
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Versioned {
        version: u32,
        names: Vec<String>,
    }

    #[test]
    fn versioned_json_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.json");
        assert_eq!(read_versioned_json::<Versioned>(&p, 1).unwrap(), None);
        let v = Versioned {
            version: 1,
            names: vec!["a".into()],
        };
        write_private_json(dir.path(), &p, &v).unwrap();
        assert_eq!(read_versioned_json::<Versioned>(&p, 1).unwrap(), Some(v));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_FILE_MODE);
        // Only the file is left: the temporary one was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Another version is named as such, even when the rest would not parse.
        std::fs::write(&p, br#"{"Version": 2, "Names": {"new": "shape"}}"#).unwrap();
        let e = read_versioned_json::<Versioned>(&p, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2 (this amivm reads 1)"), "{e}");
        std::fs::write(&p, br#"{"Names": []}"#).unwrap();
        let e = read_versioned_json::<Versioned>(&p, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 0"), "{e}");
        for bad in [&b"{not json"[..], br#"{"Version": 1, "Names": 7}"#, b""] {
            std::fs::write(&p, bad).unwrap();
            let e = read_versioned_json::<Versioned>(&p, 1).unwrap_err();
            assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        }
    }

    #[test]
    fn created_files_and_directories_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let nested = dir.path().join("a/b");
        mkdirs(&nested).unwrap();
        assert_eq!(mode(&nested), PRIVATE_DIR_MODE);
        assert_eq!(mode(&dir.path().join("a")), PRIVATE_DIR_MODE);
        let f = dir.path().join("f");
        write_atomic(dir.path(), &f, b"x").unwrap();
        assert_eq!(mode(&f), PRIVATE_FILE_MODE);
        drop(create_private(&dir.path().join("g")).unwrap());
        assert_eq!(mode(&dir.path().join("g")), PRIVATE_FILE_MODE);
        drop(FileLock::acquire(&dir.path().join("lock"), LockMode::Shared).unwrap());
        assert_eq!(mode(&dir.path().join("lock")), PRIVATE_FILE_MODE);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_private(&open).unwrap();
        assert_eq!(mode(&open), PRIVATE_DIR_MODE);
        assert!(
            FileLock::acquire_existing(&dir.path().join("none"), LockMode::Shared)
                .unwrap()
                .is_none()
        );
        assert!(
            FileLock::acquire_existing(&dir.path().join("lock"), LockMode::Shared)
                .unwrap()
                .is_some()
        );
    }
}
