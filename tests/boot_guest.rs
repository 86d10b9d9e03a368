//! `amivm boot` with the test guest (issue 2, test item 2): every figure of the guest's report
//! for several vCPU/memory sizes through both entries (64-bit Linux boot protocol and PVH), and
//! every way a guest can end: exit port, i8042 reset, timeout, triple fault, emulation failure,
//! kernel panic. The guest and its report format: tests/guest/README.md.

mod common;

use common::report::{E820_RAM, E820_RESERVED, MMIO_GAP_START};
use common::{build_guest, run_with_deadline, sum64, Expect, Report, RunOutput};
use std::process::Command;
use std::time::Duration;

/// amivm's documented default command line (issue 2, "Command").
const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";
/// `--timeout` given to every boot that should end by itself, so a VMM bug shows as 124.
const GUEST_TIMEOUT: &str = "60";
/// The test's own limit on one amivm run: beyond `GUEST_TIMEOUT`, in case amivm ignores it.
const DEADLINE: Duration = Duration::from_secs(90);
/// The MP table area amivm reserves for a few vCPUs: the last KiB of base memory
/// (src/vmm/layout.rs `MPTABLE_START` .. `EBDA_END`).
const MPTABLE_AREA: (u64, u64) = (0x9_fc00, 0xa_0000);
/// Exit codes (README, `amivm boot --help`).
const EXIT_TIMEOUT: i32 = 124;
const EXIT_CRASHED: i32 = 126;
/// ISA IRQs 0-15 must be routed by the MP table (issue 2: "the IOAPIC and ISA IRQ routing").
const ISA_IRQS: u64 = 16;

fn amivm(args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.arg("boot")
        .arg("--kernel")
        .arg(build_guest())
        .args(args);
    run_with_deadline(cmd, DEADLINE)
}

#[track_caller]
fn expect_code(out: &RunOutput, code: i32) {
    assert_eq!(out.code, Some(code), "amivm exit code: {}", out.describe());
}

/// The last non-empty stderr line, lowercased, which must mention each of `words`.
#[track_caller]
fn expect_stderr_mentions(out: &RunOutput, words: &[&str]) {
    let line = out
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("amivm printed nothing on stderr: {}", out.describe()))
        .to_lowercase();
    for w in words {
        assert!(
            line.contains(w),
            "stderr's last line should mention {w:?}: {}",
            out.describe()
        );
    }
}

/// Boot with `--vcpus`/`--memory` through `protocol` and check every figure of the report.
fn check_boot(protocol: &str, vcpus: u32, mem_mib: u64) {
    let cmdline = format!("console=ttyS0 marker={protocol}-{vcpus}x{mem_mib} exit_code=5");
    let (v, m) = (vcpus.to_string(), mem_mib.to_string());
    let out = amivm(&[
        "--boot-protocol",
        protocol,
        "--vcpus",
        &v,
        "--memory",
        &m,
        "--cmdline",
        &cmdline,
        "--timeout",
        GUEST_TIMEOUT,
    ]);
    expect_code(&out, 5);
    let report = Report::from_run(&out);
    let boot = if protocol == "linux" {
        "linux64"
    } else {
        "pvh"
    };
    report.check_common(&Expect {
        boot,
        vcpus,
        mem_mib,
        cmdline: &cmdline,
    });
    if boot == "linux64" {
        report.expect_str("setup_header", "HdrS");
        report.expect_num("type_of_loader", 0xff);
    }
    check_amivm_layout(&report, vcpus);
    report.expect_str("exit", "5");
}

/// What amivm promises beyond any correct VMM: its MP table area reserved in the e820 map
/// with the floating pointer in it, a well-formed table (entry count filled in, the ISA IRQs
/// routed), CPUID leaf 1 normalised to the vCPU count.
fn check_amivm_layout(report: &Report, vcpus: u32) {
    let area = report.mem_containing(MPTABLE_AREA.0, E820_RESERVED);
    report.check(
        area.is_some_and(|a| a.base == MPTABLE_AREA.0 && a.end() == MPTABLE_AREA.1),
        "the MP table area [0x9fc00, 0xa0000) should be one reserved e820 entry",
    );
    let mpf = report.num("mptable_addr");
    report.check(
        (MPTABLE_AREA.0..MPTABLE_AREA.1).contains(&mpf),
        "the MP floating pointer should be in the reserved MP table area",
    );
    report.check(
        report.mem_containing(mpf, E820_RAM).is_none(),
        "the MP table must not be in usable RAM",
    );
    report.expect_num("mptable_entry_count", report.num("mptable_entries"));
    report.check(
        report.num("mptable_irqs") >= ISA_IRQS,
        "the MP table should route the 16 ISA IRQs",
    );
    report.expect_num("cpuid_leaf1_cpus", u64::from(vcpus));
}

#[test]
fn linux_1_vcpu_128_mib() {
    check_boot("linux", 1, 128);
}

#[test]
fn pvh_1_vcpu_128_mib() {
    check_boot("pvh", 1, 128);
}

#[test]
fn linux_2_vcpus_1024_mib() {
    check_boot("linux", 2, 1024);
}

#[test]
fn pvh_2_vcpus_1024_mib() {
    check_boot("pvh", 2, 1024);
}

#[test]
fn linux_4_vcpus_4096_mib() {
    check_boot("linux", 4, 4096);
}

#[test]
fn pvh_4_vcpus_4096_mib() {
    check_boot("pvh", 4, 4096);
}

/// 5 GiB: 3 GiB below the MMIO gap, 2 GiB above 4 GiB.
#[test]
fn linux_4_vcpus_5120_mib_split_around_the_gap() {
    check_boot("linux", 4, 5120);
}

#[test]
fn pvh_4_vcpus_5120_mib_split_around_the_gap() {
    check_boot("pvh", 4, 5120);
}

/// Without `--cmdline`/`--append`/`--boot-protocol`: the default command line, the 64-bit
/// entry, 1 vCPU and 128 MiB; the guest's default exit code is 0.
#[test]
fn defaults() {
    let out = amivm(&["--timeout", GUEST_TIMEOUT]);
    expect_code(&out, 0);
    let report = Report::from_run(&out);
    report.check_common(&Expect {
        boot: "linux64",
        vcpus: 1,
        mem_mib: 128,
        cmdline: DEFAULT_CMDLINE,
    });
    report.expect_str("exit", "0");
}

/// `--append` adds to the default command line; the exit port value becomes the exit code.
#[test]
fn append_and_exit_port_code() {
    let out = amivm(&["--append", "exit_code=3", "--timeout", GUEST_TIMEOUT]);
    expect_code(&out, 3);
    expect_stderr_mentions(&out, &["3"]);
    let report = Report::from_run(&out);
    report.expect_str("cmdline", &format!("{DEFAULT_CMDLINE} exit_code=3"));
    report.expect_str("exit", "3");
}

/// Exit port with 0 and the i8042 reset both mean "the guest stopped": 0, on both entries,
/// with APs running (they must be stopped too).
#[test]
fn exit_port_zero_and_reset_stop_the_vm() {
    for protocol in ["linux", "pvh"] {
        for word in ["exit_code=0", "exit=reset"] {
            let out = amivm(&[
                "--boot-protocol",
                protocol,
                "--vcpus",
                "2",
                "--cmdline",
                word,
                "--timeout",
                GUEST_TIMEOUT,
            ]);
            expect_code(&out, 0);
            let report = Report::from_run(&out);
            report.expect_num("cpus_up", 2);
            let want = if word == "exit=reset" { "reset" } else { "0" };
            report.expect_str("exit", want);
        }
    }
}

/// A guest that spins forever (or halts forever) is stopped at `--timeout`: 124.
#[test]
fn timeout_stops_a_spinning_or_halted_guest() {
    for word in ["exit=hang", "exit=halt"] {
        let out = amivm(&["--vcpus", "2", "--cmdline", word, "--timeout", "2"]);
        expect_code(&out, EXIT_TIMEOUT);
        assert!(
            out.elapsed >= Duration::from_secs(2) && out.elapsed < Duration::from_secs(30),
            "{word}: --timeout 2 should end the VM after about 2 s: {}",
            out.describe()
        );
        expect_stderr_mentions(&out, &["timeout"]);
        Report::from_run(&out).expect_str("exit", &word["exit=".len()..]);
    }
}

/// A triple fault (KVM_EXIT_SHUTDOWN) is a crash: 126 and one line naming it.
#[test]
fn triple_fault_is_a_crash() {
    for protocol in ["linux", "pvh"] {
        let out = amivm(&[
            "--boot-protocol",
            protocol,
            "--cmdline",
            "exit=triple",
            "--timeout",
            GUEST_TIMEOUT,
        ]);
        expect_code(&out, EXIT_CRASHED);
        expect_stderr_mentions(&out, &["triple fault"]);
        Report::from_run(&out).expect_str("exit", "triple");
    }
}

/// An instruction KVM's emulator cannot run is a crash: 126, with the faulting RIP and the
/// instruction bytes. (Under hardware virtualisation the guest's INT3 is a triple fault.)
#[test]
fn emulation_failure_is_a_crash_with_rip_and_bytes() {
    let out = amivm(&["--cmdline", "exit=int3", "--timeout", GUEST_TIMEOUT]);
    expect_code(&out, EXIT_CRASHED);
    let report = Report::from_run(&out);
    let rip = report.num("int3_rip");
    let line = out.stderr.to_lowercase();
    if line.contains("triple fault") {
        eprintln!("INT3 was delivered by the CPU (hardware virtualisation): a triple fault");
        return;
    }
    expect_stderr_mentions(&out, &["emulation failure", &format!("{rip:#x}")]);
    // The instruction bytes start with INT3's opcode, 0xcc (as "cc ..." or "ccfa...").
    assert!(
        line.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|t| t.starts_with("cc") && t.chars().all(|c| c.is_ascii_hexdigit())),
        "stderr should show the instruction bytes (cc): {}",
        out.describe()
    );
}

/// "Kernel panic - not syncing" on the console is a crash: 126.
#[test]
fn kernel_panic_on_the_console_is_a_crash() {
    let out = amivm(&["--cmdline", "exit=panic", "--timeout", GUEST_TIMEOUT]);
    expect_code(&out, EXIT_CRASHED);
    expect_stderr_mentions(&out, &["panic"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_end() == "Kernel panic - not syncing: test"),
        "{}",
        out.describe()
    );
}

/// `--serial-log` receives exactly what the guest printed on stdout.
#[test]
fn serial_log_has_the_console_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serial.log");
    let log_arg = log.to_str().expect("utf-8 temp path");
    let out = amivm(&[
        "--vcpus",
        "2",
        "--cmdline",
        "exit_code=7",
        "--serial-log",
        log_arg,
        "--timeout",
        GUEST_TIMEOUT,
    ]);
    expect_code(&out, 7);
    let logged = std::fs::read_to_string(&log).expect("reading the serial log");
    assert_eq!(logged, out.stdout, "serial log vs stdout");
    let report = Report::parse(&logged);
    report.expect_num("cpus_up", 2);
    report.expect_str("exit", "7");
}

/// `--initrd` reaches the guest byte for byte through both entries, page-aligned, inside
/// usable RAM below the MMIO gap.
#[test]
fn initrd_reaches_the_guest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd: Vec<u8> = (0..10_000u32).map(|i| (i * 13 + i / 7) as u8).collect();
    let path = dir.path().join("initrd.img");
    std::fs::write(&path, &initrd).expect("writing the initrd");
    let path_arg = path.to_str().expect("utf-8 temp path");
    for protocol in ["linux", "pvh"] {
        let out = amivm(&[
            "--boot-protocol",
            protocol,
            "--memory",
            "256",
            "--initrd",
            path_arg,
            "--cmdline",
            "exit_code=0",
            "--timeout",
            GUEST_TIMEOUT,
        ]);
        expect_code(&out, 0);
        check_initrd(&Report::from_run(&out), &initrd);
    }
}

fn check_initrd(report: &Report, initrd: &[u8]) {
    report.expect_num("initrd_size", initrd.len() as u64);
    report.expect_num("initrd_sum", sum64(initrd));
    let base = report.num("initrd_base");
    report.check(
        base.is_multiple_of(4096),
        "the initrd should be page-aligned",
    );
    report.check(
        base + initrd.len() as u64 <= MMIO_GAP_START,
        "the initrd should be below the MMIO gap",
    );
    let ram = report.mem_containing(base, E820_RAM);
    report.check(
        ram.is_some_and(|r| base + initrd.len() as u64 <= r.end()),
        "the initrd should lie inside one usable RAM entry",
    );
}
