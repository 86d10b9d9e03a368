//! Step 1 of the jail: cloning the VM process into its namespaces, and the parent's side: the
//! reports the VM process sends over a pipe (one JSON line each, bounded: the VM process runs
//! the guest and is not trusted), signals relayed to it, and its end.

use super::{check, JailError};
use crate::vmm::VmExit;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Longest report line the parent reads from the VM process; a crash reason or an error
/// message fits many times over. A VM process that sends more is treated as failed.
pub const MAX_REPORT_LINE: u64 = 64 * 1024;

/// `si_code` of a signal the kernel sent (a terminal's Ctrl-C): `SI_KERNEL` in
/// include/uapi/asm-generic/siginfo.h. The VM process in the same process group got it too, so
/// the parent does not relay it.
const SI_KERNEL: libc::c_int = 0x80;

/// Exit status of a VM process whose parent vanished before starting it, and what
/// [`JailedVm::wait`] returns when the VM process cannot be waited for: amivm's own failure
/// (`cli::exit::AMIVM_FAILED`, documented in `--help`).
pub const LOST: i32 = 125;

/// What the VM process tells its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// The VM is built: the guest is about to run.
    Built,
    /// The VM could not be built (the error, as the user should read it).
    Failed(String),
    /// The guest ended.
    Ended(VmExit),
}

impl Report {
    /// One line of the protocol (JSON, without newlines inside).
    pub fn encode(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "\"Built\"".into());
        s.push('\n');
        s
    }

    /// Parse one line; `None` for anything else.
    pub fn decode(line: &str) -> Option<Report> {
        serde_json::from_str(line.trim_end()).ok()
    }
}

/// The VM process's end of the report pipe.
pub struct Reporter {
    pipe: std::fs::File,
}

impl Reporter {
    /// Send one report (a parent that is gone does not matter: the process dies with it).
    pub fn send(&mut self, r: &Report) {
        let _ = self.pipe.write_all(r.encode().as_bytes());
    }
}

/// The parent's handle on a jailed VM process.
pub struct JailedVm {
    pid: libc::pid_t,
    reports: BufReader<std::fs::File>,
}

/// The VM process the signal handler relays to (0: none).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn relay(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } == SI_KERNEL;
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 && !(from_kernel && sig == libc::SIGINT) {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe { libc::kill(pid, sig) };
    }
}

fn relay_signals() -> Result<(), JailError> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; we set a handler with the SA_SIGINFO signature.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = relay as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: act is initialised; the old action is not needed.
        let ret = unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) };
        check(ret, "install the signal relay")?;
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(ret, "make a pipe")?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Write the uid and gid maps of a child in a new user namespace: the caller's ids map to
/// themselves (user_namespaces(7); `setgroups` must be denied before an unprivileged gid map).
fn map_ids(pid: libc::pid_t, uid: u32, gid: u32) -> Result<(), JailError> {
    let w = |name: &str, text: String| {
        std::fs::write(format!("/proc/{pid}/{name}"), text)
            .map_err(super::sys(format!("write the user namespace's {name}")))
    };
    w("setgroups", "deny".into())?;
    w("uid_map", format!("{uid} {uid} 1\n"))?;
    w("gid_map", format!("{gid} {gid} 1\n"))
}

/// Clone the VM process into new namespaces and run `vm` there; `vm` gets the jail's
/// in-user-namespace flag and the reporter, and the process exits when it returns. Returns the
/// parent's handle. The calling process must be single-threaded (a clone copies one thread).
pub fn spawn<F>(vm: F) -> Result<JailedVm, JailError>
where
    F: FnOnce(bool, &mut Reporter) -> i32,
{
    // SAFETY: geteuid/getegid take no arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let user_ns = uid != 0;
    // A clone copies only the calling thread: another thread's locks would stay held forever
    // in the copy.
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        return Err(JailError::Protocol(format!(
            "the VM process must be started from a single-threaded process ({threads} threads)"
        )));
    }
    let (report_r, report_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC;
    if user_ns {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: clone without CLONE_VM and without a new stack behaves like fork(2): the child
    // gets a copy of this (single-threaded) process and continues here with 0.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        return Err(JailError::Sys {
            what: "create the VM process in new namespaces".into(),
            source: e,
        });
    }
    if pid == 0 {
        drop(report_r);
        drop(go_w);
        // SAFETY: prctl with PR_SET_PDEATHSIG takes plain integers.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        // Wait until the parent has mapped our ids (or gone: then the read ends with nothing).
        let mut go = [0u8; 1];
        let ok = std::fs::File::from(go_r)
            .read(&mut go)
            .is_ok_and(|n| n == 1);
        let code = if ok {
            let mut rep = Reporter {
                pipe: std::fs::File::from(report_w),
            };
            vm(user_ns, &mut rep)
        } else {
            LOST
        };
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: _exit ends this process without running the parent's exit handlers twice.
        unsafe { libc::_exit(code) };
    }
    let pid = pid as libc::pid_t;
    drop(report_w);
    drop(go_r);
    let vm = JailedVm {
        pid,
        reports: BufReader::new(std::fs::File::from(report_r)),
    };
    let started = (|| {
        if user_ns {
            map_ids(pid, uid, gid)?;
        }
        CHILD.store(pid, Ordering::Relaxed);
        relay_signals()?;
        std::fs::File::from(go_w)
            .write_all(b"g")
            .map_err(super::sys("start the VM process"))
    })();
    match started {
        Ok(()) => Ok(vm),
        Err(e) => {
            vm.kill();
            Err(e)
        }
    }
}

impl JailedVm {
    /// The VM process's id (in the parent's PID namespace).
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// The next report, `None` if the VM process closed the pipe (it ended) or sent something
    /// that is not a report.
    pub fn next_report(&mut self) -> Option<Report> {
        let mut line = String::new();
        let mut limited = (&mut self.reports).take(MAX_REPORT_LINE);
        match limited.read_line(&mut line) {
            Ok(n) if n > 0 && line.ends_with('\n') => Report::decode(&line),
            _ => None,
        }
    }

    /// Wait for the VM process to end; its exit status (128 + N when killed by signal N, as
    /// shells report it).
    pub fn wait(self) -> i32 {
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child with a status we own.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                break;
            }
            if r == -1 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                return LOST;
            }
        }
        CHILD.store(0, Ordering::Relaxed);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        }
    }

    /// Kill the VM process (the parent could not go on) and reap it.
    pub fn kill(self) -> i32 {
        // SAFETY: kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.wait()
    }
}

/// How a jailed VM ended, from the parent's side.
#[derive(Debug)]
pub enum Ending {
    /// The VM could not be built, or failed while the guest ran.
    Failed(String),
    /// The guest ran and ended.
    Ended(VmExit),
    /// The VM process ended without saying how (killed, or a denied system call: status 125).
    Died(i32),
}

/// Read the reports to the end and reap the VM process. `on_built` runs when the VM is built
/// (an instance is recorded `running` then); if it fails, the VM process is killed.
pub fn supervise<E>(
    mut vm: JailedVm,
    on_built: impl FnOnce() -> Result<(), E>,
) -> Result<Ending, E> {
    match vm.next_report() {
        Some(Report::Built) => {}
        Some(Report::Failed(why)) => {
            vm.wait();
            return Ok(Ending::Failed(why));
        }
        _ => return Ok(Ending::Died(vm.wait())),
    }
    if let Err(e) = on_built() {
        vm.kill();
        return Err(e);
    }
    let report = vm.next_report();
    let status = vm.wait();
    Ok(match report {
        Some(Report::Ended(exit)) => Ending::Ended(exit),
        Some(Report::Failed(why)) => Ending::Failed(why),
        _ => Ending::Died(status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::events::CrashReason;

    #[test]
    fn reports_round_trip_on_one_line() {
        for r in [
            Report::Built,
            Report::Failed("cannot open\nthe kernel".into()),
            Report::Ended(VmExit::ExitCode(3)),
            Report::Ended(VmExit::Crashed(CrashReason::EmulationFailure {
                rip: 0x1000,
                bytes: vec![0x0f, 0xae],
            })),
            Report::Ended(VmExit::VmmFailed("x".into())),
        ] {
            let line = r.encode();
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            assert_eq!(Report::decode(&line), Some(r));
        }
        assert_eq!(Report::decode("{\"Ended\":\"Nonsense\"}"), None);
        assert_eq!(Report::decode(""), None);
    }

    /// A VM process that floods the pipe without a newline is read only up to the bound.
    #[test]
    fn an_overlong_report_is_not_a_report() {
        let (r, w) = pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            let mut line = Report::Built.encode();
            let _ = w.write_all(line.as_bytes());
            line = "x".repeat(MAX_REPORT_LINE as usize * 2);
            let _ = w.write_all(line.as_bytes());
        });
        let mut vm = JailedVm {
            pid: 0,
            reports: BufReader::new(std::fs::File::from(r)),
        };
        assert_eq!(vm.next_report(), Some(Report::Built));
        assert_eq!(vm.next_report(), None);
        drop(vm);
        let _ = writer.join();
    }
}
