//! `--jail`: the VM process in its own mount, PID and IPC namespaces, with a root file system
//! holding only what it still needs, and without root's identity.
//!
//! Order of operations (after Firecracker's jailer, adapted to a VMM that opens its own files):
//! 1. [`spawn`]: the amivm process clones the VM process into new mount, PID and IPC namespaces
//!    (plus a user namespace when amivm is not root, with the caller's uid and gid mapped to
//!    themselves). The VM process is PID 1 of its namespace and dies with its parent
//!    (`PR_SET_PDEATHSIG`). The parent stays outside: it holds the instance's run lock, is the
//!    process `ps` lists and `stop` signals (it relays SIGTERM and SIGINT), and commits the
//!    instance record when the VM ends.
//! 2. The VM process opens everything as before: kernel, initrd, volumes and overlays, the
//!    console log, /dev/kvm, and builds the VM.
//! 3. [`enter`] (from the sandbox, before any VM thread starts): every mount made private, a
//!    fresh tmpfs as the new root (`pivot_root`, the old root detached), into which only
//!    [`JailConfig::read_only`] is bind-mounted read-only at its own path (an instance's store,
//!    whose chunks snapshot views open as the guest reads them; nothing for `amivm boot`). The
//!    kernel, volumes and /dev/kvm need no path: they are open already.
//! 4. Started as root: the supplementary groups cleared, then gid and uid set to
//!    [`JailConfig::gid`]/[`JailConfig::uid`] (default 65534, Debian's `nobody`/`nogroup`). Every
//!    capability is dropped, except `CAP_DAC_READ_SEARCH` where the store must stay readable
//!    (its files are private to root). In a user namespace all capabilities are dropped.
//! 5. The sandbox goes on as without the jail: resource limits, `no_new_privs`, Landlock,
//!    seccomp per thread.

pub mod spawn;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use spawn::{spawn, JailedVm, Report};

/// Debian's `nobody` user and `nogroup` group (base-passwd), the default ids of a jail started
/// as root.
pub const NOBODY: u32 = 65534;

/// Where the new root's tmpfs is mounted before `pivot_root`: any directory that exists on every
/// Linux host; the mount is private to the VM process's mount namespace and hides nothing from
/// anyone else.
const NEW_ROOT: &str = "/tmp";

/// Size of the new root's tmpfs: it holds only the empty directories the bind mounts need.
const ROOT_TMPFS_OPTIONS: &str = "size=64k,mode=0755";

/// The jail of one VM process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The uid to run as when started as root.
    pub uid: u32,
    /// The gid to run as when started as root.
    pub gid: u32,
    /// Trees that stay visible, read-only, at their own paths.
    pub read_only: Vec<PathBuf>,
    /// Keep `CAP_DAC_READ_SEARCH` after dropping root (to read a store private to root).
    pub keep_read_search: bool,
    /// Whether the VM process is in a user namespace (set by [`spawn`] in the child).
    pub in_user_ns: bool,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            uid: NOBODY,
            gid: NOBODY,
            read_only: Vec::new(),
            keep_read_search: false,
            in_user_ns: false,
        }
    }
}

/// Errors setting up the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: cannot {what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: {0}")]
    Protocol(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// `ret` of a libc call: `Ok` when not -1, else the OS error naming `what`.
fn check(ret: libc::c_int, what: &str) -> Result<(), JailError> {
    if ret == -1 {
        Err(JailError::Sys {
            what: what.to_string(),
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| JailError::Protocol(format!("path {} contains a NUL byte", p.display())))
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let what = format!("mount {}", target.display());
    let src = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|s| CString::new(s).expect("constant without NUL"));
    let data = data.map(|s| CString::new(s).expect("constant without NUL"));
    // SAFETY: every pointer is a valid NUL-terminated string we own or null, as mount(2) allows.
    let ret = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    };
    check(ret, &what)
}

/// The mount flags a read-only remount of the bind mount of `path` must keep: in a user
/// namespace the kernel refuses to clear the locked ones (nosuid, nodev, noexec, atime).
fn locked_flags(path: &Path) -> libc::c_ulong {
    let Ok(st) = rustix::fs::statvfs(path) else {
        return 0;
    };
    let f = st.f_flag;
    use rustix::fs::StatVfsMountFlags as S;
    [
        (S::NOSUID, libc::MS_NOSUID),
        (S::NODEV, libc::MS_NODEV),
        (S::NOEXEC, libc::MS_NOEXEC),
        (S::NOATIME, libc::MS_NOATIME),
        (S::NODIRATIME, libc::MS_NODIRATIME),
        (S::RELATIME, libc::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(s, _)| f.contains(*s))
    .fold(0, |acc, (_, m)| acc | m)
}

/// Steps 3 and 4 of the module comment, in the VM process, before any VM thread starts.
pub fn enter(cfg: &JailConfig) -> Result<(), JailError> {
    // Pin what stays visible before the new root hides it (it may live under NEW_ROOT).
    let keep: Vec<(PathBuf, OwnedFd)> = cfg
        .read_only
        .iter()
        .map(|p| {
            let fd = rustix::fs::open(
                p,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| sys(format!("open {}", p.display()))(e.into()))?;
            Ok((p.clone(), fd))
        })
        .collect::<Result<_, JailError>>()?;
    let root = Path::new(NEW_ROOT);
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(ROOT_TMPFS_OPTIONS),
    )?;
    for (path, fd) in &keep {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let target = root.join(rel);
        let is_dir = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|m| m.is_dir())
            .unwrap_or(true);
        if is_dir {
            std::fs::create_dir_all(&target)
                .map_err(sys(format!("create {}", target.display())))?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(sys(format!("create {}", parent.display())))?;
            }
            std::fs::File::create(&target).map_err(sys(format!("create {}", target.display())))?;
        }
        let src = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        mount(
            Some(&src),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked_flags(&target);
        mount(None, &target, None, flags, None)?;
    }
    drop(keep);
    std::env::set_current_dir(root).map_err(sys("enter the new root"))?;
    let dot = CString::new(".").expect("constant without NUL");
    // SAFETY: pivot_root(".", ".") stacks the old root under the new one (pivot_root(2),
    // "NOTES"); both arguments are valid strings.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check(ret as libc::c_int, "pivot_root")?;
    // SAFETY: umount2 of "." with MNT_DETACH takes a valid string.
    let ret = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check(ret, "detach the old root")?;
    std::env::set_current_dir("/").map_err(sys("enter /"))?;
    // The new root itself read-only: nothing in the jail can create files.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )
    .or_else(|_| {
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(ROOT_TMPFS_OPTIONS),
        )
    })?;
    drop_identity(cfg)
}

/// Step 4: ids and capabilities.
fn drop_identity(cfg: &JailConfig) -> Result<(), JailError> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let keep = if cfg.keep_read_search && !cfg.in_user_ns {
        CapabilitySet::DAC_READ_SEARCH
    } else {
        CapabilitySet::empty()
    };
    // SAFETY: getuid takes no arguments.
    if !cfg.in_user_ns && unsafe { libc::geteuid() } == 0 {
        rustix::thread::set_keep_capabilities(true)
            .map_err(|e| sys("keep capabilities")(e.into()))?;
        // SAFETY: setgroups with a count of 0 and a null list clears the supplementary groups.
        let ret = unsafe { libc::setgroups(0, std::ptr::null()) };
        check(ret, "clear the groups")?;
        // SAFETY: setresgid/setresuid take plain ids; glibc applies them to every thread (there
        // is one).
        let ret = unsafe { libc::setresgid(cfg.gid, cfg.gid, cfg.gid) };
        check(ret, &format!("set gid {}", cfg.gid))?;
        // SAFETY: as above.
        let ret = unsafe { libc::setresuid(cfg.uid, cfg.uid, cfg.uid) };
        check(ret, &format!("set uid {}", cfg.uid))?;
        rustix::thread::set_keep_capabilities(false)
            .map_err(|e| sys("stop keeping capabilities")(e.into()))?;
    }
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| sys("drop capabilities")(e.into()))
}

/// The entries of `/` as the VM process sees it (the hidden `--x-sandbox-test list-root`).
pub fn list_root() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}
