//! L1 and L2 table entries, and inflating compressed clusters: pure functions over bytes.
//!
//! Entry layouts are from QEMU's `docs/interop/qcow2.rst`, "Cluster mapping" and "Extended
//! L2 Entries".

use super::header::Header;
use super::Qcow2Error;
use flate2::{Decompress, FlushDecompress, Status};
use thiserror::Error;

/// Why a compressed cluster cannot be inflated.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InflateError {
    #[error("is not a valid deflate stream ({0})")]
    Invalid(String),
    #[error("inflates to {produced} bytes, short of the {cluster}-byte cluster")]
    Short { produced: usize, cluster: usize },
    #[error("inflates beyond the {cluster}-byte cluster")]
    Beyond { cluster: usize },
}

/// Bits 9-55 of an L1 entry or a standard L2 entry: the host offset (qcow2.rst, "L1 table
/// entry" and "Standard Cluster Descriptor").
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: the cluster is compressed.
pub const L2_COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 63: refcount is exactly one ("copied"). Never set on compressed clusters
/// (`qemu-img check` reports it as corruption).
pub const L2_COPIED: u64 = 1 << 63;
/// Standard cluster descriptor bit 0: the cluster reads as zeros (v3 without extended L2).
pub const L2_ZERO: u64 = 1;
/// Host offsets must stay below 2^56 (qcow2.rst: "a virtual cluster must currently map to
/// a host offset below 64 PB (56 bits)").
pub const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Compressed clusters count their length in 512-byte sectors (qcow2.rst, "Compressed
/// Clusters Descriptor").
pub const COMPRESSED_SECTOR: u64 = 512;
/// Subclusters per cluster with extended L2 entries (qcow2.rst, "Extended L2 Entries").
pub const SUBCLUSTERS: u64 = 32;

/// What one guest cluster reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Zeros: unallocated (no backing file), or a zero cluster.
    Zero,
    /// Stored as is at `host`; `subclusters` has bit `i` set for each of the
    /// [`SUBCLUSTERS`] subclusters that holds data (all ones without extended L2 entries);
    /// the others read as zeros.
    Data { host: u64, subclusters: u32 },
    /// Deflate-compressed: the stream starts at `host` and lies within `len` bytes.
    Compressed { host: u64, len: u64 },
}

/// Decode an active L1 entry: the offset of its L2 table, or `None` when unallocated.
pub fn l1_entry(raw: u64, h: &Header) -> Result<Option<u64>, Qcow2Error> {
    let off = raw & OFFSET_MASK;
    if off == 0 {
        return Ok(None);
    }
    if !off.is_multiple_of(h.cluster_size()) {
        return Err(Qcow2Error::layout(format!(
            "L2 table offset {off:#x} is not cluster-aligned"
        )));
    }
    Ok(Some(off))
}

/// Decode an L2 entry (`bitmap`: the subcluster bitmap of an extended entry, 0 otherwise).
pub fn l2_entry(raw: u64, bitmap: u64, h: &Header) -> Result<Mapping, Qcow2Error> {
    if raw & L2_COMPRESSED != 0 {
        if raw & L2_COPIED != 0 {
            return Err(Qcow2Error::layout(
                "a compressed cluster has the copied flag set",
            ));
        }
        // x = 62 - (cluster_bits - 8): the offset is bits 0..x, the extra sector count
        // bits x..62.
        let shift = 62 - (h.cluster_bits - 8);
        let host = raw & ((1u64 << shift) - 1);
        let sectors = ((raw >> shift) & ((1u64 << (h.cluster_bits - 8)) - 1)) + 1;
        if host >= MAX_HOST_OFFSET {
            return Err(Qcow2Error::layout(format!(
                "compressed cluster offset {host:#x} is beyond 2^56"
            )));
        }
        let len = sectors * COMPRESSED_SECTOR - host % COMPRESSED_SECTOR;
        return Ok(Mapping::Compressed { host, len });
    }
    let host = raw & OFFSET_MASK;
    if host != 0 && !host.is_multiple_of(h.cluster_size()) {
        return Err(Qcow2Error::layout(format!(
            "data cluster offset {host:#x} is not cluster-aligned"
        )));
    }
    if h.extended_l2 {
        // Bits 0-31: subcluster allocated; bits 32-63: subcluster reads as zeros.
        let alloc = (bitmap & 0xffff_ffff) as u32;
        let zero = (bitmap >> 32) as u32;
        if alloc & zero != 0 {
            return Err(Qcow2Error::layout(
                "a subcluster is marked both allocated and zero",
            ));
        }
        if alloc == 0 {
            return Ok(Mapping::Zero);
        }
        if host == 0 {
            return Err(Qcow2Error::layout(
                "allocated subclusters in a cluster with no host offset",
            ));
        }
        return Ok(Mapping::Data {
            host,
            subclusters: alloc,
        });
    }
    if raw & L2_ZERO != 0 {
        if h.version < 3 {
            return Err(Qcow2Error::layout("zero cluster in a version 2 image"));
        }
        return Ok(Mapping::Zero);
    }
    if host == 0 {
        return Ok(Mapping::Zero);
    }
    Ok(Mapping::Data {
        host,
        subclusters: u32::MAX,
    })
}

/// Read big-endian u64 number `i` of `table`.
pub fn entry_at(table: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&table[i * 8..i * 8 + 8]);
    u64::from_be_bytes(w)
}

/// Inflate one compressed cluster: the raw deflate stream at the start of `input` must
/// produce exactly `out.len()` bytes (one cluster). Returns the input bytes consumed.
///
/// Like QEMU, a stream that fills the cluster is accepted even if its input was cut short
/// (the descriptor only counts whole sectors); unlike QEMU, which silently keeps the first
/// cluster's worth, a stream that would produce more is refused, and so is one that
/// produces less. Memory use is `out` and a fixed-size inflater, whatever the input.
pub fn inflate_cluster(input: &[u8], out: &mut [u8]) -> Result<u64, InflateError> {
    let mut z = Decompress::new(false);
    let bad = |e: flate2::DecompressError| InflateError::Invalid(e.to_string());
    // Both totals are bounded by the slices given, so they fit in usize.
    let at = |z: &Decompress| (z.total_in() as usize, z.total_out() as usize);
    let mut ended = false;
    while at(&z).1 < out.len() {
        let (i, o) = at(&z);
        let status = z
            .decompress(&input[i..], &mut out[o..], FlushDecompress::None)
            .map_err(bad)?;
        ended = status == Status::StreamEnd;
        if ended || at(&z) == (i, o) {
            break;
        }
    }
    let produced = at(&z).1;
    if produced < out.len() {
        return Err(InflateError::Short {
            produced,
            cluster: out.len(),
        });
    }
    // The cluster is full: does the stream want to produce more? An error here means the
    // input stopped short after the cluster was full, which QEMU accepts too.
    let mut more = [0u8; 1];
    while !ended {
        let (i, o) = at(&z);
        match z.decompress(&input[i..], &mut more, FlushDecompress::None) {
            Ok(_) if at(&z).1 > o => {
                return Err(InflateError::Beyond { cluster: out.len() });
            }
            Ok(status) => ended = status == Status::StreamEnd || at(&z).0 == i,
            Err(_) => ended = true,
        }
    }
    Ok(z.total_in())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn header(cluster_bits: u32, version: u32, extended_l2: bool) -> Header {
        Header {
            version,
            cluster_bits,
            size: 1 << 30,
            l1_size: 2,
            l1_table_offset: 3 << cluster_bits,
            refcount_table_offset: 1 << cluster_bits,
            refcount_table_clusters: 1,
            extended_l2,
        }
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    }

    #[test]
    fn l1_entries() {
        let h = header(16, 3, false);
        assert_eq!(l1_entry(0, &h).unwrap(), None);
        assert_eq!(l1_entry(L2_COPIED, &h).unwrap(), None);
        assert_eq!(l1_entry(L2_COPIED | 0x30000, &h).unwrap(), Some(0x30000));
        assert!(l1_entry(0x30200, &h).is_err());
    }

    #[test]
    fn standard_l2_entries() {
        let h = header(16, 3, false);
        assert_eq!(l2_entry(0, 0, &h).unwrap(), Mapping::Zero);
        assert_eq!(l2_entry(L2_ZERO, 0, &h).unwrap(), Mapping::Zero);
        assert_eq!(l2_entry(L2_ZERO | 0x50000, 0, &h).unwrap(), Mapping::Zero);
        assert_eq!(
            l2_entry(L2_COPIED | 0x50000, 0, &h).unwrap(),
            Mapping::Data {
                host: 0x50000,
                subclusters: u32::MAX
            }
        );
        assert!(l2_entry(0x50200, 0, &h).is_err(), "unaligned");
        assert!(
            l2_entry(L2_ZERO, 0, &header(16, 2, false)).is_err(),
            "zero flag in v2"
        );
    }

    #[test]
    fn compressed_l2_entries() {
        let h = header(16, 3, false);
        // cluster_bits 16: offset in bits 0..54, extra sectors in bits 54..62.
        let raw = L2_COMPRESSED | (3u64 << 54) | 0x1_2345;
        assert_eq!(
            l2_entry(raw, 0, &h).unwrap(),
            Mapping::Compressed {
                host: 0x1_2345,
                len: 4 * 512 - 0x145
            }
        );
        assert!(l2_entry(raw | L2_COPIED, 0, &h).is_err());
        // cluster_bits 9: the offset field reaches bit 60; bits 56.. must be clear.
        let h9 = header(9, 3, false);
        assert!(l2_entry(L2_COMPRESSED | (1 << 57), 0, &h9).is_err());
    }

    #[test]
    fn extended_l2_entries() {
        let h = header(16, 3, true);
        assert_eq!(l2_entry(0, 0, &h).unwrap(), Mapping::Zero);
        assert_eq!(l2_entry(0, 0xffff_ffff << 32, &h).unwrap(), Mapping::Zero);
        assert_eq!(
            l2_entry(0x50000, 0b101, &h).unwrap(),
            Mapping::Data {
                host: 0x50000,
                subclusters: 0b101
            }
        );
        assert!(l2_entry(0x50000, 1 | (1 << 32), &h).is_err(), "both");
        assert!(l2_entry(0, 1, &h).is_err(), "allocated without offset");
    }

    #[test]
    fn inflation_is_capped_at_the_cluster() {
        let cluster: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut out = vec![0u8; 4096];
        let z = deflate(&cluster);
        // Trailing bytes (the rest of the last sector) are not consumed.
        let mut padded = z.clone();
        padded.extend_from_slice(&[0xaa; 300]);
        assert_eq!(inflate_cluster(&padded, &mut out).unwrap(), z.len() as u64);
        assert_eq!(out, cluster);
        // A stream of twice the cluster is refused, and never written past `out`.
        let big = deflate(&[7u8; 8192]);
        assert!(inflate_cluster(&big, &mut out)
            .unwrap_err()
            .to_string()
            .contains("beyond"));
        // A short stream is refused.
        assert!(inflate_cluster(&deflate(&[1u8; 100]), &mut out)
            .unwrap_err()
            .to_string()
            .contains("short"));
        // Garbage is refused.
        assert!(inflate_cluster(&[0xff; 64], &mut out).is_err());
        // A stream cut after the cluster is full but before its end is accepted (QEMU too).
        let cut = &z[..z.len() - 1];
        if inflate_cluster(cut, &mut out).is_ok() {
            assert_eq!(out, cluster);
        }
    }
}
