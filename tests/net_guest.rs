//! The network card end to end (issue 10, test item 2): the test guest's polling virtio-net
//! driver (tests/guest/net.c, `net=dhcp`) sends a DHCPDISCOVER and ARPs for the router it was
//! offered. Under `amivm boot --network user` the answers come from passt; the same guest on
//! QEMU microvm with `-netdev stream` to passt must get the same answers (our use of passt
//! agrees with QEMU's), and with `-netdev user` (slirp) the same words (our device agrees with
//! QEMU's virtio-net).

mod common;

use common::report::Report;
use common::{build_guest, on_path, qemu_microvm, run_with_deadline, skip_note, RunOutput, QEMU};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);
const APPEND: &str = "console=ttyS0 net=dhcp exit_code=0";
const MAC: &str = "02:12:34:56:78:9a";

#[track_caller]
fn net_report(out: &RunOutput, who: &str) -> Report {
    let r = Report::from_run(out);
    assert!(
        r.get("net_error").is_none(),
        "{who}: the guest reported net_error: {}",
        out.describe()
    );
    for key in ["net_mac", "net_dhcp", "net_ip", "net_router", "net_arp"] {
        assert!(r.get(key).is_some(), "{who}: no {key}: {}", out.describe());
    }
    assert_eq!(r.str("net_dhcp"), "offer", "{who}");
    r
}

fn qemu_net(netdev: &str, append: &str) -> RunOutput {
    let mut cmd = qemu_microvm(&build_guest(), 1, 128, append, false);
    cmd.args([
        "-global",
        "virtio-mmio.force-legacy=false",
        "-netdev",
        netdev,
    ])
    .args(["-device", &format!("virtio-net-device,netdev=n0,mac={MAC}")]);
    run_with_deadline(cmd, DEADLINE)
}

/// The guest on QEMU microvm with `-netdev stream` to a passt of its own.
fn qemu_passt(append: &str) -> RunOutput {
    let dir = tempfile::tempdir().unwrap();
    // passt started as root runs as nobody: its socket directory must be writable by it.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let sock = dir.path().join("passt.sock");
    let mut passt = Command::new("passt")
        .args(["--foreground", "--quiet", "--mtu", "1500", "--socket"])
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !sock.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = qemu_net(
        &format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            sock.display()
        ),
        append,
    );
    let _ = passt.kill();
    let _ = passt.wait();
    out
}

#[test]
fn dhcp_and_arp_through_passt_agree_with_qemu() {
    if !on_path("passt") || !on_path(QEMU) {
        return skip_note("net_guest: needs passt and qemu-system-x86_64");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(["boot", "--kernel"])
        .arg(build_guest())
        .args(["--network", "user", "--mac", MAC, "--timeout", "60"])
        .args(["--cmdline", APPEND]);
    let out = run_with_deadline(cmd, DEADLINE);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let ours = net_report(&out, "amivm");
    assert_eq!(ours.str("net_mac"), MAC);

    // The same guest on QEMU, connected to its own passt.
    let out = qemu_passt(APPEND);
    let theirs = net_report(&out, "QEMU + passt");
    for key in ["net_mac", "net_dhcp", "net_ip", "net_router", "net_arp"] {
        assert_eq!(
            ours.str(key),
            theirs.str(key),
            "{key}: amivm vs QEMU with passt"
        );
    }

    // QEMU's own user network (slirp): a different network, the same exchange.
    let out = qemu_net("user,id=n0", APPEND);
    let slirp = net_report(&out, "QEMU + slirp");
    assert_eq!(slirp.str("net_mac"), MAC);
}

/// A one-page HTTP server on the host's loopback: answers each connection with `BODY`, and
/// sends the first request line it got down the channel.
fn http_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            c.set_read_timeout(Some(Duration::from_secs(30))).ok();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line.trim_end().to_string());
            let _ =
                c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 20\r\n\r\nhello from the host\n");
        }
    });
    (port, rx)
}

#[test]
fn the_guest_fetches_a_page_from_the_host_through_passt() {
    if !on_path("passt") {
        return skip_note("net_guest: needs passt");
    }
    let (port, requests) = http_server();
    let append = format!("console=ttyS0 net=http:{port} exit_code=0");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(["boot", "--kernel"])
        .arg(build_guest())
        .args(["--network", "user", "--mac", MAC, "--timeout", "60"])
        .args(["--cmdline", &append]);
    let out = run_with_deadline(cmd, DEADLINE);
    let got = requests.try_recv();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = net_report(&out, "amivm");
    assert_eq!(r.str("net_http"), "HTTP/1.0 200 OK", "{}", out.describe());
    assert_eq!(got.as_deref(), Ok("GET / HTTP/1.0"));
}

#[test]
fn a_published_port_reaches_the_guest() {
    if !on_path("passt") {
        return skip_note("net_guest: needs passt");
    }
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amivm"));
    cmd.args(["boot", "--kernel"])
        .arg(build_guest())
        .args(["--network", "user", "--mac", MAC, "--timeout", "60"])
        .args(["--publish", &format!("127.0.0.1:{port}:8080")])
        .args(["--cmdline", "console=ttyS0 net=serve:8080 exit_code=0"]);
    let guest = std::thread::spawn(move || run_with_deadline(cmd, DEADLINE));
    // Connect (passt listens once the VM starts) and say one line; the guest answers and closes.
    let t0 = std::time::Instant::now();
    let answer = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no answer on port {port}"
        );
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = c.write_all(b"hello guest\n");
        let mut got = String::new();
        let _ = c.read_to_string(&mut got);
        if !got.is_empty() {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answer, "hello from the amivm test guest\n");
    let out = guest.join().unwrap();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = net_report(&out, "amivm");
    assert_eq!(r.str("net_served"), "1", "{}", out.describe());
}

#[test]
fn qemu_with_passt_and_with_slirp_fetch_the_same_page() {
    if !on_path("passt") || !on_path(QEMU) {
        return skip_note("net_guest: needs passt and qemu-system-x86_64");
    }
    let (port, requests) = http_server();
    let append = format!("console=ttyS0 net=http:{port} exit_code=0");
    for (who, out) in [
        ("QEMU + passt", qemu_passt(&append)),
        ("QEMU + slirp", qemu_net("user,id=n0", &append)),
    ] {
        let r = net_report(&out, who);
        assert_eq!(
            r.str("net_http"),
            "HTTP/1.0 200 OK",
            "{who}: {}",
            out.describe()
        );
        assert_eq!(
            requests.try_recv().as_deref(),
            Ok("GET / HTTP/1.0"),
            "{who}"
        );
    }
}

/// The pids of `pid`'s children (all its threads').
fn children(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let Ok(t) = t else { continue };
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

#[test]
fn a_tx_flood_after_passt_died_leaves_the_vmm_and_the_metadata_service_working() {
    if !on_path("passt") {
        return skip_note("net_guest: needs passt");
    }
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_amivm"))
        .args(["boot", "--kernel"])
        .arg(build_guest())
        .args(["--network", "user", "--mac", MAC, "--timeout", "60"])
        .args(["--cmdline", "console=ttyS0 net=flood:3000 exit_code=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        text.push_str(&line);
        if line.contains("net_flood_ready=") {
            let kids = children(pid);
            assert!(!kids.is_empty(), "no passt under amivm {pid}");
            for k in kids {
                // SAFETY: kill(2) on a pid we just read as our child's child.
                unsafe { libc::kill(k, libc::SIGKILL) };
            }
        }
        line.clear();
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{text}\n{err}");
    assert!(text.contains("net_flood_sent=3000"), "{text}");
    assert!(text.contains("imds_instance_id=i-boot"), "{text}");
    assert!(err.contains("network lost"), "{err}");
}
