//! Full boots that need hardware virtualisation (VT-x / AMD-V): on a host whose KVM runs guests
//! through its instruction emulator (PVM, like this project's CI machines) a Linux kernel gets
//! only through its early boot, so these tests print why they skip there. `tests/debian_kernel.rs`
//! and the test-guest tests are the ones that run everywhere.

mod common;

use common::{cached_file, no_hardware_kvm, run_with_deadline, skip};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Debian's stock bzImage (the vmlinuz next to the extracted vmlinux): decompresses itself,
/// boots on 2 vCPUs and, with no root device, panics mounting root; amivm reports the panic.
#[test]
fn debian_bzimage_boots_to_the_root_mount_panic() {
    if let Some(why) = no_hardware_kvm() {
        return skip("debian_bzimage_boots_to_the_root_mount_panic", &why);
    }
    let vmlinux = cached_file(
        "AMIVM_DEBIAN_VMLINUX",
        ".cache/debian-kernel/vmlinux",
        "scripts/fetch-debian-kernel.sh",
    );
    let boot_dir = std::fs::canonicalize(&vmlinux)
        .unwrap()
        .parent()
        .unwrap()
        .join("root/boot");
    let vmlinuz = std::fs::read_dir(&boot_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .expect("vmlinuz in the unpacked package");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(["boot", "--kernel"]).arg(&vmlinuz).args([
        "--vcpus",
        "2",
        "--memory",
        "512",
        "--timeout",
        "120",
    ]);
    let out = run_with_deadline(cmd, Duration::from_secs(180));
    let ctx = out.describe();
    assert!(out.stdout.contains("Command line: console=ttyS0"), "{ctx}");
    assert!(out.stdout.contains("smpboot: Allowing 2 CPUs"), "{ctx}");
    assert!(out.stdout.contains("VFS: Unable to mount root fs"), "{ctx}");
    assert_eq!(out.code, Some(126), "{ctx}");
    assert!(out.stderr.contains("guest crashed: kernel panic"), "{ctx}");
}

/// The sample image's kernel and busybox root file system boot to the init's banner and leave
/// through the exit port with status 0; the root image itself is not written (overlay).
#[test]
fn sample_image_boots_to_its_banner() {
    if let Some(why) = no_hardware_kvm() {
        return skip("sample_image_boots_to_its_banner", &why);
    }
    let build = "scripts/build-sample-image.sh --no-register";
    let vmlinux = cached_file("AMIVM_SAMPLE_VMLINUX", ".cache/sample/vmlinux", build);
    let rootfs = cached_file(
        "AMIVM_SAMPLE_ROOTFS_EXT4",
        ".cache/sample/rootfs.ext4",
        build,
    );
    let before = std::fs::read(&rootfs).unwrap();
    let overlay = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hw-sample-{}.overlay", std::process::id()));
    let _ = std::fs::remove_file(&overlay);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(["boot", "--kernel"])
        .arg(&vmlinux)
        .args([
            "--vcpus",
            "2",
            "--memory",
            "512",
            "--timeout",
            "120",
            "--append",
            "pci=off",
        ])
        .arg("--drive")
        .arg(format!(
            "path={},overlay={}",
            rootfs.display(),
            overlay.display()
        ));
    let out = run_with_deadline(cmd, Duration::from_secs(180));
    let ctx = out.describe();
    assert!(out.stdout.contains("amivm-sample: booted"), "{ctx}");
    assert!(out.stdout.contains("amivm-sample: status 0"), "{ctx}");
    assert_eq!(out.code, Some(0), "{ctx}");
    assert!(
        std::fs::read(&rootfs).unwrap() == before,
        "the root image was written"
    );
    let _ = std::fs::remove_file(&overlay);
}
