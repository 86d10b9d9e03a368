//! Crash consistency of copy-on-write volumes (issue 3, test item 4): the test guest rewrites a
//! range generation after generation, flushing after each and reporting it; the test kills
//! amivm with SIGKILL at a random moment. The overlay must then read back, sector by sector,
//! a generation no older than the last flush the guest reported, never base data or garbage in
//! the range, and the base everywhere else. A second round reopens the killed overlay.

mod common;

use common::blk::{make_base, pattern, sectors, sha256_file, volume_view, SECTOR};
use common::build_guest;
use rand::Rng;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Volume size in sectors (512 KiB).
const BASE_SECTORS: u64 = 1024;
/// The rewritten range, sectors 21..34: it starts and ends inside 4 KiB overlay blocks.
const RANGE: (u64, u64) = (21, 13);
/// Flushes the guest must have reported before the kill.
const MIN_FLUSHES: u64 = 3;
/// Longest random delay after that before SIGKILL.
const MAX_KILL_DELAY_MS: u64 = 300;
/// How long the guest may take to report MIN_FLUSHES.
const FLUSH_DEADLINE: Duration = Duration::from_secs(60);
/// Generations past the last reported flush that may be on disk: the next write may have
/// landed, and a flush may have completed without its line reaching the test before the kill.
const MAX_GENS_AHEAD: u64 = 2;

/// Run the guest's crash loop with `seed` and kill amivm; returns the last generation the
/// guest reported flushed.
fn kill_during_crashloop(drive: &str, seed: u64) -> u64 {
    let words = format!(
        "blk=crashloop:{}:{}:{seed:#x} exit_code=0",
        RANGE.0, RANGE.1
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_amivm"))
        .arg("boot")
        .arg("--kernel")
        .arg(build_guest())
        .args(["--drive", drive, "--cmdline", &words, "--timeout", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning amivm");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut output = String::new();
    let mut last = 0;
    let start = Instant::now();
    while last < MIN_FLUSHES {
        let left = FLUSH_DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => note(line, &mut output, &mut last),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the guest reported {last} flushes in {FLUSH_DEADLINE:?}\n--- stdout ---\n{output}\n--- stderr ---\n{}",
                    err_reader.join().unwrap_or_default()
                );
            }
        }
    }
    let delay = rand::thread_rng().gen_range(0..=MAX_KILL_DELAY_MS);
    std::thread::sleep(Duration::from_millis(delay));
    child.kill().expect("SIGKILL amivm");
    let status = child.wait().expect("waiting for amivm");
    for line in rx.iter() {
        note(line, &mut output, &mut last);
    }
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "amivm should still have been running when killed ({status})\n--- stdout ---\n{output}\n--- stderr ---\n{stderr}"
    );
    eprintln!(
        "killed {delay} ms after flush {MIN_FLUSHES}; last reported flush: generation {last}"
    );
    last
}

/// Keep `line` for the failure message and track the highest flushed generation.
fn note(line: String, output: &mut String, last: &mut u64) {
    if let Some(g) = flushed_gen(&line) {
        *last = (*last).max(g);
    }
    output.push_str(&line);
    output.push('\n');
}

/// `gen` of an `AMIVM-GUEST blk crashloop gen=N flushed` line.
fn flushed_gen(line: &str) -> Option<u64> {
    let rest = line
        .trim_end()
        .strip_prefix("AMIVM-GUEST blk crashloop gen=")?;
    rest.strip_suffix(" flushed")?.parse().ok()
}

/// The seed of generation `gen` (tests/guest/blk.c, cmd_crashloop).
fn gen_seed(seed: u64, gen: u64) -> u64 {
    seed.wrapping_add(gen << 32)
}

/// Every sector of the range holds one whole generation in `[last, last + MAX_GENS_AHEAD]`,
/// everything else is the base.
fn check_consistent(view: &[u8], base: &[u8], seed: u64, last: u64) {
    let (start, count) = RANGE;
    assert_eq!(view.len(), base.len(), "volume size changed");
    assert!(
        view[..(start * SECTOR) as usize] == base[..(start * SECTOR) as usize]
            && view[((start + count) * SECTOR) as usize..]
                == base[((start + count) * SECTOR) as usize..],
        "data outside the rewritten range changed"
    );
    for s in start..start + count {
        let got = sectors(view, s, 1);
        let first = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
        let delta = first.wrapping_sub(seed).wrapping_sub(s * SECTOR / 8);
        let gen = delta >> 32;
        assert!(
            delta & 0xffff_ffff == 0 && (last..=last + MAX_GENS_AHEAD).contains(&gen),
            "sector {s} holds no generation in [{last}, {}] (first word {first:#x})",
            last + MAX_GENS_AHEAD
        );
        assert!(
            got == pattern(s, 1, gen_seed(seed, gen)).as_slice(),
            "sector {s} is a torn mix, not generation {gen}"
        );
    }
}

#[test]
fn overlay_survives_sigkill_up_to_the_last_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base_path, ov) = (dir.path().join("base.img"), dir.path().join("vol.cow"));
    let base = make_base(&base_path, BASE_SECTORS);
    let base_sha = sha256_file(&base_path);
    let drive = format!("path={},overlay={}", base_path.display(), ov.display());
    for seed in [0x1000_0000_0000_0000u64, 0x2000_0000_0000_0000] {
        let last = kill_during_crashloop(&drive, seed);
        check_consistent(&volume_view(&base_path, Some(&ov)), &base, seed, last);
        assert_eq!(
            sha256_file(&base_path),
            base_sha,
            "the base must never be written"
        );
    }
}
