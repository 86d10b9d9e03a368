//! The metadata endpoint over TCP/IP, in process: a second smoltcp stack plays the guest
//! (tests/imds_common), reaching 169.254.169.254 through its default gateway as a guest on
//! passt does. No KVM needed.

mod imds_common;

use amivm::net::imds::endpoint::{IDLE_TIMEOUT, MAX_CONNECTIONS};
use amivm::net::imds::http::MAX_HEAD_BYTES;
use amivm::net::imds::{BlockDevice, HttpTokens, MetadataConfig, PublicKey};
use imds_common::*;
use smoltcp::socket::tcp;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDvP8kX1 test@amivm";

fn config(tokens: HttpTokens) -> MetadataConfig {
    MetadataConfig {
        instance_id: "i-0123456789abcdef0".into(),
        ami_id: "ami-0fedcba9876543210".into(),
        instance_type: "t3.micro".into(),
        hostname: "i-0123456789abcdef0".into(),
        local_ipv4: None,
        mac: None,
        region: "us-east-1".into(),
        availability_zone: "us-east-1a".into(),
        account_id: "123456789012".into(),
        public_keys: vec![PublicKey {
            name: "mykey".into(),
            openssh: KEY.into(),
        }],
        block_devices: vec![BlockDevice {
            name: "root".into(),
            device: "/dev/vda".into(),
        }],
        user_data: Some(b"#cloud-config\nhostname: web1\n".to_vec()),
        http_tokens: tokens,
        hop_limit: 1,
        launch_time: "2026-12-01T06:00:00Z".into(),
    }
}

#[test]
fn imdsv2_session_reads_the_instance() {
    let mut w = Wire::new(config(HttpTokens::Optional));
    let token = w.token(21600);
    // The token's answer went out with the hop limit as its IP TTL.
    assert_eq!(w.data_ttls.last(), Some(&1));
    let t = Some(token.as_str());
    assert_eq!(
        w.get("/latest/meta-data/instance-id", t),
        (200, "i-0123456789abcdef0".into())
    );
    assert_eq!(
        w.data_ttls.last(),
        Some(&64),
        "other answers: smoltcp's default TTL"
    );
    assert_eq!(w.get("/latest/meta-data/instance-type", t).1, "t3.micro");
    assert_eq!(w.get("/latest/meta-data/public-keys/", t).1, "0=mykey");
    assert_eq!(
        w.get("/latest/meta-data/public-keys/0/openssh-key", t).1,
        KEY
    );
    assert_eq!(
        w.get("/latest/user-data", t).1,
        "#cloud-config\nhostname: web1\n"
    );
    // Learnt from the guest's frames.
    assert_eq!(w.get("/latest/meta-data/local-ipv4", t).1, "10.0.2.15");
    assert_eq!(w.get("/latest/meta-data/mac", t).1, "52:54:00:12:34:56");
    assert_eq!(w.get("/latest/meta-data/nope", t).0, 404);
    assert_eq!(
        w.get("/latest/meta-data/instance-id", Some("forged")).0,
        401
    );
    // IMDSv1 is allowed by default.
    assert_eq!(w.get("/latest/meta-data/instance-id", None).0, 200);
    let s = w.endpoint.stats();
    assert_eq!(s.requests, 11);
    assert_eq!(s.timeouts, 0);
}

#[test]
fn http_tokens_required_refuses_imdsv1() {
    let mut w = Wire::new(config(HttpTokens::Required));
    assert_eq!(w.get("/latest/meta-data/instance-id", None).0, 401);
    let token = w.token(60);
    assert_eq!(w.get("/latest/meta-data/instance-id", Some(&token)).0, 200);
    // Expired after its TTL.
    w.idle(std::time::Duration::from_secs(61));
    assert_eq!(w.get("/latest/meta-data/instance-id", Some(&token)).0, 401);
}

#[test]
fn token_put_through_a_proxy_is_refused() {
    let mut w = Wire::new(config(HttpTokens::Optional));
    let r = w.request(
        "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\r\n",
    );
    assert_eq!(split(&r).0, 403, "{r}");
}

#[test]
fn a_large_user_data_arrives_whole() {
    let mut c = config(HttpTokens::Optional);
    let big: Vec<u8> = (0..16 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    c.user_data = Some(big.clone());
    let mut w = Wire::new(c);
    let (status, body) = w.get("/latest/user-data", None);
    assert_eq!(status, 200);
    assert_eq!(body.as_bytes(), &big[..]);
}

#[test]
fn huge_headers_get_431_and_the_connection_closes() {
    let mut w = Wire::new(config(HttpTokens::Optional));
    let junk = "a".repeat(MAX_HEAD_BYTES * 4);
    let r = w.request(&format!("GET / HTTP/1.1\r\nX-Junk: {junk}\r\n\r\n"));
    assert_eq!(split(&r).0, 431, "{r}");
    // Garbage that is not HTTP at all.
    let r = w.request("\x16\x03\x01 not http\r\n\r\n");
    assert_eq!(split(&r).0, 400, "{r}");
    assert_eq!(w.get("/latest/meta-data/instance-id", None).0, 200);
}

#[test]
fn connections_are_bounded_and_recycled() {
    let mut w = Wire::new(config(HttpTokens::Optional));
    let extra = 8;
    let handles: Vec<_> = (0..MAX_CONNECTIONS + extra).map(|_| w.connect()).collect();
    w.run_until(2_000, |w| {
        handles
            .iter()
            .all(|h| w.socket(*h).state() != tcp::State::SynSent)
    });
    let established = handles
        .iter()
        .filter(|h| w.socket(**h).state() == tcp::State::Established)
        .count();
    assert_eq!(established, MAX_CONNECTIONS, "the rest are refused (RST)");
    // Idle connections are dropped after IDLE_TIMEOUT, and the sockets serve again.
    w.idle(IDLE_TIMEOUT);
    w.run_until(2_000, |w| {
        handles
            .iter()
            .all(|h| w.socket(*h).state() == tcp::State::Closed)
    });
    assert_eq!(w.endpoint.stats().timeouts, MAX_CONNECTIONS as u64);
    for h in handles {
        w.sockets.remove(h);
    }
    for _ in 0..MAX_CONNECTIONS + extra {
        assert_eq!(w.get("/latest/meta-data/ami-id", None).0, 200);
    }
    assert_eq!(w.endpoint.poll_at(w.now), None, "nothing left pending");
}

#[test]
fn garbage_frames_change_nothing() {
    let mut w = Wire::new(config(HttpTokens::Optional));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..5_000 {
        let len = (rnd() % 1600) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        // Make most of them claim to be IPv4 (or ARP) to 169.254.169.254 so they get past
        // the classifier and into the stack.
        if f.len() >= 34 {
            f[12..14].copy_from_slice(if i % 5 == 0 { &[8, 6] } else { &[8, 0] });
            f[14] = 0x45;
            f[30..34].copy_from_slice(&[169, 254, 169, 254]);
        }
        if f.len() >= 42 && i % 5 == 0 {
            f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f[38..42].copy_from_slice(&[169, 254, 169, 254]);
        }
        w.inject(&f);
        if i % 100 == 0 {
            w.step();
        }
    }
    // A frame larger than the caller's buffer is dropped, not truncated.
    let mut tiny = [0u8; 10];
    while w.endpoint.transmit(w.now, &mut tiny).is_some() {}
    for _ in 0..100 {
        w.step();
    }
    assert_eq!(
        w.get("/latest/meta-data/instance-id", None),
        (200, "i-0123456789abcdef0".into())
    );
}

#[test]
fn guest_arp_for_the_service_is_answered() {
    let mut w = Wire::new(config(HttpTokens::Optional));
    // A link-local guest asks for 169.254.169.254 directly.
    let mut req = vec![0xff; 6];
    req.extend_from_slice(&GUEST_MAC);
    req.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    req.extend_from_slice(&GUEST_MAC);
    req.extend_from_slice(&[169, 254, 3, 4]);
    req.extend_from_slice(&[0; 6]);
    req.extend_from_slice(&[169, 254, 169, 254]);
    assert!(amivm::net::imds::MetadataEndpoint::accepts(&req));
    w.endpoint.receive(w.now, &req);
    assert_eq!(w.endpoint.poll_at(w.now), Some(std::time::Duration::ZERO));
    let mut out = [0u8; 1514];
    let n = w.endpoint.transmit(w.now, &mut out).unwrap();
    assert_eq!(n, 42);
    assert_eq!(&out[..6], &GUEST_MAC);
    assert_eq!(&out[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&out[28..32], &[169, 254, 169, 254]);
    assert_eq!(&out[38..42], &[169, 254, 3, 4]);
}
