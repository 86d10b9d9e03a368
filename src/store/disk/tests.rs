//! Disk analysis on small disks built by the usual tools (sfdisk, mke2fs -d), read from files.

use super::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
/// sfdisk counts in 512-byte sectors.
const SECTOR: u64 = 512;
const UUID_A: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";
const UUID_B: &str = "11111111-2222-4333-8444-555555555555";

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Builder {
    dir: tempfile::TempDir,
    n: usize,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            dir: tempfile::tempdir().unwrap(),
            n: 0,
        }
    }

    fn path(&mut self, name: &str) -> PathBuf {
        self.n += 1;
        self.dir.path().join(format!("{}-{name}", self.n))
    }

    /// A directory tree from (path, content) pairs; content "->target" makes a symlink.
    fn tree(&mut self, files: &[(&str, &str)]) -> PathBuf {
        let root = self.path("tree");
        std::fs::create_dir_all(&root).unwrap();
        for (p, content) in files {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            match content.strip_prefix("->") {
                Some(target) => std::os::unix::fs::symlink(target, &f).unwrap(),
                None if p.ends_with('/') => std::fs::create_dir_all(&f).unwrap(),
                None => std::fs::write(&f, content).unwrap(),
            }
        }
        root
    }

    /// An ext4 image of `mib` MiB holding `files`, with file-system UUID `uuid`.
    fn ext4(&mut self, mib: u64, uuid: &str, files: &[(&str, &str)]) -> PathBuf {
        let tree = self.tree(files);
        let img = self.path("fs.ext4");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-U", uuid, "-d"])
            .arg(&tree)
            .arg(&img));
        img
    }

    /// A disk of `mib` MiB partitioned by the sfdisk `script`, with `images` copied to the
    /// given byte offsets.
    fn disk(&mut self, mib: u64, script: &str, images: &[(u64, &Path)]) -> PathBuf {
        let disk = self.path("disk.raw");
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(mib * MIB).unwrap();
        drop(f);
        let mut child = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&disk)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("sfdisk");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk {script}");
        put(&disk, images);
        disk
    }
}

/// Copy files into `disk` at byte offsets.
fn put(disk: &Path, images: &[(u64, &Path)]) {
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    for (off, img) in images {
        f.write_all_at(&std::fs::read(img).unwrap(), *off).unwrap();
    }
}

fn open(p: &Path) -> Rc<dyn ReadAt> {
    Rc::new(FileDisk::open(p).unwrap())
}

fn bytes(f: &BootFile) -> Vec<u8> {
    let mut v = Vec::new();
    f.copy_to(&mut v).unwrap();
    v
}

const OS: &str = "PRETTY_NAME=\"Testix 7 (kestrel)\"\nNAME=Testix\nVERSION_ID=7\n";

#[test]
fn gpt_root_with_newest_kernel_and_matching_initrd() {
    let mut b = Builder::new();
    let fs = b.ext4(
        16,
        UUID_A,
        &[
            ("etc/os-release", OS),
            ("boot/vmlinuz-6.1.0-9-amd64", "old kernel"),
            ("boot/initrd.img-6.1.0-9-amd64", "old initrd"),
            ("boot/vmlinuz-6.1.0-10-amd64", "new kernel"),
            ("boot/initrd.img-6.1.0-10-amd64", "new initrd"),
            ("boot/config-6.1.0-10-amd64", "x"),
        ],
    );
    let disk = b.disk(
        20,
        "label: gpt\nstart=2048, size=32768, type=0fc63daf-8483-4772-8e79-3d69d8477de4\n",
        &[(2048 * SECTOR, &fs)],
    );
    let a = analyse(open(&disk), true).unwrap();
    assert_eq!(a.table, TableKind::Gpt);
    assert_eq!(a.root.number, 1);
    assert_eq!(a.root.start, 2048 * SECTOR);
    assert_eq!(a.root_fs_uuid, UUID_A);
    let k = a.kernel.as_ref().unwrap();
    assert_eq!(k.path, "/boot/vmlinuz-6.1.0-10-amd64");
    assert_eq!(bytes(k), b"new kernel");
    assert_eq!(bytes(a.initrd.as_ref().unwrap()), b"new initrd");
    let os = a.os.as_ref().unwrap();
    assert_eq!(os.pretty_name.as_deref(), Some("Testix 7 (kestrel)"));
    assert!(a.acpi_device_discovery);
    assert_eq!(a.root_arg(true), format!("root=UUID={UUID_A}"));
    assert_eq!(
        a.root_arg(false),
        format!("root=PARTUUID={}", a.root.part_uuid)
    );
}

#[test]
fn debian_symlinks_win_over_the_newest_kernel() {
    let mut b = Builder::new();
    let fs = b.ext4(
        16,
        UUID_A,
        &[
            ("vmlinuz", "->boot/vmlinuz-5.10.0-1-amd64"),
            ("initrd.img", "->boot/initrd.img-5.10.0-1-amd64"),
            ("boot/vmlinuz-5.10.0-1-amd64", "linked kernel"),
            ("boot/initrd.img-5.10.0-1-amd64", "linked initrd"),
            ("boot/vmlinuz-6.1.0-1-amd64", "newer kernel"),
        ],
    );
    let disk = b.disk(
        20,
        "label: gpt\nstart=2048, size=32768\n",
        &[(2048 * SECTOR, &fs)],
    );
    let a = analyse(open(&disk), true).unwrap();
    assert_eq!(
        a.kernel.as_ref().unwrap().path,
        "/boot/vmlinuz-5.10.0-1-amd64"
    );
    assert_eq!(bytes(a.kernel.as_ref().unwrap()), b"linked kernel");
    assert_eq!(bytes(a.initrd.as_ref().unwrap()), b"linked initrd");
    // No os-release: no OS, no error.
    assert!(a.os.is_none());
}

#[test]
fn gpt_root_type_is_preferred_and_boot_can_be_separate() {
    let mut b = Builder::new();
    // Partition 1: a /boot partition; 2: a data file system that also holds a kernel;
    // 3: the root, typed Linux root (x86-64), with an empty /boot.
    let boot = b.ext4(
        8,
        UUID_B,
        &[
            ("vmlinuz-6.2.0-1", "boot kernel"),
            ("initrd.img-6.2.0-1", "boot initrd"),
        ],
    );
    let data = b.ext4(8, UUID_B, &[("boot/vmlinuz-1", "decoy")]);
    let root = b.ext4(8, UUID_A, &[("etc/os-release", OS), ("boot/", "")]);
    let script = format!(
        "label: gpt\nstart=2048, size=16384\nstart=18432, size=16384\nstart=34816, size=16384, type={GPT_LINUX_ROOT_X86_64}\n"
    );
    let disk = b.disk(
        28,
        &script,
        &[
            (2048 * SECTOR, &boot),
            (18432 * SECTOR, &data),
            (34816 * SECTOR, &root),
        ],
    );
    let a = analyse(open(&disk), true).unwrap();
    assert_eq!(a.root.number, 3);
    assert_eq!(a.root_fs_uuid, UUID_A);
    // The typed root has no kernel: the first other partition with vmlinuz-* at its top
    // level is /boot.
    let k = a.kernel.as_ref().unwrap();
    assert_eq!((k.partition, k.path.as_str()), (1, "/vmlinuz-6.2.0-1"));
    assert_eq!(bytes(a.initrd.as_ref().unwrap()), b"boot initrd");
}

#[test]
fn mbr_logical_partition_root() {
    let mut b = Builder::new();
    let fs = b.ext4(
        8,
        UUID_A,
        &[("etc/os-release", OS), ("boot/vmlinuz-1", "k")],
    );
    // 1: a primary partition of zeros; 2: extended, holding logical partition 5 (the root).
    let disk = b.disk(
        24,
        "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=4096, type=83\nstart=8192, size=32768, type=5\nstart=10240, size=16384, type=83\n",
        &[(10240 * SECTOR, &fs)],
    );
    let a = analyse(open(&disk), true).unwrap();
    assert_eq!(a.table, TableKind::Mbr);
    assert_eq!(a.root.number, 5);
    assert_eq!(a.root.part_uuid, "1234abcd-05");
    assert!(a.initrd.is_none());
    assert_eq!(a.root_arg(false), "root=PARTUUID=1234abcd-05");
}

#[test]
fn own_kernel_needs_no_kernel_on_the_disk() {
    let mut b = Builder::new();
    let fs = b.ext4(8, UUID_A, &[("etc/hostname", "x")]);
    let disk = b.disk(
        10,
        "label: gpt\nstart=2048, size=16384\n",
        &[(2048 * SECTOR, &fs)],
    );
    let a = analyse(open(&disk), false).unwrap();
    assert_eq!(a.root_fs_uuid, UUID_A);
    assert!(a.kernel.is_none());
    let e = analyse(open(&disk), true).unwrap_err();
    assert!(matches!(e, DiskError::NoKernel { number: 1 }), "{e}");
}

#[test]
fn bad_disks_are_refused_with_what_is_wrong() {
    let mut b = Builder::new();
    let fs = b.ext4(8, UUID_A, &[("boot/vmlinuz-1", "k")]);
    // A bare file system: no partition table.
    let e = analyse(open(&fs), true).unwrap_err();
    assert!(matches!(e, DiskError::NoPartitionTable), "{e}");
    // A table whose only partition holds zeros.
    let empty = b.disk(10, "label: gpt\nstart=2048, size=16384\n", &[]);
    let e = analyse(open(&empty), true).unwrap_err();
    assert!(matches!(e, DiskError::NoRoot { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("partition 1: an unknown file system"),
        "{e}"
    );
    // LUKS.
    let luks = b.path("luks");
    std::fs::write(&luks, probe::LUKS_MAGIC).unwrap();
    let enc = b.disk(
        10,
        "label: gpt\nstart=2048, size=16384\n",
        &[(2048 * SECTOR, &luks)],
    );
    let e = analyse(open(&enc), true).unwrap_err();
    assert!(matches!(e, DiskError::Encrypted { number: 1 }), "{e}");
    // A typed root that is not ext4.
    let xfs = b.path("xfs");
    std::fs::write(&xfs, b"XFSB").unwrap();
    let script = format!("label: gpt\nstart=2048, size=16384, type={GPT_LINUX_ROOT_X86_64}\n");
    let other = b.disk(10, &script, &[(2048 * SECTOR, &xfs)]);
    let e = analyse(open(&other), true).unwrap_err();
    assert!(
        matches!(
            e,
            DiskError::UnsupportedFs {
                number: 1,
                what: "xfs"
            }
        ),
        "{e}"
    );
    // Truncated: the partition runs past the end of the file.
    let good = b.disk(
        10,
        "label: gpt\nstart=2048, size=16384\n",
        &[(2048 * SECTOR, &fs)],
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&good)
        .unwrap()
        .set_len(6 * MIB)
        .unwrap();
    let e = analyse(open(&good), true).unwrap_err();
    assert!(matches!(e, DiskError::Truncated { number: 1, .. }), "{e}");
}

#[test]
fn a_file_system_larger_than_its_partition_is_refused() {
    let mut b = Builder::new();
    let fs = b.ext4(8, UUID_A, &[("boot/vmlinuz-1", "k")]);
    // An 8 MiB file system in a 4 MiB partition (the rest of the disk is there, the
    // partition table is wrong).
    let disk = b.disk(
        12,
        "label: gpt\nstart=2048, size=8192\n",
        &[(2048 * SECTOR, &fs)],
    );
    let e = analyse(open(&disk), true).unwrap_err();
    assert!(matches!(e, DiskError::Ext4 { number: 1, .. }), "{e}");
    assert!(e.to_string().contains("larger than its partition"), "{e}");
}

/// CRC-32 (IEEE 802.3, reflected, as the GPT uses) for crafting headers.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_gpt_declaring_billions_of_entries_is_refused_before_allocating() {
    let mut b = Builder::new();
    let disk = b.disk(4, "label: gpt\nstart=2048, size=2048\n", &[]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let mut h = [0u8; 92];
    f.read_exact_at(&mut h, 512).unwrap();
    h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
    h[16..20].fill(0);
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    f.write_all_at(&h, 512).unwrap();
    drop(f);
    let e = analyse(open(&disk), true).unwrap_err();
    assert!(matches!(e, DiskError::BadTable { kind: "GPT", .. }), "{e}");
    assert!(e.to_string().contains("4294967295 entries"), "{e}");
}

/// An MBR disk of `sectors` sectors whose extended partition (from sector 1) is a chain of
/// extended boot records, one per sector, each with a one-sector logical partition.
fn ebr_chain(sectors: u32) -> Vec<u8> {
    let mut d = vec![0u8; sectors as usize * 512];
    let entry = |buf: &mut [u8], at: usize, sys: u8, start: u32, len: u32| {
        buf[at + 4] = sys;
        buf[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        buf[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
    };
    entry(&mut d, 446, 0x05, 1, sectors - 1);
    d[510] = 0x55;
    d[511] = 0xAA;
    for s in 1..sectors - 1 {
        let o = s as usize * 512;
        // The EBR at relative sector s-1 describes a logical partition starting at itself
        // (zero sectors in: harmless for this test) and points to the next EBR, relative s.
        entry(&mut d, o + 446, 0x83, 1, 1);
        let next = if s + 2 < sectors { s } else { 0 };
        entry(
            &mut d,
            o + 446 + 16,
            if next == 0 { 0 } else { 0x05 },
            next,
            1,
        );
        d[o + 510] = 0x55;
        d[o + 511] = 0xAA;
    }
    d
}

#[test]
fn extended_partition_chains_are_read_up_to_a_budget() {
    let t = table::read_table(&ebr_chain(64)).unwrap();
    assert_eq!(t.partitions.len(), 62);
    assert_eq!(t.partitions.last().unwrap().number, 66);
    // More logical partitions than Linux can name.
    let e = table::read_table(&ebr_chain(table::MAX_PARTITIONS as u32 + 8)).unwrap_err();
    assert!(e.to_string().contains("Linux names at most 256"), "{e}");
    // 64 MiB of chained EBRs: 131070 logical partitions, beyond what amivm reads.
    let e = analyse(Rc::new(ebr_chain((64 * MIB / 512) as u32)), true).unwrap_err();
    assert!(e.to_string().contains(DiskError::TABLE_TOO_LARGE), "{e}");
}

#[test]
fn damaged_disks_give_errors_not_panics() {
    // 20000 rounds ran clean once; 1000 keep the unit tests quick.
    const ROUNDS: u32 = 1000;
    let mut b = Builder::new();
    let fs = b.ext4(
        8,
        UUID_A,
        &[
            ("etc/os-release", OS),
            ("vmlinuz", "->boot/vmlinuz-2"),
            ("boot/vmlinuz-1", "k1"),
            ("boot/vmlinuz-2", "k2"),
            ("boot/initrd.img-2", "i2"),
        ],
    );
    let start = 2048 * SECTOR;
    let disk = b.disk(10, "label: gpt\nstart=2048, size=16384\n", &[(start, &fs)]);
    let mut d = Rc::new(std::fs::read(&disk).unwrap());
    // xorshift64: deterministic damage.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut ok, mut failed) = (0, 0);
    for round in 0..ROUNDS {
        let mut saved = Vec::new();
        let bytes = Rc::get_mut(&mut d).expect("no reader left");
        for _ in 0..1 + next() % 8 {
            // The tables (first 17 KiB), or the file system's first MiB (superblock, group
            // descriptors, bitmaps, inode tables, directories).
            let off = if round % 4 == 0 {
                (next() % (34 * SECTOR)) as usize
            } else {
                (start + next() % MIB) as usize
            };
            saved.push((off, bytes[off]));
            bytes[off] ^= 1 << (next() % 8);
        }
        match analyse(d.clone(), true) {
            Ok(a) => {
                for f in a.kernel.iter().chain(a.initrd.iter()) {
                    let mut sink = Vec::new();
                    let _ = f.copy_to(&mut sink);
                }
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().contains('\n'), "{e}");
                failed += 1;
            }
        }
        let bytes = Rc::get_mut(&mut d).expect("no reader left");
        for (off, v) in saved.into_iter().rev() {
            bytes[off] = v;
        }
    }
    assert!(ok > 0 && failed > 0, "{ok} read, {failed} refused");
}
