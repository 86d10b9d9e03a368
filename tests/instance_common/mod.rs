//! Helpers shared by the instance tests: a temporary store holding an AMI whose kernel is the
//! test guest (tests/guest) and whose root volume is a sparse raw file, and the real `amivm`
//! binary run on it.
#![allow(dead_code)]

use crate::common::{build_guest, run_with_deadline, Report, RunOutput};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// amivm's exit codes (README, `amivm run --help`).
pub const EXIT_TIMEOUT: i32 = 124;
pub const EXIT_FAILED: i32 = 125;
pub const EXIT_CRASHED: i32 = 126;
/// The test's own limit on one amivm command.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// `--timeout` for runs that should end by themselves, so a hang shows as 124, not a stuck test.
pub const GUEST_TIMEOUT: &str = "60";
/// Size of the AMI's root volume (sparse): 8 MiB, 16 store chunks of 512 KiB.
pub const ROOT_BYTES: u64 = 8 << 20;

pub const OWNER: &str = "111111111111";
pub const STRANGER: &str = "333333333333";

/// A temporary store with one AMI, `guest-ami`, owned by [`OWNER`].
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub ami: String,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let root = tmp.path().join("root.raw");
        let f = std::fs::File::create(&root).expect("create root.raw");
        f.set_len(ROOT_BYTES).expect("size root.raw");
        let mut env = Env {
            tmp,
            store,
            ami: String::new(),
        };
        let guest = build_guest();
        let out = env.ok(&[
            "image",
            "create",
            "--name",
            "guest-ami",
            "--kernel",
            guest.to_str().expect("utf-8 path"),
            "--root",
            root.to_str().expect("utf-8 path"),
        ]);
        env.ami = out.trim().to_string();
        assert!(env.ami.starts_with("ami-"), "image create printed {out:?}");
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `amivm --store STORE --account OWNER ARGS`.
    pub fn cmd_as(&self, account: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_amivm"));
        c.env_remove("AMIVM_ACCOUNT").env_remove("AMIVM_HOME");
        c.arg("--store")
            .arg(&self.store)
            .arg("--account")
            .arg(account)
            .args(args);
        c
    }

    pub fn run_as(&self, account: &str, args: &[&str]) -> RunOutput {
        run_with_deadline(self.cmd_as(account, args), DEADLINE)
    }

    pub fn run(&self, args: &[&str]) -> RunOutput {
        self.run_as(OWNER, args)
    }

    /// Run and require exit 0; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, Some(0), "amivm {args:?}: {}", out.describe());
        out.stdout
    }

    /// `amivm run AMI --timeout 60 ARGS` in the foreground.
    pub fn launch(&self, ami: &str, args: &[&str]) -> RunOutput {
        let mut all = vec!["run", ami, "--timeout", GUEST_TIMEOUT];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// `ps --all --output json` as JSON values.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["ps", "--all", "--output", "json"]);
        serde_json::from_str(&out).expect("ps prints JSON")
    }

    /// One instance from `ps`.
    #[track_caller]
    pub fn instance(&self, id: &str) -> serde_json::Value {
        self.ps()
            .into_iter()
            .find(|i| i["InstanceId"] == id)
            .unwrap_or_else(|| panic!("{id} is not in ps --all"))
    }

    #[track_caller]
    pub fn state(&self, id: &str) -> String {
        self.instance(id)["State"]["Name"]
            .as_str()
            .expect("State.Name")
            .to_string()
    }

    /// Wait until the instance is in `want` (panics after `limit`).
    #[track_caller]
    pub fn wait_state(&self, id: &str, want: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let s = self.state(id);
            if s == want {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "{id} is {s}, not {want} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The console log of an instance (`amivm logs`), as a guest report.
    pub fn logs(&self, id: &str) -> Report {
        Report::parse(&self.ok(&["logs", id]))
    }

    /// `key-pair create NAME --key-file FILE`: returns FILE, the private key.
    pub fn create_key_pair(&self, name: &str) -> PathBuf {
        let key = self.path(name);
        self.ok(&[
            "key-pair",
            "create",
            name,
            "--key-file",
            key.to_str().expect("utf-8 path"),
        ]);
        key
    }

    /// The instance's directory in the store.
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.store.join("records/instances").join(id)
    }
}

/// A host TCP port free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The instance id from `amivm run`'s stderr line `amivm: instance i-… (...)`.
#[track_caller]
pub fn launched_id(out: &RunOutput) -> String {
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix("amivm: instance "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no instance id in stderr: {}", out.describe()))
        .to_string()
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().next() != Some("Z"))
        })
        .unwrap_or(false)
}
