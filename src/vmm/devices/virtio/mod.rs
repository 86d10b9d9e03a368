//! virtio over the MMIO transport (virtio 1.2, section 4.2) and the virtio-blk device (section 5.2).
//!
//! # Wiring a block device into the VMM
//!
//! ```text
//! let dev = MmioBlockDevice::new(mem.clone(), backend, BlockConfig { read_only, serial })?;
//! vm.register_ioevent(dev.queue_notify_evt(), &IoEventAddress::Mmio(base + NOTIFY_OFFSET), NoDatamatch)?;
//! vm.register_irqfd(dev.interrupt_evt(), gsi)?;
//! let worker = dev.worker();                        // MutEventSubscriber
//! event_manager.add_subscriber(Arc::new(Mutex::new(worker)));
//! mmio_bus.insert(Arc::new(Mutex::new(dev)), base, MMIO_WINDOW_SIZE)?;
//! cmdline.push(cmdline_fragment(base, gsi));
//! // ... when the guest has ended, before the process exits:
//! dev.flush()?;                                     // overlay bitmap + data made durable
//! ```
//! or all at once with [`new_block`], which returns the same pieces in a [`BlockHandles`].
//!
//! # Threads and sharing
//!
//! The register file ([`MmioBlockDevice`], a bus device, called on vCPU threads) and the queue
//! worker ([`BlockWorker`], an event-manager subscriber on the VMM's event thread) share one
//! `Arc<Shared>`:
//! - a `Mutex` over the transport registers, the queue and the block device. The worker holds it
//!   for one pass over the queue; register accesses take it briefly. A Status write of 0 (reset)
//!   therefore waits for the pass in progress and never races with it.
//! - InterruptStatus as an atomic, so that the guest's interrupt handler (read InterruptStatus,
//!   write InterruptACK) never waits for a request in progress. The worker sets bit 0 before it
//!   signals the irqfd.
//! - the two `EventFd`s. A QueueNotify write that reaches the bus (no ioeventfd registered)
//!   signals the notify EventFd itself, so processing always happens on the worker.
//!
//! Unknown registers read as zero and ignore writes; nothing a guest writes can panic the VMM.

pub mod block;
pub mod driver;
pub mod mmio;
pub mod net;
pub mod net_mmio;
pub mod request;
pub mod spec;

use crate::vmm::devices::bus::BusDevice;
use crate::volume::BlockBackend;
use block::{BlockDevice, QUEUE_SIZE_MAX};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use mmio::{MmioTransport, WriteEffect};
use spec::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use spec::{MMIO_WINDOW_SIZE, REG_QUEUE_NOTIFY as NOTIFY_OFFSET};

/// Errors building a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// Creating an EventFd failed.
    #[error("create eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The virtqueue could not be created.
    #[error("create virtqueue: {0}")]
    Queue(String),
}

/// How the guest sees a block device.
#[derive(Debug, Clone, Default)]
pub struct BlockConfig {
    /// Offer BLK_F_RO and refuse writes (also forced when the backend is read-only).
    pub read_only: bool,
    /// GET_ID answer (at most 20 bytes used); empty: the backend's serial.
    pub serial: String,
}

/// State shared by the register file and the queue worker.
pub struct Shared {
    state: Mutex<DeviceState>,
    interrupt_status: AtomicU32,
    notify_evt: EventFd,
    irq_evt: EventFd,
}

struct DeviceState {
    transport: MmioTransport,
    blk: BlockDevice,
    mem: GuestMemoryMmap,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, DeviceState> {
        // A panic elsewhere must not wedge the device: the state stays consistent per register.
        crate::sync::relock(&self.state)
    }

    fn raise(&self, bits: u32) {
        self.interrupt_status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq_evt.write(1) {
            log::warn!("virtio-blk: cannot signal the interrupt: {e}");
        }
    }

    /// One pass over the queue, if the device is live; interrupts the guest as the event-idx
    /// rules require. Returns the number of requests completed.
    fn process(&self) -> usize {
        let mut st = self.lock();
        if !st.transport.is_live() {
            return 0;
        }
        let DeviceState {
            transport,
            blk,
            mem,
            ..
        } = &mut *st;
        match blk.process_queue(mem, transport.queue_mut()) {
            Ok(out) => {
                if out.notify {
                    self.raise(INT_USED_BUFFER);
                }
                if out.more {
                    // Yield to other devices; come back through the event loop.
                    let _ = self.notify_evt.write(1);
                }
                out.completed
            }
            Err(e) => {
                log::warn!("virtio-blk: {e}; the device needs a reset");
                transport.set_needs_reset();
                self.raise(INT_CONFIG_CHANGE);
                0
            }
        }
    }
}

/// A virtio-blk device on the MMIO bus: its register window ([`BusDevice`]), plus the handles
/// the VMM registers with KVM.
pub struct MmioBlockDevice {
    shared: Arc<Shared>,
}

impl MmioBlockDevice {
    /// A block device over `backend`, for a guest whose RAM is `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        backend: Box<dyn BlockBackend>,
        cfg: BlockConfig,
    ) -> Result<Self, VirtioError> {
        let blk = BlockDevice::new(backend, cfg.read_only, &cfg.serial);
        let transport = MmioTransport::new(
            VIRTIO_ID_BLOCK,
            blk.features(),
            blk.config_space(),
            QUEUE_SIZE_MAX,
        )
        .map_err(|e| VirtioError::Queue(e.to_string()))?;
        let shared = Shared {
            state: Mutex::new(DeviceState {
                transport,
                blk,
                mem,
            }),
            interrupt_status: AtomicU32::new(0),
            notify_evt: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
            irq_evt: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
        };
        Ok(MmioBlockDevice {
            shared: Arc::new(shared),
        })
    }

    /// Signalled by the guest's QueueNotify writes: register it as an ioeventfd at
    /// `base + NOTIFY_OFFSET` (no datamatch: there is one queue).
    pub fn queue_notify_evt(&self) -> &EventFd {
        &self.shared.notify_evt
    }

    /// Signalled when the device interrupts the guest: register it as the irqfd of the GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.shared.irq_evt
    }

    /// The queue worker, to add to the VMM's event manager.
    pub fn worker(&self) -> BlockWorker {
        BlockWorker {
            shared: self.shared.clone(),
        }
    }

    /// Serve the queue now, on this thread (tests and benchmarks; the VMM uses the worker).
    /// Returns the number of requests completed.
    pub fn process_queue(&self) -> usize {
        self.shared.process()
    }

    /// Make every write the guest completed durable (the VMM calls this when the guest has
    /// ended, before exiting: a copy-on-write overlay otherwise only persists its bitmap when the
    /// guest flushes or the device is dropped).
    pub fn flush(&self) -> Result<(), crate::volume::VolumeError> {
        self.shared.lock().blk.flush()
    }

    /// The current InterruptStatus bits.
    pub fn interrupt_status(&self) -> u32 {
        self.shared.interrupt_status.load(Ordering::SeqCst)
    }
}

/// The registers a virtio-mmio device serves without taking its state lock, from the vCPU
/// thread: the InterruptStatus read, and the InterruptAck and QueueNotify writes (the hot
/// path of every request). Shared by the block and network devices.
pub(crate) struct FastPath<'a> {
    pub interrupt_status: &'a AtomicU32,
    pub notify_evt: &'a EventFd,
    /// Queues the device has: a notify for another index wakes nobody.
    pub queues: u32,
    /// The device, for the log line when the worker cannot be woken.
    pub what: &'static str,
}

impl FastPath<'_> {
    /// Serve a read of InterruptStatus; `false` for any other register.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        if offset == REG_INTERRUPT_STATUS && data.len() == 4 {
            data.copy_from_slice(&self.interrupt_status.load(Ordering::SeqCst).to_le_bytes());
            return true;
        }
        false
    }

    /// Serve a write of InterruptAck or QueueNotify; `false` for any other register.
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return false;
        };
        let v = u32::from_le_bytes(bytes);
        match offset {
            REG_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_QUEUE_NOTIFY => {
                if v < self.queues {
                    if let Err(e) = self.notify_evt.write(1) {
                        log::warn!("{}: cannot signal the queue worker: {e}", self.what);
                    }
                }
            }
            _ => return false,
        }
        true
    }
}

impl MmioBlockDevice {
    fn fast_path(&self) -> FastPath<'_> {
        FastPath {
            interrupt_status: &self.shared.interrupt_status,
            notify_evt: &self.shared.notify_evt,
            queues: 1,
            what: "virtio-blk",
        }
    }
}

impl BusDevice for MmioBlockDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if self.fast_path().read(offset, data) {
            return;
        }
        self.shared.lock().transport.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.fast_path().write(offset, data) {
            return;
        }
        let mut st = self.shared.lock();
        let DeviceState {
            transport,
            blk,
            mem,
        } = &mut *st;
        match transport.write(offset, data, mem) {
            WriteEffect::Reset => {
                blk.set_acked_features(0);
                self.shared.interrupt_status.store(0, Ordering::SeqCst);
            }
            WriteEffect::Activated => {
                blk.set_acked_features(transport.acked_features());
                // Requests queued before DRIVER_OK are served now.
                let _ = self.shared.notify_evt.write(1);
            }
            WriteEffect::None => {}
        }
    }
}

/// The queue worker: waits on the notify EventFd and serves the queue (an event-manager
/// subscriber for the VMM's event thread).
pub struct BlockWorker {
    shared: Arc<Shared>,
}

impl MutEventSubscriber for BlockWorker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.shared.notify_evt, EventSet::IN)) {
            log::error!("virtio-blk: cannot watch the queue notify eventfd: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            log::error!("virtio-blk: queue notify eventfd failed; no longer watched");
            let _ = ops.remove(events);
            return;
        }
        // Non-blocking: a spurious wake-up just finds the counter at zero.
        let _ = self.shared.notify_evt.read();
        self.shared.process();
    }
}

/// Everything the VMM needs for one block device.
pub struct BlockHandles {
    /// Insert on the MMIO bus over a [`MMIO_WINDOW_SIZE`] window.
    pub bus_device: Arc<Mutex<MmioBlockDevice>>,
    /// Add to the event manager.
    pub worker: Arc<Mutex<BlockWorker>>,
    /// Register as ioeventfd at `base + NOTIFY_OFFSET` (a clone of the device's).
    pub notify_evt: EventFd,
    /// Register as irqfd for the device's GSI (a clone of the device's).
    pub irq_evt: EventFd,
}

/// Build a block device and its worker in one go.
pub fn new_block(
    mem: GuestMemoryMmap,
    backend: Box<dyn BlockBackend>,
    cfg: BlockConfig,
) -> Result<BlockHandles, VirtioError> {
    let dev = MmioBlockDevice::new(mem, backend, cfg)?;
    let notify_evt = dev
        .queue_notify_evt()
        .try_clone()
        .map_err(VirtioError::EventFd)?;
    let irq_evt = dev
        .interrupt_evt()
        .try_clone()
        .map_err(VirtioError::EventFd)?;
    let worker = Arc::new(Mutex::new(dev.worker()));
    Ok(BlockHandles {
        bus_device: Arc::new(Mutex::new(dev)),
        worker,
        notify_evt,
        irq_evt,
    })
}

/// The kernel argument that declares a virtio-mmio device to Linux
/// (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, drivers/virtio/virtio_mmio.c): `size@base:irq`.
pub fn cmdline_fragment(base: u64, gsi: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{gsi}",
        MMIO_WINDOW_SIZE / 1024
    )
}

/// The ACPI `_HID` of a virtio-mmio transport, as Linux's virtio_mmio driver matches it
/// (drivers/virtio/virtio_mmio.c, `virtio_mmio_acpi_match`).
pub const ACPI_HID: &str = "LNRO0005";

/// The DSDT entry (inside `\_SB_`) that declares virtio-mmio transport `index` to an ACPI
/// kernel: `_HID` [`ACPI_HID`], `_UID` index, `_CCA` 1 (DMA is cache-coherent), and `_CRS`
/// with its register window and its edge-triggered, active-high interrupt (an irqfd pulse).
/// The device is named `VRnn` (nn: the index in hex, as QEMU names its transports).
pub fn acpi_aml(index: u8, base: u32, gsi: u32) -> Vec<u8> {
    use acpi_tables::aml::{self, Interrupt, Memory32Fixed, Name, ResourceTemplate};
    use acpi_tables::Aml;
    let window = Memory32Fixed::new(true, base, MMIO_WINDOW_SIZE as u32);
    let irq = Interrupt::new(true, true, false, false, gsi);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    let mut out = Vec::new();
    aml::Device::new(
        format!("VR{index:02X}").as_str().into(),
        vec![
            &Name::new("_HID".into(), &ACPI_HID),
            &Name::new("_UID".into(), &index),
            &Name::new("_CCA".into(), &aml::ONE),
            &Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod mmio_tests;
