//! Issue 8, defects 9 and 10: kernels that can never run are refused before a VM is built, by
//! `amivm boot` and by `amivm image create` alike (one rule, `vmm::boot::check`): truncated
//! ELFs, ELFs with nothing to load, segments over the structures amivm puts in the first MiB,
//! segments beyond RAM; and images with a command line or more drives than a VM takes. FIFOs
//! given to `image create` are refused without hanging.

mod common;
mod store_common;

use common::{build_guest, run_with_deadline, RunOutput};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use store_common::{make_disk, Env, CHUNK, OWNER};

/// `--timeout` for boots that ran garbage before the fix, so they end as 124, not a stuck test.
const GUEST_TIMEOUT: &str = "10";
const DEADLINE: Duration = Duration::from_secs(60);
/// ELF64 layout (System V ABI): e_phoff, e_phnum, and the program header fields.
const E_PHOFF: usize = 32;
const E_PHNUM: usize = 56;
const PHDR_LEN: usize = 56;
const P_PADDR: usize = 24;
const P_MEMSZ: usize = 40;
const PT_LOAD: u32 = 1;
/// Places amivm writes to below 1 MiB (src/vmm/layout.rs): GDT, zero page, page tables, MP
/// table, ACPI tables.
const LOW_STRUCTURES: [u64; 5] = [0x500, 0x7000, 0x9000, 0x9_fc00, 0xe_0000];

fn amivm(args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(args);
    run_with_deadline(cmd, DEADLINE)
}

/// Exit 125, one line on stderr containing `needle`, no guest output.
#[track_caller]
fn assert_refused(out: &RunOutput, needle: &str) {
    assert_eq!(out.code, Some(125), "{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {}", out.describe());
    assert!(lines[0].starts_with("amivm: error: "), "{}", out.describe());
    assert!(
        lines[0].contains(needle),
        "stderr lacks {needle:?}: {}",
        out.describe()
    );
    assert!(out.stdout.is_empty(), "the guest ran: {}", out.describe());
}

fn boot(kernel: &Path, extra: &[&str]) -> RunOutput {
    let mut args = vec![
        "boot",
        "--kernel",
        kernel.to_str().unwrap(),
        "--timeout",
        GUEST_TIMEOUT,
    ];
    args.extend_from_slice(extra);
    amivm(&args)
}

/// The file offsets of the test guest's PT_LOAD program headers.
fn load_phdrs(elf: &[u8]) -> Vec<usize> {
    let phoff = u64::from_le_bytes(elf[E_PHOFF..E_PHOFF + 8].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(elf[E_PHNUM..E_PHNUM + 2].try_into().unwrap()) as usize;
    (0..phnum)
        .map(|i| phoff + i * PHDR_LEN)
        .filter(|&p| u32::from_le_bytes(elf[p..p + 4].try_into().unwrap()) == PT_LOAD)
        .collect()
}

/// A copy of the test guest, changed by `f`, in `dir`.
fn patched_guest(dir: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut elf = std::fs::read(build_guest()).unwrap();
    assert_eq!(
        load_phdrs(&elf).len(),
        2,
        "the guest has two PT_LOAD segments"
    );
    f(&mut elf);
    let p = dir.join(name);
    std::fs::write(&p, elf).unwrap();
    p
}

fn put_u64(elf: &mut [u8], at: usize, v: u64) {
    elf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The unbootable kernels both commands refuse, with the words that say why.
fn bad_kernels(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut v = vec![
        (
            patched_guest(dir, "no-load.elf", |e| {
                for p in load_phdrs(e) {
                    e[p..p + 4].copy_from_slice(&0u32.to_le_bytes()); // PT_NULL
                }
            }),
            "has no PT_LOAD segment",
        ),
        (
            patched_guest(dir, "cut-segments.elf", |e| e.truncate(2000)),
            "is truncated: its segment",
        ),
        (
            patched_guest(dir, "cut-header.elf", |e| e.truncate(40)),
            "is truncated: its ELF header",
        ),
    ];
    for addr in LOW_STRUCTURES {
        v.push((
            patched_guest(dir, &format!("low-{addr:x}.elf"), |e| {
                let data = load_phdrs(e)[1];
                put_u64(e, data + P_PADDR, addr);
            }),
            "below 1 MiB",
        ));
    }
    v
}

/// Defect 10: each of these was loaded (and then overwritten by amivm's own structures, or run
/// as garbage until the timeout, or failed with a vague loader error).
#[test]
fn boot_refuses_kernels_that_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    for (kernel, why) in bad_kernels(dir.path()) {
        let out = boot(&kernel, &[]);
        assert_refused(&out, why);
        assert!(
            out.stderr.contains(&kernel.display().to_string()),
            "{}",
            out.describe()
        );
    }
    // p_memsz of 1 GiB: more than the guest's 128 MiB of RAM.
    let huge = patched_guest(dir.path(), "huge-bss.elf", |e| {
        let data = load_phdrs(e)[1];
        put_u64(e, data + P_MEMSZ, 1 << 30);
    });
    assert_refused(
        &boot(&huge, &["--memory", "128"]),
        "beyond the guest's 128 MiB of RAM",
    );
    // The unpatched guest still boots.
    let out = boot(&build_guest(), &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

fn image_create(env: &Env, name: &str, args: &[&str]) -> RunOutput {
    let mut all = vec!["image", "create", "--name", name];
    all.extend_from_slice(args);
    run_with_deadline(env.cmd(Some(OWNER), &all), DEADLINE)
}

/// Defect 9: `image create` took kernels, command lines and volume counts that `boot` refuses,
/// making images that could never launch. It refuses them with the same words, and the store
/// stays as it was.
#[test]
fn image_create_refuses_what_boot_refuses() {
    let env = Env::new();
    let root = env.path("root.raw");
    make_disk(&root, CHUNK, &[]);
    let r = root.to_str().unwrap();
    let guest = build_guest();
    let g = guest.to_str().unwrap();
    let out = image_create(&env, "good", &["--kernel", g, "--root", r]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let before = env.tree();

    for (kernel, why) in bad_kernels(env.tmp.path()) {
        let k = kernel.to_str().unwrap();
        assert_refused(
            &image_create(&env, "bad", &["--kernel", k, "--root", r]),
            why,
        );
    }
    // A command line that fits alone but not with the root= and device argument amivm adds.
    let long = "x".repeat(2040);
    assert_refused(
        &image_create(&env, "long", &["--kernel", g, "--root", r, "--cmdline", &long]),
        "with the root= and virtio_mmio.device= arguments amivm adds for 1 drive(s); this kernel accepts at most 2047",
    );
    // boot refuses the same command line with a drive.
    let drive = format!("path={r},ro");
    assert_refused(
        &boot(&guest, &["--cmdline", &long, "--drive", &drive]),
        "this kernel accepts at most 2047",
    );
    // 20 volumes: one more than a VM has GSIs for.
    let extra: Vec<String> = (0..19)
        .map(|i| {
            let p = env.path(&format!("vol{i}.raw"));
            make_disk(&p, CHUNK, &[]);
            p.display().to_string()
        })
        .collect();
    let mut args = vec!["--kernel", g, "--root", r];
    for p in &extra {
        args.extend(["--volume", p.as_str()]);
    }
    assert_refused(
        &image_create(&env, "many", &args),
        "20 volumes (block device mappings); a VM has at most 19",
    );
    assert_eq!(
        env.tree(),
        before,
        "a refused image create changed the store"
    );
    // 19 volumes are fine.
    args.truncate(args.len() - 2);
    let out = image_create(&env, "nineteen", &args);
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

/// Defect 12: a FIFO as `--kernel` hung `image create` in open(2); as `--root` or `--volume`
/// too. `--initrd` was already refused; all four now say it is a FIFO, at once.
#[test]
fn image_create_refuses_fifos_without_hanging() {
    let env = Env::new();
    let root = env.path("root.raw");
    make_disk(&root, CHUNK, &[]);
    let r = root.to_str().unwrap();
    let guest = build_guest();
    let g = guest.to_str().unwrap();
    let fifo = env.path("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--kernel", f, "--root", r], "it must be a regular file"),
        (
            &["--kernel", g, "--root", f],
            "it must be a regular file, a block device or a directory",
        ),
        (
            &["--kernel", g, "--root", r, "--initrd", f],
            "it must be a regular file",
        ),
        (
            &["--kernel", g, "--root", r, "--volume", f],
            "it must be a regular file, a block device or a directory",
        ),
    ];
    for (args, why) in cases {
        let out = image_create(&env, "fifo", args);
        assert!(!out.killed, "{args:?} hung");
        assert_refused(&out, "is a FIFO (named pipe)");
        assert!(out.stderr.contains(why), "{args:?}: {}", out.describe());
    }
}
