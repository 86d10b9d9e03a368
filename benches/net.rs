//! Device-model benchmark for virtio-net (issue 10): drives `MmioNetDevice` in-process through
//! real split virtqueues in a `GuestMemoryMmap` (no guest CPU) over the passt-framed socketpair
//! backend, and compares it with plain write(2)/read(2) of the same length-prefixed frames on a
//! socketpair, in the same run.
//!
//! - TX: the device takes frames from the TX queue and writes them to the socketpair; a thread
//!   reads the far end. Baseline: one write(2) per frame, the same reader.
//! - RX: a thread writes frames to the far end; the device delivers them into posted RX
//!   buffers. Baseline: the same writer, the near end read with read(2) into a 64 KiB buffer.
//!
//! Figures: frames/s and MB/s (frame bytes, without prefix or virtio header), the median of
//! `BENCH_ROUNDS` rounds (default 5), device and baseline alternating; ratio = device/baseline.
//! `BENCH_FRAMES` (default 100000) frames per round.

use amivm::net::stream::StreamBackend;
use amivm::vmm::devices::virtio::driver::{device_features, reg_read, reg_write, DriverQueue};
use amivm::vmm::devices::virtio::net::NET_HDR_LEN;
use amivm::vmm::devices::virtio::net_mmio::MmioNetDevice;
use amivm::vmm::devices::virtio::spec::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 256;
/// Chains published per batch (half the queue: the driver refills while the device works).
const BATCH: usize = 128;
const RXQ_AT: u64 = 0x1_0000;
const TXQ_AT: u64 = 0x2_0000;
const BUFS_AT: u64 = 0x10_0000;
const SLOT: u64 = 2048;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13) as u8).collect()
}

struct Guest {
    mem: GuestMemoryMmap,
    dev: MmioNetDevice,
    rx: DriverQueue,
    tx: DriverQueue,
}

fn guest() -> (Guest, UnixStream) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let (a, peer) = UnixStream::pair().unwrap();
    let be = Box::new(StreamBackend::new(a, "bench").unwrap());
    let mut dev = MmioNetDevice::new(mem.clone(), [2, 0, 0, 0, 0, 1], be, None).unwrap();
    let rx = DriverQueue::new(&mem, GuestAddress(RXQ_AT), QSIZE);
    let tx = DriverQueue::new(&mem, GuestAddress(TXQ_AT), QSIZE);
    let f = device_features(&mut dev);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    reg_write(&mut dev, REG_STATUS, s);
    for (sel, v) in [(0, f as u32), (1, (f >> 32) as u32)] {
        reg_write(&mut dev, REG_DRIVER_FEATURES_SEL, sel);
        reg_write(&mut dev, REG_DRIVER_FEATURES, v);
    }
    reg_write(&mut dev, REG_STATUS, s | STATUS_FEATURES_OK);
    for (i, q) in [&rx, &tx].into_iter().enumerate() {
        reg_write(&mut dev, REG_QUEUE_SEL, i as u32);
        reg_write(&mut dev, REG_QUEUE_NUM, u32::from(QSIZE));
        for (lo, hi, a) in [
            (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, q.desc_addr()),
            (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, q.avail_addr()),
            (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, q.used_addr()),
        ] {
            reg_write(&mut dev, lo, a.0 as u32);
            reg_write(&mut dev, hi, (a.0 >> 32) as u32);
        }
        reg_write(&mut dev, REG_QUEUE_READY, 1);
    }
    reg_write(
        &mut dev,
        REG_STATUS,
        s | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_ne!(reg_read(&mut dev, REG_STATUS) & STATUS_DRIVER_OK, 0);
    (Guest { mem, dev, rx, tx }, peer)
}

/// Read `bytes` bytes from `s` in 64 KiB reads.
fn sink(mut s: UnixStream, bytes: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut b = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < bytes {
            got += s.read(&mut b).unwrap();
        }
    })
}

/// Write `n` prefixed frames of `f` to `s`, one write(2) each.
fn source(mut s: UnixStream, f: Vec<u8>, n: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rec = (f.len() as u32).to_be_bytes().to_vec();
        rec.extend_from_slice(&f);
        for _ in 0..n {
            s.write_all(&rec).unwrap();
        }
    })
}

/// Seconds for the device to transmit `n` frames of `len` bytes.
fn device_tx(len: usize, n: usize) -> f64 {
    let (mut g, peer) = guest();
    let f = frame(len);
    let mut data = vec![0u8; NET_HDR_LEN];
    data.extend_from_slice(&f);
    for i in 0..u64::from(QSIZE) {
        g.mem
            .write_slice(&data, GuestAddress(BUFS_AT + i * SLOT))
            .unwrap();
    }
    let reader = sink(peer, n * (4 + len));
    let t = Instant::now();
    let (mut sent, mut slot) = (0usize, 0u64);
    while sent < n {
        let k = BATCH.min(n - sent);
        for _ in 0..k {
            let at = GuestAddress(BUFS_AT + slot * SLOT);
            slot = (slot + 1) % u64::from(QSIZE);
            let h = g.tx.add_chain(&[(at, data.len() as u32, false)]);
            g.tx.publish(h);
        }
        let mut done = 0;
        while done < k {
            let o = g.dev.process_queues();
            done += o.tx.completed;
            g.tx.reap_all();
            if o.tx_blocked {
                // As the worker does: sleep until the backend can take more.
                wait_fd(&g.dev, libc::POLLOUT);
            }
        }
        sent += k;
    }
    reader.join().unwrap();
    t.elapsed().as_secs_f64()
}

/// Seconds for plain write(2)s of the same `n` prefixed frames.
fn plain_tx(len: usize, n: usize) -> f64 {
    let (a, b) = UnixStream::pair().unwrap();
    let reader = sink(b, n * (4 + len));
    let t = Instant::now();
    source(a, frame(len), n).join().unwrap();
    reader.join().unwrap();
    t.elapsed().as_secs_f64()
}

/// Seconds for the device to deliver `n` frames of `len` bytes into posted RX buffers.
fn device_rx(len: usize, n: usize) -> f64 {
    let (mut g, peer) = guest();
    let mut posted = 0usize;
    let mut slot = 0u64;
    let mut post = |g: &mut Guest, k: usize| {
        for _ in 0..k {
            let at = GuestAddress(BUFS_AT + slot * SLOT);
            slot = (slot + 1) % u64::from(QSIZE);
            let h = g.rx.add_chain(&[(at, SLOT as u32, true)]);
            g.rx.publish(h);
        }
    };
    post(&mut g, usize::from(QSIZE));
    posted += usize::from(QSIZE);
    let t = Instant::now();
    let writer = source(peer, frame(len), n);
    let mut got = 0usize;
    while got < n {
        let o = g.dev.process_queues();
        if o.rx.completed == 0 {
            // As the worker does: sleep until a frame arrives.
            wait_fd(&g.dev, libc::POLLIN);
        }
        let done = o.rx.completed;
        let reaped = usize::from(g.rx.reap_all());
        got += done;
        if reaped > 0 && posted < n + usize::from(QSIZE) {
            post(&mut g, reaped);
            posted += reaped;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    writer.join().unwrap();
    secs
}

/// Seconds for plain read(2)s of the same `n` prefixed frames.
fn plain_rx(len: usize, n: usize) -> f64 {
    let (a, b) = UnixStream::pair().unwrap();
    let t = Instant::now();
    let writer = source(a, frame(len), n);
    sink(b, n * (4 + len)).join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    writer.join().unwrap();
    secs
}

/// Block until the device's backend fd is ready for `events`.
fn wait_fd(dev: &MmioNetDevice, events: libc::c_short) {
    let Some(fd) = dev.backend_fd() else { return };
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, for the duration of the call.
    unsafe { libc::poll(&mut p, 1, 1000) };
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds = env_usize("BENCH_ROUNDS", 5).max(1);
    let n = env_usize("BENCH_FRAMES", 100_000).max(1);
    println!("virtio-net device model vs plain socketpair write/read: {n} frames per round, median of {rounds} rounds");
    println!(
        "{:<4} {:>5} {:>14} {:>10} {:>14} {:>10} {:>6}",
        "dir", "bytes", "device fr/s", "MB/s", "plain fr/s", "MB/s", "ratio"
    );
    type Run = fn(usize, usize) -> f64;
    let cases: [(&str, Run, Run); 2] = [("tx", device_tx, plain_tx), ("rx", device_rx, plain_rx)];
    for (dir, dev, plain) in cases {
        for len in [64usize, 1500] {
            let (mut d, mut p) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                d.push(dev(len, n));
                p.push(plain(len, n));
            }
            let (d, p) = (median(d), median(p));
            let fps = |s: f64| n as f64 / s;
            let mbs = |s: f64| (n * len) as f64 / s / 1e6;
            println!(
                "{dir:<4} {len:>5} {:>14.0} {:>10.1} {:>14.0} {:>10.1} {:>6.2}",
                fps(d),
                mbs(d),
                fps(p),
                mbs(p),
                p / d
            );
        }
    }
}
