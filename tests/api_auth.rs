//! `amivm serve` authentication: botocore-signed requests spoiled one way each (no signature,
//! wrong secret, unknown key, wrong region or service, expired or future date, tampered body)
//! are refused with EC2's codes; another account's keys see and touch nothing of the owner's
//! (tests/api/auth.py). Access keys from the CLI: listed without secrets, deleted keys refused.

mod api_common;
mod common;
mod instance_common;

use api_common::{amz_now, error_code, exchange, signed_post, Server, REGION};
use instance_common::OWNER;
use std::time::Duration;

#[test]
fn spoiled_signatures_and_strangers_are_refused() {
    let server = Server::start();
    let out = server.python("auth.py", &[]);
    assert_eq!(out.code, Some(0), "auth.py: {}", out.describe());
    assert!(out.stdout.contains("OK"), "{}", out.describe());
}

#[test]
fn botocore_presigned_urls_are_answered_until_they_expire() {
    let server = Server::start();
    let out = server.python("presign.py", &[]);
    assert_eq!(out.code, Some(0), "presign.py: {}", out.describe());
    assert!(out.stdout.contains("OK"), "{}", out.describe());
}

#[test]
fn access_keys_are_private_listed_without_secrets_and_revocable() {
    let server = Server::start();
    let keys = server.env.path("store").join("access-keys.json");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&keys).unwrap().mode() & 0o777, 0o600);
    let ls = server.env.ok(&["account", "ls-access-keys"]);
    assert!(ls.contains(&server.owner.id), "{ls}");
    assert!(
        !ls.contains(&server.owner.secret),
        "ls shows a secret: {ls}"
    );
    assert!(
        !ls.contains(&server.stranger.id),
        "ls shows another account's key: {ls}"
    );

    let host = server.addr.to_string();
    let body = "Action=DescribeRegions&Version=2016-11-15";
    let req = || signed_post(&host, body, &server.owner, &amz_now(), REGION, "ec2");
    let (status, text) = exchange(server.addr, &req(), Duration::from_secs(10)).unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("<regionName>us-east-1</regionName>"),
        "{text}"
    );

    server
        .env
        .ok(&["account", "delete-access-key", &server.owner.id]);
    let (status, text) = exchange(server.addr, &req(), Duration::from_secs(10)).unwrap();
    assert_eq!(
        (status, error_code(&text)),
        (401, Some("AuthFailure")),
        "{text}"
    );
    // Deleting it again, or another account's key, fails with one line and 125.
    let again = server
        .env
        .run(&["account", "delete-access-key", &server.owner.id]);
    assert_eq!(again.code, Some(125), "{}", again.describe());
    let theirs = server.env.run_as(
        OWNER,
        &["account", "delete-access-key", &server.stranger.id],
    );
    assert_eq!(theirs.code, Some(125), "{}", theirs.describe());
    assert_eq!(theirs.stderr.lines().count(), 1, "{}", theirs.describe());
}
