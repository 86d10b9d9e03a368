//! Fuzz the virtio-mmio register file: any sequence of reads and writes of any width at any
//! offset, interleaved with queue processing, over guest memory the input also fills.
//!
//! Input: a sequence of 8-byte operations: kind (0-3 read, 4-11 write, 12-13 process the queue,
//! 14-15 driver-style bring-up), width (1, 2, 4 or 8 bytes), offset (le16, within the 4 KiB
//! window), value (le32). Whatever follows the last whole operation becomes guest memory.

#![no_main]

#[path = "common.rs"]
mod common;

use amivm::vmm::devices::bus::BusDevice;
use amivm::vmm::devices::virtio::driver::{bring_up, reg_read, DriverQueue};
use amivm::vmm::devices::virtio::spec::*;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;

const OP_LEN: usize = 8;
const MAX_OPS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let nops = (data.len() / OP_LEN).min(MAX_OPS);
    let (ops, tail) = data.split_at(nops * OP_LEN);
    let mem = common::memory(tail);
    let read_only = data.first().is_some_and(|b| b & 0x80 != 0);
    let mut dev = common::device(&mem, read_only);
    for op in ops.chunks_exact(OP_LEN) {
        let kind = op[0] & 0x0f;
        let width = 1usize << (op[1] & 3);
        let offset = u64::from(u16::from_le_bytes([op[2], op[3]])) % MMIO_WINDOW_SIZE;
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        match kind {
            0..=3 => {
                let mut buf = [0u8; 8];
                dev.read(offset, &mut buf[..width]);
            }
            4..=11 => {
                let bytes = u64::from(value).to_le_bytes();
                dev.write(offset, &bytes[..width]);
            }
            12 | 13 => {
                dev.process_queue();
            }
            _ => {
                let q = DriverQueue::new(&mem, GuestAddress(u64::from(value) & 0xfff0), 16);
                let f = u64::from(value) << 3;
                bring_up(&mut dev, &q, f);
            }
        }
        // Invariants any driver relies on.
        assert_eq!(reg_read(&mut dev, REG_MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(reg_read(&mut dev, REG_VERSION), MMIO_VERSION);
        let status = reg_read(&mut dev, REG_STATUS);
        if status & STATUS_DRIVER_OK != 0 {
            assert_ne!(status & STATUS_FEATURES_OK, 0, "DRIVER_OK without FEATURES_OK");
        }
    }
    common::check_disk();
});
