//! Whether a kernel (and an image around it) can boot, decided from the file alone, before any
//! VM exists. `amivm boot` runs these checks through the loader; `amivm image create` runs
//! [`check_image`] so that an image that could never run is refused when it is made. Pure
//! logic: no KVM, no guest memory.
//!
//! An ELF `vmlinux` is loaded segment by segment at each `PT_LOAD`'s `p_paddr` (the Linux
//! 64-bit boot protocol and PVH both do so). It is refused when it is cut short (the header,
//! the program headers or a segment's bytes lie past the end of the file), has nothing to load,
//! loads below [`HIMEM_START`] (where amivm writes its boot structures, see
//! [`crate::vmm::layout`]) or into the MMIO gap, or enters outside what it loads. A bzImage is
//! checked against its setup header. [`check_fits`] adds the guest's RAM size, and
//! [`super::check_image`] puts the kernel, drive-count and command-line checks together for
//! `image create`.

use super::cmdline::{self, CmdlineError};
use crate::vmm::layout::{CMDLINE_MAX_SIZE, HIMEM_START, MAX_DRIVES, MMIO_GAP_END, MMIO_GAP_START};
use crate::vmm::memory::ram_ranges;
use linux_loader::loader::bootparam::setup_header;
use std::io::{Read, Seek, SeekFrom};

/// ELF magic (ELF spec, e_ident[EI_MAG0..3]).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// e_ident[EI_CLASS] = ELFCLASS64.
const ELFCLASS64: u8 = 2;
/// e_ident[EI_DATA] = ELFDATA2LSB (little-endian).
const ELFDATA2LSB: u8 = 1;
/// e_machine = EM_X86_64 (62).
const EM_X86_64: u16 = 62;
/// Size of an ELF64 file header (`Elf64_Ehdr`).
const ELF64_EHDR_LEN: u64 = 64;
/// Size of an ELF64 program header (`Elf64_Phdr`).
const ELF64_PHDR_LEN: u64 = 56;
/// Offsets of the `Elf64_Ehdr` fields we read (System V ABI, "ELF Header").
const E_MACHINE: usize = 18;
const E_ENTRY: usize = 24;
const E_PHOFF: usize = 32;
const E_PHENTSIZE: usize = 54;
const E_PHNUM: usize = 56;
/// Offsets of the `Elf64_Phdr` fields we read (System V ABI, "Program Header").
const P_OFFSET: usize = 8;
const P_PADDR: usize = 24;
const P_FILESZ: usize = 32;
const P_MEMSZ: usize = 40;
/// p_type of a loadable segment.
const PT_LOAD: u32 = 1;
/// Most program headers read: a vmlinux has about five; the bound keeps a hostile file from
/// making us read megabytes of them.
pub const MAX_PHDRS: u16 = 128;

/// Offset of the setup header in a bzImage (boot.rst: the header starts at 0x1f1).
pub const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the "HdrS" magic in a bzImage.
const HDRS_OFFSET: usize = 0x202;
/// Oldest boot protocol we boot through the 64-bit entry: 2.12 added `xloadflags`.
pub const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
/// xloadflags bit 0, XLF_KERNEL_64: the kernel has the legacy 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// Boot protocol 2.06 introduced `cmdline_size`; older kernels take 255 bytes (boot.rst).
const PROTOCOL_CMDLINE_SIZE: u16 = 0x0206;
/// Command-line limit of kernels older than protocol 2.06.
const OLD_CMDLINE_MAX: usize = 255;
/// Setup sectors when the header says 0 (boot.rst: "if this field is 0, the real value is 4").
const DEFAULT_SETUP_SECTS: u64 = 4;
/// Sector size of the setup code (boot.rst: setup_sects counts 512-byte sectors).
const SETUP_SECTOR: u64 = 512;
/// `syssize` counts 16-byte paragraphs (boot.rst).
const SYSSIZE_UNIT: u64 = 16;
/// How much of the file identifies it: the boot sector and the whole setup header, which ends
/// before offset 0x280 in every protocol version (boot.rst's header table).
pub const HEAD_LEN: usize = 0x400;

/// The kernel's format, found from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// A range of guest-physical memory the kernel occupies once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    /// End (exclusive), `start + p_memsz`.
    pub end: u64,
}

/// What the checks learned about a kernel.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    pub format: KernelFormat,
    /// Longest command line it accepts, in bytes without the terminating NUL.
    pub cmdline_max: usize,
    /// What it occupies in guest memory: the ELF's `PT_LOAD` segments, or the bzImage's
    /// protected-mode code at `code32_start`.
    pub segments: Vec<Segment>,
    /// The 64-bit entry (ELF `e_entry`; for a bzImage the loader adds 0x200 to the load address).
    pub entry: u64,
    /// The bzImage setup header (None for ELF).
    pub setup_header: Option<setup_header>,
}

impl KernelInfo {
    /// Whether `addr` lies inside what the kernel loads.
    pub fn loads(&self, addr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| (s.start..s.end).contains(&addr))
    }
}

/// Why a kernel or an image cannot boot.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot be read: {0}")]
    Read(#[source] std::io::Error),
    #[error("is not a kernel: neither an ELF vmlinux nor a bzImage")]
    UnknownFormat,
    #[error("is an ELF for another machine (e_machine {machine}, class {class}); amivm boots x86_64 kernels")]
    NotX86_64 { machine: u16, class: u8 },
    #[error("is truncated: {what} end at byte {need}, the file has {len}")]
    Truncated { what: String, need: u64, len: u64 },
    #[error("is a malformed ELF: {0}")]
    BadElf(String),
    #[error("has no PT_LOAD segment: there is nothing to load")]
    NoLoadSegment,
    #[error("loads [{start:#x}, {end:#x}), below 1 MiB ({HIMEM_START:#x}), where amivm places the zero page, page tables, GDT, command line, MP and ACPI tables")]
    LowSegment { start: u64, end: u64 },
    #[error("loads [{start:#x}, {end:#x}), into the MMIO gap [{MMIO_GAP_START:#x}, {MMIO_GAP_END:#x}), which is not RAM")]
    SegmentInGap { start: u64, end: u64 },
    #[error("loads [{start:#x}, {end:#x}), beyond the guest's {mem_mib} MiB of RAM")]
    BeyondRam { start: u64, end: u64, mem_mib: u64 },
    #[error("enters at {entry:#x}, outside every segment it loads")]
    EntryOutside { entry: u64 },
    #[error("is a bzImage with boot protocol {major}.{minor:02}; amivm needs 2.12 or newer")]
    OldProtocol { major: u16, minor: u16 },
    #[error("is a bzImage without a 64-bit entry point (XLF_KERNEL_64 not set)")]
    No64BitEntry,
    #[error("is a bzImage that loads at {0:#x}, below 1 MiB")]
    LowBzImage(u64),
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error("{given} volumes (block device mappings); a VM has at most {MAX_DRIVES}")]
    TooManyDrives { given: usize },
    #[error("kernel command line is {len} bytes with the root= and virtio_mmio.device= arguments amivm adds for {drives} drive(s); this kernel accepts at most {max}")]
    CmdlineWithDrives {
        len: usize,
        max: usize,
        drives: usize,
    },
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

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// ELF class and machine from an ELF header.
pub fn elf_class_machine(head: &[u8]) -> (u8, u16) {
    (head.get(4).copied().unwrap_or(0), u16_at(head, E_MACHINE))
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
pub fn check_bzimage_header(hdr: &setup_header) -> Result<(), CheckError> {
    let version = hdr.version;
    if version < MIN_BZIMAGE_PROTOCOL {
        return Err(CheckError::OldProtocol {
            major: version >> 8,
            minor: version & 0xff,
        });
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(CheckError::No64BitEntry);
    }
    Ok(())
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> Result<usize, CheckError> {
    r.seek(SeekFrom::Start(offset)).map_err(CheckError::Read)?;
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CheckError::Read(e)),
        }
    }
    Ok(n)
}

/// Check the kernel in `r`, a file of `len` bytes, and say what it loads where. Reads the
/// headers only (at most [`HEAD_LEN`] bytes and [`MAX_PHDRS`] program headers).
pub fn check_kernel<R: Read + Seek>(r: &mut R, len: u64) -> Result<KernelInfo, CheckError> {
    let mut head = vec![0u8; HEAD_LEN];
    let n = read_at(r, 0, &mut head)?;
    head.truncate(n);
    match detect_format(&head) {
        Some(KernelFormat::Elf) => check_elf(r, &head, len),
        Some(KernelFormat::BzImage) => check_bzimage(&head, len),
        None => Err(CheckError::UnknownFormat),
    }
}

fn truncated(what: impl Into<String>, need: u64, len: u64) -> CheckError {
    CheckError::Truncated {
        what: what.into(),
        need,
        len,
    }
}

fn check_elf<R: Read + Seek>(r: &mut R, head: &[u8], len: u64) -> Result<KernelInfo, CheckError> {
    if (head.len() as u64) < ELF64_EHDR_LEN {
        let (class, machine) = elf_class_machine(head);
        if head.len() > E_MACHINE + 1 && (class != ELFCLASS64 || machine != EM_X86_64) {
            return Err(CheckError::NotX86_64 { machine, class });
        }
        return Err(truncated("its ELF header would", ELF64_EHDR_LEN, len));
    }
    let (class, machine) = elf_class_machine(head);
    if class != ELFCLASS64 || machine != EM_X86_64 {
        return Err(CheckError::NotX86_64 { machine, class });
    }
    if head[5] != ELFDATA2LSB {
        return Err(CheckError::BadElf("big-endian".into()));
    }
    let phentsize = u16_at(head, E_PHENTSIZE);
    if u64::from(phentsize) != ELF64_PHDR_LEN {
        return Err(CheckError::BadElf(format!(
            "program header size {phentsize}, not {ELF64_PHDR_LEN}"
        )));
    }
    let phnum = u16_at(head, E_PHNUM);
    if phnum > MAX_PHDRS {
        return Err(CheckError::BadElf(format!(
            "{phnum} program headers; at most {MAX_PHDRS} are read"
        )));
    }
    let phoff = u64_at(head, E_PHOFF);
    let ph_end = u64::from(phnum)
        .checked_mul(ELF64_PHDR_LEN)
        .and_then(|n| phoff.checked_add(n))
        .ok_or_else(|| CheckError::BadElf("program header offset overflows".into()))?;
    if phnum > 0 && phoff < ELF64_EHDR_LEN {
        return Err(CheckError::BadElf(format!(
            "program headers at offset {phoff}, inside the ELF header"
        )));
    }
    if ph_end > len {
        return Err(truncated("its program headers", ph_end, len));
    }
    let mut phdrs = vec![0u8; (ph_end - phoff) as usize];
    let got = read_at(r, phoff, &mut phdrs)?;
    if got < phdrs.len() {
        return Err(truncated("its program headers", ph_end, phoff + got as u64));
    }
    let mut segments = Vec::new();
    for (i, ph) in phdrs.chunks_exact(ELF64_PHDR_LEN as usize).enumerate() {
        let (offset, start) = (u64_at(ph, P_OFFSET), u64_at(ph, P_PADDR));
        let (filesz, memsz) = (u64_at(ph, P_FILESZ), u64_at(ph, P_MEMSZ));
        if u32_at(ph, 0) != PT_LOAD || memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(CheckError::BadElf(format!(
                "segment {i} has p_filesz {filesz:#x} > p_memsz {memsz:#x}"
            )));
        }
        let file_end = offset
            .checked_add(filesz)
            .ok_or_else(|| CheckError::BadElf(format!("segment {i}'s file range overflows")))?;
        if file_end > len {
            return Err(truncated(format!("its segment {i}'s bytes"), file_end, len));
        }
        let end = start
            .checked_add(memsz)
            .ok_or_else(|| CheckError::BadElf(format!("segment {i}'s address range overflows")))?;
        check_placement(Segment { start, end })?;
        segments.push(Segment { start, end });
    }
    if segments.is_empty() {
        return Err(CheckError::NoLoadSegment);
    }
    let info = KernelInfo {
        format: KernelFormat::Elf,
        cmdline_max: CMDLINE_MAX_SIZE - 1,
        segments,
        entry: u64_at(head, E_ENTRY),
        setup_header: None,
    };
    if !info.loads(info.entry) {
        return Err(CheckError::EntryOutside { entry: info.entry });
    }
    Ok(info)
}

/// A segment must start at or above [`HIMEM_START`] and stay out of the MMIO gap.
fn check_placement(s: Segment) -> Result<(), CheckError> {
    if s.start < HIMEM_START {
        return Err(CheckError::LowSegment {
            start: s.start,
            end: s.end,
        });
    }
    if s.start < MMIO_GAP_END && s.end > MMIO_GAP_START {
        return Err(CheckError::SegmentInGap {
            start: s.start,
            end: s.end,
        });
    }
    Ok(())
}

fn check_bzimage(head: &[u8], len: u64) -> Result<KernelInfo, CheckError> {
    let hdr = parse_setup_header(head);
    check_bzimage_header(&hdr)?;
    let sects = match u64::from(hdr.setup_sects) {
        0 => DEFAULT_SETUP_SECTS,
        n => n,
    };
    let setup_len = (sects + 1) * SETUP_SECTOR;
    let payload = u64::from(hdr.syssize) * SYSSIZE_UNIT;
    let need = setup_len + payload;
    if payload == 0 || len < need {
        return Err(truncated(
            "its setup code and kernel (setup_sects, syssize)",
            need,
            len,
        ));
    }
    let start = u64::from(hdr.code32_start);
    if start < HIMEM_START {
        return Err(CheckError::LowBzImage(start));
    }
    let seg = Segment {
        start,
        end: start + (len - setup_len),
    };
    check_placement(seg)?;
    let version = hdr.version;
    let cmdline_max = if version >= PROTOCOL_CMDLINE_SIZE {
        (hdr.cmdline_size as usize).saturating_sub(1)
    } else {
        OLD_CMDLINE_MAX
    };
    Ok(KernelInfo {
        format: KernelFormat::BzImage,
        cmdline_max,
        segments: vec![seg],
        entry: start,
        setup_header: Some(hdr),
    })
}

/// Check that everything the kernel loads lies in the RAM of a guest with `mem_bytes`.
pub fn check_fits(info: &KernelInfo, mem_bytes: u64) -> Result<(), CheckError> {
    let ram = ram_ranges(mem_bytes);
    for s in &info.segments {
        let inside = ram
            .iter()
            .any(|&(start, size)| s.start >= start && s.end <= start + size);
        if !inside {
            return Err(CheckError::BeyondRam {
                start: s.start,
                end: s.end,
                mem_mib: mem_bytes >> 20,
            });
        }
    }
    Ok(())
}

/// Check the number of drives (block device mappings) against [`MAX_DRIVES`].
pub fn check_drive_count(given: usize) -> Result<(), CheckError> {
    if given > MAX_DRIVES {
        return Err(CheckError::TooManyDrives { given });
    }
    Ok(())
}

/// Check a command line for a VM with `drives` drives against the kernel's limit `max`: as
/// given, then with the `root=` and device arguments the VMM adds when the drives are announced
/// on the command line, the longer way (see [`cmdline::with_drives`]).
pub fn check_cmdline(cmdline: &str, drives: usize, max: usize) -> Result<(), CheckError> {
    cmdline::validate(cmdline, max)?;
    let root = (drives > 0).then_some(false);
    let full = cmdline::with_drives(cmdline, &cmdline::drive_args(drives), root);
    if full.len() > max {
        return Err(CheckError::CmdlineWithDrives {
            len: full.len(),
            max,
            drives,
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
