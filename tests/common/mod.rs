//! Helpers shared by the integration tests: building the test guest (tests/guest/) with the
//! machine's gcc, running a program with a deadline, and reading the guest's report.
#![allow(dead_code)]

pub mod blk;
pub mod report;

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[allow(unused_imports)]
pub use report::{expected_usable_ram, sum64, Expect, MemEntry, Report};

/// gcc flags for the guest: freestanding, integer-only code that KVM's instruction emulator
/// runs (no SSE, no `endbr64`, no stack protector), linked by `guest.ld` at 1 MiB. The
/// benchmark scripts build the same guest with the same flags (`AMIVM_GUEST_CFLAGS` in
/// scripts/lib/common.sh): keep the two lists alike.
const GUEST_CFLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-fno-pic",
    "-no-pie",
    "-static",
    "-O2",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns",
    "-fno-delete-null-pointer-checks",
    "-Wall",
    "-Wextra",
    "-Wno-array-bounds",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=0x1000",
];

/// Extensions of the files in tests/guest/ that make up the guest (and its cache key).
const GUEST_SOURCE_EXTS: &[&str] = &["c", "S", "h", "ld"];

/// The guest's source directory.
pub fn guest_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest")
}

/// Build the test guest ELF (once per test process) and return its path.
///
/// The ELF is cached under `CARGO_TARGET_TMPDIR/amivm-guest/guest-<hash>.elf`, where the hash
/// covers the flags and every source file, so a changed source rebuilds it. Builds go to a
/// unique temporary name and are renamed into place, so test binaries building concurrently
/// never see a half-written file.
pub fn build_guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(build_guest_uncached).clone()
}

fn guest_sources() -> Vec<PathBuf> {
    let dir = guest_source_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("reading the guest source directory").path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| GUEST_SOURCE_EXTS.contains(&e))
        })
        .collect();
    files.sort();
    files
}

fn build_guest_uncached() -> PathBuf {
    let sources = guest_sources();
    let mut hash = Sha256::new();
    for flag in GUEST_CFLAGS {
        hash.update(flag.as_bytes());
        hash.update([0]);
    }
    for file in &sources {
        let content =
            std::fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        hash.update(file.file_name().unwrap().as_encoded_bytes());
        hash.update((content.len() as u64).to_le_bytes());
        hash.update(&content);
    }
    let key = hex::encode(&hash.finalize()[..8]);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("amivm-guest");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let out = dir.join(format!("guest-{key}.elf"));
    if out.is_file() {
        return out;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".guest-{key}.{}.{nanos}.tmp", std::process::id()));
    let compile: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("c" | "S")))
        .collect();
    let result = Command::new("gcc")
        .args(GUEST_CFLAGS)
        .arg("-T")
        .arg(guest_source_dir().join("guest.ld"))
        .arg("-o")
        .arg(&tmp)
        .args(&compile)
        .output()
        .unwrap_or_else(|e| panic!("running gcc to build the test guest (is gcc installed?): {e}"));
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "building the test guest with gcc failed ({}):\n{}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    std::fs::rename(&tmp, &out)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), out.display()));
    out
}

/// What a program run with [`run_with_deadline`] did.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code; `None` when it was killed by a signal (including by the deadline).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The deadline passed and the program was killed.
    pub killed: bool,
}

impl RunOutput {
    /// Everything it printed, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?}{} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            if self.killed {
                " (killed at the test deadline)"
            } else {
                ""
            },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Run `cmd` with stdin closed and stdout/stderr captured; kill it if it runs past `limit`, so
/// a hung VMM fails the test instead of hanging it.
pub fn run_with_deadline(mut cmd: Command, limit: Duration) -> RunOutput {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            killed = true;
            break child.wait().expect("waiting for the killed child");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    RunOutput {
        code: status.code(),
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        elapsed,
        killed,
    }
}

/// Whether `program` can be found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.is_file()
                && std::fs::metadata(&p).is_ok_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                })
        })
    })
}

/// The QEMU binary the reference tests use.
pub const QEMU: &str = "qemu-system-x86_64";

/// A QEMU microvm command booting the guest through its PVH entry, as documented in
/// tests/guest/README.md: no ACPI (so virtio-mmio devices go on the command line), KVM, a CPU
/// model without XSAVE/CX16 (KVM's emulator lacks them here), the isa-debug-exit port at 0xf4
/// and an i8042 for the reset path.
pub fn qemu_command(guest: &Path, vcpus: u32, mem_mib: u64, append: &str) -> Command {
    let mut cmd = qemu_microvm(guest, vcpus, mem_mib, append, false);
    cmd.args(["-device", "i8042"]);
    cmd
}

/// QEMU microvm running `guest` as in [`qemu_command`], with its ACPI tables on or off (no i8042).
pub fn qemu_microvm(guest: &Path, vcpus: u32, mem_mib: u64, append: &str, acpi: bool) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.arg("-M")
        .arg(format!(
            "microvm,x-option-roms=off,rtc=off,acpi={}",
            if acpi { "on" } else { "off" }
        ))
        .args([
            "-enable-kvm",
            "-cpu",
            "qemu64,-xsave,-cx16",
            "-nographic",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=1",
        ])
        .arg("-smp")
        .arg(vcpus.to_string())
        .arg("-m")
        .arg(mem_mib.to_string())
        .arg("-kernel")
        .arg(guest)
        .arg("-append")
        .arg(append);
    cmd
}

/// QEMU's exit status for a byte `v` written to isa-debug-exit: `(v << 1) | 1`, truncated to
/// the 8 bits of a process exit status.
pub fn qemu_debug_exit_status(v: u8) -> i32 {
    ((i32::from(v) << 1) | 1) & 0xff
}

/// A file a script prepares under `.cache/` (see docs/ci.md): the variable `var` when set, else
/// the stable path `rel` from the repository root. Fails the test, naming the script to run,
/// when neither exists.
pub fn cached_file(var: &str, rel: &str, script: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    assert!(
        p.exists(),
        "{} does not exist: run {script} first (.ci/run does), or set {var}",
        p.display()
    );
    p
}

/// Why this host cannot run a full Linux boot, or `None` when it can: the CPU must have
/// VT-x/AMD-V (without it, KVM here is PVM and runs ordinary guests through its instruction
/// emulator, where Linux stops early in its boot) and /dev/kvm must be usable.
pub fn no_hardware_kvm() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        return Some(
            "the CPU has no VT-x/AMD-V: KVM here runs guests in its instruction emulator (~1M \
             instructions/s), where Linux stops early in its boot"
                .into(),
        );
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Some("/dev/kvm is not usable".into());
    }
    None
}

/// Print that `test` is skipped and why, straight to the process's stderr: the test harness
/// captures `println!`/`eprintln!` of passing tests, and a skip must show in the CI log.
pub fn skip(test: &str, why: &str) {
    skip_note(&format!("{test}: needs hardware KVM: {why}"));
}

/// Print `SKIPPED <what>` to stderr, past the test harness's output capture.
pub fn skip_note(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {what}");
}

/// A console read as it streams: every line up to the first that contains `until` (or the
/// process's end, or `limit`), after which the process is killed.
pub struct StreamedConsole {
    pub log: String,
    /// The process ended (closed its stdout) before `until` appeared.
    pub ended: bool,
    pub status: std::process::ExitStatus,
    pub stderr: String,
    pub elapsed: Duration,
}

impl StreamedConsole {
    /// Context for an assertion message: how it ended, stderr, and the console.
    pub fn describe(&self) -> String {
        format!(
            "after {:.1?} (ended by itself: {}, {:?}, stderr: {})\n{}",
            self.elapsed, self.ended, self.status, self.stderr, self.log
        )
    }
}

/// Spawn `cmd` with stdout and stderr piped and read its stdout until a line contains `until`.
pub fn console_until(mut cmd: Command, until: &str, limit: Duration) -> StreamedConsole {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut log = String::new();
    let mut ended = false;
    while start.elapsed() < limit {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains(until) {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                ended = true;
                break;
            }
        }
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    StreamedConsole {
        log,
        ended,
        status,
        stderr,
        elapsed: start.elapsed(),
    }
}
