//! `amivm boot --network` (issue 10) with the test guest: the network card is announced where
//! the drives' slots end (command line or DSDT), passt is started and the guest runs as before;
//! a taken published port, a missing passt and bad words are one clear error before boot.

mod common;

use common::report::Report;
use common::{build_guest, on_path, run_with_deadline, skip_note, RunOutput};
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
/// Exit status of an error before the guest runs (README: amivm failed).
const EXIT_AMIVM_FAILED: i32 = 125;

fn amivm(args: &[&str], path: Option<&str>) -> RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.arg("boot")
        .arg("--kernel")
        .arg(build_guest())
        .args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    run_with_deadline(cmd, DEADLINE)
}

#[track_caller]
fn expect_code(out: &RunOutput, code: i32) {
    assert_eq!(out.code, Some(code), "amivm exit code: {}", out.describe());
}

#[track_caller]
fn last_stderr_line(out: &RunOutput) -> String {
    out.stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("nothing on stderr: {}", out.describe()))
        .to_lowercase()
}

#[test]
fn user_network_card_is_announced_after_the_drives_and_the_guest_runs() {
    if !on_path("passt") {
        return skip_note("user_network: passt is not installed");
    }
    let out = amivm(&["--network", "user", "--append", "exit_code=0"], None);
    expect_code(&out, 0);
    let report = Report::from_run(&out);
    let cmdline = report.str("cmdline");
    assert!(
        cmdline.contains("virtio_mmio.device=4K@0xc0000000:5"),
        "no network card on the command line: {cmdline}"
    );
    // With a drive the card takes the next slot.
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("path={}", disk.display());
    let out = amivm(
        &[
            "--network",
            "none",
            "--mac",
            "02:00:00:00:00:01",
            "--drive",
            &drive,
        ],
        None,
    );
    expect_code(&out, 0);
    let cmdline = Report::from_run(&out).str("cmdline").to_string();
    assert!(
        cmdline.contains("virtio_mmio.device=4K@0xc0001000:6"),
        "{cmdline}"
    );
}

#[test]
fn the_dsdt_describes_the_network_card() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = amivm(
        &[
            "--network",
            "user",
            "--device-discovery",
            "acpi",
            "--dump-acpi",
            d,
        ],
        None,
    );
    expect_code(&out, 0);
    let dsdt = std::fs::read(dir.path().join("DSDT.dat")).unwrap();
    let n = dsdt.windows(8).filter(|w| *w == b"LNRO0005").count();
    assert_eq!(n, 1, "one virtio-mmio device in the DSDT");
}

#[test]
fn a_taken_published_port_is_refused_before_boot() {
    if !on_path("passt") {
        return skip_note("publish_taken: passt is not installed");
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let spec = format!("127.0.0.1:{port}:22");
    let out = amivm(&["--network", "user", "--publish", &spec], None);
    expect_code(&out, EXIT_AMIVM_FAILED);
    let line = last_stderr_line(&out);
    assert!(
        line.contains("already in use") && line.contains(&port.to_string()),
        "{line}"
    );
    assert!(
        !out.stdout.contains("cmdline="),
        "the guest ran: {}",
        out.describe()
    );
}

#[test]
fn missing_passt_names_the_debian_package() {
    let empty = tempfile::tempdir().unwrap();
    let out = amivm(&["--network", "user"], empty.path().to_str());
    expect_code(&out, EXIT_AMIVM_FAILED);
    let line = last_stderr_line(&out);
    assert!(line.contains("package `passt`"), "{line}");
}

#[test]
fn bad_network_words_are_one_line_errors() {
    for args in [
        &["--network", "tap:a/b"][..],
        &["--network", "bridge"],
        &["--publish", "70000:22"],
        &["--mac", "01:00:00:00:00:01"],
    ] {
        let out = amivm(args, None);
        expect_code(&out, EXIT_AMIVM_FAILED);
        assert!(
            !out.stdout.contains("cmdline="),
            "the guest ran: {}",
            out.describe()
        );
        assert!(
            last_stderr_line(&out).contains(args[0]),
            "{}",
            out.describe()
        );
    }
    // --publish needs the user network.
    let out = amivm(&["--network", "none", "--publish", "8080:80"], None);
    expect_code(&out, EXIT_AMIVM_FAILED);
    assert!(last_stderr_line(&out).contains("--network user"));
}
