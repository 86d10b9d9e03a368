//! The board: which devices the guest gets, where, and how the guest learns of them.
//!
//! Every device describes itself: its module gives the AML of its DSDT entry (and, for a
//! virtio-mmio transport, the `virtio_mmio.device=` kernel argument too), and [`Board::new`]
//! lists them. [`DeviceDiscovery`] then decides how each device is announced, so that the
//! kernel finds every device exactly once:
//! - `acpi`: every device is in the DSDT and no device argument is added to the command line
//!   (Debian's cloud kernel: `CONFIG_VIRTIO_MMIO=m` without `VIRTIO_MMIO_CMDLINE_DEVICES`);
//! - `cmdline`: devices that have a kernel-argument form (the virtio-mmio transports) are
//!   announced that way and left out of the DSDT (kernels without ACPI, like micro-VM kernels
//!   and the test guest); the rest (COM1, the power button, `_S5_`) stay in the DSDT.
//!
//! Pure: no KVM. `amivm boot --dump-acpi` uses it to write the tables without a VM.

use super::devices::{acpi as acpi_devices, serial, virtio};
use super::x86_64::acpi::{self, AcpiError, AcpiTables};
use super::VmmError;
use acpi_tables::aml::Scope;

/// How the guest kernel learns about the virtio-mmio devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceDiscovery {
    /// `virtio_mmio.device=` kernel arguments (kernels with
    /// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, no ACPI needed).
    #[default]
    Cmdline,
    /// ACPI: each virtio-mmio transport is a `LNRO0005` device in the DSDT, no kernel
    /// arguments; the host's stop request presses the ACPI power button.
    Acpi,
}

impl DeviceDiscovery {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceDiscovery::Cmdline => "cmdline",
            DeviceDiscovery::Acpi => "acpi",
        }
    }
}

/// How one device makes itself known to the guest.
#[derive(Debug, Clone, Default)]
pub struct Announcement {
    /// Its DSDT entry (AML, inside `\_SB_`).
    pub aml: Vec<u8>,
    /// The kernel argument that declares it instead, for kernels without ACPI.
    pub cmdline: Option<String>,
}

/// Most virtio-mmio devices and where device `index` lives (its register window's base and its
/// GSI): the layout's drive slots.
pub use super::layout::{drive_window as virtio_slot, MAX_DRIVES as MAX_VIRTIO_DEVICES};

/// The devices of a VM with `drives` virtio block devices, and how they are announced.
#[derive(Debug, Clone)]
pub struct Board {
    pub discovery: DeviceDiscovery,
    pub devices: Vec<Announcement>,
}

impl Board {
    pub fn new(drives: usize, discovery: DeviceDiscovery) -> Result<Board, VmmError> {
        Self::with_network(drives, false, discovery)
    }

    /// As [`Board::new`], plus a virtio-net device in the slot after the drives when `net`.
    pub fn with_network(
        drives: usize,
        net: bool,
        discovery: DeviceDiscovery,
    ) -> Result<Board, VmmError> {
        if drives + usize::from(net) > MAX_VIRTIO_DEVICES {
            return Err(VmmError::Config(format!(
                "{drives} drives given; at most {MAX_VIRTIO_DEVICES} are supported"
            )));
        }
        let mut devices = vec![
            Announcement {
                aml: serial::acpi_aml(),
                cmdline: None,
            },
            Announcement {
                aml: acpi_devices::aml(),
                cmdline: None,
            },
        ];
        for i in 0..drives + usize::from(net) {
            let (base, gsi) = virtio_slot(i);
            devices.push(Announcement {
                // Both fit: the window is below 4 GiB and there are at most 19 devices.
                aml: virtio::acpi_aml(i as u8, base as u32, gsi),
                cmdline: Some(virtio::cmdline_fragment(base, gsi)),
            });
        }
        Ok(Board { discovery, devices })
    }

    /// The kernel arguments to append.
    pub fn cmdline_fragments(&self) -> Vec<String> {
        match self.discovery {
            DeviceDiscovery::Acpi => Vec::new(),
            DeviceDiscovery::Cmdline => self
                .devices
                .iter()
                .filter_map(|d| d.cmdline.clone())
                .collect(),
        }
    }

    /// The DSDT's definition block: `Scope (\_SB_) { ...the devices' entries... }`.
    pub fn dsdt_body(&self) -> Vec<u8> {
        let entries: Vec<u8> = self
            .devices
            .iter()
            .filter(|d| self.discovery == DeviceDiscovery::Acpi || d.cmdline.is_none())
            .flat_map(|d| d.aml.iter().copied())
            .collect();
        Scope::raw("\\_SB_".into(), entries)
    }

    /// The ACPI tables for `vcpus` vCPUs.
    pub fn acpi_tables(&self, vcpus: u32) -> Result<AcpiTables, AcpiError> {
        acpi::build(vcpus, &self.dsdt_body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn each_virtio_device_is_announced_exactly_once() {
        for drives in [0, 1, 3, MAX_VIRTIO_DEVICES] {
            let acpi = Board::new(drives, DeviceDiscovery::Acpi).unwrap();
            assert!(acpi.cmdline_fragments().is_empty());
            assert_eq!(count(&acpi.dsdt_body(), b"LNRO0005"), drives);

            let cmd = Board::new(drives, DeviceDiscovery::Cmdline).unwrap();
            let frags = cmd.cmdline_fragments();
            assert_eq!(frags.len(), drives);
            assert_eq!(count(&cmd.dsdt_body(), b"LNRO0005"), 0);
            if drives > 0 {
                assert_eq!(frags[0], "virtio_mmio.device=4K@0xc0000000:5");
            }
            // COM1, the GED, the power button and _S5_ are there either way.
            for b in [&acpi, &cmd] {
                let body = b.dsdt_body();
                for name in [&b"COM1"[..], b"GED_", b"PWRB", b"_S5_"] {
                    assert!(count(&body, name) >= 1, "{}", String::from_utf8_lossy(name));
                }
            }
        }
    }

    #[test]
    fn the_network_device_takes_the_slot_after_the_drives() {
        let b = Board::with_network(2, true, DeviceDiscovery::Cmdline).unwrap();
        let frags = b.cmdline_fragments();
        assert_eq!(frags.len(), 3);
        assert_eq!(frags[2], "virtio_mmio.device=4K@0xc0002000:7");
        let a = Board::with_network(2, true, DeviceDiscovery::Acpi).unwrap();
        assert_eq!(count(&a.dsdt_body(), b"LNRO0005"), 3);
        assert!(Board::with_network(MAX_VIRTIO_DEVICES, true, DeviceDiscovery::Acpi).is_err());
    }

    #[test]
    fn too_many_drives_is_a_config_error() {
        assert!(Board::new(MAX_VIRTIO_DEVICES + 1, DeviceDiscovery::Acpi).is_err());
    }

    #[test]
    fn slots_follow_the_layout() {
        assert_eq!(virtio_slot(0), (0xc000_0000, 5));
        assert_eq!(virtio_slot(18), (0xc001_2000, 23));
    }
}
