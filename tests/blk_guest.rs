//! virtio-blk end to end (issue 3, test items 2 and 3): the test guest's polling virtio-mmio
//! driver (tests/guest/blk.c) reads, writes, flushes and asks for the id of an `amivm boot
//! --drive` device, and sends it hostile requests; the same well-formed requests against QEMU's
//! virtio-blk-device must give the same answers.

mod common;

use common::blk::{
    amivm_blk, blk_results, expect_read, expect_status, field_num, make_base, op, pattern,
    qemu_blk_command, sectors, sha256_file, volume_view, MISSING_STATUS_SECTOR, SECTOR, S_IOERR,
    S_OK, S_UNSUPP,
};
use common::report::Record;
use common::{on_path, qemu_debug_exit_status, run_with_deadline, Report, RunOutput, QEMU};

/// Base image size in sectors (2 MiB).
const BASE_SECTORS: u64 = 4096;
/// VIRTIO_F_VERSION_1 and VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO (virtio 1.2, 6 and 5.2.3).
const F_VERSION_1: u64 = 1 << 32;
const F_FLUSH: u64 = 1 << 9;
const F_RO: u64 = 1 << 5;
/// Reads every test does: the first 8 sectors, 130 sectors in the middle (three requests of
/// at most 64), and the last 8 sectors.
const READS: [(u64, u64); 3] = [(0, 8), (1000, 130), (BASE_SECTORS - 8, 8)];
/// A write that starts and ends inside 4 KiB blocks (sectors 13..24), so an overlay with 4 KiB
/// blocks must merge it with the base.
const WRITE: (u64, u64) = (13, 11);
const SEED: u64 = 0x5eed_0000_1234_5678;
/// The drive id (GET_ID serial).
const ID: &str = "vol-0123456789abcdef";

fn read_words() -> String {
    READS
        .iter()
        .map(|(s, c)| format!("blk=read:{s}:{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// getid, the reads, the write, its read-back and a flush.
fn good_words() -> String {
    format!(
        "blk=getid {} blk=write:{}:{}:{SEED:#x} blk=read:{}:{} blk=flush exit_code=0",
        read_words(),
        WRITE.0,
        WRITE.1,
        WRITE.0,
        WRITE.1
    )
}

#[track_caller]
fn expect_exit(out: &RunOutput, code: i32) -> Report {
    assert_eq!(out.code, Some(code), "exit code: {}", out.describe());
    let report = Report::from_run(out);
    report.check(
        report.get("blk_error").is_none(),
        "the guest reported blk_error",
    );
    report
}

/// The device facts every drive must show.
#[track_caller]
fn expect_device(report: &Report, ro: bool) {
    report.expect_num("blk_version", 2);
    report.expect_num("blk_device_id", 2);
    report.expect_num("blk_capacity", BASE_SECTORS);
    let features = report.num("blk_features");
    report.check(
        features & F_VERSION_1 != 0,
        "VIRTIO_F_VERSION_1 must be offered",
    );
    report.check(
        features & F_FLUSH != 0,
        "VIRTIO_BLK_F_FLUSH must be offered",
    );
    report.check(
        (features & F_RO != 0) == ro,
        "VIRTIO_BLK_F_RO iff the drive is ro",
    );
    report.expect_num("blk_ro", u64::from(ro));
}

/// The answers to `good_words()` over a volume that held `base` before the run.
#[track_caller]
fn expect_good_answers(report: &Report, base: &[u8]) {
    let id = op(report, "getid", 0);
    expect_status(report, &id, S_OK);
    report.check(
        id.field("id") == Some(ID),
        "GET_ID should return the drive id",
    );
    for (i, &(s, c)) in READS.iter().enumerate() {
        expect_read(report, &op(report, "read", i), base, s, c);
    }
    expect_status(report, &op(report, "write", 0), S_OK);
    let after = with_write(base);
    expect_read(
        report,
        &op(report, "read", READS.len()),
        &after,
        WRITE.0,
        WRITE.1,
    );
    expect_status(report, &op(report, "flush", 0), S_OK);
}

/// A temporary directory with a fresh base image `base.img` (returned as bytes) and the
/// `--drive` argument that puts the overlay `vol.cow` over it, with the test's id.
fn overlay_drive() -> (tempfile::TempDir, Vec<u8>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = make_base(&dir.path().join("base.img"), BASE_SECTORS);
    let drive = format!(
        "path={},overlay={},id={ID}",
        dir.path().join("base.img").display(),
        dir.path().join("vol.cow").display()
    );
    (dir, base, drive)
}

/// `base` with the test's write applied.
fn with_write(base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    let (s, c) = WRITE;
    v[(s * SECTOR) as usize..((s + c) * SECTOR) as usize].copy_from_slice(&pattern(s, c, SEED));
    v
}

/// Item 2: through an overlay the guest reads the base, its write lands in the overlay only,
/// and a second boot over the same overlay reads it back.
#[test]
fn overlay_drive_reads_writes_flushes_and_keeps_the_base() {
    let (dir, base, drive) = overlay_drive();
    let (base_path, ov) = (dir.path().join("base.img"), dir.path().join("vol.cow"));
    let base_sha = sha256_file(&base_path);

    let report = expect_exit(&amivm_blk(&[&drive], &good_words()), 0);
    expect_device(&report, false);
    expect_good_answers(&report, &base);

    assert_eq!(
        sha256_file(&base_path),
        base_sha,
        "the base must never be written"
    );
    assert!(
        volume_view(&base_path, Some(&ov)) == with_write(&base),
        "the overlay view should be the base plus exactly the guest's write"
    );

    // Boot again over the same overlay: the device reads the write back.
    let (s, c) = WRITE;
    let again = format!("blk=read:{s}:{c} blk=read:0:8 exit_code=0");
    let report = expect_exit(&amivm_blk(&[&drive], &again), 0);
    let view = with_write(&base);
    expect_read(&report, &op(&report, "read", 0), &view, s, c);
    expect_read(&report, &op(&report, "read", 1), &view, 0, 8);
    assert_eq!(
        sha256_file(&base_path),
        base_sha,
        "the base must never be written"
    );
}

/// A guest that writes and stops without ever sending FLUSH: amivm flushes the overlay when the
/// VM ends, so the write is in the overlay (data and bitmap) once amivm has exited.
#[test]
fn unflushed_writes_are_made_durable_when_the_guest_stops() {
    let (dir, base, drive) = overlay_drive();
    let (base_path, ov) = (dir.path().join("base.img"), dir.path().join("vol.cow"));
    let (s, c) = WRITE;
    let report = expect_exit(
        &amivm_blk(&[&drive], &format!("blk=write:{s}:{c}:{SEED} exit_code=0")),
        0,
    );
    expect_status(&report, &op(&report, "write", 0), S_OK);
    assert!(
        volume_view(&base_path, Some(&ov)) == with_write(&base),
        "the unflushed write should be in the overlay after a clean stop"
    );
}

/// Without an overlay, writes go to the image file itself.
#[test]
fn raw_drive_is_written_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.img");
    let base = make_base(&path, BASE_SECTORS);
    let drive = format!("path={},id={ID}", path.display());
    let report = expect_exit(&amivm_blk(&[&drive], &good_words()), 0);
    expect_device(&report, false);
    expect_good_answers(&report, &base);
    assert!(
        std::fs::read(&path).expect("reading the image") == with_write(&base),
        "the image file should hold the guest's write and nothing else changed"
    );
}

/// `ro` drives (raw or with an overlay): VIRTIO_BLK_F_RO, writes get IOERR, nothing changes,
/// reads and flushes still work.
#[test]
fn read_only_drive_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base_path = dir.path().join("base.img");
    let base = make_base(&base_path, BASE_SECTORS);
    let base_sha = sha256_file(&base_path);
    let ov = dir.path().join("ro.cow");
    let words = format!(
        "{} blk=write:{}:{}:{SEED:#x} blk=read:{}:{} exit_code=0",
        read_words(),
        WRITE.0,
        WRITE.1,
        WRITE.0,
        WRITE.1
    );
    for drive in [
        format!("path={},ro", base_path.display()),
        format!("path={},ro,overlay={}", base_path.display(), ov.display()),
    ] {
        let report = expect_exit(&amivm_blk(&[&drive], &words), 0);
        expect_device(&report, true);
        for (i, &(s, c)) in READS.iter().enumerate() {
            expect_read(&report, &op(&report, "read", i), &base, s, c);
        }
        expect_status(&report, &op(&report, "write", 0), S_IOERR);
        expect_read(
            &report,
            &op(&report, "read", READS.len()),
            &base,
            WRITE.0,
            WRITE.1,
        );
        assert_eq!(
            sha256_file(&base_path),
            base_sha,
            "{drive}: the image changed"
        );
    }
    if ov.exists() {
        assert!(
            volume_view(&base_path, Some(&ov)) == base,
            "a refused write must not reach the overlay"
        );
    }
}

/// The `blk hostile=NAME` line.
#[track_caller]
fn hostile(report: &Report, name: &str) -> Record {
    blk_results(report)
        .into_iter()
        .find(|r| r.field("hostile") == Some(name))
        .unwrap_or_else(|| report.fail(&format!("no result for hostile request {name}")))
}

/// Item 2, second run: malformed requests get IOERR/UNSUPP or are dropped, never crash or
/// wedge the device, never change the volume; good requests work afterwards.
#[test]
fn hostile_requests_are_refused_and_the_device_keeps_working() {
    let (dir, base, drive) = overlay_drive();
    let (base_path, ov) = (dir.path().join("base.img"), dir.path().join("vol.cow"));
    let base_sha = sha256_file(&base_path);
    let words = format!("blk=hostile {}", good_words());
    let out = amivm_blk(&[&drive], &words);
    // The per-request answers first: they say most about what went wrong.
    let report = Report::from_run(&out);

    let ioerr = [
        "addr_beyond_ram",
        "addr_in_gap",
        "addr_wraps",
        "sector_past_end",
        "write_past_end",
        "sector_offset_wraps",
        "in_buffer_not_writable",
        "bad_length",
    ];
    for name in ioerr {
        let r = hostile(&report, name);
        report.check(
            field_num(&r, "status") == Some(S_IOERR),
            &format!("{name}: IOERR expected: {r:?}"),
        );
    }
    let r = hostile(&report, "unknown_type");
    report.check(
        field_num(&r, "status") == Some(S_UNSUPP),
        &format!("unknown_type: UNSUPP expected: {r:?}"),
    );
    // Chains whose shape is broken: IOERR, or handed back without a status.
    for name in [
        "desc_loop",
        "chain_longer_than_queue",
        "next_out_of_range",
        "header_too_short",
    ] {
        let r = hostile(&report, name);
        let st = r.field("status");
        report.check(
            st == Some("1") || st == Some("none"),
            &format!("{name}: IOERR or an unanswered chain expected: {r:?}"),
        );
    }
    // No place for a status: dropped (returned unanswered, or not returned at all).
    for name in ["missing_status", "status_not_writable"] {
        let r = hostile(&report, name);
        let st = r.field("status");
        report.check(
            st == Some("none") || st == Some("timeout"),
            &format!("{name}: the request should be dropped: {r:?}"),
        );
    }
    for r in blk_results(&report)
        .iter()
        .filter(|r| r.field("hostile").is_some())
    {
        report.check(
            r.field("needs_reset") == Some("0"),
            &format!("device needs a reset after {r:?}"),
        );
    }

    // The device still works, and nothing hostile reached the volume.
    let report = expect_exit(&out, 0);
    expect_good_answers(&report, &base);
    let view = volume_view(&base_path, Some(&ov));
    assert!(
        sectors(&view, MISSING_STATUS_SECTOR, 1) == sectors(&base, MISSING_STATUS_SECTOR, 1),
        "the write sent without a status descriptor must not be executed"
    );
    assert!(
        view == with_write(&base),
        "only the good write may change the volume"
    );
    assert_eq!(
        sha256_file(&base_path),
        base_sha,
        "the base must never be written"
    );
}

/// Item 3: the same guest driver gives the same answers on QEMU's virtio-blk-device as on
/// amivm's, and both agree with the image file.
#[test]
fn qemu_and_amivm_devices_give_the_same_answers() {
    if !on_path(QEMU) {
        common::skip_note(&format!(
            "{QEMU} is not installed (apt-get install qemu-system-x86)"
        ));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base_path = dir.path().join("base.img");
    let base = make_base(&base_path, BASE_SECTORS);
    let qemu_image = dir.path().join("qemu.img");
    std::fs::copy(&base_path, &qemu_image).expect("copying the image for QEMU");
    let words = good_words();

    let q = run_with_deadline(
        qemu_blk_command(&qemu_image, ID, &words),
        common::blk::DEADLINE,
    );
    let qreport = expect_exit(&q, qemu_debug_exit_status(0));
    expect_device(&qreport, false);
    expect_good_answers(&qreport, &base);
    assert!(
        std::fs::read(&qemu_image).expect("reading QEMU's image") == with_write(&base),
        "QEMU's image should hold the guest's write"
    );

    let ov = dir.path().join("vol.cow");
    let drive = format!(
        "path={},overlay={},id={ID}",
        base_path.display(),
        ov.display()
    );
    let areport = expect_exit(&amivm_blk(&[&drive], &words), 0);
    let lines = |r: &Report| -> Vec<String> {
        r.lines
            .iter()
            .filter(|l| l.starts_with("blk "))
            .cloned()
            .collect()
    };
    assert_eq!(
        lines(&areport),
        lines(&qreport),
        "amivm vs QEMU blk answers"
    );
    areport.expect_num("blk_capacity", qreport.num("blk_capacity"));
}
