//! Request parsing on hand-built descriptor chains in real guest memory.

use super::*;
use crate::vmm::devices::virtio::driver::{
    write_blk_header, DriverQueue, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

const MIB: u64 = 1 << 20;
/// Guest RAM: two adjacent 1 MiB regions, a hole, then one more 1 MiB region at 4 MiB.
const HOLE: u64 = 2 * MIB;
const QSIZE: u16 = 8;
const HDR: GuestAddress = GuestAddress(0x10000);
const DATA: GuestAddress = GuestAddress(0x20000);
const STATUS: GuestAddress = GuestAddress(0x30000);
const CAPACITY: u64 = 2048;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(MIB), MIB as usize),
        (GuestAddress(4 * MIB), MIB as usize),
    ])
    .unwrap()
}

fn limits() -> Limits {
    Limits {
        capacity: CAPACITY,
        max_chain: usize::from(QSIZE),
        discard: true,
        write_zeroes: true,
        max_zero_segs: 4,
        max_zero_sectors: 1024,
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    dq: DriverQueue,
    q: Queue,
}

impl Rig {
    fn new() -> Self {
        let mem = memory();
        let dq = DriverQueue::new(&mem, GuestAddress(0x1000), QSIZE);
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_desc_table_address(Some(dq.desc_addr().0 as u32), Some(0));
        q.set_avail_ring_address(Some(dq.avail_addr().0 as u32), Some(0));
        q.set_used_ring_address(Some(dq.used_addr().0 as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(&mem));
        Rig { mem, dq, q }
    }

    /// Publish a chain of `bufs` and parse it.
    fn parse(&mut self, bufs: &[(GuestAddress, u32, bool)]) -> Result<Request, ParseError> {
        let head = self.dq.add_chain(bufs);
        self.parse_head(head)
    }

    fn parse_head(&mut self, head: u16) -> Result<Request, ParseError> {
        self.dq.publish(head);
        let chain = self.q.iter(&self.mem).unwrap().next().unwrap();
        parse(&self.mem, chain, &limits())
    }

    fn header(&self, t: u32, sector: u64) {
        write_blk_header(&self.mem, HDR, t, sector);
    }
}

fn ioerr(r: Result<Request, ParseError>) -> &'static str {
    match r {
        Err(ParseError::Status {
            addr,
            status: VIRTIO_BLK_S_IOERR,
            why,
        }) => {
            assert_eq!(addr, STATUS);
            why
        }
        other => panic!("expected IOERR, got {other:?}"),
    }
}

fn unsupp(r: Result<Request, ParseError>) {
    assert!(
        matches!(
            r,
            Err(ParseError::Status {
                status: VIRTIO_BLK_S_UNSUPP,
                ..
            })
        ),
        "{r:?}"
    );
}

fn dropped(r: Result<Request, ParseError>) {
    assert!(matches!(r, Err(ParseError::NoStatus(_))), "{r:?}");
}

#[test]
fn good_read_and_write() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 10);
    let req = r
        .parse(&[(HDR, 16, false), (DATA, 4096, true), (STATUS, 1, true)])
        .unwrap();
    assert_eq!(
        req.kind,
        RequestKind::In {
            offset: 5120,
            len: 4096
        }
    );
    assert_eq!(
        req.data,
        vec![Segment {
            addr: DATA,
            len: 4096
        }]
    );
    assert_eq!(req.status, STATUS);

    r.header(VIRTIO_BLK_T_OUT, CAPACITY - 2);
    let req = r
        .parse(&[
            (HDR, 16, false),
            (DATA, 512, false),
            (DATA, 512, false),
            (STATUS, 1, true),
        ])
        .unwrap();
    assert_eq!(
        req.kind,
        RequestKind::Out {
            offset: (CAPACITY - 2) * 512,
            len: 1024
        }
    );
    assert_eq!(req.data.len(), 2);
}

#[test]
fn any_framing_is_accepted() {
    let mut r = Rig::new();
    // Header split 8 + 8, and header + data sharing one descriptor.
    r.header(VIRTIO_BLK_T_OUT, 1);
    let req = r
        .parse(&[
            (HDR, 8, false),
            (HDR.unchecked_add(8), 8 + 512, false),
            (STATUS, 1, true),
        ])
        .unwrap();
    assert_eq!(
        req.kind,
        RequestKind::Out {
            offset: 512,
            len: 512
        }
    );
    assert_eq!(
        req.data,
        vec![Segment {
            addr: HDR.unchecked_add(16),
            len: 512
        }]
    );
    // IN data and the status byte in one writable descriptor.
    r.header(VIRTIO_BLK_T_IN, 0);
    let req = r.parse(&[(HDR, 16, false), (DATA, 513, true)]).unwrap();
    assert_eq!(
        req.kind,
        RequestKind::In {
            offset: 0,
            len: 512
        }
    );
    assert_eq!(req.status, DATA.unchecked_add(512));
    // Zero-length descriptors are skipped.
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    let req = r
        .parse(&[(HDR, 16, false), (DATA, 0, true), (STATUS, 1, true)])
        .unwrap();
    assert_eq!(req.kind, RequestKind::Flush);
}

#[test]
fn buffers_may_span_adjacent_regions() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    let span = GuestAddress(MIB - 1024);
    let req = r
        .parse(&[(HDR, 16, false), (span, 2048, true), (STATUS, 1, true)])
        .unwrap();
    assert_eq!(
        req.kind,
        RequestKind::In {
            offset: 0,
            len: 2048
        }
    );
}

#[test]
fn flush_get_id_discard_write_zeroes() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        r.parse(&[(HDR, 16, false), (STATUS, 1, true)])
            .unwrap()
            .kind,
        RequestKind::Flush
    );
    r.header(VIRTIO_BLK_T_GET_ID, 0);
    let req = r
        .parse(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)])
        .unwrap();
    assert_eq!(req.kind, RequestKind::GetId);
    assert_eq!(
        req.data,
        vec![Segment {
            addr: DATA,
            len: 20
        }]
    );

    let seg = |sector: u64, n: u32, flags: u32| {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        s
    };
    let mut two = seg(8, 16, 0).to_vec();
    two.extend_from_slice(&seg(100, 1, 0));
    r.mem.write_slice(&two, DATA).unwrap();
    r.header(VIRTIO_BLK_T_DISCARD, 0);
    let req = r
        .parse(&[(HDR, 16, false), (DATA, 32, false), (STATUS, 1, true)])
        .unwrap();
    assert_eq!(
        req.kind,
        RequestKind::Discard(vec![
            ZeroRange {
                offset: 4096,
                len: 8192,
                unmap: false
            },
            ZeroRange {
                offset: 51200,
                len: 512,
                unmap: false
            },
        ])
    );
    r.mem.write_slice(&seg(0, 8, 1), DATA).unwrap();
    r.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let req = r
        .parse(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)])
        .unwrap();
    assert_eq!(
        req.kind,
        RequestKind::WriteZeroes(vec![ZeroRange {
            offset: 0,
            len: 4096,
            unmap: true
        }])
    );
    // The unmap flag is not allowed on DISCARD; unknown flags on neither.
    r.header(VIRTIO_BLK_T_DISCARD, 0);
    unsupp(r.parse(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]));
    r.mem.write_slice(&seg(0, 8, 4), DATA).unwrap();
    r.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    unsupp(r.parse(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]));
    // Limits.
    r.mem.write_slice(&seg(0, 1025, 0), DATA).unwrap();
    r.header(VIRTIO_BLK_T_DISCARD, 0);
    ioerr(r.parse(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]));
    r.mem.write_slice(&seg(CAPACITY - 1, 2, 0), DATA).unwrap();
    ioerr(r.parse(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]));
    ioerr(r.parse(&[(HDR, 16, false), (DATA, 80, false), (STATUS, 1, true)]));
    ioerr(r.parse(&[(HDR, 16, false), (DATA, 20, false), (STATUS, 1, true)]));
    ioerr(r.parse(&[(HDR, 16, false), (STATUS, 1, true)]));
}

#[test]
fn discard_without_the_feature_is_unsupported() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_DISCARD, 0);
    let head =
        r.dq.add_chain(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]);
    r.dq.publish(head);
    let chain = r.q.iter(&r.mem).unwrap().next().unwrap();
    let l = Limits {
        discard: false,
        ..limits()
    };
    unsupp(parse(&r.mem, chain, &l));
}

#[test]
fn unknown_type_is_unsupported() {
    let mut r = Rig::new();
    r.header(99, 0);
    unsupp(r.parse(&[(HDR, 16, false), (STATUS, 1, true)]));
    // GET_LIFETIME (10) is not offered either.
    r.header(10, 0);
    unsupp(r.parse(&[(HDR, 16, false), (DATA, 16, true), (STATUS, 1, true)]));
}

#[test]
fn no_usable_status_byte_drops_the_request() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    // Last descriptor device-readable.
    dropped(r.parse(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)]));
    dropped(r.parse(&[(HDR, 16, false)]));
    // Zero-length status.
    dropped(r.parse(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 0, true)]));
    // Status in the hole, and past the end of RAM.
    dropped(r.parse(&[(HDR, 16, false), (GuestAddress(HOLE), 1, true)]));
    dropped(r.parse(&[(HDR, 16, false), (GuestAddress(64 * MIB), 1, true)]));
    // Address arithmetic that would overflow.
    dropped(r.parse(&[(HDR, 16, false), (GuestAddress(u64::MAX), 2, true)]));
}

#[test]
fn buffers_outside_ram_get_ioerr() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    let bad = [
        GuestAddress(HOLE),
        GuestAddress(MIB * 2 - 256), // runs into the hole
        GuestAddress(5 * MIB - 256), // runs off the end of RAM
        GuestAddress(u64::MAX - 100),
    ];
    for addr in bad {
        let why = ioerr(r.parse(&[(HDR, 16, false), (addr, 512, true), (STATUS, 1, true)]));
        assert!(why.contains("outside"), "{why}");
    }
    // The header itself outside RAM.
    ioerr(r.parse(&[(GuestAddress(HOLE), 16, false), (STATUS, 1, true)]));
}

#[test]
fn a_looping_chain_is_dropped() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    r.dq.set_desc(0, HDR.0, 16, VRING_DESC_F_NEXT, 1);
    r.dq.set_desc(1, DATA.0, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0);
    dropped(r.parse_head(0));
    // A self loop on a writable status descriptor.
    r.dq.set_desc(2, STATUS.0, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    dropped(r.parse_head(2));
}

#[test]
fn a_next_index_outside_the_table_is_dropped() {
    let mut r = Rig::new();
    r.dq.set_desc(0, HDR.0, 16, VRING_DESC_F_NEXT, QSIZE + 3);
    dropped(r.parse_head(0));
}

#[test]
fn an_indirect_table_longer_than_the_queue_is_dropped() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    let table = GuestAddress(0x40000);
    let n = 3 * u64::from(QSIZE);
    for i in 0..n {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&STATUS.0.to_le_bytes());
        d[8..12].copy_from_slice(&1u32.to_le_bytes());
        let flags = VRING_DESC_F_WRITE | if i + 1 < n { VRING_DESC_F_NEXT } else { 0 };
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        r.mem.write_slice(&d, table.unchecked_add(16 * i)).unwrap();
    }
    r.dq.set_desc(0, table.0, (16 * n) as u32, VRING_DESC_F_INDIRECT, 0);
    dropped(r.parse_head(0));
}

#[test]
fn bad_lengths_ranges_and_directions_get_ioerr() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    assert!(
        ioerr(r.parse(&[(HDR, 16, false), (DATA, 500, true), (STATUS, 1, true)])).contains("512")
    );
    r.header(VIRTIO_BLK_T_IN, CAPACITY);
    assert!(
        ioerr(r.parse(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]))
            .contains("capacity")
    );
    // A sector whose byte offset does not fit in 64 bits.
    r.header(VIRTIO_BLK_T_IN, 1 << 60);
    ioerr(r.parse(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]));
    r.header(VIRTIO_BLK_T_OUT, u64::MAX);
    ioerr(r.parse(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]));
    r.header(VIRTIO_BLK_T_IN, 0);
    assert!(
        ioerr(r.parse(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]))
            .contains("direction")
    );
    r.header(VIRTIO_BLK_T_OUT, 0);
    ioerr(r.parse(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]));
    // Readable after writable.
    assert!(ioerr(r.parse(&[
        (HDR, 16, false),
        (DATA, 512, true),
        (DATA, 512, false),
        (STATUS, 1, true)
    ]))
    .contains("after"));
    // Short header.
    ioerr(r.parse(&[(HDR, 8, false), (STATUS, 1, true)]));
    // GET_ID without a buffer.
    r.header(VIRTIO_BLK_T_GET_ID, 0);
    ioerr(r.parse(&[(HDR, 16, false), (STATUS, 1, true)]));
}
