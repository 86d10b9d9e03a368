//! `amivm boot`: boot a kernel directly, with no image store involved.

use super::exit;
use crate::vmm::boot::{cmdline, BootProtocol};
use crate::vmm::devices::virtio::BlockConfig;
use crate::vmm::jail::{self, spawn::Ending, Report};
use crate::vmm::platform::Board;
use crate::vmm::sandbox::{FsPolicy, SandboxConfig, TestHook};
use crate::vmm::x86_64::mptable::MAX_CPUS;
use crate::vmm::{BlockDrive, ConsoleConfig, DeviceDiscovery, VmConfig, VmExit, Vmm};
use crate::volume::DriveSpec;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(after_help = exit::EXIT_CODE_HELP)]
pub struct BootArgs {
    /// Kernel to boot: an ELF vmlinux (64-bit Linux boot protocol, or PVH) or a bzImage.
    #[arg(long, value_name = "FILE", required_unless_present = "dump_acpi")]
    pub kernel: Option<PathBuf>,
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
    /// How the kernel finds the virtio disks: cmdline (virtio_mmio.device= arguments, for
    /// kernels without ACPI) or acpi (DSDT entries, no arguments: Debian's cloud kernel).
    #[arg(long, value_enum, default_value_t = DeviceDiscovery::Cmdline)]
    pub device_discovery: DeviceDiscovery,
    /// On SIGTERM or SIGINT, ask the guest to shut down (the ACPI power button with
    /// --device-discovery acpi, else Ctrl-Alt-Del) and stop the VM only if it is still running
    /// SECS later (a second signal stops it at once). Default: stop at once.
    #[arg(long, value_name = "SECS")]
    pub stop_grace: Option<f64>,
    /// Write the ACPI tables this VM would get to DIR/<SIGNATURE>.dat and exit (for tests).
    #[arg(long, value_name = "DIR", hide = true)]
    pub dump_acpi: Option<PathBuf>,
    /// Run without the per-thread seccomp filters (for debugging a denied system call; for
    /// instances set AMIVM_NO_SECCOMP=1).
    #[arg(long)]
    pub no_seccomp: bool,
    /// The guest's network: none (default for boot), user (rootless, through passt) or
    /// tap:NAME (an existing or new tap device; needs CAP_NET_ADMIN).
    #[arg(long, value_name = "MODE", default_value = "none")]
    pub network: crate::net::NetworkSpec,
    /// Forward a host port to the guest with --network user: [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]
    /// (repeatable).
    #[arg(long, value_name = "SPEC")]
    pub publish: Vec<crate::net::Publish>,
    /// The guest's MAC address (aa:bb:cc:dd:ee:ff); default: derived from the kernel path.
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub mac: Option<[u8; 6]>,
    /// Do not answer the instance metadata service (169.254.169.254) on the network card;
    /// by default it serves instance-id `i-boot` (see docs/metadata.md).
    #[arg(long)]
    pub no_metadata: bool,
    #[command(flatten)]
    pub jail: super::jail::JailArgs,
    /// Test-only probes of the sandbox: `vcpu-syscall`, `open:PATH` or `list-root`.
    #[arg(long, hide = true, value_name = "HOOK", value_parser = parse_test_hook)]
    pub x_sandbox_test: Option<TestHook>,
}

/// Parse `--mac`.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("{s:?}: expected six hex octets, aa:bb:cc:dd:ee:ff"));
    }
    for (o, p) in mac.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| format!("{s:?}: bad octet {p:?}"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("{s:?}: a multicast address cannot be a card's MAC"));
    }
    Ok(mac)
}

/// The network device `--network`/`--publish` ask for, and the passt process behind it (kept
/// until the VM ends).
pub fn open_network(
    spec: &crate::net::NetworkSpec,
    publish: &[crate::net::Publish],
    mac: [u8; 6],
    metadata: Option<crate::net::imds::MetadataConfig>,
) -> anyhow::Result<(
    Option<crate::vmm::NetworkDevice>,
    Option<std::process::Child>,
)> {
    let opened = crate::net::open::open(spec, publish, None)?;
    let backend = opened.backend;
    let child = opened.passt;
    Ok((
        Some(crate::vmm::NetworkDevice {
            mac,
            backend,
            interceptor: metadata.map(|m| {
                Box::new(crate::vmm::metadata::MetadataInterceptor::new(m, mac))
                    as Box<dyn crate::vmm::devices::virtio::net::FrameInterceptor>
            }),
        }),
        child,
    ))
}

/// Parse the hidden `--x-sandbox-test` value.
fn parse_test_hook(s: &str) -> Result<TestHook, String> {
    match s.split_once(':') {
        None if s == "vcpu-syscall" => Ok(TestHook::VcpuSyscall),
        None if s == "list-root" => Ok(TestHook::ListRoot),
        Some(("open", path)) => Ok(TestHook::Open(path.into())),
        _ => Err(format!("unknown sandbox test '{s}'")),
    }
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

/// `--dump-acpi DIR`: the tables for the VM the other arguments describe, one file each.
fn dump_acpi(args: &BootArgs, dir: &std::path::Path) -> anyhow::Result<i32> {
    if args.vcpus == 0 || args.vcpus > MAX_CPUS {
        anyhow::bail!("--vcpus {} is out of range: 1 to {MAX_CPUS}", args.vcpus);
    }
    let net = args.network != crate::net::NetworkSpec::None || args.mac.is_some();
    let tables = Board::with_network(args.drive.len(), net, args.device_discovery)?
        .acpi_tables(args.vcpus)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in tables.tables() {
        let path = dir.join(format!("{name}.dat"));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(exit::GUEST_STOPPED)
}

pub fn run(args: BootArgs) -> anyhow::Result<i32> {
    if let Some(dir) = &args.dump_acpi {
        return dump_acpi(&args, dir);
    }
    let Some(kernel) = args.kernel else {
        anyhow::bail!("--kernel is required");
    };
    let cmdline = cmdline::compose(args.cmdline.as_deref(), args.append.as_deref(), &[]);
    let config = VmConfig {
        kernel,
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
        // Once the guest runs, every file it needs is open: nothing stays reachable by path.
        sandbox: SandboxConfig {
            seccomp: crate::vmm::sandbox::seccomp_wanted(args.no_seccomp),
            fs: Some(FsPolicy::default()),
            test_hook: args.x_sandbox_test,
            // Nothing stays visible in the jail: every file is open before it is entered.
            jail: args.jail.config(Vec::new()),
        },
        stop_grace: match args.stop_grace {
            Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => anyhow::bail!("--stop-grace {s} must be a number of seconds (0 or more)"),
            None => None,
        },
        discovery: args.device_discovery,
    };
    if !args.publish.is_empty() && args.network != crate::net::NetworkSpec::User {
        anyhow::bail!("--publish needs --network user");
    }
    let mac = args
        .mac
        .unwrap_or_else(|| crate::net::mac_for_instance(&config.kernel.to_string_lossy()));
    // `--network none` with no --mac: no network card at all, as before. passt (or the tap
    // device) is set up out here, before any jail: the VM process gets only its end.
    let (net, passt) = if args.network == crate::net::NetworkSpec::None && args.mac.is_none() {
        (None, None)
    } else {
        let metadata = (!args.no_metadata).then(|| {
            crate::net::imds::MetadataConfig::for_boot(None, crate::net::imds::HttpTokens::Optional)
        });
        open_network(&args.network, &args.publish, mac, metadata)?
    };
    if config.sandbox.jail.is_some() {
        let ended = run_jailed(config, args.drive, net);
        if let Some(mut child) = passt {
            let _ = child.kill();
        }
        return ended;
    }
    let drives = open_drives(&args.drive)?;
    let mut vmm = Vmm::with_network(config, drives, net).context("cannot start the VM")?;
    let exit = vmm.run().context("VM failed")?;
    // passt also ends with us (PR_SET_PDEATHSIG); the sandbox allows kill(2), not wait4(2).
    if let Some(mut child) = passt {
        let _ = child.kill();
    }
    // The process exits next and the kernel frees the VM with it; unmapping guest memory first,
    // while the VM still exists, costs ~18 ms of MMU-notifier work under KVM for nothing.
    std::mem::forget(vmm);
    Ok(report_exit(&exit))
}

/// `boot --jail`: the VM built and run in a jailed child (crate::vmm::jail); this process
/// relays signals and exits as the VM ended.
fn run_jailed(
    config: VmConfig,
    specs: Vec<DriveSpec>,
    net: Option<crate::vmm::NetworkDevice>,
) -> anyhow::Result<i32> {
    let vm = jail::spawn(|in_user_ns, rep| {
        let mut config = config;
        if let Some(j) = &mut config.sandbox.jail {
            j.in_user_ns = in_user_ns;
        }
        let built = open_drives(&specs)
            .and_then(|d| Vmm::with_network(config, d, net).context("cannot start the VM"));
        let mut vmm = match built {
            Ok(v) => v,
            Err(e) => {
                rep.send(&Report::Failed(format!("{e:#}")));
                return exit::AMIVM_FAILED;
            }
        };
        rep.send(&Report::Built);
        match vmm.run() {
            Ok(exit) => rep.send(&Report::Ended(exit)),
            Err(e) => rep.send(&Report::Failed(format!("VM failed: {e}"))),
        }
        // As without the jail: the kernel frees the VM with the process.
        std::mem::forget(vmm);
        exit::GUEST_STOPPED
    })?;
    match jail::spawn::supervise(vm, || Ok::<(), std::convert::Infallible>(())) {
        Ok(Ending::Ended(exit)) => Ok(report_exit(&exit)),
        Ok(Ending::Failed(why)) => anyhow::bail!("{why}"),
        Ok(Ending::Died(status)) => Ok(status),
        Err(never) => match never {},
    }
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
