//! The qcow2 header: parsing and the checks QEMU makes before it opens an image.
//!
//! Field offsets and meanings are from QEMU's `docs/interop/qcow2.rst` (formerly
//! `qcow2.txt`), "Header"; the limits are QEMU's implementation limits from
//! `block/qcow2.h`, so that what QEMU refuses to open is refused here too.

use super::Qcow2Error;

/// The qcow2 magic, "QFI\xfb" (header bytes 0-3).
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header (qcow2.rst: "the header is exactly 72 bytes").
pub const V2_HEADER_LEN: u64 = 72;
/// Shortest version 3 header (qcow2.rst: "at least 104 bytes").
pub const V3_MIN_HEADER_LEN: u64 = 104;
/// Offset of the v3 `compression_type` byte (qcow2.rst, "Additional fields").
const COMPRESSION_TYPE_OFFSET: usize = 104;
/// Bytes of the file [`parse_header`] needs to see: the v3 header through `compression_type`.
pub const HEADER_READ_LEN: usize = COMPRESSION_TYPE_OFFSET + 1;

/// Smallest cluster: 512 bytes (qcow2.rst: cluster_bits "must not be less than 9").
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster QEMU opens: 2 MiB (`MAX_CLUSTER_BITS` in QEMU's block/qcow2.h).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Smallest cluster with extended L2 entries: 16 KiB (qcow2.rst, cluster_bits note).
pub const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;
/// Largest active L1 table QEMU accepts: 32 MiB (`QCOW_MAX_L1_SIZE`, block/qcow2.h).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU accepts: 8 MiB (`QCOW_MAX_REFTABLE_SIZE`, block/qcow2.h).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots QEMU accepts (`QCOW_MAX_SNAPSHOTS`, block/qcow2.h).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest refcount_order (qcow2.rst: "may not exceed 6").
pub const MAX_REFCOUNT_ORDER: u32 = 6;
/// Bytes of one L1 entry, and of one standard L2 entry (qcow2.rst, "Cluster mapping").
pub const ENTRY_BYTES: u64 = 8;
/// Bytes of one extended L2 entry: the entry and its subcluster bitmap (qcow2.rst,
/// "Extended L2 Entries").
pub const EXTENDED_ENTRY_BYTES: u64 = 16;

/// Incompatible feature bit 0: refcounts may be inconsistent. Harmless for reading (QEMU
/// opens such images read-only without repairing them); accepted.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: any data structure may be corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: `compression_type` is not deflate.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (subclusters).
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Every incompatible bit qcow2.rst defines (bits 5-63 are reserved).
pub const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTENDED_L2;

/// `crypt_method` 0: no encryption (qcow2.rst, header bytes 32-35).
pub const CRYPT_NONE: u32 = 0;
/// `crypt_method` 2, LUKS: the largest defined method (1 is the old AES-CBC).
pub const CRYPT_LUKS: u32 = 2;
/// `compression_type` 0: deflate (qcow2.rst, byte 104).
pub const COMPRESSION_DEFLATE: u8 = 0;
/// `compression_type` 1: zstd.
pub const COMPRESSION_ZSTD: u8 = 1;

/// How to make an image this reader takes out of one it refuses.
const CONVERT_HINT: &str = "; convert it with `qemu-img convert -O raw` (or `-O qcow2`) first";

/// A validated qcow2 header: only what reading the active disk needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries of the active L1 table as recorded (at least [`Header::l1_needed`]).
    pub l1_size: u64,
    /// File offset of the active L1 table (cluster-aligned).
    pub l1_table_offset: u64,
    /// File offset of the refcount table (cluster-aligned).
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u64,
    /// Whether L2 entries carry a subcluster bitmap.
    pub extended_l2: bool,
}

impl Header {
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes per L2 entry.
    pub fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2 {
            EXTENDED_ENTRY_BYTES
        } else {
            ENTRY_BYTES
        }
    }

    /// Entries per L2 table (one cluster).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_bytes()
    }

    /// Guest bytes one L2 table maps.
    pub fn l2_coverage(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }

    /// L1 entries needed to map the whole virtual disk.
    pub fn l1_needed(&self) -> u64 {
        self.size.div_ceil(self.l2_coverage())
    }

    /// Guest clusters of the virtual disk.
    pub fn guest_clusters(&self) -> u64 {
        self.size.div_ceil(self.cluster_size())
    }

    /// The metadata areas the header names: the header cluster, the active L1 table and
    /// the refcount table, as `[start, end)` file ranges.
    pub fn metadata(&self) -> [(u64, u64); 3] {
        let cs = self.cluster_size();
        [
            (0, cs),
            (
                self.l1_table_offset,
                self.l1_table_offset + self.l1_needed() * ENTRY_BYTES,
            ),
            (
                self.refcount_table_offset,
                self.refcount_table_offset + self.refcount_table_clusters * cs,
            ),
        ]
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// Whether `[start, start + len)` lies inside a file of `file_len` bytes (no overflow).
pub fn inside(start: u64, len: u64, file_len: u64) -> bool {
    start.checked_add(len).is_some_and(|end| end <= file_len)
}

/// Parse and validate the header of a qcow2 file of `file_len` bytes whose first bytes are
/// `head` (at least [`HEADER_READ_LEN`] of them, or the whole file if shorter).
///
/// Refused, like QEMU refuses them: bad magic or version, cluster_bits outside 9..=21, a v3
/// header shorter than 104 bytes or longer than a cluster, unknown incompatible feature
/// bits, refcount_order above 6, an unknown encryption or compression method, an L1 table
/// larger than 32 MiB or too small for the virtual size, a refcount table larger than
/// 8 MiB, more than 65536 snapshots, unaligned table offsets. Refused because amivm does not
/// read them: backing files, encryption, external data files, zstd compression, the
/// corrupt bit. Refused because the file cannot hold them: tables beyond its end or over
/// the header.
pub fn parse_header(head: &[u8], file_len: u64) -> Result<Header, Qcow2Error> {
    if head.len() < V2_HEADER_LEN as usize {
        return Err(Qcow2Error::Truncated);
    }
    if head[..4] != QCOW2_MAGIC {
        return Err(Qcow2Error::header("no qcow2 magic"));
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::unsupported(
            format!("qcow2 version {version}"),
            "",
        ));
    }
    let backing_file_offset = be64(head, 8);
    let cluster_bits = be32(head, 20);
    let size = be64(head, 24);
    let crypt_method = be32(head, 32);
    let l1_size = u64::from(be32(head, 36));
    let l1_table_offset = be64(head, 40);
    let refcount_table_offset = be64(head, 48);
    let refcount_table_clusters = u64::from(be32(head, 56));
    let nb_snapshots = be32(head, 60);
    let snapshots_offset = be64(head, 64);

    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(Qcow2Error::header(format!(
            "cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
        )));
    }
    let cs = 1u64 << cluster_bits;

    let mut incompatible = 0;
    let mut compression = COMPRESSION_DEFLATE;
    if version == 3 {
        if head.len() < V3_MIN_HEADER_LEN as usize {
            return Err(Qcow2Error::Truncated);
        }
        let header_length = u64::from(be32(head, 100));
        if header_length < V3_MIN_HEADER_LEN {
            return Err(Qcow2Error::header(format!(
                "header_length {header_length} is under {V3_MIN_HEADER_LEN}"
            )));
        }
        if header_length > cs {
            return Err(Qcow2Error::header(format!(
                "header_length {header_length} exceeds the cluster size {cs}"
            )));
        }
        incompatible = be64(head, 72);
        let unknown = incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Qcow2Error::unsupported(
                format!("unknown incompatible feature bits {unknown:#x}"),
                "",
            ));
        }
        let refcount_order = be32(head, 96);
        if refcount_order > MAX_REFCOUNT_ORDER {
            return Err(Qcow2Error::header(format!(
                "refcount_order {refcount_order} exceeds {MAX_REFCOUNT_ORDER}"
            )));
        }
        if header_length > COMPRESSION_TYPE_OFFSET as u64 {
            compression = *head
                .get(COMPRESSION_TYPE_OFFSET)
                .ok_or(Qcow2Error::Truncated)?;
        }
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(Qcow2Error::unsupported(
            "the corrupt bit",
            "; repair it with `qemu-img check -r all`",
        ));
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(Qcow2Error::unsupported(
            "an external data file",
            CONVERT_HINT,
        ));
    }
    match (incompatible & INCOMPAT_COMPRESSION != 0, compression) {
        (false, COMPRESSION_DEFLATE) => {}
        (true, COMPRESSION_ZSTD) => {
            return Err(Qcow2Error::unsupported(
                "zstd compression",
                "; convert it with `qemu-img convert -O qcow2 -o compression_type=zlib`",
            ))
        }
        (bit, t) => {
            return Err(Qcow2Error::header(format!(
                "compression type {t} with the compression-type bit {}",
                if bit { "set" } else { "clear" }
            )))
        }
    }
    let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
    if extended_l2 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
        return Err(Qcow2Error::header(format!(
            "extended L2 entries need clusters of at least {} bytes",
            1u64 << MIN_EXTENDED_L2_CLUSTER_BITS
        )));
    }
    if backing_file_offset != 0 {
        return Err(Qcow2Error::unsupported("a backing file", CONVERT_HINT));
    }
    if crypt_method != CRYPT_NONE {
        return Err(if crypt_method <= CRYPT_LUKS {
            Qcow2Error::unsupported("encryption", CONVERT_HINT)
        } else {
            Qcow2Error::header(format!("unknown encryption method {crypt_method}"))
        });
    }
    if nb_snapshots > MAX_SNAPSHOTS {
        return Err(Qcow2Error::header(format!(
            "{nb_snapshots} snapshots (QEMU's limit is {MAX_SNAPSHOTS})"
        )));
    }
    if nb_snapshots > 0 && !snapshots_offset.is_multiple_of(cs) {
        return Err(Qcow2Error::header(
            "snapshot table offset is not cluster-aligned",
        ));
    }

    let h = Header {
        version,
        cluster_bits,
        size,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        extended_l2,
    };
    check_tables(&h, file_len)?;
    Ok(h)
}

/// The L1 and refcount tables: sizes within QEMU's limits, the L1 large enough for the
/// virtual size, both cluster-aligned, inside the file and clear of the header and of each
/// other.
fn check_tables(h: &Header, file_len: u64) -> Result<(), Qcow2Error> {
    let cs = h.cluster_size();
    if h.refcount_table_clusters
        .checked_mul(cs)
        .is_none_or(|b| b > MAX_REFTABLE_BYTES)
    {
        return Err(Qcow2Error::header(format!(
            "refcount table of {} clusters exceeds QEMU's {} MiB limit",
            h.refcount_table_clusters,
            MAX_REFTABLE_BYTES >> 20
        )));
    }
    if h.l1_size * ENTRY_BYTES > MAX_L1_BYTES {
        return Err(Qcow2Error::header(format!(
            "L1 table of {} entries exceeds QEMU's {} MiB limit",
            h.l1_size,
            MAX_L1_BYTES >> 20
        )));
    }
    let needed = h.l1_needed();
    if h.l1_size < needed {
        return Err(Qcow2Error::header(format!(
            "L1 table of {} entries is too small for a virtual size of {} bytes ({needed} needed)",
            h.l1_size, h.size
        )));
    }
    let tables = [
        ("L1 table", h.l1_table_offset, needed * ENTRY_BYTES),
        (
            "refcount table",
            h.refcount_table_offset,
            h.refcount_table_clusters * cs,
        ),
    ];
    for (what, off, len) in tables {
        if !off.is_multiple_of(cs) {
            return Err(Qcow2Error::header(format!(
                "{what} offset {off:#x} is not cluster-aligned"
            )));
        }
        if len > 0 && off < cs {
            return Err(Qcow2Error::header(format!("{what} overlaps the header")));
        }
        if !inside(off, len, file_len) {
            return Err(Qcow2Error::header(format!(
                "{what} at {off:#x} ({len} bytes) lies beyond the end of the file ({file_len} bytes)"
            )));
        }
    }
    let [_, l1, rt] = h.metadata();
    if l1.0 < l1.1 && rt.0 < rt.1 && l1.0 < rt.1 && rt.0 < l1.1 {
        return Err(Qcow2Error::header("L1 table overlaps the refcount table"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 header as `qemu-img create -f qcow2 X 1G` writes it: 64 KiB clusters, the
    /// refcount table at cluster 1, the L1 table (2 entries) at cluster 3.
    fn v3() -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        h[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    const LEN: u64 = 0x40000;

    fn with(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut h = v3();
        h[at..at + bytes.len()].copy_from_slice(bytes);
        h
    }

    fn refused(h: &[u8], len: u64, why: &str) {
        let e = parse_header(h, len).expect_err(why).to_string();
        assert!(e.contains(why), "{e:?} should say {why:?}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn qemu_default_header() {
        let h = parse_header(&v3(), LEN).unwrap();
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.l2_entries(), 8192);
        assert_eq!(h.l1_needed(), 2);
        assert_eq!(h.guest_clusters(), 16384);
        assert!(!h.extended_l2);
        // Version 2: 72 bytes, no feature fields.
        let mut v2 = with(4, &2u32.to_be_bytes());
        v2.truncate(72);
        assert_eq!(parse_header(&v2, LEN).unwrap().version, 2);
        // The dirty bit is harmless for reading.
        assert!(parse_header(&with(72, &1u64.to_be_bytes()), LEN).is_ok());
        // Extended L2 entries: 16-byte entries.
        let mut x = with(72, &INCOMPAT_EXTENDED_L2.to_be_bytes());
        x[24..32].copy_from_slice(&(1u64 << 29).to_be_bytes());
        let x = parse_header(&x, LEN).unwrap();
        assert_eq!(x.l2_entries(), 4096);
        assert_eq!(x.l1_needed(), 2);
    }

    #[test]
    fn bad_headers_are_refused() {
        refused(&v3()[..50], LEN, "ends inside");
        refused(&with(0, b"QFI\0"), LEN, "magic");
        refused(&with(4, &4u32.to_be_bytes()), LEN, "version 4");
        refused(&with(20, &8u32.to_be_bytes()), LEN, "cluster_bits 8");
        refused(&with(20, &22u32.to_be_bytes()), LEN, "cluster_bits 22");
        refused(&with(100, &96u32.to_be_bytes()), LEN, "header_length");
        refused(&with(96, &7u32.to_be_bytes()), LEN, "refcount_order");
        refused(&with(72, &(1u64 << 5).to_be_bytes()), LEN, "0x20");
        refused(&with(72, &INCOMPAT_CORRUPT.to_be_bytes()), LEN, "corrupt");
        refused(
            &with(72, &INCOMPAT_DATA_FILE.to_be_bytes()),
            LEN,
            "external data",
        );
        refused(&with(8, &0x200u64.to_be_bytes()), LEN, "backing file");
        refused(&with(32, &2u32.to_be_bytes()), LEN, "encryption");
        refused(&with(32, &3u32.to_be_bytes()), LEN, "encryption method 3");
        refused(&with(60, &70000u32.to_be_bytes()), LEN, "snapshots");
    }

    #[test]
    fn compression_types() {
        let mut z = with(72, &INCOMPAT_COMPRESSION.to_be_bytes());
        z[104] = COMPRESSION_ZSTD;
        refused(&z, LEN, "zstd");
        z[104] = 0;
        refused(
            &z,
            LEN,
            "compression type 0 with the compression-type bit set",
        );
        let mut odd = v3();
        odd[104] = 1;
        refused(&odd, LEN, "bit clear");
        // A byte beyond header_length is not the compression type.
        odd[100..104].copy_from_slice(&104u32.to_be_bytes());
        assert!(parse_header(&odd, LEN).is_ok());
    }

    #[test]
    fn table_checks() {
        refused(&with(36, &0u32.to_be_bytes()), LEN, "too small");
        // 2^62 bytes would need 2^33 L1 entries with 64 KiB clusters.
        refused(&with(24, &(1u64 << 62).to_be_bytes()), LEN, "too small");
        refused(&with(36, &(5u32 << 20).to_be_bytes()), LEN, "32 MiB");
        refused(
            &with(40, &0x30200u64.to_be_bytes()),
            LEN,
            "not cluster-aligned",
        );
        refused(&with(40, &0u64.to_be_bytes()), LEN, "overlaps the header");
        refused(&with(40, &0x40000u64.to_be_bytes()), LEN, "beyond the end");
        refused(
            &with(40, &0x10000u64.to_be_bytes()),
            LEN,
            "overlaps the refcount",
        );
        refused(
            &with(48, &0x10008u64.to_be_bytes()),
            LEN,
            "not cluster-aligned",
        );
        refused(&with(56, &200u32.to_be_bytes()), LEN, "8 MiB");
        refused(&with(56, &100u32.to_be_bytes()), LEN, "beyond the end");
        // An empty disk needs no L1 entries (the volume size check refuses it later).
        let empty = with(24, &0u64.to_be_bytes());
        let empty = with(36, &0u32.to_be_bytes())
            .iter()
            .zip(&empty)
            .map(|(a, b)| a & b)
            .collect::<Vec<u8>>();
        assert_eq!(parse_header(&empty, LEN).unwrap().l1_needed(), 0);
    }
}
