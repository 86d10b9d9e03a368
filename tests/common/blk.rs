//! Helpers for the virtio-blk tests: generated base images, the guest's write pattern, the
//! guest's `blk` report lines, and reading a volume (raw or through its overlay) after the VM.

use super::report::{parse_num, Record, Report};
use super::{build_guest, run_with_deadline, RunOutput};
use amivm::volume::DriveSpec;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// virtio-blk sector size (virtio 1.2, 5.2.6).
pub const SECTOR: u64 = 512;
/// virtio-blk statuses (5.2.6).
pub const S_OK: u64 = 0;
pub const S_IOERR: u64 = 1;
pub const S_UNSUPP: u64 = 2;
/// The sector and seed of the guest's hostile write without a status descriptor
/// (tests/guest/blk_hostile.c).
pub const MISSING_STATUS_SECTOR: u64 = 1;
pub const MISSING_STATUS_SEED: u64 = 0x686f_7374_696c_6521;
/// Limit on one amivm run of a block test (the guest's own waits are ~10 s at most).
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Write a base image of `sectors` sectors with deterministic, position-dependent content
/// (xorshift64), and return its bytes.
pub fn make_base(path: &Path, sectors: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity((sectors * SECTOR) as usize);
    while (data.len() as u64) < sectors * SECTOR {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    data
}

/// The guest's write pattern for `[sector, sector+count)`: the word at disk byte offset `o` is
/// `seed + o / 8` (tests/guest/README.md).
pub fn pattern(sector: u64, count: u64, seed: u64) -> Vec<u8> {
    let first = sector * SECTOR / 8;
    (0..count * SECTOR / 8)
        .flat_map(|i| seed.wrapping_add(first + i).to_le_bytes())
        .collect()
}

/// The byte range of sectors `[sector, sector+count)`.
pub fn sectors(data: &[u8], sector: u64, count: u64) -> &[u8] {
    &data[(sector * SECTOR) as usize..((sector + count) * SECTOR) as usize]
}

pub fn sha256_file(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(Sha256::digest(&data))
}

/// The whole volume as the guest now sees it: `base` through `overlay` (or `base` alone),
/// read with amivm's own volume code, read-only.
pub fn volume_view(base: &Path, overlay: Option<&Path>) -> Vec<u8> {
    let spec = DriveSpec {
        path: base.to_owned(),
        read_only: true,
        overlay: overlay.map(Path::to_owned),
        id: None,
    };
    let mut vol = spec
        .open()
        .unwrap_or_else(|e| panic!("opening {} / {overlay:?}: {e}", base.display()));
    let mut data = vec![0u8; vol.size() as usize];
    vol.read_at(&mut data, 0)
        .unwrap_or_else(|e| panic!("reading the volume view: {e}"));
    data
}

/// `amivm boot` with the test guest, 1 vCPU, the given `--drive` specs and guest words.
pub fn amivm_blk(drives: &[&str], words: &str) -> RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.arg("boot").arg("--kernel").arg(build_guest());
    for d in drives {
        cmd.arg("--drive").arg(d);
    }
    cmd.args(["--cmdline", words, "--timeout", "100"]);
    run_with_deadline(cmd, DEADLINE)
}

/// A QEMU microvm command with a version 2 virtio-blk-device over `image` (raw) whose GET_ID
/// serial is `serial`.
pub fn qemu_blk_command(image: &Path, serial: &str, words: &str) -> Command {
    let mut cmd = super::qemu_command(&build_guest(), 1, 128, words);
    cmd.args([
        "-global",
        "virtio-mmio.force-legacy=false",
        "-device",
        &format!("virtio-blk-device,drive=d0,serial={serial}"),
        "-drive",
    ])
    .arg(format!("id=d0,file={},format=raw,if=none", image.display()));
    cmd
}

/// The `blk <op> ...` result lines (not the `blk_*=` device facts), in order.
pub fn blk_results(report: &Report) -> Vec<Record> {
    report.records("blk")
}

/// The single result line of operation `op` (`read`, `write`, `flush`, `getid`) at `index`
/// among the lines of that operation.
#[track_caller]
pub fn op(report: &Report, name: &str, index: usize) -> Record {
    let lines: Vec<Record> = blk_results(report)
        .into_iter()
        .filter(|r| r.words.first().map(String::as_str) == Some(name))
        .collect();
    match lines.get(index) {
        Some(r) => r.clone(),
        None => report.fail(&format!("no blk {name} line #{index}")),
    }
}

/// The numeric field `key` of a record (`status`, `sum`, ...), or `None` for `none`/`timeout`.
pub fn field_num(rec: &Record, key: &str) -> Option<u64> {
    rec.field(key).and_then(parse_num)
}

/// Check a `blk read` line against the bytes the volume holds.
#[track_caller]
pub fn expect_read(report: &Report, rec: &Record, data: &[u8], sector: u64, count: u64) {
    let what = format!("blk read of [{sector}, {}): {rec:?}", sector + count);
    report.check(
        field_num(rec, "sector") == Some(sector) && field_num(rec, "count") == Some(count),
        &format!("unexpected range in {what}"),
    );
    report.check(
        field_num(rec, "status") == Some(S_OK),
        &format!("{what} failed"),
    );
    let pieces = count.div_ceil(64);
    report.check(
        field_num(rec, "len") == Some(count * SECTOR + pieces),
        &format!("{what}: used length should be data + 1 status byte per request"),
    );
    report.check(
        field_num(rec, "sum") == Some(super::sum64(sectors(data, sector, count))),
        &format!("{what}: checksum differs from the volume's bytes"),
    );
}

/// Check a `blk <name>` line has status `want`.
#[track_caller]
pub fn expect_status(report: &Report, rec: &Record, want: u64) {
    report.check(
        field_num(rec, "status") == Some(want),
        &format!("expected status {want}: {rec:?}"),
    );
}
