//! The instance lifecycle with the test guest (issue 5): every state from pending to
//! terminated, `--detach`, `logs`, `stop` from the host (exit 130 in the foreground), shutdown
//! behaviour and `--rm`, `kill -9` of a running instance (then `ps` shows it stopped, its volume
//! holds what the guest flushed, and `start` works), and create-image of a running instance.

mod common;
mod instance_common;

use common::{run_with_deadline, sum64, Report};
use instance_common::*;
use std::time::{Duration, Instant};

/// amivm's exit code when the VM was stopped from the host.
const EXIT_HOST_STOPPED: i32 = 130;
/// How long a state change may take here (guests run under KVM's emulator).
const STATE_WAIT: Duration = Duration::from_secs(30);

/// `run --detach`: returns the instance id printed on stdout.
#[track_caller]
fn detach(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["run", env.ami.as_str(), "--detach"];
    all.extend_from_slice(args);
    let out = env.ok(&all);
    let id = out.trim().to_string();
    assert!(
        id.starts_with("i-") && id.len() == 19,
        "--detach printed {out:?}"
    );
    id
}

/// Wait until the instance's console log shows `needle`.
#[track_caller]
fn wait_log(env: &Env, id: &str, needle: &str) -> Report {
    let t0 = Instant::now();
    loop {
        let r = env.logs(id);
        if r.raw.contains(needle) {
            return r;
        }
        assert!(
            t0.elapsed() < STATE_WAIT,
            "{id}'s console never showed {needle:?}:\n{}",
            r.raw
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid(env: &Env, id: &str) -> u32 {
    env.instance(id)["Pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{id} has no Pid: {}", env.instance(id))) as u32
}

#[test]
fn lifecycle_through_every_state() {
    let env = Env::new();
    let id = detach(&env, &["--append", "exit=hang", "--name", "web"]);
    // --detach returns once the VM is built.
    assert_eq!(env.state(&id), "running");
    let r = wait_log(&env, &id, "AMIVM-GUEST exit=hang");
    r.expect_num("cpus_up", 2);
    let ps = env.ok(&["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.contains(&id) && l.contains("web") && l.contains("running")),
        "{ps}"
    );

    // stop without --force: the guest (which ignores Ctrl-Alt-Del) is `stopping` for the grace
    // period, then stopped.
    std::thread::scope(|s| {
        let stopper = s.spawn(|| env.run(&["stop", "web"]));
        env.wait_state(&id, "stopping", STATE_WAIT);
        let out = stopper.join().unwrap();
        assert_eq!(out.code, Some(0), "{}", out.describe());
    });
    assert_eq!(env.state(&id), "stopped");
    let overlay = env.instance_dir(&id).join("vda.cow");
    assert!(overlay.is_file(), "a stopped instance keeps its volume");

    // start: same volumes, running again (pending in between).
    let out = env.ok(&["start", "web"]);
    assert_eq!(out.trim(), id);
    assert_eq!(env.state(&id), "running");
    let inst = env.instance(&id);
    assert_eq!(inst["BlockDeviceMappings"][0]["Ebs"]["Deleted"], false);

    // terminate without --force: shutting-down during the grace period, then terminated.
    std::thread::scope(|s| {
        let t = s.spawn(|| env.run(&["terminate", &id]));
        env.wait_state(&id, "shutting-down", STATE_WAIT);
        let out = t.join().unwrap();
        assert_eq!(out.code, Some(0), "{}", out.describe());
    });
    assert_eq!(env.state(&id), "terminated");
    assert!(
        !overlay.exists(),
        "terminate kept a DeleteOnTermination volume"
    );
    assert!(
        !env.ok(&["ps"]).contains(&id),
        "ps without --all shows terminated"
    );
    // Terminating again is a no-op; starting a terminated instance fails.
    env.ok(&["terminate", &id]);
    let out = env.run(&["start", &id]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert!(out.stderr.contains("terminated"), "{}", out.describe());
    // Its console log outlives it.
    env.logs(&id).expect_str("exit", "hang");
}

#[test]
fn stop_from_the_host_ends_a_foreground_run_with_130() {
    let env = Env::new();
    let mut cmd = env.cmd_as(OWNER, &["run", &env.ami, "--append", "exit=hang"]);
    cmd.arg("--name").arg("fg");
    std::thread::scope(|s| {
        let fg = s.spawn(move || run_with_deadline(cmd, DEADLINE));
        let t0 = Instant::now();
        let id = loop {
            if let Some(i) = env
                .ps()
                .into_iter()
                .find(|i| i["Name"] == "fg" && i["State"]["Name"] == "running")
            {
                break i["InstanceId"].as_str().unwrap().to_string();
            }
            assert!(t0.elapsed() < STATE_WAIT, "the instance never ran");
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = env.run(&["stop", "--force", &id]);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let fg = fg.join().unwrap();
        assert_eq!(fg.code, Some(EXIT_HOST_STOPPED), "{}", fg.describe());
        assert_eq!(env.state(&id), "stopped");
    });
}

#[test]
fn shutdown_behavior_terminate_and_rm() {
    let env = Env::new();
    let out = env.launch(
        &env.ami,
        &[
            "--shutdown-behavior",
            "terminate",
            "--append",
            "exit_code=0",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    assert_eq!(env.state(&id), "terminated");
    assert!(!env.instance_dir(&id).join("vda.cow").exists());

    // A host-side end (timeout) stops rather than terminates.
    let out = env.run(&[
        "run",
        &env.ami,
        "--shutdown-behavior",
        "terminate",
        "--timeout",
        "1",
        "--append",
        "exit=hang",
    ]);
    assert_eq!(out.code, Some(EXIT_TIMEOUT), "{}", out.describe());
    assert_eq!(env.state(&launched_id(&out)), "stopped");

    let out = env.launch(&env.ami, &["--rm", "--append", "exit_code=5"]);
    assert_eq!(out.code, Some(5), "{}", out.describe());
    let id = launched_id(&out);
    assert!(env.ps().iter().all(|i| i["InstanceId"] != id.as_str()));
    assert!(!env.instance_dir(&id).exists(), "--rm left its directory");
}

/// The guest's pattern for generation `g` of `blk=crashloop:S:C:SEED` (tests/guest/README.md).
fn crashloop_sum(seed: u64, g: u64, sector: u64, count: u64) -> u64 {
    let s = seed.wrapping_add(g << 32);
    let start = sector * 512;
    let bytes: Vec<u8> = (0..count * 512 / 8)
        .flat_map(|w| s.wrapping_add(start / 8 + w).to_le_bytes())
        .collect();
    sum64(&bytes)
}

#[test]
fn kill_9_then_ps_shows_stopped_and_start_works() {
    let env = Env::new();
    let seed = 0x6b69_6c6c_0000_0000_u64;
    let (sector, count) = (64u64, 8u64);
    let id = detach(
        &env,
        &[
            "--append",
            &format!("blk=crashloop:{sector}:{count}:{seed}"),
        ],
    );
    wait_log(&env, &id, "gen=3 flushed");
    let p = pid(&env, &id);
    // SAFETY: kill only reads its arguments; `p` is the instance's amivm process, which this
    // test started.
    assert_eq!(unsafe { libc::kill(p as i32, libc::SIGKILL) }, 0);
    // The kernel releases the process's files (and its run lock) once its last thread is gone.
    env.wait_state(&id, "stopped", Duration::from_secs(5));
    assert!(!process_alive(p));
    let reason = env.instance(&id)["StateReason"].to_string();
    assert!(reason.contains("died"), "{reason}");

    // The volume holds a whole generation at least as new as the last one logged as flushed.
    let log = env.logs(&id);
    let last = log
        .records("blk")
        .iter()
        .filter(|r| r.words.first().map(String::as_str) == Some("crashloop"))
        .filter_map(|r| r.field("gen")?.parse::<u64>().ok())
        .max()
        .expect("crashloop lines");
    let ami = env.ok(&["create-image", &id, "--name", "after-kill"]);
    let out = env.launch(
        ami.trim(),
        &["--rm", "--append", &format!("blk=read:{sector}:{count}")],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    let rec = r
        .records("blk")
        .into_iter()
        .find(|b| b.words.first().map(String::as_str) == Some("read"))
        .expect("blk read line");
    let sum = common::report::parse_num(rec.field("sum").unwrap()).unwrap();
    let gen = (last..last + 100_000).find(|&g| crashloop_sum(seed, g, sector, count) == sum);
    assert!(
        gen.is_some(),
        "the volume does not hold a whole generation >= {last} (the last flushed one)"
    );

    // start works, on the same volume.
    assert_eq!(env.ok(&["start", &id]).trim(), id);
    assert_eq!(env.state(&id), "running");
    env.ok(&["terminate", "--force", &id]);
    assert_eq!(env.state(&id), "terminated");
}

#[test]
fn create_image_of_a_running_instance_needs_no_reboot() {
    let env = Env::new();
    let seed = 0x72756e6e696e6721u64;
    let id = detach(
        &env,
        &[
            "--append",
            &format!("blk=write:8:8:{seed} blk=flush exit=hang"),
        ],
    );
    wait_log(&env, &id, "AMIVM-GUEST exit=hang");
    let out = env.run(&["create-image", &id, "--name", "live"]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert!(out.stderr.contains("--no-reboot"), "{}", out.describe());
    let ami = env.ok(&["create-image", &id, "--name", "live", "--no-reboot"]);
    assert_eq!(
        env.state(&id),
        "running",
        "--no-reboot stopped the instance"
    );
    let out = env.launch(ami.trim(), &["--rm", "--append", "blk=read:8:8"]);
    let r = Report::from_run(&out);
    let sum = r
        .records("blk")
        .into_iter()
        .find(|b| b.words.first().map(String::as_str) == Some("read"))
        .and_then(|b| common::report::parse_num(b.field("sum")?))
        .unwrap_or_else(|| r.fail("no blk read sum"));
    let want: Vec<u8> = (0..8 * 512 / 8u64)
        .flat_map(|w| seed.wrapping_add(8 * 512 / 8 + w).to_le_bytes())
        .collect();
    assert_eq!(sum, sum64(&want), "the image lacks what the guest flushed");
    env.ok(&["terminate", "-f", &id]);
}

/// Every file under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_vm_that_cannot_be_built_fails_the_launch_cleanly() {
    let env = Env::new();
    // Damage the AMI's kernel in the store (the only blob): the instance can be created, but
    // its VM cannot be built.
    let blobs = files_under(&env.store.join("blobs"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let mut perm = std::fs::metadata(&blobs[0]).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&blobs[0], perm).unwrap();
    std::fs::write(&blobs[0], b"not a kernel").unwrap();

    let out = env.run(&["run", &env.ami, "--detach"]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("did not start"), "{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());

    let out = env.launch(&env.ami, &[]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    let ps = env.ps();
    assert_eq!(ps.len(), 2);
    for i in &ps {
        assert_eq!(i["State"]["Name"], "terminated", "{i}");
        assert!(
            i["StateReason"].to_string().contains("launch failed"),
            "{i}"
        );
        let id = i["InstanceId"].as_str().unwrap();
        assert!(!env.instance_dir(id).join("vda.cow").exists());
    }
}

#[test]
fn logs_follow_returns_when_the_instance_stops() {
    let env = Env::new();
    let id = detach(&env, &["--timeout", "2", "--append", "exit=hang"]);
    let out = env.run(&["logs", "--follow", &id]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("AMIVM-GUEST exit=hang"),
        "{}",
        out.describe()
    );
    assert_eq!(env.state(&id), "stopped");
    assert!(env.instance(&id)["StateReason"]
        .to_string()
        .contains("--timeout"));
}

#[test]
fn an_instance_outlives_its_deregistered_ami() {
    let env = Env::new();
    let seed = 0x6f75_746c_6976_6573_u64;
    let out = env.launch(
        &env.ami,
        &["--append", &format!("blk=write:0:8:{seed} blk=flush")],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    let img: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "show", &env.ami, "--output", "json"])).unwrap();
    let snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string();
    // The instance's record keeps the AMI's snapshot and kernel: rm keeps the snapshot, gc
    // keeps the chunks and blobs.
    env.ok(&["image", "rm", &env.ami, "--delete-snapshots"]);
    env.ok(&["gc"]);
    let out = env.run(&["snapshot", "rm", &snap]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert!(out.stderr.contains(&id), "{}", out.describe());
    let out = env.run(&["start", &id, "--attach"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    // The same volume: what the first run wrote is still there (the command line is the same,
    // so the guest writes the same pattern again; read it back through a new image).
    let ami = env.ok(&["create-image", &id, "--name", "survivor"]);
    let out = env.launch(ami.trim(), &["--rm", "--append", "blk=read:0:8"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let want: Vec<u8> = (0..8 * 512 / 8u64)
        .flat_map(|w| seed.wrapping_add(w).to_le_bytes())
        .collect();
    let r = Report::from_run(&out);
    let sum = r
        .records("blk")
        .into_iter()
        .find(|b| b.words.first().map(String::as_str) == Some("read"))
        .and_then(|b| common::report::parse_num(b.field("sum")?))
        .unwrap_or_else(|| r.fail("no blk read sum"));
    assert_eq!(sum, sum64(&want));
    // Terminated, it no longer holds the snapshot.
    env.ok(&["terminate", &id]);
    env.ok(&["snapshot", "rm", &snap]);
}
