//! `amivm run`, `amivm start` and the hidden `__run-instance` behind `--detach`.

use super::super::boot::{report_exit, timeout_from};
use super::super::{exit, GlobalOpts};
use super::{open, RunArgs, RunInstanceArgs, StartArgs};
use crate::instance::launch::{self, BootOptions, LaunchRequest, LAUNCH_FAILED};
use crate::instance::lock::RunLock;
use crate::instance::{lifecycle, record, types, Instance, InstanceState};
use crate::store::Store;
use anyhow::{bail, Context};
use regex::Regex;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The detached process's own diagnostics (not the console) go to this file in the instance
/// directory.
const DETACHED_LOG: &str = "amivm.log";
/// How long `--detach` waits for the instance to leave `pending` before returning anyway.
const DETACH_WAIT: Duration = Duration::from_secs(30);
/// How often it looks.
const DETACH_POLL: Duration = Duration::from_millis(20);

fn parse_expect(e: Option<&str>) -> anyhow::Result<Option<Regex>> {
    e.map(|r| Regex::new(r).with_context(|| format!("--expect {r:?} is not a valid regex")))
        .transpose()
}

pub fn run(args: RunArgs, g: &GlobalOpts) -> anyhow::Result<i32> {
    let itype = types::lookup(&args.instance_type)?;
    if let Some(w) = types::memory_warning(&itype, types::host_memory_mib()) {
        eprintln!("amivm: warning: {w}");
    }
    let timeout = timeout_from(args.timeout)?;
    let expect = parse_expect(args.expect.as_deref())?;
    let (store, caller) = open(g)?;
    let req = LaunchRequest {
        image: args.ami.clone(),
        instance_type: itype.clone(),
        name: args.name.clone(),
        append: args.append.clone(),
        shutdown_behavior: args.shutdown_behavior,
        remove_on_stop: args.rm,
        serial_log: args.serial_log.clone(),
    };
    let (inst, lock) = launch::create(&store, &caller, &req)?;
    if args.detach {
        return detach(
            &store,
            g,
            &inst,
            lock,
            args.timeout,
            args.expect.as_deref(),
            true,
        );
    }
    eprintln!(
        "amivm: instance {} ({}: {} vCPU, {} MiB) from {} ({})",
        inst.instance_id,
        itype.name,
        itype.vcpus,
        itype.memory_mib,
        inst.image.image_id,
        inst.image.name
    );
    foreground(&store, &inst, lock, timeout, expect, true)
}

/// Run the instance here with the console on stdout.
fn foreground(
    store: &Store,
    inst: &Instance,
    lock: RunLock,
    timeout: Option<Duration>,
    expect: Option<Regex>,
    first_launch: bool,
) -> anyhow::Result<i32> {
    let opts = BootOptions {
        timeout,
        expect,
        console_stdout: true,
        stdin: true,
    };
    let outcome = launch::boot(store, &inst.instance_id, lock, &opts, first_launch)?;
    match outcome.exit {
        Ok(e) => {
            let code = report_exit(&e);
            if let Some(i) = outcome.instance {
                eprintln!("amivm: instance {} is {}", i.instance_id, i.state);
            }
            Ok(code)
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the VM")),
    }
}

pub fn start(args: StartArgs, g: &GlobalOpts) -> anyhow::Result<i32> {
    let timeout = timeout_from(args.timeout)?;
    let expect = parse_expect(args.expect.as_deref())?;
    let (store, caller) = open(g)?;
    let (inst, lock) = lifecycle::start(&store, &caller, &args.instance)?;
    if args.attach {
        eprintln!("amivm: starting {}", inst.instance_id);
        return foreground(&store, &inst, lock, timeout, expect, false);
    }
    detach(
        &store,
        g,
        &inst,
        lock,
        args.timeout,
        args.expect.as_deref(),
        false,
    )
}

/// Start `amivm __run-instance` in a new session with the run lock, wait until the instance
/// leaves `pending`, and print its id.
fn detach(
    store: &Store,
    g: &GlobalOpts,
    inst: &Instance,
    lock: RunLock,
    timeout: Option<f64>,
    expect: Option<&str>,
    first_launch: bool,
) -> anyhow::Result<i32> {
    let dir = inst.dir(store)?;
    let log_path = dir.join(DETACHED_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::volume::PRIVATE_FILE_MODE)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let fd = lock.share_with_child()?;
    let exe = std::env::current_exe().context("cannot find the amivm executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(store.dir())
        .arg("--account")
        .arg(inst.owner_id.as_str())
        .arg("--log-level")
        .arg(&g.log_level)
        .arg("__run-instance")
        .arg(&inst.instance_id)
        .arg("--lock-fd")
        .arg(fd.to_string());
    if let Some(t) = timeout {
        cmd.arg("--timeout").arg(t.to_string());
    }
    if let Some(e) = expect {
        cmd.arg("--expect").arg(e);
    }
    if first_launch {
        cmd.arg("--first-launch");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let spawned = cmd.spawn();
    // The child has its own copy of the lock descriptor now (or failed to start).
    drop(lock);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            mark_failed(
                store,
                inst,
                &format!("cannot start the background process: {e}"),
            );
            bail!("cannot start the background amivm process: {e}");
        }
    };
    let t0 = Instant::now();
    loop {
        let exited = child.try_wait()?;
        match record::get(store, &inst.instance_id) {
            // `--rm`: it ran, ended and removed itself.
            None => break,
            Some(i) if i.state == InstanceState::Pending => {
                if exited.is_some() {
                    let why = last_line(&log_path);
                    mark_failed(store, inst, &format!("{LAUNCH_FAILED}: {why}"));
                    bail!("instance {} did not start: {why}", inst.instance_id);
                }
            }
            Some(i) if i.state_reason.starts_with(LAUNCH_FAILED) => {
                bail!(
                    "instance {} did not start: {}",
                    inst.instance_id,
                    i.state_reason
                );
            }
            Some(_) => break,
        }
        if t0.elapsed() > DETACH_WAIT {
            eprintln!(
                "amivm: warning: {} is still pending after {} s",
                inst.instance_id,
                DETACH_WAIT.as_secs()
            );
            break;
        }
        std::thread::sleep(DETACH_POLL);
    }
    println!("{}", inst.instance_id);
    Ok(exit::GUEST_STOPPED)
}

/// The last non-empty line of a log file, without amivm's error prefix.
fn last_line(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim_start_matches("amivm: error: ").to_string())
        })
        .unwrap_or_else(|| "the background amivm process exited".into())
}

/// Record a failed background start (the lock is free by then).
fn mark_failed(store: &Store, inst: &Instance, why: &str) {
    let _ = record::update(store, &inst.instance_id, |i| {
        i.state = InstanceState::Stopped;
        i.state_reason = why.to_string();
        i.process = None;
        Ok(())
    });
}

/// The detached side: a new session, the inherited lock, the VM run to the end.
pub fn run_instance(args: RunInstanceArgs, g: &GlobalOpts) -> anyhow::Result<i32> {
    // SAFETY: setsid takes no arguments; this process was spawned, not forked from a group
    // leader, so it is not one and the call makes it a session leader without a terminal.
    if unsafe { libc::setsid() } < 0 {
        log::warn!(
            "setsid failed: {}; the instance stays in the launcher's session",
            std::io::Error::last_os_error()
        );
    }
    let timeout = timeout_from(args.timeout)?;
    let expect = parse_expect(args.expect.as_deref())?;
    let (store, caller) = open(g)?;
    let inst = record::load(&store, &caller, &args.instance)?;
    let lock = RunLock::adopt(args.lock_fd, &inst.dir(&store)?)?;
    let opts = BootOptions {
        timeout,
        expect,
        console_stdout: false,
        stdin: false,
    };
    let outcome = launch::boot(&store, &inst.instance_id, lock, &opts, args.first_launch)?;
    match outcome.exit {
        Ok(e) => Ok(report_exit(&e)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the VM")),
    }
}
