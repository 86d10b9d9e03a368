//! The sample AMI (images/sample, built by `scripts/build-sample-image.sh --no-register`) under
//! `amivm run` (issue 5): its kernel reaches its early-boot lines on `t3.micro` and sees the
//! type's 2 CPUs and the root volume's virtio-mmio device on its command line. A full boot to the
//! init's banner and smoke status needs hardware KVM: it runs where the CPU has VT-x/AMD-V and is
//! skipped here with a printed reason (KVM here is PVM: see /work/shared/notes/kvm-host.md).

mod common;

use common::run_with_deadline;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The sample AMI's command line (scripts/build-sample-image.sh, `SAMPLE_CMDLINE`).
const SAMPLE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw";
/// Early boot under KVM's emulator reaches `smpboot: Allowing 2 CPUs` in ~11 s here (docs/ci.md).
const EARLY_TIMEOUT: &str = "240";
/// A full boot with hardware KVM takes about a second; this is generous.
const FULL_TIMEOUT: &str = "120";
const DEADLINE: Duration = Duration::from_secs(300);

/// A sample file: the variable when set, else the stable path under .cache/sample.
fn sample_file(var: &str, stable: &str) -> PathBuf {
    common::cached_file(var, stable, "scripts/build-sample-image.sh --no-register")
}

struct Sample {
    _tmp: tempfile::TempDir,
    store: PathBuf,
}

impl Sample {
    fn register() -> Sample {
        let vmlinux = sample_file("AMIVM_SAMPLE_VMLINUX", ".cache/sample/vmlinux");
        let ext4 = sample_file("AMIVM_SAMPLE_ROOTFS_EXT4", ".cache/sample/rootfs.ext4");
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Sample {
            store: tmp.path().join("store"),
            _tmp: tmp,
        };
        let out = s.run(&[
            "image",
            "create",
            "--name",
            "amivm-sample",
            "--kernel",
            vmlinux.to_str().unwrap(),
            "--root",
            ext4.to_str().unwrap(),
            "--cmdline",
            SAMPLE_CMDLINE,
        ]);
        assert_eq!(out.code, Some(0), "image create: {}", out.describe());
        s
    }

    fn run(&self, args: &[&str]) -> common::RunOutput {
        let mut c = Command::new(env!("CARGO_BIN_EXE_amivm"));
        c.env_remove("AMIVM_ACCOUNT").env_remove("AMIVM_HOME");
        c.arg("--store").arg(&self.store).args(args);
        run_with_deadline(c, DEADLINE)
    }
}

#[test]
fn sample_kernel_reaches_early_boot_on_t3_micro() {
    let s = Sample::register();
    let out = s.run(&[
        "run",
        "amivm-sample",
        "--instance-type",
        "t3.micro",
        "--rm",
        "--timeout",
        EARLY_TIMEOUT,
        "--append",
        "earlyprintk=ttyS0",
        "--expect",
        r"smpboot: Allowing \d+ CPUs",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let console = &out.stdout;
    assert!(console.contains("Linux version 6.1"), "{}", out.describe());
    let cmdline = console
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_else(|| panic!("no `Command line:`: {}", out.describe()));
    for word in [
        "root=/dev/vda",
        "virtio_mmio.device=",
        "console=ttyS0",
        "earlyprintk=ttyS0",
    ] {
        assert!(cmdline.contains(word), "{word} missing from {cmdline}");
    }
    assert!(
        console.contains("smpboot: Allowing 2 CPUs"),
        "t3.micro should give the kernel 2 CPUs: {}",
        out.describe()
    );
}

#[test]
fn sample_ami_boots_to_its_banner_with_hardware_kvm() {
    if let Some(why) = common::no_hardware_kvm() {
        return common::skip("sample_ami_boots_to_its_banner_with_hardware_kvm", &why);
    }
    let s = Sample::register();
    let out = s.run(&[
        "run",
        "amivm-sample",
        "--instance-type",
        "t3.micro",
        "--timeout",
        FULL_TIMEOUT,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for line in ["amivm-sample: booted", "2 CPU(s)", "amivm-sample: status 0"] {
        assert!(out.stdout.contains(line), "{line:?}: {}", out.describe());
    }
}
