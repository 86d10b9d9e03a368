//! `amivm ssh` (issue 10) with the real OpenSSH client: it reaches the instance through the host
//! port published to its port 22, with the key pair's private key and the image's login user.
//! The test guest is no SSH server: it answers the connection with one line and closes, which
//! ssh reports as the banner it got, so what ssh did is read from its own `-v` output. And an
//! instance whose passt dies runs on, with `ps` saying its network was lost.

mod common;
mod instance_common;

use common::{build_guest, run_with_deadline};
use instance_common::*;
use std::time::{Duration, Instant};

/// How long the guest may take to get its lease and listen, here (emulated, ~1 M instr/s).
const LISTEN_WAIT: Duration = Duration::from_secs(60);
/// What the test guest's `net=serve:PORT` answers (tests/guest/net.c).
const GUEST_ANSWER: &str = "hello from the amivm test guest";

/// The test guest's image with a login user, as the Debian recipe registers its image.
fn ssh_image(env: &Env) -> String {
    let root = env.path("ssh-root.raw");
    std::fs::File::create(&root)
        .unwrap()
        .set_len(ROOT_BYTES)
        .unwrap();
    let out = env.ok(&[
        "image",
        "create",
        "--name",
        "ssh-ami",
        "--kernel",
        build_guest().to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--default-user",
        "admin",
    ]);
    out.trim().to_string()
}

/// A detached instance of `ami` whose guest listens on port 22, published on a free host port.
fn listening_instance(env: &Env, ami: &str, extra: &[&str]) -> (String, u16) {
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:22");
    let mut args = vec![
        "run",
        ami,
        "--detach",
        "--timeout",
        "300",
        "--publish",
        &publish,
        "--append",
        "net=serve:22",
    ];
    args.extend_from_slice(extra);
    let id = env.ok(&args).trim().to_string();
    let t0 = Instant::now();
    while !env.ok(&["logs", &id]).contains("net_listening=22") {
        assert!(
            t0.elapsed() < LISTEN_WAIT,
            "the guest never listened: {}",
            env.ok(&["logs", &id])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (id, port)
}

#[test]
fn ssh_reaches_the_guest_with_the_key_pair_and_the_images_user() {
    let env = Env::new();
    let ami = ssh_image(&env);
    assert!(env.ok(&["image", "show", &ami]).contains("admin"));
    let key = env.create_key_pair("mykey");
    let (id, port) = listening_instance(&env, &ami, &["--key-name", "mykey"]);

    let ssh = |args: &[&str]| {
        let mut all = vec!["ssh", id.as_str(), "--"];
        all.extend_from_slice(args);
        let mut c = env.cmd_as(OWNER, &all);
        c.env("HOME", env.path(""));
        run_with_deadline(c, Duration::from_secs(90))
    };
    // ssh -G: the configuration ssh would connect with, from ssh itself.
    let out = ssh(&["-G"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let known = env.instance_dir(&id).join("known_hosts");
    for line in [
        "user admin".to_string(),
        "hostname 127.0.0.1".into(),
        format!("port {port}"),
        format!("identityfile {}", key.display()),
        "identitiesonly yes".into(),
        format!("hostkeyalias {id}"),
        format!("userknownhostsfile {}", known.display()),
        "stricthostkeychecking accept-new".into(),
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "{line}: {}",
            out.stdout
        );
    }
    let out = ssh(&["-v", "-o", "ConnectTimeout=30", "true"]);
    // ssh's own status: 255, the "server" closed the connection after its one line.
    assert_eq!(out.code, Some(255), "{}", out.describe());
    let err = &out.stderr;
    assert!(
        err.contains(&format!("Connecting to 127.0.0.1 [127.0.0.1] port {port}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("identity file {}", key.display())),
        "{err}"
    );
    assert!(
        err.contains(GUEST_ANSWER),
        "ssh got the guest's line: {err}"
    );
    // The guest prints its line after it answered, at emulator speed: wait for it.
    let t0 = Instant::now();
    let mut log = env.ok(&["logs", &id]);
    while !log.contains("net_served=1") && t0.elapsed() < LISTEN_WAIT {
        std::thread::sleep(Duration::from_millis(200));
        log = env.ok(&["logs", &id]);
    }
    assert!(log.contains("net_served=1"), "{log}");
    let _ = env.run(&["terminate", "--force", &id]);
}

#[test]
fn ssh_refusals_are_one_line() {
    let env = Env::new();
    // Stopped (the guest has gone) and never published: one line each, 125.
    let out = env.launch(&env.ami, &["--name", "nossh"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let out = env.run(&["ssh", "nossh"]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("only a running instance"),
        "{}",
        out.stderr
    );

    let id = env
        .ok(&[
            "run",
            &env.ami,
            "--detach",
            "--timeout",
            "300",
            "--append",
            "net=serve:22",
        ])
        .trim()
        .to_string();
    let out = env.run(&["ssh", &id]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("--publish HOSTPORT:22"),
        "{}",
        out.stderr
    );
    let out = env.run(&["ssh", &id, "--user", "Bad User"]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert!(out.stderr.contains("invalid user name"), "{}", out.stderr);
    let _ = env.run(&["terminate", "--force", &id]);
}

/// The pid of `parent`'s child passt (Debian's `passt` may exec `passt.avx2`).
fn passt_child(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let comm = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?;
        let ppid: u32 = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent && comm.starts_with("passt")).then_some(pid)
    })
}

#[test]
fn an_instance_whose_passt_dies_runs_on_and_ps_says_so() {
    let env = Env::new();
    let (id, _) = listening_instance(&env, &env.ami, &[]);
    let inst = env.instance(&id);
    assert_eq!(inst["NetworkLost"], false, "{inst}");
    let pid = inst["Pid"].as_u64().unwrap() as u32;
    let passt = passt_child(pid).expect("the instance's passt");
    // SAFETY: kill(2) on a pid just read from /proc; at worst it is gone already.
    unsafe { libc::kill(passt as i32, libc::SIGKILL) };
    let t0 = Instant::now();
    loop {
        let inst = env.instance(&id);
        if inst["NetworkLost"] == true {
            assert_eq!(inst["State"]["Name"], "running", "{inst}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{inst}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ps = env.ok(&["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.contains(&id) && l.contains("network lost: passt exited")),
        "{ps}"
    );
    // The VMM noticed too, and says so in the console log.
    let t0 = Instant::now();
    while !env.ok(&["logs", &id]).contains("amivm: network lost") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}",
            env.ok(&["logs", &id])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = env.run(&["terminate", "--force", &id]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

/// The key `amivm ssh` logs in with is the one the guest gets: the test guest reads
/// `public-keys/0/openssh-key` from the metadata service with an IMDSv2 token and finds the key
/// pair's public key (what cloud-init installs for the default user).
#[test]
fn the_guest_reads_its_key_pairs_public_key_from_the_metadata_service() {
    let env = Env::new();
    env.ok(&[
        "key-pair",
        "create",
        "k",
        "--key-file",
        env.path("k").to_str().unwrap(),
    ]);
    let keys: serde_json::Value =
        serde_json::from_str(&env.ok(&["key-pair", "ls", "--output", "json"])).unwrap();
    let public = keys[0]["PublicKey"].as_str().unwrap().trim().to_string();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    let out = env.launch(&env.ami, &["--key-name", "k", "--append", "net=imds"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = common::Report::from_run(&out);
    assert_eq!(
        r.str("imds_openssh_key").trim(),
        public,
        "{}",
        out.describe()
    );
}
