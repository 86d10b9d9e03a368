//! Tampered instance records (issue 8, defect 5): someone with write access to the store edits
//! an instance's JSON record, or swaps files in its directory for symbolic links, as an
//! attacker would. amivm must not delete, read or write a file outside the instance's
//! directory because of it, nor signal a process that is not the instance's: it refuses with
//! one line and exit 125, or (for a pid nobody runs the instance under) treats the instance
//! as stopped and signals nothing.

mod common;
mod instance_common;

use instance_common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a state change may take here (guests run under KVM's emulator).
const STATE_WAIT: Duration = Duration::from_secs(30);
/// amivm's grace period for a guest to shut down (`STOP_GRACE`, src/instance/launch.rs).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The record file of an instance.
fn record_path(env: &Env, id: &str) -> PathBuf {
    env.store.join(format!("records/instances/{id}.json"))
}

fn read_record(env: &Env, id: &str) -> Value {
    let text = std::fs::read_to_string(record_path(env, id)).expect("read the record");
    serde_json::from_str(&text).expect("the record is JSON")
}

/// Overwrite the record as an attacker would: straight to the file, no lock, no checks.
fn write_record(env: &Env, id: &str, rec: &Value) {
    let text = serde_json::to_string_pretty(rec).unwrap();
    std::fs::write(record_path(env, id), text).expect("write the record");
}

/// Change the record's data with `f`; returns the original record.
fn tamper(env: &Env, id: &str, f: impl FnOnce(&mut Value)) -> Value {
    let original = read_record(env, id);
    let mut rec = original.clone();
    f(&mut rec["Data"]);
    write_record(env, id, &rec);
    original
}

/// A stopped instance (the guest exits at once), with its volume `vda.cow`.
fn stopped_instance(env: &Env) -> String {
    let out = env.launch(&env.ami, &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    assert_eq!(env.state(&id), "stopped");
    assert!(env.instance_dir(&id).join("vda.cow").is_file());
    id
}

/// `--detach` with a guest that spins: returns the id once it runs.
fn running_instance(env: &Env) -> String {
    let out = env.ok(&["run", &env.ami, "--detach", "--append", "exit=hang"]);
    let id = out.trim().to_string();
    assert_eq!(env.state(&id), "running");
    id
}

/// Assert a refusal: exit 125, one line on stderr mentioning `needle`.
#[track_caller]
fn assert_refused(out: &common::RunOutput, needle: &str) {
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "not one line: {}",
        out.describe()
    );
    assert!(out.stderr.contains(needle), "{}", out.describe());
}

/// A victim file outside the store.
fn victim(env: &Env, name: &str) -> PathBuf {
    let p = env.path(name);
    std::fs::write(&p, b"precious\n").unwrap();
    p
}

#[track_caller]
fn assert_intact(p: &Path) {
    assert_eq!(
        std::fs::read(p).unwrap_or_else(|e| panic!("{} is gone: {e}", p.display())),
        b"precious\n",
        "{} was changed",
        p.display()
    );
}

#[test]
fn terminate_never_deletes_outside_the_instance_directory() {
    let env = Env::new();
    let id = stopped_instance(&env);
    let overlay = env.instance_dir(&id).join("vda.cow");
    let outside = victim(&env, "victim.cow");
    let from_dir = format!(
        "../../../../{}",
        outside.file_name().unwrap().to_str().unwrap()
    );
    assert!(
        env.instance_dir(&id).join(&from_dir).exists(),
        "{from_dir} should reach the victim"
    );
    for bad in [
        "../../..",
        from_dir.as_str(),
        outside.to_str().unwrap(),
        "run.lock",
    ] {
        let original = tamper(&env, &id, |d| d["Volumes"][0]["Overlay"] = bad.into());
        for args in [&["terminate", &id][..], &["start", &id], &["logs", &id]] {
            let out = env.run(args);
            assert_refused(&out, "refusing to use the instance's files");
        }
        assert_intact(&outside);
        assert!(overlay.is_file(), "{bad}: the real volume was deleted");
        assert_eq!(
            read_record(&env, &id),
            original_with(&original, bad),
            "{bad}: the record changed"
        );
        write_record(&env, &id, &original);
    }

    // The volume swapped for a symbolic link to the victim: not deleted through it.
    std::fs::rename(&overlay, env.path("vda.cow.real")).unwrap();
    std::os::unix::fs::symlink(&outside, &overlay).unwrap();
    let out = env.run(&["terminate", &id]);
    assert_refused(&out, "not a regular file");
    assert_intact(&outside);
    assert_eq!(env.state(&id), "stopped");
    std::fs::remove_file(&overlay).unwrap();
    std::fs::rename(env.path("vda.cow.real"), &overlay).unwrap();

    // The whole instance directory swapped for a link to a copy elsewhere.
    let dir = env.instance_dir(&id);
    let elsewhere = env.path("elsewhere");
    std::fs::rename(&dir, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    let out = env.run(&["terminate", &id]);
    assert_refused(&out, "symbolic link");
    assert!(
        elsewhere.join("vda.cow").is_file(),
        "deleted through a link"
    );
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&elsewhere, &dir).unwrap();

    // Untampered, terminate deletes the volume as before.
    env.ok(&["terminate", &id]);
    assert_eq!(env.state(&id), "terminated");
    assert!(!overlay.exists());
    assert_intact(&outside);
}

/// `original` with the overlay set to `bad` (what the attacker wrote; amivm must not rewrite it).
fn original_with(original: &Value, bad: &str) -> Value {
    let mut v = original.clone();
    v["Data"]["Volumes"][0]["Overlay"] = bad.into();
    v
}

#[test]
fn logs_and_start_stay_inside_the_instance_directory() {
    let env = Env::new();
    let id = stopped_instance(&env);
    let secret = env.path("secret.txt");
    std::fs::write(&secret, b"TOP-SECRET\n").unwrap();

    // An older record layout named the console log by path: a path in a record is not obeyed.
    tamper(&env, &id, |d| {
        d["ConsoleLog"] = secret.to_str().unwrap().into()
    });
    let out = env.run(&["logs", &id]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(!out.stdout.contains("TOP-SECRET"), "{}", out.describe());
    assert!(out.stdout.contains("AMIVM-GUEST"), "{}", out.describe());

    // console.log swapped for a link to the secret: logs refuses to follow it...
    let log = env.instance_dir(&id).join("console.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&secret, &log).unwrap();
    let out = env.run(&["logs", &id]);
    assert_refused(&out, "symbolic link");
    assert!(!out.stdout.contains("TOP-SECRET"), "{}", out.describe());

    // ... and start does not write the guest's console through it.
    let out = env.run(&["start", &id]);
    assert_refused(&out, "not a regular file");
    assert_eq!(std::fs::read(&secret).unwrap(), b"TOP-SECRET\n");
    assert_eq!(env.state(&id), "stopped");
}

/// A `sleep` owned by the test: an unrelated process whose pid an attacker could write.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("start sleep"),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    /// Its start time in clock ticks (/proc/PID/stat field 22), as an attacker would copy it.
    fn start_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        rest.split_whitespace().nth(19).unwrap().parse().unwrap()
    }
    #[track_caller]
    fn assert_alive(&mut self) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "the unrelated process {} was killed",
            self.pid()
        );
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stop_never_signals_a_process_that_is_not_the_instances() {
    let env = Env::new();
    let mut sleeper = Sleeper::start();
    let process = serde_json::json!({
        "Pid": sleeper.pid(),
        "StartTicks": sleeper.start_ticks(),
    });

    // A stopped instance recorded as running under the sleep's pid (a recycled pid): nobody
    // holds its run lock, so it is stopped and nothing is signalled.
    let id = stopped_instance(&env);
    tamper(&env, &id, |d| {
        d["State"] = "running".into();
        d["Process"] = process.clone();
    });
    for args in [&["stop", &id][..], &["stop", "--force", &id]] {
        let out = env.run(args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.describe());
        assert_eq!(env.state(&id), "stopped");
        sleeper.assert_alive();
        tamper(&env, &id, |d| {
            d["State"] = "running".into();
            d["Process"] = process.clone();
        });
    }
    let out = env.run(&["terminate", &id]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    sleeper.assert_alive();

    // A running instance whose record names the sleep instead of its amivm process (with the
    // sleep's own start time, so only the lock tells them apart): refused, nothing
    // signalled, nothing changed.
    let id = running_instance(&env);
    let original = tamper(&env, &id, |d| d["Process"] = process.clone());
    let amivm_pid = original["Data"]["Process"]["Pid"].as_u64().unwrap() as u32;
    for args in [
        &["stop", &id][..],
        &["stop", "--force", &id],
        &["terminate", &id],
    ] {
        let out = env.run(args);
        assert_refused(&out, "not signalling");
        std::thread::sleep(Duration::from_millis(300));
        sleeper.assert_alive();
        assert!(
            process_alive(amivm_pid),
            "{args:?} stopped the real process"
        );
        assert_eq!(read_record(&env, &id)["Data"]["State"], "running");
        assert!(env.instance_dir(&id).join("vda.cow").is_file());
    }
    // The right pid with a forged start time is refused too.
    tamper(&env, &id, |d| {
        d["Process"] = original["Data"]["Process"].clone();
        d["Process"]["StartTicks"] = 1.into();
    });
    assert_refused(&env.run(&["stop", &id]), "not signalling");
    assert!(process_alive(amivm_pid));

    // The untampered record: `stop --force` stops it at once, without the grace period.
    write_record(&env, &id, &original);
    let t0 = Instant::now();
    env.ok(&["stop", "--force", &id]);
    assert!(
        t0.elapsed() < STOP_GRACE,
        "stop --force took {:?}, not less than the {STOP_GRACE:?} grace period",
        t0.elapsed()
    );
    assert_eq!(env.state(&id), "stopped");
    let t0 = Instant::now();
    while process_alive(amivm_pid) {
        assert!(t0.elapsed() < STATE_WAIT, "amivm process outlived the stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    sleeper.assert_alive();
}

/// `ps` lists the instances whose records are sound and names the tampered one in a warning,
/// instead of refusing the whole listing.
#[test]
fn ps_skips_a_tampered_record_and_lists_the_rest() {
    let env = Env::new();
    let good = stopped_instance(&env);
    let bad = stopped_instance(&env);
    tamper(&env, &bad, |d| {
        d["Volumes"][0]["Overlay"] = Value::String("../../..".into());
    });
    let out = env.run(&["ps", "--all"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.contains(&good), "{}", out.describe());
    assert!(!out.stdout.contains(&bad), "{}", out.describe());
    assert!(
        out.stderr.contains("skipping an instance record"),
        "{}",
        out.describe()
    );
}
