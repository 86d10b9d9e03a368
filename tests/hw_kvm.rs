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

/// The Debian 12 AMI's disk (`AMIVM_DEBIAN_DISK`, else the recipe's cache), when hardware KVM
/// can boot it; else `None`, after printing why test `name` skips.
fn debian_disk(name: &str) -> Option<std::path::PathBuf> {
    if let Some(why) = no_hardware_kvm() {
        skip(name, &why);
        return None;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let disk = std::env::var_os("AMIVM_DEBIAN_DISK")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join(".cache/debian-image/disk.img"));
    if !disk.exists() {
        skip(
            name,
            "no Debian 12 AMI disk: scripts/build-debian-image.sh --no-register builds it as root",
        );
        return None;
    }
    Some(disk)
}

/// A fresh store (and HOME) holding the recipe's disk registered as `debian-12`.
struct DebianStore {
    tmp: tempfile::TempDir,
}

impl DebianStore {
    fn new(disk: &Path) -> DebianStore {
        let d = DebianStore {
            tmp: tempfile::tempdir().unwrap(),
        };
        let disk = disk.to_str().unwrap();
        let args = ["image", "create", "--name", "debian-12", "--disk", disk];
        let out = d.amivm(&args, 300);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        d
    }

    /// `amivm ARGS` on this store, given `limit` seconds.
    fn amivm(&self, args: &[&str], limit: u64) -> common::RunOutput {
        let mut c = Command::new(env!("CARGO_BIN_EXE_amivm"));
        c.arg("--store")
            .arg(self.tmp.path().join("store"))
            .args(args);
        c.env("HOME", self.tmp.path());
        run_with_deadline(c, Duration::from_secs(limit))
    }
}

/// The Debian 12 AMI of the recipe (issue 9, test 6): boots on t3.micro to its banner; a guest
/// `poweroff` (the ACPI sleep register) leaves the instance `stopped`; `amivm stop` presses the
/// ACPI power button and systemd shuts down cleanly within the grace period; create-image of
/// the instance boots again.
#[test]
fn debian_12_ami_boots_powers_off_and_stops_cleanly() {
    let Some(disk) = debian_disk("debian_12_ami_boots_powers_off_and_stops_cleanly") else {
        return;
    };
    let d = DebianStore::new(&disk);
    let amivm = |args: &[&str], limit: u64| d.amivm(args, limit);
    // Banner and a root shell on the console.
    let out = amivm(
        &[
            "run",
            "debian-12",
            "-t",
            "t3.micro",
            "--rm",
            "--timeout",
            "240",
            "--expect",
            "root@amivm-debian",
        ],
        300,
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout
            .contains("amivm-debian: booted Debian GNU/Linux 12"),
        "{}",
        out.describe()
    );
    // The guest's own poweroff: a clean stop, the instance stopped.
    let out = amivm(
        &[
            "run",
            "debian-12",
            "--name",
            "off",
            "--append",
            "systemd.unit=poweroff.target",
            "--timeout",
            "240",
        ],
        300,
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let ps = amivm(&["--output", "json", "ps", "--all"], 30);
    assert!(ps.stdout.contains("\"stopped\""), "{}", ps.describe());
    // `amivm stop` on a running instance: the power button, no force.
    let out = amivm(&["run", "debian-12", "--name", "svc", "--detach"], 60);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let t0 = std::time::Instant::now();
    loop {
        let logs = amivm(&["logs", "svc"], 30);
        if logs.stdout.contains("amivm-debian: booted") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no banner: {}",
            logs.describe()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let stop = amivm(&["stop", "svc"], 60);
    assert_eq!(stop.code, Some(0), "{}", stop.describe());
    let show = amivm(&["--output", "json", "ps", "--all"], 30);
    assert!(
        show.stdout.contains("guest shut down"),
        "stopped without force: {}",
        show.describe()
    );
    // create-image of the stopped instance boots again.
    let out = amivm(&["create-image", "svc", "--name", "debian-12-again"], 120);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let out = amivm(
        &[
            "run",
            "debian-12-again",
            "--rm",
            "--timeout",
            "240",
            "--expect",
            "amivm-debian: booted",
        ],
        300,
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

/// The Debian 12 AMI on the network (issue 10, test 6): launched with a key pair, user data and
/// port 22 published, cloud-init's EC2 data source configures it from amivm's metadata service
/// (the user data runs, the key is installed for `admin`), and `amivm ssh` logs in and reads
/// the instance id cloud-init recorded.
#[test]
fn debian_12_ami_takes_its_key_and_user_data_and_amivm_ssh_logs_in() {
    const NAME: &str = "debian_12_ami_takes_its_key_and_user_data_and_amivm_ssh_logs_in";
    let Some(disk) = debian_disk(NAME) else {
        return;
    };
    let d = DebianStore::new(&disk);
    let tmp = &d.tmp;
    let amivm = |args: &[&str], limit: u64| d.amivm(args, limit);
    let key = tmp.path().join("mykey");
    let out = amivm(
        &[
            "key-pair",
            "create",
            "mykey",
            "--key-file",
            key.to_str().unwrap(),
        ],
        30,
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let user_data = tmp.path().join("init.sh");
    std::fs::write(
        &user_data,
        "#!/bin/sh\necho from-user-data > /var/tmp/amivm-user-data\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("127.0.0.1:{port}:22");
    let out = amivm(
        &[
            "run",
            "debian-12",
            "--detach",
            "--key-name",
            "mykey",
            "--user-data",
            user_data.to_str().unwrap(),
            "--publish",
            &publish,
        ],
        60,
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = out.stdout.trim().to_string();
    // cloud-init's final stage ends the first boot; then sshd has the instance's key.
    let t0 = std::time::Instant::now();
    loop {
        let logs = amivm(&["logs", &id], 30);
        if logs.stdout.contains("Cloud-init v.") && logs.stdout.contains("finished at") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "cloud-init never finished: {}",
            logs.describe()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let ssh = |cmd: &str| {
        amivm(
            &[
                "ssh",
                &id,
                "--",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
                cmd,
            ],
            90,
        )
    };
    let out = ssh("cat /var/lib/cloud/data/instance-id");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout.trim(), id, "{}", out.describe());
    let out = ssh("cat /var/tmp/amivm-user-data; id -un");
    assert_eq!(out.stdout, "from-user-data\nadmin\n", "{}", out.describe());
    let out = amivm(&["terminate", &id], 120);
    assert_eq!(out.code, Some(0), "{}", out.describe());
}
