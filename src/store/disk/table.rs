//! Partition tables: GPT (crate `gptman`) or MBR with extended partitions (crate `mbrman`).
//! The crates parse; this module guards what they would allocate, and checks that every
//! partition lies inside the disk.

use super::read::{Cursor, ReadAt};
use super::DiskError;

/// Sector sizes a GPT is looked for with: 512-byte and 4 KiB logical sectors (gptman's
/// `GPT::find_from` tries the same two).
const GPT_SECTOR_SIZES: [u64; 2] = [512, 4096];
/// MBR disks are read with 512-byte sectors (what sfdisk, fdisk and the BIOS use).
const MBR_SECTOR_SIZE: u32 = 512;
/// The GPT header signature (UEFI 2.10 §5.3.2, offset 0 of the header).
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Offset of `NumberOfPartitionEntries` (u32) in the GPT header (UEFI 2.10 table 5.5).
const GPT_NUM_ENTRIES_OFFSET: usize = 80;
/// Offset of `SizeOfPartitionEntry` (u32) in the GPT header.
const GPT_ENTRY_SIZE_OFFSET: usize = 84;
/// Bytes of the GPT header that carry fields (UEFI 2.10 table 5.5, `HeaderSize` 92).
const GPT_HEADER_LEN: usize = 92;
/// GPT partition entries are 128 bytes or a larger power of two (UEFI 2.10 §5.3.2); amivm
/// accepts 128 to 512.
const GPT_ENTRY_SIZES: std::ops::RangeInclusive<u32> = 128..=512;
/// The most GPT entries amivm reads. The UEFI spec sets no maximum; tools make 128 (sgdisk,
/// sfdisk, parted). gptman allocates for the header's count before reading, so a crafted
/// count is refused here.
pub const MAX_GPT_ENTRIES: u32 = 4096;
/// The most bytes the table crates may read: the largest GPT array amivm accepts
/// ([`MAX_GPT_ENTRIES`] entries of up to 512 bytes) plus its headers, and room for a chain of
/// 1024 MBR extended boot records, each read several times.
pub const TABLE_READ_BUDGET: u64 = 4 << 20;
/// The MBR boot signature at bytes 510-511 of sector 0.
const MBR_BOOT_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const MBR_BOOT_SIGNATURE_OFFSET: usize = 510;
/// Offset of the four 16-byte primary partition entries in the MBR; byte 0 of each is the
/// boot flag, 0x00 or 0x80.
const MBR_ENTRIES_OFFSET: usize = 446;
/// Four primary entries of 16 bytes each.
const MBR_PRIMARY_ENTRIES: usize = 4;
const MBR_ENTRY_LEN: usize = 16;
/// The most partitions a disk may use: Linux's `DISK_MAX_PARTS` (include/linux/blkdev.h), the
/// most it can name. Each ext2/3/4 partition's reader keeps a block cache, so this also
/// bounds the analysis's memory.
pub const MAX_PARTITIONS: usize = 256;
/// MBR partition type of a GPT's protective MBR (UEFI 2.10 §5.2.3).
const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xEE;

/// Which kind of partition table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
    Mbr,
}

impl TableKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TableKind::Gpt => "GPT",
            TableKind::Mbr => "MBR",
        }
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its number, as Linux names it (`/dev/vda1` is 1; MBR logical partitions from 5).
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// GPT partition type GUID, lower-case text (`None` on MBR disks).
    pub type_guid: Option<String>,
    /// MBR partition type byte (`None` on GPT disks).
    pub mbr_type: Option<u8>,
    /// What Linux accepts as `root=PARTUUID=`: the GPT unique partition GUID, or on MBR
    /// disks the disk signature and the partition number (`SSSSSSSS-PP`, in hex).
    pub part_uuid: String,
}

/// A disk's partition table.
#[derive(Debug, Clone)]
pub struct Table {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
}

/// Format a GUID stored in its mixed-endian on-disk form (UEFI 2.10 appendix A: the first
/// three fields little-endian) as lower-case text, as `blkid` and the kernel print it.
pub fn guid_text(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

/// Read the GPT header fields that decide gptman's allocation, at `offset`: `Some(count)`
/// when a header signature is there.
fn gpt_entry_count_at(disk: &dyn ReadAt, offset: u64) -> Option<(u32, u32)> {
    let mut h = [0u8; GPT_HEADER_LEN];
    disk.read_exact_at(&mut h, offset).ok()?;
    if &h[..8] != GPT_SIGNATURE {
        return None;
    }
    let word = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    Some((word(GPT_NUM_ENTRIES_OFFSET), word(GPT_ENTRY_SIZE_OFFSET)))
}

/// Whether the disk has a GPT header (primary or backup) at either sector size; refuses
/// headers whose entry array gptman would allocate without bound.
fn has_gpt(disk: &dyn ReadAt) -> Result<bool, DiskError> {
    let mut found = false;
    for ss in GPT_SECTOR_SIZES {
        let last = (disk.size() / ss).checked_sub(1).map(|s| s * ss);
        for off in std::iter::once(ss).chain(last) {
            if let Some((count, size)) = gpt_entry_count_at(disk, off) {
                if count > MAX_GPT_ENTRIES || !GPT_ENTRY_SIZES.contains(&size) {
                    return Err(DiskError::BadTable {
                        kind: "GPT",
                        why: format!(
                            "the header at byte {off} declares {count} entries of {size} bytes \
                             (amivm reads at most {MAX_GPT_ENTRIES} entries of {} to {} bytes)",
                            GPT_ENTRY_SIZES.start(),
                            GPT_ENTRY_SIZES.end()
                        ),
                    });
                }
                found = true;
            }
        }
    }
    Ok(found)
}

/// A table the crate could not read: the read budget's message when that was the cause.
fn bad_table(kind: &'static str, cur: &Cursor<'_>, e: impl std::fmt::Display) -> DiskError {
    let why = if cur.exhausted() {
        DiskError::TABLE_TOO_LARGE.to_string()
    } else {
        e.to_string()
    };
    DiskError::BadTable { kind, why }
}

fn gpt_partitions(disk: &dyn ReadAt) -> Result<Vec<Partition>, DiskError> {
    let mut cur = Cursor::new(disk, TABLE_READ_BUDGET);
    let gpt = gptman::GPT::find_from(&mut cur).map_err(|e| bad_table("GPT", &cur, e))?;
    let ss = gpt.sector_size;
    let mut out = Vec::new();
    for (number, e) in gpt.iter() {
        if !e.is_used() {
            continue;
        }
        let bad = |why: &str| DiskError::BadTable {
            kind: "GPT",
            why: format!("partition {number} {why}"),
        };
        if e.ending_lba < e.starting_lba {
            return Err(bad("ends before it starts"));
        }
        let start = e
            .starting_lba
            .checked_mul(ss)
            .ok_or_else(|| bad("starts beyond any disk"))?;
        let len = (e.ending_lba - e.starting_lba + 1)
            .checked_mul(ss)
            .ok_or_else(|| bad("is larger than any disk"))?;
        out.push(Partition {
            number,
            start,
            len,
            type_guid: Some(guid_text(&e.partition_type_guid)),
            mbr_type: None,
            part_uuid: guid_text(&e.unique_partition_guid),
        });
    }
    Ok(out)
}

/// Whether sector 0 is an MBR: the boot signature, and a valid boot flag in each of the four
/// primary entries (what tells an MBR from, say, a bare FAT boot sector).
fn looks_like_mbr(disk: &dyn ReadAt) -> bool {
    let mut s = [0u8; MBR_SECTOR_SIZE as usize];
    if disk.read_exact_at(&mut s, 0).is_err()
        || s[MBR_BOOT_SIGNATURE_OFFSET..] != MBR_BOOT_SIGNATURE
    {
        return false;
    }
    (0..MBR_PRIMARY_ENTRIES)
        .all(|i| matches!(s[MBR_ENTRIES_OFFSET + MBR_ENTRY_LEN * i], 0x00 | 0x80))
}

fn mbr_partitions(disk: &dyn ReadAt) -> Result<Option<Vec<Partition>>, DiskError> {
    if !looks_like_mbr(disk) {
        return Ok(None);
    }
    let mut cur = Cursor::new(disk, TABLE_READ_BUDGET);
    let mbr =
        mbrman::MBR::read_from(&mut cur, MBR_SECTOR_SIZE).map_err(|e| bad_table("MBR", &cur, e))?;
    let sig = u32::from_le_bytes(mbr.header.disk_signature);
    let ss = u64::from(MBR_SECTOR_SIZE);
    let mut out = Vec::new();
    for (number, e) in mbr.iter() {
        if !e.is_used() || e.is_extended() {
            continue;
        }
        if e.sys == MBR_TYPE_GPT_PROTECTIVE {
            return Err(DiskError::BadTable {
                kind: "GPT",
                why: "the disk has a protective MBR but no readable GPT header".into(),
            });
        }
        out.push(Partition {
            number: number as u32,
            start: u64::from(e.starting_lba) * ss,
            len: u64::from(e.sectors) * ss,
            type_guid: None,
            mbr_type: Some(e.sys),
            part_uuid: format!("{sig:08x}-{number:02x}"),
        });
    }
    // A boot sector with a signature but no partitions (a bare FAT file system, a blank
    // MBR) is no partition table for this purpose.
    Ok((!out.is_empty()).then_some(out))
}

/// Read the disk's partition table and check that every partition lies inside the disk.
pub fn read_table(disk: &dyn ReadAt) -> Result<Table, DiskError> {
    let (kind, partitions) = if has_gpt(disk)? {
        (TableKind::Gpt, gpt_partitions(disk)?)
    } else if let Some(p) = mbr_partitions(disk)? {
        (TableKind::Mbr, p)
    } else {
        return Err(DiskError::NoPartitionTable);
    };
    if partitions.len() > MAX_PARTITIONS {
        return Err(DiskError::BadTable {
            kind: kind.as_str(),
            why: format!(
                "it uses {} partitions; Linux names at most {MAX_PARTITIONS}",
                partitions.len()
            ),
        });
    }
    for p in &partitions {
        let end = p.start.checked_add(p.len);
        if end.is_none_or(|end| end > disk.size()) {
            return Err(DiskError::Truncated {
                number: p.number,
                end: end.unwrap_or(u64::MAX),
                size: disk.size(),
            });
        }
    }
    Ok(Table { kind, partitions })
}
