//! Per-thread seccomp allowlists (pure: which system calls each VMM thread may make, compiled to
//! BPF with `seccompiler`), and the SIGSYS handler that reports a denied call before the process
//! ends.
//!
//! The lists were taken from `strace -f` of `amivm boot` and `amivm run` with the test guest
//! (console, virtio-blk over raw, overlay and snapshot-view drives), plus what the Rust runtime
//! does when a thread ends. A call outside its thread's list traps (`SECCOMP_RET_TRAP`): the
//! handler writes one line naming the thread and the call's number, then exits with
//! [`SECCOMP_EXIT_CODE`].

use super::Role;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::convert::TryFrom;

/// Exit status of a VM process stopped because a thread made a forbidden system call: the
/// VMM itself failed (the README's code 125).
pub const SECCOMP_EXIT_CODE: i32 = 125;

/// The KVM ioctl type number (`KVMIO`, linux/kvm.h).
const KVMIO: u32 = 0xAE;
vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
vmm_sys_util::ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_bindings::kvm_translation);
/// Terminal ioctls (asm-generic/ioctls.h): the main thread restores the console's terminal mode.
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;

/// Every thread: memory, futexes, signals, time, and the calls a Rust thread makes as it ends.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
];

/// The device thread: the event loop and block I/O on files that are already open, plus opening
/// the store's chunk files read-only (a snapshot view opens chunks as the guest reads them).
const DEVICE: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    // virtio-net: arming the metadata endpoint's timer (a timerfd created before the sandbox).
    libc::SYS_timerfd_settime,
];

/// The console thread: polls stdin and forwards keys.
const CONSOLE: &[i64] = &[libc::SYS_poll, libc::SYS_ppoll];

/// The main thread once the guest runs: it waits for events, kicks and joins vCPU threads,
/// flushes the drives, restores the terminal, and (for `amivm run`) commits the instance record
/// to the store, which needs ordinary file calls inside the directories Landlock allows.
const MAIN: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_readlink,
    libc::SYS_getdents64,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_ftruncate,
    libc::SYS_fchmod,
    libc::SYS_flock,
    libc::SYS_fcntl,
    libc::SYS_fallocate,
    libc::SYS_getcwd,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_kill,
    libc::SYS_prctl,
    libc::SYS_uname,
    // virtio-net: the metadata endpoint's timer (a timerfd created before the sandbox).
    libc::SYS_timerfd_settime,
    // Store commits fsync on short-lived threads (src/store/fsio.rs): a new thread's start-up.
    // `clone` itself is allowed only for threads (see `filter`); `clone3` passes this filter but
    // gets ENOSYS from a second one, so glibc falls back to `clone`, whose flags BPF can see.
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
];

/// The system calls `role` may make (arguments aside: see [`ioctl_rules`] and [`open_rules`]).
pub fn allowed(role: Role) -> Vec<i64> {
    let extra: &[i64] = match role {
        Role::Vcpu => &[],
        Role::Device => DEVICE,
        Role::Console => CONSOLE,
        Role::Main => MAIN,
    };
    let mut v: Vec<i64> = COMMON.iter().chain(extra).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, seccompiler::Error> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

fn eq_rule(arg: u8, value: u64) -> Result<SeccompRule, seccompiler::Error> {
    Ok(SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, value)?])?)
}

/// The ioctls `role` may make, by request number: vCPUs run and report a crash; the main thread
/// restores the terminal. No thread may create VMs, vCPUs, or change memory once the guest runs.
pub fn ioctl_requests(role: Role) -> Vec<u64> {
    match role {
        Role::Vcpu => vec![KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS(), KVM_TRANSLATE()],
        Role::Main | Role::Console => vec![TCGETS, TCSETS],
        Role::Device => vec![],
    }
}

/// Build the filters of `role`, to be installed in order: for the main thread, one that answers
/// `clone3` with ENOSYS (when filters stack the kernel takes the strictest answer, so ENOSYS beats
/// the allowlist's ALLOW); then its allowlist (`SECCOMP_RET_TRAP` on any other call, `seccomp(2)`
/// included, hence last).
pub fn filters(role: Role) -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let mut progs = vec![];
    if role == Role::Main {
        let nosys = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, vec![])]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )?;
        progs.push(BpfProgram::try_from(nosys).map_err(seccompiler::Error::Backend)?);
    }
    progs.push(filter(role)?);
    Ok(progs)
}

/// Build the allowlist filter of `role` (`SECCOMP_RET_TRAP` on any other call).
fn filter(role: Role) -> Result<BpfProgram, seccompiler::Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed(role).into_iter().map(|nr| (nr, vec![])).collect();
    let ioctls = ioctl_requests(role)
        .into_iter()
        .map(|req| eq_rule(1, req))
        .collect::<Result<Vec<_>, _>>()?;
    if !ioctls.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctls);
    }
    if let std::collections::btree_map::Entry::Vacant(e) = rules.entry(libc::SYS_fcntl) {
        // fcntl(fd, F_GETFD) only: std, built with debug assertions (`cargo build`), checks
        // that a descriptor is still open when it closes it (a vCPU thread's at its end).
        e.insert(vec![eq_rule(1, libc::F_GETFD as u64)?]);
    }
    if role == Role::Main {
        // clone(flags, ...): threads of this process only (CLONE_THREAD set): no new processes.
        let thread = SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )?])?;
        rules.insert(libc::SYS_clone, vec![thread]);
    }
    if role == Role::Device {
        // openat(dirfd, path, flags): read-only opens only ((flags & O_ACCMODE) == O_RDONLY).
        let ro = SeccompRule::new(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::O_ACCMODE as u64),
            libc::O_RDONLY as u64,
        )?])?;
        rules.insert(libc::SYS_openat, vec![ro]);
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    BpfProgram::try_from(f).map_err(seccompiler::Error::Backend)
}

/// Write `n` in decimal into `buf`, returning the digits (no allocation: signal-handler safe).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The line the SIGSYS handler prints, assembled in `out` without allocating.
pub fn denial_line(role: Role, syscall: u64, out: &mut [u8; 160]) -> &[u8] {
    let mut digits = [0u8; 20];
    let parts: [&[u8]; 5] = [
        b"amivm: seccomp: the ",
        role.name().as_bytes(),
        b" thread made a forbidden system call (number ",
        decimal(syscall, &mut digits),
        b"); the VM process is stopped (exit 125; --no-seccomp disables the filters)\n",
    ];
    let mut n = 0;
    for p in parts {
        let take = p.len().min(out.len() - n);
        out[n..n + take].copy_from_slice(&p[..take]);
        n += take;
    }
    &out[..n]
}

/// SIGSYS handler: report the denied call in one line on stderr, then end the process.
pub extern "C" fn on_sigsys(
    _num: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // si_syscall sits after si_signo, si_errno, si_code (3 ints), one pointer (si_call_addr)
    // and is an int (siginfo.h, _sigsys); libc does not expose the field for x86_64.
    const SI_SYSCALL_OFFSET: usize = 3 * 4 + 4 + 8;
    let nr = if info.is_null() {
        u64::MAX
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; for SIGSYS from
        // seccomp the _sigsys member is the active one, and the offset is within the struct.
        unsafe { *((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32) as u64 }
    };
    let mut buf = [0u8; 160];
    let line = denial_line(super::current_role(), nr, &mut buf);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer lives on this stack.
    unsafe {
        libc::write(2, line.as_ptr() as *const libc::c_void, line.len());
        libc::_exit(SECCOMP_EXIT_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_compiles_to_bpf() {
        for role in Role::ALL {
            assert_eq!(
                filters(role).unwrap().len(),
                if role == Role::Main { 2 } else { 1 }
            );
            let prog = filter(role).unwrap();
            assert!(!prog.is_empty(), "{role:?}");
            // BPF programs are limited to 4096 instructions (BPF_MAXINSNS).
            assert!(prog.len() < 4096, "{role:?}: {} instructions", prog.len());
        }
    }

    #[test]
    fn vcpus_may_run_but_not_open_files_or_exec() {
        let v = allowed(Role::Vcpu);
        for nr in [
            libc::SYS_ioctl,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_socket,
        ] {
            assert!(!v.contains(&nr), "vCPU list has {nr}");
        }
        assert!(
            ioctl_requests(Role::Vcpu).contains(&0xAE80),
            "KVM_RUN is _IO(0xAE, 0x80)"
        );
    }

    #[test]
    fn no_thread_may_exec_fork_or_use_the_network() {
        for role in Role::ALL {
            let v = allowed(role);
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_setuid,
            ] {
                assert!(!v.contains(&nr), "{role:?} allows {nr}");
            }
        }
    }

    #[test]
    fn only_the_main_thread_may_start_threads_and_never_processes() {
        for role in Role::ALL {
            assert_eq!(
                allowed(role).contains(&libc::SYS_clone3),
                role == Role::Main,
                "{role:?}"
            );
            assert!(
                !allowed(role).contains(&libc::SYS_clone),
                "clone is argument-checked"
            );
        }
    }

    #[test]
    fn denial_line_names_the_thread_and_number() {
        let mut buf = [0u8; 160];
        let line = denial_line(Role::Vcpu, 59, &mut buf);
        let s = std::str::from_utf8(line).unwrap();
        assert!(s.starts_with(
            "amivm: seccomp: the vCPU thread made a forbidden system call (number 59)"
        ));
        assert!(s.ends_with('\n'));
        let mut d = [0u8; 20];
        assert_eq!(decimal(0, &mut d), b"0");
        assert_eq!(decimal(u64::MAX, &mut d), b"18446744073709551615");
    }
}
