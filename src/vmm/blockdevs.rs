//! Attaching virtio-blk devices: one MMIO window and one GSI each (`platform::virtio_slot`),
//! the queue worker on the VMM's event thread. How Linux learns where they are (kernel
//! arguments or ACPI) is `platform::Board`'s business.

use super::devices::bus::{Bus, SharedDevice};
use super::devices::virtio::{
    new_block, BlockConfig, MmioBlockDevice, MMIO_WINDOW_SIZE, NOTIFY_OFFSET,
};
use super::events::{EventSink, VmEvent};
use super::platform::{virtio_slot, MAX_VIRTIO_DEVICES};
use super::sandbox::{self, Role, SandboxConfig};
use super::VmmError;
use crate::volume::BlockBackend;
use event_manager::{
    EventManager, EventOps, EventSet, Events as EventsOf, MutEventSubscriber, SubscriberOps,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// How long the event thread waits per round before checking whether the VM ended.
const EVENT_LOOP_TIMEOUT_MS: i32 = 100;

/// One block device to attach: the first is the root device `/dev/vda`.
pub struct BlockDrive {
    pub backend: Box<dyn BlockBackend>,
    pub config: BlockConfig,
}

/// The event manager type the VMM runs on its event thread.
pub type Events = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Attach `drives` to the MMIO bus and KVM, drive `i` at `platform::virtio_slot(i)`; returns
/// the devices, for the final flush.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    events: &mut Events,
    drives: Vec<BlockDrive>,
) -> Result<Vec<Arc<Mutex<MmioBlockDevice>>>, VmmError> {
    let mut devices = Vec::new();
    let max = MAX_VIRTIO_DEVICES;
    if drives.len() > max {
        return Err(VmmError::Config(format!(
            "{} drives given; at most {max} are supported",
            drives.len()
        )));
    }
    for (i, drive) in drives.into_iter().enumerate() {
        let name = format!("drive {i} ({})", drive.backend.serial());
        let dev_err = |why: String| VmmError::Device {
            name: name.clone(),
            why,
        };
        let (base, gsi) = virtio_slot(i);
        let h = new_block(mem.clone(), drive.backend, drive.config)
            .map_err(|e| dev_err(e.to_string()))?;
        let slot = VirtioSlot {
            base,
            gsi,
            notify_evt: &h.notify_evt,
            irq_evt: &h.irq_evt,
        };
        slot.wire(vm, mmio, events, h.worker, h.bus_device.clone(), dev_err)?;
        devices.push(h.bus_device);
    }
    Ok(devices)
}

/// A virtio-mmio device's place: its window at `base`, its GSI, and the eventfds KVM signals
/// (QueueNotify written) and listens to (the interrupt).
pub struct VirtioSlot<'a> {
    pub base: u64,
    pub gsi: u32,
    pub notify_evt: &'a EventFd,
    pub irq_evt: &'a EventFd,
}

impl VirtioSlot<'_> {
    /// Wire a device in: QueueNotify writes signal `notify_evt` in KVM (ioeventfd), `irq_evt`
    /// raises the GSI (irqfd), `worker` serves the queues on the event thread, `device` answers
    /// the window on the MMIO bus. `dev_err` names the device in KVM's errors.
    pub fn wire(
        &self,
        vm: &VmFd,
        mmio: &mut Bus,
        events: &mut Events,
        worker: Arc<Mutex<dyn MutEventSubscriber + Send>>,
        device: SharedDevice,
        dev_err: impl Fn(String) -> VmmError,
    ) -> Result<(), VmmError> {
        vm.register_ioevent(
            self.notify_evt,
            &IoEventAddress::Mmio(self.base + NOTIFY_OFFSET),
            NoDatamatch,
        )
        .map_err(|e| dev_err(format!("KVM_IOEVENTFD: {e}")))?;
        vm.register_irqfd(self.irq_evt, self.gsi)
            .map_err(|e| dev_err(format!("KVM_IRQFD: {e}")))?;
        events.add_subscriber(worker);
        mmio.insert(device, self.base, MMIO_WINDOW_SIZE)?;
        Ok(())
    }
}

/// Flush every device's backend: called once the guest has ended, so that what it wrote is
/// durable even if it never sent FLUSH (a copy-on-write overlay persists its bitmap then).
pub fn flush_all(devices: &[Arc<Mutex<MmioBlockDevice>>]) -> Result<(), String> {
    for (i, d) in devices.iter().enumerate() {
        let dev = crate::sync::relock(d);
        dev.flush()
            .map_err(|e| format!("drive {i}: final flush failed: {e}"))?;
    }
    Ok(())
}

/// Wakes the event loop when the VM ends, so the device thread stops at once instead of at
/// its next timeout.
struct StopWaker(EventFd);

impl MutEventSubscriber for StopWaker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(EventsOf::new(&self.0, EventSet::IN)) {
            log::warn!("event loop: cannot watch the stop eventfd: {e:?}");
        }
    }

    fn process(&mut self, _events: EventsOf, _ops: &mut EventOps) {
        let _ = self.0.read();
    }
}

/// The device thread: runs the event manager until [`DeviceThread::stop`].
pub struct DeviceThread {
    handle: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    waker: EventFd,
}

impl DeviceThread {
    /// Stop the loop (after the request in progress) and wait for the thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.write(1);
        let _ = self.handle.join();
    }
}

/// Run the event manager on its own thread. A device that panics (a bug: guest input must never
/// make one panic) ends the VM with a VMM error instead of leaving the guest without answers.
pub fn spawn_event_thread(
    mut events: Events,
    sink: EventSink,
    sandbox: SandboxConfig,
) -> std::io::Result<DeviceThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let waker = EventFd::new(libc::EFD_NONBLOCK)?;
    events.add_subscriber(Arc::new(Mutex::new(StopWaker(waker.try_clone()?))));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("virtio".into())
        .spawn(move || {
            if let Err(e) = sandbox::enter_thread(&sandbox, Role::Device) {
                sink.send(VmEvent::VmmError(e.to_string()));
                return;
            }
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                while !flag.load(Ordering::Acquire) {
                    if let Err(e) = events.run_with_timeout(EVENT_LOOP_TIMEOUT_MS) {
                        return Err(format!("device event loop failed: {e:?}"));
                    }
                }
                Ok(())
            }));
            match ran {
                Ok(Ok(())) => {}
                Ok(Err(why)) => sink.send(VmEvent::VmmError(why)),
                Err(_) => sink.send(VmEvent::VmmError(
                    "a virtio device failed (panicked)".into(),
                )),
            }
        })?;
    Ok(DeviceThread {
        handle,
        stop,
        waker,
    })
}
