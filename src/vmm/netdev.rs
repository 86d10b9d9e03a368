//! Attaching the virtio-net device: the MMIO window and GSI of the virtio slot after the
//! drives (`platform::virtio_slot`), its worker on the VMM's event thread, and a line in the
//! console log if the backend is lost (the guest keeps running with its link down).

use super::blockdevs::{Events, VirtioSlot};
use super::devices::bus::Bus;
use super::devices::virtio::net::FrameInterceptor;
use super::devices::virtio::net_mmio::{new_net, MmioNetDevice};
use super::platform::virtio_slot;
use super::VmmError;
use crate::net::FrameBackend;
use kvm_ioctls::VmFd;
use std::io::Write;
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;

/// The guest's network card: what the CLI or the instance code hands the VMM.
pub struct NetworkDevice {
    /// Its MAC address (`net::mac_for_instance` for an instance).
    pub mac: [u8; 6],
    /// Where its frames go.
    pub backend: Box<dyn FrameBackend>,
    /// A service answered inside amivm (the metadata endpoint), if any.
    pub interceptor: Option<Box<dyn FrameInterceptor>>,
}

/// Attach `dev` at virtio slot `slot`; `console_log` (a handle on the console log file) gets
/// one line if the backend is lost.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    events: &mut Events,
    slot: usize,
    dev: NetworkDevice,
    console_log: Option<std::fs::File>,
) -> Result<Arc<Mutex<MmioNetDevice>>, VmmError> {
    let name = format!("network ({})", dev.backend.name());
    let dev_err = |why: String| VmmError::Device {
        name: name.clone(),
        why,
    };
    let (base, gsi) = virtio_slot(slot);
    let h = new_net(mem.clone(), dev.mac, dev.backend, dev.interceptor)
        .map_err(|e| dev_err(e.to_string()))?;
    let mut log = console_log;
    crate::sync::relock(&h.bus_device).on_link_lost(Box::new(move |why| {
        let line =
            format!("amivm: network lost ({why}); the instance keeps running without a network\n");
        log::error!("{}", line.trim_end());
        if let Some(f) = log.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }));
    let slot = VirtioSlot {
        base,
        gsi,
        notify_evt: &h.notify_evt,
        irq_evt: &h.irq_evt,
    };
    slot.wire(vm, mmio, events, h.worker, h.bus_device.clone(), dev_err)?;
    Ok(h.bus_device)
}
