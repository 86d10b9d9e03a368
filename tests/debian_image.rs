//! The Debian 12 AMI's disk, read back with third-party tools the way a user would check it:
//! `sfdisk` (the GPT and its "Linux root (x86-64)" partition), `blkid` (ext4, the UUID the
//! kernel command line names), `debugfs` (fstab, the kernel and initrd in /boot, the console and
//! banner units) and `gzip`/`zstd` + `cpio` (the initrd's modules).
//!
//! The disk comes from `images/debian/build-disk.sh` (through `scripts/build-debian-image.sh`,
//! run by `.ci/run`), found through `AMIVM_DEBIAN_DISK` or at `.cache/debian-image/disk.img`.
//! Building it needs root (mmdebstrap), so without it these tests skip with a printed reason.
//! That the disk boots is checked by `images/debian/check-qemu.sh` (minutes under QEMU's TCG).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// GPT partition type "Linux root (x86-64)" (Discoverable Partitions Specification).
const ROOT_PART_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// `sfdisk --json` gives partition starts in sectors of this many bytes (the disk's sector size).
const SECTOR: u64 = 512;
/// Leading bytes of a gzip stream (RFC 1952) and of a zstd frame (RFC 8878).
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

struct DebianDisk {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

/// The disk and what the build printed with it, or `None` (with a printed reason) when there is
/// no disk: it is built only as root.
fn debian_disk(test: &str) -> Option<DebianDisk> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let var = |name: &str, rel: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join(rel))
    };
    let disk = var("AMIVM_DEBIAN_DISK", ".cache/debian-image/disk.img");
    if !disk.exists() {
        common::skip_note(&format!(
            "{test}: no Debian 12 AMI disk at {}: it is built as root by \
             scripts/build-debian-image.sh --no-register (.ci/run does when run as root)",
            disk.display()
        ));
        return None;
    }
    let cmdline = match std::env::var("AMIVM_DEBIAN_IMAGE_CMDLINE") {
        Ok(c) => c,
        Err(_) => {
            // The build records it in the `info` file next to the disk.
            let real = std::fs::canonicalize(&disk).expect("resolve the disk's path");
            let info = std::fs::read_to_string(real.with_file_name("info")).expect("read info");
            info.lines()
                .find_map(|l| l.strip_prefix("cmdline="))
                .expect("info has cmdline=")
                .to_string()
        }
    };
    Some(DebianDisk {
        disk,
        kernel: var("AMIVM_DEBIAN_IMAGE_KERNEL", ".cache/debian-image/vmlinuz"),
        initrd: var(
            "AMIVM_DEBIAN_IMAGE_INITRD",
            ".cache/debian-image/initrd.img",
        ),
        cmdline,
    })
}

/// Runs a tool and returns its stdout; fails the test with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    assert!(
        common::on_path(program),
        "{program} is not installed (.ci/run installs it)"
    );
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_text(program: &str, args: &[&str]) -> String {
    String::from_utf8(run(program, args)).expect("UTF-8 output")
}

/// The root partition's byte offset, after checking the GPT has exactly that one partition.
fn root_partition_offset(disk: &Path) -> u64 {
    let json: serde_json::Value =
        serde_json::from_str(&run_text("sfdisk", &["--json", disk.to_str().unwrap()]))
            .expect("sfdisk --json output");
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt", "{json}");
    let parts = table["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 1, "one partition: {json}");
    assert_eq!(
        parts[0]["type"].as_str().map(str::to_ascii_uppercase),
        Some(ROOT_PART_TYPE.to_string()),
        "the partition is a Linux root (x86-64): {json}"
    );
    parts[0]["start"].as_u64().expect("start") * SECTOR
}

/// `debugfs -R REQUEST` on the ext4 file system at `offset` in `disk`.
fn debugfs(disk: &Path, offset: u64, request: &str) -> String {
    let fs = format!("{}?offset={offset}", disk.display());
    run_text("debugfs", &["-R", request, &fs])
}

#[test]
fn debian_disk_has_a_gpt_ext4_root_the_cmdline_names_with_kernel_and_initrd_in_boot() {
    let Some(d) = debian_disk(
        "debian_disk_has_a_gpt_ext4_root_the_cmdline_names_with_kernel_and_initrd_in_boot",
    ) else {
        return;
    };
    let offset = root_partition_offset(&d.disk);

    let uuid = d
        .cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("root=UUID="))
        .unwrap_or_else(|| panic!("no root=UUID= in the command line '{}'", d.cmdline));
    let blkid = run_text(
        "blkid",
        &[
            "-p",
            "-o",
            "export",
            "--offset",
            &offset.to_string(),
            d.disk.to_str().unwrap(),
        ],
    );
    assert!(blkid.lines().any(|l| l == "TYPE=ext4"), "{blkid}");
    assert!(
        blkid.lines().any(|l| l == format!("UUID={uuid}")),
        "{blkid}"
    );

    let fstab = debugfs(&d.disk, offset, "cat /etc/fstab");
    assert!(
        fstab.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[0] == format!("UUID={uuid}") && f[1] == "/" && f[2] == "ext4"
        }),
        "fstab mounts the root by UUID: {fstab}"
    );
    // (/etc/os-release is a symlink to it; debugfs's cat does not follow symlinks.)
    let os = debugfs(&d.disk, offset, "cat /usr/lib/os-release");
    assert!(
        os.contains("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\""),
        "{os}"
    );

    // `ls -p` prints /inode/mode/uid/gid/name/size/ for each entry.
    let boot: Vec<String> = debugfs(&d.disk, offset, "ls -p /boot")
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .collect();
    for (prefix, copy) in [("vmlinuz-", &d.kernel), ("initrd.img-", &d.initrd)] {
        let name = boot
            .iter()
            .find(|n| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no /boot/{prefix}* in {boot:?}"));
        // The kernel and initrd the build hands to tests are the disk's own.
        let tmp = tempfile::tempdir().unwrap();
        let dumped = tmp.path().join(name);
        debugfs(
            &d.disk,
            offset,
            &format!("dump /boot/{name} {}", dumped.display()),
        );
        assert!(
            std::fs::read(&dumped).unwrap() == std::fs::read(copy).unwrap(),
            "/boot/{name} differs from {}",
            copy.display()
        );
    }

    let autologin = debugfs(
        &d.disk,
        offset,
        "cat /etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
    );
    assert!(autologin.contains("--autologin root"), "{autologin}");
    let wants = debugfs(
        &d.disk,
        offset,
        "ls -p /etc/systemd/system/multi-user.target.wants",
    );
    assert!(wants.contains("/amivm-banner.service/"), "{wants}");
}

#[test]
fn debian_initrd_has_virtio_mmio_virtio_blk_and_fsck() {
    let Some(d) = debian_disk("debian_initrd_has_virtio_mmio_virtio_blk_and_fsck") else {
        return;
    };
    let initrd = std::fs::read(&d.initrd).expect("read the initrd");
    let decompress = if initrd.starts_with(GZIP_MAGIC) {
        "gzip"
    } else if initrd.starts_with(ZSTD_MAGIC) {
        "zstd"
    } else {
        panic!(
            "{}: neither gzip nor zstd (an uncompressed early cpio first?)",
            d.initrd.display()
        );
    };
    // decompressor -dc INITRD | cpio -t: the archive's file names.
    let list = run_text(
        "sh",
        &[
            "-c",
            &format!("{decompress} -dc \"$1\" | cpio -t --quiet"),
            "sh",
            d.initrd.to_str().unwrap(),
        ],
    );
    for want in ["/virtio_mmio.ko", "/virtio_blk.ko", "/fsck.ext4"] {
        assert!(
            list.lines().any(|l| l.ends_with(want)),
            "the initrd has no *{want}"
        );
    }
    // The modules are the kernel's: usr/lib/modules/<version>/, the version the build recorded
    // (kernel=vmlinuz-<version> in the info file next to the kernel it hands out).
    let info = std::fs::canonicalize(&d.kernel)
        .ok()
        .and_then(|k| std::fs::read_to_string(k.with_file_name("info")).ok());
    if let Some(v) = info
        .as_deref()
        .and_then(|i| i.lines().find_map(|l| l.strip_prefix("kernel=vmlinuz-")))
    {
        let dir = format!("usr/lib/modules/{v}/");
        assert!(
            list.lines().any(|l| l.starts_with(&dir)),
            "the initrd has no {dir}"
        );
    }
}
