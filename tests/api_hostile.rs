//! `amivm serve` under hostile HTTP: a 100 MB body, 10 000 headers, malformed form encoding,
//! garbage bytes, slowloris connections and 500 concurrent connections. Each time the next good
//! (signed) request is still answered promptly, the server never dies, and its memory stays
//! bounded (VmRSS/VmHWM from /proc).

mod api_common;
mod common;
mod instance_common;

use api_common::{amz_now, error_code, exchange, read_response, signed_post, Server, REGION};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a good request may take while the server is under attack.
const PROMPT: Duration = Duration::from_secs(3);
/// The server's header read timeout (src/api/server.rs DEFAULT_LIMITS) plus slack.
const HEADER_TIMEOUT_AND_SLACK: Duration = Duration::from_secs(20);
/// Peak RSS the server may reach through all of it: it buffers at most 64 MiB of bodies and
/// 64 KiB of head per connection (DEFAULT_LIMITS).
const MAX_HWM_KIB: u64 = 160 * 1024;

fn good(server: &Server) {
    let t0 = Instant::now();
    let req = signed_post(
        &server.addr.to_string(),
        "Action=DescribeRegions&Version=2016-11-15",
        &server.owner,
        &amz_now(),
        REGION,
        "ec2",
    );
    let (status, body) = exchange(server.addr, &req, PROMPT).expect("good request");
    assert_eq!(status, 200, "{body}");
    assert!(
        t0.elapsed() < PROMPT,
        "good request took {:?}",
        t0.elapsed()
    );
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

#[test]
fn hostile_clients_do_not_hold_or_break_the_server() {
    let mut server = Server::start();
    good(&server);
    let (rss0, _) = server.memory_kib();

    // A 100 MB body: refused from its Content-Length, before any of it is read.
    let mut s = connect(&server);
    let t0 = Instant::now();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 104857600\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut s).expect("answer to a 100 MB body");
    assert_eq!(
        (status, error_code(&body)),
        (413, Some("RequestEntityTooLarge")),
        "{body}"
    );
    assert!(t0.elapsed() < PROMPT);
    // The same with no Content-Length (chunked): cut off at the limit. The server answers 413
    // and closes while the client is still sending, so the client may see a reset instead.
    let mut s = connect(&server);
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 16, "a".repeat(1 << 16));
    let t0 = Instant::now();
    for _ in 0..(100 << 20) / (1 << 16) {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    match read_response(&mut s) {
        Ok((status, _)) => assert_eq!(status, 413),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ),
            "chunked 100 MB body: {e}"
        ),
    }
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    good(&server);

    // 10 000 headers, and 150 (over the header count, under the size limit).
    for n in [10_000, 150] {
        let mut req = String::from("POST / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..n {
            req.push_str(&format!("X-H-{i}: v\r\n"));
        }
        req.push_str("Content-Length: 0\r\n\r\n");
        let mut s = connect(&server);
        let _ = s.write_all(req.as_bytes());
        match read_response(&mut s) {
            Ok((status, _)) => assert_eq!(status, 431, "{n} headers"),
            // Closed without an answer is acceptable too; a hang is not (the read timeout).
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{n} headers: {e}"
            ),
        }
        good(&server);
    }

    // Malformed form encoding in a correctly signed request, and an unknown action.
    for (body, code) in [
        (
            "Action=Describe%ZZ&Version=2016-11-15",
            "MalformedQueryString",
        ),
        (
            "Action=DescribeImages&Version=2016-11-15&A=1&A=2",
            "MalformedQueryString",
        ),
        ("Action=%FF%FE&Version=2016-11-15", "MalformedQueryString"),
        ("Action=LaunchMissiles&Version=2016-11-15", "InvalidAction"),
        ("Version=2016-11-15", "MissingAction"),
        (
            "Action=DescribeImages&Version=2016-11-15&ImageId.0=x",
            "InvalidParameterValue",
        ),
        (
            "Action=DescribeImages&Version=2016-11-15&Bogus=1",
            "UnknownParameter",
        ),
        ("Action=DescribeImages&Version=latest", "NoSuchVersion"),
    ] {
        let req = signed_post(
            &server.addr.to_string(),
            body,
            &server.owner,
            &amz_now(),
            REGION,
            "ec2",
        );
        let (status, text) = exchange(server.addr, &req, PROMPT).unwrap();
        assert_eq!(
            (status, error_code(&text)),
            (400, Some(code)),
            "{body}: {text}"
        );
    }

    // Garbage bytes.
    for garbage in [
        &b"\x00\xff\x13\x37GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"\r\n\r\n\r\n",
    ] {
        let mut s = connect(&server);
        let _ = s.write_all(garbage);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    good(&server);

    // Slowloris: 200 connections sending a header byte now and then.
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let t0 = Instant::now();
    let mut closed = 0;
    while t0.elapsed() < HEADER_TIMEOUT_AND_SLACK && closed < slow.len() {
        good(&server);
        closed = 0;
        for s in &mut slow {
            if s.write_all(b"a").is_err() {
                closed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        closed,
        slow.len(),
        "slow clients still connected after {:?}",
        t0.elapsed()
    );
    drop(slow);

    // 500 connections at once, idle: the next request is still answered promptly.
    let idle: Vec<TcpStream> = (0..500).map(|_| connect(&server)).collect();
    good(&server);
    // ...and 500 requests on them at once are all answered.
    let body = "Action=DescribeAvailabilityZones&Version=2016-11-15";
    let handles: Vec<_> = idle
        .into_iter()
        .map(|mut s| {
            let req = signed_post(
                &server.addr.to_string(),
                body,
                &server.owner,
                &amz_now(),
                REGION,
                "ec2",
            );
            std::thread::spawn(move || {
                s.write_all(&req).unwrap();
                read_response(&mut s).map(|(st, _)| st)
            })
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|r| matches!(r, Ok(200)))
        .count();
    assert_eq!(ok, 500);
    good(&server);

    assert!(server.alive(), "the server died");
    let (rss, hwm) = server.memory_kib();
    eprintln!("server memory: VmRSS {rss0} KiB at start, {rss} KiB after, VmHWM {hwm} KiB");
    assert!(hwm < MAX_HWM_KIB, "peak RSS {hwm} KiB");
}
