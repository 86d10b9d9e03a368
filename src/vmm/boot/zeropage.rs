//! The zero page (`struct boot_params`) for the Linux boot protocol
//! (Documentation/arch/x86/boot.rst and zero-page.rst).

use super::e820::E820Entry;
use linux_loader::loader::bootparam::{boot_params, setup_header};

/// `boot_flag` magic at offset 0x1fe (boot.rst: "0xAA55").
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` magic at offset 0x202: "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` 0xff: "undefined" boot loader (boot.rst, "type_of_loader").
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` we state for an ELF kernel without a setup header: 16 MiB, Linux's
/// `CONFIG_PHYSICAL_ALIGN` default.
pub const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Zero-page e820 table capacity (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX_ENTRIES: usize = 128;

/// Errors building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// The memory map has more entries than the zero page holds.
    #[error("memory map has {0} entries; the zero page holds {E820_MAX_ENTRIES}")]
    TooManyE820(usize),
}

/// Where things are, for the zero page.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroPageInputs {
    /// Guest address and length (without NUL) of the command line.
    pub cmdline_addr: u64,
    pub cmdline_len: u32,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(u64, u32)>,
    /// Guest address of the ACPI RSDP (`acpi_rsdp_addr`, boot protocol 2.14), 0 for none.
    pub rsdp_addr: u64,
}

/// Build the zero page. `hdr` is the bzImage's setup header, or `None` for an ELF kernel
/// (then a minimal valid header is synthesised, as Firecracker and Cloud Hypervisor do).
pub fn build(
    hdr: Option<setup_header>,
    inputs: ZeroPageInputs,
    e820: &[E820Entry],
) -> Result<boot_params, ZeroPageError> {
    if e820.len() > E820_MAX_ENTRIES {
        return Err(ZeroPageError::TooManyE820(e820.len()));
    }
    let mut p = boot_params {
        hdr: hdr.unwrap_or_else(|| setup_header {
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            kernel_alignment: ELF_KERNEL_ALIGNMENT,
            ..Default::default()
        }),
        ..Default::default()
    };
    p.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    p.hdr.cmd_line_ptr = inputs.cmdline_addr as u32;
    p.ext_cmd_line_ptr = (inputs.cmdline_addr >> 32) as u32;
    // cmdline_size is the kernel's limit, read-only for bzImages; for ELF kernels it tells the
    // kernel the length we used.
    if hdr.is_none() {
        p.hdr.cmdline_size = inputs.cmdline_len + 1;
    }
    if let Some((addr, size)) = inputs.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.hdr.ramdisk_size = size;
    }
    p.acpi_rsdp_addr = inputs.rsdp_addr;
    for (slot, e) in p.e820_table.iter_mut().zip(e820) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    p.e820_entries = e820.len() as u8;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::boot::e820::{build_e820, E820_RAM};
    use crate::vmm::layout::{CMDLINE_START, MPTABLE_START};
    use crate::vmm::memory::ram_ranges;
    use vm_memory::ByteValued;

    fn field<const N: usize>(p: &boot_params, off: usize) -> [u8; N] {
        p.as_slice()[off..off + N].try_into().unwrap()
    }

    #[test]
    fn elf_zero_page_fields_at_documented_offsets() {
        let map = build_e820(&ram_ranges(128 << 20), MPTABLE_START);
        let p = build(
            None,
            ZeroPageInputs {
                cmdline_addr: CMDLINE_START,
                cmdline_len: 10,
                initrd: Some((0x7f0_0000, 0x1234)),
                rsdp_addr: 0xe0000,
            },
            &map,
        )
        .unwrap();
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
        assert_eq!(field::<2>(&p, 0x1fe), BOOT_FLAG_MAGIC.to_le_bytes());
        assert_eq!(field::<4>(&p, 0x202), *b"HdrS");
        assert_eq!(field::<1>(&p, 0x210), [0xff]);
        assert_eq!(field::<4>(&p, 0x218), 0x7f0_0000u32.to_le_bytes());
        assert_eq!(field::<4>(&p, 0x21c), 0x1234u32.to_le_bytes());
        assert_eq!(field::<4>(&p, 0x228), (CMDLINE_START as u32).to_le_bytes());
        assert_eq!(field::<1>(&p, 0x1e8), [3]);
        assert_eq!(field::<8>(&p, 0x070), 0xe0000u64.to_le_bytes());
        // First e820 entry at 0x2d0: addr 0, size 0x9fc00, type RAM.
        assert_eq!(field::<8>(&p, 0x2d8), 0x9fc00u64.to_le_bytes());
        assert_eq!(field::<4>(&p, 0x2e0), E820_RAM.to_le_bytes());
    }

    #[test]
    fn bzimage_header_is_kept_and_completed() {
        let hdr = setup_header {
            version: 0x020f,
            cmdline_size: 2047,
            xloadflags: 1,
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            ..Default::default()
        };
        let p = build(
            Some(hdr),
            ZeroPageInputs {
                cmdline_addr: CMDLINE_START,
                cmdline_len: 5,
                initrd: None,
                rsdp_addr: 0,
            },
            &[],
        )
        .unwrap();
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!(
            { p.hdr.cmdline_size },
            2047,
            "the kernel's own limit is read-only"
        );
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn rejects_oversized_memory_map() {
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            129
        ];
        assert!(build(None, ZeroPageInputs::default(), &map).is_err());
    }
}
