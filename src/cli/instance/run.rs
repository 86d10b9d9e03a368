//! `amivm run`, `amivm start` and the hidden `__run-instance` behind `--detach`.

use super::super::boot::{report_exit, timeout_from};
use super::super::{exit, GlobalOpts};
use super::{open, RunArgs, RunInstanceArgs, StartArgs};
use crate::cli::jail::JailArgs;
use crate::files;
use crate::instance::detach::{self, DetachOptions, Started, DETACH_WAIT};
use crate::instance::launch::{self, BootOptions, LaunchRequest};
use crate::instance::lock::RunLock;
use crate::instance::{lifecycle, metadata, record, types, Instance, InstanceState};
use crate::store::region::lazy::LazyRegion;
use crate::store::region::pins::{self, Pin, PinTask};
use crate::store::Store;
use crate::vmm::jail::JailConfig;
use anyhow::Context;
use regex::Regex;
use std::sync::Arc;
use std::time::Duration;

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
    if let Some(log) = &args.serial_log {
        // Refused before an instance exists (a FIFO would also block the VM's open).
        files::check_if_exists(log, "serial log", files::REGULAR)?;
    }
    // Both checked before an instance exists.
    let user_data = args
        .user_data
        .as_deref()
        .map(metadata::read_user_data)
        .transpose()?;
    let metadata_options = args
        .metadata_options
        .as_deref()
        .map(metadata::MetadataOptions::parse)
        .transpose()?
        .unwrap_or_default();
    let (store, caller) = open(g)?;
    let (store, lazy) = with_region(store, args.region.as_deref())?;
    let req = LaunchRequest {
        image: args.ami.clone(),
        instance_type: itype.clone(),
        name: args.name.clone(),
        append: args.append.clone(),
        user_data,
        metadata_options,
        network: args.network.clone(),
        publish: args.publish.clone(),
        shutdown_behavior: args.shutdown_behavior,
        remove_on_stop: args.rm,
        serial_log: args.serial_log.clone(),
        key_name: args.key_name.clone(),
        region: args.region.clone(),
        boots_here: !args.detach,
    };
    let (inst, lock) = launch::create(&store, &caller, &req)?;
    if args.detach {
        let opts = detach_options(g, args.timeout, args.expect.as_deref(), true, &args.jail)?;
        return detach(&store, &inst, lock, &opts);
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
    let jail = args.jail.config(Vec::new());
    let pin = start_pin(lazy.as_deref(), &inst, true);
    let code = foreground(&store, &inst, lock, timeout, expect, true, jail);
    settle_pin(&store, pin, &inst.instance_id);
    if let Some(l) = lazy {
        eprintln!(
            "amivm: fetched {} chunks from region {}",
            l.fetched(),
            args.region.as_deref().unwrap_or_default()
        );
    }
    code
}

/// The store to run an instance of `region` with: chunks missing locally are fetched from the
/// region on first read (and kept); the local store itself without a region.
fn with_region(
    store: Store,
    region: Option<&str>,
) -> anyhow::Result<(Store, Option<Arc<LazyRegion>>)> {
    let Some(r) = region else {
        return Ok((store, None));
    };
    let region = store.open_region(r)?;
    let lazy = Arc::new(LazyRegion::new(store.layout(), region.s3.clone())?);
    Ok((Store::with_backend(store.dir(), lazy.clone())?, Some(lazy)))
}

/// Start pinning `inst` in the region it boots from (see [`pins`]): while it exists, gc keeps
/// what it still reads there.
fn start_pin(lazy: Option<&LazyRegion>, inst: &Instance, fresh: bool) -> Option<PinTask> {
    let lazy = lazy?;
    let pin = Pin::new(
        &inst.instance_id,
        inst.image.image_id.as_str(),
        inst.volumes.iter().map(|v| v.snapshot_id.clone()).collect(),
        inst.image.blobs(),
    );
    PinTask::start(lazy.remote(), pin, fresh)
        .map_err(|e| eprintln!("amivm: warning: {e}"))
        .ok()
}

/// After a run from a region: the pin stays while the instance does, and goes with it. The
/// record is read again once the pin is made: a `terminate` that removed the pin before it
/// was made has marked the instance terminated by then.
fn settle_pin(store: &Store, pin: Option<PinTask>, id: &str) {
    let Some(pin) = pin else { return };
    let gone = || match record::get(store, id) {
        Ok(Some(i)) => i.state == InstanceState::Terminated,
        Ok(None) => true,
        Err(_) => false,
    };
    if !gone() {
        match pin.finish(pins::PIN_WAIT) {
            Ok(()) if gone() => {}
            Ok(()) => return,
            Err(e) => {
                eprintln!("amivm: warning: {e}; a gc of the region may remove what instance {id} has not read yet");
                return;
            }
        }
    }
    if let Err(e) = pin.remove(pins::PIN_WAIT) {
        eprintln!(
            "amivm: warning: {e}; its pin stays in the region ({}/{id}.json)",
            pins::PINS_DIR
        );
    }
}

/// Run the instance here with the console on stdout.
fn foreground(
    store: &Store,
    inst: &Instance,
    lock: RunLock,
    timeout: Option<Duration>,
    expect: Option<Regex>,
    first_launch: bool,
    jail: Option<JailConfig>,
) -> anyhow::Result<i32> {
    let opts = BootOptions {
        timeout,
        expect,
        console_stdout: true,
        stdin: true,
        serial_log: if first_launch {
            inst.serial_log.clone()
        } else {
            None
        },
        jail,
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
    // An instance of a region's image: the region opened first, so a region gone is one line
    // and the instance stays stopped.
    let region = record::resolve(&store, &caller, &args.instance)?.region;
    let (store, lazy) = with_region(store, region.as_deref())?;
    let (inst, lock) = lifecycle::start(&store, &caller, &args.instance)?;
    if args.attach {
        eprintln!("amivm: starting {}", inst.instance_id);
        let jail = args.jail.config(Vec::new());
        let pin = start_pin(lazy.as_deref(), &inst, false);
        let code = foreground(&store, &inst, lock, timeout, expect, false, jail);
        settle_pin(&store, pin, &inst.instance_id);
        return code;
    }
    let opts = detach_options(g, args.timeout, args.expect.as_deref(), false, &args.jail)?;
    detach(&store, &inst, lock, &opts)
}

/// How to run an instance in the background.
fn detach_options(
    g: &GlobalOpts,
    timeout: Option<f64>,
    expect: Option<&str>,
    first_launch: bool,
    jail: &JailArgs,
) -> anyhow::Result<DetachOptions> {
    Ok(DetachOptions {
        exe: std::env::current_exe().context("cannot find the amivm executable")?,
        log_level: g.log_level.as_str().to_string(),
        timeout,
        expect: expect.map(str::to_string),
        first_launch,
        extra_args: jail.to_args(),
    })
}

/// Start `amivm __run-instance` in a new session with the run lock, wait until the instance
/// leaves `pending`, and print its id.
fn detach(
    store: &Store,
    inst: &Instance,
    lock: RunLock,
    opts: &DetachOptions,
) -> anyhow::Result<i32> {
    let mut child = detach::spawn(store, inst, lock, opts)?;
    if detach::wait_started(store, inst, &mut child, DETACH_WAIT)? == Started::StillPending {
        eprintln!(
            "amivm: warning: {} is still pending after {} s",
            inst.instance_id,
            DETACH_WAIT.as_secs()
        );
    }
    println!("{}", inst.instance_id);
    Ok(exit::GUEST_STOPPED)
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
    let (store, lazy) = with_region(store, inst.region.as_deref())?;
    let pin = start_pin(lazy.as_deref(), &inst, args.first_launch);
    let opts = BootOptions {
        timeout,
        expect,
        console_stdout: false,
        stdin: false,
        serial_log: args.serial_log,
        jail: args.jail.config(Vec::new()),
    };
    let outcome = launch::boot(&store, &inst.instance_id, lock, &opts, args.first_launch);
    settle_pin(&store, pin, &inst.instance_id);
    match outcome?.exit {
        Ok(e) => Ok(report_exit(&e)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the VM")),
    }
}
