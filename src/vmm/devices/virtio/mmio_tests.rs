//! The virtio-mmio register file and status state machine, through the bus interface.

use super::driver::*;
use super::spec::*;
use super::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

const MIB: usize = 1 << 20;
const QBASE: GuestAddress = GuestAddress(0x1000);

struct Rig {
    _dir: tempfile::TempDir,
    mem: GuestMemoryMmap,
    dev: MmioBlockDevice,
}

fn rig(read_only: bool, disk_len: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    std::fs::write(&p, vec![0u8; disk_len]).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
    let be = Box::new(crate::volume::RawFile::open(&p, read_only).unwrap());
    let cfg = BlockConfig {
        read_only,
        serial: String::new(),
    };
    let dev = MmioBlockDevice::new(mem.clone(), be, cfg).unwrap();
    Rig {
        _dir: dir,
        mem,
        dev,
    }
}

fn rd(r: &mut Rig, off: u64) -> u32 {
    reg_read(&mut r.dev, off)
}
fn wr(r: &mut Rig, off: u64, v: u32) {
    reg_write(&mut r.dev, off, v)
}

const AD: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER;

#[test]
fn identity_registers() {
    let mut r = rig(false, 4096);
    assert_eq!(rd(&mut r, REG_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut r, REG_VERSION), 2);
    assert_eq!(rd(&mut r, REG_DEVICE_ID), 2);
    assert_eq!(rd(&mut r, REG_VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(rd(&mut r, REG_STATUS), 0);
    // No shared memory regions: length reads as -1.
    assert_eq!(rd(&mut r, REG_SHM_LEN_LOW), u32::MAX);
    assert_eq!(rd(&mut r, REG_SHM_LEN_HIGH), u32::MAX);
    // Unknown registers and odd widths read zero; writes to them are ignored.
    assert_eq!(rd(&mut r, 0x0e0), 0);
    let mut two = [0xffu8; 2];
    r.dev.read(REG_MAGIC_VALUE, &mut two);
    assert_eq!(two, [0, 0]);
    r.dev.write(REG_STATUS, &[1, 0]);
    assert_eq!(rd(&mut r, REG_STATUS), 0);
    wr(&mut r, 0x0e0, 5);
    wr(&mut r, REG_MAGIC_VALUE, 5);
    assert_eq!(rd(&mut r, REG_MAGIC_VALUE), 0x7472_6976);
}

#[test]
fn offered_features() {
    let mut r = rig(false, 4096);
    let f = device_features(&mut r.dev);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_F_RING_EVENT_IDX,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "bit {bit:#x}");
    }
    assert_eq!(f & VIRTIO_BLK_F_RO, 0);
    wr(&mut r, REG_DEVICE_FEATURES_SEL, 7);
    assert_eq!(rd(&mut r, REG_DEVICE_FEATURES), 0);
    let mut r = rig(true, 4096);
    let f = device_features(&mut r.dev);
    assert_ne!(f & VIRTIO_BLK_F_RO, 0);
    assert_eq!(f & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES), 0);
}

fn negotiate(r: &mut Rig, features: u64) -> u32 {
    wr(r, REG_STATUS, 0);
    wr(r, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(r, REG_STATUS, AD);
    wr(r, REG_DRIVER_FEATURES_SEL, 0);
    wr(r, REG_DRIVER_FEATURES, features as u32);
    wr(r, REG_DRIVER_FEATURES_SEL, 1);
    wr(r, REG_DRIVER_FEATURES, (features >> 32) as u32);
    wr(r, REG_STATUS, AD | STATUS_FEATURES_OK);
    rd(r, REG_STATUS)
}

#[test]
fn features_ok_needs_version_1_and_offered_bits_only() {
    let mut r = rig(false, 4096);
    // A legacy driver (no VERSION_1) is refused.
    assert_eq!(negotiate(&mut r, VIRTIO_BLK_F_FLUSH), AD);
    // A bit we never offered is refused.
    assert_eq!(negotiate(&mut r, VIRTIO_F_VERSION_1 | (1 << 28)), AD);
    // VERSION_1 alone is fine.
    assert_eq!(
        negotiate(&mut r, VIRTIO_F_VERSION_1),
        AD | STATUS_FEATURES_OK
    );
    // Feature writes after FEATURES_OK are ignored.
    wr(&mut r, REG_DRIVER_FEATURES_SEL, 0);
    wr(&mut r, REG_DRIVER_FEATURES, 0);
    assert_eq!(
        r.dev.shared.lock().transport.acked_features(),
        VIRTIO_F_VERSION_1
    );
}

#[test]
fn status_follows_the_state_machine() {
    let mut r = rig(false, 4096);
    // Feature writes before DRIVER are ignored.
    wr(&mut r, REG_DRIVER_FEATURES_SEL, 1);
    wr(&mut r, REG_DRIVER_FEATURES, 1);
    wr(&mut r, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(&mut r, REG_STATUS, AD);
    wr(&mut r, REG_STATUS, AD | STATUS_FEATURES_OK);
    assert_eq!(rd(&mut r, REG_STATUS), AD, "no VERSION_1 accepted yet");
    // FEATURES_OK before DRIVER is refused.
    wr(&mut r, REG_STATUS, 0);
    wr(&mut r, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK);
    assert_eq!(rd(&mut r, REG_STATUS), STATUS_ACKNOWLEDGE);
    // DRIVER_OK without FEATURES_OK is refused.
    assert_eq!(negotiate(&mut r, VIRTIO_BLK_F_FLUSH), AD);
    wr(&mut r, REG_STATUS, AD | STATUS_DRIVER_OK);
    assert_eq!(rd(&mut r, REG_STATUS), AD);
    // Clearing bits other than by reset is ignored.
    assert_eq!(
        negotiate(&mut r, VIRTIO_F_VERSION_1),
        AD | STATUS_FEATURES_OK
    );
    wr(&mut r, REG_STATUS, STATUS_ACKNOWLEDGE);
    assert_eq!(rd(&mut r, REG_STATUS), AD | STATUS_FEATURES_OK);
    // The driver cannot set DEVICE_NEEDS_RESET; FAILED it may set.
    wr(
        &mut r,
        REG_STATUS,
        AD | STATUS_FEATURES_OK | STATUS_DEVICE_NEEDS_RESET,
    );
    assert_eq!(rd(&mut r, REG_STATUS), AD | STATUS_FEATURES_OK);
    wr(&mut r, REG_STATUS, AD | STATUS_FEATURES_OK | STATUS_FAILED);
    assert_eq!(
        rd(&mut r, REG_STATUS),
        AD | STATUS_FEATURES_OK | STATUS_FAILED
    );
}

#[test]
fn queue_setup_rules() {
    let mut r = rig(false, 4096);
    assert_eq!(rd(&mut r, REG_QUEUE_NUM_MAX), 256);
    wr(&mut r, REG_QUEUE_SEL, 1);
    assert_eq!(rd(&mut r, REG_QUEUE_NUM_MAX), 0, "only queue 0 exists");
    assert_eq!(rd(&mut r, REG_QUEUE_READY), 0);
    wr(&mut r, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut r, REG_QUEUE_READY), 0);
    wr(&mut r, REG_QUEUE_SEL, 0);
    // Queue registers before FEATURES_OK are ignored.
    wr(&mut r, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut r, REG_QUEUE_READY), 0);
    negotiate(&mut r, VIRTIO_F_VERSION_1);
    let size = |r: &mut Rig| r.dev.shared.lock().transport.queue().size();
    for bad in [0, 3, 300, 512] {
        wr(&mut r, REG_QUEUE_NUM, bad);
        assert_eq!(size(&mut r), 256, "size {bad} refused");
    }
    wr(&mut r, REG_QUEUE_NUM, 16);
    assert_eq!(size(&mut r), 16);
    // Rings outside guest RAM: QueueReady stays 0.
    wr(&mut r, REG_QUEUE_DESC_LOW, 0);
    wr(&mut r, REG_QUEUE_DESC_HIGH, 1);
    wr(&mut r, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut r, REG_QUEUE_READY), 0);
    let q = DriverQueue::new(&r.mem, QBASE, 16);
    for (lo, hi, a) in [
        (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, q.desc_addr()),
        (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, q.avail_addr()),
        (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, q.used_addr()),
    ] {
        wr(&mut r, lo, a.0 as u32);
        wr(&mut r, hi, (a.0 >> 32) as u32);
    }
    wr(&mut r, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut r, REG_QUEUE_READY), 1);
    // Changes while ready are ignored.
    wr(&mut r, REG_QUEUE_NUM, 8);
    wr(&mut r, REG_QUEUE_DESC_LOW, 0x8000);
    assert_eq!(size(&mut r), 16);
    assert_eq!(
        r.dev.shared.lock().transport.queue().desc_table(),
        q.desc_addr().0
    );
    wr(
        &mut r,
        REG_STATUS,
        AD | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert!(r.dev.shared.lock().transport.is_live());
}

#[test]
fn reset_clears_everything() {
    let mut r = rig(false, 4096);
    let mut q = DriverQueue::new(&r.mem, QBASE, 16);
    let f = device_features(&mut r.dev);
    bring_up(&mut r.dev, &q, f);
    // Complete one request so an interrupt is pending.
    let hdr = GuestAddress(0x10000);
    write_blk_header(&r.mem, hdr, VIRTIO_BLK_T_FLUSH, 0);
    let head = q.add_chain(&[(hdr, 16, false), (GuestAddress(0x10100), 1, true)]);
    q.publish(head);
    assert_eq!(r.dev.process_queue(), 1);
    assert_eq!(rd(&mut r, REG_INTERRUPT_STATUS), INT_USED_BUFFER);
    wr(&mut r, REG_STATUS, 0);
    assert_eq!(rd(&mut r, REG_STATUS), 0);
    assert_eq!(rd(&mut r, REG_QUEUE_READY), 0);
    assert_eq!(rd(&mut r, REG_INTERRUPT_STATUS), 0);
    {
        let st = r.dev.shared.lock();
        assert_eq!(st.transport.acked_features(), 0);
        assert_eq!(st.transport.queue().size(), 256);
        assert_eq!(st.transport.queue().next_avail(), 0);
    }
    // The device is usable again after a fresh initialisation.
    let mut q = DriverQueue::new(&r.mem, QBASE, 16);
    assert_ne!(bring_up(&mut r.dev, &q, f) & STATUS_DRIVER_OK, 0);
    let head = q.add_chain(&[(hdr, 16, false), (GuestAddress(0x10100), 1, true)]);
    q.publish(head);
    assert_eq!(r.dev.process_queue(), 1);
}

#[test]
fn interrupt_status_and_ack() {
    let mut r = rig(false, 4096);
    let mut q = DriverQueue::new(&r.mem, QBASE, 16);
    bring_up(&mut r.dev, &q, VIRTIO_F_VERSION_1);
    let hdr = GuestAddress(0x10000);
    write_blk_header(&r.mem, hdr, VIRTIO_BLK_T_FLUSH, 0);
    let head = q.add_chain(&[(hdr, 16, false), (GuestAddress(0x10100), 1, true)]);
    q.publish(head);
    r.dev.process_queue();
    assert_eq!(rd(&mut r, REG_INTERRUPT_STATUS), INT_USED_BUFFER);
    assert!(r.dev.interrupt_evt().read().is_ok());
    wr(&mut r, REG_INTERRUPT_ACK, INT_CONFIG_CHANGE);
    assert_eq!(rd(&mut r, REG_INTERRUPT_STATUS), INT_USED_BUFFER);
    wr(&mut r, REG_INTERRUPT_ACK, INT_USED_BUFFER);
    assert_eq!(rd(&mut r, REG_INTERRUPT_STATUS), 0);
}

#[test]
fn config_space_and_generation() {
    let mut r = rig(false, 1 << 20);
    let gen = rd(&mut r, REG_CONFIG_GENERATION);
    let lo = rd(&mut r, REG_CONFIG + CFG_CAPACITY as u64);
    let hi = rd(&mut r, REG_CONFIG + CFG_CAPACITY as u64 + 4);
    assert_eq!(u64::from(lo) | (u64::from(hi) << 32), 2048);
    let mut cap = [0u8; 8];
    r.dev.read(REG_CONFIG, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
    assert_eq!(rd(&mut r, REG_CONFIG + CFG_SEG_MAX as u64), 254);
    assert_eq!(rd(&mut r, REG_CONFIG + CFG_BLK_SIZE as u64), 512);
    assert_eq!(rd(&mut r, REG_CONFIG + CFG_MAX_DISCARD_SEG as u64), 32);
    assert_eq!(
        rd(&mut r, REG_CONFIG + CFG_DISCARD_SECTOR_ALIGNMENT as u64),
        8
    );
    let mut b = [0u8; 1];
    r.dev
        .read(REG_CONFIG + CFG_WRITE_ZEROES_MAY_UNMAP as u64, &mut b);
    assert_eq!(b[0], 1);
    // Past the end of the config space: zero. Writes: ignored.
    assert_eq!(rd(&mut r, REG_CONFIG + 0x800), 0);
    r.dev.read(REG_CONFIG + CFG_LEN as u64 - 2, &mut cap);
    assert_eq!(cap, [0; 8]);
    wr(&mut r, REG_CONFIG, 7);
    assert_eq!(rd(&mut r, REG_CONFIG), 2048);
    assert_eq!(rd(&mut r, REG_CONFIG_GENERATION), gen, "nothing changed");
    // A config change moves the generation.
    {
        let mut st = r.dev.shared.lock();
        let mut c = st.blk.config_space();
        c[CFG_CAPACITY] = 1;
        st.transport.update_config(c);
    }
    assert_eq!(rd(&mut r, REG_CONFIG_GENERATION), gen.wrapping_add(1));
    assert_eq!(rd(&mut r, REG_CONFIG), 2049);
}

#[test]
fn queue_notify_through_the_bus_kicks_the_worker() {
    let mut r = rig(false, 4096);
    let _ = r.dev.queue_notify_evt().read();
    wr(&mut r, REG_QUEUE_NOTIFY, 0);
    assert_eq!(r.dev.queue_notify_evt().read().unwrap(), 1);
    wr(&mut r, REG_QUEUE_NOTIFY, 3);
    assert!(r.dev.queue_notify_evt().read().is_err(), "no such queue");
}

#[test]
fn the_worker_serves_the_queue_from_an_event_manager() {
    use event_manager::{EventManager, SubscriberOps};
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
    let handles = new_block(
        mem.clone(),
        {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), vec![7u8; 8192]).unwrap();
            Box::new(crate::volume::RawFile::open(f.path(), false).unwrap())
        },
        BlockConfig::default(),
    )
    .unwrap();
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(handles.worker.clone());
    // The register window goes on the MMIO bus as it is.
    let mut bus = crate::vmm::devices::bus::Bus::new();
    let on_bus: crate::vmm::devices::bus::SharedDevice = handles.bus_device.clone();
    bus.insert(on_bus, 0xd000_0000, MMIO_WINDOW_SIZE).unwrap();
    let mut magic = [0u8; 4];
    assert!(bus.read(0xd000_0000, &mut magic));
    assert_eq!(u32::from_le_bytes(magic), MMIO_MAGIC_VALUE);
    let mut q = DriverQueue::new(&mem, QBASE, 16);
    {
        let mut dev = handles.bus_device.lock().unwrap();
        let f = device_features(&mut *dev);
        bring_up(&mut *dev, &q, f);
    }
    let hdr = GuestAddress(0x10000);
    let data = GuestAddress(0x20000);
    let status = GuestAddress(0x30000);
    write_blk_header(&mem, hdr, VIRTIO_BLK_T_IN, 1);
    let head = q.add_chain(&[(hdr, 16, false), (data, 512, true), (status, 1, true)]);
    q.publish(head);
    // The driver kicks through the bus (no ioeventfd); the event loop does the work.
    reg_write(
        &mut *handles.bus_device.lock().unwrap(),
        REG_QUEUE_NOTIFY,
        0,
    );
    let _ = handles.irq_evt.read();
    for _ in 0..10 {
        em.run_with_timeout(100).unwrap();
        if q.used_idx() == 1 {
            break;
        }
    }
    assert_eq!(q.pop_used(), Some((u32::from(head), 513)));
    assert_eq!(mem.read_obj::<u8>(status).unwrap(), VIRTIO_BLK_S_OK);
    assert_eq!(mem.read_obj::<u8>(data).unwrap(), 7);
    assert!(handles.irq_evt.read().is_ok(), "interrupt signalled");
}

#[test]
fn cmdline_fragment_matches_linux_syntax() {
    assert_eq!(
        cmdline_fragment(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}
