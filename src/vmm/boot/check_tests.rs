use super::*;
use std::io::Cursor;

/// One program header: (p_type, p_offset, p_paddr, p_filesz, p_memsz).
type Ph = (u32, u64, u64, u64, u64);

/// A little-endian x86-64 ELF with `phdrs` at offset 64, entry `entry`, padded to `len` bytes.
fn elf(entry: u64, phdrs: &[Ph], len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(64 + 56 * phdrs.len())];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = ELFCLASS64;
    b[5] = ELFDATA2LSB;
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[E_MACHINE..E_MACHINE + 2].copy_from_slice(&EM_X86_64.to_le_bytes());
    b[E_ENTRY..E_ENTRY + 8].copy_from_slice(&entry.to_le_bytes());
    b[E_PHOFF..E_PHOFF + 8].copy_from_slice(&64u64.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&56u16.to_le_bytes());
    b[E_PHNUM..E_PHNUM + 2].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    for (i, &(ty, off, paddr, filesz, memsz)) in phdrs.iter().enumerate() {
        let p = 64 + 56 * i;
        b[p..p + 4].copy_from_slice(&ty.to_le_bytes());
        b[p + P_OFFSET..p + P_OFFSET + 8].copy_from_slice(&off.to_le_bytes());
        b[p + P_PADDR..p + P_PADDR + 8].copy_from_slice(&paddr.to_le_bytes());
        b[p + P_FILESZ..p + P_FILESZ + 8].copy_from_slice(&filesz.to_le_bytes());
        b[p + P_MEMSZ..p + P_MEMSZ + 8].copy_from_slice(&memsz.to_le_bytes());
    }
    b
}

fn check(bytes: &[u8]) -> Result<KernelInfo, CheckError> {
    check_kernel(&mut Cursor::new(bytes), bytes.len() as u64)
}

/// A good two-segment kernel at 1 MiB, like the test guest and a vmlinux.
fn good() -> Vec<u8> {
    elf(
        0x10_0000,
        &[
            (PT_LOAD, 0x1000, 0x10_0000, 0x1000, 0x1000),
            (4, 0x1000, 0x10_0100, 0x20, 0x20), // PT_NOTE: not loaded
            (PT_LOAD, 0x2000, 0x10_1000, 0x800, 0x4000),
        ],
        0x2800,
    )
}

#[test]
fn a_good_elf_reports_its_segments() {
    let info = check(&good()).unwrap();
    assert_eq!(info.format, KernelFormat::Elf);
    assert_eq!(info.cmdline_max, 2047);
    assert_eq!(
        info.segments,
        vec![
            Segment {
                start: 0x10_0000,
                end: 0x10_1000
            },
            Segment {
                start: 0x10_1000,
                end: 0x10_5000
            }
        ]
    );
    assert!(info.loads(0x10_4fff) && !info.loads(0x10_5000));
    check_fits(&info, 16 << 20).unwrap();
}

#[test]
fn truncated_elves_are_refused() {
    let g = good();
    for cut in [10, 63, 64, 100, 0x2000, 0x27ff] {
        let e = check(&g[..cut]).unwrap_err();
        assert!(matches!(e, CheckError::Truncated { .. }), "{cut}: {e}");
        assert!(e.to_string().starts_with("is truncated"), "{e}");
    }
    assert!(check(&g[..0x2800]).is_ok());
}

#[test]
fn nothing_to_load_or_entry_outside_is_refused() {
    let none = elf(0x10_0000, &[(4, 0x1000, 0x10_0000, 0x10, 0x10)], 0x1100);
    assert!(matches!(check(&none), Err(CheckError::NoLoadSegment)));
    let empty = elf(0x10_0000, &[(PT_LOAD, 0x1000, 0x10_0000, 0, 0)], 0x1100);
    assert!(matches!(check(&empty), Err(CheckError::NoLoadSegment)));
    let no_phdrs = elf(0x10_0000, &[], 0x100);
    assert!(matches!(check(&no_phdrs), Err(CheckError::NoLoadSegment)));
    let outside = elf(
        0x20_0000,
        &[(PT_LOAD, 0x1000, 0x10_0000, 0x10, 0x10)],
        0x1100,
    );
    assert!(matches!(
        check(&outside),
        Err(CheckError::EntryOutside { entry: 0x20_0000 })
    ));
}

/// Every structure amivm writes below 1 MiB: a segment over any of them is refused.
#[test]
fn segments_over_amivms_boot_structures_are_refused() {
    use crate::vmm::layout::*;
    for addr in [
        0,
        BOOT_GDT_START,
        PVH_INFO_START,
        ZERO_PAGE_START,
        PML4_START,
        PDE_START,
        CMDLINE_START,
        MPTABLE_START,
        ACPI_START,
        HIMEM_START - 1,
    ] {
        let k = elf(
            HIMEM_START,
            &[(PT_LOAD, 0x1000, addr, 0x10, HIMEM_START - addr + 0x10)],
            0x1100,
        );
        assert!(
            matches!(check(&k), Err(CheckError::LowSegment { .. })),
            "{addr:#x}"
        );
    }
}

#[test]
fn segments_in_the_gap_or_beyond_ram_are_refused() {
    let gap = elf(
        0x10_0000,
        &[
            (PT_LOAD, 0x1000, 0x10_0000, 0x10, 0x10),
            (PT_LOAD, 0x1000, MMIO_GAP_START - 0x1000, 0x10, 0x2000),
        ],
        0x1100,
    );
    assert!(matches!(check(&gap), Err(CheckError::SegmentInGap { .. })));
    let wraps = elf(
        0x10_0000,
        &[(PT_LOAD, 0x1000, 0x10_0000, 0x10, u64::MAX)],
        0x1100,
    );
    assert!(matches!(check(&wraps), Err(CheckError::BadElf(_))));
    // p_memsz of 1 GiB: accepted by itself, but not in 128 MiB of RAM.
    let big = elf(
        0x10_0000,
        &[(PT_LOAD, 0x1000, 0x10_0000, 0x10, 1 << 30)],
        0x1100,
    );
    let info = check(&big).unwrap();
    let e = check_fits(&info, 128 << 20).unwrap_err();
    assert_eq!(
        e.to_string(),
        "loads [0x100000, 0x40100000), beyond the guest's 128 MiB of RAM"
    );
    check_fits(&info, 2 << 30).unwrap();
    // Above 4 GiB is RAM only when the guest has more than 3 GiB.
    let high = elf(
        MMIO_GAP_END,
        &[(PT_LOAD, 0x1000, MMIO_GAP_END, 0x10, 0x1000)],
        0x1100,
    );
    let info = check(&high).unwrap();
    assert!(check_fits(&info, 3 << 30).is_err());
    check_fits(&info, 4 << 30).unwrap();
}

#[test]
fn malformed_headers_are_refused() {
    let mut g = good();
    g[5] = 2; // big-endian
    assert!(matches!(check(&g), Err(CheckError::BadElf(_))));
    let mut g = good();
    g[E_PHENTSIZE] = 32;
    assert!(matches!(check(&g), Err(CheckError::BadElf(_))));
    let mut g = good();
    g[E_PHNUM..E_PHNUM + 2].copy_from_slice(&(MAX_PHDRS + 1).to_le_bytes());
    assert!(matches!(check(&g), Err(CheckError::BadElf(_))));
    let mut g = good();
    g[E_PHOFF..E_PHOFF + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(check(&g), Err(CheckError::BadElf(_))));
    let filesz_gt_memsz = elf(
        0x10_0000,
        &[(PT_LOAD, 0x1000, 0x10_0000, 0x20, 0x10)],
        0x1100,
    );
    assert!(matches!(
        check(&filesz_gt_memsz),
        Err(CheckError::BadElf(_))
    ));
    let mut i386 = good();
    i386[4] = 1;
    i386[E_MACHINE] = 3;
    assert!(matches!(
        check(&i386),
        Err(CheckError::NotX86_64 {
            machine: 3,
            class: 1
        })
    ));
    assert!(matches!(
        check(b"#!/bin/sh\n"),
        Err(CheckError::UnknownFormat)
    ));
    assert!(matches!(check(&[]), Err(CheckError::UnknownFormat)));
}

#[test]
fn detects_formats() {
    let g = good();
    assert_eq!(detect_format(&g), Some(KernelFormat::Elf));
    assert_eq!(elf_class_machine(&g), (2, 62));
    let mut bz = vec![0u8; 0x210];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
    assert_eq!(detect_format(b"#!/bin/sh\n"), None);
    assert_eq!(detect_format(&[]), None);
}

/// A bzImage head with the fields boot.rst defines at their offsets
/// (Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header").
fn bzimage(setup_sects: u8, syssize: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(HEAD_LEN)];
    let put = |f: &mut Vec<u8>, off: usize, b: &[u8]| f[off..off + b.len()].copy_from_slice(b);
    put(&mut f, 0x1f1, &[setup_sects]); // setup_sects
    put(&mut f, 0x1f4, &syssize.to_le_bytes()); // syssize
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
    f.truncate(len);
    f
}

#[test]
fn setup_header_fields_at_boot_protocol_offsets() {
    let f = bzimage(27, 0x100, HEAD_LEN);
    let h = parse_setup_header(&f);
    assert_eq!(detect_format(&f), Some(KernelFormat::BzImage));
    assert_eq!(h.setup_sects, 27);
    assert_eq!({ h.syssize }, 0x100);
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
    assert!(check_bzimage_header(&h).is_ok());
    // A file cut short after the magic: the later fields read as zero and the check refuses it.
    let short = parse_setup_header(&f[..0x210]);
    assert_eq!({ short.xloadflags }, 0);
    assert!(check_bzimage_header(&short).is_err());
}

#[test]
fn bzimages_are_checked_for_protocol_and_length() {
    // 2 setup sectors + the boot sector = 0x600 bytes, then 0x100 paragraphs = 0x1000 bytes.
    let ok = bzimage(2, 0x100, 0x1600);
    let info = check(&ok).unwrap();
    assert_eq!(info.format, KernelFormat::BzImage);
    assert_eq!(info.cmdline_max, 2046);
    assert_eq!(
        info.segments,
        vec![Segment {
            start: 0x10_0000,
            end: 0x10_1000
        }]
    );
    assert!(matches!(
        check(&bzimage(2, 0x100, 0x15ff)),
        Err(CheckError::Truncated { .. })
    ));
    let mut old = ok.clone();
    old[0x206..0x208].copy_from_slice(&0x020bu16.to_le_bytes());
    assert!(matches!(
        check(&old),
        Err(CheckError::OldProtocol {
            major: 2,
            minor: 11
        })
    ));
    let mut no64 = ok.clone();
    no64[0x236] = 0;
    assert!(matches!(check(&no64), Err(CheckError::No64BitEntry)));
    let mut low = ok;
    low[0x214..0x218].copy_from_slice(&0x1_0000u32.to_le_bytes());
    assert!(matches!(check(&low), Err(CheckError::LowBzImage(0x1_0000))));
}

#[test]
fn drive_count_and_command_line_with_drives() {
    assert!(check_drive_count(MAX_DRIVES).is_ok());
    let e = check_drive_count(MAX_DRIVES + 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{} volumes (block device mappings); a VM has at most {MAX_DRIVES}",
            MAX_DRIVES + 1
        )
    );
    let fits = "x".repeat(2047);
    check_cmdline(&fits, 0, 2047).unwrap();
    assert!(matches!(
        check_cmdline(&fits, 1, 2047),
        Err(CheckError::CmdlineWithDrives { drives: 1, .. })
    ));
    assert!(matches!(
        check_cmdline(&"x".repeat(2048), 0, 2047),
        Err(CheckError::Cmdline(CmdlineError::TooLong { .. }))
    ));
    assert!(matches!(
        check_cmdline("a\nb", 1, 2047),
        Err(CheckError::Cmdline(CmdlineError::BadChar(b'\n')))
    ));
}
