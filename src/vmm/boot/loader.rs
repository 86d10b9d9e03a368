//! Kernel and initrd loading: ELF vmlinux (with or without a PVH note) and bzImage, through
//! linux-loader, after [`super::check`] has said the kernel can boot in this much RAM.

use super::check::{self, CheckError, KernelFormat};
use crate::files::{self, FileError, Mode};
use crate::vmm::layout::HIMEM_START;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Offset of the 64-bit entry point from the start of the protected-mode kernel (boot.rst,
/// "64-bit Boot Protocol": "at the offset 0x200").
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Page size for initrd alignment.
const PAGE_SIZE: u64 = 4096;

/// Errors loading a kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel or initrd is not a regular file, or cannot be opened.
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot read kernel {path}: {source}")]
    ReadKernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel cannot boot (see [`super::check`]).
    #[error("kernel {path} {source}")]
    Check {
        path: String,
        #[source]
        source: CheckError,
    },
    #[error("kernel {path} does not fit in guest memory or is malformed: {source}")]
    Load {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot it with --boot-protocol linux")]
    NoPvhNote { path: String },
    #[error("initrd {path} is {size} bytes; it does not fit between the kernel end ({kernel_end:#x}) and {limit:#x}")]
    InitrdTooBig {
        path: String,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot copy initrd into guest memory: {0}")]
    InitrdCopy(String),
}

/// What loading the kernel produced.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// The 64-bit boot protocol entry.
    pub entry64: u64,
    /// The PVH entry, when the ELF has the note.
    pub pvh_entry: Option<u64>,
    /// First byte after the kernel image.
    pub kernel_end: u64,
    /// The bzImage setup header (None for ELF).
    pub setup_header: Option<setup_header>,
    /// What the checks found: segments, command-line limit.
    pub info: check::KernelInfo,
}

/// Check the kernel at `path` for a guest with `mem_bytes` of RAM, then load it into `mem`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_bytes: u64,
) -> Result<LoadedKernel, LoaderError> {
    let p = path.display().to_string();
    let rd = |source| LoaderError::ReadKernel {
        path: p.clone(),
        source,
    };
    let chk = |source| LoaderError::Check {
        path: p.clone(),
        source,
    };
    let mut f = files::open(path, "kernel", files::REGULAR, Mode::Read)?;
    let len = f.metadata().map_err(rd)?.len();
    let info = check::check_kernel(&mut f, len).map_err(chk)?;
    check::check_fits(&info, mem_bytes).map_err(chk)?;
    f.seek(SeekFrom::Start(0)).map_err(rd)?;
    let load_err = |source| LoaderError::Load {
        path: p.clone(),
        source,
    };
    match info.format {
        KernelFormat::Elf => {
            let r =
                Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            // Elf::load reports the entry as kernel_load.
            let pvh_entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
                _ => None,
            };
            Ok(LoadedKernel {
                format: KernelFormat::Elf,
                entry64: r.kernel_load.0,
                pvh_entry,
                kernel_end: r.kernel_end,
                setup_header: None,
                info,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            Ok(LoadedKernel {
                format: KernelFormat::BzImage,
                entry64: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                pvh_entry: None,
                kernel_end: r.kernel_end,
                setup_header: r.setup_header,
                info,
            })
        }
    }
}

/// Where an initrd of `size` bytes goes: as high as possible below `limit` (the end of RAM
/// below the MMIO gap, or the kernel's `initrd_addr_max + 1`), page aligned, above `kernel_end`.
pub fn initrd_address(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE).then_some(start)
}

/// Load the initrd into guest memory below `limit`; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), LoaderError> {
    use vm_memory::Bytes;
    let p = path.display().to_string();
    let rd = |source| LoaderError::ReadInitrd {
        path: p.clone(),
        source,
    };
    let mut f: File = files::open(path, "initrd", files::REGULAR, Mode::Read)?;
    let size = f.metadata().map_err(rd)?.len();
    let addr =
        initrd_address(size, kernel_end, limit).ok_or_else(|| LoaderError::InitrdTooBig {
            path: p.clone(),
            size,
            kernel_end,
            limit,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| LoaderError::InitrdCopy(e.to_string()))?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        assert_eq!(
            initrd_address(0x1800, 0x20_0000, 0x800_0000),
            Some(0x7ff_e000)
        );
        assert_eq!(
            initrd_address(0x1000, 0x20_0000, 0x800_0000),
            Some(0x7ff_f000)
        );
        // Too big: it would overlap the kernel.
        assert_eq!(initrd_address(0x7f0_0000, 0x20_0000, 0x800_0000), None);
        assert_eq!(initrd_address(0x900_0000, 0x20_0000, 0x800_0000), None);
    }
}
