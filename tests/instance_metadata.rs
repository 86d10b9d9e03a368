//! `amivm run --user-data FILE --metadata-options ...` (issue 10): both kept in the instance
//! record for `start`, shown by `ps --output json`, refused with one line and exit 125 (and
//! no instance) when too large or malformed, and turned into the metadata service's
//! configuration by the instance layer.

mod common;
mod instance_common;

use amivm::instance::metadata::{for_instance, metadata_config, public_keys};
use amivm::instance::record;
use amivm::net::imds::HttpTokens;
use amivm::store::{AccountId, Store};
use instance_common::*;

#[test]
fn bad_user_data_or_options_leave_nothing() {
    let env = Env::new();
    let big = env.path("big");
    std::fs::write(&big, vec![b'x'; 16 * 1024 + 1]).unwrap();
    let big = big.to_str().unwrap().to_string();
    let dir = env.tmp.path().to_str().unwrap().to_string();
    let missing = env.path("missing").to_str().unwrap().to_string();
    for (args, says) in [
        (vec!["--user-data", big.as_str()], "16 KiB"),
        (vec!["--user-data", dir.as_str()], "regular file"),
        (vec!["--user-data", missing.as_str()], "missing"),
        (
            vec!["--metadata-options", "http-tokens=maybe"],
            "http-tokens",
        ),
        (
            vec!["--metadata-options", "http-put-response-hop-limit=65"],
            "hop-limit",
        ),
        (
            vec!["--metadata-options", "http-endpoint=disabled"],
            "not supported",
        ),
    ] {
        let out = env.launch(&env.ami, &args);
        assert_eq!(out.code, Some(125), "{args:?}: {}", out.describe());
        let lines: Vec<_> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", out.stderr);
        assert!(lines[0].contains(says), "{args:?}: {}", out.stderr);
    }
    assert!(env.ps().is_empty(), "no instance was created");
}

#[test]
fn user_data_and_metadata_options_are_kept_for_start() {
    let env = Env::new();
    let ud = env.path("user-data");
    let data: Vec<u8> = b"#cloud-config\nhostname: web1\n\x00\xff"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'#', 16 * 1024 - 31))
        .collect();
    assert_eq!(data.len(), 16 * 1024);
    std::fs::write(&ud, &data).unwrap();
    let out = env.launch(
        &env.ami,
        &[
            "--name",
            "web1",
            "--user-data",
            ud.to_str().unwrap(),
            "--metadata-options",
            "http-tokens=required,http-put-response-hop-limit=2",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    let check = |env: &Env| {
        let i = env.instance(&id);
        assert_eq!(i["MetadataOptions"]["HttpTokens"], "required");
        assert_eq!(i["MetadataOptions"]["HttpPutResponseHopLimit"], 2);
        assert_eq!(i["UserDataBytes"], 16 * 1024);
        let store = Store::open(&env.store).unwrap();
        let owner = AccountId::try_from(OWNER.to_string()).unwrap();
        let inst = record::load(&store, &owner, &id).unwrap();
        let c = metadata_config(&inst, public_keys(None, None)).unwrap();
        assert_eq!(c.instance_id, id);
        assert_eq!(c.ami_id, env.ami);
        assert_eq!(c.account_id, OWNER);
        assert_eq!(c.hostname, "web1");
        assert_eq!(c.http_tokens, HttpTokens::Required);
        assert_eq!(c.hop_limit, 2);
        assert_eq!(c.user_data.as_deref(), Some(&data[..]));
        assert_eq!(c.availability_zone, "us-east-1a");
        assert_eq!(c.block_devices[0].name, "ami");
        assert!(c.public_keys.is_empty());
        assert_eq!(
            for_instance(&inst).unwrap(),
            c,
            "no key pair: no public keys"
        );
    };
    check(&env);
    let out = env.run(&["start", "--attach", &id, "--timeout", "60"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    check(&env);
}

#[test]
fn the_key_pair_is_served_as_public_key_0() {
    let env = Env::new();
    env.create_key_pair("mykey");
    let out = env.launch(&env.ami, &["--key-name", "mykey"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    let store = Store::open(&env.store).unwrap();
    let owner = AccountId::try_from(OWNER.to_string()).unwrap();
    let inst = record::load(&store, &owner, &id).unwrap();
    let c = for_instance(&inst).unwrap();
    assert_eq!(c.public_keys.len(), 1);
    assert_eq!(c.public_keys[0].name, "mykey");
    assert!(
        c.public_keys[0].openssh.starts_with("ssh-ed25519 "),
        "{:?}",
        c.public_keys[0]
    );
}
