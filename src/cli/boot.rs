//! `amivm boot`: boot a kernel directly, with no image store involved.

use super::exit;
use crate::vmm::boot::{cmdline, BootProtocol};
use crate::vmm::devices::virtio::BlockConfig;
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
    /// Stop the VM and exit 124 after this many seconds (a positive number, at most
    /// 3153600000, i.e. 100 years).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Also write the guest's serial console to this file (appended; a regular file, created if
    /// missing).
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// A virtio block device: path=FILE[,ro][,overlay=FILE][,id=NAME]. Repeatable; the first is
    /// the root device /dev/vda (root=/dev/vda is added unless the command line sets root=).
    /// With overlay=, FILE is never written: writes go to the overlay file. FILE is a regular
    /// file or block device; a file the VM writes is locked against other VMs while it runs.
    #[arg(long, value_name = "SPEC", value_parser = super::drive::parse_drive)]
    pub drive: Vec<DriveSpec>,
    /// Entry protocol: linux (64-bit boot protocol, zero page) or pvh (ELF with a PVH note).
    #[arg(long, value_enum, default_value_t = BootProtocol::Linux)]
    pub boot_protocol: BootProtocol,
}

/// Longest `--timeout` accepted, in seconds: 100 years of 365 days. Far beyond any real use,
/// and far below where a deadline of `Instant::now()` plus it could overflow.
pub const MAX_TIMEOUT_SECS: u64 = 100 * 365 * 24 * 3600;

/// Check `--timeout` seconds (`boot`, `run`, `start` and the detached `__run-instance`): a
/// positive, finite number up to [`MAX_TIMEOUT_SECS`].
pub fn timeout_from(secs: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_SECS as f64 => {
            Ok(Some(Duration::try_from_secs_f64(s)?))
        }
        Some(s) => anyhow::bail!(
            "--timeout {s} must be a positive number of seconds, at most {MAX_TIMEOUT_SECS} (100 years)"
        ),
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

/// Open each `--drive` as a block backend (volume errors name the file and the step).
pub fn open_drives(specs: &[DriveSpec]) -> anyhow::Result<Vec<BlockDrive>> {
    specs
        .iter()
        .map(|d| {
            let backend = d.open()?;
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
    };
    let drives = open_drives(&args.drive)?;
    let mut vmm = Vmm::new(config, drives).context("cannot start the VM")?;
    let exit = vmm.run().context("VM failed")?;
    // The process exits next and the kernel frees the VM with it; unmapping guest memory first,
    // while the VM still exists, costs ~18 ms of MMU-notifier work under KVM for nothing.
    std::mem::forget(vmm);
    Ok(report_exit(&exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_positive_finite_and_bounded() {
        assert_eq!(timeout_from(None).unwrap(), None);
        assert_eq!(
            timeout_from(Some(1.5)).unwrap(),
            Some(Duration::from_millis(1500))
        );
        let max = MAX_TIMEOUT_SECS as f64;
        assert_eq!(
            timeout_from(Some(max)).unwrap(),
            Some(Duration::from_secs(MAX_TIMEOUT_SECS))
        );
        for bad in [
            0.0,
            -1.0,
            max * 1.000_001,
            1e20,
            18446744073709551615.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            let e = timeout_from(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("must be a positive number"), "{bad}: {e}");
        }
    }
}
