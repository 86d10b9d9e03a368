//! The amivm process running an instance, signalled only when it is provably ours.
//!
//! A record's `Process` (pid and start time) is not trusted on its own: anyone who can edit the
//! record can write any pid there, and a pid is reused once its process is gone. Before a
//! signal, the recorded pid must
//! 1. be alive with the recorded start time (/proc/PID/stat field 22), and
//! 2. hold the instance's run lock: one of its descriptors is the instance's `run.lock`, and
//!    its /proc/PID/fdinfo/FD shows a `lock:` line (the kernel lists there only the locks held
//!    through that open file description; see `show_fd_locks` in fs/locks.c and proc(5)).
//!
//! The process is pinned with a pidfd (pidfd_open(2)) before the checks and signalled through
//! it (pidfd_send_signal(2)), so a pid reused between the checks and the signal gets nothing.

use super::dir::InstanceDir;
use super::lock::{same_process_alive, LOCK_FILE};
use super::record::ProcessInfo;
use super::{InstanceError, Result};
use rustix::process::{Pid, PidfdFlags, Signal};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The process running an instance, checked to be it.
#[derive(Debug)]
pub struct InstanceProcess {
    pid: Pid,
    /// `None` where pidfd_open(2) is unavailable (kernels before 5.3, some seccomp filters):
    /// then the signal goes by pid, right after the checks.
    pidfd: Option<OwnedFd>,
}

impl InstanceProcess {
    /// The recorded process `p` of instance `id`, if it is alive, started when recorded and
    /// holds the run lock in `dir`; otherwise [`InstanceError::NotOurProcess`] saying why.
    pub fn verify(id: &str, p: ProcessInfo, dir: &InstanceDir) -> Result<InstanceProcess> {
        let not_ours = |why: &str| {
            InstanceError::NotOurProcess(format!(
                "instance {id}: recorded amivm process {} {why}; not signalling it",
                p.pid
            ))
        };
        let pid = i32::try_from(p.pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| not_ours("is not a valid process id"))?;
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::SRCH) => return Err(not_ours("is not running")),
            Err(_) => None,
        };
        if !same_process_alive(p.pid, p.start_ticks) {
            return Err(not_ours(
                "is not running, or started at another time than recorded",
            ));
        }
        if !holds_lock(p.pid, dir)? {
            return Err(not_ours("does not hold the instance's run lock"));
        }
        Ok(InstanceProcess { pid, pidfd })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// Send `sig`; `false` if the process is gone.
    pub fn signal(&self, sig: Signal) -> bool {
        match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, sig).is_ok(),
            None => rustix::process::kill_process(self.pid, sig).is_ok(),
        }
    }
}

/// Whether process `pid` holds the run lock in `dir` (see the module comment).
pub fn holds_lock(pid: u32, dir: &InstanceDir) -> Result<bool> {
    let (dev, ino) = dir.file_identity(LOCK_FILE)?;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Ok(false);
    };
    for entry in fds.flatten() {
        // Following the /proc link reaches the open file itself.
        let Ok(md) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if md.dev() != dev || md.ino() != ino {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        if std::fs::read_to_string(info).is_ok_and(|s| fdinfo_has_flock(&s)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a /proc/PID/fdinfo/FD text shows an exclusive flock(2) held through that
/// descriptor (a line like `lock:<TAB>1: FLOCK  ADVISORY  WRITE 1234 fe:00:1001 0 EOF`).
pub fn fdinfo_has_flock(fdinfo: &str) -> bool {
    fdinfo.lines().any(|l| {
        l.strip_prefix("lock:").is_some_and(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            words.contains(&"FLOCK") && words.contains(&"WRITE")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::lock::{process_start_ticks, RunLock};
    use std::path::Path;

    #[test]
    fn fdinfo_lock_lines() {
        let held = "pos:\t0\nflags:\t02100002\nmnt_id:\t31\nino:\t10010642\nlock:\t1: FLOCK  ADVISORY  WRITE 9476 fe:00:10010642 0 EOF\n";
        assert!(fdinfo_has_flock(held));
        assert!(!fdinfo_has_flock("pos:\t0\nflags:\t02100002\n"));
        assert!(!fdinfo_has_flock(
            "lock:\t1: POSIX  ADVISORY  WRITE 9476 fe:00:1 0 EOF\n"
        ));
        assert!(!fdinfo_has_flock(
            "lock:\t1: FLOCK  ADVISORY  READ 9476 fe:00:1 0 EOF\n"
        ));
    }

    #[test]
    fn only_the_lock_holder_with_its_start_time_is_ours() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("i")).unwrap();
        let dir = InstanceDir::open_beneath(tmp.path(), Path::new("i")).unwrap();
        let me = std::process::id();
        let info = ProcessInfo {
            pid: me,
            start_ticks: process_start_ticks(me).unwrap(),
        };
        // Nobody holds the lock yet.
        drop(RunLock::try_acquire(&dir).unwrap());
        assert!(!holds_lock(me, &dir).unwrap());
        assert!(InstanceProcess::verify("i-1", info, &dir).is_err());
        let lock = RunLock::try_acquire(&dir).unwrap().unwrap();
        assert!(holds_lock(me, &dir).unwrap());
        let p = InstanceProcess::verify("i-1", info, &dir).unwrap();
        assert_eq!(p.pid(), me);
        // Another start time, or another process (pid 1), is not ours.
        let other = ProcessInfo {
            start_ticks: info.start_ticks + 1,
            ..info
        };
        assert!(InstanceProcess::verify("i-1", other, &dir).is_err());
        let init = ProcessInfo {
            pid: 1,
            start_ticks: process_start_ticks(1).unwrap_or(0),
        };
        assert!(InstanceProcess::verify("i-1", init, &dir).is_err());
        drop(lock);
        assert!(InstanceProcess::verify("i-1", info, &dir).is_err());
    }
}
