//! The guest-physical address map. Every address the VMM places something at is here.
//!
//! ```text
//! 0x0000_0500  GDT                    0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info     0x0000_6040  PVH memory map
//! 0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack top         0x0000_9000  PML4 / 0xa000 PDPT / 0xb000.. 4 PDs
//! 0x0001_0000  left free (test guests put an AP trampoline here)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (grows down for many vCPUs), ends at the EBDA end 0xa0000
//! 0x000e_0000  ACPI tables: RSDP, DSDT, FADT, MADT, XSDT
//! 0x0010_0000  kernel (HIMEM_START)
//!   ...        initrd, placed high below the MMIO gap
//! 0xc000_0000  MMIO gap: virtio-mmio devices from here, IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM continues above 4 GiB
//!
//! I/O ports: 0x60/0x64 i8042, 0xf4 exit port, 0x3f8 COM1 (GSI 4), 0x600-0x603 ACPI sleep
//! control/status and reset, 0x604-0x607 GED event register (GSI 3).
//! ```

/// Start of the GDT. Same place as Firecracker (`arch/x86_64/layout.rs`): low memory unused by
/// firmware-less boots.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) IDT, right after the GDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map (array of `hvm_memmap_table_entry`), after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list (one `hvm_modlist_entry`, 32 bytes: the initrd), just below the zero page.
pub const PVH_MODLIST_START: u64 = 0x6fe0;
/// Most PVH memory-map entries (24 bytes each) that fit before the module list.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((PVH_MODLIST_START - PVH_MEMMAP_START) / 24) as usize;
/// The zero page (`struct boot_params`, Linux Documentation/arch/x86/zero-page.rst); RSI points
/// here at the 64-bit entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU (top of the page below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The PML4 of the identity-mapped boot page tables.
pub const PML4_START: u64 = 0x9000;
/// The PDPT of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// The first of the page directories (2 MiB pages) of the boot page tables.
pub const PDE_START: u64 = 0xb000;
/// How many page directories: each maps 1 GiB with 2 MiB pages, so 4 map the low 4 GiB
/// (kernel, boot structures and the LAPIC/IOAPIC are reachable before the kernel's own tables).
pub const PDE_COUNT: u64 = 4;
/// A page test guests may use for an AP real-mode trampoline (SIPI vector 0x10): we put nothing
/// here.
pub const FREE_TRAMPOLINE_PAGE: u64 = 0x1_0000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line we accept for a 64-bit ELF (Linux `COMMAND_LINE_SIZE` on x86 is 2048,
/// arch/x86/include/uapi/asm/setup.h); bzImages state their own limit in `cmdline_size`.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of conventional memory / of the EBDA: the legacy VGA hole starts here.
pub const EBDA_END: u64 = 0xa_0000;
/// Where the MP table area starts when it fits in one KiB: the last KiB of base memory, one of
/// the places the MP spec (1.4, section 4) says the floating pointer is searched for.
pub const MPTABLE_START: u64 = 0x9_fc00;
/// ACPI tables (RSDP first), in the BIOS area [0xe0000, 0x100000) that the ACPI spec (5.2.5.1)
/// says an OS scans for the RSDP; the zero page and PVH start info also point at it.
pub const ACPI_START: u64 = 0xe_0000;
/// Start of high memory: kernels load here (Linux boot protocol `code32_start` default).
/// Everything amivm itself writes into guest memory before the guest runs (GDT, PVH start
/// info, zero page, boot stack, page tables, command line, MP table, ACPI tables) lies below
/// it, so a kernel segment that starts below it is refused.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: guest RAM stops here and continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; each device gets [`VIRTIO_MMIO_SIZE`].
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio register window (the Linux `virtio_mmio.device=4K@...` convention).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI for virtio-mmio devices: ISA IRQs 5.. are free on our board (4 is COM1).
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// Last usable GSI: the in-kernel IOAPIC has 24 pins.
pub const MAX_GSI: u32 = 23;
/// Most virtio-blk drives (block device mappings) a VM can have: one GSI each, from
/// [`VIRTIO_FIRST_GSI`] to [`MAX_GSI`].
pub const MAX_DRIVES: usize = (MAX_GSI - VIRTIO_FIRST_GSI + 1) as usize;

/// The MMIO window base and GSI of drive `index` (0 is `/dev/vda`).
pub const fn drive_window(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_FIRST_GSI + index as u32,
    )
}
/// The in-kernel IOAPIC's MMIO address (KVM's default, and the MP spec's usual one).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's MMIO address (Intel SDM vol. 3, 10.4.1: IA32_APIC_BASE default).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM_SET_TSS_ADDRESS: three pages KVM needs on Intel, placed at the top of the gap below the
/// BIOS area like QEMU and Firecracker (0xfffb_d000).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The ACPI power-management ports (sleep control, sleep status, reset), from this I/O port up.
/// The FADT's SLEEP_CONTROL_REG, SLEEP_STATUS_REG and RESET_REG point here. 0x600 is the
/// PMBASE QEMU gives its ICH9 (q35) power-management block; nothing else on our board uses it.
pub const ACPI_PM_PORT: u64 = 0x600;
/// Offset of the sleep control register (ACPI 6.5, 4.8.3.7: SLP_TYP in bits 2-4, SLP_EN bit 5).
pub const ACPI_SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register (ACPI 6.5, 4.8.3.8: WAK_STS bit 7).
pub const ACPI_SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register (ACPI 6.5, 4.8.3.6).
pub const ACPI_RESET_OFFSET: u64 = 2;
/// Ports the power-management block spans.
pub const ACPI_PM_PORT_SPAN: u64 = 4;
/// The Generic Event Device's event register: a 32-bit I/O register (ports 0x604-0x607) whose
/// bits say which event fired; reading it clears them. Right after the power-management block.
pub const GED_PORT: u64 = ACPI_PM_PORT + ACPI_PM_PORT_SPAN;
/// Ports the GED register spans (one DWord).
pub const GED_PORT_SPAN: u64 = 4;
/// The GED's interrupt: ISA IRQ 3, COM2's on a PC, free here (COM1 is 4, the keyboard 1, and
/// virtio-mmio devices take 5 and up).
pub const GED_GSI: u32 = 3;

/// Smallest guest memory we accept: 16 MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
