//! Tests of the copy-on-write overlay over real files.

use super::*;
use crate::volume::RawFile;
use std::path::PathBuf;

/// A deterministic, non-repeating-looking base image.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    base_bytes: Vec<u8>,
}

impl Fixture {
    fn new(len: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base_bytes = pattern(len);
        std::fs::write(dir.path().join("base.img"), &base_bytes).unwrap();
        Fixture { dir, base_bytes }
    }
    fn base_path(&self) -> PathBuf {
        self.dir.path().join("base.img")
    }
    fn overlay_path(&self) -> PathBuf {
        self.dir.path().join("overlay.cow")
    }
    fn base(&self) -> Box<dyn BlockBackend> {
        Box::new(RawFile::open(&self.base_path(), true).unwrap())
    }
    fn open(&self) -> CowOverlay {
        CowOverlay::open(self.base(), &self.overlay_path(), "base-1").unwrap()
    }
    fn assert_base_untouched(&self) {
        assert!(
            std::fs::read(self.base_path()).unwrap() == self.base_bytes,
            "the base file changed"
        );
    }
}

fn read(ov: &mut CowOverlay, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    ov.read_at(&mut b, off).unwrap();
    b
}

#[test]
fn fresh_overlay_reads_the_base() {
    let fx = Fixture::new(64 * 1024);
    let mut ov = fx.open();
    assert_eq!(ov.size(), 64 * 1024);
    assert_eq!(read(&mut ov, 0, 64 * 1024), fx.base_bytes);
    assert_eq!(read(&mut ov, 1000, 5000), fx.base_bytes[1000..6000]);
    assert_eq!(ov.dirty_count(), 0);
    assert!(ov.can_discard() && !ov.read_only());
    assert!(read_err(&mut ov, 64 * 1024 - 10, 11));
    fx.assert_base_untouched();
}

fn read_err(ov: &mut CowOverlay, off: u64, len: usize) -> bool {
    let mut b = vec![0u8; len];
    matches!(ov.read_at(&mut b, off), Err(VolumeError::OutOfRange { .. }))
}

#[test]
fn whole_and_partial_block_writes_read_back_over_the_base() {
    let fx = Fixture::new(64 * 1024);
    let mut ov = fx.open();
    let mut expect = fx.base_bytes.clone();

    // A whole aligned block.
    ov.write_at(&[0x11; 4096], 8192).unwrap();
    expect[8192..12288].fill(0x11);
    // One sector inside a clean block: read-modify-write from the base.
    ov.write_at(&[0x22; 512], 4096 + 1024).unwrap();
    expect[5120..5632].fill(0x22);
    // A sector inside a block that is already dirty.
    ov.write_at(&[0x33; 512], 8192 + 512).unwrap();
    expect[8704..9216].fill(0x33);
    // Partial + whole + partial across four blocks.
    ov.write_at(&[0x44; 3 * 4096], 20480 + 2048).unwrap();
    expect[22528..22528 + 3 * 4096].fill(0x44);

    assert_eq!(read(&mut ov, 0, 64 * 1024), expect);
    assert_eq!(
        ov.dirty_blocks().collect::<Vec<_>>(),
        vec![1, 2, 5, 6, 7, 8],
        "blocks 1 (partial), 2, and 5..=8"
    );
    fx.assert_base_untouched();
}

#[test]
fn vectored_reads_split_between_overlay_and_base() {
    let fx = Fixture::new(32 * 1024);
    let mut ov = fx.open();
    ov.write_at(&[0x77; 4096], 4096).unwrap();
    let mut expect = fx.base_bytes.clone();
    expect[4096..8192].fill(0x77);
    let mut a = vec![0u8; 3000];
    let mut b = vec![0u8; 7000];
    {
        let bufs = [
            VolatileSlice::from(&mut a[..]),
            VolatileSlice::from(&mut b[..]),
        ];
        ov.read_vectored_at(&bufs, 2000).unwrap();
    }
    assert_eq!(a, expect[2000..5000]);
    assert_eq!(b, expect[5000..12000]);
}

#[test]
fn discard_reads_zeros_and_leaves_the_base_alone() {
    let fx = Fixture::new(64 * 1024);
    let mut ov = fx.open();
    let mut expect = fx.base_bytes.clone();
    ov.write_at(&[0x55; 8192], 0).unwrap();
    expect[..8192].fill(0x55);
    // Whole dirty block, whole clean blocks, and partial edges.
    ov.discard(4096, 4096).unwrap();
    expect[4096..8192].fill(0);
    ov.discard(16384 - 512, 8192 + 1024).unwrap();
    expect[16384 - 512..16384 + 8192 + 512].fill(0);
    assert_eq!(read(&mut ov, 0, 64 * 1024), expect);
    ov.flush().unwrap();
    drop(ov);
    let mut ov = fx.open();
    assert_eq!(read(&mut ov, 0, 64 * 1024), expect);
    fx.assert_base_untouched();
}

#[test]
fn bitmap_and_data_persist_across_reopen() {
    let fx = Fixture::new(1024 * 1024);
    let mut expect = fx.base_bytes.clone();
    {
        let mut ov = fx.open();
        ov.write_at(&[0xa1; 4096], 0).unwrap();
        ov.write_at(&[0xa2; 512], 700 * 1024).unwrap();
        expect[..4096].fill(0xa1);
        expect[700 * 1024..700 * 1024 + 512].fill(0xa2);
        ov.flush().unwrap();
    }
    let mut ov = fx.open();
    assert_eq!(ov.dirty_blocks().collect::<Vec<_>>(), vec![0, 175]);
    assert_eq!(read(&mut ov, 0, 1024 * 1024), expect);
    assert_eq!(ov.base_identity(), "base-1");
    fx.assert_base_untouched();
}

#[test]
fn unflushed_writes_are_not_trusted_after_a_crash() {
    let fx = Fixture::new(64 * 1024);
    let mut ov = fx.open();
    ov.write_at(&[0xc1; 4096], 0).unwrap();
    ov.flush().unwrap();
    ov.write_at(&[0xc2; 4096], 8192).unwrap();
    // Simulate a crash: no final flush runs (the file is closed, as the kernel closes it).
    ov.crash();
    let mut ov = fx.open();
    let back = read(&mut ov, 0, 64 * 1024);
    assert!(
        back[..4096].iter().all(|&b| b == 0xc1),
        "flushed block kept"
    );
    assert_eq!(
        back[8192..12288],
        fx.base_bytes[8192..12288],
        "a block whose bit never reached the disk reads from the base"
    );
}

#[test]
fn reopen_refuses_a_different_base() {
    let fx = Fixture::new(64 * 1024);
    drop(fx.open());
    let err = CowOverlay::open(fx.base(), &fx.overlay_path(), "other").unwrap_err();
    assert!(err.to_string().contains("made for base"), "{err}");
    let other = fx.dir.path().join("small.img");
    std::fs::write(&other, vec![0u8; 32 * 1024]).unwrap();
    let small = Box::new(RawFile::open(&other, true).unwrap());
    let err = CowOverlay::open(small, &fx.overlay_path(), "base-1").unwrap_err();
    assert!(err.to_string().contains("65536"), "{err}");
    let junk = fx.dir.path().join("junk.cow");
    std::fs::write(&junk, vec![0x41u8; 8192]).unwrap();
    let err = CowOverlay::open(fx.base(), &junk, "base-1").unwrap_err();
    assert!(matches!(err, VolumeError::BadOverlay { .. }), "{err}");
}

#[test]
fn unaligned_base_size_last_block() {
    let fx = Fixture::new(10_000);
    let mut ov = fx.open();
    let mut expect = fx.base_bytes.clone();
    ov.write_at(&[0x99; 512], 9000).unwrap();
    expect[9000..9512].fill(0x99);
    ov.write_at(&[0x98; 10_000 - 8192], 8192).unwrap();
    expect[8192..].fill(0x98);
    ov.discard(4096, 10_000 - 4096).unwrap();
    expect[4096..].fill(0);
    assert_eq!(read(&mut ov, 0, 10_000), expect);
    assert!(ov.write_at(&[0; 1], 10_000).is_err());
    fx.assert_base_untouched();
}

#[test]
fn read_only_overlay_refuses_writes() {
    let fx = Fixture::new(16 * 1024);
    let mut ov = fx.open().with_read_only(true).with_serial("vol-1");
    assert!(matches!(ov.write_at(&[1], 0), Err(VolumeError::ReadOnly)));
    assert!(matches!(ov.discard(0, 4096), Err(VolumeError::ReadOnly)));
    assert_eq!(ov.serial(), "vol-1");
}

#[test]
fn an_overlay_can_stack_on_another_overlay() {
    let fx = Fixture::new(16 * 1024);
    let mut lower = fx.open();
    lower.write_at(&[0xee; 4096], 0).unwrap();
    lower.flush().unwrap();
    let lower = lower.with_read_only(true);
    let upper_path = fx.dir.path().join("upper.cow");
    let mut upper = CowOverlay::open(Box::new(lower), &upper_path, "lower").unwrap();
    upper.write_at(&[0xdd; 512], 512).unwrap();
    let back = read(&mut upper, 0, 4096);
    assert!(back[..512].iter().all(|&b| b == 0xee));
    assert!(back[512..1024].iter().all(|&b| b == 0xdd));
    assert!(back[1024..].iter().all(|&b| b == 0xee));
    fx.assert_base_untouched();
}

/// Issue 8: two writers of one overlay lose each other's writes; the second is refused while
/// the first has it open, and readers (create-image --no-reboot) still may look.
#[test]
fn an_overlay_has_one_writer_at_a_time() {
    let fx = Fixture::new(64 * 1024);
    let mut first = fx.open();
    let err = CowOverlay::open(fx.base(), &fx.overlay_path(), "base-1").unwrap_err();
    assert!(
        matches!(err, VolumeError::InUse { writing: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("is in use"), "{err}");
    first.write_at(&[0x77; 4096], 0).unwrap();
    first.flush().unwrap();
    let reader = CowOverlay::open_read_only(fx.base(), &fx.overlay_path(), "base-1").unwrap();
    assert!(reader.read_only() && !reader.can_discard());
    let reader = reader.with_read_only(false);
    assert!(reader.read_only(), "a read-only open stays read-only");
    let mut reader = reader;
    assert_eq!(read(&mut reader, 0, 4096), vec![0x77; 4096]);
    assert!(matches!(
        reader.write_at(&[1], 0),
        Err(VolumeError::ReadOnly)
    ));
    drop(first);
    let mut again = fx.open();
    assert_eq!(read(&mut again, 0, 4096), vec![0x77; 4096]);
}

/// Creating an overlay never replaces one that appeared meanwhile (another process created it
/// first): the existing file, with its data, is what gets opened.
#[test]
fn create_keeps_an_overlay_that_already_exists() {
    let fx = Fixture::new(64 * 1024);
    let mut ov = fx.open();
    ov.write_at(&[0x42; 4096], 4096).unwrap();
    drop(ov);
    let header = super::Header::for_base(64 * 1024, "base-1");
    super::create(&fx.overlay_path(), &header).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary file left behind");
    let mut ov = fx.open();
    assert_eq!(read(&mut ov, 4096, 4096), vec![0x42; 4096]);
}

#[test]
fn a_new_overlay_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new(64 * 1024);
    drop(fx.open());
    let mode = std::fs::metadata(fx.overlay_path())
        .unwrap()
        .permissions()
        .mode();
    // Whatever the umask (the test runs under the caller's, typically 022).
    assert_eq!(mode & 0o777, crate::volume::PRIVATE_FILE_MODE, "{mode:o}");
}
