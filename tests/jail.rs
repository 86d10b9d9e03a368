//! `--jail` (issue 13): the VM process in its own mount, PID and IPC namespaces, in an empty
//! private root, as the dropped uid/gid with no capabilities, and everything still working:
//! the boot and block scenarios of the test guest, and an instance's whole lifecycle (run,
//! ps, stop, start, terminate) with the VM reading store chunks lazily from inside the jail.
//! Checked through /proc, as an administrator would. These tests run as root (the CI and
//! development machines): the uid drop is what they check; a non-root user gets a user
//! namespace instead (docs/security.md).

mod common;
mod instance_common;

use common::blk::{expect_read, expect_status, make_base, op, pattern, volume_view, SECTOR, S_OK};
use common::{build_guest, run_with_deadline, Report, RunOutput};
use instance_common::{Env, DEADLINE, GUEST_TIMEOUT};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's `nobody`/`nogroup`, the jail's default ids (docs/security.md).
const NOBODY: u32 = 65534;
/// How long a state change or a jailed VM's appearance may take here.
const WAIT: Duration = Duration::from_secs(30);
/// The namespaces the jail gives the VM process.
const NEW_NAMESPACES: [&str; 3] = ["mnt", "pid", "ipc"];

fn amivm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_amivm"))
}

fn boot(extra: &[&str], cmdline: &str) -> RunOutput {
    let mut cmd = amivm();
    cmd.arg("boot")
        .arg("--kernel")
        .arg(build_guest())
        .args(["--jail", "--cmdline", cmdline, "--timeout", GUEST_TIMEOUT])
        .args(extra);
    run_with_deadline(cmd, DEADLINE)
}

/// `Name:\tvalue` of a /proc status file.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The children of `parent` (scanning /proc for their PPid).
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| status_field(*p, "PPid") == parent.to_string())
        .collect()
}

/// The jailed VM process of amivm process `parent`, once its vCPU threads run.
fn vm_process(parent: u32) -> u32 {
    let t0 = Instant::now();
    loop {
        if let Some(c) = children(parent).into_iter().find(|c| {
            std::fs::read_dir(format!("/proc/{c}/task"))
                .map(|d| d.count() >= 2)
                .unwrap_or(false)
        }) {
            return c;
        }
        assert!(
            t0.elapsed() < WAIT,
            "amivm {parent} never started a VM process"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ns(pid: u32, which: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{which}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{which}: {e}"))
}

/// The jailed VM process `vm` (child of `parent`): other mount, PID and IPC namespaces than
/// its parent, PID 1 in its own, the ids `uid`/`gid`, no effective capabilities beyond
/// `cap_eff`, no_new_privs, every thread filtered.
fn check_jailed(parent: u32, vm: u32, uid: u32, gid: u32, cap_eff: &str) {
    for which in NEW_NAMESPACES {
        assert_ne!(ns(parent, which), ns(vm, which), "{which} namespace");
    }
    assert_eq!(ns(parent, "net"), ns(vm, "net"), "no new network namespace");
    let nspid: Vec<String> = status_field(vm, "NSpid")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        nspid.last().map(String::as_str),
        Some("1"),
        "NSpid {nspid:?}"
    );
    let ids = |f| {
        status_field(vm, f)
            .split_whitespace()
            .map(|s| s.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("Uid"), vec![uid; 4], "real, effective, saved, fs uid");
    assert_eq!(ids("Gid"), vec![gid; 4], "real, effective, saved, fs gid");
    assert_eq!(status_field(vm, "Groups"), "", "supplementary groups");
    assert_eq!(status_field(vm, "CapEff"), cap_eff);
    assert_eq!(status_field(vm, "CapPrm"), cap_eff);
    assert_eq!(status_field(vm, "NoNewPrivs"), "1");
    for t in std::fs::read_dir(format!("/proc/{vm}/task"))
        .unwrap()
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        assert!(
            s.contains("Seccomp:\t2"),
            "a thread without its filter: {s}"
        );
    }
}

fn spawn_hanging(extra: &[&str]) -> Child {
    amivm()
        .arg("boot")
        .arg("--kernel")
        .arg(build_guest())
        .args([
            "--jail",
            "--vcpus",
            "2",
            "--cmdline",
            "console=ttyS0 exit=hang",
        ])
        .args(["--timeout", GUEST_TIMEOUT])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn amivm boot --jail")
}

/// The boot scenario of tests/boot_guest.rs, jailed: the guest sees its 2 vCPUs and memory and
/// leaves with its exit code.
#[test]
fn a_jailed_boot_runs_the_test_guest_to_its_exit_code() {
    let cmdline = "console=ttyS0 marker=jailed exit_code=5";
    let out = boot(&["--vcpus", "2", "--memory", "256"], cmdline);
    assert_eq!(out.code, Some(5), "{}", out.describe());
    let report = Report::from_run(&out);
    report.expect_num("cpus_up", 2);
    report.expect_str("cmdline", cmdline);
    report.expect_str("exit", "5");
}

/// The block scenario of tests/blk_guest.rs, jailed: reads of the base through an overlay, a
/// write that lands in the overlay only, a flush.
#[test]
fn a_jailed_vm_reads_writes_and_flushes_its_drive() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, ov) = (dir.path().join("base.img"), dir.path().join("vol.cow"));
    let base = make_base(&base_path, 4096);
    let drive = format!("path={},overlay={}", base_path.display(), ov.display());
    let seed = 0x1a11u64;
    let words = format!(
        "console=ttyS0 blk=read:0:8 blk=write:13:11:{seed:#x} blk=read:13:11 blk=flush exit_code=0"
    );
    let out = boot(&["--drive", &drive], &words);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let report = Report::from_run(&out);
    report.check(report.get("blk_error").is_none(), "blk_error");
    expect_read(&report, &op(&report, "read", 0), &base, 0, 8);
    let mut view = base.clone();
    view[(13 * SECTOR) as usize..(24 * SECTOR) as usize].copy_from_slice(&pattern(13, 11, seed));
    expect_read(&report, &op(&report, "read", 1), &view, 13, 11);
    expect_status(&report, &op(&report, "flush", 0), S_OK);
    assert!(
        volume_view(&base_path, Some(&ov)) == view,
        "the write is in the overlay"
    );
    assert_eq!(
        std::fs::read(&base_path).unwrap(),
        base,
        "the base is never written"
    );
}

/// A jailed `amivm boot` as root: the VM process is PID 1 of new mount, PID and IPC
/// namespaces, runs as nobody/nogroup (or the ids given) without capabilities, sees an empty
/// root, cannot open host files, and a SIGTERM to amivm still stops it (130).
#[test]
fn the_jailed_vm_process_is_in_new_namespaces_as_the_dropped_ids() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("path={}", disk.display());
    for (ids, uid, gid) in [
        (vec![], NOBODY, NOBODY),
        (vec!["--jail-uid", "4242", "--jail-gid", "4343"], 4242, 4343),
    ] {
        let mut args = vec!["--drive", drive.as_str()];
        args.extend(ids);
        let child = spawn_hanging(&args);
        let parent = child.id();
        let vm = vm_process(parent);
        std::thread::sleep(Duration::from_millis(300));
        check_jailed(parent, vm, uid, gid, "0000000000000000");
        assert_eq!(
            status_field(parent, "Uid").split_whitespace().next(),
            Some("0")
        );
        // SAFETY: kill(2) of the child we spawned.
        unsafe { libc::kill(parent as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("VM stopped from the host"), "{stderr}");
    }
    // What the VM process sees once jailed: an empty root; and host files stay out of reach.
    let out = boot(
        &["--x-sandbox-test", "list-root"],
        "console=ttyS0 exit_code=7",
    );
    assert_eq!(out.code, Some(7), "{}", out.describe());
    assert!(
        out.stderr.contains("amivm: sandbox test: root: \n"),
        "{}",
        out.describe()
    );
    let out = boot(
        &["--x-sandbox-test", "open:/etc/hostname"],
        "console=ttyS0 exit_code=7",
    );
    assert_eq!(out.code, Some(7), "{}", out.describe());
    assert!(
        out.stderr
            .contains("amivm: sandbox test: open /etc/hostname: "),
        "{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("/etc/hostname: ok"),
        "{}",
        out.describe()
    );
    // A forbidden call in the jail still ends with the seccomp line and 125.
    let out = boot(
        &["--x-sandbox-test", "vcpu-syscall"],
        "console=ttyS0 exit_code=7",
    );
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(
        out.stderr.contains("amivm: seccomp: the vCPU thread"),
        "{}",
        out.describe()
    );
}

/// An image whose root volume holds data, so a guest read opens store chunks from inside the
/// jail (as nobody, through the read-only bind of the store).
fn data_image(env: &Env) -> (String, Vec<u8>) {
    let root = env.path("data.raw");
    let data = make_base(&root, 4096);
    let out = env.ok(&[
        "image",
        "create",
        "--name",
        "data-ami",
        "--kernel",
        build_guest().to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    (out.trim().to_string(), data)
}

fn wait_log(env: &Env, id: &str, needle: &str) -> Report {
    let t0 = Instant::now();
    loop {
        let r = env.logs(id);
        if r.raw.contains(needle) {
            return r;
        }
        assert!(
            t0.elapsed() < WAIT,
            "{id}'s console never showed {needle:?}:\n{}",
            r.raw
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The instance scenarios of tests/instance_lifecycle.rs, jailed: `run --detach --jail` (the
/// guest reads its root volume from store chunks inside the jail), `ps`, `stop` through the
/// relayed signal, `start --jail`, `terminate`; and a foreground `run --jail` to the guest's
/// exit code with the write kept in the instance's volume.
#[test]
fn a_jailed_instance_runs_stops_starts_and_terminates() {
    let env = Env::new();
    let (ami, data) = data_image(&env);
    let out = env.ok(&[
        "run",
        &ami,
        "--detach",
        "--jail",
        "--name",
        "jailed",
        "--append",
        "blk=read:0:8 blk=read:2000:64 exit=hang",
    ]);
    let id = out.trim().to_string();
    assert!(id.starts_with("i-"), "{out}");
    assert_eq!(env.state(&id), "running");
    let r = wait_log(&env, &id, "AMIVM-GUEST exit=hang");
    expect_read(&r, &op(&r, "read", 0), &data, 0, 8);
    expect_read(&r, &op(&r, "read", 1), &data, 2000, 64);
    let ps = env.ok(&["ps"]);
    assert!(
        ps.lines().any(|l| l.contains(&id) && l.contains("running")),
        "{ps}"
    );
    let parent = env.instance(&id)["Pid"].as_u64().unwrap() as u32;
    let vm = vm_process(parent);
    // CAP_DAC_READ_SEARCH (bit 2) only: the store's files are private to root.
    check_jailed(parent, vm, NOBODY, NOBODY, "0000000000000004");

    let out = env.run(&["stop", "--force", "jailed"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(env.state(&id), "stopped");
    assert!(
        !instance_common::process_alive(vm),
        "the VM process is gone"
    );

    let out = env.ok(&["start", "jailed", "--jail", "--jail-uid", "4242"]);
    assert_eq!(out.trim(), id);
    assert_eq!(env.state(&id), "running");
    let parent = env.instance(&id)["Pid"].as_u64().unwrap() as u32;
    check_jailed(parent, vm_process(parent), 4242, NOBODY, "0000000000000004");
    let out = env.run(&["terminate", "--force", &id]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(env.state(&id), "terminated");

    // Foreground: the guest reads sectors 100..104, overwrites them, flushes and leaves with
    // 3; the instance is stopped. Started again (same command line), it reads its own write.
    let seed = 0x77u64;
    let words = format!("blk=read:100:4 blk=write:100:4:{seed:#x} blk=flush exit_code=3");
    let out = env.launch(&ami, &["--jail", "--name", "fg", "--append", &words]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    let r = Report::from_run(&out);
    expect_read(&r, &op(&r, "read", 0), &data, 100, 4);
    let fg = instance_common::launched_id(&out);
    assert_eq!(env.state(&fg), "stopped");
    let out = env.run(&[
        "start",
        "fg",
        "--attach",
        "--jail",
        "--timeout",
        GUEST_TIMEOUT,
    ]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    let r = Report::from_run(&out);
    let mut view = data.clone();
    view[(100 * SECTOR) as usize..(104 * SECTOR) as usize].copy_from_slice(&pattern(100, 4, seed));
    expect_read(&r, &op(&r, "read", 0), &view, 100, 4);
    assert_eq!(env.state(&fg), "stopped");
}

/// A jailed VM that cannot be built (the AMI's kernel damaged in the store) fails the launch as
/// without the jail: one line, exit 125, the instance terminated with `launch failed`.
#[test]
fn a_jailed_vm_that_cannot_be_built_fails_the_launch_cleanly() {
    let env = Env::new();
    let blobs: Vec<_> = std::fs::read_dir(env.store.join("blobs"))
        .unwrap()
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path())
                    .collect()
            } else {
                vec![e.path()]
            }
        })
        .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let mut perm = std::fs::metadata(&blobs[0]).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&blobs[0], perm).unwrap();
    std::fs::write(&blobs[0], b"not a kernel").unwrap();
    for args in [vec!["--detach", "--jail"], vec!["--jail"]] {
        let out = env.launch(&env.ami, &args);
        assert_eq!(
            out.code,
            Some(instance_common::EXIT_FAILED),
            "{}",
            out.describe()
        );
        let lines: Vec<_> = out
            .stderr
            .lines()
            .filter(|l| !l.starts_with("amivm: instance "))
            .collect();
        assert_eq!(lines.len(), 1, "{}", out.describe());
    }
    let ps = env.ps();
    assert_eq!(ps.len(), 2);
    for i in &ps {
        assert_eq!(i["State"]["Name"], "terminated", "{i}");
        assert!(
            i["StateReason"].to_string().contains("launch failed"),
            "{i}"
        );
    }
}

/// A jailed instance has its network card too: passt runs outside the jail, the VM process gets
/// its end of the socketpair, and the guest gets a lease and reads its metadata.
#[test]
fn a_jailed_instance_is_on_the_network_and_reads_its_metadata() {
    let env = Env::new();
    let out = env.launch(&env.ami, &["--jail", "--append", "net=imds"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = instance_common::launched_id(&out);
    let r = Report::from_run(&out);
    assert!(r.get("net_error").is_none(), "{}", out.describe());
    assert_eq!(r.str("imds_instance_id"), id, "{}", out.describe());
    assert_eq!(env.instance(&id)["Network"], "user");
}
