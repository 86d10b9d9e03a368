//! `amivm boot`: boot a kernel directly, with no image store involved.

use super::exit;
use crate::vmm::boot::{cmdline, BootProtocol};
use crate::vmm::devices::virtio::BlockConfig;
use crate::vmm::sandbox::{FsPolicy, SandboxConfig, TestHook};
use crate::vmm::{BlockDrive, ConsoleConfig, VmConfig, VmExit, Vmm};
use crate::volume::DriveSpec;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(after_help = exit::EXIT_CODE_HELP)]
pub struct BootArgs {
    /// Kernel to boot: an ELF vmlinux (64-bit Linux boot protocol, or PVH) or a bzImage.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// Initial ramdisk, placed high in memory below 3 GiB.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Replace the default kernel command line.
    #[arg(
        long,
        value_name = "ARGS",
        conflicts_with = "append",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,
    /// Add to the default kernel command line.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub vcpus: u32,
    /// Guest memory in MiB (mapped lazily: only what the guest touches is used).
    #[arg(long, default_value_t = 128, value_name = "MIB")]
    pub memory: u64,
    /// Stop the VM and exit 124 after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Also write the guest's serial console to this file (appended).
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// A virtio block device: path=FILE[,ro][,overlay=FILE][,id=NAME]. Repeatable; the first is
    /// the root device /dev/vda (root=/dev/vda is added unless the command line sets root=).
    /// With overlay=, FILE is never written: writes go to the overlay file.
    #[arg(long, value_name = "SPEC", value_parser = super::drive::parse_drive)]
    pub drive: Vec<DriveSpec>,
    /// Entry protocol: linux (64-bit boot protocol, zero page) or pvh (ELF with a PVH note).
    #[arg(long, value_enum, default_value_t = BootProtocol::Linux)]
    pub boot_protocol: BootProtocol,
    /// Run without the per-thread seccomp filters (for debugging a denied system call; for
    /// instances set AMIVM_NO_SECCOMP=1).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Test-only probes of the sandbox: `vcpu-syscall` or `open:PATH`.
    #[arg(long, hide = true, value_name = "HOOK", value_parser = parse_test_hook)]
    pub x_sandbox_test: Option<TestHook>,
}

/// Parse the hidden `--x-sandbox-test` value.
fn parse_test_hook(s: &str) -> Result<TestHook, String> {
    match s.split_once(':') {
        None if s == "vcpu-syscall" => Ok(TestHook::VcpuSyscall),
        Some(("open", path)) => Ok(TestHook::Open(path.into())),
        _ => Err(format!("unknown sandbox test '{s}'")),
    }
}

/// Parse `--timeout` seconds.
pub fn timeout_from(secs: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => anyhow::bail!("--timeout {s} must be a positive number of seconds"),
    }
}

/// Turn a VM's end into the process exit code, printing the one-line reason on stderr.
pub fn report_exit(exit: &VmExit) -> i32 {
    match exit {
        VmExit::Stopped => exit::GUEST_STOPPED,
        VmExit::ExpectMatched => {
            eprintln!("amivm: console matched --expect; VM stopped");
            exit::GUEST_STOPPED
        }
        VmExit::ExitCode(n) => {
            eprintln!("amivm: guest exited with status {n} through the exit port");
            *n as i32
        }
        VmExit::Timeout => {
            eprintln!("amivm: timeout expired; VM stopped");
            exit::TIMEOUT
        }
        VmExit::Crashed(reason) => {
            eprintln!("amivm: guest crashed: {reason}");
            exit::GUEST_CRASHED
        }
        VmExit::UserStop => {
            eprintln!("amivm: VM stopped from the host");
            exit::HOST_STOPPED
        }
        VmExit::VmmFailed(why) => {
            eprintln!("amivm: error: {why}");
            exit::AMIVM_FAILED
        }
    }
}

/// Open each `--drive` as a block backend.
pub fn open_drives(specs: &[DriveSpec]) -> anyhow::Result<Vec<BlockDrive>> {
    specs
        .iter()
        .map(|d| {
            let backend = d
                .open()
                .with_context(|| format!("cannot open drive {}", d.path.display()))?;
            Ok(BlockDrive {
                config: BlockConfig {
                    read_only: d.read_only,
                    serial: backend.serial(),
                },
                backend,
            })
        })
        .collect()
}

pub fn run(args: BootArgs) -> anyhow::Result<i32> {
    let cmdline = cmdline::compose(args.cmdline.as_deref(), args.append.as_deref(), &[]);
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline,
        protocol: args.boot_protocol,
        vcpus: args.vcpus,
        mem_mib: args.memory,
        timeout: timeout_from(args.timeout)?,
        console: ConsoleConfig {
            stdout: true,
            log: args.serial_log,
            stdin: true,
            expect: None,
        },
        stop_grace: None,
        // Once the guest runs, every file it needs is open: nothing stays reachable by path.
        sandbox: SandboxConfig {
            seccomp: crate::vmm::sandbox::seccomp_wanted(args.no_seccomp),
            fs: Some(FsPolicy::default()),
            test_hook: args.x_sandbox_test,
        },
    };
    let drives = open_drives(&args.drive)?;
    let mut vmm = Vmm::new(config, drives).context("cannot start the VM")?;
    let exit = vmm.run().context("VM failed")?;
    // The process exits next and the kernel frees the VM with it; unmapping guest memory first,
    // while the VM still exists, costs ~18 ms of MMU-notifier work under KVM for nothing.
    std::mem::forget(vmm);
    Ok(report_exit(&exit))
}
