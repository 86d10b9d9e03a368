//! `amivm image create --disk` (issue 9, "Images from real disks"): disks partitioned by
//! sgdisk / sfdisk with ext4 root file systems built by `mke2fs -d`, as raw files and as
//! `qemu-img convert` qcow2. The image must carry the disk's own kernel and initrd (byte for
//! byte), `root=UUID=` of the file system as `blkid` reads it, the OS's PRETTY_NAME, and the
//! whole disk as its root snapshot. Bad disks fail with one line, exit 125, store unchanged.

mod common;
mod store_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use store_common::{root_snapshot, sha256_file, volume_hash, Env};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const PRETTY: &str = "Testian GNU/Linux 12 (bookworm)";
const OS_RELEASE: &str = "PRETTY_NAME=\"Testian GNU/Linux 12 (bookworm)\"\nNAME=\"Testian GNU/Linux\"\nVERSION_ID=\"12\"\nID=testian\n";
/// Where the root file system starts on the test disks (sector 4096 = 2 MiB).
const ROOT_START: u64 = 4096;

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Debian's stock cloud kernel, a bzImage (unpacked by scripts/fetch-debian-kernel.sh).
fn debian_vmlinuz() -> PathBuf {
    let vmlinux = common::cached_file(
        "AMIVM_DEBIAN_VMLINUX",
        ".cache/debian-kernel/vmlinux",
        "scripts/fetch-debian-kernel.sh",
    );
    let boot = std::fs::canonicalize(&vmlinux)
        .unwrap()
        .parent()
        .unwrap()
        .join("root/boot");
    std::fs::read_dir(&boot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .expect("vmlinuz in the unpacked package")
}

/// The sample micro-VM kernel, an ELF vmlinux.
fn sample_vmlinux() -> PathBuf {
    common::cached_file(
        "AMIVM_SAMPLE_VMLINUX",
        ".cache/sample/vmlinux",
        "scripts/build-sample-image.sh --no-register",
    )
}

/// A root file system tree: /etc/os-release, /boot/vmlinuz-VERSION (a copy of `kernel`),
/// /boot/initrd.img-VERSION (when `initrd`), and Debian's /vmlinuz symlink.
fn root_tree(env: &Env, name: &str, kernel: &Path, version: &str, initrd: bool) -> PathBuf {
    let t = env.path(name);
    std::fs::create_dir_all(t.join("boot")).unwrap();
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::create_dir_all(t.join("sbin")).unwrap();
    std::fs::write(t.join("etc/os-release"), OS_RELEASE).unwrap();
    std::fs::copy(kernel, t.join(format!("boot/vmlinuz-{version}"))).unwrap();
    if initrd {
        let bytes = store_common::noise(9, 700_000);
        std::fs::write(t.join(format!("boot/initrd.img-{version}")), bytes).unwrap();
    }
    std::os::unix::fs::symlink(format!("boot/vmlinuz-{version}"), t.join("vmlinuz")).unwrap();
    std::fs::write(t.join("sbin/init"), "#!/bin/sh\n").unwrap();
    t
}

/// A disk of `mib` MiB whose partition table is written by `partition` (given the disk's
/// path), with an ext4 file system of `fs_mib` MiB holding `tree` at sector [`ROOT_START`].
fn disk_with_root(
    env: &Env,
    name: &str,
    mib: u64,
    fs_mib: u64,
    tree: Option<&Path>,
    partition: impl FnOnce(&Path),
) -> PathBuf {
    let disk = env.path(name);
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
    partition(&disk);
    if let Some(tree) = tree {
        let fs = env.path(&format!("{name}.ext4"));
        std::fs::File::create(&fs)
            .unwrap()
            .set_len(fs_mib * MIB)
            .unwrap();
        tool(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-d"])
                .arg(tree)
                .arg(&fs),
        );
        tool(
            Command::new("dd")
                .arg(format!("if={}", fs.display()))
                .arg(format!("of={}", disk.display()))
                .args([
                    "bs=512",
                    &format!("seek={ROOT_START}"),
                    "conv=notrunc,sparse",
                    "status=none",
                ]),
        );
    }
    disk
}

/// sgdisk: partition 1 a small BIOS-boot partition, partition 2 the Linux root (x86-64).
fn sgdisk_two_partitions(disk: &Path, root_mib: u64) {
    tool(
        Command::new("sgdisk")
            .args(["-n", "1:2048:4095", "-t", "1:ef02"])
            .args([
                "-n",
                &format!("2:{ROOT_START}:+{root_mib}M"),
                "-t",
                "2:8304",
            ])
            .arg(disk),
    );
}

/// sfdisk: one MBR partition of type 83 at [`ROOT_START`].
fn sfdisk_mbr(disk: &Path, root_mib: u64) {
    let script = format!(
        "label: dos\nstart={ROOT_START}, size={}, type=83\n",
        root_mib * MIB / SECTOR
    );
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// The UUID blkid reads from the file system at sector [`ROOT_START`] of `disk`.
fn blkid_uuid(disk: &Path) -> String {
    tool(
        Command::new("blkid")
            .args([
                "-p",
                "-o",
                "value",
                "-s",
                "UUID",
                "--offset",
                &(ROOT_START * SECTOR).to_string(),
            ])
            .arg(disk),
    )
}

/// `image create --disk DISK --name NAME EXTRA...`; returns the image as `image show` JSON.
fn create(env: &Env, name: &str, disk: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "image",
        "create",
        "--name",
        name,
        "--disk",
        disk.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let id = env.ok(None, &args).trim().to_string();
    env.json(None, &["image", "show", &id])
}

/// What a disk image must be: the files' bytes as its kernel and initrd blobs, the whole
/// disk as its root snapshot.
fn check_image(
    env: &Env,
    img: &serde_json::Value,
    disk_bytes_sha: &str,
    kernel: &Path,
    initrd: Option<&Path>,
) {
    let ami = img["ImageId"].as_str().unwrap();
    assert_eq!(img["Kernel"]["Blob"], sha256_file(kernel), "{img}");
    match initrd {
        Some(i) => assert_eq!(img["Initrd"]["Blob"], sha256_file(i), "{img}"),
        None => assert!(img["Initrd"].is_null(), "{img}"),
    }
    let snap = root_snapshot(env, None, ami);
    assert_eq!(
        volume_hash(env, None, &snap),
        disk_bytes_sha,
        "root snapshot vs disk"
    );
}

#[test]
fn gpt_disk_by_sgdisk_with_debian_kernel_raw_and_qcow2() {
    let env = Env::new();
    let vmlinuz = debian_vmlinuz();
    let version = "6.1.0-57-cloud-amd64";
    let tree = root_tree(&env, "root", &vmlinuz, version, true);
    let disk = disk_with_root(&env, "gpt.raw", 80, 64, Some(&tree), |d| {
        sgdisk_two_partitions(d, 70)
    });
    let uuid = blkid_uuid(&disk);
    let img = create(&env, "debian-gpt", &disk, &[]);
    let initrd = tree.join(format!("boot/initrd.img-{version}"));
    check_image(&env, &img, &sha256_file(&disk), &vmlinuz, Some(&initrd));
    assert_eq!(img["Kernel"]["Format"], "bzimage", "{img}");
    assert_eq!(
        img["KernelCommandLine"],
        format!("console=ttyS0 root=UUID={uuid} rw"),
        "{img}"
    );
    assert_eq!(img["Description"], PRETTY, "{img}");
    assert_eq!(img["OsName"], "Testian GNU/Linux", "{img}");
    assert_eq!(img["OsVersion"], "12", "{img}");

    // The same disk as qcow2: the same image, and not one chunk more in the store.
    let qcow2 = env.path("gpt.qcow2");
    tool(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&disk)
            .arg(&qcow2),
    );
    let chunks = env.chunk_files().len();
    let q = create(&env, "debian-gpt-qcow2", &qcow2, &[]);
    check_image(&env, &q, &sha256_file(&disk), &vmlinuz, Some(&initrd));
    assert_eq!(q["KernelCommandLine"], img["KernelCommandLine"]);
    assert_eq!(
        env.chunk_files().len(),
        chunks,
        "the qcow2 disk's chunks are the raw one's"
    );
}

#[test]
fn mbr_disk_by_sfdisk_with_elf_kernel_and_overrides() {
    let env = Env::new();
    let vmlinux = sample_vmlinux();
    let tree = root_tree(&env, "root", &vmlinux, "6.1.192-sample", true);
    let disk = disk_with_root(&env, "mbr.raw", 48, 40, Some(&tree), |d| sfdisk_mbr(d, 40));
    let uuid = blkid_uuid(&disk);
    let img = create(
        &env,
        "sample-mbr",
        &disk,
        &["--append", "quiet  loglevel=3"],
    );
    check_image(
        &env,
        &img,
        &sha256_file(&disk),
        &vmlinux,
        Some(&tree.join("boot/initrd.img-6.1.192-sample")),
    );
    assert_eq!(img["Kernel"]["Format"], "elf", "{img}");
    assert_eq!(
        img["KernelCommandLine"],
        format!("console=ttyS0 root=UUID={uuid} rw quiet  loglevel=3"),
        "{img}"
    );

    // --kernel of one's own: no initrd from the disk, so the kernel mounts root itself, by
    // partition UUID (MBR: disk signature and partition number).
    let own = env.kernel();
    let img = create(
        &env,
        "own-kernel",
        &disk,
        &["--kernel", own.to_str().unwrap(), "--description", "mine"],
    );
    check_image(&env, &img, &sha256_file(&disk), &own, None);
    let label = tool(Command::new("sfdisk").arg("--disk-id").arg(&disk));
    let label = label.trim_start_matches("0x");
    assert_eq!(
        img["KernelCommandLine"],
        format!("console=ttyS0 root=PARTUUID={label}-01 rw"),
        "{img}"
    );
    assert_eq!(img["Description"], "mine");

    // --cmdline replaces the whole line; --initrd replaces the disk's initrd.
    let initrd = env.path("other-initrd");
    std::fs::write(&initrd, b"other initrd").unwrap();
    let img = create(
        &env,
        "own-cmdline",
        &disk,
        &[
            "--cmdline",
            "console=ttyS0 root=/dev/vda1",
            "--initrd",
            initrd.to_str().unwrap(),
        ],
    );
    check_image(&env, &img, &sha256_file(&disk), &vmlinux, Some(&initrd));
    assert_eq!(img["KernelCommandLine"], "console=ttyS0 root=/dev/vda1");
}

#[test]
fn bad_disks_fail_in_one_line_and_leave_the_store_unchanged() {
    let env = Env::new();
    // Something in the store to compare.
    let good_tree = root_tree(&env, "good", &env.kernel(), "1", false);
    let good = disk_with_root(&env, "good.raw", 24, 16, Some(&good_tree), |d| {
        sgdisk_two_partitions(d, 16)
    });
    create(&env, "good", &good, &[]);
    let before = env.tree();

    let bare = env.path("bare.ext4");
    std::fs::File::create(&bare)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    tool(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&good_tree)
            .arg(&bare),
    );

    let no_fs = disk_with_root(&env, "nofs.raw", 24, 16, None, |d| {
        sgdisk_two_partitions(d, 16)
    });

    let no_kernel_tree = env.path("nokernel");
    std::fs::create_dir_all(no_kernel_tree.join("etc")).unwrap();
    std::fs::create_dir_all(no_kernel_tree.join("boot")).unwrap();
    std::fs::write(no_kernel_tree.join("etc/os-release"), OS_RELEASE).unwrap();
    let no_kernel = disk_with_root(&env, "nokernel.raw", 24, 16, Some(&no_kernel_tree), |d| {
        sgdisk_two_partitions(d, 16)
    });

    let luks = disk_with_root(&env, "luks.raw", 24, 16, None, |d| {
        sgdisk_two_partitions(d, 16)
    });
    store_common::poke(&luks, ROOT_START * SECTOR, b"LUKS\xba\xbe\x00\x02");

    let truncated = env.path("truncated.raw");
    std::fs::copy(&good, &truncated).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(12 * MIB)
        .unwrap();

    let mbr_no_fs = disk_with_root(&env, "mbr-nofs.raw", 24, 16, None, |d| sfdisk_mbr(d, 16));

    let cases: [(&Path, &str); 6] = [
        (&bare, "no partition table"),
        (
            &mbr_no_fs,
            "no ext2/3/4 root file system found (partition 1: an unknown file system)",
        ),
        (
            &no_fs,
            "root partition 2 holds an unknown file system: amivm reads only ext2/3/4",
        ),
        (&no_kernel, "no kernel found on partition 2"),
        (&luks, "partition 2 is encrypted (LUKS)"),
        (
            &truncated,
            "beyond the end of the disk (12582912 bytes): the disk is truncated",
        ),
    ];
    for (disk, want) in cases {
        let err = env.fails(
            None,
            &[
                "image",
                "create",
                "--name",
                "bad",
                "--disk",
                disk.to_str().unwrap(),
            ],
        );
        assert!(err.contains(want), "{}: {err}", disk.display());
        assert!(
            err.contains(&disk.display().to_string()),
            "names the disk: {err}"
        );
        assert_eq!(env.tree(), before, "{}: the store changed", disk.display());
    }
}

/// The sample kernel, put in the /boot of a GPT disk, boots from the image `--disk` made of
/// it: under KVM's emulator here it gets through its early boot, and its command line is
/// the one the image recorded (root by partition UUID: no initrd).
#[test]
fn sample_kernel_from_a_disk_image_reaches_early_boot() {
    let env = Env::new();
    let tree = root_tree(&env, "root", &sample_vmlinux(), "6.1.192-sample", false);
    let disk = disk_with_root(&env, "boot.raw", 48, 40, Some(&tree), |d| {
        sgdisk_two_partitions(d, 40)
    });
    let img = create(
        &env,
        "sample-disk",
        &disk,
        // The sample kernel has no ACPI: its disk must be announced on the command line.
        &[
            "--append",
            "reboot=k panic=1 pci=off",
            "--device-discovery",
            "cmdline",
        ],
    );
    let partuuid = tool(
        Command::new("sfdisk")
            .arg("--part-uuid")
            .arg(&disk)
            .arg("2"),
    )
    .to_lowercase();
    let cmdline = img["KernelCommandLine"].as_str().unwrap().to_string();
    assert_eq!(
        cmdline,
        format!("console=ttyS0 root=PARTUUID={partuuid} rw reboot=k panic=1 pci=off")
    );
    let mut cmd = env.cmd(
        None,
        &[
            "run",
            "sample-disk",
            "--instance-type",
            "t3.micro",
            "--rm",
            "--timeout",
            "240",
            "--append",
            "earlyprintk=ttyS0",
            "--expect",
            r"smpboot: Allowing \d+ CPUs",
        ],
    );
    cmd.env_remove("AMIVM_LOG");
    let out = common::run_with_deadline(cmd, Duration::from_secs(300));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_else(|| panic!("no `Command line:`: {}", out.describe()));
    assert!(
        line.contains(&format!("root=PARTUUID={partuuid}")),
        "{line}"
    );
}

/// Debian's stock bzImage taken from a disk's /boot boots as a bzImage: with hardware KVM it
/// decompresses itself, shows the image's command line and, with no initrd to load its
/// virtio drivers, panics mounting root (exit 126). Here, under KVM's emulator, its
/// decompressor runs until the timeout (exit 124): the loader took it, nothing crashed.
#[test]
fn debian_bzimage_from_a_disk_image_boots_as_a_bzimage() {
    let env = Env::new();
    let tree = root_tree(
        &env,
        "root",
        &debian_vmlinuz(),
        "6.1.0-57-cloud-amd64",
        false,
    );
    let disk = disk_with_root(&env, "deb.raw", 80, 64, Some(&tree), |d| {
        sgdisk_two_partitions(d, 70)
    });
    let img = create(&env, "debian-bz", &disk, &["--append", "noxsave"]);
    assert_eq!(img["Kernel"]["Format"], "bzimage", "{img}");
    let partuuid = tool(
        Command::new("sfdisk")
            .arg("--part-uuid")
            .arg(&disk)
            .arg("2"),
    )
    .to_lowercase();
    let hardware = common::no_hardware_kvm().is_none();
    let timeout = if hardware { "120" } else { "5" };
    let cmd = env.cmd(
        None,
        &[
            "run",
            "debian-bz",
            "--instance-type",
            "t3.small",
            "--rm",
            "--timeout",
            timeout,
        ],
    );
    let out = common::run_with_deadline(cmd, Duration::from_secs(200));
    let ctx = out.describe();
    if hardware {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("Command line:"))
            .unwrap_or_default();
        assert!(line.contains(&format!("root=PARTUUID={partuuid}")), "{ctx}");
        assert!(out.stdout.contains("VFS: Unable to mount root fs"), "{ctx}");
        assert_eq!(out.code, Some(126), "{ctx}");
    } else {
        assert_eq!(out.code, Some(124), "{ctx}");
        common::skip_note(
            "debian_bzimage_from_a_disk_image_boots_as_a_bzimage: the full boot (needs VT-x/AMD-V)",
        );
    }
}

/// `--append` adds to the command line of any image: the default one, or `--cmdline`'s.
#[test]
fn append_adds_to_the_command_line() {
    let env = Env::new();
    let root = env.path("root.raw");
    store_common::make_disk(&root, 4 * MIB, &[(0, 1)]);
    let id = env.create(None, "plain", &root, &["--append", "quiet"]);
    let img = env.json(None, &["image", "show", &id]);
    assert_eq!(
        img["KernelCommandLine"],
        "console=ttyS0 root=/dev/vda rw quiet"
    );
    let id = env.create(
        None,
        "own",
        &root,
        &["--cmdline", "console=hvc0 ", "--append", " init=/bin/sh"],
    );
    let img = env.json(None, &["image", "show", &id]);
    assert_eq!(img["KernelCommandLine"], "console=hvc0 init=/bin/sh");
    // --disk and --root are one or the other (a usage error from the argument parser).
    let out = env.run(
        None,
        &[
            "image", "create", "--name", "x", "--root", "a", "--disk", "b",
        ],
    );
    assert_eq!(out.status.code(), Some(store_common::FAILED));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with '--disk"), "{err}");
}
