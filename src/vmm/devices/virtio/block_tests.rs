//! The block device end to end at the device-model level: a driver-side queue in real guest
//! memory, the MMIO register file, real backing files.

use crate::vmm::devices::bus::BusDevice;
use crate::vmm::devices::virtio::driver::*;
use crate::vmm::devices::virtio::spec::*;
use crate::vmm::devices::virtio::{BlockConfig, MmioBlockDevice};
use crate::volume::{BlockBackend, CowOverlay, RawFile};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const MIB: u64 = 1 << 20;
const QSIZE: u16 = 16;
const QBASE: GuestAddress = GuestAddress(0x1000);
const HDR: GuestAddress = GuestAddress(0x10000);
const DATA: GuestAddress = GuestAddress(0x20000);
const STATUS: GuestAddress = GuestAddress(0x30000);
const DISK: usize = 256 * 1024;

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i * 31 + i / 512) as u8).collect()
}

/// Default features a Linux driver accepts from this device.
fn linux_features(dev: &mut MmioBlockDevice) -> u64 {
    device_features(dev)
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    mem: GuestMemoryMmap,
    dev: MmioBlockDevice,
    q: DriverQueue,
}

impl Rig {
    fn with_backend(
        dir: tempfile::TempDir,
        path: std::path::PathBuf,
        backend: Box<dyn BlockBackend>,
        cfg: BlockConfig,
        features: Option<u64>,
    ) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(MIB), MIB as usize),
        ])
        .unwrap();
        let mut dev = MmioBlockDevice::new(mem.clone(), backend, cfg).unwrap();
        let q = DriverQueue::new(&mem, QBASE, QSIZE);
        let f = features.unwrap_or_else(|| linux_features(&mut dev));
        let status = bring_up(&mut dev, &q, f);
        assert_eq!(
            status & STATUS_DRIVER_OK,
            STATUS_DRIVER_OK,
            "status {status:#x}"
        );
        Rig {
            _dir: dir,
            path,
            mem,
            dev,
            q,
        }
    }

    fn raw(read_only: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, pattern(DISK)).unwrap();
        let backend = Box::new(RawFile::open(&path, read_only).unwrap());
        let cfg = BlockConfig {
            read_only,
            serial: "vol-0123456789abcdef0123".into(),
        };
        Self::with_backend(dir, path, backend, cfg, None)
    }

    /// Submit one request and serve it: (status byte, used length).
    fn submit(&mut self, bufs: &[Buf]) -> (u8, u32) {
        self.mem.write_obj(0xffu8, STATUS).unwrap();
        let head = self.q.add_chain(bufs);
        self.q.publish(head);
        assert_eq!(self.dev.process_queue(), 1);
        let (id, len) = self.q.pop_used().expect("request completed");
        assert_eq!(id, u32::from(head));
        (self.mem.read_obj(STATUS).unwrap(), len)
    }

    fn io(&mut self, t: u32, sector: u64, data: GuestAddress, len: u32) -> (u8, u32) {
        write_blk_header(&self.mem, HDR, t, sector);
        let writable = t != VIRTIO_BLK_T_OUT;
        self.submit(&[(HDR, 16, false), (data, len, writable), (STATUS, 1, true)])
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

#[test]
fn reads_sectors_from_the_file() {
    let mut r = Rig::raw(false);
    let (st, len) = r.io(VIRTIO_BLK_T_IN, 3, DATA, 8192);
    assert_eq!((st, len), (VIRTIO_BLK_S_OK, 8193));
    let mut got = vec![0u8; 8192];
    r.mem.read_slice(&mut got, DATA).unwrap();
    assert_eq!(got, pattern(DISK)[1536..1536 + 8192]);
}

#[test]
fn reads_into_a_buffer_that_spans_two_memory_regions() {
    let mut r = Rig::raw(false);
    let span = GuestAddress(MIB - 1024);
    assert_eq!(r.io(VIRTIO_BLK_T_IN, 0, span, 4096).0, VIRTIO_BLK_S_OK);
    let mut got = vec![0u8; 4096];
    r.mem.read_slice(&mut got, span).unwrap();
    assert_eq!(got, pattern(DISK)[..4096]);
}

#[test]
fn writes_flushes_and_reads_back() {
    let mut r = Rig::raw(false);
    r.mem.write_slice(&[0xa5; 1024], DATA).unwrap();
    assert_eq!(r.io(VIRTIO_BLK_T_OUT, 8, DATA, 1024), (VIRTIO_BLK_S_OK, 1));
    write_blk_header(&r.mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (STATUS, 1, true)]),
        (VIRTIO_BLK_S_OK, 1)
    );
    assert_eq!(r.file()[4096..5120], [0xa5; 1024]);
    let back = GuestAddress(0x50000);
    assert_eq!(r.io(VIRTIO_BLK_T_IN, 8, back, 1024).0, VIRTIO_BLK_S_OK);
    let mut got = vec![0u8; 1024];
    r.mem.read_slice(&mut got, back).unwrap();
    assert_eq!(got, vec![0xa5; 1024]);
}

#[test]
fn read_only_drive_refuses_writes() {
    let mut r = Rig::raw(true);
    assert_ne!(device_features(&mut r.dev) & VIRTIO_BLK_F_RO, 0);
    assert_eq!(device_features(&mut r.dev) & VIRTIO_BLK_F_DISCARD, 0);
    r.mem.write_slice(&[0x11; 512], DATA).unwrap();
    assert_eq!(
        r.io(VIRTIO_BLK_T_OUT, 0, DATA, 512),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(r.file(), pattern(DISK));
    // Reads and flushes still work.
    assert_eq!(r.io(VIRTIO_BLK_T_IN, 0, DATA, 512).0, VIRTIO_BLK_S_OK);
    write_blk_header(&r.mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (STATUS, 1, true)]).0,
        VIRTIO_BLK_S_OK
    );
}

#[test]
fn get_id_returns_the_serial() {
    let mut r = Rig::raw(false);
    assert_eq!(
        r.io(VIRTIO_BLK_T_GET_ID, 0, DATA, 20),
        (VIRTIO_BLK_S_OK, 21)
    );
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, DATA).unwrap();
    assert_eq!(&id, b"vol-0123456789abcdef");
    // A short serial is NUL-padded; a short buffer gets what fits.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    let be = Box::new(RawFile::open(&p, false).unwrap());
    let cfg = BlockConfig {
        read_only: false,
        serial: "vol-1".into(),
    };
    let mut r = Rig::with_backend(dir, p, be, cfg, None);
    r.mem.write_slice(&[0xee; 20], DATA).unwrap();
    assert_eq!(r.io(VIRTIO_BLK_T_GET_ID, 0, DATA, 20).1, 21);
    r.mem.read_slice(&mut id, DATA).unwrap();
    assert_eq!(&id, b"vol-1\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(r.io(VIRTIO_BLK_T_GET_ID, 0, DATA, 3).1, 4);
}

#[test]
fn discard_and_write_zeroes_zero_the_file() {
    let mut r = Rig::raw(false);
    let f = device_features(&mut r.dev);
    assert_ne!(f & VIRTIO_BLK_F_DISCARD, 0);
    assert_ne!(f & VIRTIO_BLK_F_WRITE_ZEROES, 0);
    let mut segs = Vec::new();
    for (sector, n, flags) in [(8u64, 8u32, 0u32), (40, 3, 0)] {
        segs.extend_from_slice(&sector.to_le_bytes());
        segs.extend_from_slice(&n.to_le_bytes());
        segs.extend_from_slice(&flags.to_le_bytes());
    }
    r.mem.write_slice(&segs, DATA).unwrap();
    write_blk_header(&r.mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
    let st = r.submit(&[(HDR, 16, false), (DATA, 32, false), (STATUS, 1, true)]);
    assert_eq!(st, (VIRTIO_BLK_S_OK, 1));
    write_blk_header(&r.mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let mut seg = 100u64.to_le_bytes().to_vec();
    seg.extend_from_slice(&2u32.to_le_bytes());
    seg.extend_from_slice(&1u32.to_le_bytes());
    r.mem.write_slice(&seg, DATA).unwrap();
    let st = r.submit(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]);
    assert_eq!(st.0, VIRTIO_BLK_S_OK);
    let mut expect = pattern(DISK);
    expect[4096..8192].fill(0);
    expect[40 * 512..43 * 512].fill(0);
    expect[100 * 512..102 * 512].fill(0);
    assert!(r.file() == expect);
}

#[test]
fn discard_is_unsupported_when_not_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    std::fs::write(&p, vec![1u8; 8192]).unwrap();
    let be = Box::new(RawFile::open(&p, false).unwrap());
    let f = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH;
    let mut r = Rig::with_backend(dir, p, be, BlockConfig::default(), Some(f));
    let mut seg = 0u64.to_le_bytes().to_vec();
    seg.extend_from_slice(&8u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    r.mem.write_slice(&seg, DATA).unwrap();
    write_blk_header(&r.mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
    let st = r.submit(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]);
    assert_eq!(st.0, VIRTIO_BLK_S_UNSUPP);
    assert_eq!(r.file(), vec![1u8; 8192]);
}

#[test]
fn writes_through_an_overlay_leave_the_base_alone() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    std::fs::write(&base, pattern(DISK)).unwrap();
    let raw = Box::new(RawFile::open(&base, true).unwrap());
    let cow = CowOverlay::open(raw, &dir.path().join("o.cow"), "base").unwrap();
    let mut r = Rig::with_backend(dir, base, Box::new(cow), BlockConfig::default(), None);
    r.mem.write_slice(&[0x3c; 512], DATA).unwrap();
    assert_eq!(r.io(VIRTIO_BLK_T_OUT, 1, DATA, 512).0, VIRTIO_BLK_S_OK);
    let back = GuestAddress(0x50000);
    assert_eq!(r.io(VIRTIO_BLK_T_IN, 0, back, 4096).0, VIRTIO_BLK_S_OK);
    let mut got = vec![0u8; 4096];
    r.mem.read_slice(&mut got, back).unwrap();
    let mut expect = pattern(DISK)[..4096].to_vec();
    expect[512..1024].fill(0x3c);
    assert_eq!(got, expect);
    assert_eq!(r.file(), pattern(DISK));
    // The VMM's final flush makes the write durable without a guest FLUSH: a reopened overlay
    // (while the device still holds the first) sees it.
    r.dev.flush().unwrap();
    let raw = Box::new(RawFile::open(&r.path, true).unwrap());
    let overlay = r.path.parent().unwrap().join("o.cow");
    let mut again = CowOverlay::open_read_only(raw, &overlay, "base").unwrap();
    let mut b = [0u8; 512];
    again.read_at(&mut b, 512).unwrap();
    assert_eq!(b, [0x3c; 512]);
}

#[test]
fn bad_requests_do_not_break_the_queue() {
    let mut r = Rig::raw(false);
    // Out of range, then a request with no status byte, then a good one.
    let cap = (DISK / 512) as u64;
    assert_eq!(
        r.io(VIRTIO_BLK_T_IN, cap, DATA, 512),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    write_blk_header(&r.mem, HDR, 42, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (STATUS, 1, true)]).0,
        VIRTIO_BLK_S_UNSUPP
    );
    r.mem.write_obj(0x77u8, STATUS).unwrap();
    write_blk_header(&r.mem, HDR, VIRTIO_BLK_T_IN, 0);
    let head = r.q.add_chain(&[(HDR, 16, false), (DATA, 512, false)]);
    r.q.publish(head);
    assert_eq!(r.dev.process_queue(), 1);
    assert_eq!(
        r.q.pop_used(),
        Some((u32::from(head), 0)),
        "dropped with length 0"
    );
    assert_eq!(
        r.mem.read_obj::<u8>(STATUS).unwrap(),
        0x77,
        "nothing written"
    );
    assert_eq!(r.io(VIRTIO_BLK_T_IN, 0, DATA, 512), (VIRTIO_BLK_S_OK, 513));
}

#[test]
fn event_idx_suppresses_and_sends_interrupts() {
    let mut r = Rig::raw(false);
    assert_ne!(device_features(&mut r.dev) & VIRTIO_F_RING_EVENT_IDX, 0);
    let irq = r.dev.interrupt_evt().try_clone().unwrap();
    let _ = irq.read();
    // The driver wants an interrupt only after used index 3 (i.e. the 4th completion).
    r.q.set_used_event(3);
    for i in 0..4 {
        r.io(VIRTIO_BLK_T_IN, 0, DATA, 512);
        let fired = irq.read().is_ok();
        assert_eq!(fired, i == 3, "completion {i}");
    }
    assert_eq!(r.dev.interrupt_status() & INT_USED_BUFFER, INT_USED_BUFFER);
    // The device asks to be notified at its next available index.
    assert_eq!(r.q.avail_event(), 4);
}

#[test]
fn without_event_idx_every_pass_interrupts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    std::fs::write(&p, vec![1u8; 8192]).unwrap();
    let be = Box::new(RawFile::open(&p, false).unwrap());
    let mut r = Rig::with_backend(dir, p, be, BlockConfig::default(), Some(VIRTIO_F_VERSION_1));
    let irq = r.dev.interrupt_evt().try_clone().unwrap();
    for _ in 0..3 {
        r.io(VIRTIO_BLK_T_IN, 0, DATA, 512);
        assert!(irq.read().is_ok());
    }
}

#[test]
fn a_bogus_available_index_needs_reset_and_reset_recovers() {
    let mut r = Rig::raw(false);
    let irq = r.dev.interrupt_evt().try_clone().unwrap();
    r.q.set_avail_idx(QSIZE + 5);
    assert_eq!(r.dev.process_queue(), 0);
    let status = reg_read(&mut r.dev, REG_STATUS);
    assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_ne!(r.dev.interrupt_status() & INT_CONFIG_CHANGE, 0);
    assert!(irq.read().is_ok());
    // Further notifications are ignored until the driver resets.
    assert_eq!(r.dev.process_queue(), 0);
    let q = DriverQueue::new(&r.mem, QBASE, QSIZE);
    r.q = q;
    let f = device_features(&mut r.dev);
    assert_eq!(bring_up(&mut r.dev, &r.q, f) & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.dev.interrupt_status(), 0);
    assert_eq!(r.io(VIRTIO_BLK_T_IN, 0, DATA, 512).0, VIRTIO_BLK_S_OK);
}

#[test]
fn a_full_queue_of_requests_is_served_in_one_pass() {
    let mut r = Rig::raw(false);
    for i in 0..(QSIZE / 2) {
        write_blk_header(
            &r.mem,
            HDR.unchecked_add(16 * u64::from(i)),
            VIRTIO_BLK_T_IN,
            0,
        );
        let head = r.q.add_chain(&[
            (HDR.unchecked_add(16 * u64::from(i)), 16, false),
            (STATUS.unchecked_add(u64::from(i)), 1, true),
        ]);
        r.q.publish(head);
    }
    assert_eq!(r.dev.process_queue(), usize::from(QSIZE / 2));
    let mut n = 0;
    while r.q.pop_used().is_some() {
        n += 1;
    }
    assert_eq!(n, QSIZE / 2);
}

#[test]
fn nothing_is_served_before_driver_ok() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    std::fs::write(&p, vec![1u8; 8192]).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB as usize)]).unwrap();
    let be = Box::new(RawFile::open(&p, false).unwrap());
    let mut dev = MmioBlockDevice::new(mem.clone(), be, BlockConfig::default()).unwrap();
    let mut q = DriverQueue::new(&mem, QBASE, QSIZE);
    write_blk_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let head = q.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    q.publish(head);
    assert_eq!(dev.process_queue(), 0);
    dev.write(REG_STATUS, &STATUS_ACKNOWLEDGE.to_le_bytes());
    assert_eq!(dev.process_queue(), 0);
    assert_eq!(q.pop_used(), None);
}
