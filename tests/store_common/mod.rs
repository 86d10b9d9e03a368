//! Helpers shared by the image-store CLI tests: run the real `amivm` binary on a temporary
//! store, make kernels and disks, compare store contents.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// 512 KiB: the store's chunk size.
pub const CHUNK: u64 = 512 * 1024;
/// amivm's exit code for its own failures.
pub const FAILED: i32 = 125;

pub const OWNER: &str = "111111111111";
pub const FRIEND: &str = "222222222222";
pub const STRANGER: &str = "333333333333";

/// A temporary directory with a store in `store/` and scratch space.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        Env { tmp, store }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A `Command` for `amivm --store STORE [--account ACCOUNT] ARGS`, with a clean
    /// environment for the store variables.
    pub fn cmd(&self, account: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_amivm"));
        c.env_remove("AMIVM_ACCOUNT").env_remove("AMIVM_HOME");
        c.arg("--store").arg(&self.store);
        if let Some(a) = account {
            c.arg("--account").arg(a);
        }
        c.args(args);
        c
    }

    pub fn run(&self, account: Option<&str>, args: &[&str]) -> Output {
        self.cmd(account, args).output().expect("run amivm")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, account: Option<&str>, args: &[&str]) -> String {
        let out = self.run(account, args);
        assert!(
            out.status.success(),
            "amivm {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Run and require failure with exit code 125 and a one-line error; returns stderr.
    pub fn fails(&self, account: Option<&str>, args: &[&str]) -> String {
        let out = self.run(account, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(FAILED),
            "amivm {args:?} should fail with {FAILED}; stdout: {} stderr: {err}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "error is not one line: {err}"
        );
        assert!(err.starts_with("amivm: error: "), "{err}");
        err
    }

    /// Parse the JSON output of a command.
    pub fn json(&self, account: Option<&str>, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(account, &all)).expect("JSON output")
    }

    /// `amivm image create --name NAME --kernel <test kernel> --root ROOT EXTRA...`.
    pub fn create_cmd(
        &self,
        account: Option<&str>,
        name: &str,
        root: &Path,
        extra: &[&str],
    ) -> Command {
        let kernel = self.kernel();
        let mut args = vec![
            "image",
            "create",
            "--name",
            name,
            "--kernel",
            kernel.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.cmd(account, &args)
    }

    /// Start `image create` in the background with its output captured.
    pub fn spawn_create(
        &self,
        account: Option<&str>,
        name: &str,
        root: &Path,
    ) -> std::process::Child {
        self.create_cmd(account, name, root, &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn amivm image create")
    }

    /// Create an image from `root` with the test kernel; returns its id.
    pub fn create(&self, account: Option<&str>, name: &str, root: &Path, extra: &[&str]) -> String {
        let out = self
            .create_cmd(account, name, root, extra)
            .output()
            .expect("run amivm");
        assert!(
            out.status.success(),
            "image create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            id.starts_with("ami-") && id.len() == 21,
            "bad image id {id}"
        );
        id
    }

    /// A minimal x86-64 ELF kernel that passes the checks `image create` shares with `boot`
    /// (it is never run): the ELF header, one program header loading the whole 4160-byte file
    /// at 1 MiB, entry just past the headers, then NOPs.
    pub fn kernel(&self) -> PathBuf {
        let p = self.path("vmlinux");
        if !p.exists() {
            const LEN: u64 = 64 + 4096;
            const LOAD_AT: u64 = 0x10_0000;
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(b"\x7fELF");
            h[4] = 2; // ELFCLASS64
            h[5] = 1; // little-endian
            h[6] = 1; // EV_CURRENT
            h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
            h[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
            h[24..32].copy_from_slice(&(LOAD_AT + 120).to_le_bytes()); // e_entry
            h[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
            h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
            h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
            h[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            ph[24..32].copy_from_slice(&LOAD_AT.to_le_bytes()); // p_paddr
            ph[32..40].copy_from_slice(&LEN.to_le_bytes()); // p_filesz
            ph[40..48].copy_from_slice(&LEN.to_le_bytes()); // p_memsz
            h.extend(ph);
            h.extend(std::iter::repeat_n(0x90u8, 4096 - 56));
            std::fs::write(&p, h).unwrap();
        }
        p
    }

    /// Files under the store's chunk directory.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        files_under(&self.store.join("chunks"))
    }

    /// Every file of the store with its content hash (lock files excluded: taking a lock
    /// creates them but changes nothing).
    pub fn tree(&self) -> BTreeMap<String, String> {
        files_under(&self.store)
            .into_iter()
            .filter(|p| !p.ends_with("lock") && !p.ends_with("gc.lock"))
            .map(|p| {
                let rel = p.strip_prefix(&self.store).unwrap().display().to_string();
                (rel, sha256_file(&p))
            })
            .collect()
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A sparse raw disk of `size` bytes whose chunks `data` (index, seed) hold noise.
pub fn make_disk(path: &Path, size: u64, data: &[(u64, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(i, seed) in data {
        let len = CHUNK.min(size - i * CHUNK) as usize;
        f.write_all_at(&noise(seed, len), i * CHUNK).unwrap();
    }
}

/// Overwrite `bytes` at `offset` of an existing file.
pub fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// The root snapshot id of an image, via `image show --output json`.
pub fn root_snapshot(env: &Env, account: Option<&str>, ami: &str) -> String {
    let v = env.json(account, &["image", "show", ami]);
    v["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// sha256 of a snapshot's volume, reassembled with `snapshot dump`.
pub fn volume_hash(env: &Env, account: Option<&str>, snap: &str) -> String {
    let out = env.path(&format!("{snap}.dump"));
    let _ = std::fs::remove_file(&out);
    env.ok(
        account,
        &["snapshot", "dump", snap, "-o", out.to_str().unwrap()],
    );
    let h = sha256_file(&out);
    std::fs::remove_file(&out).unwrap();
    h
}

/// A bundle's entries (name, bytes) after its SHA256SUMS, in order.
pub type Entries = Vec<(String, Vec<u8>)>;

/// The entries of a bundle after its SHA256SUMS, in order, with their bytes.
pub fn read_bundle(path: &Path) -> Entries {
    use std::io::Read;
    let mut ar = tar::Archive::new(File::open(path).unwrap());
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        if name != "SHA256SUMS" {
            out.push((name, bytes));
        }
    }
    out
}

/// Write a bundle of `entries` with a correct SHA256SUMS first: what someone crafting a
/// bundle by hand produces (every checksum right, the content whatever they chose).
pub fn write_bundle(path: &Path, entries: &[(String, Vec<u8>)]) {
    let sums: String = entries
        .iter()
        .map(|(n, b)| format!("{}  {n}\n", hex::encode(Sha256::digest(b))))
        .collect();
    let mut tar = tar::Builder::new(File::create(path).unwrap());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, bytes).unwrap();
    };
    add("SHA256SUMS", sums.as_bytes());
    for (n, b) in entries {
        add(n, b);
    }
    tar.finish().unwrap();
}

/// Rewrite the JSON entry `name` of a bundle's entries with `f`.
pub fn edit_json(
    entries: &mut [(String, Vec<u8>)],
    name: &str,
    f: impl FnOnce(&mut serde_json::Value),
) {
    let e = entries
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no entry {name}"));
    let mut v: serde_json::Value = serde_json::from_slice(&e.1).unwrap();
    f(&mut v);
    e.1 = serde_json::to_vec_pretty(&v).unwrap();
}

/// The name of the (only) snapshot manifest entry of a bundle's entries.
pub fn snapshot_entry(entries: &[(String, Vec<u8>)]) -> String {
    let names: Vec<&String> = entries
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("snapshots/"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

/// A snapshot manifest straight from the store's files (what `snapshot show` would print to
/// its owner).
pub fn stored_snapshot(env: &Env, snap: &str) -> serde_json::Value {
    let p = env.store.join("snapshots").join(format!("{snap}.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Every file and directory of the store with its permission bits.
pub fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![(
        dir.to_path_buf(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
    )];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.clone(), meta.permissions().mode() & 0o777));
            if meta.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}
