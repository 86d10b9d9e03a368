//! Booting an instance with `--jail`: the VM runs in a child process in its own namespaces
//! (crate::vmm::jail), which opens the volumes, builds and runs the VM; this process keeps the
//! run lock, is the process `ps` shows and `stop` signals (it relays SIGTERM to the VM
//! process), records `running` once the VM is built, and records the end.

use super::dir::InstanceDir;
use super::launch::{open_drives, vm_config, BootOptions};
use super::network::network_device;
use super::record::{self, Instance, ProcessInfo};
use super::state::InstanceState;
use super::{InstanceError, Result};
use crate::store::Store;
use crate::vmm::jail::{self, spawn::Ending, Report};
use crate::vmm::{VmExit, Vmm, VmmError};

/// Run the pending instance `inst` jailed. The outer `Result` is an error of this process (the
/// record could not be updated); the inner one how the VM ended, as [`super::launch::boot`]
/// reports it.
pub fn run(
    store: &Store,
    inst: &Instance,
    dir: &InstanceDir,
    opts: &BootOptions,
    process: Option<ProcessInfo>,
) -> Result<std::result::Result<VmExit, InstanceError>> {
    let config = match vm_config(store, inst, dir, opts) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    // passt runs here, outside the jail; the VM process gets its end of the socketpair.
    let (net, passt) = match network_device(inst, dir) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    let vm = jail::spawn(move |in_user_ns, rep| {
        let mut config = config;
        if let Some(j) = &mut config.sandbox.jail {
            j.in_user_ns = in_user_ns;
        }
        let built =
            open_drives(store, inst, dir).and_then(|d| Ok(Vmm::with_network(config, d, net)?));
        let mut vmm = match built {
            Ok(v) => v,
            Err(e) => {
                rep.send(&Report::Failed(e.to_string()));
                return jail::spawn::LOST;
            }
        };
        rep.send(&Report::Built);
        let ended = vmm.run();
        // The volumes flush as the VM goes, before the parent records the end.
        drop(vmm);
        match ended {
            Ok(exit) => rep.send(&Report::Ended(exit)),
            Err(e) => rep.send(&Report::Failed(e.to_string())),
        }
        0
    });
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => return Ok(Err(VmmError::Config(e.to_string()).into())),
    };
    let id = inst.instance_id.as_str();
    let ending = jail::spawn::supervise(vm, || {
        record::update(store, id, |i| {
            if i.state != InstanceState::Pending {
                return Err(InstanceError::WrongState {
                    id: i.instance_id.clone(),
                    state: i.state,
                    why: "only a pending instance can boot".into(),
                });
            }
            i.process = process;
            i.network_process = passt.process_info();
            i.set_state(InstanceState::Running, "running")
        })
        .map(|_| ())
    })?;
    drop(passt);
    Ok(match ending {
        Ending::Ended(exit) => Ok(exit),
        Ending::Failed(why) => Err(VmmError::Config(why).into()),
        Ending::Died(status) => Err(VmmError::Config(format!(
            "the jailed VM process ended with status {status} without saying why"
        ))
        .into()),
    })
}
