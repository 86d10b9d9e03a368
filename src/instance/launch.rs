//! Creating an instance from an image and booting it: `amivm run` and `amivm start`.
//!
//! [`create`] makes the instance (one copy-on-write overlay per block-device mapping over the
//! mapping's snapshot: O(1), nothing is copied) and returns it with its run lock held, in state
//! `pending`. [`boot`] runs it to the end in this process: `running` once the VM is built, and
//! `stopped` or `terminated` once it ends ([`state_after`]).

use super::dir::{Access, InstanceDir};
use super::lock::{process_start_ticks, RunLock};
use super::network::network_device;
use super::record::{self, generate_id, generate_volume_id, Instance, InstanceVolume, ProcessInfo};
use super::state::{InstanceState, ShutdownBehavior};
use super::types::InstanceType;
use super::{InstanceError, Result};
use crate::store::manifest::{device_index, now_rfc3339, DeviceDiscovery as ImageDiscovery, GIB};
use crate::store::{AccountId, SnapshotView, Store};
use crate::vmm::boot::{cmdline, BootProtocol};
use crate::vmm::devices::virtio::BlockConfig;
use crate::vmm::jail::JailConfig;
use crate::vmm::sandbox::{FsPolicy, SandboxConfig};
use crate::vmm::{BlockDrive, ConsoleConfig, DeviceDiscovery, VmConfig, VmExit, VmShell, Vmm};
use crate::volume::CowOverlay;
use regex::Regex;
use std::path::PathBuf;
use std::time::Duration;

/// The console log's file name in the instance directory (unless `--serial-log` names one).
pub const CONSOLE_LOG: &str = "console.log";

/// The start of the state reason of an instance whose VM could not be built.
pub const LAUNCH_FAILED: &str = "launch failed";

/// How long `amivm stop` lets the guest react to Ctrl-Alt-Del before the VM is stopped. Linux
/// with `reboot=k` reboots through the keyboard controller within a few seconds of it.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `amivm run` asks for.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// Image id or unique name.
    pub image: String,
    pub instance_type: InstanceType,
    pub name: Option<String>,
    /// Added to the image's kernel command line.
    pub append: Option<String>,
    /// `--user-data`: served by the metadata service (at most 16 KiB).
    pub user_data: Option<Vec<u8>>,
    /// `--metadata-options`.
    pub metadata_options: super::metadata::MetadataOptions,
    /// `--network`: `user` (passt), `none` or `tap:NAME`.
    pub network: crate::net::NetworkSpec,
    /// `--publish`: host ports forwarded to the guest (needs `user`).
    pub publish: Vec<crate::net::Publish>,
    pub shutdown_behavior: ShutdownBehavior,
    /// `--rm`: delete the instance when it stops.
    pub remove_on_stop: bool,
    /// `--serial-log`: the console log goes there instead of the instance directory.
    pub serial_log: Option<PathBuf>,
    /// `--key-name`: a key pair of the caller's, whose public key the record keeps.
    pub key_name: Option<String>,
    /// `--region`: the region whose chunks the volumes fetch on first read (kept for `start`).
    pub region: Option<String>,
    /// This process boots the instance next ([`boot`]): what the boot reads first is fetched
    /// while the instance is made. `false` when another process boots it (`--detach`), which
    /// fetches for itself.
    pub boots_here: bool,
}

/// How to run the VM.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    pub timeout: Option<Duration>,
    pub expect: Option<Regex>,
    /// Copy the console to stdout (foreground).
    pub console_stdout: bool,
    /// Forward a terminal on stdin to the guest.
    pub stdin: bool,
    /// `--serial-log`: the console goes to this file instead of the instance's `console.log`
    /// (this run only: it comes from the command line, never from the record).
    pub serial_log: Option<PathBuf>,
    /// `--jail`: the VM runs in a jailed child process (see [`super::jailed`]); the store is
    /// added to what stays visible in it.
    pub jail: Option<JailConfig>,
}

/// The overlay file of the volume on `device` (`/dev/vda` → `vda.cow`).
fn overlay_name(device: &str) -> String {
    let base = device.rsplit('/').next().unwrap_or(device);
    format!("{base}{}", record::OVERLAY_SUFFIX)
}

/// Create an instance of `req.image` for `caller`: check the launch permission, make one
/// overlay per mapping and store the record as `pending`. The run lock is held on return.
pub fn create(
    store: &Store,
    caller: &AccountId,
    req: &LaunchRequest,
) -> Result<(Instance, RunLock)> {
    let image = store.resolve_image(caller, &req.image)?;
    store.check_launch_permission(caller, &image)?;
    // What the boot reads first, fetched while the instance is made (a region's image).
    if req.boots_here {
        store.prefetch_launch(&image);
    }
    if let Some(name) = &req.name {
        record::validate_name(name)?;
    }
    if let Some(data) = &req.user_data {
        super::metadata::check_user_data(data)?;
    }
    let key = req
        .key_name
        .as_ref()
        .map(|k| store.key_pair(caller, k))
        .transpose()?;
    // passt missing or a published port taken: one error, nothing created.
    crate::net::open::check(&req.network, &req.publish)?;
    let mut mappings = image.block_device_mappings.clone();
    mappings.sort_by_key(|m| device_index(&m.device_name).unwrap_or(usize::MAX));
    if image.root_mapping().is_none() {
        return Err(InstanceError::Invalid(format!(
            "image {} has no root volume mapping ({})",
            image.image_id, image.root_device_name
        )));
    }
    let id = generate_id();
    let dir = InstanceDir::open(store, record::KIND, &id)?;
    let cleanup = |e: InstanceError| {
        let _ = std::fs::remove_dir_all(dir.path());
        e
    };
    let lock = RunLock::try_acquire(&dir)
        .map_err(cleanup)?
        .ok_or_else(|| InstanceError::Invalid(format!("instance id {id} is already in use")))?;
    let mut volumes = Vec::new();
    for m in &mappings {
        let overlay = overlay_name(&m.device_name);
        let size = volume_bytes(m.ebs.volume_size);
        make_overlay(&dir, &overlay, &m.ebs.snapshot_id, size).map_err(cleanup)?;
        volumes.push(InstanceVolume {
            volume_id: generate_volume_id(),
            device_name: m.device_name.clone(),
            snapshot_id: m.ebs.snapshot_id.clone(),
            overlay,
            size_bytes: size,
            delete_on_termination: m.ebs.delete_on_termination,
            read_only: m.ebs.read_only,
            deleted: false,
        });
    }
    let serial_log = req
        .serial_log
        .as_ref()
        .map(|log| {
            std::path::absolute(log)
                .map_err(|e| InstanceError::io(format!("--serial-log {}", log.display()), e))
        })
        .transpose()
        .map_err(cleanup)?;
    let inst = Instance {
        instance_id: id.clone(),
        name: req.name.clone(),
        owner_id: caller.clone(),
        kernel_command_line: cmdline::compose(
            Some(&image.kernel_command_line),
            req.append.as_deref(),
            &[],
        ),
        user_data: req
            .user_data
            .as_deref()
            .map(super::metadata::encode_user_data),
        metadata_options: req.metadata_options,
        mac_address: (req.network != crate::net::NetworkSpec::None)
            .then(|| crate::net::config::format_mac(&crate::net::mac_for_instance(&id))),
        network: req.network.clone(),
        publish: req.publish.clone(),
        image,
        instance_type: req.instance_type.name.clone(),
        vcpus: req.instance_type.vcpus,
        memory_mib: req.instance_type.memory_mib,
        state: InstanceState::Pending,
        state_reason: "launching".into(),
        shutdown_behavior: req.shutdown_behavior,
        remove_on_stop: req.remove_on_stop,
        launch_time: now_rfc3339(),
        serial_log,
        volumes,
        process: None,
        network_process: None,
        tags: Default::default(),
        key_name: key.as_ref().map(|k| k.key_name.clone()),
        region: req.region.clone(),
        public_key: key.map(|k| k.public_key),
    };
    record::put(store, &inst).map_err(cleanup)?;
    Ok((inst, lock))
}

/// The size of a volume created from a mapping: its `VolumeSize` (GiB), which registration
/// keeps at least the snapshot's size (a volume whose snapshot is larger fails to open at
/// boot, with both sizes in the error).
fn volume_bytes(volume_size_gib: u64) -> u64 {
    volume_size_gib.saturating_mul(GIB)
}

/// A read-only view of a volume's snapshot, presented at the volume's size.
pub fn base_view(store: &Store, v: &InstanceVolume) -> Result<SnapshotView> {
    let view = store.snapshot_view(&v.snapshot_id)?;
    let snapshot_bytes = view.snapshot().size_bytes;
    view.with_size(v.size_bytes).map_err(|_| {
        InstanceError::Invalid(format!(
            "{}: the volume ({} bytes, the image's VolumeSize) is smaller than snapshot {} ({snapshot_bytes} bytes)",
            v.device_name, v.size_bytes, v.snapshot_id
        ))
    })
}

/// Create the overlay `name` in `dir` over a snapshot shown at `size` bytes (nothing is
/// copied, nor the snapshot read: the boot opens it).
fn make_overlay(
    dir: &InstanceDir,
    name: &str,
    snapshot: &crate::store::SnapshotId,
    size: u64,
) -> Result<()> {
    CowOverlay::create_new(&dir.file_path(name)?, size, snapshot.as_str())?;
    Ok(())
}

/// Open the instance's volumes as block devices, root first.
pub(super) fn open_drives(
    store: &Store,
    inst: &Instance,
    dir: &InstanceDir,
) -> Result<Vec<BlockDrive>> {
    let mut drives = Vec::new();
    for v in inst.volumes.iter().filter(|v| !v.deleted) {
        let view = base_view(store, v)?;
        let overlay = CowOverlay::open(
            Box::new(view),
            &dir.file_path(&v.overlay)?,
            v.snapshot_id.as_str(),
        )?
        .with_read_only(v.read_only)
        .with_serial(v.serial());
        drives.push(BlockDrive {
            config: BlockConfig {
                read_only: v.read_only,
                serial: v.serial(),
            },
            backend: Box::new(overlay),
        });
    }
    Ok(drives)
}

/// The VM configuration of an instance whose directory is `dir`.
pub fn vm_config(
    store: &Store,
    inst: &Instance,
    dir: &InstanceDir,
    opts: &BootOptions,
) -> Result<VmConfig> {
    let log = match &opts.serial_log {
        Some(p) => p.clone(),
        None => dir.file_path(CONSOLE_LOG)?,
    };
    Ok(VmConfig {
        kernel: store.kernel_blob_path(&inst.image)?,
        initrd: store.initrd_blob_path(&inst.image)?,
        cmdline: inst.kernel_command_line.clone(),
        protocol: BootProtocol::Linux,
        vcpus: inst.vcpus,
        mem_mib: inst.memory_mib,
        timeout: opts.timeout,
        console: ConsoleConfig {
            stdout: opts.console_stdout,
            log: Some(log),
            stdin: opts.stdin,
            expect: opts.expect.clone(),
        },
        stop_grace: Some(STOP_GRACE),
        // Once the guest runs, only the store stays reachable by path: the snapshot views open
        // chunks lazily and the record is committed there when the guest ends.
        // Jailed, the parent commits the record: the VM process only reads the store.
        sandbox: match &opts.jail {
            None => SandboxConfig {
                seccomp: crate::vmm::sandbox::seccomp_wanted(false),
                fs: Some(FsPolicy {
                    read_only: vec![],
                    read_write: vec![store.dir().to_path_buf()],
                }),
                test_hook: None,
                jail: None,
            },
            Some(j) => SandboxConfig {
                seccomp: crate::vmm::sandbox::seccomp_wanted(false),
                fs: Some(FsPolicy {
                    read_only: vec![store.dir().to_path_buf()],
                    read_write: vec![],
                }),
                test_hook: None,
                jail: Some(JailConfig {
                    read_only: vec![store.dir().to_path_buf()],
                    keep_read_search: true,
                    ..j.clone()
                }),
            },
        },
        discovery: match inst.image.device_discovery {
            ImageDiscovery::Acpi => DeviceDiscovery::Acpi,
            ImageDiscovery::Cmdline => DeviceDiscovery::Cmdline,
        },
    })
}

/// What became of an instance after a run.
#[derive(Debug)]
pub struct BootOutcome {
    /// How the VM ended (`Err`: it could not be started).
    pub exit: std::result::Result<VmExit, InstanceError>,
    /// The instance afterwards; `None` when `--rm` removed it.
    pub instance: Option<Instance>,
}

/// Boot a `pending` instance whose run lock `lock` this process holds and run it to the end.
/// `first_launch`: a VM that cannot even be built terminates the instance (as EC2 does with a
/// launch that fails) instead of leaving it stopped.
pub fn boot(
    store: &Store,
    id: &str,
    lock: RunLock,
    opts: &BootOptions,
    first_launch: bool,
) -> Result<BootOutcome> {
    let not_pending = |i: &Instance| InstanceError::WrongState {
        id: i.instance_id.clone(),
        state: i.state,
        why: "only a pending instance can boot".into(),
    };
    // Nobody else changes a pending instance while we hold its run lock (stop and terminate
    // wait for it to leave pending), so a plain read is enough here.
    let inst = record::get(store, id)?.ok_or_else(|| InstanceError::NotFound(id.to_string()))?;
    if inst.state != InstanceState::Pending {
        return Err(not_pending(&inst));
    }
    let pid = std::process::id();
    let process = process_start_ticks(pid).map(|start_ticks| ProcessInfo { pid, start_ticks });
    let dir = inst.dir(store)?;
    if opts.jail.is_some() {
        let exit = super::jailed::run(store, &inst, &dir, opts, process)?;
        return finish_boot(store, id, lock, exit, first_launch);
    }
    store.prefetch_launch(&inst.image);
    let built = network_device(&inst, &dir).and_then(|(net, passt)| {
        // The VM and its memory first: meanwhile a region's kernel and manifests arrive.
        let shell = VmShell::new(inst.vcpus, inst.memory_mib)?;
        let config = vm_config(store, &inst, &dir, opts)?;
        let drives = open_drives(store, &inst, &dir)?;
        Ok((Vmm::from_shell(shell, config, drives, net)?, passt))
    });
    let exit = match built {
        Err(e) => Err(e),
        Ok((vmm, passt)) => {
            record::update(store, id, |i| {
                if i.state != InstanceState::Pending {
                    return Err(not_pending(i));
                }
                i.process = process;
                i.network_process = passt.process_info();
                i.set_state(InstanceState::Running, "running")
            })?;
            // The VM (and with it the volumes, which flush when dropped) is gone at the end
            // of this block, before the end is recorded and the run lock released.
            let ended = {
                let mut vmm = vmm;
                vmm.run()
            };
            drop(passt);
            ended.map_err(InstanceError::from)
        }
    };
    finish_boot(store, id, lock, exit, first_launch)
}

/// Record how the VM ended, remove an `--rm` instance, release the run lock.
fn finish_boot(
    store: &Store,
    id: &str,
    lock: RunLock,
    exit: std::result::Result<VmExit, InstanceError>,
    first_launch: bool,
) -> Result<BootOutcome> {
    let instance = finish(store, id, &exit, first_launch)?;
    // `--rm`: removed while the lock is still held, so no `start` can slip in between.
    let instance = match instance {
        Some(i) if !i.remove_on_stop => Some(i),
        _ => {
            remove(store, id)?;
            None
        }
    };
    drop(lock);
    Ok(BootOutcome { exit, instance })
}

/// Whether the instance ends `stopped` or goes on to `terminated` after its VM ended.
pub fn state_after(
    current: InstanceState,
    exit: &std::result::Result<VmExit, InstanceError>,
    behavior: ShutdownBehavior,
    first_launch: bool,
) -> InstanceState {
    let guest_initiated = matches!(exit, Ok(VmExit::Stopped) | Ok(VmExit::ExitCode(_)));
    match current {
        InstanceState::ShuttingDown | InstanceState::Terminated => InstanceState::Terminated,
        InstanceState::Stopping | InstanceState::Stopped => InstanceState::Stopped,
        _ if exit.is_err() && first_launch => InstanceState::Terminated,
        _ if guest_initiated && behavior == ShutdownBehavior::Terminate => {
            InstanceState::Terminated
        }
        _ => InstanceState::Stopped,
    }
}

/// The state reason for how a run ended.
pub fn exit_reason(exit: &std::result::Result<VmExit, InstanceError>) -> String {
    match exit {
        Ok(VmExit::Stopped) => "guest shut down (power-off, reset or exit port 0)".into(),
        Ok(VmExit::ExitCode(n)) => format!("guest exited with status {n} through the exit port"),
        Ok(VmExit::Timeout) => "--timeout expired".into(),
        Ok(VmExit::Crashed(c)) => format!("guest crashed: {c}"),
        Ok(VmExit::ExpectMatched) => "console matched --expect".into(),
        Ok(VmExit::UserStop) => "stopped from the host".into(),
        Ok(VmExit::VmmFailed(w)) => format!("amivm failed: {w}"),
        Err(e) => format!("{LAUNCH_FAILED}: {e}"),
    }
}

/// Record the end of a run (under the run lock); returns the instance afterwards.
fn finish(
    store: &Store,
    id: &str,
    exit: &std::result::Result<VmExit, InstanceError>,
    first_launch: bool,
) -> Result<Option<Instance>> {
    let reason = format!("{} at {}", exit_reason(exit), now_rfc3339());
    let dir = InstanceDir::open(store, record::KIND, id)?;
    let inst = record::update(store, id, |i| {
        let next = state_after(i.state, exit, i.shutdown_behavior, first_launch);
        i.process = None;
        i.network_process = None;
        match next {
            InstanceState::Terminated => {
                let why = if i.state == InstanceState::ShuttingDown {
                    format!("terminated from the host: {reason}")
                } else {
                    i.state = InstanceState::ShuttingDown;
                    reason.clone()
                };
                delete_volumes(i, &dir)?;
                i.set_state(InstanceState::Terminated, why)
            }
            _ => {
                if i.state != InstanceState::Stopped {
                    i.state = InstanceState::Stopped;
                }
                i.state_reason = reason.clone();
                Ok(())
            }
        }
    });
    match inst {
        Ok(i) => Ok(Some(i)),
        Err(InstanceError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether termination deletes the volume.
fn doomed(v: &InstanceVolume) -> bool {
    v.delete_on_termination && !v.deleted
}

/// The overlays [`delete_volumes`] would delete, after checking the record and that each is a
/// plain name of a regular file (or absent) in the instance's directory; nothing is deleted.
pub fn deletable_volumes<'a>(inst: &'a Instance, dir: &InstanceDir) -> Result<Vec<&'a str>> {
    inst.check(&inst.instance_id)?;
    let names: Vec<&str> = inst
        .volumes
        .iter()
        .filter(|v| doomed(v))
        .map(|v| v.overlay.as_str())
        .collect();
    for name in &names {
        dir.file_type(name)?;
    }
    Ok(names)
}

/// Delete the overlays of volumes marked DeleteOnTermination: none unless every one is a
/// plain file in the instance's directory ([`deletable_volumes`]).
pub fn delete_volumes(inst: &mut Instance, dir: &InstanceDir) -> Result<()> {
    dir.remove_files(&deletable_volumes(inst, dir)?)?;
    for v in inst.volumes.iter_mut().filter(|v| doomed(v)) {
        v.deleted = true;
    }
    Ok(())
}

/// Delete an instance entirely: its record and its directory (`--rm`).
pub fn remove(store: &Store, id: &str) -> Result<()> {
    let dir = store.record_data_dir(record::KIND, id)?;
    store.delete_record(record::KIND, id)?;
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(InstanceError::io(format!("delete {}", dir.display()), e)),
    }
}

/// The instance's `console.log`, opened only as a regular file inside its directory; `None`
/// while it does not exist.
pub fn open_console_log(dir: &InstanceDir) -> Result<Option<std::fs::File>> {
    match dir.open_file(CONSOLE_LOG, Access::Read) {
        Ok(f) => Ok(Some(f)),
        Err(InstanceError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::events::CrashReason;
    use InstanceState::*;

    fn ok(e: VmExit) -> std::result::Result<VmExit, InstanceError> {
        Ok(e)
    }

    #[test]
    fn guest_shutdown_follows_the_shutdown_behavior() {
        for e in [VmExit::Stopped, VmExit::ExitCode(3)] {
            assert_eq!(
                state_after(Running, &ok(e.clone()), ShutdownBehavior::Stop, true),
                Stopped
            );
            assert_eq!(
                state_after(Running, &ok(e), ShutdownBehavior::Terminate, true),
                Terminated
            );
        }
    }

    #[test]
    fn host_side_ends_stop_the_instance() {
        for e in [
            VmExit::Timeout,
            VmExit::UserStop,
            VmExit::ExpectMatched,
            VmExit::Crashed(CrashReason::TripleFault { rip: 0 }),
        ] {
            assert_eq!(
                state_after(Running, &ok(e), ShutdownBehavior::Terminate, true),
                Stopped
            );
        }
        // `amivm stop` while the guest exits on its own still stops.
        assert_eq!(
            state_after(
                Stopping,
                &ok(VmExit::Stopped),
                ShutdownBehavior::Terminate,
                false
            ),
            Stopped
        );
        // `amivm terminate` while running terminates.
        assert_eq!(
            state_after(
                ShuttingDown,
                &ok(VmExit::UserStop),
                ShutdownBehavior::Stop,
                false
            ),
            Terminated
        );
    }

    #[test]
    fn failed_first_launch_terminates_but_failed_start_stops() {
        let err = || Err(InstanceError::Invalid("bad kernel".into()));
        assert_eq!(
            state_after(Pending, &err(), ShutdownBehavior::Stop, true),
            Terminated
        );
        assert_eq!(
            state_after(Pending, &err(), ShutdownBehavior::Stop, false),
            Stopped
        );
        assert!(exit_reason(&err()).contains("launch failed: bad kernel"));
    }

    #[test]
    fn volumes_have_their_mapping_size() {
        assert_eq!(volume_bytes(1), GIB);
        assert_eq!(volume_bytes(8), 8 * GIB);
        assert_eq!(volume_bytes(u64::MAX), u64::MAX);
    }

    #[test]
    fn overlay_names() {
        assert_eq!(overlay_name("/dev/vda"), "vda.cow");
        assert_eq!(overlay_name("/dev/vdb"), "vdb.cow");
    }
}
