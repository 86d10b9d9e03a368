//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2): the register file, the
//! device-status state machine, feature negotiation and queue setup, for a device with one or
//! more virtqueues (virtio-blk has one, virtio-net two).
//!
//! The interrupt registers (InterruptStatus, InterruptACK) and QueueNotify are not here: they are
//! served without taking the device lock (see the parent module), so that acknowledging an
//! interrupt never waits for a request in progress.

use super::spec::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// What a register write asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEffect {
    None,
    /// The driver wrote 0 to Status: the device and its queue were reset; clear the interrupt
    /// status too.
    Reset,
    /// DRIVER_OK was set: the device is live; serve anything already queued.
    Activated,
}

/// Register state of one virtio-mmio device.
pub struct MmioTransport {
    device_id: u32,
    device_features: u64,
    /// The device's configuration space (read-only for the driver: no field we offer is writable).
    config: Vec<u8>,
    config_generation: u32,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    /// The virtqueues, by index (QueueSel).
    pub queues: Vec<Queue>,
}

impl MmioTransport {
    /// A device of type `device_id` offering `device_features`, with configuration space
    /// `config` and a queue of at most `queue_max` entries (a power of two).
    pub fn new(
        device_id: u32,
        device_features: u64,
        config: Vec<u8>,
        queue_max: u16,
    ) -> Result<Self, virtio_queue::Error> {
        Self::with_queues(device_id, device_features, config, queue_max, 1)
    }

    /// As [`MmioTransport::new`], with `count` virtqueues of at most `queue_max` entries each.
    pub fn with_queues(
        device_id: u32,
        device_features: u64,
        config: Vec<u8>,
        queue_max: u16,
        count: usize,
    ) -> Result<Self, virtio_queue::Error> {
        let queues = (0..count.max(1))
            .map(|_| Queue::new(queue_max))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device_id,
            device_features,
            config,
            config_generation: 0,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            queues,
        })
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features both sides agreed on (valid once FEATURES_OK is set).
    pub fn acked_features(&self) -> u64 {
        self.driver_features & self.device_features
    }

    /// Whether the driver finished initialisation and the device may use its queues (all of
    /// them set up and ready).
    pub fn is_live(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
            && self.status & STATUS_DEVICE_NEEDS_RESET == 0
            && self.queues.iter().all(|q| q.ready())
    }

    /// Queue 0 (the only queue of a single-queue device).
    pub fn queue(&self) -> &Queue {
        &self.queues[0]
    }

    /// Queue 0, mutable.
    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queues[0]
    }

    /// The queue QueueSel selects, if it exists.
    fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The device hit an error it cannot recover from without a reset (2.1.2).
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
    }

    /// Replace the configuration space (a config change: the generation moves, 4.2.2).
    pub fn update_config(&mut self, config: Vec<u8>) {
        if config != self.config {
            self.config = config;
            self.config_generation = self.config_generation.wrapping_add(1);
        }
    }

    /// Handle a read at `offset` (relative to the window). Unknown registers and bad widths read
    /// as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= REG_CONFIG {
            let start = (offset - REG_CONFIG) as usize;
            if let Some(src) = start
                .checked_add(data.len())
                .and_then(|end| self.config.get(start..end))
            {
                data.copy_from_slice(src);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let v: u32 = match offset {
            REG_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_id,
            REG_VENDOR_ID => MMIO_VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => u32::from(self.selected().is_some_and(|q| q.ready())),
            REG_STATUS => self.status,
            // No shared memory regions: "reading from a non-existent region returns -1" (4.2.2).
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Handle a write at `offset`. Writes the current state does not allow are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8], mem: &GuestMemoryMmap) -> WriteEffect {
        if offset >= REG_CONFIG {
            log::debug!("virtio-mmio: write to read-only config at {offset:#x} ignored");
            return WriteEffect::None;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return WriteEffect::None;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => self.write_driver_features(v),
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_SHM_SEL => self.shm_sel = v,
            REG_STATUS => return self.write_status(v),
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue(offset, v, mem),
            _ => log::debug!("virtio-mmio: write {v:#x} to {offset:#x} ignored"),
        }
        WriteEffect::None
    }

    fn write_driver_features(&mut self, v: u32) {
        // Features may change only between DRIVER and FEATURES_OK (3.1.1).
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            log::debug!("virtio-mmio: DriverFeatures write outside negotiation ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) -> WriteEffect {
        if v == 0 {
            self.reset();
            return WriteEffect::Reset;
        }
        // DEVICE_NEEDS_RESET is the device's to set; the driver only adds bits (2.1.1).
        let keep = self.status & STATUS_DEVICE_NEEDS_RESET;
        let mut new = v & !STATUS_DEVICE_NEEDS_RESET;
        let old = self.status & !STATUS_DEVICE_NEEDS_RESET;
        if old & !new != 0 {
            log::debug!("virtio-mmio: status {v:#x} clears bits of {old:#x}: ignored");
            return WriteEffect::None;
        }
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable(new) {
            // Refused: the driver reads FEATURES_OK back as clear (3.1.1 step 6).
            new &= !STATUS_FEATURES_OK;
        }
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new | keep;
        if new & !old & STATUS_DRIVER_OK != 0 {
            let event_idx = self.acked_features() & VIRTIO_F_RING_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            return WriteEffect::Activated;
        }
        WriteEffect::None
    }

    /// FEATURES_OK is accepted only after ACKNOWLEDGE and DRIVER, for a subset of what we offer
    /// that includes VIRTIO_F_VERSION_1 (a version 2 transport has no legacy mode).
    fn features_acceptable(&self, status: u32) -> bool {
        let order = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        status & order == order
            && self.driver_features & !self.device_features == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn write_queue(&mut self, offset: u64, v: u32, mem: &GuestMemoryMmap) {
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            log::debug!("virtio-mmio: queue setup before FEATURES_OK ignored");
            return;
        }
        let sel = self.queue_sel;
        let Some(queue) = self.queues.get_mut(sel as usize) else {
            log::debug!("virtio-mmio: write to queue {sel} which does not exist");
            return;
        };
        if offset == REG_QUEUE_READY {
            if v == 0 {
                queue.set_ready(false);
                return;
            }
            queue.set_ready(true);
            if !queue.is_valid(mem) {
                log::warn!("virtio-mmio: queue rings outside guest memory; not ready");
                queue.set_ready(false);
            }
            return;
        }
        if queue.ready() {
            log::debug!("virtio-mmio: queue setup while ready ignored");
            return;
        }
        match offset {
            REG_QUEUE_NUM => {
                let size = u16::try_from(v).unwrap_or(0);
                if queue.try_set_size(size).is_err() {
                    log::debug!("virtio-mmio: bad queue size {v}");
                }
            }
            REG_QUEUE_DESC_LOW => queue.set_desc_table_address(Some(v), None),
            REG_QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(v)),
            REG_QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(v), None),
            REG_QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(v)),
            REG_QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(v), None),
            REG_QUEUE_DEVICE_HIGH => queue.set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    /// Back to the state after power-on (2.4).
    fn reset(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
    }
}
