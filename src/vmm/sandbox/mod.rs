//! Confining the VM process once the guest runs (after setup, before the first KVM_RUN):
//! per-thread seccomp allowlists ([`seccomp`]), a Landlock file-system view ([`landlock`]),
//! `no_new_privs`, and resource limits. Firecracker's model: a guest that escapes KVM lands in a
//! process that can do almost nothing.
//!
//! Order matters: Landlock binds the calling thread and the threads it starts afterwards, so the
//! main thread restricts itself first, then starts the device, console and vCPU threads; each of
//! those installs its own seccomp filter as its first step, and the main thread installs its own
//! last (filters are per thread; a thread started later would inherit its creator's).

pub mod landlock;
pub mod seccomp;

pub use self::landlock::FsPolicy;
use crate::vmm::jail::{self, JailConfig, JailError};
use std::cell::Cell;
use std::sync::Once;

/// The kinds of VMM threads, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs one vCPU: KVM_RUN and the port/MMIO devices it dispatches to.
    Vcpu,
    /// The virtio event loop and block I/O.
    Device,
    /// Forwards a terminal on stdin to the serial port.
    Console,
    /// Waits for the guest to end, then flushes and records.
    Main,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Vcpu, Role::Device, Role::Console, Role::Main];

    /// The name the SIGSYS report uses.
    pub fn name(self) -> &'static str {
        match self {
            Role::Vcpu => "vCPU",
            Role::Device => "device",
            Role::Console => "console",
            Role::Main => "main",
        }
    }
}

thread_local! {
    /// The calling thread's role, for the SIGSYS report (a const-initialised `Cell` of a `Copy`
    /// type: reading it is signal-handler safe).
    static ROLE: Cell<Role> = const { Cell::new(Role::Main) };
}

fn current_role() -> Role {
    ROLE.with(|r| r.get())
}

/// Environment variable that turns the seccomp filters off (`1`), for instances, whose VMs run
/// in the `run`/`start` process or a detached child that inherits the environment.
pub const NO_SECCOMP_ENV: &str = "AMIVM_NO_SECCOMP";

/// Whether to install the seccomp filters: not when `--no-seccomp` was given or
/// [`NO_SECCOMP_ENV`] is `1`.
pub fn seccomp_wanted(no_seccomp_flag: bool) -> bool {
    !no_seccomp_flag && std::env::var_os(NO_SECCOMP_ENV).is_none_or(|v| v != "1")
}

/// What the VM process may still do once the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Install the seccomp filters (`--no-seccomp` turns them off, for debugging).
    pub seccomp: bool,
    /// Restrict file-system access with Landlock (`None`: leave it as it is).
    pub fs: Option<FsPolicy>,
    /// Test-only: make the vCPU thread attempt a forbidden call once its filter is in place, or
    /// the main thread try to open a path once Landlock is in place (hidden CLI option).
    pub test_hook: Option<TestHook>,
    /// `--jail`: the VM process runs in new namespaces (see [`crate::vmm::jail`]); here, its
    /// new root and dropped identity, entered before the limits and Landlock.
    pub jail: Option<JailConfig>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            seccomp: true,
            fs: Some(FsPolicy::default()),
            test_hook: None,
            jail: None,
        }
    }
}

/// Test-only probes of the sandbox, run by the VMM itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestHook {
    /// The first vCPU thread calls `socket(2)` after installing its filter.
    VcpuSyscall,
    /// The main thread opens this path for reading after Landlock and reports the result on
    /// stderr (`amivm: sandbox test: open PATH: ok|<error>`).
    Open(std::path::PathBuf),
    /// Once jailed (before Landlock), the main thread lists `/` on stderr
    /// (`amivm: sandbox test: root: NAME,NAME,...`).
    ListRoot,
}

/// Errors installing the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter of the {role} thread: {source}")]
    Filter {
        role: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the seccomp filter of the {role} thread: {source}")]
    Install {
        role: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(String),
    #[error("cannot restrict file access with Landlock: {0}")]
    Landlock(#[from] ::landlock::RulesetError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot set the resource limit {what}: {source}")]
    Rlimit {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Descriptors the VM process may open beyond those open when the guest starts (snapshot views
/// keep a few chunk files open; records are committed through a handful more).
pub const EXTRA_FDS: u64 = 128;
/// Address space the VM process may map beyond what it has mapped when the guest starts (guest
/// RAM included): thread stacks, malloc arenas and I/O buffers. A guest cannot make the VMM map
/// more than this.
pub const EXTRA_ADDRESS_SPACE: u64 = 1 << 30;
/// Each VM thread's stack and guard (Rust's default thread stack is 2 MiB).
pub const PER_THREAD_ADDRESS_SPACE: u64 = 4 << 20;

/// The limits to set once setup is done, from what is open and mapped now (pure).
pub fn limits_after_setup(highest_fd: u64, mapped_bytes: u64, threads: u64) -> (u64, u64) {
    let fds = highest_fd + 1 + EXTRA_FDS;
    let address_space = mapped_bytes
        .saturating_add(EXTRA_ADDRESS_SPACE)
        .saturating_add(threads.saturating_mul(PER_THREAD_ADDRESS_SPACE));
    (fds, address_space)
}

fn set_limit(
    resource: libc::__rlimit_resource_t,
    what: &'static str,
    value: u64,
) -> Result<(), SandboxError> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
        return Err(SandboxError::Rlimit {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    // Never raise a limit the user set lower.
    let value = value.min(cur.rlim_max);
    let new = libc::rlimit {
        rlim_cur: value.min(cur.rlim_cur),
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(SandboxError::Rlimit {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The highest open descriptor and the bytes mapped, read from /proc (before Landlock).
fn process_usage() -> (u64, u64) {
    let highest_fd = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(2)
        })
        .unwrap_or(1023);
    // /proc/self/statm: the first field is the total program size in pages (proc(5)).
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(u64::MAX / 8192);
    // SAFETY: sysconf takes a constant name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    (highest_fd, pages.saturating_mul(page))
}

/// Process-wide steps, run once on the main thread before any VM thread starts (`threads` of
/// them will): the jail (when asked for), resource limits, the SIGSYS handler, `no_new_privs`, and the Landlock view.
pub fn enter_process(cfg: &SandboxConfig, threads: u64) -> Result<(), SandboxError> {
    // Measured before the jail hides /proc.
    let (highest_fd, mapped) = process_usage();
    if let Some(j) = &cfg.jail {
        jail::enter(j)?;
        if cfg.test_hook == Some(TestHook::ListRoot) {
            eprintln!("amivm: sandbox test: root: {}", jail::list_root());
        }
    }
    let (fds, address_space) = limits_after_setup(highest_fd, mapped, threads);
    set_limit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", fds)?;
    set_limit(libc::RLIMIT_AS, "RLIMIT_AS", address_space)?;
    if cfg.seccomp {
        vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, seccomp::on_sigsys)
            .map_err(|e| SandboxError::Handler(e.to_string()))?;
    }
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers and changes only this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    if let Some(policy) = &cfg.fs {
        if landlock::restrict(policy)? == landlock::Enforced::Not {
            static ONCE: Once = Once::new();
            ONCE.call_once(|| {
                log::warn!(
                    "Landlock is not available on this kernel: file access is not restricted"
                )
            });
        }
    }
    if let Some(TestHook::Open(path)) = &cfg.test_hook {
        let result = match std::fs::File::open(path) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        eprintln!("amivm: sandbox test: open {}: {result}", path.display());
    }
    Ok(())
}

/// Per-thread step: the calling thread takes `role`'s seccomp filter (when enabled).
pub fn enter_thread(cfg: &SandboxConfig, role: Role) -> Result<(), SandboxError> {
    ROLE.with(|r| r.set(role));
    if !cfg.seccomp {
        return Ok(());
    }
    let progs = seccomp::filters(role).map_err(|source| SandboxError::Filter {
        role: role.name(),
        source,
    })?;
    for prog in &progs {
        seccompiler::apply_filter(prog).map_err(|source| SandboxError::Install {
            role: role.name(),
            source,
        })?;
    }
    if role == Role::Vcpu && cfg.test_hook == Some(TestHook::VcpuSyscall) {
        // SAFETY: socket(2) with constant arguments; the filter traps it before it runs.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_leave_room_above_what_setup_used() {
        let (fds, aspace) = limits_after_setup(20, 1 << 30, 3);
        assert_eq!(fds, 21 + EXTRA_FDS);
        assert_eq!(
            aspace,
            (1 << 30) + EXTRA_ADDRESS_SPACE + 3 * PER_THREAD_ADDRESS_SPACE
        );
        assert_eq!(limits_after_setup(0, u64::MAX, u64::MAX).1, u64::MAX);
    }
}
