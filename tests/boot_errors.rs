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

/// Make a FIFO (named pipe) at `path`.
fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Exit 125 and exactly one line on stderr, starting `amivm: error:`; returns the line.
#[track_caller]
fn assert_one_line_failure(out: &common::RunOutput, what: &str) -> String {
    assert_eq!(out.code, Some(125), "{what}: {}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line: {}", out.describe());
    assert!(lines[0].starts_with("amivm: error: "), "{}", out.describe());
    lines[0].to_string()
}

/// Issue 8, defect 6: `--timeout` beyond what a Duration holds (or not a number of seconds at
/// all) panicked with exit 101 in `boot`, `run`, `start` and the detached `__run-instance`.
#[test]
fn absurd_timeouts_are_refused_in_every_command() {
    let g = build_guest();
    let g = g.to_str().unwrap();
    let store = tmp("timeout-store");
    let store = store.to_str().unwrap();
    for t in [
        "1e20",
        "18446744073709551615",
        "inf",
        "nan",
        "-1",
        "0",
        "3153600001",
    ] {
        let t = format!("--timeout={t}");
        let t = t.as_str();
        let commands: [Vec<&str>; 4] = [
            vec!["boot", "--kernel", g, t],
            vec!["--store", store, "run", "no-such-image", t],
            vec!["--store", store, "start", "i-0123456789abcdef0", t],
            vec![
                "--store",
                store,
                "__run-instance",
                "i-0123456789abcdef0",
                "--lock-fd",
                "99",
                t,
            ],
        ];
        for args in commands {
            let line = assert_one_line_failure(&amivm(&args), &format!("{args:?}"));
            assert!(
                line.contains("--timeout") && line.contains("at most 3153600000"),
                "{args:?}: {line}"
            );
        }
    }
    // The largest accepted value still boots (the guest exits at once).
    let out = amivm(&["boot", "--kernel", g, "--timeout", "3153600000"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

/// Issue 8, defect 12: a FIFO as the kernel, initrd or serial log hung in open(2); each is
/// refused at once, naming the file and what it is.
#[test]
fn fifos_are_refused_without_hanging() {
    let g = build_guest();
    let g = g.to_str().unwrap();
    let fifo = tmp("a-fifo");
    mkfifo(&fifo);
    let f = fifo.to_str().unwrap();
    let store = tmp("fifo-store");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["boot", "--kernel", f], "kernel"),
        (vec!["boot", "--kernel", g, "--initrd", f], "initrd"),
        (
            vec!["boot", "--kernel", g, "--serial-log", f, "--timeout", "20"],
            "serial log",
        ),
        (
            vec![
                "--store",
                store.to_str().unwrap(),
                "run",
                "no-such-image",
                "--serial-log",
                f,
            ],
            "serial log",
        ),
    ];
    for (args, what) in cases {
        let out = amivm(&args);
        assert!(!out.killed, "{args:?} hung: {}", out.describe());
        let line = assert_one_line_failure(&out, &format!("{args:?}"));
        let want = format!("{what} {f} is a FIFO (named pipe); it must be a regular file");
        assert!(line.contains(&want), "{args:?}: {line}");
        assert!(out.stdout.is_empty(), "{}", out.describe());
    }
    // A serial log that does not exist yet is still created.
    let log = tmp("new-serial.log");
    let _ = std::fs::remove_file(&log);
    let out = amivm(&["boot", "--kernel", g, "--serial-log", log.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), out.stdout);
}

/// Issue 8, defect 11: `--drive path=/dev/null` booted, then the final fsync (EINVAL on a
/// character device) turned the guest's exit code into 125. A drive must be a regular file or
/// a block device, and that is said before the guest runs.
#[test]
fn a_character_device_is_no_drive() {
    let g = build_guest();
    assert_fails(
        &[
            "boot",
            "--kernel",
            g.to_str().unwrap(),
            "--drive",
            "path=/dev/null",
        ],
        &["drive /dev/null is a character device; it must be a regular file or a block device"],
    );
    let fifo = tmp("drive-fifo");
    mkfifo(&fifo);
    let spec = format!("path={},ro", fifo.display());
    assert_fails(
        &["boot", "--kernel", g.to_str().unwrap(), "--drive", &spec],
        &["is a FIFO (named pipe)"],
    );
}

/// Issue 8, defect 14: `--log-level bogus` was accepted silently.
#[test]
fn log_level_is_one_of_the_levels() {
    let g = build_guest();
    let g = g.to_str().unwrap();
    let line = assert_one_line_failure(
        &amivm(&["--log-level", "bogus", "boot", "--kernel", g]),
        "bogus level",
    );
    assert!(
        line.contains("invalid value 'bogus' for '--log-level <LEVEL>'")
            && line.contains("off, error, warn, info, debug, trace"),
        "{line}"
    );
    for level in ["off", "error", "warn", "info", "debug", "trace"] {
        let out = amivm(&["--log-level", level, "boot", "--kernel", g]);
        assert_eq!(out.code, Some(0), "{level}: {}", out.describe());
    }
}

/// Issue 8, defect 14: clap's usage errors took 3-5 lines; the docs promise one line on stderr
/// and exit 125. `--help` and `--version` still print in full and exit 0.
#[test]
fn usage_errors_are_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["boot", "--foo"],
            "amivm: error: unexpected argument '--foo' found (see amivm boot --help)",
        ),
        (
            &["boot"],
            "amivm: error: the following required arguments were not provided: --kernel <FILE> (see amivm boot --help)",
        ),
        (
            &["boot", "--kernel", "k", "--memory", "lots"],
            "amivm: error: invalid value 'lots' for '--memory <MIB>': invalid digit found in string (see amivm boot --help)",
        ),
        (
            &["boot", "--kernl", "k"],
            "amivm: error: unexpected argument '--kernl' found; a similar argument exists: '--kernel' (see amivm boot --help)",
        ),
        (
            &["--store", "boot", "image", "create", "--name", "x"],
            "amivm: error: the following required arguments were not provided: --kernel <FILE>, --root <SRC> (see amivm image create --help)",
        ),
        (&["image"], "amivm: error: a command is missing (see amivm image --help)"),
        (&[], "amivm: error: a command is missing (see amivm --help)"),
        (
            &["xyzzy"],
            "amivm: error: unrecognized subcommand 'xyzzy' (see amivm --help)",
        ),
    ];
    for (args, want) in cases {
        let out = amivm(args);
        assert_eq!(out.code, Some(125), "{args:?}: {}", out.describe());
        assert_eq!(out.stderr, format!("{want}\n"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.describe());
    }
    for args in [
        &["--help"][..],
        &["boot", "--help"],
        &["image", "create", "--help"],
    ] {
        let out = amivm(args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.describe());
        assert!(out.stdout.lines().count() > 10, "{args:?}: {}", out.stdout);
        assert!(out.stdout.contains("Usage: amivm"), "{}", out.stdout);
    }
    let out = amivm(&["--version"]);
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stdout, format!("amivm {}\n", env!("CARGO_PKG_VERSION")));
}
