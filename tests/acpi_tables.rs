//! amivm's ACPI tables read by ACPICA, the reference implementation Linux itself uses
//! (issue 9): `amivm boot --dump-acpi DIR` writes the tables a VM would get, `iasl -d`
//! decodes each one, and `acpiexec` runs the DSDT's AML: `\_S5_`, each virtio-mmio device's
//! `_CRS` (the window and GSI amivm uses), COM1's `_CRS`, and the GED's `_EVT`, which must
//! notify the power button when the event register says so.
//!
//! Needs `iasl` and `acpiexec` (Debian: acpica-tools); skipped with a printed reason without them.

mod common;

use common::{on_path, run_with_deadline, RunOutput};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Limit on one tool run.
const DEADLINE: Duration = Duration::from_secs(60);
/// amivm's layout (src/vmm/layout.rs): virtio-mmio window `n` at 0xc0000000 + 4 KiB·n, GSI
/// 5 + n; the power-management ports from 0x600; the GED register at 0x604, GSI 3.
const VIRTIO_MMIO_START: u32 = 0xc000_0000;
const VIRTIO_MMIO_SIZE: u32 = 0x1000;
const VIRTIO_FIRST_GSI: u32 = 5;
const ACPI_PM_PORT: u64 = 0x600;
const GED_GSI: u32 = 3;
/// The tables amivm writes, by file name.
const TABLES: &[&str] = &["RSDP", "XSDT", "FACP", "DSDT", "APIC"];

fn have_acpica() -> bool {
    if on_path("iasl") && on_path("acpiexec") {
        return true;
    }
    common::skip_note("acpi_tables: iasl/acpiexec not installed (apt-get install acpica-tools)");
    false
}

/// `amivm boot --dump-acpi DIR ARGS`.
fn dump(dir: &Path, args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.arg("boot").arg("--dump-acpi").arg(dir).args(args);
    run_with_deadline(cmd, DEADLINE)
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).args(args);
    run_with_deadline(cmd, DEADLINE)
}

/// `acpiexec -b "evaluate PATH"` on the DSDT; its output.
fn evaluate(dir: &Path, path: &str, extra: &[&str]) -> String {
    let mut args: Vec<&str> = extra.to_vec();
    let batch = format!("evaluate {path}");
    args.extend(["-b", &batch, "DSDT.dat"]);
    let out = run_in(dir, "acpiexec", &args);
    assert_eq!(out.code, Some(0), "acpiexec {path}: {}", out.describe());
    assert!(
        !out.stdout.contains("AE_") && !out.stdout.contains("Exception"),
        "acpiexec {path} reported an error: {}",
        out.describe()
    );
    out.stdout
}

/// The bytes of the buffer acpiexec prints (`0000: 86 09 00 ...  // ....`, on lines of their
/// own, or after `[Buffer] Length 0B =` for a short one).
fn buffer_bytes(out: &str) -> Vec<u8> {
    out.lines()
        .filter_map(|l| {
            let at = l.find(": ")?;
            let off = l.get(at.checked_sub(4)?..at)?;
            u32::from_str_radix(off, 16).ok()?;
            let hex = l[at + 2..].split("//").next()?;
            Some(
                hex.split_whitespace()
                    .filter_map(|b| u8::from_str_radix(b, 16).ok())
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect()
}

/// Resource descriptors (ACPI 6.5, 6.4) in a `_CRS` buffer: (Memory32Fixed windows, I/O
/// ranges, extended interrupts with their flags).
#[derive(Debug, Default, PartialEq)]
struct Resources {
    memory: Vec<(u32, u32, bool)>,
    io: Vec<(u16, u8)>,
    irqs: Vec<(u32, u8)>,
}

fn parse_crs(b: &[u8]) -> Resources {
    let mut r = Resources::default();
    let mut i = 0;
    while i < b.len() {
        let tag = b[i];
        if tag == 0x79 {
            break; // End Tag
        }
        if tag & 0x80 == 0 {
            // Small descriptor: type in bits 3-6, length in bits 0-2.
            let len = (tag & 7) as usize;
            if tag >> 3 == 0x08 {
                // I/O port descriptor: decode, min, max, alignment, length.
                r.io.push((u16::from_le_bytes([b[i + 2], b[i + 3]]), b[i + 7]));
            }
            i += 1 + len;
        } else {
            let len = u16::from_le_bytes([b[i + 1], b[i + 2]]) as usize;
            let body = &b[i + 3..i + 3 + len];
            match tag {
                0x86 => r.memory.push((
                    u32::from_le_bytes(body[1..5].try_into().unwrap()),
                    u32::from_le_bytes(body[5..9].try_into().unwrap()),
                    body[0] & 1 == 1,
                )),
                0x89 => {
                    assert_eq!(body[1], 1, "one interrupt per descriptor");
                    r.irqs
                        .push((u32::from_le_bytes(body[2..6].try_into().unwrap()), body[0]));
                }
                other => panic!("unexpected resource descriptor {other:#x}"),
            }
            i += 3 + len;
        }
    }
    r
}

/// Extended interrupt flags (6.4.3.6): consumer (bit 0) and edge-triggered (bit 1),
/// active-high (bit 2 clear), exclusive (bit 3 clear).
const IRQ_CONSUMER_EDGE_HIGH: u8 = 0b0011;

#[test]
fn iasl_decodes_every_table() {
    if !have_acpica() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dump(
        dir.path(),
        &[
            "--vcpus",
            "3",
            "--device-discovery",
            "acpi",
            "--drive",
            "path=/dev/null",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut want: Vec<String> = TABLES.iter().map(|t| format!("{t}.dat")).collect();
    want.sort();
    assert_eq!(files, want);

    // The RSDP is not a table with a header, which iasl 2020's file loader insists on: it is
    // checked here (5.2.5.3): signature, both checksums, OEM id, revision 2, and the XSDT
    // address is where the XSDT lies (the tables are laid out from 0xe0000 in dump order).
    let rsdp = std::fs::read(dir.path().join("RSDP.dat")).unwrap();
    assert_eq!(rsdp.len(), 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    assert_eq!(rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    assert_eq!(&rsdp[9..15], b"AMIVM ");
    assert_eq!(rsdp[15], 2);
    let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
    assert!((0xe0000..0x100000).contains(&xsdt_addr), "{xsdt_addr:#x}");

    for t in TABLES.iter().filter(|t| **t != "RSDP") {
        let out = run_in(dir.path(), "iasl", &["-d", &format!("{t}.dat")]);
        assert_eq!(out.code, Some(0), "iasl -d {t}.dat: {}", out.describe());
        let dsl = std::fs::read_to_string(dir.path().join(format!("{t}.dsl"))).unwrap();
        assert!(dsl.contains("\"AMIVM \""), "{t}: OEM id: {dsl}");
        assert!(!dsl.to_lowercase().contains("error"), "{t}: {dsl}");
    }
    let read = |t: &str| std::fs::read_to_string(dir.path().join(format!("{t}.dsl"))).unwrap();
    let fadt = read("FACP");
    for line in [
        "Hardware Reduced (V5) : 1",
        "Reset Register Supported (V2) : 1",
        "Value to cause reset : 01",
    ] {
        assert!(fadt.contains(line), "FADT lacks {line:?}: {fadt}");
    }
    // Sleep control, sleep status and reset registers: one-byte I/O registers at 0x600-0x602.
    for port in [ACPI_PM_PORT, ACPI_PM_PORT + 1, ACPI_PM_PORT + 2] {
        assert!(
            fadt.contains(&format!("Address : {port:016X}")),
            "FADT has no register at {port:#x}: {fadt}"
        );
    }
    let madt = read("APIC");
    assert_eq!(madt.matches("Processor Local APIC").count(), 3, "{madt}");
    assert_eq!(madt.matches("[I/O APIC]").count(), 1, "{madt}");
    let xsdt = read("XSDT");
    assert_eq!(xsdt.matches("ACPI Table Address").count(), 2, "{xsdt}");
    let dsdt = read("DSDT");
    for needle in [
        "\"LNRO0005\"",
        "EisaId (\"PNP0501\")",
        "\"ACPI0013\"",
        "EisaId (\"PNP0C0C\")",
        "Name (\\_S5,",
        "Notify (\\_SB.PWRB, 0x80)",
    ] {
        assert!(dsdt.contains(needle), "DSDT lacks {needle}: {dsdt}");
    }
}

#[test]
fn acpiexec_evaluates_s5_and_each_devices_resources() {
    if !have_acpica() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let drives = 3;
    let mut args = vec!["--device-discovery", "acpi"];
    for _ in 0..drives {
        args.extend(["--drive", "path=/dev/null"]);
    }
    let out = dump(dir.path(), &args);
    assert_eq!(out.code, Some(0), "{}", out.describe());

    // \_S5_: SLP_TYPa is 5, what the power-management device turns into a power-off.
    let s5 = evaluate(dir.path(), "\\_S5_", &[]);
    let ints: Vec<u64> = s5
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[Integer] = "))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .collect();
    assert_eq!(ints, [5, 0, 0, 0], "{s5}");

    // One LNRO0005 device per drive, at the window and GSI amivm uses.
    for n in 0..drives {
        let path = format!("\\_SB.VR{n:02X}");
        let hid = evaluate(dir.path(), &format!("{path}._HID"), &[]);
        assert!(hid.contains("\"LNRO0005\""), "{hid}");
        let crs = parse_crs(&buffer_bytes(&evaluate(
            dir.path(),
            &format!("{path}._CRS"),
            &[],
        )));
        assert_eq!(
            crs,
            Resources {
                memory: vec![(
                    VIRTIO_MMIO_START + n * VIRTIO_MMIO_SIZE,
                    VIRTIO_MMIO_SIZE,
                    true
                )],
                io: vec![],
                irqs: vec![(VIRTIO_FIRST_GSI + n, IRQ_CONSUMER_EDGE_HIGH)],
            },
            "{path}"
        );
    }
    let missing = run_in(
        dir.path(),
        "acpiexec",
        &[
            "-b",
            &format!("evaluate \\_SB.VR{drives:02X}._CRS"),
            "DSDT.dat",
        ],
    );
    assert!(
        missing.stdout.contains("AE_NOT_FOUND"),
        "a device for a drive that is not there: {}",
        missing.describe()
    );

    // COM1: ports 0x3f8-0x3ff, IRQ 4.
    let com1 = parse_crs(&buffer_bytes(&evaluate(dir.path(), "\\_SB.COM1._CRS", &[])));
    assert_eq!(com1.io, [(0x3f8, 8)]);
    assert_eq!(com1.irqs, [(4, IRQ_CONSUMER_EDGE_HIGH)]);

    // The GED's interrupt, and its _EVT: with the event register reading the power-button
    // bit (acpiexec fills simulated regions with -fv) it notifies PWRB; with 0, nothing.
    let ged = parse_crs(&buffer_bytes(&evaluate(dir.path(), "\\_SB.GED._CRS", &[])));
    assert_eq!(ged.irqs, [(GED_GSI, IRQ_CONSUMER_EDGE_HIGH)]);
    let pressed = evaluate(dir.path(), "\\_SB.GED._EVT 3", &["-fv", "1"]);
    assert!(
        pressed.contains("Notify on [PWRB]") && pressed.contains("Value 0x80"),
        "{pressed}"
    );
    let idle = evaluate(dir.path(), "\\_SB.GED._EVT 3", &["-fv", "0"]);
    assert!(!idle.contains("Notify on"), "{idle}");
}

/// With `cmdline` discovery the virtio-mmio devices are not in the DSDT (the kernel finds them
/// on its command line, once); COM1, the GED and `\_S5_` are.
#[test]
fn cmdline_discovery_leaves_virtio_out_of_the_dsdt() {
    if !have_acpica() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dump(dir.path(), &["--drive", "path=/dev/null"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let out = run_in(dir.path(), "iasl", &["-d", "DSDT.dat"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let dsdt = std::fs::read_to_string(dir.path().join("DSDT.dsl")).unwrap();
    assert!(!dsdt.contains("LNRO0005"), "{dsdt}");
    for needle in ["PNP0501", "ACPI0013", "PNP0C0C", "_S5"] {
        assert!(dsdt.contains(needle), "DSDT lacks {needle}: {dsdt}");
    }
}

/// Bad `--dump-acpi` input fails with one line and exit 125.
#[test]
fn dump_acpi_rejects_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [
        &["--vcpus", "0"][..],
        &["--vcpus", "300"][..],
        &[
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
            "--drive",
            "path=/dev/null",
        ][..],
    ] {
        let out = dump(&dir.path().join("t"), args);
        assert_eq!(out.code, Some(125), "{args:?}: {}", out.describe());
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
    }
    // A file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = dump(&file, &[]);
    assert_eq!(out.code, Some(125), "{}", out.describe());
}
