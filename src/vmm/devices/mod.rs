//! Emulated devices: legacy PC devices on the port-I/O bus, virtio-mmio devices on the MMIO bus.

pub mod acpi;
pub mod bus;
pub mod exit_port;
pub mod i8042;
pub mod serial;
pub mod virtio;
