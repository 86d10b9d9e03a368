//! The virtio-blk device proper (virtio 1.2, section 5.2): features, configuration space, and
//! carrying out requests against a [`BlockBackend`].

use super::request::{self, Limits, ParseError, Request, RequestKind, Scratch, Segment, ZeroRange};
use super::spec::*;
use crate::volume::{BlockBackend, VolatileSlice, VolumeError};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap};

/// Largest queue the device offers (QueueNumMax).
pub const QUEUE_SIZE_MAX: u16 = 256;
/// `seg_max`: data descriptors per request; the header and the status take two more (5.2.4).
pub const SEG_MAX: u32 = QUEUE_SIZE_MAX as u32 - 2;
/// `blk_size` reported to the guest: the logical block size in bytes (5.2.4).
pub const BLK_SIZE: u32 = 512;
/// `max_discard_sectors` and `max_write_zeroes_sectors`: 2 GiB per segment (our choice; bounds
/// the time one request holds the queue).
pub const MAX_ZERO_SECTORS: u32 = 1 << 22;
/// `max_discard_seg` and `max_write_zeroes_seg` (our choice).
pub const MAX_ZERO_SEGS: u32 = 32;
/// `discard_sector_alignment`: 8 sectors = the overlay's 4 KiB block.
pub const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Chains handled in one call of [`BlockDevice::process_queue`] before yielding to other work,
/// in units of the queue size.
const BUDGET_QUEUES: usize = 4;

/// What one pass over the queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Chains returned to the used ring.
    pub completed: usize,
    /// The driver must be interrupted (event-idx rules applied).
    pub notify: bool,
    /// The budget ran out with work left: process again soon.
    pub more: bool,
}

/// The queue itself is broken (its rings are unreadable, or the available index jumped by more
/// than the queue size): the device needs a reset (2.1.2, DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
#[error("virtqueue fault: {0}")]
pub struct QueueFault(pub String);

impl From<virtio_queue::Error> for QueueFault {
    fn from(e: virtio_queue::Error) -> Self {
        QueueFault(e.to_string())
    }
}

/// A virtio-blk device over a backend.
pub struct BlockDevice {
    backend: Box<dyn BlockBackend>,
    read_only: bool,
    serial: [u8; BLK_ID_BYTES],
    /// Features negotiated at FEATURES_OK.
    acked: u64,
    scratch: Scratch,
}

impl BlockDevice {
    /// `read_only` forces BLK_F_RO even if the backend is writable; `serial` (at most 20 bytes
    /// used) answers GET_ID, the backend's serial when empty.
    pub fn new(backend: Box<dyn BlockBackend>, read_only: bool, serial: &str) -> Self {
        let read_only = read_only || backend.read_only();
        let serial_src = if serial.is_empty() {
            backend.serial()
        } else {
            serial.to_string()
        };
        let mut id = [0u8; BLK_ID_BYTES];
        let bytes = serial_src.as_bytes();
        let n = bytes.len().min(BLK_ID_BYTES);
        id[..n].copy_from_slice(&bytes[..n]);
        BlockDevice {
            backend,
            read_only,
            serial: id,
            acked: 0,
            scratch: Scratch::default(),
        }
    }

    /// Whether discards and write-zeroes are offered.
    fn offers_discard(&self) -> bool {
        !self.read_only && self.backend.can_discard()
    }

    /// The feature bits offered to the driver.
    pub fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE;
        if self.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        if self.offers_discard() {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    /// Record the features the driver accepted.
    pub fn set_acked_features(&mut self, acked: u64) {
        self.acked = acked;
    }

    /// Flush the backend (a no-op for read-only devices).
    pub fn flush(&mut self) -> Result<(), VolumeError> {
        if self.read_only {
            Ok(())
        } else {
            self.backend.flush()
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.backend.size() / SECTOR_SIZE
    }

    /// `struct virtio_blk_config` (5.2.4), little endian.
    pub fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; CFG_LEN];
        let put32 = |c: &mut Vec<u8>, at: usize, v: u32| {
            c[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        c[CFG_CAPACITY..CFG_CAPACITY + 8].copy_from_slice(&self.capacity().to_le_bytes());
        put32(&mut c, CFG_SEG_MAX, SEG_MAX);
        put32(&mut c, CFG_BLK_SIZE, BLK_SIZE);
        if self.offers_discard() {
            put32(&mut c, CFG_MAX_DISCARD_SECTORS, MAX_ZERO_SECTORS);
            put32(&mut c, CFG_MAX_DISCARD_SEG, MAX_ZERO_SEGS);
            put32(
                &mut c,
                CFG_DISCARD_SECTOR_ALIGNMENT,
                DISCARD_ALIGNMENT_SECTORS,
            );
            put32(&mut c, CFG_MAX_WRITE_ZEROES_SECTORS, MAX_ZERO_SECTORS);
            put32(&mut c, CFG_MAX_WRITE_ZEROES_SEG, MAX_ZERO_SEGS);
            c[CFG_WRITE_ZEROES_MAY_UNMAP] = 1;
        }
        c
    }

    fn limits(&self, queue_size: u16) -> Limits {
        Limits {
            capacity: self.capacity(),
            max_chain: usize::from(queue_size),
            discard: self.acked & VIRTIO_BLK_F_DISCARD != 0,
            write_zeroes: self.acked & VIRTIO_BLK_F_WRITE_ZEROES != 0,
            max_zero_segs: MAX_ZERO_SEGS,
            max_zero_sectors: MAX_ZERO_SECTORS,
        }
    }

    /// Serve every available chain (up to a budget), following the event-idx rules
    /// (2.7.7, 2.7.10): notifications from the driver are suppressed while we work, then
    /// re-enabled and the ring re-checked so that no request is missed.
    pub fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<QueueOutcome, QueueFault> {
        let mut out = QueueOutcome::default();
        let budget = BUDGET_QUEUES * usize::from(queue.size());
        let limits = self.limits(queue.size());
        let mut chains = Vec::with_capacity(usize::from(queue.size()));
        loop {
            queue.disable_notification(mem)?;
            let before = out.completed;
            loop {
                // Take the heads published so far in one read of the available index.
                let room = budget - out.completed;
                chains.clear();
                chains.extend(queue.iter(mem)?.take(room));
                if chains.is_empty() {
                    break;
                }
                for chain in chains.drain(..) {
                    let head = chain.head_index();
                    let used_len = self.handle_chain(mem, chain, &limits);
                    if let Err(e) = queue.add_used(mem, head, used_len) {
                        log::warn!("virtio-blk: cannot return descriptor {head}: {e}");
                    }
                    out.completed += 1;
                }
                if out.completed >= budget {
                    break;
                }
            }
            if out.completed >= budget {
                // Leave the rest for the next pass, without re-enabling notifications.
                out.more = queue.iter(mem)?.next().is_some();
                if out.more {
                    queue.go_to_previous_position();
                    break;
                }
            }
            if !queue.enable_notification(mem)? {
                break;
            }
            if out.completed == before {
                // The available index moved but no chain could be read: a broken ring.
                return Err(QueueFault("available ring unreadable".into()));
            }
        }
        if out.completed > 0 {
            out.notify = queue.needs_notification(mem)?;
        }
        Ok(out)
    }

    /// Carry out one chain; returns the used length (bytes written to guest memory).
    fn handle_chain<M>(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<M>,
        limits: &Limits,
    ) -> u32
    where
        M: std::ops::Deref<Target = GuestMemoryMmap>,
    {
        match request::parse_with(mem, chain, limits, &mut self.scratch) {
            Ok(req) => {
                let (status, written) = self.execute(mem, &req);
                self.scratch.recycle(req.data);
                if mem.write_obj(status, req.status).is_err() {
                    return 0;
                }
                written.saturating_add(1)
            }
            Err(ParseError::NoStatus(why)) => {
                log::debug!("virtio-blk: dropped a request: {why}");
                0
            }
            Err(ParseError::Status { addr, status, why }) => {
                log::debug!("virtio-blk: request refused ({status}): {why}");
                if mem.write_obj(status, addr).is_err() {
                    return 0;
                }
                1
            }
        }
    }

    /// Run a parsed request: (status, bytes written into guest data buffers).
    fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request) -> (u8, u32) {
        let result = match &req.kind {
            RequestKind::In { offset, len } => with_slices(mem, &req.data, |s| {
                self.backend.read_vectored_at(s, *offset)
            })
            .map(|()| *len as u32),
            RequestKind::Out { offset, .. } => {
                if self.read_only {
                    Err(VolumeError::ReadOnly)
                } else {
                    with_slices(mem, &req.data, |s| {
                        self.backend.write_vectored_at(s, *offset)
                    })
                    .map(|()| 0)
                }
            }
            RequestKind::Flush => {
                if self.read_only {
                    Ok(0)
                } else {
                    self.backend.flush().map(|()| 0)
                }
            }
            RequestKind::GetId => Ok(self.write_id(mem, &req.data)),
            RequestKind::Discard(ranges) | RequestKind::WriteZeroes(ranges) => {
                self.zero(ranges).map(|()| 0)
            }
        };
        match result {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(e) => {
                log::debug!("virtio-blk: {:?} failed: {e}", req.kind);
                (VIRTIO_BLK_S_IOERR, 0)
            }
        }
    }

    fn zero(&mut self, ranges: &[ZeroRange]) -> Result<(), VolumeError> {
        if self.read_only {
            return Err(VolumeError::ReadOnly);
        }
        for r in ranges {
            self.backend.discard(r.offset, r.len)?;
        }
        Ok(())
    }

    /// Copy the serial into the buffers (at most 20 bytes); returns the bytes written.
    fn write_id(&self, mem: &GuestMemoryMmap, data: &[Segment]) -> u32 {
        let mut done = 0usize;
        for s in data {
            if done == BLK_ID_BYTES {
                break;
            }
            let n = (s.len as usize).min(BLK_ID_BYTES - done);
            if mem
                .write_slice(&self.serial[done..done + n], s.addr)
                .is_err()
            {
                break;
            }
            done += n;
        }
        done as u32
    }
}

/// Run `f` over the guest buffers as host slices. The segments were checked to lie in guest RAM;
/// one may still span two memory regions, so it can become two slices.
fn with_slices<T>(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    f: impl FnOnce(&[VolatileSlice<'_>]) -> Result<T, VolumeError>,
) -> Result<T, VolumeError> {
    if let [one] = segs {
        // The usual case: one buffer inside one memory region, no list to allocate.
        if let Ok(slice) = vm_memory::GuestMemoryBackend::get_slice(mem, one.addr, one.len as usize)
        {
            return f(&[slice]);
        }
    }
    let mut slices = Vec::with_capacity(segs.len());
    for s in segs {
        for slice in mem
            .get_slices(s.addr, s.len as usize, vm_memory::Permissions::ReadWrite)
            .map_err(|e| VolumeError::GuestBuffer(e.to_string()))?
        {
            slices.push(slice.map_err(|e| VolumeError::GuestBuffer(e.to_string()))?);
        }
    }
    f(&slices)
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;
