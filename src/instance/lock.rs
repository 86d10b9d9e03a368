//! The run lock: an exclusive flock(2) on `run.lock` in the instance's directory, held by the
//! amivm process that runs the VM for as long as it runs. The kernel drops it when that process
//! dies, however it dies, so "can I take the lock?" answers "is the instance's process gone?"
//! without trusting a pid that may have been reused.

use super::dir::{Access, InstanceDir};
use super::{InstanceError, Result};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// The lock file's name in the instance's directory.
pub const LOCK_FILE: &str = "run.lock";

/// A held run lock.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl RunLock {
    /// Take the lock if it is free right now (`None`: someone runs the instance).
    pub fn try_acquire(dir: &InstanceDir) -> Result<Option<RunLock>> {
        let path = dir.path().join(LOCK_FILE);
        let file = dir.open_file(LOCK_FILE, Access::ReadWriteCreate)?;
        loop {
            // SAFETY: flock only reads its two integer arguments; the fd is owned by `file`,
            // which lives across the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Some(RunLock { file }));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(InstanceError::io(format!("flock {}", path.display()), err)),
            }
        }
    }

    /// Whether the lock is held by someone else right now.
    pub fn is_held(dir: &InstanceDir) -> Result<bool> {
        Ok(Self::try_acquire(dir)?.is_none())
    }

    /// Let a child process inherit the lock: clear close-on-exec and return the descriptor
    /// number it will have in the child. The lock stays held until both processes close it.
    pub fn share_with_child(&self) -> Result<RawFd> {
        let fd = self.file.as_raw_fd();
        // SAFETY: F_SETFD with an integer flag argument on a descriptor `self` owns.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        if rc != 0 {
            return Err(InstanceError::io(
                "fcntl(F_SETFD) on the run lock",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(fd)
    }

    /// Adopt a run lock inherited from the parent (see [`RunLock::share_with_child`]); checks
    /// that `fd` is an open descriptor of `dir/run.lock` that holds the lock.
    pub fn adopt(fd: RawFd, dir: &InstanceDir) -> Result<RunLock> {
        let (dev, ino) = dir.file_identity(LOCK_FILE)?;
        // SAFETY: fstat only writes into the zeroed stat buffer we pass; a bad fd gives EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: see above; `st` is a valid, writable stat struct.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(InstanceError::Invalid(format!(
                "--lock-fd {fd} is not an open file"
            )));
        }
        if st.st_ino != ino || st.st_dev != dev {
            return Err(InstanceError::Invalid(format!(
                "--lock-fd {fd} is not the instance's run lock"
            )));
        }
        // SAFETY: the descriptor is open (fstat succeeded), was handed to this process for it
        // to own, and nothing else in this process wraps it.
        let file = unsafe { File::from_raw_fd(fd) };
        // Re-taking a lock this open file description already holds succeeds at once.
        // SAFETY: flock only reads its integer arguments; `file` owns the descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(InstanceError::Invalid(format!(
                "--lock-fd {fd} does not hold the run lock"
            )));
        }
        // SAFETY: F_SETFD with an integer flag argument on a descriptor `file` owns.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(RunLock { file })
    }
}

/// A run lock kept open to ask, again and again, whether the instance's process holds it: one
/// `flock(2)` call per question instead of opening the instance's directory and lock file each
/// time (what [`RunLock::is_held`] does). The answer is the kernel's, as for [`RunLock`].
#[derive(Debug)]
pub struct LockProbe {
    file: File,
}

impl LockProbe {
    /// Open the run lock in `dir` (created if missing, as [`RunLock::try_acquire`] does).
    pub fn open(dir: &InstanceDir) -> Result<LockProbe> {
        Ok(LockProbe {
            file: dir.open_file(LOCK_FILE, Access::ReadWriteCreate)?,
        })
    }

    /// Whether someone holds the lock right now. When nobody does, the probe holds it for the
    /// length of two system calls (taking and releasing it), as [`RunLock::is_held`] does. After
    /// an error, drop the probe: closing it releases whatever it holds.
    pub fn is_held(&self) -> Result<bool> {
        let fd = self.file.as_raw_fd();
        loop {
            // SAFETY: flock only reads its two integer arguments; the fd is owned by
            // `self.file`, which lives across the call.
            let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                // SAFETY: as above; releases the lock this open file description just took.
                if unsafe { libc::flock(fd, libc::LOCK_UN) } != 0 {
                    return Err(InstanceError::io(
                        format!("release {LOCK_FILE}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                return Ok(false);
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(true),
                _ => return Err(InstanceError::io(format!("flock {LOCK_FILE}"), err)),
            }
        }
    }
}

/// The start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat), so a
/// recorded pid can be told from a later process that reused it.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 (`starttime`) of a /proc/PID/stat line, or `None` for a process that has exited
/// and not been reaped yet (state `Z` zombie or `X` dead, field 3). The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")" come fields 3 (state) onwards: starttime is the 20th of them.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether `pid` is alive and is still the process that started at `start_ticks`.
pub fn same_process_alive(pid: u32, start_ticks: u64) -> bool {
    process_start_ticks(pid) == Some(start_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("i")).unwrap();
        let dir = InstanceDir::open_beneath(tmp.path(), std::path::Path::new("i")).unwrap();
        let held = RunLock::try_acquire(&dir).unwrap().unwrap();
        assert!(RunLock::try_acquire(&dir).unwrap().is_none());
        assert!(RunLock::is_held(&dir).unwrap());
        let probe = LockProbe::open(&dir).unwrap();
        assert!(probe.is_held().unwrap());
        drop(held);
        assert!(!RunLock::is_held(&dir).unwrap());
        // The probe sees the release, and asking does not keep the lock.
        assert!(!probe.is_held().unwrap());
        assert!(!probe.is_held().unwrap());
        let again = RunLock::try_acquire(&dir).unwrap().unwrap();
        assert!(probe.is_held().unwrap());
        drop(again);
        // A lock file symlinked elsewhere is refused, and nothing is created there.
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(LOCK_FILE)).unwrap();
        assert!(RunLock::try_acquire(&dir).is_err());
        assert!(!elsewhere.exists());
    }

    #[test]
    fn start_ticks_parse_after_the_command_name() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(line), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
        let zombie = line.replace(") S ", ") Z ");
        assert_eq!(parse_start_ticks(&zombie), None);
        let me = std::process::id();
        let t = process_start_ticks(me).unwrap();
        assert!(same_process_alive(me, t));
        assert!(!same_process_alive(me, t + 1));
    }
}
