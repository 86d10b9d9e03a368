//! The network device end to end at the device-model level: driver-side queues in real guest
//! memory, the MMIO register file, a real socketpair as the backend (passt's framing).

use super::*;
use crate::net::stream::StreamBackend;
use crate::net::{FrameBackend, MAX_FRAME};
use crate::vmm::devices::virtio::driver::*;
use crate::vmm::devices::virtio::net_mmio::MmioNetDevice;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MIB: usize = 1 << 20;
const QSIZE: u16 = 16;
const RXQ: GuestAddress = GuestAddress(0x1000);
const TXQ: GuestAddress = GuestAddress(0x4000);
const BUF: u64 = 0x10000;
const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
/// An EtherType for local experiments (IEEE 802: 0x88B5), which the test interceptor takes.
const ETHERTYPE_TEST: [u8; 2] = [0x88, 0xb5];

/// A frame of `len` bytes: broadcast destination, our MAC, an EtherType, then a pattern.
fn frame(len: usize, ethertype: [u8; 2], seed: u8) -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&ethertype);
    f.extend((0..len.saturating_sub(14)).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    f.truncate(len);
    f
}

/// Answers each frame it takes with the same frame, source and destination swapped.
#[derive(Default)]
struct Echo {
    pending: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FrameInterceptor for Echo {
    fn accepts(&self, f: &[u8]) -> bool {
        f.len() >= 14 && f[12..14] == ETHERTYPE_TEST
    }
    fn receive(&mut self, f: &[u8]) {
        let mut r = f.to_vec();
        r[..6].copy_from_slice(&f[6..12]);
        r[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        self.pending.lock().unwrap().push(r);
    }
    fn transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        let mut p = self.pending.lock().unwrap();
        if p.is_empty() {
            return None;
        }
        let f = p.remove(0);
        out[..f.len()].copy_from_slice(&f);
        Some(f.len())
    }
    fn poll_at(&self) -> Option<Duration> {
        None
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    dev: MmioNetDevice,
    rx: DriverQueue,
    tx: DriverQueue,
    peer: UnixStream,
    next_buf: u64,
}

fn bring_up_net(dev: &mut MmioNetDevice, rx: &DriverQueue, tx: &DriverQueue) -> u32 {
    let f = device_features(dev);
    reg_write(dev, REG_STATUS, 0);
    reg_write(dev, REG_STATUS, STATUS_ACKNOWLEDGE);
    reg_write(dev, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    for (sel, v) in [(0, f as u32), (1, (f >> 32) as u32)] {
        reg_write(dev, REG_DRIVER_FEATURES_SEL, sel);
        reg_write(dev, REG_DRIVER_FEATURES, v);
    }
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    reg_write(dev, REG_STATUS, s);
    for (i, q) in [rx, tx].into_iter().enumerate() {
        reg_write(dev, REG_QUEUE_SEL, i as u32);
        reg_write(dev, REG_QUEUE_NUM, u32::from(q.size()));
        for (lo, hi, a) in [
            (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, q.desc_addr()),
            (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, q.avail_addr()),
            (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, q.used_addr()),
        ] {
            reg_write(dev, lo, a.0 as u32);
            reg_write(dev, hi, (a.0 >> 32) as u32);
        }
        reg_write(dev, REG_QUEUE_READY, 1);
    }
    reg_write(dev, REG_STATUS, s | STATUS_DRIVER_OK);
    reg_read(dev, REG_STATUS)
}

impl Rig {
    fn new(interceptor: Option<Box<dyn FrameInterceptor>>) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 * MIB)]).unwrap();
        let (a, peer) = UnixStream::pair().unwrap();
        let be: Box<dyn FrameBackend> = Box::new(StreamBackend::new(a, "test").unwrap());
        let mut dev = MmioNetDevice::new(mem.clone(), MAC, be, interceptor).unwrap();
        let rx = DriverQueue::new(&mem, RXQ, QSIZE);
        let tx = DriverQueue::new(&mem, TXQ, QSIZE);
        let st = bring_up_net(&mut dev, &rx, &tx);
        assert_eq!(st & STATUS_DRIVER_OK, STATUS_DRIVER_OK, "status {st:#x}");
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Rig {
            mem,
            dev,
            rx,
            tx,
            peer,
            next_buf: BUF,
        }
    }

    /// A fresh guest buffer of `len` bytes holding `data` (zero-padded).
    fn buf(&mut self, data: &[u8], len: usize) -> GuestAddress {
        let at = GuestAddress(self.next_buf);
        let mut b = data.to_vec();
        b.resize(len, 0);
        self.mem.write_slice(&b, at).unwrap();
        self.next_buf += (len as u64).next_multiple_of(64);
        if self.next_buf > 2 * MIB as u64 - 0x10000 {
            self.next_buf = BUF;
        }
        at
    }

    /// Queue `f` for transmission as the Linux driver does: header and frame in one buffer.
    fn send(&mut self, f: &[u8]) -> u16 {
        let mut data = vec![0u8; NET_HDR_LEN];
        data.extend_from_slice(f);
        let at = self.buf(&data, data.len());
        let head = self.tx.add_chain(&[(at, data.len() as u32, false)]);
        self.tx.publish(head);
        head
    }

    /// Post one receive buffer of `len` bytes.
    fn post_rx(&mut self, len: u32) -> GuestAddress {
        let at = self.buf(&[], len as usize);
        let head = self.rx.add_chain(&[(at, len, true)]);
        self.rx.publish(head);
        at
    }

    /// Read one frame from the backend's far side.
    fn peer_frame(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.peer.read_exact(&mut len).unwrap();
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        self.peer.read_exact(&mut f).unwrap();
        f
    }

    fn peer_send(&mut self, f: &[u8]) {
        self.peer
            .write_all(&(f.len() as u32).to_be_bytes())
            .unwrap();
        self.peer.write_all(f).unwrap();
    }

    /// The frame in RX buffer `at` (after its header), per the used length.
    fn rx_frame(&self, at: GuestAddress, used: u32) -> Vec<u8> {
        let mut b = vec![0u8; used as usize];
        self.mem.read_slice(&mut b, at).unwrap();
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1, "num_buffers");
        assert!(b[..10].iter().all(|&x| x == 0), "header flags/gso zero");
        b.split_off(NET_HDR_LEN)
    }

    fn config(&mut self) -> Vec<u8> {
        (0..NET_CFG_LEN as u64)
            .map(|i| {
                let mut b = [0u8];
                crate::vmm::devices::bus::BusDevice::read(&mut self.dev, REG_CONFIG + i, &mut b);
                b[0]
            })
            .collect()
    }
}

#[test]
fn identity_features_and_config() {
    let mut r = Rig::new(None);
    assert_eq!(reg_read(&mut r.dev, REG_DEVICE_ID), VIRTIO_ID_NET);
    let f = device_features(&mut r.dev);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MTU,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    // No offloads, no mergeable buffers: bits 0-2, 7-15 and 17+ (below 32) clear.
    assert_eq!(f & 0xffff_0000_0000_0000, 0);
    assert_eq!(
        f & ((1 << 0) | (1 << 1) | (1 << 7) | (1 << 11) | (1 << 15)),
        0
    );
    let c = r.config();
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500);
    // Two queues; a third does not exist.
    for (q, max) in [(0, 256), (1, 256), (2, 0)] {
        reg_write(&mut r.dev, REG_QUEUE_SEL, q);
        assert_eq!(reg_read(&mut r.dev, REG_QUEUE_NUM_MAX), max);
    }
}

#[test]
fn frames_travel_both_ways() {
    let mut r = Rig::new(None);
    let out = frame(60, [0x08, 0x00], 1);
    let head = r.send(&out);
    // Also a chain with the header and the frame in separate, split descriptors.
    let out2 = frame(1514, [0x08, 0x06], 2);
    let hdr = r.buf(&[0u8; NET_HDR_LEN], NET_HDR_LEN);
    let a = r.buf(&out2[..100], 100);
    let b = r.buf(&out2[100..], out2.len() - 100);
    let head2 = r.tx.add_chain(&[
        (hdr, NET_HDR_LEN as u32, false),
        (a, 100, false),
        (b, (out2.len() - 100) as u32, false),
    ]);
    r.tx.publish(head2);
    let o = r.dev.process_queues();
    assert_eq!(o.tx.completed, 2);
    assert_eq!(r.peer_frame(), out);
    assert_eq!(r.peer_frame(), out2);
    assert_eq!(r.tx.pop_used(), Some((u32::from(head), 0)));
    assert_eq!(r.tx.pop_used(), Some((u32::from(head2), 0)));
    assert_eq!(r.dev.interrupt_status() & INT_USED_BUFFER, INT_USED_BUFFER);

    // Receive: one buffer per frame, and one frame split over a header-only descriptor.
    let inbound = frame(1514, [0x08, 0x00], 3);
    let at = r.post_rx(2048);
    r.peer_send(&inbound);
    let small = frame(42, [0x08, 0x06], 4);
    r.peer_send(&small);
    let h = r.buf(&[], NET_HDR_LEN);
    let d = r.buf(&[], 100);
    let head =
        r.rx.add_chain(&[(h, NET_HDR_LEN as u32, true), (d, 100, true)]);
    r.rx.publish(head);
    std::thread::sleep(Duration::from_millis(20));
    let o = r.dev.process_queues();
    assert_eq!(o.rx.completed, 2);
    let (_, used) = r.rx.pop_used().unwrap();
    assert_eq!(used as usize, NET_HDR_LEN + inbound.len());
    assert_eq!(r.rx_frame(at, used), inbound);
    let (_, used) = r.rx.pop_used().unwrap();
    assert_eq!(used as usize, NET_HDR_LEN + small.len());
    let mut got = vec![0u8; small.len()];
    r.mem.read_slice(&mut got, d).unwrap();
    assert_eq!(got, small);
    assert_eq!(r.dev.stats().rx_frames, 2);
}

#[test]
fn malformed_and_oversized_tx_chains_are_dropped_and_counted() {
    let mut r = Rig::new(None);
    // Oversized: header + 1519 bytes.
    r.send(&frame(MAX_FRAME + 1, [0x08, 0x00], 0));
    // Shorter than the headers.
    r.send(&[0u8; 10]);
    // A device-writable descriptor in a TX chain.
    let at = r.buf(&[0u8; 80], 80);
    let h = r.tx.add_chain(&[(at, 80, true)]);
    r.tx.publish(h);
    // A descriptor outside guest memory, and one whose length wraps the address space.
    let h =
        r.tx.add_chain(&[(GuestAddress(64 * MIB as u64), 80, false)]);
    r.tx.publish(h);
    let h = r.tx.add_chain(&[(GuestAddress(u64::MAX - 8), 80, false)]);
    r.tx.publish(h);
    // A descriptor loop: the walk ends at the queue size (16 x 200 bytes: oversized), the
    // device does not hang.
    let big = r.buf(&[0u8; 200], 200);
    let h = r.tx.add_chain(&[(big, 200, false)]);
    r.tx.set_desc(h, big.0, 200, VRING_DESC_F_NEXT, h);
    r.tx.publish(h);
    // Then a good frame.
    let good = frame(100, [0x08, 0x00], 9);
    r.send(&good);
    let o = r.dev.process_queues();
    assert_eq!(o.tx.completed, 7);
    let s = r.dev.stats();
    assert_eq!((s.tx_oversized, s.tx_malformed), (2, 4), "{s:?}");
    assert_eq!(s.tx_frames, 1);
    assert_eq!(r.peer_frame(), good);
    // Every chain went back to the guest.
    assert_eq!(r.tx.reap_all(), 7);
}

#[test]
fn bad_rx_chains_drop_the_frame_not_the_device() {
    let mut r = Rig::new(None);
    let f1 = frame(1000, [0x08, 0x00], 1);
    let f2 = frame(200, [0x08, 0x00], 2);
    let f3 = frame(300, [0x08, 0x00], 3);
    for f in [&f1, &f2, &f3] {
        r.peer_send(f);
    }
    // Too small for f1; a device-readable buffer for f2; a good one for f3.
    r.post_rx(500);
    let at = r.buf(&[], 2048);
    let h = r.rx.add_chain(&[(at, 2048, false)]);
    r.rx.publish(h);
    let good = r.post_rx(2048);
    std::thread::sleep(Duration::from_millis(20));
    let o = r.dev.process_queues();
    assert_eq!(o.rx.completed, 3);
    assert_eq!(r.dev.stats().rx_dropped, 2);
    assert_eq!(r.rx.pop_used().unwrap().1, 0);
    assert_eq!(r.rx.pop_used().unwrap().1, 0);
    let (_, used) = r.rx.pop_used().unwrap();
    assert_eq!(r.rx_frame(good, used), f3);
}

#[test]
fn frames_wait_for_receive_buffers_one_at_most_in_the_device() {
    let mut r = Rig::new(None);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(500, [0x08, 0x00], i)).collect();
    for f in &frames {
        r.peer_send(f);
    }
    std::thread::sleep(Duration::from_millis(20));
    let o = r.dev.process_queues();
    assert!(o.rx_starved);
    assert_eq!(o.rx.completed, 0);
    let mut got = Vec::new();
    for _ in 0..5 {
        let at = r.post_rx(2048);
        let o = r.dev.process_queues();
        assert_eq!(o.rx.completed, 1);
        let (_, used) = r.rx.pop_used().unwrap();
        got.push(r.rx_frame(at, used));
    }
    assert_eq!(got, frames);
}

#[test]
fn a_stalled_backend_pushes_back_on_the_guest() {
    let mut r = Rig::new(None);
    let f = frame(MAX_FRAME, [0x08, 0x00], 7);
    // The peer reads nothing: keep queueing until the device stops taking chains.
    let mut taken = 0usize;
    let mut blocked = false;
    for _ in 0..10_000 {
        r.send(&f);
        let o = r.dev.process_queues();
        taken += o.tx.completed;
        r.tx.reap_all();
        if o.tx_blocked {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the device never pushed back");
    // The chain it could not send stays with the guest; processing again takes nothing.
    let o = r.dev.process_queues();
    assert!(o.tx_blocked);
    assert_eq!(o.tx.completed, 0);
    // Drain the peer: every frame taken arrives, then the waiting one.
    r.peer.set_nonblocking(true).unwrap();
    let mut seen = 0usize;
    let mut acc = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    for _ in 0..100_000 {
        match r.peer.read(&mut chunk) {
            Ok(n) => acc.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let o = r.dev.process_queues();
                r.tx.reap_all();
                taken += o.tx.completed;
                if !o.tx_blocked && acc.len() >= (taken * (MAX_FRAME + 4)) {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    for rec in acc.chunks(MAX_FRAME + 4) {
        assert_eq!(&rec[4..], &f[..]);
        seen += 1;
    }
    assert_eq!(seen, taken);
}

#[test]
fn a_lost_backend_takes_the_link_down_and_the_guest_keeps_going() {
    let mut r = Rig::new(None);
    let lost = Arc::new(Mutex::new(None::<String>));
    let l2 = lost.clone();
    r.dev.on_link_lost(Box::new(move |why| {
        *l2.lock().unwrap() = Some(why.to_string())
    }));
    let peer = std::mem::replace(&mut r.peer, UnixStream::pair().unwrap().0);
    drop(peer);
    r.send(&frame(100, [0x08, 0x00], 1));
    r.post_rx(2048);
    let o = r.dev.process_queues();
    assert!(o.link_changed);
    assert_eq!(o.tx.completed, 1);
    assert!(lost.lock().unwrap().as_deref().unwrap().contains("closed"));
    assert_ne!(r.dev.interrupt_status() & INT_CONFIG_CHANGE, 0);
    let c = r.config();
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 0, "link down");
    // The guest may go on sending: chains come back, nothing is kept.
    for i in 0..100 {
        r.send(&frame(100, [0x08, 0x00], i));
        r.dev.process_queues();
    }
    assert_eq!(r.tx.reap_all(), 101);
    let s = r.dev.stats();
    assert_eq!(s.tx_no_backend + s.tx_frames, 101, "{s:?}");
    assert!(s.tx_no_backend >= 100);
}

#[test]
fn intercepted_frames_never_reach_the_backend() {
    let mut r = Rig::new(Some(Box::new(Echo::default())));
    let ours = frame(80, ETHERTYPE_TEST, 5);
    let theirs = frame(80, [0x08, 0x00], 6);
    r.send(&ours);
    r.send(&theirs);
    let at = r.post_rx(2048);
    let o = r.dev.process_queues();
    assert_eq!((o.tx.completed, o.rx.completed), (2, 1));
    assert_eq!(r.peer_frame(), theirs);
    let s = r.dev.stats();
    assert_eq!((s.tx_intercepted, s.tx_frames), (1, 1));
    let (_, used) = r.rx.pop_used().unwrap();
    let answer = r.rx_frame(at, used);
    assert_eq!(&answer[..6], &MAC);
    assert_eq!(&answer[12..], &ours[12..]);
    // Nothing else was sent to the backend.
    r.peer.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    assert!(r.peer.read(&mut b).is_err());
}

#[test]
fn reset_stops_the_device_and_a_new_driver_can_start_over() {
    let mut r = Rig::new(None);
    reg_write(&mut r.dev, REG_STATUS, 0);
    r.send(&frame(100, [0x08, 0x00], 1));
    assert_eq!(r.dev.process_queues().tx.completed, 0);
    let mem = r.mem.clone();
    r.rx = DriverQueue::new(&mem, RXQ, QSIZE);
    r.tx = DriverQueue::new(&mem, TXQ, QSIZE);
    let st = bring_up_net(&mut r.dev, &r.rx, &r.tx);
    assert_ne!(st & STATUS_DRIVER_OK, 0);
    let f = frame(100, [0x08, 0x00], 2);
    r.send(&f);
    assert_eq!(r.dev.process_queues().tx.completed, 1);
    assert_eq!(r.peer_frame(), f);
}

/// The guest's address in the metadata tests (passt's default lease).
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];

/// An ARP request from the guest for 169.254.169.254.
fn arp_for_metadata() -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[169, 254, 169, 254]);
    f
}

/// A TCP SYN from the guest (port 40000, sequence 1000) to 169.254.169.254:80, sent to
/// `dst` (the service's MAC, as ARP said).
fn syn_to_metadata(dst: &[u8]) -> Vec<u8> {
    use crate::net::imds::frame::internet_checksum;
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
    let mut pseudo = GUEST_IP.to_vec();
    pseudo.extend_from_slice(&[169, 254, 169, 254, 0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&[169, 254, 169, 254]);
    let c = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst.to_vec();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

#[test]
fn the_metadata_endpoint_answers_arp_and_tcp_through_the_device() {
    use crate::net::imds::{HttpTokens, MetadataConfig};
    use crate::vmm::metadata::MetadataInterceptor;
    let cfg = MetadataConfig::for_boot(None, HttpTokens::Optional);
    let mut r = Rig::new(Some(Box::new(MetadataInterceptor::new(cfg, MAC))));
    // ARP: who has 169.254.169.254? The answer comes back on the receive queue.
    r.send(&arp_for_metadata());
    let at = r.post_rx(2048);
    let o = r.dev.process_queues();
    assert_eq!((o.tx.completed, o.rx.completed), (1, 1));
    let (_, used) = r.rx.pop_used().unwrap();
    let arp = r.rx_frame(at, used);
    assert_eq!(&arp[..6], &MAC, "to the guest");
    assert_eq!(&arp[12..14], &[0x08, 0x06], "ARP");
    assert_eq!(u16::from_be_bytes([arp[20], arp[21]]), 2, "a reply");
    assert_eq!(&arp[28..32], &[169, 254, 169, 254], "for the service");
    let service_mac = arp[22..28].to_vec();
    // TCP: a SYN to port 80 gets a SYN-ACK acknowledging sequence 1001.
    r.send(&syn_to_metadata(&service_mac));
    let at = r.post_rx(2048);
    let o = r.dev.process_queues();
    assert_eq!((o.tx.completed, o.rx.completed), (1, 1));
    let (_, used) = r.rx.pop_used().unwrap();
    let f = r.rx_frame(at, used);
    assert_eq!(&f[..6], &MAC);
    assert_eq!(&f[6..12], &service_mac[..]);
    assert_eq!(&f[12..14], &[0x08, 0x00], "IPv4");
    let ip = &f[14..];
    assert_eq!(ip[9], 6, "TCP");
    assert_eq!(&ip[12..16], &[169, 254, 169, 254]);
    assert_eq!(&ip[16..20], &GUEST_IP);
    let tcp = &ip[usize::from(ip[0] & 0xf) * 4..];
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 80);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 40000);
    assert_eq!(tcp[13] & 0x12, 0x12, "SYN-ACK");
    assert_eq!(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]), 1001);
    let s = r.dev.stats();
    assert_eq!((s.tx_intercepted, s.tx_frames), (2, 0));
    // Nothing reached the backend.
    r.peer.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    assert!(r.peer.read(&mut b).is_err());
}
