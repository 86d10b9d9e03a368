//! `amivm serve` driven by real clients (boto3, the AWS CLI) through an AMI's whole life, with
//! the test guest as the AMI's kernel: tests/api/lifecycle.py, then the store checked with the
//! CLI. Also a server restart: instances keep running and their real state is reported.

mod api_common;
mod common;
mod instance_common;

use api_common::Server;
use instance_common::STRANGER;
use std::time::Duration;

#[test]
fn boto3_drives_images_and_instances_end_to_end() {
    let server = Server::start();
    let out = server.python("lifecycle.py", &[]);
    assert_eq!(out.code, Some(0), "lifecycle.py: {}", out.describe());
    assert!(out.stdout.contains("OK"), "{}", out.describe());
    // What the API did is what the CLI sees: only the original AMI is left, the instances are
    // terminated and their volumes gone.
    let images: Vec<serde_json::Value> =
        serde_json::from_str(&server.env.ok(&["image", "ls", "--output", "json"])).unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["ImageId"], server.env.ami.as_str());
    for i in server.env.ps() {
        assert_eq!(i["State"]["Name"], "terminated", "{i}");
        // On the network `serve --network` gives (user: passt), with a MAC of its own.
        assert_eq!(i["Network"], "user", "{i}");
        assert!(i["MacAddress"].is_string(), "{i}");
    }
    let theirs = server
        .env
        .run_as(STRANGER, &["ps", "--all", "--output", "json"]);
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&theirs.stdout).unwrap();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0]["State"]["Name"], "terminated");
}

/// The AWS CLI (v1) against the server; the server restarted while an instance runs; the
/// instance's process killed behind the server's back.
#[test]
fn aws_cli_and_a_server_restart_see_real_states() {
    let mut server = Server::start();
    let run = server.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &server.env.ami,
        "--instance-type",
        "t3.micro",
        "--count",
        "1",
        "--user-data",
        "exit=halt",
        "--query",
        "Instances[0].InstanceId",
        "--output",
        "text",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let id = run.stdout.trim().to_string();
    let wait = server.aws(&["ec2", "wait", "instance-running", "--instance-ids", &id]);
    assert_eq!(wait.code, Some(0), "{}", wait.describe());

    server.restart();
    let state = |s: &Server| {
        let o = s.aws(&[
            "ec2",
            "describe-instances",
            "--instance-ids",
            &id,
            "--query",
            "Reservations[0].Instances[0].State.Name",
            "--output",
            "text",
        ]);
        assert_eq!(o.code, Some(0), "{}", o.describe());
        o.stdout.trim().to_string()
    };
    assert_eq!(
        state(&server),
        "running",
        "the instance outlives the server"
    );
    let pid = server.env.instance(&id)["Pid"].as_u64().expect("pid") as i32;
    // SAFETY: kill only reads its integer arguments; the pid is the instance's process, which
    // `ps` just reported alive.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t0 = std::time::Instant::now();
    while state(&server) != "stopped" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still not stopped after kill -9"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reason = server.aws(&[
        "ec2",
        "describe-instances",
        "--instance-ids",
        &id,
        "--query",
        "Reservations[0].Instances[0].StateReason.Message",
        "--output",
        "text",
    ]);
    assert!(reason.stdout.contains("died"), "{}", reason.describe());
    let term = server.aws(&["ec2", "terminate-instances", "--instance-ids", &id]);
    assert_eq!(term.code, Some(0), "{}", term.describe());
    let wait = server.aws(&["ec2", "wait", "instance-terminated", "--instance-ids", &id]);
    assert_eq!(wait.code, Some(0), "{}", wait.describe());
}
