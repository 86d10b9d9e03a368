//! Whole-disk analysis for `image create --disk`: the partition table (GPT or MBR), what each
//! partition holds, the root file system (ext2/3/4, read with the pure-Rust `ext4-view`), the
//! kernel and initrd in its `/boot` (or a separate /boot partition), and the OS it names.
//!
//! Everything here reads through [`ReadAt`], so it runs on any disk representation (a raw
//! file, a qcow2 image, a snapshot being staged) and is tested on small disks built by the
//! usual tools, without KVM. Nothing here writes.
//!
//! Which partition is the root:
//! 1. the GPT partition typed "Linux root (x86-64)" ([`GPT_LINUX_ROOT_X86_64`]);
//! 2. else the first ext2/3/4 partition holding a kernel (`/vmlinuz`, `/boot/vmlinuz`,
//!    `/boot/vmlinuz-*`);
//! 3. else the first ext2/3/4 partition with an `/etc` directory (its kernel is then on a
//!    separate /boot partition: an ext2/3/4 partition whose top level holds `vmlinuz-*`,
//!    preferring one typed XBOOTLDR ([`GPT_XBOOTLDR`])).

pub mod boot;
pub mod probe;
pub mod read;
pub mod table;

use super::source::OsRelease;
use ext4_view::{Ext4, Ext4Error};
use probe::FsKind;
pub use read::{FileDisk, ReadAt, Window};
use std::io::Write;
use std::rc::Rc;
pub use table::{Partition, TableKind};
use thiserror::Error;

/// GPT type "Linux root (x86-64)" (UAPI Group, Discoverable Partitions Specification).
pub const GPT_LINUX_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// GPT type "Linux extended boot" (XBOOTLDR, mounted at /boot) (same specification).
pub const GPT_XBOOTLDR: &str = "bc13c2ff-59e6-4262-a352-b275fd6f7172";
/// Offset of the superblock in an ext2/3/4 file system (kernel.org ext4 documentation).
const EXT_SUPERBLOCK: u64 = 1024;
/// Bytes of the ext2/3/4 superblock.
const EXT_SUPERBLOCK_LEN: usize = 1024;
/// Superblock fields (offsets in the superblock): `s_blocks_count_lo` (u32)...
const EXT_BLOCKS_COUNT_LO: usize = 0x4;
/// ...`s_log_block_size` (u32: block size is 1024 << it)...
const EXT_LOG_BLOCK_SIZE: usize = 0x18;
/// ...`s_blocks_per_group` (u32)...
const EXT_BLOCKS_PER_GROUP: usize = 0x20;
/// ...`s_feature_incompat` (u32)...
const EXT_FEATURE_INCOMPAT: usize = 0x60;
/// ...and `s_blocks_count_hi` (u32), used with the 64bit feature.
const EXT_BLOCKS_COUNT_HI: usize = 0x150;
/// `EXT4_FEATURE_INCOMPAT_64BIT`.
const EXT_INCOMPAT_64BIT: u32 = 0x80;
/// The smallest ext block size: the block size is this shifted by `s_log_block_size`.
const EXT_MIN_BLOCK_SIZE: u64 = 1024;
/// ext4 block sizes are 1 KiB to 64 KiB: `s_log_block_size` is at most 6.
const EXT_MAX_LOG_BLOCK_SIZE: u32 = 6;
/// The most block groups amivm lets the ext4 reader load descriptors for (it allocates them
/// all up front): 2^20 groups of the usual 128 MiB is 128 TiB.
const MAX_BLOCK_GROUPS: u64 = 1 << 20;
/// Read buffer for copying a kernel or initrd out of the file system.
const COPY_BUF: usize = 1 << 20;

/// Why a disk cannot be made into an image. Each is one line.
#[derive(Debug, Error)]
pub enum DiskError {
    #[error("no partition table: neither a GPT nor an MBR (for a bare file system use --root with --kernel)")]
    NoPartitionTable,
    #[error("damaged {kind} partition table: {why}")]
    BadTable { kind: &'static str, why: String },
    #[error("partition {number} ends at byte {end}, beyond the end of the disk ({size} bytes): the disk is truncated")]
    Truncated { number: u32, end: u64, size: u64 },
    #[error("partition {number} is encrypted (LUKS): amivm cannot read a root file system or /boot inside it")]
    Encrypted { number: u32 },
    #[error("root partition {number} holds {what}: amivm reads only ext2/3/4 root file systems")]
    UnsupportedFs { number: u32, what: &'static str },
    #[error("no ext2/3/4 root file system found ({found})")]
    NoRoot { found: String },
    #[error("no kernel found on partition {number}: no /vmlinuz, /boot/vmlinuz or /boot/vmlinuz-*, and no separate /boot partition holding vmlinuz-* (give --kernel)")]
    NoKernel { number: u32 },
    #[error("ext2/3/4 file system on partition {number}: {why}")]
    Ext4 { number: u32, why: String },
    #[error("reading the disk: {0}")]
    Io(String),
}

impl DiskError {
    /// The message of a read stopped by [`table::TABLE_READ_BUDGET`].
    pub const TABLE_TOO_LARGE: &'static str =
        "the partition table is larger than amivm reads (a chain of too many extended partitions?)";

    fn ext4(number: u32, e: Ext4Error) -> DiskError {
        DiskError::Ext4 {
            number,
            why: e.to_string(),
        }
    }
}

/// A file found in a partition's file system, ready to be copied out.
pub struct BootFile {
    fs: Ext4,
    /// The partition holding it.
    pub partition: u32,
    /// Its absolute path in that file system, symlinks resolved.
    pub path: String,
}

impl std::fmt::Debug for BootFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl BootFile {
    /// "partition 1:/boot/vmlinuz-6.1.0-13-amd64", for messages.
    pub fn describe(&self) -> String {
        format!("partition {}:{}", self.partition, self.path)
    }

    /// Copy the file's bytes to `out`; returns how many.
    pub fn copy_to(&self, out: &mut dyn Write) -> Result<u64, DiskError> {
        let mut f = self
            .fs
            .open(self.path.as_str())
            .map_err(|e| DiskError::ext4(self.partition, e))?;
        let mut buf = vec![0u8; COPY_BUF];
        let mut total = 0u64;
        loop {
            let n = f
                .read_bytes(&mut buf)
                .map_err(|e| DiskError::ext4(self.partition, e))?;
            if n == 0 {
                return Ok(total);
            }
            out.write_all(&buf[..n])
                .map_err(|e| DiskError::Io(format!("copying {}: {e}", self.describe())))?;
            total += n as u64;
        }
    }
}

/// What a disk holds, as far as booting it goes.
#[derive(Debug)]
pub struct DiskAnalysis {
    pub table: TableKind,
    /// The root file system's partition.
    pub root: Partition,
    /// The root file system's UUID (ext4 superblock `s_uuid`), as `blkid` prints it.
    pub root_fs_uuid: String,
    /// The kernel, when asked for.
    pub kernel: Option<BootFile>,
    /// Its initrd, if one was found next to it.
    pub initrd: Option<BootFile>,
    /// The OS named by the root file system's os-release.
    pub os: Option<OsRelease>,
    /// How the image's kernel should discover its devices: images from disks boot stock
    /// distribution kernels, which find virtio-mmio devices in the ACPI tables (their
    /// kernels lack `virtio_mmio.device=` command-line devices), so this is always true. The
    /// store sets the image's device-discovery attribute from it once the manifest has one.
    pub acpi_device_discovery: bool,
}

impl DiskAnalysis {
    /// The `root=` argument: the file system UUID, which an initrd resolves; without an
    /// initrd the kernel itself mounts root, and it knows partition UUIDs only.
    pub fn root_arg(&self, with_initrd: bool) -> String {
        if with_initrd {
            format!("root=UUID={}", self.root_fs_uuid)
        } else {
            format!("root=PARTUUID={}", self.root.part_uuid)
        }
    }
}

/// A partition and what the probe found in it.
struct Probed {
    part: Partition,
    kind: FsKind,
    /// The loaded file system for ext2/3/4 partitions, or why it could not be loaded.
    fs: Option<Result<Ext4, DiskError>>,
}

/// Check the ext superblock's geometry against the partition before the reader allocates
/// for it: the file system must fit the partition, and its block-group count be sane.
fn check_ext_geometry(part: &dyn ReadAt, number: u32) -> Result<(), DiskError> {
    let mut sb = [0u8; EXT_SUPERBLOCK_LEN];
    part.read_exact_at(&mut sb, EXT_SUPERBLOCK)
        .map_err(|e| DiskError::Io(format!("partition {number}: {e}")))?;
    let word = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    let bad = |why: String| DiskError::Ext4 { number, why };
    let log = word(EXT_LOG_BLOCK_SIZE);
    if log > EXT_MAX_LOG_BLOCK_SIZE {
        return Err(bad(format!("invalid block size (log {log})")));
    }
    let block = EXT_MIN_BLOCK_SIZE << log;
    let hi = if word(EXT_FEATURE_INCOMPAT) & EXT_INCOMPAT_64BIT != 0 {
        u64::from(word(EXT_BLOCKS_COUNT_HI))
    } else {
        0
    };
    let blocks = (hi << 32) | u64::from(word(EXT_BLOCKS_COUNT_LO));
    let bytes = blocks.saturating_mul(block);
    if bytes > part.size() {
        return Err(bad(format!(
            "it is {bytes} bytes, larger than its partition ({} bytes): the disk is truncated or the partition table wrong",
            part.size()
        )));
    }
    let per_group = u64::from(word(EXT_BLOCKS_PER_GROUP));
    if per_group == 0 || blocks.div_ceil(per_group) > MAX_BLOCK_GROUPS {
        return Err(bad(format!(
            "{blocks} blocks in groups of {per_group}: too many block groups"
        )));
    }
    Ok(())
}

fn load_ext(disk: &Rc<dyn ReadAt>, p: &Partition) -> Result<Ext4, DiskError> {
    let w = Window::new(disk.clone(), p.start, p.len);
    check_ext_geometry(&w, p.number)?;
    Ext4::load(Box::new(w)).map_err(|e| DiskError::ext4(p.number, e))
}

fn probe_all(disk: &Rc<dyn ReadAt>, parts: &[Partition]) -> Vec<Probed> {
    parts
        .iter()
        .map(|p| {
            let kind = probe::probe(&Window::new(disk.clone(), p.start, p.len));
            let fs = (kind == FsKind::Ext).then(|| load_ext(disk, p));
            Probed {
                part: p.clone(),
                kind,
                fs,
            }
        })
        .collect()
}

/// The loaded file systems, in partition order, with their index in `parts`.
fn ext_filesystems(parts: &[Probed]) -> impl Iterator<Item = (usize, &Probed, &Ext4)> {
    parts.iter().enumerate().filter_map(|(i, p)| match &p.fs {
        Some(Ok(fs)) => Some((i, p, fs)),
        _ => None,
    })
}

/// Pick the root partition (see the module docs); its index in `parts`.
fn pick_root(parts: &[Probed]) -> Result<usize, DiskError> {
    let typed = parts
        .iter()
        .position(|p| p.part.type_guid.as_deref() == Some(GPT_LINUX_ROOT_X86_64));
    if let Some(i) = typed {
        return Ok(i);
    }
    for (i, p, fs) in ext_filesystems(parts) {
        let kernel = boot::find_kernel(fs, &boot::ROOT_LINKS, boot::ROOT_KERNEL_DIR)
            .map_err(|e| DiskError::ext4(p.part.number, e))?;
        if kernel.is_some() {
            return Ok(i);
        }
    }
    for (i, p, fs) in ext_filesystems(parts) {
        if boot::looks_like_root(fs).map_err(|e| DiskError::ext4(p.part.number, e))? {
            return Ok(i);
        }
    }
    // No readable root: say why, most telling first. A damaged ext2/3/4 partition is
    // returned as the root so that its error is the one reported.
    if let Some(i) = parts.iter().position(|p| matches!(p.fs, Some(Err(_)))) {
        return Ok(i);
    }
    if let Some(p) = parts.iter().find(|p| p.kind == FsKind::Luks) {
        return Err(DiskError::Encrypted {
            number: p.part.number,
        });
    }
    let found = if parts.is_empty() {
        "the partition table is empty".to_string()
    } else {
        parts
            .iter()
            .map(|p| format!("partition {}: {}", p.part.number, p.kind.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(DiskError::NoRoot { found })
}

/// The root's loaded file system, or why there is none.
fn root_fs(p: &Probed) -> Result<Ext4, DiskError> {
    match (&p.fs, p.kind) {
        (Some(Ok(fs)), _) => Ok(fs.clone()),
        (Some(Err(e)), _) => Err(DiskError::Ext4 {
            number: p.part.number,
            why: match e {
                DiskError::Ext4 { why, .. } => why.clone(),
                other => other.to_string(),
            },
        }),
        (None, FsKind::Luks) => Err(DiskError::Encrypted {
            number: p.part.number,
        }),
        (None, kind) => Err(DiskError::UnsupportedFs {
            number: p.part.number,
            what: kind.describe(),
        }),
    }
}

/// Look for the kernel on the root file system, then on a separate /boot partition.
fn find_boot_files(
    parts: &[Probed],
    root: usize,
    root_fs: &Ext4,
) -> Result<(BootFile, Option<BootFile>), DiskError> {
    let number = parts[root].part.number;
    let file = |fs: &Ext4, partition: u32, path: String| BootFile {
        fs: fs.clone(),
        partition,
        path,
    };
    if let Some(f) = boot::find_kernel(root_fs, &boot::ROOT_LINKS, boot::ROOT_KERNEL_DIR)
        .map_err(|e| DiskError::ext4(number, e))?
    {
        let initrd = f.initrd.map(|i| file(root_fs, number, i));
        return Ok((file(root_fs, number, f.kernel), initrd));
    }
    // A separate /boot: XBOOTLDR-typed partitions first, then any other ext2/3/4 one.
    let mut others: Vec<(&Probed, &Ext4)> = ext_filesystems(parts)
        .filter(|(i, _, _)| *i != root)
        .map(|(_, p, fs)| (p, fs))
        .collect();
    others.sort_by_key(|(p, _)| p.part.type_guid.as_deref() != Some(GPT_XBOOTLDR));
    for (p, fs) in others {
        let n = p.part.number;
        let found = boot::find_kernel(
            fs,
            &boot::BOOT_PARTITION_LINKS,
            boot::BOOT_PARTITION_KERNEL_DIR,
        )
        .map_err(|e| DiskError::ext4(n, e))?;
        if let Some(f) = found {
            let initrd = f.initrd.map(|i| file(fs, n, i));
            return Ok((file(fs, n, f.kernel), initrd));
        }
    }
    Err(DiskError::NoKernel { number })
}

/// Analyse a whole disk. With `want_kernel`, a disk without a kernel is an error; without it
/// (the caller brings its own kernel) no kernel is looked for.
pub fn analyse(disk: Rc<dyn ReadAt>, want_kernel: bool) -> Result<DiskAnalysis, DiskError> {
    let table = table::read_table(&*disk)?;
    let parts = probe_all(&disk, &table.partitions);
    let root = pick_root(&parts)?;
    let fs = root_fs(&parts[root])?;
    let (kernel, initrd) = if want_kernel {
        let (k, i) = find_boot_files(&parts, root, &fs)?;
        (Some(k), i)
    } else {
        (None, None)
    };
    Ok(DiskAnalysis {
        table: table.kind,
        root: parts[root].part.clone(),
        root_fs_uuid: fs.uuid().to_string(),
        kernel,
        initrd,
        os: boot::os_release(&fs),
        acpi_device_discovery: true,
    })
}

#[cfg(test)]
mod tests;
