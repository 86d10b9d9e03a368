//! Helpers shared by the API tests: `amivm serve` on a free port over a temporary store (with an
//! AMI whose kernel is the test guest, and access keys for two accounts), the pinned Python
//! clients of scripts/requirements.txt, and SigV4-signed raw HTTP requests.
#![allow(dead_code)]

use crate::common::{run_with_deadline, RunOutput};
use crate::instance_common::{Env, OWNER, STRANGER};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The region the test servers serve.
pub const REGION: &str = "us-east-1";
/// The test's own limit on one Python client script.
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(600);

/// An access key.
#[derive(Debug, Clone)]
pub struct Key {
    pub id: String,
    pub secret: String,
}

/// The venv with boto3, awscli and moto: `$AMIVM_VENV` (what .ci/run exports), else made by
/// scripts/python-env.sh.
pub fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        if let Some(v) = std::env::var_os("AMIVM_VENV").filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-env.sh");
        let out = run_with_deadline(Command::new(&script), Duration::from_secs(1200));
        assert_eq!(
            out.code,
            Some(0),
            "scripts/python-env.sh: {}",
            out.describe()
        );
        PathBuf::from(out.stdout.trim())
    })
    .clone()
}

/// A running `amivm serve`.
pub struct Server {
    pub env: Env,
    child: Child,
    pub url: String,
    pub addr: SocketAddr,
    pub owner: Key,
    pub stranger: Key,
}

impl Server {
    /// A store with the guest AMI, access keys for OWNER and STRANGER, and a server on it.
    pub fn start() -> Server {
        let env = Env::new();
        let owner = create_key(&env, OWNER);
        let stranger = create_key(&env, STRANGER);
        let (child, url) = spawn_server(&env);
        let addr = url.trim_start_matches("http://").parse().expect("address");
        Server {
            env,
            child,
            url,
            addr,
            owner,
            stranger,
        }
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop the server (SIGTERM) and start a new one on the same store.
    pub fn restart(&mut self) {
        self.stop();
        let (child, url) = spawn_server(&self.env);
        self.child = child;
        self.addr = url.trim_start_matches("http://").parse().expect("address");
        self.url = url;
    }

    fn stop(&mut self) {
        // SAFETY: kill only reads its integer arguments; the pid is our own child, not reaped
        // yet, so it cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the server process is still there.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `python SCRIPT ARGS` from tests/api/ with the endpoint and both accounts' keys in the
    /// environment (AMIVM_ENDPOINT, AMIVM_REGION, AMIVM_AMI, AMIVM_OWNER_*, AMIVM_STRANGER_*).
    pub fn python(&self, script: &str, args: &[&str]) -> RunOutput {
        let py = venv().join("bin/python");
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/api")
            .join(script);
        let mut cmd = Command::new(py);
        cmd.arg(path).args(args);
        self.client_env(&mut cmd);
        run_with_deadline(cmd, SCRIPT_DEADLINE)
    }

    /// `aws --endpoint-url URL ARGS` as the owner.
    pub fn aws(&self, args: &[&str]) -> RunOutput {
        let mut cmd = Command::new(venv().join("bin/aws"));
        cmd.arg("--endpoint-url").arg(&self.url).args(args);
        self.client_env(&mut cmd);
        cmd.env("AWS_ACCESS_KEY_ID", &self.owner.id)
            .env("AWS_SECRET_ACCESS_KEY", &self.owner.secret);
        run_with_deadline(cmd, SCRIPT_DEADLINE)
    }

    fn client_env(&self, cmd: &mut Command) {
        for v in [
            "AWS_PROFILE",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
        ] {
            cmd.env_remove(v);
        }
        let tmp = self.env.tmp.path();
        cmd.env("AWS_CONFIG_FILE", tmp.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                tmp.join("no-aws-credentials"),
            )
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AMIVM_ENDPOINT", &self.url)
            .env("AMIVM_REGION", REGION)
            .env("AMIVM_AMI", &self.env.ami)
            .env("AMIVM_OWNER_ACCOUNT", OWNER)
            .env("AMIVM_OWNER_KEY", &self.owner.id)
            .env("AMIVM_OWNER_SECRET", &self.owner.secret)
            .env("AMIVM_STRANGER_ACCOUNT", STRANGER)
            .env("AMIVM_STRANGER_KEY", &self.stranger.id)
            .env("AMIVM_STRANGER_SECRET", &self.stranger.secret);
    }

    /// VmRSS and VmHWM of the server, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("server /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        // Instances the server started run in their own sessions: stop what is left.
        if let Ok(list) = serde_json::from_str::<Vec<serde_json::Value>>(
            &self.env.run(&["ps", "--output", "json"]).stdout,
        ) {
            for i in list {
                if let Some(id) = i["InstanceId"].as_str() {
                    let _ = self.env.run(&["terminate", id, "--force"]);
                }
            }
        }
        for account in [STRANGER] {
            if let Ok(list) = serde_json::from_str::<Vec<serde_json::Value>>(
                &self.env.run_as(account, &["ps", "--output", "json"]).stdout,
            ) {
                for i in list {
                    if let Some(id) = i["InstanceId"].as_str() {
                        let _ = self.env.run_as(account, &["terminate", id, "--force"]);
                    }
                }
            }
        }
    }
}

fn create_key(env: &Env, account: &str) -> Key {
    let out = env.run_as(account, &["account", "create-access-key"]);
    assert_eq!(out.code, Some(0), "create-access-key: {}", out.describe());
    let mut it = out.stdout.split_whitespace();
    let id = it.next().expect("key id").to_string();
    let secret = it.next().expect("secret").to_string();
    Key { id, secret }
}

/// Start `amivm serve --listen 127.0.0.1:0` and read the URL it prints.
fn spawn_server(env: &Env) -> (Child, String) {
    let mut cmd = env.cmd_as(OWNER, &["serve", "--listen", "127.0.0.1:0"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(env.path("serve.log"))
                .expect("serve.log"),
        ));
    let mut child = cmd.spawn().expect("spawn amivm serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's URL");
    assert!(
        line.starts_with("http://"),
        "amivm serve printed {line:?}; log: {}",
        std::fs::read_to_string(env.path("serve.log")).unwrap_or_default()
    );
    (child, line.trim().to_string())
}

/// Sign an EC2 Query POST with SigV4 (amivm's own signer: the Python tests check it against
/// botocore's) at `amz_date`, for `region`/`service`.
pub fn signed_post(
    host: &str,
    body: &str,
    key: &Key,
    amz_date: &str,
    region: &str,
    service: &str,
) -> Vec<u8> {
    use amivm::api::sigv4;
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let headers = vec![
        ("content-type".to_string(), content_type.to_string()),
        ("host".to_string(), host.to_string()),
        ("x-amz-date".to_string(), amz_date.to_string()),
    ];
    let req = sigv4::Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: body.as_bytes(),
    };
    let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
    let creq = sigv4::canonical_request(&req, &signed).expect("canonical request");
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = sigv4::string_to_sign(amz_date, &scope, &creq);
    let sig = sigv4::sign(
        &sigv4::signing_key(&key.secret, date, region, service),
        &sts,
    );
    format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nX-Amz-Date: {amz_date}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={sig}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        key.id,
        signed.join(";"),
        body.len()
    )
    .into_bytes()
}

/// Now as an `x-amz-date`.
pub fn amz_now() -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .expect("format the date")
}

/// A raw HTTP exchange: send `request`, read the whole answer (the server closes or the
/// response is complete), within `limit`. Returns the status and the body.
pub fn exchange(
    addr: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(request)?;
    read_response(&mut s)
}

/// Read one HTTP/1.1 response with a Content-Length body.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The `<Code>` of an EC2 error document.
pub fn error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(&body[start..end])
}
