//! `amivm boot` with bad input: each case ends with exit code 125 and one clear line on stderr,
//! quickly, without touching the files it was given.

mod common;

use common::{build_guest, run_with_deadline};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn amivm(args: &[&str]) -> common::RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(args);
    run_with_deadline(cmd, Duration::from_secs(30))
}

/// Assert exit 125 and that stderr's error line mentions every `needle`.
fn assert_fails(args: &[&str], needles: &[&str]) {
    let out = amivm(args);
    assert_eq!(out.code, Some(125), "{args:?}: {}", out.describe());
    let line = out
        .stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_string();
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "{args:?}: stderr lacks {n:?}: {}",
            out.describe()
        );
    }
    assert!(!line.is_empty(), "{args:?}: no message");
    assert!(
        out.stdout.is_empty(),
        "{args:?}: guest output on a failed start: {}",
        out.describe()
    );
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot_errors");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn missing_and_wrong_kernels() {
    assert_fails(
        &["boot", "--kernel", "/nonexistent/vmlinux"],
        &["/nonexistent/vmlinux", "No such file"],
    );
    let text = tmp("not-a-kernel");
    std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
    assert_fails(
        &["boot", "--kernel", text.to_str().unwrap()],
        &["neither an ELF vmlinux nor a bzImage"],
    );
    // A 32-bit ELF: the ELF header of /bin/true, patched to ELFCLASS32 / EM_386.
    let mut elf = std::fs::read("/bin/true").unwrap()[..64].to_vec();
    elf[4] = 1;
    elf[18] = 3;
    elf[19] = 0;
    let e32 = tmp("i386.elf");
    std::fs::write(&e32, &elf).unwrap();
    assert_fails(
        &["boot", "--kernel", e32.to_str().unwrap()],
        &["another machine", "x86_64"],
    );
    // A bzImage header with boot protocol 2.11 (too old for the 64-bit entry).
    let mut bz = vec![0u8; 4096];
    bz[0x1f1] = 1; // setup_sects
    bz[0x1fe] = 0x55;
    bz[0x1ff] = 0xaa;
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020bu16.to_le_bytes());
    let old = tmp("old-bzimage");
    std::fs::write(&old, &bz).unwrap();
    assert_fails(
        &["boot", "--kernel", old.to_str().unwrap()],
        &["boot protocol 2.11", "2.12"],
    );
}

#[test]
fn bad_sizes_and_counts() {
    let g = build_guest();
    let g = g.to_str().unwrap();
    assert_fails(
        &["boot", "--kernel", g, "--memory", "8"],
        &["--memory 8 MiB is too small", "16 MiB"],
    );
    assert_fails(
        &["boot", "--kernel", g, "--memory", "999999999999"],
        &["beyond what the guest can address"],
    );
    assert_fails(
        &["boot", "--kernel", g, "--vcpus", "0"],
        &["--vcpus 0 is out of range"],
    );
    assert_fails(
        &["boot", "--kernel", g, "--vcpus", "100000"],
        &["--vcpus 100000 is out of range"],
    );
    assert_fails(
        &["boot", "--kernel", g, "--timeout", "0"],
        &["--timeout 0 must be a positive number"],
    );
    assert_fails(
        &["boot", "--kernel", g, "--memory", "lots"],
        &["invalid value 'lots'"],
    );
    assert_fails(
        &[
            "boot",
            "--kernel",
            g,
            "--boot-protocol",
            "pvh",
            "--initrd",
            "/nonexistent/initrd",
        ],
        &["/nonexistent/initrd"],
    );
    let long = "x".repeat(3000);
    assert_fails(
        &["boot", "--kernel", g, "--cmdline", &long],
        &["command line is 3000 bytes", "at most 2047"],
    );
}

#[test]
fn initrd_too_big_for_memory() {
    let g = build_guest();
    let big = tmp("big-initrd");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(64 << 20).unwrap(); // sparse: 64 MiB of zeros
    assert_fails(
        &[
            "boot",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "32",
            "--initrd",
            big.to_str().unwrap(),
        ],
        &["initrd", "does not fit"],
    );
}

#[test]
fn elf_without_pvh_note_refuses_pvh() {
    // /bin/true is an x86_64 ELF, but a user-space one: loading it must fail cleanly either at
    // the PVH note or at its load addresses, never by starting it.
    let out = amivm(&["boot", "--kernel", "/bin/true", "--boot-protocol", "pvh"]);
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(
        out.stderr.starts_with("amivm: error:"),
        "{}",
        out.describe()
    );
}

#[test]
fn help_documents_the_exit_codes() {
    let out = amivm(&["boot", "--help"]);
    assert_eq!(out.code, Some(0));
    for code in ["124", "125", "126", "0xf4"] {
        assert!(
            out.stdout.contains(code),
            "help lacks {code}: {}",
            out.stdout
        );
    }
}

/// `/dev/kvm` missing (hidden in a private mount namespace) or not permitted (an unprivileged
/// user): 125 and a line that says how to fix it. Needs root to set the situation up.
#[test]
fn kvm_missing_or_not_permitted_says_how_to_fix_it() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip_note("the /dev/kvm cases: need root to hide /dev/kvm in a mount namespace and to drop privileges");
        return;
    }
    let amivm = env!("CARGO_BIN_EXE_amivm");
    let empty = tmp("empty-dev");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c"]).arg(format!(
        "mount --bind {} /dev && exec {amivm} boot --kernel /nonexistent",
        empty.display()
    ));
    let out = run_with_deadline(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(
        out.stderr.contains("/dev/kvm does not exist"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("modprobe kvm_intel"),
        "{}",
        out.describe()
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/dev/kvm")
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    if mode & 0o006 != 0 {
        common::skip_note(&format!(
            "the permission case: /dev/kvm is open to every user here ({mode:o})"
        ));
        return;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        amivm,
        "boot",
        "--kernel",
        "/nonexistent",
    ]);
    let out = run_with_deadline(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(
        out.stderr.contains("no permission on /dev/kvm"),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("usermod -aG kvm"), "{}", out.describe());
}
