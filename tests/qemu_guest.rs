//! The test guest on a third-party VMM: QEMU's microvm machine boots it through its PVH entry
//! and it must print the same report it prints under `amivm boot` (issue 2, test item 3). This
//! checks the guest itself (and so what tests/boot_guest.rs concludes from it) against QEMU.
//!
//! Skipped, with a printed reason, only when qemu-system-x86_64 is not installed.

mod common;

use common::{
    build_guest, on_path, qemu_command, qemu_debug_exit_status, run_with_deadline, Expect, Report,
    RunOutput, QEMU,
};
use std::time::Duration;

/// Generous limit for one QEMU boot (~0.2 s here) so a wedged guest fails instead of hanging.
const QEMU_DEADLINE: Duration = Duration::from_secs(60);

fn have_qemu() -> bool {
    if on_path(QEMU) {
        return true;
    }
    common::skip_note(&format!(
        "{QEMU} is not installed (apt-get install qemu-system-x86)"
    ));
    false
}

fn qemu(vcpus: u32, mem_mib: u64, append: &str) -> RunOutput {
    let guest = build_guest();
    run_with_deadline(qemu_command(&guest, vcpus, mem_mib, append), QEMU_DEADLINE)
}

/// Boot on QEMU and check the whole report and the exit status.
fn check_boot(vcpus: u32, mem_mib: u64) {
    let cmdline = format!("console=ttyS0 marker=q{vcpus}x{mem_mib} exit_code=5");
    let out = qemu(vcpus, mem_mib, &cmdline);
    assert_eq!(
        out.code,
        Some(qemu_debug_exit_status(5)),
        "QEMU should leave through isa-debug-exit with 5: {}",
        out.describe()
    );
    let report = Report::from_run(&out);
    report.check_common(&Expect {
        boot: "pvh",
        vcpus,
        mem_mib,
        cmdline: &cmdline,
    });
    // qboot (microvm's firmware) builds the MP table; its header entry count is never filled
    // (see tests/guest/README.md), but the walked table holds the CPUs, the bus, the I/O APIC,
    // the ISA interrupts and two local interrupt entries.
    report.expect_num("mptable_entry_count", 0);
    let irqs = report.num("mptable_irqs");
    report.check(
        (15..=16).contains(&irqs),
        "qboot describes 15 or 16 ISA interrupts",
    );
    report.expect_num(
        "mptable_entries",
        u64::from(vcpus) + 1 /* bus */ + 1 /* ioapic */ + irqs + 2, /* lints */
    );
    report.expect_str("exit", "5");
}

#[test]
fn qemu_pvh_1_vcpu_128_mib() {
    if have_qemu() {
        check_boot(1, 128);
    }
}

#[test]
fn qemu_pvh_2_vcpus_1024_mib() {
    if have_qemu() {
        check_boot(2, 1024);
    }
}

#[test]
fn qemu_pvh_4_vcpus_5120_mib_split_around_the_gap() {
    if have_qemu() {
        check_boot(4, 5120);
    }
}

/// The guest's other ways out behave on QEMU as the guest documents: exit code 0 through the
/// port, the i8042 reset and a triple fault both end the VM (QEMU status 0 with -no-reboot),
/// the panic line is printed.
#[test]
fn qemu_exit_paths() {
    if !have_qemu() {
        return;
    }
    let out = qemu(1, 128, "exit_code=0");
    assert_eq!(
        out.code,
        Some(qemu_debug_exit_status(0)),
        "{}",
        out.describe()
    );

    for action in ["reset", "triple"] {
        let out = qemu(2, 128, &format!("exit={action}"));
        assert_eq!(out.code, Some(0), "exit={action}: {}", out.describe());
        let report = Report::from_run(&out);
        report.expect_str("exit", action);
        report.expect_num("cpus_up", 2);
    }

    // A panicking guest halts; QEMU does not watch the console, so stop it at a short deadline.
    let guest = build_guest();
    let out = run_with_deadline(
        qemu_command(&guest, 1, 128, "exit=panic"),
        Duration::from_secs(3),
    );
    assert!(out.killed, "exit=panic must not leave: {}", out.describe());
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_end() == "Kernel panic - not syncing: test"),
        "{}",
        out.describe()
    );
}

/// The initrd reaches the guest through PVH module 0 with its exact bytes.
#[test]
fn qemu_initrd_reaches_the_guest() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
    let path = dir.path().join("initrd.bin");
    std::fs::write(&path, &initrd).expect("writing the initrd");
    let guest = build_guest();
    let mut cmd = qemu_command(&guest, 1, 256, "exit_code=0");
    cmd.arg("-initrd").arg(&path);
    let out = run_with_deadline(cmd, QEMU_DEADLINE);
    assert_eq!(
        out.code,
        Some(qemu_debug_exit_status(0)),
        "{}",
        out.describe()
    );
    let report = Report::from_run(&out);
    report.expect_num("initrd_size", initrd.len() as u64);
    report.expect_num("initrd_sum", common::sum64(&initrd));
}
