//! Turning a descriptor chain into a checked virtio-blk request (virtio 1.2, section 5.2.6).
//!
//! Nothing here trusts the guest. The chain is walked at most `queue size` descriptors deep
//! (indirect tables included); a chain that does not end (a loop, or a `next` index outside the
//! table) is refused; every buffer must lie inside guest RAM; device-readable descriptors must
//! come before device-writable ones (2.7.4.2); the header may be split across descriptors (the
//! device must not assume a framing, 2.6.4).
//!
//! The status byte is the last byte of the last descriptor, which must be device-writable. When
//! there is none, the request cannot be answered and is dropped ([`ParseError::NoStatus`]): the
//! caller still returns the head to the used ring with length 0. Any other defect is reported
//! through the status byte ([`ParseError::Status`]).

use super::spec::*;
use std::ops::Deref;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// A contiguous guest buffer, inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// One range of a DISCARD or WRITE_ZEROES request, in bytes, checked against the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroRange {
    pub offset: u64,
    pub len: u64,
    /// The driver allows deallocation (WRITE_ZEROES with the unmap flag).
    pub unmap: bool,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `len` bytes at `offset` into the device-writable buffers.
    In {
        offset: u64,
        len: u64,
    },
    /// Write `len` bytes at `offset` from the device-readable buffers.
    Out {
        offset: u64,
        len: u64,
    },
    Flush,
    /// Write the serial into the device-writable buffers.
    GetId,
    Discard(Vec<ZeroRange>),
    WriteZeroes(Vec<ZeroRange>),
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// Data buffers: device-writable for IN and GET_ID, device-readable for OUT.
    pub data: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a request the device can carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No usable status byte: drop the request (used length 0).
    NoStatus(&'static str),
    /// Answer with `status` (IOERR or UNSUPP) at `addr`.
    Status {
        addr: GuestAddress,
        status: u8,
        why: &'static str,
    },
}

/// Limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Volume size in 512-byte sectors.
    pub capacity: u64,
    /// Longest chain: the queue size.
    pub max_chain: usize,
    /// DISCARD was negotiated.
    pub discard: bool,
    /// WRITE_ZEROES was negotiated.
    pub write_zeroes: bool,
    /// `max_discard_seg` / `max_write_zeroes_seg` from the config space.
    pub max_zero_segs: u32,
    /// `max_discard_sectors` / `max_write_zeroes_sectors` from the config space.
    pub max_zero_sectors: u32,
}

#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    writable: bool,
}

/// Buffers [`parse_with`] reuses from one request to the next, so that serving a request
/// allocates nothing once they have grown.
#[derive(Debug, Default)]
pub struct Scratch {
    descs: Vec<Desc>,
    readable: Vec<Segment>,
    /// Spare vectors for [`Request::data`] and the payload; see [`Scratch::recycle`].
    pool: Vec<Vec<Segment>>,
}

impl Scratch {
    fn vec(&mut self) -> Vec<Segment> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v
    }

    /// Give a finished request's buffer list back for reuse.
    pub fn recycle(&mut self, data: Vec<Segment>) {
        if self.pool.len() < 4 {
            self.pool.push(data);
        }
    }
}

/// Check `chain` and turn it into a [`Request`].
pub fn parse<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    limits: &Limits,
) -> Result<Request, ParseError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    parse_with(mem, chain, limits, &mut Scratch::default())
}

/// [`parse`], reusing the buffers in `scratch`.
pub fn parse_with<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    limits: &Limits,
    scratch: &mut Scratch,
) -> Result<Request, ParseError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    // 1. Walk the chain, bounded.
    let descs = &mut scratch.descs;
    descs.clear();
    let mut open_ended = false;
    for d in chain {
        if descs.len() == limits.max_chain {
            return Err(ParseError::NoStatus("chain longer than the queue"));
        }
        open_ended = d.has_next();
        descs.push(Desc {
            addr: d.addr(),
            len: d.len(),
            writable: d.is_write_only(),
        });
    }
    if open_ended {
        // The walk stopped while the last descriptor still pointed onwards: a loop, a `next`
        // index outside the table, or an unreadable descriptor. There is no last descriptor.
        return Err(ParseError::NoStatus(
            "chain does not end (loop or bad next index)",
        ));
    }

    // 2. The status byte: last byte of the last descriptor, device-writable, in RAM.
    let last = descs.last().ok_or(ParseError::NoStatus("empty chain"))?;
    if !last.writable || last.len == 0 {
        return Err(ParseError::NoStatus(
            "last descriptor is not a writable status byte",
        ));
    }
    let status = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .filter(|a| mem.check_range(*a, 1, Permissions::Write))
        .ok_or(ParseError::NoStatus("status byte outside guest memory"))?;
    let fail = |why| ParseError::Status {
        addr: status,
        status: VIRTIO_BLK_S_IOERR,
        why,
    };

    // 3. Every buffer in RAM; readable before writable.
    let mut seen_writable = false;
    for d in descs.iter() {
        if d.writable {
            seen_writable = true;
        } else if seen_writable {
            return Err(fail(
                "device-readable descriptor after a device-writable one",
            ));
        }
        let access = if d.writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if d.len > 0 && !mem.check_range(d.addr, d.len as usize, access) {
            return Err(fail("buffer outside guest memory"));
        }
    }

    // 4. Split into the readable stream (header + OUT data) and the writable stream (IN data +
    //    status), dropping empty descriptors and the status byte itself.
    let mut writable = scratch.vec();
    let mut payload = scratch.vec();
    let readable = &mut scratch.readable;
    readable.clear();
    let n = scratch.descs.len();
    for (i, d) in scratch.descs.iter().enumerate() {
        let len = if i + 1 == n { d.len - 1 } else { d.len };
        if len == 0 {
            continue;
        }
        let seg = Segment { addr: d.addr, len };
        if d.writable {
            writable.push(seg);
        } else {
            readable.push(seg);
        }
    }
    let mut header = [0u8; REQ_HEADER_LEN];
    if !take_bytes(mem, readable, &mut header, &mut payload) {
        return Err(fail("request header shorter than 16 bytes"));
    }
    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let readable_len: u64 = payload.iter().map(|s| u64::from(s.len)).sum();
    let writable_len: u64 = writable.iter().map(|s| u64::from(s.len)).sum();

    // 5. Per type.
    let unsupp = |why| ParseError::Status {
        addr: status,
        status: VIRTIO_BLK_S_UNSUPP,
        why,
    };
    let (kind, which) = match req_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let (len, which, other) = if req_type == VIRTIO_BLK_T_IN {
                (writable_len, Data::Writable, readable_len)
            } else {
                (readable_len, Data::Payload, writable_len)
            };
            if other != 0 {
                return Err(fail("data buffer with the wrong direction"));
            }
            if !len.is_multiple_of(SECTOR_SIZE) {
                return Err(fail("data length not a multiple of 512"));
            }
            let offset = sector_range(sector, len / SECTOR_SIZE, limits.capacity)
                .ok_or_else(|| fail("sector range beyond the capacity"))?;
            let kind = if req_type == VIRTIO_BLK_T_IN {
                RequestKind::In { offset, len }
            } else {
                RequestKind::Out { offset, len }
            };
            (kind, which)
        }
        VIRTIO_BLK_T_FLUSH => (RequestKind::Flush, Data::None),
        VIRTIO_BLK_T_GET_ID => {
            if writable.is_empty() {
                return Err(fail("GET_ID without a writable buffer"));
            }
            (RequestKind::GetId, Data::Writable)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            if (discard && !limits.discard) || (!discard && !limits.write_zeroes) {
                return Err(unsupp("feature not negotiated"));
            }
            let ranges = zero_ranges(mem, &payload, readable_len, discard, limits, status)?;
            let kind = if discard {
                RequestKind::Discard(ranges)
            } else {
                RequestKind::WriteZeroes(ranges)
            };
            (kind, Data::None)
        }
        _ => return Err(unsupp("unknown request type")),
    };
    let data = match which {
        Data::Writable => {
            scratch.recycle(payload);
            writable
        }
        Data::Payload => {
            scratch.recycle(writable);
            payload
        }
        Data::None => {
            scratch.recycle(payload);
            scratch.recycle(writable);
            Vec::new()
        }
    };
    Ok(Request { kind, data, status })
}

/// Which buffer list carries a request's data.
enum Data {
    Writable,
    Payload,
    None,
}

/// Byte offset of `count` sectors from `sector`, if they fit in `capacity` sectors.
fn sector_range(sector: u64, count: u64, capacity: u64) -> Option<u64> {
    let end = sector.checked_add(count)?;
    // The offset is computed only for a sector inside the volume: past the end it can overflow
    // (found by the blk_request fuzz target).
    if end <= capacity {
        sector.checked_mul(SECTOR_SIZE)
    } else {
        None
    }
}

/// Copy the first `out.len()` bytes of `segs` into `out` and put the segments that remain in
/// `rest`; false if `segs` holds fewer bytes.
fn take_bytes(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    out: &mut [u8],
    rest: &mut Vec<Segment>,
) -> bool {
    let mut got = 0;
    rest.clear();
    for s in segs {
        if got < out.len() {
            let n = (out.len() - got).min(s.len as usize);
            if mem.read_slice(&mut out[got..got + n], s.addr).is_err() {
                return false;
            }
            got += n;
            if n < s.len as usize {
                rest.push(Segment {
                    addr: s.addr.unchecked_add(n as u64),
                    len: s.len - n as u32,
                });
            }
        } else {
            rest.push(*s);
        }
    }
    got == out.len()
}

/// Parse the segments of a DISCARD or WRITE_ZEROES payload.
fn zero_ranges(
    mem: &GuestMemoryMmap,
    payload: &[Segment],
    payload_len: u64,
    discard: bool,
    limits: &Limits,
    status: GuestAddress,
) -> Result<Vec<ZeroRange>, ParseError> {
    let fail = |code, why| ParseError::Status {
        addr: status,
        status: code,
        why,
    };
    if payload_len == 0 || !payload_len.is_multiple_of(DISCARD_SEGMENT_LEN as u64) {
        return Err(fail(
            VIRTIO_BLK_S_IOERR,
            "payload not a whole number of segments",
        ));
    }
    let count = payload_len / DISCARD_SEGMENT_LEN as u64;
    if count > u64::from(limits.max_zero_segs) {
        return Err(fail(VIRTIO_BLK_S_IOERR, "more segments than advertised"));
    }
    let mut rest = payload.to_vec();
    let mut next = Vec::new();
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut seg = [0u8; DISCARD_SEGMENT_LEN];
        if !take_bytes(mem, &rest, &mut seg, &mut next) {
            return Err(fail(VIRTIO_BLK_S_IOERR, "segment unreadable"));
        }
        std::mem::swap(&mut rest, &mut next);
        let mut sb = [0u8; 8];
        sb.copy_from_slice(&seg[0..8]);
        let sector = u64::from_le_bytes(sb);
        let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        // 5.2.6.2: UNSUPP for DISCARD with the unmap flag or any unknown flag, and for
        // WRITE_ZEROES with any unknown flag.
        let unknown = flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if unknown || (discard && flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0) {
            return Err(fail(VIRTIO_BLK_S_UNSUPP, "unsupported segment flags"));
        }
        if num > limits.max_zero_sectors {
            return Err(fail(VIRTIO_BLK_S_IOERR, "segment larger than advertised"));
        }
        let offset = sector_range(sector, u64::from(num), limits.capacity)
            .ok_or_else(|| fail(VIRTIO_BLK_S_IOERR, "segment beyond the capacity"))?;
        out.push(ZeroRange {
            offset,
            len: u64::from(num) * SECTOR_SIZE,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
