//! Issue 8, defect 1: two `amivm boot` on one `overlay=` file both reported flushed writes and
//! one was lost. A file a VM writes (an overlay, a raw drive without `ro`) is locked for that VM
//! while it runs: a second VM is refused at once with one line and exit 125, and the first
//! VM's writes are all there afterwards. Read-only uses of a base stay shareable.

mod common;

use common::blk::{amivm_blk, make_base, pattern, sectors, volume_view, DEADLINE};
use common::{build_guest, RunOutput};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Base image size in sectors (2 MiB).
const BASE_SECTORS: u64 = 4096;
/// The sectors both VMs write, and their seeds.
const SECTOR: u64 = 0;
const COUNT: u64 = 8;
const SEED_A: u64 = 0xaaaa_0000_0000_0001;
const SEED_B: u64 = 0xbbbb_0000_0000_0002;
/// How long the first VM may take to reach its `exit=hang` line.
const START_WAIT: Duration = Duration::from_secs(60);

/// An `amivm boot` that ran its `blk=` words and now spins (`exit=hang`) with its drives open.
struct Running {
    child: Child,
    stdout: Receiver<String>,
    seen: String,
}

impl Running {
    fn start(drives: &[&str], words: &str) -> Running {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
        cmd.arg("boot").arg("--kernel").arg(build_guest());
        for d in drives {
            cmd.arg("--drive").arg(d);
        }
        cmd.args([
            "--cmdline",
            &format!("{words} exit=hang"),
            "--timeout",
            "100",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn amivm boot");
        let (tx, rx) = channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut r = Running {
            child,
            stdout: rx,
            seen: String::new(),
        };
        let t0 = Instant::now();
        loop {
            let left = START_WAIT.saturating_sub(t0.elapsed());
            match r.stdout.recv_timeout(left) {
                Ok(line) => {
                    r.seen.push_str(&line);
                    r.seen.push('\n');
                    // The guest's last line before it spins (the command line holds the word too).
                    if line.trim_end() == "AMIVM-GUEST exit=hang" {
                        break;
                    }
                }
                Err(_) => {
                    let _ = r.child.kill();
                    panic!("the first VM did not reach exit=hang: {}", r.seen);
                }
            }
        }
        r
    }

    /// SIGTERM, then its exit code and stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id() as i32;
        // SAFETY: kill with a pid of a child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if t0.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("the first VM did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code(), err)
    }
}

/// Exit 125, one line naming `file` as in use, and the guest never ran.
#[track_caller]
fn assert_in_use(out: &RunOutput, needle: &str) {
    assert_eq!(out.code, Some(125), "{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {}", out.describe());
    assert!(lines[0].starts_with("amivm: error: "), "{}", out.describe());
    assert!(lines[0].contains(needle), "{}", out.describe());
    assert!(
        out.stdout.is_empty(),
        "the second VM ran: {}",
        out.describe()
    );
}

fn write_words(seed: u64) -> String {
    format!("blk=write:{SECTOR}:{COUNT}:{seed:#x} blk=flush")
}

#[test]
fn a_second_vm_on_the_same_overlay_is_refused_and_no_write_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    let overlay = dir.path().join("vol.cow");
    let data = make_base(&base, BASE_SECTORS);
    let drive = format!("path={},overlay={}", base.display(), overlay.display());

    let first = Running::start(&[&drive], &write_words(SEED_A));
    assert!(first.seen.contains("blk flush status=0"), "{}", first.seen);
    let second = amivm_blk(&[&drive], &format!("{} exit_code=0", write_words(SEED_B)));
    let (code, err) = first.stop();
    assert_in_use(
        &second,
        &format!("{} is in use by another VM or drive", overlay.display()),
    );
    assert_eq!(code, Some(130), "first VM: {err}");

    let view = volume_view(&base, Some(&overlay));
    assert!(
        sectors(&view, SECTOR, COUNT) == pattern(SECTOR, COUNT, SEED_A),
        "the first VM's flushed write is lost"
    );
    assert!(
        sectors(&view, COUNT, 8) == sectors(&data, COUNT, 8),
        "the rest reads from the base"
    );
    // Once the first VM is gone, the overlay is free again.
    let out = amivm_blk(&[&drive], &format!("{} exit_code=0", write_words(SEED_B)));
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

#[test]
fn a_raw_drive_being_written_is_nobody_elses() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    make_base(&disk, BASE_SECTORS);
    let rw = format!("path={}", disk.display());
    let ro = format!("path={},ro", disk.display());
    let under = format!(
        "path={},overlay={}",
        disk.display(),
        dir.path().join("o.cow").display()
    );

    let first = Running::start(&[&rw], &write_words(SEED_A));
    let writer = amivm_blk(&[&rw], &format!("{} exit_code=0", write_words(SEED_B)));
    let reader = amivm_blk(&[&ro], "blk=read:0:8 exit_code=0");
    let base_of = amivm_blk(&[&under], "blk=read:0:8 exit_code=0");
    let (code, err) = first.stop();
    let name = disk.display().to_string();
    assert_in_use(&writer, &format!("{name} is in use by another VM or drive"));
    assert_in_use(&reader, &format!("{name} is locked for writing"));
    assert_in_use(&base_of, &format!("{name} is locked for writing"));
    assert_eq!(code, Some(130), "first VM: {err}");
    let back = std::fs::read(&disk).unwrap();
    assert!(sectors(&back, SECTOR, COUNT) == pattern(SECTOR, COUNT, SEED_A));
    // The same drive given twice to one VM is refused the same way.
    assert_in_use(
        &amivm_blk(&[&rw, &rw], "exit_code=0"),
        "is in use by another VM or drive",
    );
}

/// What stays allowed: any number of VMs reading one base, directly (`ro`) or under their own
/// overlays, at the same time.
#[test]
fn read_only_uses_of_a_base_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    make_base(&base, BASE_SECTORS);
    let ro = format!("path={},ro", base.display());
    let first = Running::start(&[&ro], "blk=read:0:8");
    let again = amivm_blk(&[&ro], "blk=read:0:8 exit_code=0");
    let overlay = |n: &str| {
        format!(
            "path={},overlay={}",
            base.display(),
            dir.path().join(n).display()
        )
    };
    let (a, b) = (overlay("a.cow"), overlay("b.cow"));
    let with_overlays = amivm_blk(&[&a, &b], &format!("{} exit_code=0", write_words(SEED_B)));
    let (code, err) = first.stop();
    assert_eq!(again.code, Some(0), "{}", again.describe());
    assert_eq!(with_overlays.code, Some(0), "{}", with_overlays.describe());
    assert_eq!(code, Some(130), "first VM: {err}");
}
