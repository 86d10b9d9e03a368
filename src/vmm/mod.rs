//! The KVM virtual machine monitor.

pub mod devices;
