//! The virtio-net device proper (virtio 1.2, section 5.1): features, configuration space, and
//! moving frames between the guest's queues and a [`FrameBackend`], with an interception point
//! ([`FrameInterceptor`]) that takes the frames of a service amivm answers itself (the instance
//! metadata endpoint) off the path to the backend.
//!
//! Queue 0 receives (device to guest), queue 1 transmits (5.1.2). No offloads and no
//! mergeable receive buffers are offered: every frame travels whole, its virtio header zero.
//! Every guest value is checked: descriptor addresses through guest memory accessors,
//! descriptor direction, chain length (bounded by the queue size in `virtio_queue`), frame
//! length (over [`MAX_FRAME`] dropped and counted).

use super::block::{QueueFault, QueueOutcome};
use super::spec::*;
use crate::net::{FrameBackend, NetError, Sent, ETH_HEADER_LEN, MAX_FRAME, MTU};
use std::time::Duration;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

/// Device ID of a network card (5, "Device Types": 1).
pub const VIRTIO_ID_NET: u32 = 1;
/// VIRTIO_NET_F_MTU (5.1.3): `mtu` in config is valid.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// VIRTIO_NET_F_MAC (5.1.3): `mac` in config is valid.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_STATUS (5.1.3): `status` in config is valid.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// VIRTIO_NET_S_LINK_UP (5.1.4): the `status` bit saying the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Offsets in `struct virtio_net_config` (5.1.4): mac[6], status, max_virtqueue_pairs, mtu.
pub const CFG_MAC: usize = 0;
pub const CFG_STATUS: usize = 6;
pub const CFG_MAX_VQ_PAIRS: usize = 8;
pub const CFG_MTU: usize = 10;
/// Bytes of `struct virtio_net_config` up to and including `mtu`.
pub const NET_CFG_LEN: usize = 12;
/// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers ("always present with VIRTIO_F_VERSION_1", 5.1.6).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header (5.1.6): 1 without VIRTIO_NET_F_MRG_RXBUF.
const HDR_NUM_BUFFERS: usize = 10;
/// The receive queue's index (5.1.2).
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index (5.1.2).
pub const TX_QUEUE: usize = 1;
/// Largest queue the device offers (QueueNumMax), per queue.
pub const NET_QUEUE_SIZE_MAX: u16 = 256;
/// Chains handled per queue in one pass before yielding to other work, in units of the queue
/// size (as the block device does).
const BUDGET_QUEUES: usize = 4;

/// A service answered inside amivm: frames it `accepts` never reach the backend; what it
/// `transmit`s reaches the guest like a received frame. The instance metadata endpoint
/// (169.254.169.254) implements it.
pub trait FrameInterceptor: Send {
    /// Whether this frame (from the guest, without virtio header) is for the service.
    fn accepts(&self, frame: &[u8]) -> bool;
    /// Take a frame the service accepted.
    fn receive(&mut self, frame: &[u8]);
    /// The next frame for the guest, written into `out` (at least [`MAX_FRAME`] bytes):
    /// its length, or `None` when there is nothing to send.
    fn transmit(&mut self, out: &mut [u8]) -> Option<usize>;
    /// How soon the service wants to be asked again (its timers), if at all.
    fn poll_at(&self) -> Option<Duration>;
}

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames from the guest handed to the backend.
    pub tx_frames: u64,
    /// Frames from the guest handed to the interceptor.
    pub tx_intercepted: u64,
    /// Frames from the guest dropped: longer than [`MAX_FRAME`].
    pub tx_oversized: u64,
    /// Chains from the guest dropped: malformed (writable, unreadable, shorter than headers).
    pub tx_malformed: u64,
    /// Frames from the guest dropped because the backend is gone.
    pub tx_no_backend: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames for the guest dropped: its buffer chain was too small or malformed.
    pub rx_dropped: u64,
}

/// What one pass over the queues did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetOutcome {
    pub tx: QueueOutcome,
    pub rx: QueueOutcome,
    /// The backend would not take a frame: wait until its fd is writable.
    pub tx_blocked: bool,
    /// A frame waits for the guest to post receive buffers.
    pub rx_starved: bool,
    /// The link went down in this pass (the backend died): a configuration change.
    pub link_changed: bool,
}

/// A virtio-net device over a backend.
pub struct NetDevice {
    mac: [u8; 6],
    backend: Box<dyn FrameBackend>,
    interceptor: Option<Box<dyn FrameInterceptor>>,
    /// Why the backend stopped, once it has.
    dead: Option<String>,
    tx_buf: Vec<u8>,
    rx_buf: Box<[u8]>,
    /// Length of the frame in `rx_buf` waiting for a guest buffer.
    rx_pending: Option<usize>,
    pub stats: NetStats,
}

enum TxDrop {
    Oversized,
    Malformed(&'static str),
}

impl NetDevice {
    pub fn new(
        mac: [u8; 6],
        backend: Box<dyn FrameBackend>,
        interceptor: Option<Box<dyn FrameInterceptor>>,
    ) -> Self {
        NetDevice {
            mac,
            backend,
            interceptor,
            dead: None,
            tx_buf: Vec::with_capacity(NET_HDR_LEN + MAX_FRAME),
            rx_buf: vec![0u8; MAX_FRAME].into_boxed_slice(),
            rx_pending: None,
            stats: NetStats::default(),
        }
    }

    /// The feature bits offered to the driver.
    pub fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MTU
    }

    /// `struct virtio_net_config` (5.1.4), little endian.
    pub fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; NET_CFG_LEN];
        c[CFG_MAC..CFG_MAC + 6].copy_from_slice(&self.mac);
        let status = if self.dead.is_none() {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[CFG_STATUS..CFG_STATUS + 2].copy_from_slice(&status.to_le_bytes());
        c[CFG_MAX_VQ_PAIRS..CFG_MAX_VQ_PAIRS + 2].copy_from_slice(&1u16.to_le_bytes());
        c[CFG_MTU..CFG_MTU + 2].copy_from_slice(&MTU.to_le_bytes());
        c
    }

    /// Why the backend stopped, if it has.
    pub fn backend_lost(&self) -> Option<&str> {
        self.dead.as_deref()
    }

    /// The backend's fd, while it is alive.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.dead
            .is_none()
            .then(|| self.backend.as_raw_fd())
            .flatten()
    }

    /// Frames the backend received for the guest and dropped as too long.
    pub fn backend_dropped(&self) -> u64 {
        self.backend.dropped()
    }

    /// How soon the interceptor wants to run again.
    pub fn poll_at(&self) -> Option<Duration> {
        self.interceptor.as_ref().and_then(|i| i.poll_at())
    }

    /// Forget a frame held for the guest (device reset).
    pub fn reset(&mut self) {
        self.rx_pending = None;
    }

    fn lose_backend(&mut self, e: NetError, out: &mut NetOutcome) {
        if self.dead.is_none() {
            log::warn!("virtio-net: {e}; the guest's link is down");
            self.dead = Some(e.to_string());
            out.link_changed = true;
        }
    }

    /// One pass: transmit what the guest queued, then deliver what waits for it.
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &mut [Queue],
    ) -> Result<NetOutcome, QueueFault> {
        let mut out = NetOutcome::default();
        let [rx, tx] = queues else {
            return Err(QueueFault("virtio-net needs two queues".into()));
        };
        self.process_tx(mem, tx, &mut out)?;
        self.process_rx(mem, rx, &mut out)?;
        Ok(out)
    }

    fn process_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        out: &mut NetOutcome,
    ) -> Result<(), QueueFault> {
        if self.dead.is_none() {
            match self.backend.flush() {
                Ok(Sent::Done) => {}
                Ok(Sent::WouldBlock) => {
                    out.tx_blocked = true;
                    return Ok(());
                }
                Err(e) => self.lose_backend(e, out),
            }
        }
        let budget = BUDGET_QUEUES * usize::from(queue.size());
        'outer: loop {
            queue.disable_notification(mem)?;
            let before = out.tx.completed;
            loop {
                let next = queue.iter(mem)?.next();
                let Some(chain) = next else {
                    break;
                };
                if out.tx.completed >= budget {
                    queue.go_to_previous_position();
                    out.tx.more = true;
                    break 'outer;
                }
                let head = chain.head_index();
                match self.read_tx(mem, chain) {
                    Ok(()) => {
                        if !self.send_tx(out) {
                            queue.go_to_previous_position();
                            out.tx_blocked = true;
                            break 'outer;
                        }
                    }
                    Err(TxDrop::Oversized) => self.stats.tx_oversized += 1,
                    Err(TxDrop::Malformed(why)) => {
                        log::debug!("virtio-net: dropped a TX chain: {why}");
                        self.stats.tx_malformed += 1;
                    }
                }
                if let Err(e) = queue.add_used(mem, head, 0) {
                    log::warn!("virtio-net: cannot return TX descriptor {head}: {e}");
                }
                out.tx.completed += 1;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
            if out.tx.completed == before {
                return Err(QueueFault("TX available ring unreadable".into()));
            }
        }
        // Push out the burst; what the socket cannot take yet waits (bounded) for writability.
        if self.dead.is_none() {
            match self.backend.flush() {
                Ok(Sent::Done) => {}
                Ok(Sent::WouldBlock) => out.tx_blocked = true,
                Err(e) => self.lose_backend(e, out),
            }
        }
        if out.tx.completed > 0 {
            out.tx.notify = queue.needs_notification(mem)?;
        }
        Ok(())
    }

    /// Gather a TX chain (header + frame, all device-readable) into `tx_buf`.
    fn read_tx<M>(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<M>) -> Result<(), TxDrop>
    where
        M: std::ops::Deref<Target = GuestMemoryMmap>,
    {
        self.tx_buf.clear();
        let mut total = 0usize;
        for d in chain {
            if d.is_write_only() {
                return Err(TxDrop::Malformed(
                    "device-writable descriptor in a TX chain",
                ));
            }
            let len = d.len() as usize;
            total = total.saturating_add(len);
            if total > NET_HDR_LEN + MAX_FRAME {
                return Err(TxDrop::Oversized);
            }
            let at = self.tx_buf.len();
            self.tx_buf.resize(at + len, 0);
            mem.read_slice(&mut self.tx_buf[at..], d.addr())
                .map_err(|_| TxDrop::Malformed("descriptor outside guest memory"))?;
        }
        if self.tx_buf.len() < NET_HDR_LEN + ETH_HEADER_LEN {
            return Err(TxDrop::Malformed("shorter than the headers"));
        }
        Ok(())
    }

    /// Hand the frame in `tx_buf` on; false when the backend would block (frame not taken).
    fn send_tx(&mut self, out: &mut NetOutcome) -> bool {
        let frame = &self.tx_buf[NET_HDR_LEN..];
        if let Some(i) = self.interceptor.as_mut().filter(|i| i.accepts(frame)) {
            i.receive(frame);
            self.stats.tx_intercepted += 1;
            return true;
        }
        if self.dead.is_some() {
            self.stats.tx_no_backend += 1;
            return true;
        }
        match self.backend.send(frame) {
            Ok(Sent::Done) => {
                self.stats.tx_frames += 1;
                true
            }
            Ok(Sent::WouldBlock) => false,
            Err(e) => {
                self.stats.tx_no_backend += 1;
                self.lose_backend(e, out);
                true
            }
        }
    }

    /// The next frame for the guest: the interceptor's first, then the backend's.
    fn next_rx(&mut self, out: &mut NetOutcome) -> Option<usize> {
        if let Some(n) = self
            .interceptor
            .as_mut()
            .and_then(|i| i.transmit(&mut self.rx_buf))
        {
            return Some(n.min(MAX_FRAME));
        }
        if self.dead.is_some() {
            return None;
        }
        match self.backend.recv(&mut self.rx_buf) {
            Ok(n) => n,
            Err(e) => {
                self.lose_backend(e, out);
                None
            }
        }
    }

    fn process_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        out: &mut NetOutcome,
    ) -> Result<(), QueueFault> {
        let budget = BUDGET_QUEUES * usize::from(queue.size());
        queue.disable_notification(mem)?;
        let mut rechecked = false;
        loop {
            if self.rx_pending.is_none() {
                if out.rx.completed >= budget {
                    out.rx.more = true;
                    break;
                }
                self.rx_pending = self.next_rx(out);
            }
            let Some(len) = self.rx_pending else {
                break;
            };
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else {
                // No buffer: wait for the guest's next notification, unless it added one
                // while notifications were off.
                if queue.enable_notification(mem)? {
                    if rechecked {
                        return Err(QueueFault("RX available ring unreadable".into()));
                    }
                    rechecked = true;
                    queue.disable_notification(mem)?;
                    continue;
                }
                out.rx_starved = true;
                break;
            };
            rechecked = false;
            let head = chain.head_index();
            let used = match self.write_rx(mem, chain, len) {
                Ok(n) => {
                    self.stats.rx_frames += 1;
                    n
                }
                Err(why) => {
                    log::debug!("virtio-net: dropped a frame for the guest: {why}");
                    self.stats.rx_dropped += 1;
                    0
                }
            };
            self.rx_pending = None;
            if let Err(e) = queue.add_used(mem, head, used) {
                log::warn!("virtio-net: cannot return RX descriptor {head}: {e}");
            }
            out.rx.completed += 1;
        }
        if !out.rx_starved {
            queue.enable_notification(mem)?;
        }
        if out.rx.completed > 0 {
            out.rx.notify = queue.needs_notification(mem)?;
        }
        Ok(())
    }

    /// Write header + frame into an RX chain (all device-writable); returns the used length.
    fn write_rx<M>(
        &self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<M>,
        len: usize,
    ) -> Result<u32, &'static str>
    where
        M: std::ops::Deref<Target = GuestMemoryMmap>,
    {
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
        let total = NET_HDR_LEN + len;
        let mut descs = Vec::new();
        let mut room = 0usize;
        for d in chain {
            if !d.is_write_only() {
                return Err("device-readable descriptor in an RX chain");
            }
            if room < total {
                descs.push((d.addr(), d.len() as usize));
            }
            room = room.saturating_add(d.len() as usize);
        }
        if room < total {
            return Err("buffer chain too small for the frame");
        }
        let frame = &self.rx_buf[..len];
        let mut done = 0usize;
        for (addr, dlen) in descs {
            let n = dlen.min(total - done);
            let mut written = 0usize;
            // The header, then the frame: copy whichever parts fall in this descriptor.
            if done < NET_HDR_LEN {
                let h = (NET_HDR_LEN - done).min(n);
                mem.write_slice(&hdr[done..done + h], addr)
                    .map_err(|_| "descriptor outside guest memory")?;
                written = h;
            }
            if written < n {
                let from = done + written - NET_HDR_LEN;
                let m = n - written;
                let at = addr
                    .checked_add(written as u64)
                    .ok_or("descriptor address overflows")?;
                mem.write_slice(&frame[from..from + m], at)
                    .map_err(|_| "descriptor outside guest memory")?;
            }
            done += n;
            if done == total {
                break;
            }
        }
        Ok(total as u32)
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
