//! A virtio-net device on the MMIO bus: the register file ([`MmioNetDevice`], called on vCPU
//! threads) and the queue worker ([`NetWorker`], on the VMM's event thread), sharing state the
//! way the block device does (see the parent module). The worker wakes on the guest's queue
//! notifications, on the backend's fd (frames to receive; room to send after backpressure)
//! and on a timer for the frame interceptor.
//!
//! The backend's fd is watched only while it can be served: readable while the guest has
//! receive buffers (else a frame waits in the device and the fd is left alone until the guest
//! posts buffers), writable only after the backend pushed back. So a busy or stalled backend
//! never makes the event thread spin, and nothing is buffered beyond one frame each way.

use super::mmio::{MmioTransport, WriteEffect};
use super::net::{
    FrameInterceptor, NetDevice, NetOutcome, NetStats, NET_QUEUE_SIZE_MAX, VIRTIO_ID_NET,
};
use super::spec::*;
use super::VirtioError;
use crate::net::FrameBackend;
use crate::vmm::devices::bus::BusDevice;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// Shortest timer armed for the interceptor (a zero duration would disarm a timerfd).
const MIN_TIMER: Duration = Duration::from_millis(1);

/// Called once, with the reason, when the backend is lost (the VMM logs it to the console log).
pub type LinkLost = Box<dyn FnMut(&str) + Send>;

struct NetState {
    transport: MmioTransport,
    net: NetDevice,
    mem: GuestMemoryMmap,
}

struct Shared {
    state: Mutex<NetState>,
    interrupt_status: AtomicU32,
    notify_evt: EventFd,
    irq_evt: EventFd,
    on_lost: Mutex<Option<LinkLost>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, NetState> {
        crate::sync::relock(&self.state)
    }

    fn raise(&self, bits: u32) {
        self.interrupt_status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq_evt.write(1) {
            log::warn!("virtio-net: cannot signal the interrupt: {e}");
        }
    }

    /// One pass over both queues if the device is live. Returns the outcome and what the
    /// backend fd should be watched for.
    fn process(&self) -> (NetOutcome, Option<(RawFd, EventSet)>) {
        let mut st = self.lock();
        let mut lost = None;
        let out = if st.transport.is_live() {
            let NetState {
                transport,
                net,
                mem,
                ..
            } = &mut *st;
            match net.process(mem, &mut transport.queues) {
                Ok(out) => {
                    if out.tx.notify || out.rx.notify {
                        self.raise(INT_USED_BUFFER);
                    }
                    if out.tx.more || out.rx.more {
                        let _ = self.notify_evt.write(1);
                    }
                    if out.link_changed {
                        transport.update_config(net.config_space());
                        self.raise(INT_CONFIG_CHANGE);
                        lost = net.backend_lost().map(str::to_string);
                    }
                    out
                }
                Err(e) => {
                    log::warn!("virtio-net: {e}; the device needs a reset");
                    transport.set_needs_reset();
                    self.raise(INT_CONFIG_CHANGE);
                    NetOutcome::default()
                }
            }
        } else {
            NetOutcome::default()
        };
        let watch = if st.transport.is_live() {
            st.net.backend_fd().map(|fd| {
                let mut set = EventSet::empty();
                if !out.rx_starved {
                    set |= EventSet::IN;
                }
                if out.tx_blocked {
                    set |= EventSet::OUT;
                }
                (fd, set)
            })
        } else {
            None
        };
        drop(st);
        if let Some(why) = lost {
            if let Some(f) = crate::sync::relock(&self.on_lost).as_mut() {
                f(&why);
            }
        }
        (out, watch)
    }
}

/// A virtio-net device: its register window ([`BusDevice`]) plus the handles the VMM registers.
pub struct MmioNetDevice {
    shared: Arc<Shared>,
}

impl MmioNetDevice {
    /// A network device with MAC `mac` over `backend`, with `interceptor` taking the frames
    /// of services amivm answers itself.
    pub fn new(
        mem: GuestMemoryMmap,
        mac: [u8; 6],
        backend: Box<dyn FrameBackend>,
        interceptor: Option<Box<dyn FrameInterceptor>>,
    ) -> Result<Self, VirtioError> {
        let net = NetDevice::new(mac, backend, interceptor);
        let transport = MmioTransport::with_queues(
            VIRTIO_ID_NET,
            net.features(),
            net.config_space(),
            NET_QUEUE_SIZE_MAX,
            2,
        )
        .map_err(|e| VirtioError::Queue(e.to_string()))?;
        let shared = Shared {
            state: Mutex::new(NetState {
                transport,
                net,
                mem,
            }),
            interrupt_status: AtomicU32::new(0),
            notify_evt: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
            irq_evt: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
            on_lost: Mutex::new(None),
        };
        Ok(MmioNetDevice {
            shared: Arc::new(shared),
        })
    }

    /// Call `f` once, with the reason, if the backend is lost.
    pub fn on_link_lost(&self, f: LinkLost) {
        *crate::sync::relock(&self.shared.on_lost) = Some(f);
    }

    /// Signalled by QueueNotify writes (either queue): register it as an ioeventfd at
    /// `base + NOTIFY_OFFSET` without datamatch.
    pub fn queue_notify_evt(&self) -> &EventFd {
        &self.shared.notify_evt
    }

    /// Signalled when the device interrupts the guest: the GSI's irqfd.
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.shared.irq_evt
    }

    /// The queue worker, for the VMM's event manager.
    pub fn worker(&self) -> Result<NetWorker, VirtioError> {
        Ok(NetWorker {
            shared: self.shared.clone(),
            timer: TimerFd::new()
                .map_err(|e| VirtioError::EventFd(std::io::Error::from_raw_os_error(e.errno())))?,
            watching: None,
        })
    }

    /// Serve both queues now, on this thread (tests and benchmarks; the VMM uses the worker).
    pub fn process_queues(&self) -> NetOutcome {
        self.shared.process().0
    }

    /// The backend's fd while it is alive (to wait for it outside the worker: benchmarks).
    pub fn backend_fd(&self) -> Option<RawFd> {
        self.shared.lock().net.backend_fd()
    }

    /// The device's counters.
    pub fn stats(&self) -> NetStats {
        self.shared.lock().net.stats
    }

    /// Why the backend was lost, if it was.
    pub fn backend_lost(&self) -> Option<String> {
        self.shared.lock().net.backend_lost().map(str::to_string)
    }

    /// The current InterruptStatus bits.
    pub fn interrupt_status(&self) -> u32 {
        self.shared.interrupt_status.load(Ordering::SeqCst)
    }
}

impl MmioNetDevice {
    fn fast_path(&self) -> super::FastPath<'_> {
        super::FastPath {
            interrupt_status: &self.shared.interrupt_status,
            notify_evt: &self.shared.notify_evt,
            // Receive and transmit (virtio 1.2, 5.1.2): indices RX_QUEUE and TX_QUEUE.
            queues: super::net::TX_QUEUE as u32 + 1,
            what: "virtio-net",
        }
    }
}

impl BusDevice for MmioNetDevice {
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
        let NetState {
            transport,
            net,
            mem,
            ..
        } = &mut *st;
        match transport.write(offset, data, mem) {
            WriteEffect::Reset => {
                net.reset();
                self.shared.interrupt_status.store(0, Ordering::SeqCst);
                // The worker stops watching the backend until the device is live again.
                let _ = self.shared.notify_evt.write(1);
            }
            WriteEffect::Activated => {
                let _ = self.shared.notify_evt.write(1);
            }
            WriteEffect::None => {}
        }
    }
}

/// The queue worker: an event-manager subscriber on the VMM's event thread.
pub struct NetWorker {
    shared: Arc<Shared>,
    timer: TimerFd,
    /// The backend fd and what it is registered for, if it is.
    watching: Option<(RawFd, EventSet)>,
}

impl NetWorker {
    fn rewatch(&mut self, ops: &mut EventOps, want: Option<(RawFd, EventSet)>) {
        let want = want.filter(|(_, set)| !set.is_empty());
        if want == self.watching {
            return;
        }
        if let Some((fd, set)) = self.watching.take() {
            let _ = ops.remove(Events::with_data_raw(fd, 0, set));
        }
        if let Some((fd, set)) = want {
            match ops.add(Events::with_data_raw(fd, 0, set)) {
                Ok(()) => self.watching = want,
                Err(e) => log::error!("virtio-net: cannot watch the backend: {e:?}"),
            }
        }
    }

    fn arm_timer(&mut self) {
        if let Some(d) = self.shared.lock().net.poll_at() {
            if let Err(e) = self.timer.reset(d.max(MIN_TIMER), None) {
                log::warn!("virtio-net: cannot arm the interceptor timer: {e}");
            }
        }
    }
}

impl MutEventSubscriber for NetWorker {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, what) in [
            (self.shared.notify_evt.as_raw_fd(), "queue notify eventfd"),
            (self.timer.as_raw_fd(), "timer"),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, 0, EventSet::IN)) {
                log::error!("virtio-net: cannot watch the {what}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        if fd == self.shared.notify_evt.as_raw_fd() {
            let _ = self.shared.notify_evt.read();
        } else if fd == self.timer.as_raw_fd() {
            if set.contains(EventSet::IN) {
                let _ = self.timer.wait();
            }
        } else if set.intersects(EventSet::ERROR | EventSet::HANG_UP)
            && !set.intersects(EventSet::IN)
        {
            // The backend hung up with nothing left to read: the pass below finds it closed.
            log::debug!("virtio-net: backend fd reports {set:?}");
        }
        let (_, watch) = self.shared.process();
        self.rewatch(ops, watch);
        self.arm_timer();
    }
}

/// Everything the VMM needs for one network device.
pub struct NetHandles {
    pub bus_device: Arc<Mutex<MmioNetDevice>>,
    pub worker: Arc<Mutex<NetWorker>>,
    pub notify_evt: EventFd,
    pub irq_evt: EventFd,
}

/// Build a network device and its worker in one go.
pub fn new_net(
    mem: GuestMemoryMmap,
    mac: [u8; 6],
    backend: Box<dyn FrameBackend>,
    interceptor: Option<Box<dyn FrameInterceptor>>,
) -> Result<NetHandles, VirtioError> {
    let dev = MmioNetDevice::new(mem, mac, backend, interceptor)?;
    let notify_evt = dev
        .queue_notify_evt()
        .try_clone()
        .map_err(VirtioError::EventFd)?;
    let irq_evt = dev
        .interrupt_evt()
        .try_clone()
        .map_err(VirtioError::EventFd)?;
    let worker = Arc::new(Mutex::new(dev.worker()?));
    Ok(NetHandles {
        bus_device: Arc::new(Mutex::new(dev)),
        worker,
        notify_evt,
        irq_evt,
    })
}
