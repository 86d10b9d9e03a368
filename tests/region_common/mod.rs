//! Helpers shared by the region tests: a real S3-compatible server (`moto_server`, from the
//! pinned venv of scripts/python-env.sh) on a free loopback port, the AWS CLI as the
//! third-party view of its bucket, and hosts (store directories) with the region added.
#![allow(dead_code)]

use crate::api_common::venv;
use crate::common::Report;
use crate::store_common::{make_disk, root_snapshot, volume_hash, Env, CHUNK, FAILED, OWNER};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The region name the tests give their bucket.
pub const REGION: &str = "r1";
/// The bucket.
pub const BUCKET: &str = "amis";
/// moto accepts any key pair; these are the test's.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
];

/// `moto_server` on a free loopback port, with the bucket created.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut m = Moto {
            child: None,
            port,
            url: format!("http://127.0.0.1:{port}"),
        };
        m.spawn();
        let out = m.aws(&["s3", "mb", &format!("s3://{BUCKET}")]);
        assert!(out.status.success(), "aws s3 mb: {}", text(&out));
        m
    }

    fn spawn(&mut self) {
        let child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server");
        self.child = Some(child);
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill the server (its in-memory bucket is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a fresh server on the same port with an empty bucket.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        let out = self.aws(&["s3", "mb", &format!("s3://{BUCKET}")]);
        assert!(out.status.success(), "aws s3 mb: {}", text(&out));
    }

    /// The AWS CLI against this server.
    pub fn aws(&self, args: &[&str]) -> Output {
        Command::new(venv().join("bin/aws"))
            .envs(AWS_ENV.iter().copied())
            .arg("--endpoint-url")
            .arg(&self.url)
            .args(args)
            .output()
            .expect("aws")
    }

    /// `aws s3 ls --recursive s3://BUCKET/`: the keys.
    pub fn keys(&self) -> Vec<String> {
        let out = self.aws(&["s3", "ls", "--recursive", &format!("s3://{BUCKET}/")]);
        // An empty bucket makes `aws s3 ls` exit 1 with no output.
        text(&out)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect()
    }

    /// An object's bytes, through the AWS CLI.
    pub fn get(&self, key: &str, dest: &std::path::Path) -> Vec<u8> {
        let out = self.aws(&[
            "s3",
            "cp",
            &format!("s3://{BUCKET}/{key}"),
            dest.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "aws s3 cp: {}", text(&out));
        std::fs::read(dest).unwrap()
    }

    /// Replace an object's bytes, through the AWS CLI.
    pub fn put(&self, key: &str, bytes: &[u8], scratch: &std::path::Path) {
        std::fs::write(scratch, bytes).unwrap();
        let out = self.aws(&[
            "s3",
            "cp",
            scratch.to_str().unwrap(),
            &format!("s3://{BUCKET}/{key}"),
        ]);
        assert!(out.status.success(), "aws s3 cp: {}", text(&out));
    }

    pub fn rm(&self, key: &str) {
        let out = self.aws(&["s3", "rm", &format!("s3://{BUCKET}/{key}")]);
        assert!(out.status.success(), "aws s3 rm: {}", text(&out));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A host: a store directory with the region added.
pub struct Host {
    pub env: Env,
}

impl Host {
    pub fn new(moto: &Moto) -> Host {
        Host::with_endpoint(&moto.url)
    }

    /// A host whose region is reached through `url` (a [`Proxy`] in front of the server).
    pub fn with_endpoint(url: &str) -> Host {
        let h = Host { env: Env::new() };
        h.ok(
            None,
            &[
                "region",
                "add",
                REGION,
                &format!("s3://{BUCKET}"),
                "--endpoint",
                url,
                "--path-style",
            ],
        );
        h
    }

    /// `amivm ARGS` with the test's AWS credentials.
    pub fn cmd(&self, account: Option<&str>, args: &[&str]) -> Command {
        let mut c = self.env.cmd(account, args);
        c.envs(AWS_ENV.iter().copied());
        c
    }

    pub fn run(&self, account: Option<&str>, args: &[&str]) -> Output {
        self.cmd(account, args).output().expect("run amivm")
    }

    pub fn ok(&self, account: Option<&str>, args: &[&str]) -> String {
        let out = self.run(account, args);
        assert!(
            out.status.success(),
            "amivm {args:?} failed: {}",
            text(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, account: Option<&str>, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(account, &all)).expect("JSON output")
    }

    /// `run AMI --region REGION --timeout 60 EXTRA...` as OWNER, which must succeed.
    pub fn run_from_region(&self, ami: &str, extra: &[&str]) -> crate::common::RunOutput {
        let mut args = vec!["run", ami, "--region", REGION, "--timeout", "60"];
        args.extend_from_slice(extra);
        self.run_ok(&args)
    }

    /// `amivm ARGS` as OWNER (a VM run, say) to its end, at most 3 minutes: it must exit 0.
    pub fn run_ok(&self, args: &[&str]) -> crate::common::RunOutput {
        let out =
            crate::common::run_with_deadline(self.cmd(Some(OWNER), args), Duration::from_secs(180));
        assert_eq!(out.code, Some(0), "{}", out.describe());
        out
    }

    /// Empty the local chunk store: what a lazy instance reads next comes from the region.
    pub fn forget_chunks(&self) {
        for f in crate::store_common::files_under(&self.env.store.join("chunks")) {
            std::fs::remove_file(f).unwrap();
        }
    }

    /// Fails with exit 125 and one line; returns stderr.
    pub fn fails(&self, account: Option<&str>, args: &[&str]) -> String {
        let out = self.run(account, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(FAILED),
            "amivm {args:?} should fail: {}",
            text(&out)
        );
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.starts_with("amivm: error: "), "{err}");
        err
    }
}

/// The guest's `blk read` line for `sector`: (status, sum).
pub fn read_line(r: &Report, sector: u64) -> (String, Option<u64>) {
    let rec = r
        .records("blk")
        .into_iter()
        .find(|rec| {
            rec.words.first().map(String::as_str) == Some("read")
                && rec.field("sector") == Some(&sector.to_string())
        })
        .unwrap_or_else(|| r.fail(&format!("no `blk read sector={sector}` line")));
    (
        rec.field("status").unwrap_or("").to_string(),
        rec.field("sum").and_then(crate::common::report::parse_num),
    )
}

/// Host A makes OWNER's image of the test guest with a root volume of `chunks` chunks of
/// noise, and pushes it; returns (host, AMI, the volume's bytes).
pub fn push_guest_image(moto: &Moto, chunks: u64) -> (Host, String, Vec<u8>) {
    let a = Host::new(moto);
    let disk = a.env.path("root.img");
    let data: Vec<(u64, u64)> = (0..chunks).map(|i| (i, 50 + i)).collect();
    make_disk(&disk, chunks * CHUNK, &data);
    let guest = crate::common::build_guest();
    let out = a.ok(
        Some(OWNER),
        &[
            "image",
            "create",
            "--name",
            "guest",
            "--kernel",
            guest.to_str().unwrap(),
            "--root",
            disk.to_str().unwrap(),
        ],
    );
    let ami = out.trim().to_string();
    a.ok(Some(OWNER), &["image", "push", &ami, "--region", REGION]);
    let bytes = std::fs::read(&disk).unwrap();
    (a, ami, bytes)
}

/// A new host pulls OWNER's `ami` from the region, and its root volume is byte-identical to
/// the one in `from`'s local store.
pub fn assert_pulls_whole(moto: &Moto, from: &Host, ami: &str) {
    let b = Host::new(moto);
    b.ok(Some(OWNER), &["image", "pull", ami, "--region", REGION]);
    let snap = root_snapshot(&from.env, Some(OWNER), ami);
    assert_eq!(
        volume_hash(&b.env, Some(OWNER), &snap),
        volume_hash(&from.env, Some(OWNER), &snap),
        "{ami} pulled from the region"
    );
}

/// A TCP proxy in front of the server that can be cut: every connection is closed and new
/// ones are dropped, as when a server dies mid-transfer (the server itself keeps what it had,
/// so the test can look at the bucket afterwards).
pub struct Proxy {
    pub url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Cut by itself once this many request bytes went through.
    limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Request bytes (client to server) that went through.
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    /// The request lines (`GET /bucket/key HTTP/1.1`) that went through, in order.
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The request line at the start of `buf` when it begins an HTTP request.
fn request_line(buf: &[u8]) -> Option<String> {
    const METHODS: [&str; 5] = ["GET ", "HEAD ", "PUT ", "POST ", "DELETE "];
    let head = String::from_utf8_lossy(&buf[..buf.len().min(1024)]);
    let line = head.lines().next()?;
    METHODS
        .iter()
        .any(|m| line.starts_with(m))
        .then(|| line.to_string())
}

impl Proxy {
    pub fn start(to_port: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let limit = Arc::new(AtomicU64::new(u64::MAX));
        let sent = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let requests: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let (c2, l2, k2, s2) = (cut.clone(), limit.clone(), conns.clone(), sent.clone());
        let r2 = requests.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to_port)) else {
                    continue;
                };
                {
                    let mut k = k2.lock().unwrap();
                    k.push(client.try_clone().unwrap());
                    k.push(server.try_clone().unwrap());
                }
                let pump = |mut from: TcpStream, mut to: TcpStream, count: bool| {
                    let (cut, limit, sent, conns, requests) =
                        (c2.clone(), l2.clone(), s2.clone(), k2.clone(), r2.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if let Some(line) = count.then(|| request_line(&buf[..n])).flatten() {
                                requests.lock().unwrap().push(line);
                            }
                            if cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if count
                                && sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64
                                    > limit.load(Ordering::SeqCst)
                            {
                                cut.store(true, Ordering::SeqCst);
                                for c in conns.lock().unwrap().iter() {
                                    let _ = c.shutdown(std::net::Shutdown::Both);
                                }
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    true,
                );
                pump(server, client, false);
            }
        });
        Proxy {
            url: format!("http://127.0.0.1:{port}"),
            cut,
            limit,
            sent,
            conns,
            requests,
        }
    }

    /// The request lines that went through so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Cut once `bytes` request bytes in all went through it.
    pub fn cut_after(&self, bytes: u64) {
        self.limit.store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Request bytes that went through so far.
    pub fn request_bytes(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Serve again.
    pub fn heal(&self) {
        use std::sync::atomic::Ordering;
        self.limit.store(u64::MAX, Ordering::SeqCst);
        self.conns.lock().unwrap().clear();
        self.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::SeqCst)
    }
}
