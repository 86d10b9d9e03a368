//! The KVM virtual machine monitor: `Vmm::new(VmConfig)` then `run()` gives a [`VmExit`].

pub mod blockdevs;
pub mod boot;
pub mod console;
pub mod devices;
pub mod events;
pub mod jail;
pub mod layout;
pub mod memory;
pub mod metadata;
pub mod netdev;
pub mod platform;
pub mod sandbox;
pub mod shell;
pub mod vcpu;
pub mod vm;
pub mod x86_64;

pub use blockdevs::BlockDrive;
pub use netdev::NetworkDevice;
pub use platform::DeviceDiscovery;
pub use shell::VmShell;
pub use vm::{ConsoleConfig, VmConfig, VmExit, Vmm};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm cannot be opened.
    #[error("{hint} ({source})")]
    KvmOpen {
        hint: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A KVM capability the VMM needs is missing.
    #[error("this KVM lacks {0}, which amivm needs")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("{step} failed: {source}")]
    Kvm {
        step: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] x86_64::acpi::AcpiError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Bus(#[from] devices::bus::BusError),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot install a signal handler: {0}")]
    Signal(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A device could not be created or attached.
    #[error("device {name}: {why}")]
    Device { name: String, why: String },
}
