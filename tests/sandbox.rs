//! The VM process's sandbox (issue 13): every VM thread runs under its seccomp filter, a denied
//! call stops the process with the documented line, Landlock hides the file system once the
//! guest runs, and the resource limits are in place. Checked on a live `amivm boot` of the test
//! guest through /proc, as an administrator would.

mod common;

use common::{build_guest, run_with_deadline};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);
/// Exit code when amivm itself fails (README), here: a thread made a forbidden system call.
const EXIT_AMIVM_FAILED: i32 = 125;
/// The guest's own exit status for these boots (through the exit port).
const GUEST_EXIT: i32 = 7;

fn boot(extra: &[&str]) -> common::RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.arg("boot")
        .arg("--kernel")
        .arg(build_guest())
        .args(["--cmdline", "console=ttyS0 exit_code=7", "--timeout", "60"])
        .args(extra);
    run_with_deadline(cmd, DEADLINE)
}

/// A vCPU thread that makes a call outside its list (socket(2), through the test hook) ends the
/// process with 125 and one line naming the thread and the call.
#[test]
fn a_forbidden_call_on_a_vcpu_thread_stops_the_process_with_the_documented_line() {
    let out = boot(&["--x-sandbox-test", "vcpu-syscall"]);
    assert_eq!(out.code, Some(EXIT_AMIVM_FAILED), "{}", out.describe());
    assert!(
        out.stderr
            .contains("amivm: seccomp: the vCPU thread made a forbidden system call (number 41)"),
        "{}",
        out.describe()
    );
    // The same probe without the filters: the guest runs to its own end.
    let out = boot(&["--x-sandbox-test", "vcpu-syscall", "--no-seccomp"]);
    assert_eq!(out.code, Some(GUEST_EXIT), "{}", out.describe());
}

/// Once the guest runs, the VM process cannot open files it was not given, even ones every
/// user may read.
#[test]
fn landlock_denies_opening_a_file_outside_the_allowed_set() {
    let out = boot(&["--x-sandbox-test", "open:/etc/hostname"]);
    assert_eq!(out.code, Some(GUEST_EXIT), "{}", out.describe());
    assert!(
        out.stderr
            .contains("amivm: sandbox test: open /etc/hostname: Permission denied"),
        "{}",
        out.describe()
    );
    assert!(
        std::fs::read("/etc/hostname").is_ok(),
        "the test itself can read it"
    );
}

/// Read one `Name:\tvalue` line of a /proc status file.
fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// While a 2-vCPU guest with a drive runs: every thread is in seccomp filter mode, no_new_privs
/// is set, and the open-files and address-space limits are finite.
#[test]
fn every_thread_of_a_running_vm_is_filtered_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_amivm"))
        .arg("boot")
        .arg("--kernel")
        .arg(build_guest())
        .args([
            "--vcpus",
            "2",
            "--cmdline",
            "console=ttyS0 exit=hang",
            "--timeout",
            "60",
        ])
        .arg("--drive")
        .arg(format!("path={}", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let task_dir = format!("/proc/{pid}/task");
    // Wait until the vCPU threads and the device thread exist and have their filters.
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while t0.elapsed() < Duration::from_secs(30) {
        seen.clear();
        for t in std::fs::read_dir(&task_dir).unwrap().flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let name = status_field(&status, "Name").unwrap_or_default();
            let mode = status_field(&status, "Seccomp").unwrap_or_default();
            seen.push((name, mode, status));
        }
        let vcpus = seen
            .iter()
            .filter(|(n, _, _)| n.starts_with("vcpu"))
            .count();
        if vcpus == 2
            && seen.iter().any(|(n, _, _)| n == "virtio")
            && seen.iter().all(|(_, m, _)| m == "2")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let names: Vec<_> = seen.iter().map(|(n, m, _)| format!("{n}={m}")).collect();
    assert!(
        seen.iter().all(|(_, m, _)| m == "2"),
        "every thread in seccomp filter mode (2): {names:?}"
    );
    assert!(
        seen.iter().any(|(n, _, _)| n == "virtio")
            && seen
                .iter()
                .filter(|(n, _, _)| n.starts_with("vcpu"))
                .count()
                == 2,
        "threads: {names:?}"
    );
    for (name, _, status) in &seen {
        assert_eq!(
            status_field(status, "NoNewPrivs").as_deref(),
            Some("1"),
            "{name}: no_new_privs"
        );
    }
    for limit in ["Max open files", "Max address space"] {
        let line = limits.lines().find(|l| l.starts_with(limit)).unwrap();
        assert!(!line.contains("unlimited"), "{line}");
    }
}
