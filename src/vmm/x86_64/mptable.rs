//! The MP configuration table (Intel MultiProcessor Specification 1.4): how the guest learns
//! its CPUs, the IOAPIC and the ISA interrupt routing without ACPI.
//!
//! Layout we use: the configuration table starts at the bottom of the MP area and the 16-byte
//! floating pointer sits in the last 16 bytes of base memory (`0x9fff0`), inside "the last KiB
//! of system base memory" that MP spec section 4 says the OS searches. The area grows down from
//! 640 KiB in 1 KiB steps, so any vCPU count fits.

use crate::vmm::layout::{EBDA_END, IOAPIC_ADDR, LAPIC_ADDR, MAX_GSI};

/// "_MP_": floating pointer signature (MP spec 4.1).
const FP_SIGNATURE: &[u8; 4] = b"_MP_";
/// "PCMP": configuration table header signature (MP spec 4.2).
const CT_SIGNATURE: &[u8; 4] = b"PCMP";
/// MP spec revision 1.4 (MP spec 4.1, SPEC_REV field).
const SPEC_REV_1_4: u8 = 4;
/// Size of the floating pointer structure (MP spec table 4-1: 16 bytes).
pub const FP_SIZE: usize = 16;
/// Size of the configuration table header (MP spec table 4-2: 44 bytes).
const HEADER_SIZE: usize = 44;
/// Entry type 0, processor, 20 bytes (MP spec 4.3.1).
const ENTRY_PROCESSOR: u8 = 0;
const PROCESSOR_SIZE: usize = 20;
/// Entry type 1, bus, 8 bytes (MP spec 4.3.2).
const ENTRY_BUS: u8 = 1;
/// Entry type 2, I/O APIC, 8 bytes (MP spec 4.3.3).
const ENTRY_IOAPIC: u8 = 2;
/// Entry type 3, I/O interrupt assignment, 8 bytes (MP spec 4.3.4).
const ENTRY_IOINT: u8 = 3;
/// Entry type 4, local interrupt assignment, 8 bytes (MP spec 4.3.5).
const ENTRY_LINT: u8 = 4;
/// Size of every entry type except processors.
const SMALL_ENTRY_SIZE: usize = 8;
/// Interrupt type INT: vectored interrupt from the IOAPIC (MP spec table 4-9).
const INT_TYPE_INT: u8 = 0;
/// Interrupt type NMI (MP spec table 4-9).
const INT_TYPE_NMI: u8 = 1;
/// Interrupt type ExtINT: 8259A-compatible (MP spec table 4-9).
const INT_TYPE_EXTINT: u8 = 3;
/// Local APIC version: 0x14 is an integrated xAPIC (Intel SDM vol. 3, 10.4.8), what KVM emulates.
const LAPIC_VERSION: u8 = 0x14;
/// I/O APIC version 0x11 (82093AA), what KVM's in-kernel IOAPIC reports.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU flags: bit 0 EN (usable), bit 1 BP (the bootstrap processor) (MP spec table 4-4).
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
/// Destination LAPIC id 0xff: every local APIC (MP spec 4.3.5).
const ALL_LAPICS: u8 = 0xff;
/// Bus type string for ISA, space padded to 6 bytes (MP spec table 4-8).
const BUS_TYPE_ISA: &[u8; 6] = b"ISA   ";
/// Most processors an MP table can describe: 8-bit APIC ids, 0xff is the broadcast id.
pub const MAX_CPUS: u32 = 254;

/// CPU identification copied into each processor entry (CPUID leaf 1 EAX and EDX).
#[derive(Debug, Clone, Copy)]
pub struct CpuSignature {
    /// CPUID.1:EAX: stepping, model, family.
    pub signature: u32,
    /// CPUID.1:EDX: feature flags.
    pub features: u32,
}

/// A built MP table: `bytes` go at guest-physical `start` and end at 640 KiB.
#[derive(Debug, Clone)]
pub struct MpTable {
    /// Guest-physical address of the first byte (the configuration table).
    pub start: u64,
    /// The whole area, configuration table first, floating pointer last.
    pub bytes: Vec<u8>,
}

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Too many CPUs for 8-bit APIC ids.
    #[error("{0} vCPUs cannot be described by an MP table (at most {MAX_CPUS})")]
    TooManyCpus(u32),
}

/// Size in bytes of the configuration table for `cpus` processors.
pub fn table_size(cpus: u32) -> usize {
    let ioints = (MAX_GSI + 1) as usize;
    HEADER_SIZE
        + cpus as usize * PROCESSOR_SIZE
        + SMALL_ENTRY_SIZE * (1 /* bus */ + 1 /* ioapic */ + ioints + 2/* lints */)
}

/// Where the MP area starts for `cpus` processors: 1 KiB-aligned, ending at 640 KiB.
pub fn area_start(cpus: u32) -> u64 {
    let need = (table_size(cpus) + FP_SIZE) as u64;
    EBDA_END - need.div_ceil(1024) * 1024
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

/// Build the MP table for `cpus` processors with APIC ids 0..cpus (0 is the BSP).
pub fn build(cpus: u32, sig: CpuSignature) -> Result<MpTable, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let start = area_start(cpus);
    let ioapic_id = cpus as u8; // the first id after the CPUs'
    let mut t: Vec<u8> = Vec::with_capacity(table_size(cpus));
    // Header, patched below.
    t.extend_from_slice(CT_SIGNATURE);
    t.extend_from_slice(&[0, 0]); // base table length
    t.push(SPEC_REV_1_4);
    t.push(0); // checksum
    t.extend_from_slice(b"AMIVM   "); // OEM id, 8 bytes
    t.extend_from_slice(b"MICROVM     "); // product id, 12 bytes
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&[0, 0]); // entry count
    t.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    t.push(0); // extended table checksum
    t.push(0); // reserved
    debug_assert_eq!(t.len(), HEADER_SIZE);
    let mut entries: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_FLAG_ENABLED | if id == 0 { CPU_FLAG_BSP } else { 0 };
        t.extend_from_slice(&[ENTRY_PROCESSOR, id as u8, LAPIC_VERSION, flags]);
        t.extend_from_slice(&sig.signature.to_le_bytes());
        t.extend_from_slice(&sig.features.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        entries += 1;
    }
    t.push(ENTRY_BUS);
    t.push(0); // bus id
    t.extend_from_slice(BUS_TYPE_ISA);
    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    entries += 2;
    // ISA IRQ n -> IOAPIC pin n, the identity routing of KVM's default GSI table.
    for irq in 0..=MAX_GSI as u8 {
        t.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        entries += 1;
    }
    t.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, 0, 0, ALL_LAPICS, 0]);
    t.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, 0, 0, ALL_LAPICS, 1]);
    entries += 2;
    let len = t.len() as u16;
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[34..36].copy_from_slice(&entries.to_le_bytes());
    t[7] = checksum(&t);

    let area_len = (EBDA_END - start) as usize;
    let mut bytes = t;
    bytes.resize(area_len - FP_SIZE, 0);
    let mut fp = [0u8; FP_SIZE];
    fp[0..4].copy_from_slice(FP_SIGNATURE);
    fp[4..8].copy_from_slice(&(start as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte paragraphs
    fp[9] = SPEC_REV_1_4;
    // fp[10] checksum; feature bytes 1-5 zero: a configuration table is present, no IMCR.
    fp[10] = checksum(&fp);
    bytes.extend_from_slice(&fp);
    Ok(MpTable { start, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::layout::MPTABLE_START;

    const SIG: CpuSignature = CpuSignature {
        signature: 0x600,
        features: 0x201,
    };

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Parse the table the way a guest does and return (cpu ids, bsp count, ioapic addr).
    fn parse(t: &MpTable) -> (Vec<u8>, usize, u32) {
        let fp = &t.bytes[t.bytes.len() - FP_SIZE..];
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        let phys = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        assert_eq!(phys, t.start);
        let ct = &t.bytes[(phys - t.start) as usize..];
        assert_eq!(&ct[0..4], b"PCMP");
        let len = u16::from_le_bytes([ct[4], ct[5]]) as usize;
        assert_eq!(sum(&ct[..len]), 0, "configuration table checksum");
        let count = u16::from_le_bytes([ct[34], ct[35]]) as usize;
        let (mut off, mut ids, mut bsps, mut ioapic) = (HEADER_SIZE, vec![], 0, 0);
        for _ in 0..count {
            match ct[off] {
                ENTRY_PROCESSOR => {
                    ids.push(ct[off + 1]);
                    bsps += (ct[off + 3] & CPU_FLAG_BSP != 0) as usize;
                    off += PROCESSOR_SIZE;
                }
                ENTRY_IOAPIC => {
                    ioapic = u32::from_le_bytes(ct[off + 4..off + 8].try_into().unwrap());
                    off += 8;
                }
                _ => off += 8,
            }
        }
        assert_eq!(off, len);
        (ids, bsps, ioapic)
    }

    #[test]
    fn two_cpus_fit_in_the_last_kib() {
        let t = build(2, SIG).unwrap();
        assert_eq!(t.start, MPTABLE_START);
        assert_eq!(t.start + t.bytes.len() as u64, EBDA_END);
        let (ids, bsps, ioapic) = parse(&t);
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(bsps, 1);
        assert_eq!(ioapic as u64, IOAPIC_ADDR);
    }

    #[test]
    fn many_cpus_grow_the_area_down() {
        for cpus in [1, 4, 32, 64, 200, 254] {
            let t = build(cpus, SIG).unwrap();
            assert_eq!(t.start % 1024, 0);
            assert!(t.bytes.len() >= table_size(cpus) + FP_SIZE);
            let (ids, bsps, _) = parse(&t);
            assert_eq!(ids.len(), cpus as usize);
            assert_eq!(bsps, 1);
        }
        assert!(area_start(254) < MPTABLE_START);
    }

    #[test]
    fn rejects_impossible_counts() {
        assert!(build(0, SIG).is_err());
        assert!(build(255, SIG).is_err());
    }
}
