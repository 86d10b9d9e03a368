//! The KVM virtual machine monitor: `Vmm::new(VmConfig)` then `run()` gives a [`VmExit`].

pub mod boot;
pub mod devices;
pub mod layout;
pub mod memory;
pub mod x86_64;
