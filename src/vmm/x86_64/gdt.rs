//! Segment descriptors for the boot GDT (Intel SDM vol. 3, 3.4.5 "Segment Descriptors").

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment: `__BOOT_CS` (0x10) in the Linux boot protocol
/// (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
pub const BOOT_CS64: u16 = 0x10;
/// Selector of the flat data segment: `__BOOT_DS` (0x18), same document.
pub const BOOT_DS: u16 = 0x18;
/// Selector of the TSS.
pub const BOOT_TSS: u16 = 0x20;
/// Selector of the 32-bit code segment used for the PVH entry (protected mode).
pub const BOOT_CS32: u16 = 0x28;

/// Access/flags word of a 64-bit code segment: G=1, L=1, P=1, DPL=0, S=1, type=0xb
/// (execute/read, accessed).
const FLAGS_CODE64: u16 = 0xa09b;
/// 32-bit flat code: G=1, D/B=1, P=1, S=1, type=0xb.
const FLAGS_CODE32: u16 = 0xc09b;
/// Flat data: G=1, D/B=1, P=1, S=1, type=3 (read/write, accessed).
const FLAGS_DATA: u16 = 0xc093;
/// 32-bit TSS (busy): G=0 (byte granularity), P=1, type=0xb.
const FLAGS_TSS: u16 = 0x008b;
/// Limit of a flat 4 GiB segment with 4 KiB granularity.
const FLAT_LIMIT: u32 = 0xfffff;
/// Limit of the TSS (104 bytes - 1, SDM 7.2.1).
const TSS_LIMIT: u32 = 0x67;

/// Build a descriptor from its access/flags word (`flags` bits 0-7 access byte, 12-15 flags
/// nibble), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, null, code64 (0x10), data (0x18), TSS (0x20), code32 (0x28).
pub fn boot_gdt() -> [u64; 6] {
    [
        0,
        0,
        gdt_entry(FLAGS_CODE64, 0, FLAT_LIMIT),
        gdt_entry(FLAGS_DATA, 0, FLAT_LIMIT),
        gdt_entry(FLAGS_TSS, 0, TSS_LIMIT),
        gdt_entry(FLAGS_CODE32, 0, FLAT_LIMIT),
    ]
}

/// The `kvm_segment` KVM_SET_SREGS wants for the descriptor `entry` at selector `selector`.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let limit_raw =
        ((entry & 0x0000_0000_0000_ffff) | ((entry & 0x000f_0000_0000_0000) >> 32)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_descriptor_encodings() {
        // The classic flat descriptors, as any OS tutorial or the SDM figure 3-8 gives them.
        assert_eq!(
            gdt_entry(FLAGS_CODE64, 0, FLAT_LIMIT),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(gdt_entry(FLAGS_DATA, 0, FLAT_LIMIT), 0x00cf_9300_0000_ffff);
        assert_eq!(
            gdt_entry(FLAGS_CODE32, 0, FLAT_LIMIT),
            0x00cf_9b00_0000_ffff
        );
    }

    #[test]
    fn segments_decode_back() {
        let gdt = boot_gdt();
        let cs = segment(gdt[(BOOT_CS64 / 8) as usize], BOOT_CS64);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.type_, cs.s),
            (1, 0, 1, 1, 0xb, 1)
        );
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        let ds = segment(gdt[(BOOT_DS / 8) as usize], BOOT_DS);
        assert_eq!((ds.l, ds.db, ds.type_, ds.limit), (0, 1, 3, 0xffff_ffff));
        let tss = segment(gdt[(BOOT_TSS / 8) as usize], BOOT_TSS);
        assert_eq!((tss.type_, tss.s, tss.limit, tss.g), (0xb, 0, 0x67, 0));
        let cs32 = segment(gdt[(BOOT_CS32 / 8) as usize], BOOT_CS32);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let null = segment(0, 0);
        assert_eq!(null.unusable, 1);
        let base = segment(gdt_entry(FLAGS_DATA, 0x1234_5678, 0xabcde), 0);
        assert_eq!(base.base, 0x1234_5678);
        assert_eq!(base.limit, 0xabcd_efff);
    }
}
