//! The driver's side of a split virtqueue (virtio 1.2, section 2.7), in guest memory: what a
//! guest's virtio driver does, written from the host. Used by the unit tests, the fuzz targets
//! and the device-model benchmark to drive [`super::MmioBlockDevice`] through real rings without
//! a guest CPU.

use super::spec::*;
use crate::vmm::devices::bus::BusDevice;
use std::sync::atomic::Ordering;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor flag: the chain continues at `next` (2.7.5).
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (2.7.5).
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table (2.7.5.3).
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Size of one descriptor: le64 addr, le32 len, le16 flags, le16 next (2.7.5).
pub const DESC_SIZE: u64 = 16;

/// One buffer of a chain: guest address, length, device-writable.
pub type Buf = (GuestAddress, u32, bool);

/// A split virtqueue laid out from `base`: descriptor table, available ring, used ring.
pub struct DriverQueue {
    mem: GuestMemoryMmap,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    avail_idx: u16,
    last_used: u16,
    next_desc: u16,
}

impl DriverQueue {
    /// Bytes the rings of a `size`-entry queue take.
    pub fn bytes_needed(size: u16) -> u64 {
        let s = u64::from(size);
        let avail_end = DESC_SIZE * s + 6 + 2 * s;
        avail_end.next_multiple_of(4) + 6 + 8 * s
    }

    /// Lay out (and zero) a queue of `size` entries at `base` (16-byte aligned).
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let s = u64::from(size);
        let desc = base;
        let avail = base.unchecked_add(DESC_SIZE * s);
        let used = GuestAddress((avail.0 + 6 + 2 * s).next_multiple_of(4));
        let zeros = vec![0u8; Self::bytes_needed(size) as usize];
        let _ = mem.write_slice(&zeros, base);
        DriverQueue {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
            next_desc: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn desc_addr(&self) -> GuestAddress {
        self.desc
    }
    pub fn avail_addr(&self) -> GuestAddress {
        self.avail
    }
    pub fn used_addr(&self) -> GuestAddress {
        self.used
    }

    /// Write descriptor `idx` as given (no checks: tests use it to build hostile chains).
    pub fn set_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; DESC_SIZE as usize];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let at = self
            .desc
            .unchecked_add(u64::from(idx % self.size) * DESC_SIZE);
        let _ = self.mem.write_slice(&d, at);
    }

    /// Write a chain of `bufs` into free descriptors (taken in turn, wrapping); returns its head.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let next = (idx + 1) % self.size;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.set_desc(idx, addr.0, len, flags, next);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        head
    }

    /// Make the chain at `head` available to the device.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let _ = self
            .mem
            .write_obj(head.to_le(), self.avail.unchecked_add(4 + 2 * slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Store the available index as given (tests use it to lie about the ring).
    pub fn set_avail_idx(&self, idx: u16) {
        let _ = self
            .mem
            .store(idx.to_le(), self.avail.unchecked_add(2), Ordering::Release);
    }

    /// `used_event`: ask for an interrupt once the device has used this many more entries.
    pub fn set_used_event(&self, v: u16) {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        let _ = self.mem.write_obj(v.to_le(), at);
    }

    /// The device's `avail_event` (where it wants the next notification).
    pub fn avail_event(&self) -> u16 {
        let at = self.used.unchecked_add(4 + 8 * u64::from(self.size));
        u16::from_le(self.mem.read_obj(at).unwrap_or(0))
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(self.used.unchecked_add(2), Ordering::Acquire)
                .unwrap_or(0),
        )
    }

    /// Consume every used element at once without reading them; returns how many there were.
    pub fn reap_all(&mut self) -> u16 {
        let idx = self.used_idx();
        let n = idx.wrapping_sub(self.last_used);
        self.last_used = idx;
        n
    }

    /// The next used element, if any: (descriptor head, length written).
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let at = self.used.unchecked_add(4 + 8 * slot);
        let id: u32 = self.mem.read_obj(at).ok()?;
        let len: u32 = self.mem.read_obj(at.unchecked_add(4)).ok()?;
        self.last_used = self.last_used.wrapping_add(1);
        Some((u32::from_le(id), u32::from_le(len)))
    }
}

/// Read a 32-bit register.
pub fn reg_read(dev: &mut dyn BusDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Write a 32-bit register.
pub fn reg_write(dev: &mut dyn BusDevice, offset: u64, v: u32) {
    dev.write(offset, &v.to_le_bytes());
}

/// The 64 feature bits the device offers.
pub fn device_features(dev: &mut dyn BusDevice) -> u64 {
    reg_write(dev, REG_DEVICE_FEATURES_SEL, 0);
    let lo = reg_read(dev, REG_DEVICE_FEATURES);
    reg_write(dev, REG_DEVICE_FEATURES_SEL, 1);
    let hi = reg_read(dev, REG_DEVICE_FEATURES);
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Initialise the device as a driver does (3.1.1): reset, ACKNOWLEDGE, DRIVER, accept
/// `features`, FEATURES_OK, set up queue 0 as `q`, DRIVER_OK. Returns the status read back.
pub fn bring_up(dev: &mut dyn BusDevice, q: &DriverQueue, features: u64) -> u32 {
    reg_write(dev, REG_STATUS, 0);
    reg_write(dev, REG_STATUS, STATUS_ACKNOWLEDGE);
    reg_write(dev, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    reg_write(dev, REG_DRIVER_FEATURES_SEL, 0);
    reg_write(dev, REG_DRIVER_FEATURES, features as u32);
    reg_write(dev, REG_DRIVER_FEATURES_SEL, 1);
    reg_write(dev, REG_DRIVER_FEATURES, (features >> 32) as u32);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    reg_write(dev, REG_STATUS, s);
    if reg_read(dev, REG_STATUS) & STATUS_FEATURES_OK == 0 {
        return reg_read(dev, REG_STATUS);
    }
    reg_write(dev, REG_QUEUE_SEL, 0);
    reg_write(dev, REG_QUEUE_NUM, u32::from(q.size()));
    let regs = [
        (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, q.desc_addr()),
        (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, q.avail_addr()),
        (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, q.used_addr()),
    ];
    for (lo, hi, a) in regs {
        reg_write(dev, lo, a.0 as u32);
        reg_write(dev, hi, (a.0 >> 32) as u32);
    }
    reg_write(dev, REG_QUEUE_READY, 1);
    reg_write(dev, REG_STATUS, s | STATUS_DRIVER_OK);
    reg_read(dev, REG_STATUS)
}

/// Write a virtio-blk request header (5.2.6) at `at`.
pub fn write_blk_header(mem: &GuestMemoryMmap, at: GuestAddress, req_type: u32, sector: u64) {
    let mut h = [0u8; REQ_HEADER_LEN];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    let _ = mem.write_slice(&h, at);
}
