//! Tests of the request policy and the tree, without a network.

use super::config::*;
use super::http::{parse, Parse, Request, Status};
use super::service::handle;
use super::token::TokenKey;
use super::tree::Guest;
use std::net::Ipv4Addr;
use std::time::Duration;

pub(crate) fn sample_config() -> MetadataConfig {
    MetadataConfig {
        instance_id: "i-0123456789abcdef0".into(),
        ami_id: "ami-0fedcba9876543210".into(),
        instance_type: "t3.micro".into(),
        hostname: "web1".into(),
        local_ipv4: None,
        mac: None,
        region: "us-east-1".into(),
        availability_zone: "us-east-1a".into(),
        account_id: "123456789012".into(),
        public_keys: vec![PublicKey {
            name: "mykey".into(),
            openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG mykey".into(),
        }],
        block_devices: vec![
            BlockDevice {
                name: "ami".into(),
                device: "/dev/vda".into(),
            },
            BlockDevice {
                name: "root".into(),
                device: "/dev/vda".into(),
            },
        ],
        user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
        http_tokens: HttpTokens::Optional,
        hop_limit: DEFAULT_HOP_LIMIT,
        launch_time: "2026-12-01T06:00:00Z".into(),
    }
}

const GUEST: Guest = Guest {
    ipv4: Some(Ipv4Addr::new(10, 0, 2, 15)),
    mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
};

fn req(head: &str) -> Request {
    match parse(format!("{head}\r\n\r\n").as_bytes()) {
        Parse::Done(r) => r,
        o => panic!("{head:?}: {o:?}"),
    }
}

fn get(config: &MetadataConfig, key: &TokenKey, head: &str) -> (Status, String) {
    let r = handle(config, key, &req(head), Duration::from_secs(5), GUEST).response;
    (r.status, String::from_utf8(r.body).unwrap())
}

fn ok(config: &MetadataConfig, path: &str) -> String {
    let key = TokenKey::from_bytes([1; 32]);
    let (s, body) = get(config, &key, &format!("GET {path} HTTP/1.1"));
    assert_eq!(s, Status::Ok, "{path}: {body}");
    body
}

#[test]
fn serves_ec2_paths() {
    let c = sample_config();
    assert_eq!(
        ok(&c, "/latest/meta-data/instance-id"),
        "i-0123456789abcdef0"
    );
    assert_eq!(ok(&c, "/latest/meta-data/ami-id"), "ami-0fedcba9876543210");
    assert_eq!(ok(&c, "/2009-04-04/meta-data/instance-type"), "t3.micro");
    assert_eq!(ok(&c, "/2021-03-23/meta-data/hostname"), "web1");
    assert_eq!(ok(&c, "/latest/meta-data/local-hostname"), "web1");
    assert_eq!(ok(&c, "/latest/meta-data/local-ipv4"), "10.0.2.15");
    assert_eq!(ok(&c, "/latest/meta-data/mac"), "52:54:00:12:34:56");
    assert_eq!(
        ok(&c, "/latest/meta-data/placement/availability-zone"),
        "us-east-1a"
    );
    assert_eq!(ok(&c, "/latest/meta-data/public-keys/"), "0=mykey");
    assert_eq!(ok(&c, "/latest/meta-data/public-keys/0/"), "openssh-key");
    assert_eq!(
        ok(&c, "/latest/meta-data/public-keys/0/openssh-key"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG mykey"
    );
    assert_eq!(
        ok(&c, "/latest/meta-data/block-device-mapping/"),
        "ami\nroot"
    );
    assert_eq!(
        ok(&c, "/latest/meta-data/block-device-mapping/root"),
        "/dev/vda"
    );
    assert_eq!(ok(&c, "/latest/user-data"), "#!/bin/sh\necho hi\n");
    assert_eq!(
        ok(
            &c,
            "/latest/meta-data/network/interfaces/macs/52:54:00:12:34:56/local-ipv4s"
        ),
        "10.0.2.15"
    );
}

#[test]
fn lists_directories_as_ec2() {
    let c = sample_config();
    let md = ok(&c, "/latest/meta-data/");
    assert_eq!(md, ok(&c, "/latest/meta-data"));
    for line in [
        "ami-id",
        "block-device-mapping/",
        "hostname",
        "instance-id",
        "instance-type",
        "local-hostname",
        "local-ipv4",
        "mac",
        "placement/",
        "public-keys/",
    ] {
        assert!(md.lines().any(|l| l == line), "{line} not in\n{md}");
    }
    assert!(!md.ends_with('\n'));
    let root = ok(&c, "/");
    for v in [
        "2009-04-04",
        "2016-09-02",
        "2018-09-24",
        "2021-03-23",
        "latest",
    ] {
        assert!(root.lines().any(|l| l == v), "{v} not in {root}");
    }
    assert_eq!(ok(&c, "/latest/"), "dynamic/\nmeta-data/\nuser-data");
    assert_eq!(ok(&c, "/latest/dynamic/instance-identity/"), "document");
}

#[test]
fn identity_document_is_ec2_json() {
    let c = sample_config();
    let doc = ok(&c, "/latest/dynamic/instance-identity/document");
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(v["instanceId"], "i-0123456789abcdef0");
    assert_eq!(v["imageId"], "ami-0fedcba9876543210");
    assert_eq!(v["accountId"], "123456789012");
    assert_eq!(v["region"], "us-east-1");
    assert_eq!(v["availabilityZone"], "us-east-1a");
    assert_eq!(v["privateIp"], "10.0.2.15");
    assert_eq!(v["architecture"], "x86_64");
    assert!(v["kernelId"].is_null());
}

#[test]
fn unknown_paths_and_missing_user_data_are_404() {
    let mut c = sample_config();
    let key = TokenKey::from_bytes([1; 32]);
    for p in [
        "/latest/meta-data/nope",
        "/latest/meta-data/instance-id/",
        "/2000-01-01/meta-data/",
        "/latest/meta-data/public-keys/1/openssh-key",
    ] {
        let (s, _) = get(&c, &key, &format!("GET {p} HTTP/1.1"));
        assert_eq!(s, Status::NotFound, "{p}");
    }
    c.user_data = None;
    assert_eq!(
        get(&c, &key, "GET /latest/user-data HTTP/1.1").0,
        Status::NotFound
    );
    assert_eq!(ok(&c, "/latest/"), "dynamic/\nmeta-data/");
}

#[test]
fn configured_addresses_win_over_learnt_ones() {
    let mut c = sample_config();
    c.local_ipv4 = Some(Ipv4Addr::new(172, 31, 0, 9));
    c.mac = Some([2, 0, 0, 0, 0, 1]);
    assert_eq!(ok(&c, "/latest/meta-data/local-ipv4"), "172.31.0.9");
    assert_eq!(ok(&c, "/latest/meta-data/mac"), "02:00:00:00:00:01");
}

#[test]
fn imdsv2_tokens() {
    let mut c = sample_config();
    let key = TokenKey::from_bytes([1; 32]);
    let put = handle(
        &c,
        &key,
        &req("PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600"),
        Duration::from_secs(5),
        GUEST,
    );
    assert_eq!(put.response.status, Status::Ok);
    assert_eq!(put.hop_limit, Some(DEFAULT_HOP_LIMIT));
    assert!(put
        .response
        .headers
        .iter()
        .any(|(n, v)| *n == "X-Aws-Ec2-Metadata-Token-Ttl-Seconds" && v == "21600"));
    let token = String::from_utf8(put.response.body).unwrap();
    let with =
        format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}");
    assert_eq!(get(&c, &key, &with).0, Status::Ok);
    // A wrong token is refused even where IMDSv1 is allowed.
    let wrong = "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: AAAA";
    assert_eq!(get(&c, &key, wrong).0, Status::Unauthorized);
    let twice = format!("{with}\r\nX-aws-ec2-metadata-token: {token}");
    assert_eq!(get(&c, &key, &twice).0, Status::BadRequest);
    // Expired.
    let later = handle(
        &c,
        &key,
        &req(&with),
        Duration::from_secs(5 + 21_600),
        GUEST,
    );
    assert_eq!(later.response.status, Status::Unauthorized);
    // http-tokens=required: no IMDSv1.
    c.http_tokens = HttpTokens::Required;
    let v1 = "GET /latest/meta-data/instance-id HTTP/1.1";
    assert_eq!(get(&c, &key, v1).0, Status::Unauthorized);
    assert_eq!(get(&c, &key, &with).0, Status::Ok);
}

#[test]
fn token_requests_are_checked() {
    let c = sample_config();
    let key = TokenKey::from_bytes([1; 32]);
    let put = "PUT /latest/api/token HTTP/1.1";
    for (extra, want) in [
        ("", Status::BadRequest),
        ("\r\nX-aws-ec2-metadata-token-ttl-seconds: 0", Status::BadRequest),
        ("\r\nX-aws-ec2-metadata-token-ttl-seconds: 21601", Status::BadRequest),
        ("\r\nX-aws-ec2-metadata-token-ttl-seconds: -1", Status::BadRequest),
        ("\r\nX-aws-ec2-metadata-token-ttl-seconds: ten", Status::BadRequest),
        (
            "\r\nX-aws-ec2-metadata-token-ttl-seconds: 1\r\nX-aws-ec2-metadata-token-ttl-seconds: 2",
            Status::BadRequest,
        ),
        (
            "\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.0.0.1",
            Status::Forbidden,
        ),
        ("\r\nX-aws-ec2-metadata-token-ttl-seconds: 1", Status::Ok),
    ] {
        assert_eq!(get(&c, &key, &format!("{put}{extra}")).0, want, "{extra:?}");
    }
    let ttl = "\r\nX-aws-ec2-metadata-token-ttl-seconds: 60";
    assert_eq!(
        get(&c, &key, &format!("GET /latest/api/token HTTP/1.1{ttl}")).0,
        Status::MethodNotAllowed
    );
    assert_eq!(
        get(&c, &key, "PUT /latest/meta-data/ HTTP/1.1").0,
        Status::MethodNotAllowed
    );
    assert_eq!(
        get(&c, &key, "POST /latest/meta-data/ HTTP/1.1").0,
        Status::MethodNotAllowed
    );
}

#[test]
fn head_requests_have_no_body() {
    let c = sample_config();
    let key = TokenKey::from_bytes([1; 32]);
    let r = handle(
        &c,
        &key,
        &req("HEAD /latest/meta-data/instance-id HTTP/1.1"),
        Duration::ZERO,
        GUEST,
    )
    .response;
    let bytes = String::from_utf8(r.to_bytes()).unwrap();
    assert!(
        bytes.contains("Content-Length: 19\r\n") && bytes.ends_with("\r\n\r\n"),
        "{bytes}"
    );
}
