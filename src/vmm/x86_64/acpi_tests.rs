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
    for i in (HEADER_LEN as usize..len).step_by(8) {
        let tb = &b[off(u64_at(xsdt, i))..];
        if &tb[0..4] == sig {
            let l = u32::from_le_bytes(tb[4..8].try_into().unwrap()) as usize;
            return &tb[..l];
        }
    }
    panic!("no {sig:?}");
}

/// FADT field offsets (ACPI 6.5, table 5.9).
const FADT_FLAGS: usize = 112;
const FADT_RESET_REG: usize = 116;
const FADT_RESET_VALUE: usize = 128;
const FADT_X_DSDT: usize = 140;
const FADT_SLEEP_CONTROL: usize = 244;
const FADT_SLEEP_STATUS: usize = 256;
const FADT_LEN: usize = 276;

#[test]
fn rsdp_and_checksums() {
    let t = build(2, &[]).unwrap();
    assert_eq!(&t.bytes[0..8], b"RSD PTR ");
    assert_eq!(&t.bytes[9..15], &OEM_ID);
    assert_eq!(sum(&t.bytes[..20]), 0);
    assert_eq!(sum(&t.bytes[..36]), 0);
    for sig in [b"FACP", b"APIC"] {
        let tb = table(&t, sig);
        assert_eq!(sum(tb), 0, "{sig:?} checksum");
        assert_eq!(&tb[10..16], &OEM_ID);
    }
    let fadt = table(&t, b"FACP");
    assert_eq!(fadt.len(), FADT_LEN);
    let flags = u32::from_le_bytes(fadt[FADT_FLAGS..FADT_FLAGS + 4].try_into().unwrap());
    assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
    assert_ne!(flags & Flags::ResetRegSup as u32, 0);
    let dsdt_off = (u64_at(fadt, FADT_X_DSDT) - ACPI_START) as usize;
    assert_eq!(&t.bytes[dsdt_off..dsdt_off + 4], b"DSDT");
    assert_eq!(sum(&t.bytes[dsdt_off..dsdt_off + 36]), 0);
    // The index names every table at its place.
    let names: Vec<&str> = t.tables().map(|(n, _)| n).collect();
    assert_eq!(names, ["RSDP", "DSDT", "FACP", "APIC", "XSDT"]);
    for (name, bytes) in t.tables().skip(1) {
        assert_eq!(&bytes[..4], name.as_bytes());
        assert_eq!(sum(bytes), 0, "{name} checksum");
    }
}

#[test]
fn fadt_points_at_the_power_management_ports() {
    let t = build(1, &[]).unwrap();
    let fadt = table(&t, b"FACP");
    for (off, port) in [
        (FADT_RESET_REG, ACPI_PM_PORT + ACPI_RESET_OFFSET),
        (FADT_SLEEP_CONTROL, ACPI_PM_PORT + ACPI_SLEEP_CONTROL_OFFSET),
        (FADT_SLEEP_STATUS, ACPI_PM_PORT + ACPI_SLEEP_STATUS_OFFSET),
    ] {
        // System I/O, 8 bits, offset 0, byte access, the port.
        assert_eq!(&fadt[off..off + 4], &[1, 8, 0, 1], "GAS at {off}");
        assert_eq!(u64_at(fadt, off + 4), port, "GAS at {off}");
    }
    assert_eq!(fadt[FADT_RESET_VALUE], RESET_VALUE);
}

#[test]
fn dsdt_carries_the_body() {
    let body = [0x08, b'_', b'S', b'5', b'_', 0x0a, 0x05];
    let t = build(1, &body).unwrap();
    let (_, dsdt) = t.tables().find(|(n, _)| *n == "DSDT").unwrap();
    assert_eq!(dsdt.len(), 36 + body.len());
    assert_eq!(&dsdt[36..], &body);
    assert_eq!(sum(dsdt), 0);
    assert_eq!(dsdt[8], DSDT_REVISION);
}

#[test]
fn madt_lists_every_cpu_and_the_ioapic() {
    for cpus in [1u32, 2, 4, 64, 254] {
        let t = build(cpus, &[]).unwrap();
        let m = table(&t, b"APIC");
        assert_eq!(
            u32::from_le_bytes(m[36..40].try_into().unwrap()) as u64,
            LAPIC_ADDR
        );
        let mut off = HEADER_LEN as usize + 8;
        let (mut lapics, mut ioapics) = (vec![], 0);
        while off < m.len() {
            match m[off] {
                0 => {
                    assert_eq!(m[off + 1], 8);
                    assert_eq!(m[off + 4] & 1, 1, "enabled");
                    lapics.push(m[off + 3]);
                }
                1 => {
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

#[test]
fn bad_cpu_counts_are_errors() {
    assert!(matches!(build(0, &[]), Err(AcpiError::BadCpuCount(0))));
    assert!(matches!(build(256, &[]), Err(AcpiError::BadCpuCount(256))));
}
