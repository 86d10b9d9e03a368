//! `amivm run --network/--publish` (issue 10): the network, the forwards and the MAC (from the
//! instance id) are kept in the instance record, reused by `start`, shown by `ps` (text and
//! JSON); passt missing, a taken port or `--publish` without `--network user` are one line
//! and no instance.

mod common;
mod instance_common;

use common::run_with_deadline;
use instance_common::*;
use std::net::TcpListener;

#[test]
fn network_and_forwards_are_kept_for_start_and_shown() {
    let env = Env::new();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let out = env.launch(&env.ami, &["--publish", &publish]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    let mac = amivm::net::config::format_mac(&amivm::net::mac_for_instance(&id));
    let check = |env: &Env| {
        let i = env.instance(&id);
        assert_eq!(i["Network"], "user");
        assert_eq!(i["Publish"][0], format!("127.0.0.1:{port}:80/tcp"));
        assert_eq!(i["MacAddress"], mac.as_str());
        let text = env.ok(&["ps", "--all"]);
        assert!(
            text.contains(&format!("user,127.0.0.1:{port}:80/tcp")),
            "{text}"
        );
        assert!(text.lines().next().unwrap().contains("NETWORK"), "{text}");
    };
    check(&env);
    let out = env.run(&["start", "--attach", &id, "--timeout", "60"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    check(&env);
    // passt's messages are kept next to the console log.
    assert!(env.instance_dir(&id).join("passt.log").exists());
}

#[test]
fn none_has_no_card_and_no_mac() {
    let env = Env::new();
    let out = env.launch(&env.ami, &["--network", "none"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let i = env.instance(&launched_id(&out));
    assert_eq!(i["Network"], "none");
    assert!(i["MacAddress"].is_null(), "{i}");
}

#[test]
fn refusals_are_one_line_and_leave_nothing() {
    let env = Env::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = taken.local_addr().unwrap().port();
    let tspec = format!("127.0.0.1:{tport}:80");
    for (args, says) in [
        (
            vec!["--network", "none", "--publish", "8080:80"],
            "--network user",
        ),
        (vec!["--publish", tspec.as_str()], "already in use"),
        (vec!["--network", "bogus"], "bogus"),
    ] {
        let out = env.launch(&env.ami, &args);
        assert_ne!(out.code, Some(0), "{args:?}: {}", out.describe());
        let lines: Vec<_> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", out.stderr);
        assert!(lines[0].contains(says), "{args:?}: {}", out.stderr);
    }
    // No passt on PATH: the Debian package is named.
    let empty = env.path("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let mut c = env.cmd_as(OWNER, &["run", &env.ami, "--timeout", "60"]);
    c.env("PATH", &empty);
    let out = run_with_deadline(c, std::time::Duration::from_secs(60));
    assert_ne!(out.code, Some(0), "{}", out.describe());
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].contains("Debian package `passt`"),
        "{}",
        out.stderr
    );
    assert!(env.ps().is_empty(), "no instance was created");
}

#[test]
fn the_guest_reads_its_metadata_with_an_imdsv2_token() {
    let env = Env::new();
    let ud = env.path("user-data");
    std::fs::write(&ud, b"#!/bin/sh\necho from-user-data\n").unwrap();
    let out = env.launch(
        &env.ami,
        &[
            "--append",
            "net=imds",
            "--user-data",
            ud.to_str().unwrap(),
            "--metadata-options",
            "http-tokens=required",
            "--instance-type",
            "t3.micro",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    let r = env.logs(&id);
    assert!(r.get("net_error").is_none(), "{}", out.describe());
    assert_eq!(
        r.str("imds_token_status"),
        "HTTP/1.1 200 OK",
        "{}",
        out.describe()
    );
    assert_eq!(r.str("imds_instance_id"), id);
    assert_eq!(r.str("imds_instance_type"), "t3.micro");
    assert_eq!(r.str("imds_user_data"), "#!/bin/sh");
    // No key pair: EC2 answers 404 for public-keys/0/openssh-key.
    assert!(
        r.str("imds_openssh_key").contains("404"),
        "{}",
        out.describe()
    );
    // Without a token under http-tokens=required: 401.
    assert!(r.str("imds_notoken").contains("401"), "{}", out.describe());
}
