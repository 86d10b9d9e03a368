//! Fuzz the virtio-net frame path: guest memory holding both queues' descriptor tables, rings
//! and buffers comes from the input, and so does the byte stream the backend (a real socketpair
//! in passt's framing) delivers. The device must end every pass, within its budget, without
//! panicking, and never hand the backend a frame over the maximum.
//!
//! Input: byte 0 = options (bits 0-3 RX queue size as a power of two, bits 4-7 TX's), byte 1 =
//! how many 64-byte units of what follows are the backend's stream; the rest is guest memory
//! from address 0. RX rings at 0x0/0x1000/0x1800, TX rings at 0x2000/0x3000/0x3800.

#![no_main]

use amivm::net::stream::StreamBackend;
use amivm::net::MAX_FRAME;
use amivm::vmm::devices::bus::BusDevice;
use amivm::vmm::devices::virtio::driver::{device_features, reg_read, reg_write};
use amivm::vmm::devices::virtio::net::FrameInterceptor;
use amivm::vmm::devices::virtio::net_mmio::MmioNetDevice;
use amivm::vmm::devices::virtio::spec::*;
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest RAM: 64 KiB at 0, a hole, 64 KiB at 128 KiB.
const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
const RINGS: [(u64, u64, u64); 2] = [(0x0, 0x1000, 0x1800), (0x2000, 0x3000, 0x3800)];

/// Takes frames of EtherType 0x88B5 and answers each with one frame of fuzzer-chosen length.
struct Tap {
    pending: Vec<usize>,
}

impl FrameInterceptor for Tap {
    fn accepts(&self, f: &[u8]) -> bool {
        f.len() >= 14 && f[12..14] == [0x88, 0xb5]
    }
    fn receive(&mut self, f: &[u8]) {
        if self.pending.len() < 4 {
            self.pending.push(f.len());
        }
    }
    fn transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        let n = self.pending.pop()?.min(out.len());
        out[..n].fill(0x5a);
        Some(n)
    }
    fn poll_at(&self) -> Option<Duration> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let [opts, units, rest @ ..] = data else {
        return;
    };
    let split = (usize::from(*units) * 64).min(rest.len());
    let (stream, memory) = rest.split_at(split);
    let ranges: Vec<(GuestAddress, usize)> =
        RAM.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
    let n = memory.len().min(RAM[0].1);
    vm_memory::Bytes::write_slice(&mem, &memory[..n], GuestAddress(0)).expect("fill memory");

    let (a, mut peer) = UnixStream::pair().expect("socketpair");
    peer.set_nonblocking(true).expect("nonblocking");
    let _ = peer.write(stream);
    let be = Box::new(StreamBackend::new(a, "fuzz").expect("backend"));
    let tap = Box::new(Tap { pending: Vec::new() });
    let mut dev = MmioNetDevice::new(mem.clone(), [2, 0, 0, 0, 0, 1], be, Some(tap)).expect("dev");
    let d: &mut dyn BusDevice = &mut dev;
    let f = device_features(d);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    reg_write(d, REG_STATUS, s);
    for (sel, v) in [(0, f as u32), (1, (f >> 32) as u32)] {
        reg_write(d, REG_DRIVER_FEATURES_SEL, sel);
        reg_write(d, REG_DRIVER_FEATURES, v);
    }
    reg_write(d, REG_STATUS, s | STATUS_FEATURES_OK);
    for (i, (desc, avail, used)) in RINGS.into_iter().enumerate() {
        let qsize = 1u32 << ((opts >> (4 * i)) & 0xf).min(6);
        reg_write(d, REG_QUEUE_SEL, i as u32);
        reg_write(d, REG_QUEUE_NUM, qsize);
        reg_write(d, REG_QUEUE_DESC_LOW, desc as u32);
        reg_write(d, REG_QUEUE_DRIVER_LOW, avail as u32);
        reg_write(d, REG_QUEUE_DEVICE_LOW, used as u32);
        reg_write(d, REG_QUEUE_READY, 1);
    }
    reg_write(d, REG_STATUS, s | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let _ = reg_read(d, REG_STATUS);
    for _ in 0..4 {
        dev.process_queues();
    }
    // Whatever reached the backend is well-framed and within the maximum.
    let mut out = Vec::new();
    let _ = peer.read_to_end(&mut out);
    let mut at = 0;
    while at + 4 <= out.len() {
        let len = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        assert!(len <= MAX_FRAME, "frame of {len} bytes reached the backend");
        at += 4 + len;
    }
});
