//! An instance's network card: its recorded `--network`/`--publish`, the MAC from its id, the
//! metadata service answering on it, and the passt process behind it.

use super::dir::InstanceDir;
use super::lock::process_start_ticks;
use super::record::{Instance, ProcessInfo};
use super::Result;
use crate::net::NetworkSpec;
use crate::vmm::metadata::MetadataInterceptor;
use crate::vmm::NetworkDevice;

/// The file in the instance's directory that passt's own messages go to.
pub const PASST_LOG: &str = "passt.log";

/// The network's helper process (passt), killed when the VM is gone; the sandbox allows
/// kill(2), not wait4(2), and passt would end with us anyway (PR_SET_PDEATHSIG).
pub struct Backend(Option<std::process::Child>);

impl Backend {
    /// The helper process, to record so that `ps` can tell when it is gone.
    pub fn process_info(&self) -> Option<ProcessInfo> {
        let pid = self.0.as_ref()?.id();
        process_start_ticks(pid).map(|start_ticks| ProcessInfo { pid, start_ticks })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
        }
    }
}

/// The instance's network card and its helper process; no card at all for `--network none`.
pub fn network_device(
    inst: &Instance,
    dir: &InstanceDir,
) -> Result<(Option<NetworkDevice>, Backend)> {
    if inst.network == NetworkSpec::None {
        return Ok((None, Backend(None)));
    }
    let log = dir.file_path(PASST_LOG)?;
    let opened = crate::net::open::open(&inst.network, &inst.publish, Some(&log))?;
    let mac = crate::net::mac_for_instance(&inst.instance_id);
    let config = super::metadata::for_instance(inst)?;
    Ok((
        Some(NetworkDevice {
            mac,
            backend: opened.backend,
            interceptor: Some(Box::new(MetadataInterceptor::new(config, mac))),
        }),
        Backend(opened.passt),
    ))
}
