//! Debian's stock cloud kernel through its early boot under `amivm boot`: the kernel's own
//! lines show how it understood our boot protocol (command line, e820 map, CPUs) and our ACPI
//! tables. It boots with `--device-discovery acpi` and a drive, as an image of a real OS would
//! (its virtio-mmio driver is a module without command-line devices): the kernel lists the
//! RSDP, XSDT, FADT, DSDT and MADT with amivm's OEM id, and gets no `virtio_mmio.device=`.
//!
//! The vmlinux comes from `scripts/fetch-debian-kernel.sh` (run by `.ci/run`), found through
//! `AMIVM_DEBIAN_VMLINUX` or at `.cache/debian-kernel/vmlinux`. On this project's hosts KVM
//! runs the kernel through its instruction emulator, so the test reads the console as it
//! streams and stops the VM once the lines it checks have appeared (~10 s of guest time); with
//! hardware KVM the same lines come at once.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn debian_vmlinux() -> PathBuf {
    common::cached_file(
        "AMIVM_DEBIAN_VMLINUX",
        ".cache/debian-kernel/vmlinux",
        "scripts/fetch-debian-kernel.sh",
    )
}

/// Parse `BIOS-e820: [mem 0x...-0x...] usable` lines into (start, end inclusive, kind).
fn e820_lines(log: &str) -> Vec<(u64, u64, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("BIOS-e820: [mem ")? + 16..];
            let (range, kind) = rest.split_once("] ")?;
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()?,
                u64::from_str_radix(b.trim_start_matches("0x"), 16).ok()?,
                kind.trim().to_string(),
            ))
        })
        .collect()
}

/// The `ACPI: SIG 0x... (vNN OEMID ...)` line the kernel prints for a table, if any.
fn acpi_table_line<'a>(log: &'a str, sig: &str) -> Option<&'a str> {
    let needle = format!("ACPI: {sig} 0x");
    log.lines().find(|l| l.contains(&needle))
}

#[test]
fn debian_kernel_reports_our_boot_protocol() {
    let vmlinux = debian_vmlinux();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk");
    let drive = format!("path={}", disk.display());
    let marker = format!("amivm_marker={}", std::process::id());
    let cmdline = format!("console=ttyS0 earlyprintk=ttyS0 noxsave reboot=k panic=1 {marker}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(["boot", "--kernel"]).arg(&vmlinux).args([
        "--vcpus",
        "2",
        "--memory",
        "512",
        "--timeout",
        "240",
        "--cmdline",
        &cmdline,
        "--device-discovery",
        "acpi",
        "--drive",
        &drive,
    ]);
    let console = common::console_until(cmd, "smpboot: Allowing", Duration::from_secs(300));
    let log = console.log.clone();
    let ctx = console.describe();

    let cmd_line = log
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_else(|| panic!("no Command line: {ctx}"));
    assert!(cmd_line.contains(&marker), "marker missing: {ctx}");
    assert!(cmd_line.contains("root=/dev/vda"), "root device: {ctx}");
    assert!(
        !cmd_line.contains("virtio_mmio.device"),
        "ACPI discovery must not add device arguments: {ctx}"
    );
    // The kernel lists every table it found, with amivm's OEM id: the RSDP at the address the
    // zero page gives, then the XSDT and what it points at.
    let rsdp = acpi_table_line(&log, "RSDP").unwrap_or_else(|| panic!("no ACPI: RSDP: {ctx}"));
    assert!(
        rsdp.contains("0x00000000000E0000") && rsdp.contains("AMIVM"),
        "RSDP: {ctx}"
    );
    for sig in ["XSDT", "FACP", "DSDT", "APIC"] {
        let line = acpi_table_line(&log, sig).unwrap_or_else(|| panic!("no ACPI: {sig}: {ctx}"));
        assert!(line.contains("AMIVM  MICROVM"), "{sig} OEM ids: {ctx}");
    }

    let map = e820_lines(&log);
    assert!(!map.is_empty(), "no BIOS-e820 lines: {ctx}");
    let usable: u64 = map
        .iter()
        .filter(|e| e.2 == "usable")
        .map(|e| e.1 - e.0 + 1)
        .sum();
    // 512 MiB minus the holes amivm documents: [0x9fc00, 0x100000) (the MP table area and the
    // legacy VGA/BIOS hole).
    assert_eq!(
        usable,
        (512 << 20) - (0x100000 - 0x9fc00),
        "usable RAM: {ctx}"
    );
    assert!(
        map.iter().any(|e| e.0 == 0x9fc00 && e.2 == "reserved"),
        "MP table area not reserved: {ctx}"
    );

    assert!(log.contains("smpboot: Allowing 2 CPUs"), "CPU count: {ctx}");
    // This kernel is built without CONFIG_X86_MPPARSE: it counts CPUs from our ACPI MADT.
    assert!(
        log.contains("ACPI: Using ACPI (MADT) for SMP configuration information"),
        "MADT: {ctx}"
    );
    assert!(
        log.contains("Hypervisor detected: KVM"),
        "hypervisor: {ctx}"
    );
}
