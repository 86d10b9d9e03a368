//! Kernel and initrd loading: ELF vmlinux (with or without a PVH note) and bzImage, through
//! linux-loader, plus the checks that turn a wrong file into a clear error.

use crate::vmm::layout::HIMEM_START;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// ELF magic (ELF spec, e_ident[EI_MAG0..3]).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// e_ident[EI_CLASS] = ELFCLASS64.
const ELFCLASS64: u8 = 2;
/// e_machine = EM_X86_64 (62).
const EM_X86_64: u16 = 62;
/// Offset of the setup header in a bzImage (boot.rst: the header starts at 0x1f1).
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the "HdrS" magic in a bzImage.
const HDRS_OFFSET: usize = 0x202;
/// Oldest boot protocol we boot through the 64-bit entry: 2.12 added `xloadflags`.
pub const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
/// xloadflags bit 0, XLF_KERNEL_64: the kernel has the legacy 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry point from the start of the protected-mode kernel (boot.rst,
/// "64-bit Boot Protocol": "at the offset 0x200").
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// How much of the file we read to identify it: the boot sector and the whole setup header,
/// which ends before offset 0x280 in every protocol version (boot.rst's header table).
const HEAD_LEN: usize = 0x400;
/// Page size for initrd alignment.
const PAGE_SIZE: u64 = 4096;

/// Errors loading a kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
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
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat(String),
    #[error("kernel {path} is an ELF for another machine (e_machine {machine}, class {class}); amivm boots x86_64 kernels")]
    NotX86_64 {
        path: String,
        machine: u16,
        class: u8,
    },
    #[error("bzImage {path} uses boot protocol {major}.{minor:02}; amivm needs 2.12 or newer")]
    OldProtocol {
        path: String,
        major: u16,
        minor: u16,
    },
    #[error("bzImage {0} has no 64-bit entry point (XLF_KERNEL_64 not set)")]
    No64BitEntry(String),
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

/// The kernel's format, found from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// What loading the kernel produced.
#[derive(Debug, Clone, Copy)]
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
}

/// Identify a kernel from its first bytes (at least [`HEAD_LEN`] when the file has them).
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && &head[0..4] == ELF_MAGIC {
        return Some(KernelFormat::Elf);
    }
    if head.len() >= HDRS_OFFSET + 4 && &head[HDRS_OFFSET..HDRS_OFFSET + 4] == b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// ELF class and machine from an ELF header.
pub fn elf_class_machine(head: &[u8]) -> (u8, u16) {
    let class = head.get(4).copied().unwrap_or(0);
    let machine = head
        .get(18..20)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    (class, machine)
}

/// The setup header of a bzImage from its first bytes (fields the file lacks stay zero).
pub fn parse_setup_header(head: &[u8]) -> setup_header {
    let mut hdr = setup_header::default();
    let hb = vm_memory::ByteValued::as_mut_slice(&mut hdr);
    let start = SETUP_HEADER_OFFSET as usize;
    let avail = head.len().saturating_sub(start).min(hb.len());
    hb[..avail].copy_from_slice(&head[start..start + avail]);
    hdr
}

/// Check a bzImage's setup header for what our 64-bit entry needs.
pub fn check_bzimage_header(path: &str, hdr: &setup_header) -> Result<(), LoaderError> {
    let version = hdr.version;
    if version < MIN_BZIMAGE_PROTOCOL {
        return Err(LoaderError::OldProtocol {
            path: path.into(),
            major: version >> 8,
            minor: version & 0xff,
        });
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::No64BitEntry(path.into()));
    }
    Ok(())
}

/// Load the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let p = path.display().to_string();
    let rd = |source| LoaderError::ReadKernel {
        path: p.clone(),
        source,
    };
    let mut f = File::open(path).map_err(rd)?;
    let mut head = vec![0u8; HEAD_LEN];
    let n = read_up_to(&mut f, &mut head).map_err(rd)?;
    head.truncate(n);
    match detect_format(&head) {
        Some(KernelFormat::Elf) => {
            let (class, machine) = elf_class_machine(&head);
            if class != ELFCLASS64 || machine != EM_X86_64 {
                return Err(LoaderError::NotX86_64 {
                    path: p,
                    machine,
                    class,
                });
            }
            f.seek(SeekFrom::Start(0)).map_err(rd)?;
            let r = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(
                |source| LoaderError::Load {
                    path: p.clone(),
                    source,
                },
            )?;
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
            })
        }
        Some(KernelFormat::BzImage) => {
            let hdr = parse_setup_header(&head);
            check_bzimage_header(&p, &hdr)?;
            f.seek(SeekFrom::Start(0)).map_err(rd)?;
            let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(
                |source| LoaderError::Load {
                    path: p.clone(),
                    source,
                },
            )?;
            Ok(LoadedKernel {
                format: KernelFormat::BzImage,
                entry64: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                pvh_entry: None,
                kernel_end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
        None => Err(LoaderError::UnknownFormat(p)),
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
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
    let mut f = File::open(path).map_err(rd)?;
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
    fn detects_formats() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        assert_eq!(detect_format(&elf), Some(KernelFormat::Elf));
        assert_eq!(elf_class_machine(&elf), (2, 62));
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(&[]), None);
    }

    #[test]
    fn setup_header_fields_at_boot_protocol_offsets() {
        // Offsets from Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header".
        let mut f = vec![0u8; HEAD_LEN];
        let put = |f: &mut Vec<u8>, off: usize, b: &[u8]| f[off..off + b.len()].copy_from_slice(b);
        put(&mut f, 0x1f1, &[27]); // setup_sects
        put(&mut f, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
        put(&mut f, 0x202, b"HdrS"); // header
        put(&mut f, 0x206, &0x020fu16.to_le_bytes()); // version
        put(&mut f, 0x211, &[0x01]); // loadflags: LOADED_HIGH
        put(&mut f, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
        put(&mut f, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        put(&mut f, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
        put(&mut f, 0x236, &0x007fu16.to_le_bytes()); // xloadflags
        put(&mut f, 0x238, &2047u32.to_le_bytes()); // cmdline_size
        put(&mut f, 0x258, &0x100_0000u64.to_le_bytes()); // pref_address
        put(&mut f, 0x260, &0x2a_0000u32.to_le_bytes()); // init_size
        let h = parse_setup_header(&f);
        assert_eq!(detect_format(&f), Some(KernelFormat::BzImage));
        assert_eq!(h.setup_sects, 27);
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.version }, 0x020f);
        assert_eq!(h.loadflags, 1);
        assert_eq!({ h.code32_start }, 0x10_0000);
        assert_eq!({ h.initrd_addr_max }, 0x7fff_ffff);
        assert_eq!({ h.kernel_alignment }, 0x20_0000);
        assert_eq!({ h.xloadflags } & XLF_KERNEL_64, XLF_KERNEL_64);
        assert_eq!({ h.cmdline_size }, 2047);
        assert_eq!({ h.pref_address }, 0x100_0000);
        assert_eq!({ h.init_size }, 0x2a_0000);
        assert!(check_bzimage_header("k", &h).is_ok());
        // A file cut short after the magic: the later fields read as zero and the check refuses it.
        let short = parse_setup_header(&f[..0x210]);
        assert_eq!({ short.xloadflags }, 0);
        assert!(check_bzimage_header("k", &short).is_err());
    }

    #[test]
    fn bzimage_header_checks_follow_the_boot_protocol() {
        let ok = setup_header {
            version: 0x020f,
            xloadflags: XLF_KERNEL_64,
            ..Default::default()
        };
        assert!(check_bzimage_header("k", &ok).is_ok());
        let old = setup_header {
            version: 0x020b,
            xloadflags: XLF_KERNEL_64,
            ..Default::default()
        };
        assert!(matches!(
            check_bzimage_header("k", &old),
            Err(LoaderError::OldProtocol {
                major: 2,
                minor: 11,
                ..
            })
        ));
        let no64 = setup_header {
            version: 0x020f,
            xloadflags: 0,
            ..Default::default()
        };
        assert!(matches!(
            check_bzimage_header("k", &no64),
            Err(LoaderError::No64BitEntry(_))
        ));
    }

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
