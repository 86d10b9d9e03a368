//! What a partition holds, told by the signatures file systems write at fixed offsets.

use super::read::ReadAt;

/// Offset of the ext2/3/4 superblock's `s_magic` field: superblock at byte 1024, field at
/// 0x38 in it (kernel.org ext4 documentation, "Super Block").
const EXT_MAGIC_OFFSET: u64 = 1024 + 0x38;
/// `EXT4_SUPER_MAGIC`, little-endian on disk (include/uapi/linux/magic.h).
const EXT_MAGIC: [u8; 2] = 0xEF53u16.to_le_bytes();
/// LUKS1 and LUKS2 headers start with "LUKS\xba\xbe" (LUKS1 On-Disk Format Specification
/// §2.4; LUKS2 On-Disk Format Specification §2.1).
pub const LUKS_MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Linux swap: "SWAPSPACE2" in the last 10 bytes of the first 4 KiB page
/// (include/linux/swap.h, `union swap_header`).
const SWAP_MAGIC_OFFSET: u64 = 4096 - 10;
const SWAP_MAGIC: &[u8] = b"SWAPSPACE2";
/// XFS superblock magic "XFSB" at byte 0 (XFS Algorithms & Data Structures, "Superblocks").
const XFS_MAGIC: &[u8] = b"XFSB";
/// Btrfs superblock at 64 KiB, its magic "_BHRfS_M" at 0x40 in it (btrfs docs, "On-disk
/// format", superblock).
const BTRFS_MAGIC_OFFSET: u64 = 0x10000 + 0x40;
const BTRFS_MAGIC: &[u8] = b"_BHRfS_M";
/// FAT32 boot sector: file-system type string "FAT32   " at 82 (Microsoft FAT specification,
/// BS_FilSysType); FAT12/16 put "FAT1" at 54.
const FAT32_TYPE_OFFSET: u64 = 82;
const FAT16_TYPE_OFFSET: u64 = 54;
/// squashfs superblock magic "hsqs" at byte 0 (fs/squashfs/squashfs_fs.h, little-endian).
const SQUASHFS_MAGIC: &[u8] = b"hsqs";

/// What a partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ext2, ext3 or ext4 (one reader handles all three).
    Ext,
    /// A LUKS encrypted volume.
    Luks,
    /// A file system or volume amivm recognises but cannot read; the name is for messages.
    Other(&'static str),
    /// Nothing recognised.
    Unknown,
}

impl FsKind {
    /// For messages: "ext4", "LUKS (encrypted)", "xfs", "an unknown file system".
    pub fn describe(&self) -> &'static str {
        match self {
            FsKind::Ext => "ext2/3/4",
            FsKind::Luks => "LUKS (encrypted)",
            FsKind::Other(name) => name,
            FsKind::Unknown => "an unknown file system",
        }
    }
}

/// Whether `part` holds `magic` at `offset` (false when it is too small or unreadable).
fn has(part: &dyn ReadAt, offset: u64, magic: &[u8]) -> bool {
    let mut buf = vec![0u8; magic.len()];
    part.read_exact_at(&mut buf, offset).is_ok() && buf == magic
}

/// Tell what a partition holds from its signatures.
pub fn probe(part: &dyn ReadAt) -> FsKind {
    if has(part, 0, &LUKS_MAGIC) {
        FsKind::Luks
    } else if has(part, EXT_MAGIC_OFFSET, &EXT_MAGIC) {
        FsKind::Ext
    } else if has(part, 0, XFS_MAGIC) {
        FsKind::Other("xfs")
    } else if has(part, BTRFS_MAGIC_OFFSET, BTRFS_MAGIC) {
        FsKind::Other("btrfs")
    } else if has(part, 0, SQUASHFS_MAGIC) {
        FsKind::Other("squashfs")
    } else if has(part, SWAP_MAGIC_OFFSET, SWAP_MAGIC) {
        FsKind::Other("swap")
    } else if has(part, FAT32_TYPE_OFFSET, b"FAT32   ") || has(part, FAT16_TYPE_OFFSET, b"FAT1") {
        FsKind::Other("vfat")
    } else {
        FsKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: u64, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 128 * 1024];
        v[offset as usize..offset as usize + magic.len()].copy_from_slice(magic);
        v
    }

    #[test]
    fn signatures() {
        assert_eq!(probe(&with(0, &LUKS_MAGIC)), FsKind::Luks);
        assert_eq!(probe(&with(EXT_MAGIC_OFFSET, &EXT_MAGIC)), FsKind::Ext);
        assert_eq!(probe(&with(0, XFS_MAGIC)), FsKind::Other("xfs"));
        assert_eq!(
            probe(&with(BTRFS_MAGIC_OFFSET, BTRFS_MAGIC)),
            FsKind::Other("btrfs")
        );
        assert_eq!(
            probe(&with(SWAP_MAGIC_OFFSET, SWAP_MAGIC)),
            FsKind::Other("swap")
        );
        assert_eq!(probe(&with(82, b"FAT32   ")), FsKind::Other("vfat"));
        assert_eq!(probe(&vec![0u8; 128 * 1024]), FsKind::Unknown);
        // Too small to hold any superblock: unknown, not an error.
        assert_eq!(probe(&vec![0u8; 10]), FsKind::Unknown);
    }
}
