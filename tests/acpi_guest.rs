//! ACPI from inside a guest (issue 9): the test guest walks RSDP -> XSDT -> FADT/MADT/DSDT as a
//! kernel does, checks every checksum, counts the CPUs of the MADT, finds `\_S5_` and powers
//! off through the FADT's sleep control register, or resets through its reset register.
//! - under `amivm boot` (both entries): the VM ends with 0;
//! - the same guest on QEMU's microvm with `acpi=on` (the third-party reference) powers QEMU
//!   off the same way;
//! - the host's stop request: with `--device-discovery acpi` SIGTERM presses the power button
//!   through the Generic Event Device, and a guest polling its register powers off (exit 0); a
//!   guest that ignores it is stopped after the grace period (130); with `cmdline` discovery
//!   the GED stays silent (Ctrl-Alt-Del goes to the i8042 instead);
//! - device discovery: with `acpi` no `virtio_mmio.device=` argument reaches the kernel.
//!
//! The instance side (images with `--device-discovery acpi`, `amivm stop`) is in
//! tests/acpi_instance.rs.

mod common;

use common::{
    build_guest, on_path, qemu_debug_exit_status, qemu_microvm, run_with_deadline, Report,
    RunOutput, QEMU,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The test's limit on one VM run.
const DEADLINE: Duration = Duration::from_secs(90);
/// amivm's exit code when the host stopped the VM.
const EXIT_HOST_STOPPED: i32 = 130;
/// Where amivm puts the RSDP (src/vmm/layout.rs `ACPI_START`).
const AMIVM_RSDP: u64 = 0xe0000;
/// amivm's sleep control register and GED register (src/vmm/layout.rs).
const AMIVM_SLEEP_CONTROL: &str = "io:0x600";
const AMIVM_GED: &str = "io:0x604";
/// The GED event bit of the power button (src/vmm/devices/acpi.rs).
const GED_EVENT_POWER_BUTTON: u64 = 1;

fn amivm(args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(["boot", "--timeout", "60", "--kernel"])
        .arg(build_guest())
        .args(args);
    run_with_deadline(cmd, DEADLINE)
}

/// What every ACPI walk must show: the tables found and their checksums right, the MADT's
/// CPUs, a hardware-reduced FADT, `\_S5_` with SLP_TYP 5, no error.
#[track_caller]
fn check_walk(r: &Report, oem: &str, cpus: u64) {
    r.expect_str("acpi_oem", oem);
    let tables = r.records("acpi_table");
    let sigs: Vec<&str> = tables.iter().filter_map(|t| t.field("sig")).collect();
    for want in ["XSDT", "FACP", "DSDT", "APIC"] {
        r.check(sigs.contains(&want), &format!("{want} not found"));
    }
    for t in &tables {
        r.check(t.field("checksum") == Some("ok"), "a table checksum is bad");
        r.check(t.field("oem") == Some(oem), "a table has another OEM id");
    }
    r.expect_num("acpi_madt_cpus", cpus);
    r.expect_num("acpi_hw_reduced", 1);
    r.expect_num("acpi_s5_slp_typ", 5);
    r.check(
        r.get("acpi_error").is_none(),
        "the guest reported an ACPI error",
    );
}

#[test]
fn guest_walks_the_tables_and_powers_off_under_amivm() {
    for (protocol, vcpus) in [("linux", 1u64), ("pvh", 3)] {
        let v = vcpus.to_string();
        let out = amivm(&[
            "--boot-protocol",
            protocol,
            "--vcpus",
            &v,
            "--append",
            "exit=poweroff",
        ]);
        assert_eq!(out.code, Some(0), "{protocol}: {}", out.describe());
        assert!(out.stderr.trim().is_empty(), "{}", out.describe());
        let r = Report::from_run(&out);
        check_walk(&r, "AMIVM", vcpus);
        r.expect_num("acpi_rsdp", AMIVM_RSDP);
        r.expect_str("acpi_rsdp_from", "bootinfo");
        r.expect_str("acpi_sleep_control", AMIVM_SLEEP_CONTROL);
        r.expect_str("acpi_ged", AMIVM_GED);
        r.expect_str("exit", "poweroff");
    }
    // Found by a scan of the BIOS area too, as a kernel without the loader's pointer does.
    let out = amivm(&["--append", "acpi=scan exit_code=0"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    r.expect_num("acpi_rsdp", AMIVM_RSDP);
    r.expect_str("acpi_rsdp_from", "scan");
    check_walk(&r, "AMIVM", 1);
    // The FADT's reset register ends the VM as the i8042 reset does.
    let out = amivm(&["--append", "exit=acpi-reset"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    r.expect_str("exit", "acpi-reset");
    r.expect_str("acpi_reset_reg", "io:0x602");
    r.check(r.get("acpi_error").is_none(), "reset did not end the VM");
}

#[test]
fn the_same_guest_powers_qemu_off() {
    if !on_path(QEMU) {
        common::skip_note(&format!("{QEMU} is not installed"));
        return;
    }
    let guest = build_guest();
    for (action, scan) in [
        ("poweroff", false),
        ("poweroff", true),
        ("acpi-reset", false),
    ] {
        let append = format!("exit={action}{}", if scan { " acpi=scan" } else { "" });
        let cmd = qemu_microvm(&guest, 2, 128, &append, true);
        let out = run_with_deadline(cmd, DEADLINE);
        // Not the exit port: QEMU powered off (or reset under -no-reboot) and exited with 0.
        assert_eq!(out.code, Some(0), "{append}: {}", out.describe());
        assert_ne!(out.code, Some(qemu_debug_exit_status(0)));
        let r = Report::from_run(&out);
        check_walk(&r, "BOCHS", 2);
        r.expect_str("acpi_rsdp_from", if scan { "scan" } else { "bootinfo" });
        r.expect_str("exit", action);
    }
}

/// `amivm boot ARGS` streaming its console: waits for `marker`, sends SIGTERM, and returns
/// how the run ended and how long after the signal.
fn sigterm_after(args: &[&str], marker: &str) -> (RunOutput, Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_amivm"))
        .args(["boot", "--timeout", "60", "--kernel"])
        .arg(build_guest())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn amivm");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let t0 = Instant::now();
    let mut log = String::new();
    while !log.contains(marker) && t0.elapsed() < DEADLINE {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            log.push_str(&l);
            log.push('\n');
        }
    }
    assert!(log.contains(marker), "no {marker:?} in:\n{log}");
    // SAFETY: kill only reads its arguments; the pid is our own child, not yet waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if signalled.elapsed() > DEADLINE {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let after = signalled.elapsed();
    let _ = reader.join();
    log.extend(rx.try_iter().map(|l| l + "\n"));
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    let out = RunOutput {
        code: status.code(),
        stdout: log,
        stderr,
        elapsed: t0.elapsed(),
        killed: false,
    };
    (out, after)
}

#[test]
fn sigterm_presses_the_acpi_power_button() {
    // A guest that polls the GED sees the power button and powers off: a clean stop, exit 0,
    // long before the grace period ends.
    let (out, after) = sigterm_after(
        &[
            "--device-discovery",
            "acpi",
            "--stop-grace",
            "30",
            "--append",
            "exit=ged",
        ],
        "ged_polling=",
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(after < Duration::from_secs(20), "took {after:?}");
    let r = Report::from_run(&out);
    r.expect_num("ged_event", GED_EVENT_POWER_BUTTON);
    r.expect_str("exit", "poweroff");

    // A guest that ignores it is stopped once the grace period is over.
    let (out, after) = sigterm_after(
        &[
            "--device-discovery",
            "acpi",
            "--stop-grace",
            "1",
            "--append",
            "exit=hang",
        ],
        "exit=hang",
    );
    assert_eq!(out.code, Some(EXIT_HOST_STOPPED), "{}", out.describe());
    assert!(after >= Duration::from_secs(1), "stopped after {after:?}");

    // Without ACPI discovery the host sends Ctrl-Alt-Del instead: the GED stays silent.
    let (out, after) = sigterm_after(
        &["--stop-grace", "1", "--append", "exit=ged"],
        "ged_polling=",
    );
    assert_eq!(out.code, Some(EXIT_HOST_STOPPED), "{}", out.describe());
    assert!(after >= Duration::from_secs(1), "stopped after {after:?}");
    assert!(!out.stdout.contains("ged_event="), "{}", out.describe());

    // Without --stop-grace, SIGTERM stops at once, as before.
    let (out, after) = sigterm_after(
        &["--device-discovery", "acpi", "--append", "exit=ged"],
        "ged_polling=",
    );
    assert_eq!(out.code, Some(EXIT_HOST_STOPPED), "{}", out.describe());
    assert!(after < Duration::from_secs(5), "took {after:?}");
}

/// Each disk is announced once: on the command line with `cmdline` discovery, only in the DSDT
/// with `acpi` (the guest reports the command line it got).
#[test]
fn acpi_discovery_adds_no_device_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk");
    let drive = format!("path={}", disk.display());
    for (mode, want) in [("cmdline", true), ("acpi", false)] {
        let out = amivm(&[
            "--device-discovery",
            mode,
            "--drive",
            &drive,
            "--append",
            "exit_code=0",
        ]);
        assert_eq!(out.code, Some(0), "{mode}: {}", out.describe());
        let r = Report::from_run(&out);
        let cmdline = r.str("cmdline");
        assert_eq!(
            cmdline.contains("virtio_mmio.device=4K@0xc0000000:5"),
            want,
            "{mode}: {cmdline}"
        );
        assert!(cmdline.contains("root=/dev/vda"), "{mode}: {cmdline}");
    }
    let out = amivm(&["--device-discovery", "pci"]);
    assert_eq!(out.code, Some(125), "{}", out.describe());
}
