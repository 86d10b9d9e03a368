//! The Debian 12 AMI of the recipe (images/debian, built as root by .ci/run): registered with
//! `image create --disk`, it takes the disk's own kernel and initrd and `root=UUID=`, and
//! defaults to ACPI device discovery; under `amivm run` Debian's kernel finds Debian's initrd
//! (`RAMDISK: [mem ...]` as large as the initrd) and amivm's ACPI tables.
//!
//! Here KVM emulates, so Debian's bzImage would spend minutes decompressing itself: the boot
//! test registers the same disk with the recipe's extracted vmlinux as `--kernel` (and the
//! disk's initrd as `--initrd`), reads the console as it streams and stops the instance once
//! the kernel has counted its CPUs.

mod common;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Recipe {
    disk: PathBuf,
    vmlinuz: PathBuf,
    vmlinux: PathBuf,
    initrd: PathBuf,
}

fn recipe(test: &str) -> Option<Recipe> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let var = |name: &str, rel: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join(rel))
    };
    let r = Recipe {
        disk: var("AMIVM_DEBIAN_DISK", ".cache/debian-image/disk.img"),
        vmlinuz: var("AMIVM_DEBIAN_IMAGE_KERNEL", ".cache/debian-image/vmlinuz"),
        vmlinux: var("AMIVM_DEBIAN_IMAGE_VMLINUX", ".cache/debian-image/vmlinux"),
        initrd: var(
            "AMIVM_DEBIAN_IMAGE_INITRD",
            ".cache/debian-image/initrd.img",
        ),
    };
    if !r.disk.exists() {
        common::skip_note(&format!(
            "{test}: no Debian 12 AMI disk at {}: it is built as root by \
             scripts/build-debian-image.sh --no-register (.ci/run does when run as root)",
            r.disk.display()
        ));
        return None;
    }
    Some(r)
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read")))
}

fn amivm(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_amivm"));
    c.arg("--store").arg(store).stdin(Stdio::null());
    c
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = amivm(store).args(args).output().expect("run amivm");
    assert!(
        out.status.success(),
        "amivm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn show(store: &Path, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(store, &["--output", "json", "image", "show", id])).expect("json")
}

/// `image create --disk` of the recipe's disk: the AMI's kernel and initrd are the disk's own
/// files, root by the file system's UUID, ACPI discovery, the OS in the description.
#[test]
fn debian_12_ami_from_the_recipe_disk() {
    let Some(r) = recipe("debian_12_ami_from_the_recipe_disk") else {
        return;
    };
    let store = tempfile::tempdir().expect("tempdir");
    let disk = r.disk.to_str().expect("utf-8 path");
    let id = ok(
        store.path(),
        &["image", "create", "--name", "debian-12", "--disk", disk],
    );
    let img = show(store.path(), id.trim());
    assert_eq!(img["Kernel"]["Blob"], sha256_file(&r.vmlinuz), "{img}");
    assert_eq!(img["Kernel"]["Format"], "bzimage", "{img}");
    assert_eq!(img["Initrd"]["Blob"], sha256_file(&r.initrd), "{img}");
    assert_eq!(img["DeviceDiscovery"], "acpi", "{img}");
    let uuid = String::from_utf8(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "UUID", "--offset", "1048576"])
            .arg(&r.disk)
            .output()
            .expect("blkid")
            .stdout,
    )
    .expect("utf-8");
    let cmdline = img["KernelCommandLine"].as_str().expect("cmdline");
    assert!(
        cmdline.contains(&format!("root=UUID={}", uuid.trim())),
        "{cmdline} vs blkid {uuid}"
    );
    assert!(
        img["Description"]
            .as_str()
            .is_some_and(|d| d.contains("Debian GNU/Linux 12")),
        "{img}"
    );
}

/// Debian's kernel with Debian's initrd from the AMI, under `amivm run`: it reserves the
/// initrd (its size, page-rounded) and lists amivm's ACPI tables.
#[test]
fn debian_kernel_finds_its_initrd_and_our_acpi_tables_under_amivm_run() {
    let Some(r) = recipe("debian_kernel_finds_its_initrd_and_our_acpi_tables_under_amivm_run")
    else {
        return;
    };
    let store = tempfile::tempdir().expect("tempdir");
    let id = ok(
        store.path(),
        &[
            "image",
            "create",
            "--name",
            "debian-12-vmlinux",
            "--disk",
            r.disk.to_str().expect("utf-8"),
            "--kernel",
            r.vmlinux.to_str().expect("utf-8"),
            "--initrd",
            r.initrd.to_str().expect("utf-8"),
            "--append",
            "earlyprintk=ttyS0 noxsave",
        ],
    );
    let mut cmd = amivm(store.path());
    cmd.args(["run", id.trim(), "-t", "t3.micro", "--timeout", "280"]);
    let console = common::console_until(cmd, "smpboot: Allowing", Duration::from_secs(300));
    let log = console.log.clone();
    let ctx = console.describe();

    // RAMDISK: [mem 0xSTART-0xEND]: the initrd's bytes, rounded up to whole pages.
    let ramdisk = log
        .lines()
        .find_map(|l| l.split_once("RAMDISK: [mem ")?.1.split_once(']'))
        .map(|(range, _)| range.to_string())
        .unwrap_or_else(|| panic!("no RAMDISK line: {ctx}"));
    let (a, b) = ramdisk.split_once('-').expect("range");
    let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
    let len = parse(b) - parse(a) + 1;
    let size = std::fs::metadata(&r.initrd).expect("initrd").len();
    assert_eq!(len, size.div_ceil(4096) * 4096, "initrd size: {ctx}");
    for sig in ["XSDT", "FACP", "DSDT", "APIC"] {
        let needle = format!("ACPI: {sig} 0x");
        let line = log
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no ACPI: {sig}: {ctx}"));
        assert!(line.contains("AMIVM  MICROVM"), "{sig} OEM ids: {ctx}");
    }
    let cmd_line = log
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_else(|| panic!("no Command line: {ctx}"));
    assert!(cmd_line.contains("root=UUID="), "{ctx}");
    assert!(!cmd_line.contains("virtio_mmio.device"), "{ctx}");
    assert!(log.contains("smpboot: Allowing 2 CPUs"), "t3.micro: {ctx}");
}
