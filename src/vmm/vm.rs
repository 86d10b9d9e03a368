//! The virtual machine: `Vmm::new(VmConfig)` builds it (KVM, memory, boot path, devices,
//! vCPUs); `run()` runs it to a [`VmExit`].

use super::blockdevs::{self, BlockDrive, Events};
use super::boot::{self, cmdline, BootProtocol};
use super::console::{spawn_stdin_forwarder, RawTerminal};
use super::devices::acpi::{Ged, PowerManagement};
use super::devices::bus::{Bus, SharedDevice};
use super::devices::exit_port::{ExitPort, EXIT_PORT, EXIT_PORT_SIZE};
use super::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_SPAN};
use super::devices::serial::{ConsoleSink, SerialDevice, COM1_GSI, COM1_PORT, COM1_PORT_SPAN};
use super::devices::virtio::net_mmio::MmioNetDevice;
use super::devices::virtio::MmioBlockDevice;
use super::events::{CrashReason, EventSink, VmEvent};
use super::layout::{ACPI_PM_PORT, ACPI_PM_PORT_SPAN, GED_GSI, GED_PORT, GED_PORT_SPAN};
use super::netdev::{self, NetworkDevice};
use super::platform::{Board, DeviceDiscovery};
use super::sandbox::{self, Role, SandboxConfig};
use super::shell::VmShell;
use super::vcpu::{create_vcpu, run_vcpu, VcpuContext};
use super::x86_64::{cpuid, mptable};
use super::VmmError;
use crate::files;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use regex::Regex;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// ISA IRQ of the i8042 keyboard.
const KBD_GSI: u32 = 1;
/// How often the main thread looks at host signals while waiting for the guest.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long to keep kicking vCPU threads out of KVM_RUN before giving up on joining them.
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// Console wiring.
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    /// Copy guest output to stdout.
    pub stdout: bool,
    /// Also append it to this file.
    pub log: Option<PathBuf>,
    /// Forward a terminal on stdin to the guest (raw mode).
    pub stdin: bool,
    /// End the VM successfully once the console matches.
    pub expect: Option<Regex>,
}

/// Everything needed to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The full kernel command line (device fragments are appended by the VMM).
    pub cmdline: String,
    pub protocol: BootProtocol,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub timeout: Option<Duration>,
    pub console: ConsoleConfig,
    /// On SIGTERM/SIGINT: ask the guest to shut down (the ACPI power button with `acpi`
    /// discovery, else Ctrl-Alt-Del) and give it this long before stopping it. `None` stops
    /// at once.
    pub stop_grace: Option<Duration>,
    /// What the process may still do once the guest runs (seccomp, Landlock).
    pub sandbox: SandboxConfig,
    /// How the kernel learns about the devices (and how the host asks it to shut down).
    pub discovery: DeviceDiscovery,
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmExit {
    /// Power-off (ACPI S5), reset, or exit port 0.
    Stopped,
    /// Exit port with a non-zero value.
    ExitCode(u8),
    /// `--timeout` expired.
    Timeout,
    /// The guest crashed.
    Crashed(CrashReason),
    /// The console matched `--expect`.
    ExpectMatched,
    /// Stopped from the host (Ctrl-A x, SIGINT, SIGTERM).
    UserStop,
    /// The VMM failed while the guest ran.
    VmmFailed(String),
}

/// Set by the SIGTERM/SIGINT handler.
static HOST_STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_host_stop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    HOST_STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Whether the host CPU has hardware virtualisation (VT-x or AMD-V). Without it, KVM here is
/// PVM and runs ordinary guests through its instruction emulator.
pub fn host_has_hardware_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

/// A built VM, ready to run.
pub struct Vmm {
    _kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    events: EventSink,
    rx: Receiver<VmEvent>,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    ged: Arc<Mutex<Ged>>,
    device_events: Option<Events>,
    has_drives: bool,
    block_devices: Vec<Arc<Mutex<MmioBlockDevice>>>,
    net_device: Option<Arc<Mutex<MmioNetDevice>>>,
    config: VmConfig,
    /// The boot path's results (entry point, memory map), for diagnostics.
    pub boot: boot::BootSetup,
}

impl Vmm {
    /// Validate the configuration and build the VM with `drives` as virtio block devices
    /// (the first is the root device, `/dev/vda`).
    pub fn new(config: VmConfig, drives: Vec<BlockDrive>) -> Result<Vmm, VmmError> {
        Self::with_network(config, drives, None)
    }

    /// As [`Vmm::new`], with a virtio-net device after the drives when `net` is given.
    pub fn with_network(
        config: VmConfig,
        drives: Vec<BlockDrive>,
        net: Option<NetworkDevice>,
    ) -> Result<Vmm, VmmError> {
        let shell = VmShell::new(config.vcpus, config.mem_mib)?;
        Self::from_shell(shell, config, drives, net)
    }

    /// As [`Vmm::with_network`], on a VM already made by [`VmShell::new`] (while the kernel
    /// and the drives were still being fetched, say) for the same vCPUs and memory.
    pub fn from_shell(
        shell: VmShell,
        mut config: VmConfig,
        drives: Vec<BlockDrive>,
        net: Option<NetworkDevice>,
    ) -> Result<Vmm, VmmError> {
        if (shell.vcpus, shell.mem_mib) != (config.vcpus, config.mem_mib) {
            return Err(VmmError::Config(format!(
                "the VM was made for {} vCPUs and {} MiB, the configuration asks for {} and {}",
                shell.vcpus, shell.mem_mib, config.vcpus, config.mem_mib
            )));
        }
        let VmShell {
            kvm,
            vm,
            supported,
            mem,
            mem_bytes,
            ..
        } = shell;
        let kerr = |step: &'static str| move |source| VmmError::Kvm { step, source };
        // Block devices; the board says how the kernel learns of every device.
        let board = Board::with_network(drives.len(), net.is_some(), config.discovery)?;
        let net_slot = drives.len();
        let mut mmio = Bus::new();
        let mut device_events = Events::new().map_err(|e| VmmError::Device {
            name: "event manager".into(),
            why: format!("{e:?}"),
        })?;
        let has_drives = !drives.is_empty() || net.is_some();
        let root_ro = drives
            .first()
            .map(|d| d.config.read_only || d.backend.read_only());
        let block_devices = blockdevs::attach(&vm, &mem, &mut mmio, &mut device_events, drives)?;
        config.cmdline = cmdline::with_drives(&config.cmdline, &board.cmdline_fragments(), root_ro);

        let (sig, features) = cpuid::signature_and_features(&supported);
        let dsdt = board.dsdt_body();
        let boot = boot::setup(
            &mem,
            &boot::BootInputs {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
                protocol: config.protocol,
                vcpus: config.vcpus,
                mem_bytes,
                cpu_signature: mptable::CpuSignature {
                    signature: sig,
                    features,
                },
                dsdt: &dsdt,
            },
        )?;

        // Devices.
        let (tx, rx) = channel();
        let events = EventSink::new(tx);
        let mut pio = Bus::new();
        let log = match &config.console.log {
            // A regular file only: open(2) of a FIFO would block until someone reads it.
            Some(p) => Some(
                files::open(p, "serial log", files::REGULAR, files::Mode::AppendCreate)
                    .map_err(|e| VmmError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let net_device = match net {
            Some(dev) => {
                let console_log = log.as_ref().and_then(|f| f.try_clone().ok());
                Some(netdev::attach(
                    &vm,
                    &mem,
                    &mut mmio,
                    &mut device_events,
                    net_slot,
                    dev,
                    console_log,
                )?)
            }
            None => None,
        };
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        vm.register_irqfd(&serial_irq, COM1_GSI)
            .map_err(kerr("KVM_IRQFD (serial)"))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            serial_irq,
            ConsoleSink::new(
                config.console.stdout,
                log,
                config.console.expect.clone(),
                events.clone(),
            ),
        )));
        pio.insert(serial.clone() as SharedDevice, COM1_PORT, COM1_PORT_SPAN)?;
        let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        vm.register_irqfd(&kbd_irq, KBD_GSI)
            .map_err(kerr("KVM_IRQFD (i8042)"))?;
        let i8042 = Arc::new(Mutex::new(I8042::new(events.clone(), Some(kbd_irq))));
        pio.insert(
            i8042.clone() as SharedDevice,
            I8042_DATA_PORT,
            I8042_PORT_SPAN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(ExitPort::new(events.clone()))),
            EXIT_PORT,
            EXIT_PORT_SIZE,
        )?;
        pio.insert(
            Arc::new(Mutex::new(PowerManagement::new(events.clone()))),
            ACPI_PM_PORT,
            ACPI_PM_PORT_SPAN,
        )?;
        let ged_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        vm.register_irqfd(&ged_irq, GED_GSI)
            .map_err(kerr("KVM_IRQFD (GED)"))?;
        let ged = Arc::new(Mutex::new(Ged::new(Some(ged_irq))));
        pio.insert(ged.clone() as SharedDevice, GED_PORT, GED_PORT_SPAN)?;

        let opts = cpuid::CpuidOptions {
            hide_emulator_gaps: !host_has_hardware_virt(),
        };
        let vcpus = (0..config.vcpus)
            .map(|id| create_vcpu(&vm, id, config.vcpus, &supported, opts, boot.entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vmm {
            _kvm: kvm,
            vm,
            mem,
            vcpus,
            pio,
            mmio,
            events,
            rx,
            serial,
            i8042,
            ged,
            device_events: Some(device_events),
            net_device,
            has_drives,
            block_devices,
            config,
            boot,
        })
    }

    /// The network device, if the VM has one (its counters, whether its backend was lost).
    pub fn network(&self) -> Option<&Arc<Mutex<MmioNetDevice>>> {
        self.net_device.as_ref()
    }

    /// The VM's file descriptor, for devices that register ioeventfds and irqfds.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Guest memory, for devices that do DMA.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The kernel command line the guest gets (with the device arguments).
    pub fn cmdline(&self) -> &str {
        &self.config.cmdline
    }

    /// Run the guest until it ends, the timeout expires or the host stops it.
    pub fn run(&mut self) -> Result<VmExit, VmmError> {
        register_signal_handler(SIGRTMIN(), on_kick)
            .map_err(|e| VmmError::Signal(e.to_string()))?;
        for sig in [libc::SIGTERM, libc::SIGINT] {
            register_signal_handler(sig, on_host_stop)
                .map_err(|e| VmmError::Signal(e.to_string()))?;
        }
        // Before any VM thread starts: they inherit the Landlock view and no_new_privs.
        let threads = self.vcpus.len() as u64 + 2;
        sandbox::enter_process(&self.config.sandbox, threads)
            .map_err(|e| VmmError::Config(e.to_string()))?;
        let _raw = if self.config.console.stdin {
            RawTerminal::enable()
        } else {
            None
        };
        if _raw.is_some() {
            spawn_stdin_forwarder(
                self.serial.clone(),
                self.events.clone(),
                self.config.sandbox.clone(),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let event_thread = match self.device_events.take().filter(|_| self.has_drives) {
            Some(ev) => Some(
                blockdevs::spawn_event_thread(ev, self.events.clone(), self.config.sandbox.clone())
                    .map_err(|source| VmmError::Io {
                        what: "cannot start the device thread".into(),
                        source,
                    })?,
            ),
            None => None,
        };
        for (id, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let ctx = VcpuContext {
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                events: self.events.clone(),
                stop: stop.clone(),
                mem: self.mem.clone(),
            };
            let sandbox_cfg = self.config.sandbox.clone();
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let sink = ctx.events.clone();
                    if let Err(e) = sandbox::enter_thread(&sandbox_cfg, Role::Vcpu) {
                        sink.send(VmEvent::VmmError(e.to_string()));
                        return;
                    }
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_vcpu(vcpu, id as u32, ctx)
                    }));
                    if ran.is_err() {
                        sink.send(VmEvent::VmmError(format!(
                            "vCPU {id} thread failed (panicked)"
                        )));
                    }
                })
                .map_err(|source| VmmError::Io {
                    what: "cannot start a vCPU thread".into(),
                    source,
                })?;
            threads.push(h);
        }
        // The main thread's own filter comes last: a thread inherits its creator's filter.
        let exit = match sandbox::enter_thread(&self.config.sandbox, Role::Main) {
            Ok(()) => self.wait(),
            Err(e) => VmExit::VmmFailed(e.to_string()),
        };
        stop.store(true, Ordering::Release);
        let t0 = Instant::now();
        while threads.iter().any(|h| !h.is_finished()) && t0.elapsed() < STOP_DEADLINE {
            for h in threads.iter().filter(|h| !h.is_finished()) {
                // SAFETY: the pthread_t belongs to a thread we spawned and have not joined, so
                // it is still valid; the signal has a no-op handler installed above.
                unsafe { libc::pthread_kill(h.as_pthread_t(), SIGRTMIN()) };
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        for h in threads.into_iter().filter(|h| h.is_finished()) {
            let _ = h.join();
        }
        // The device thread finishes the request it is serving, then sees `stop`.
        if let Some(t) = event_thread {
            t.stop();
        }
        let exit = match (blockdevs::flush_all(&self.block_devices), exit) {
            (
                Err(why),
                VmExit::Stopped | VmExit::ExitCode(_) | VmExit::ExpectMatched | VmExit::Timeout,
            ) => VmExit::VmmFailed(why),
            (Err(why), other) => {
                log::error!("{why}");
                other
            }
            (Ok(()), other) => other,
        };
        use std::io::Write;
        let _ = crate::sync::relock(&self.serial).0.writer_mut().flush();
        Ok(exit)
    }

    /// The host's stop request: the ACPI power button for guests that discover devices
    /// through ACPI, Ctrl-Alt-Del on the i8042 for the others.
    fn ask_guest_to_shut_down(&self) {
        match self.config.discovery {
            DeviceDiscovery::Acpi => crate::sync::relock(&self.ged).press_power_button(),
            DeviceDiscovery::Cmdline => crate::sync::relock(&self.i8042).ctrl_alt_del(),
        }
    }

    fn wait(&self) -> VmExit {
        // A deadline past what the clock can represent is no deadline.
        let deadline = self
            .config
            .timeout
            .and_then(|t| Instant::now().checked_add(t));
        let mut grace_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return VmExit::Timeout;
            }
            if grace_until.is_some_and(|g| now >= g) {
                return VmExit::UserStop;
            }
            if HOST_STOP.swap(false, Ordering::SeqCst) {
                match (self.config.stop_grace, grace_until) {
                    (Some(g), None) => {
                        self.ask_guest_to_shut_down();
                        grace_until = Some(now + g);
                    }
                    _ => return VmExit::UserStop,
                }
            }
            let slice = deadline.map_or(POLL_INTERVAL, |d| {
                d.saturating_duration_since(now).min(POLL_INTERVAL)
            });
            match self.rx.recv_timeout(slice) {
                Ok(ev) => {
                    return match ev {
                        VmEvent::Reset | VmEvent::PowerOff => VmExit::Stopped,
                        VmEvent::ExitPort(0) => VmExit::Stopped,
                        VmEvent::ExitPort(n) => VmExit::ExitCode(n),
                        VmEvent::Crash(c) => VmExit::Crashed(c),
                        VmEvent::ExpectMatched => VmExit::ExpectMatched,
                        VmEvent::VmmError(e) => VmExit::VmmFailed(e),
                        VmEvent::UserStop => VmExit::UserStop,
                    }
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return VmExit::VmmFailed("event channel closed".into())
                }
            }
        }
    }
}
