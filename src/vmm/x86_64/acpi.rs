//! Minimal ACPI tables: RSDP, XSDT, FADT (hardware-reduced), an empty DSDT and a MADT listing
//! the vCPUs' local APICs and the IOAPIC. Kernels built without `CONFIG_X86_MPPARSE` (Debian's
//! cloud kernel, for one) learn their CPUs only from the MADT. Layouts from the ACPI 6.5 spec:
//! 5.2.5.3 (RSDP), 5.2.6 (header), 5.2.8 (XSDT), 5.2.9 (FADT), 5.2.12 (MADT).

use crate::vmm::layout::{ACPI_START, IOAPIC_ADDR, LAPIC_ADDR};

/// OEM id in every table (6 bytes).
const OEM_ID: &[u8; 6] = b"AMIVM ";
/// OEM table id (8 bytes).
const OEM_TABLE_ID: &[u8; 8] = b"MICROVM ";
/// Creator id (4 bytes) and revision.
const CREATOR_ID: &[u8; 4] = b"AMVM";
const CREATOR_REVISION: u32 = 1;
/// Size of the common table header (5.2.6).
const HEADER_LEN: usize = 36;
/// Size of an ACPI 2.0+ RSDP (5.2.5.3).
const RSDP_LEN: usize = 36;
/// FADT length for revision 6 (table 5.9 ends with the hypervisor vendor id at 268 + 8).
const FADT_LEN: usize = 276;
/// FADT major revision 6, minor revision 5 (ACPI 6.5).
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 5;
/// FADT field offsets (table 5.9).
const FADT_OFF_IAPC_BOOT_ARCH: usize = 109;
const FADT_OFF_FLAGS: usize = 112;
const FADT_OFF_RESET_REG: usize = 116;
const FADT_OFF_RESET_VALUE: usize = 128;
const FADT_OFF_MINOR_REVISION: usize = 131;
const FADT_OFF_X_DSDT: usize = 140;
const FADT_OFF_HYPERVISOR_ID: usize = 268;
/// IAPC_BOOT_ARCH bits (table 5.11): 8042 present, VGA not present, MSI not supported, CMOS RTC
/// not present.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// FADT flags (table 5.10): power and sleep buttons are not fixed-feature, the reset register is
/// supported, the platform is hardware-reduced (no PM timer, no SCI, no GPE blocks).
const FADT_PWR_BUTTON: u32 = 1 << 4;
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// Generic Address Structure for the reset register: system I/O space (id 1), 8 bits, byte
/// access, port 0x64; writing 0xFE there is the i8042 reset (5.2.3.2).
const GAS_SYSTEM_IO: u8 = 1;
const GAS_ACCESS_BYTE: u8 = 1;
const RESET_PORT: u64 = 0x64;
const RESET_VALUE: u8 = 0xfe;
/// MADT structure types and lengths (5.2.12): processor local APIC (0, 8 bytes), I/O APIC (1,
/// 12 bytes); the local APIC flag bit 0 is "Enabled".
const MADT_LOCAL_APIC: u8 = 0;
const MADT_LOCAL_APIC_LEN: u8 = 8;
const MADT_IO_APIC: u8 = 1;
const MADT_IO_APIC_LEN: u8 = 12;
const MADT_ENABLED: u32 = 1;
/// Table revisions: XSDT 1, DSDT 2 (64-bit integers in AML), MADT 5.
const XSDT_REVISION: u8 = 1;
const DSDT_REVISION: u8 = 2;
const MADT_REVISION: u8 = 5;
/// RSDP revision 2: ACPI 2.0+ with an XSDT.
const RSDP_REVISION: u8 = 2;
/// Tables start on 16-byte boundaries (the RSDP must; the rest for tidiness).
const ALIGN: usize = 16;
/// The end of the BIOS read-only area the RSDP scan covers (5.2.5.1: 0xE0000-0xFFFFF).
pub const ACPI_AREA_END: u64 = 0x10_0000;

/// Built tables: `bytes` go at [`ACPI_START`]; the RSDP is first.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    pub rsdp_addr: u64,
    pub bytes: Vec<u8>,
}

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables for {0} vCPUs do not fit below 1 MiB")]
    TooBig(u32),
}

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_sub(*x))
}

fn header(sig: &[u8; 4], len: usize, revision: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(sig);
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.push(revision);
    h.push(0); // checksum
    h.extend_from_slice(OEM_ID);
    h.extend_from_slice(OEM_TABLE_ID);
    h.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    h.extend_from_slice(CREATOR_ID);
    h.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    h
}

fn seal(mut t: Vec<u8>) -> Vec<u8> {
    t[9] = checksum(&t);
    t
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut t = header(b"FACP", FADT_LEN, FADT_REVISION);
    t.resize(FADT_LEN, 0);
    let boot_arch =
        IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT;
    t[FADT_OFF_IAPC_BOOT_ARCH..FADT_OFF_IAPC_BOOT_ARCH + 2]
        .copy_from_slice(&boot_arch.to_le_bytes());
    let flags = FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP | FADT_HW_REDUCED_ACPI;
    t[FADT_OFF_FLAGS..FADT_OFF_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    let gas = [GAS_SYSTEM_IO, 8, 0, GAS_ACCESS_BYTE];
    t[FADT_OFF_RESET_REG..FADT_OFF_RESET_REG + 4].copy_from_slice(&gas);
    t[FADT_OFF_RESET_REG + 4..FADT_OFF_RESET_REG + 12].copy_from_slice(&RESET_PORT.to_le_bytes());
    t[FADT_OFF_RESET_VALUE] = RESET_VALUE;
    t[FADT_OFF_MINOR_REVISION] = FADT_MINOR_REVISION;
    t[FADT_OFF_X_DSDT..FADT_OFF_X_DSDT + 8].copy_from_slice(&dsdt_addr.to_le_bytes());
    t[FADT_OFF_HYPERVISOR_ID..FADT_OFF_HYPERVISOR_ID + 8].copy_from_slice(b"AMIVM   ");
    seal(t)
}

fn madt(cpus: u32) -> Vec<u8> {
    let len =
        HEADER_LEN + 8 + cpus as usize * MADT_LOCAL_APIC_LEN as usize + MADT_IO_APIC_LEN as usize;
    let mut t = header(b"APIC", len, MADT_REVISION);
    t.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // flags: no dual-8259 setup to disable
    for id in 0..cpus {
        t.extend_from_slice(&[MADT_LOCAL_APIC, MADT_LOCAL_APIC_LEN, id as u8, id as u8]);
        t.extend_from_slice(&MADT_ENABLED.to_le_bytes());
    }
    // The IOAPIC's id follows the CPUs', as in the MP table.
    t.extend_from_slice(&[MADT_IO_APIC, MADT_IO_APIC_LEN, cpus as u8, 0]);
    t.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    seal(t)
}

fn align(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(ALIGN) * ALIGN, 0);
}

/// Build the tables for `cpus` vCPUs, laid out from [`ACPI_START`].
pub fn build(cpus: u32) -> Result<AcpiTables, AcpiError> {
    let mut out = vec![0u8; RSDP_LEN];
    align(&mut out);
    let at = |v: &Vec<u8>| ACPI_START + v.len() as u64;
    let dsdt_addr = at(&out);
    out.extend(seal(header(b"DSDT", HEADER_LEN, DSDT_REVISION)));
    align(&mut out);
    let fadt_addr = at(&out);
    out.extend(fadt(dsdt_addr));
    align(&mut out);
    let madt_addr = at(&out);
    out.extend(madt(cpus));
    align(&mut out);
    let xsdt_addr = at(&out);
    let mut x = header(b"XSDT", HEADER_LEN + 16, XSDT_REVISION);
    x.extend_from_slice(&fadt_addr.to_le_bytes());
    x.extend_from_slice(&madt_addr.to_le_bytes());
    out.extend(seal(x));
    if at(&out) > ACPI_AREA_END {
        return Err(AcpiError::TooBig(cpus));
    }
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(RSDP_REVISION);
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]); // extended checksum, reserved
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    out[..RSDP_LEN].copy_from_slice(&r);
    Ok(AcpiTables {
        rsdp_addr: ACPI_START,
        bytes: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// Find a table by following RSDP -> XSDT, as an OS does.
    fn table<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> &'a [u8] {
        let b = &t.bytes;
        let off = |addr: u64| (addr - ACPI_START) as usize;
        let xsdt = &b[off(u64_at(b, 24))..];
        assert_eq!(&xsdt[0..4], b"XSDT");
        let len = u32::from_le_bytes(xsdt[4..8].try_into().unwrap()) as usize;
        for i in (HEADER_LEN..len).step_by(8) {
            let tb = &b[off(u64_at(xsdt, i))..];
            if &tb[0..4] == sig {
                let l = u32::from_le_bytes(tb[4..8].try_into().unwrap()) as usize;
                return &tb[..l];
            }
        }
        panic!("no {sig:?}");
    }

    #[test]
    fn rsdp_and_checksums() {
        let t = build(2).unwrap();
        assert_eq!(&t.bytes[0..8], b"RSD PTR ");
        assert_eq!(sum(&t.bytes[..20]), 0);
        assert_eq!(sum(&t.bytes[..36]), 0);
        for sig in [b"FACP", b"APIC"] {
            let tb = table(&t, sig);
            assert_eq!(sum(tb), 0, "{sig:?} checksum");
        }
        let fadt = table(&t, b"FACP");
        assert_eq!(fadt.len(), 276);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & FADT_HW_REDUCED_ACPI, 0);
        let dsdt_off = (u64_at(fadt, 140) - ACPI_START) as usize;
        assert_eq!(&t.bytes[dsdt_off..dsdt_off + 4], b"DSDT");
        assert_eq!(sum(&t.bytes[dsdt_off..dsdt_off + 36]), 0);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        for cpus in [1u32, 2, 4, 64, 254] {
            let t = build(cpus).unwrap();
            let m = table(&t, b"APIC");
            let mut off = HEADER_LEN + 8;
            let (mut lapics, mut ioapics) = (vec![], 0);
            while off < m.len() {
                match m[off] {
                    MADT_LOCAL_APIC => lapics.push(m[off + 3]),
                    MADT_IO_APIC => {
                        ioapics += 1;
                        assert_eq!(
                            u32::from_le_bytes(m[off + 4..off + 8].try_into().unwrap()) as u64,
                            IOAPIC_ADDR
                        );
                    }
                    other => panic!("unexpected MADT entry {other}"),
                }
                off += m[off + 1] as usize;
            }
            assert_eq!(lapics, (0..cpus).map(|i| i as u8).collect::<Vec<_>>());
            assert_eq!(ioapics, 1);
        }
    }
}
