//! The ACPI tables, generated with the rust-vmm `acpi_tables` crate: RSDP, XSDT, a
//! hardware-reduced FADT, the DSDT and a MADT listing the vCPUs' local APICs and the IOAPIC.
//!
//! The DSDT's body (the devices' AML) comes from the caller: every device describes itself
//! (see `vmm::platform`). Kernels built without `CONFIG_X86_MPPARSE` (Debian's cloud kernel,
//! for one) learn their CPUs only from the MADT; kernels with ACPI find virtio-mmio devices,
//! COM1, the power button and `_S5_` in the DSDT. Layouts: ACPI 6.5, 5.2.5.3 (RSDP), 5.2.8
//! (XSDT), 5.2.9 (FADT), 5.2.12 (MADT), 5.2.11.1 (DSDT).

use crate::vmm::layout::{
    ACPI_PM_PORT, ACPI_RESET_OFFSET, ACPI_SLEEP_CONTROL_OFFSET, ACPI_SLEEP_STATUS_OFFSET,
    ACPI_START, IOAPIC_ADDR, LAPIC_ADDR,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// OEM id in every table (6 bytes): Linux prints it in its `ACPI: XSDT ... (v01 AMIVM ...)`
/// lines.
pub const OEM_ID: [u8; 6] = *b"AMIVM ";
/// OEM table id (8 bytes).
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
/// OEM revision of every table.
const OEM_REVISION: u32 = 1;
/// The FADT's hypervisor vendor identity (ACPI 6.5, table 5.9, offset 268).
const HYPERVISOR_ID: [u8; 8] = *b"AMIVM   ";
/// Size of the common table header (5.2.6).
const HEADER_LEN: u32 = 36;
/// DSDT revision 2: integers in its AML are 64-bit (5.2.11.1).
const DSDT_REVISION: u8 = 2;
/// IAPC_BOOT_ARCH bits (table 5.11): 8042 present (Linux probes the i8042 only then), VGA not
/// present, MSI not supported, CMOS RTC not present.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// The value the guest writes to the reset register (any byte will do: ours, documented here
/// and in the FADT).
pub const RESET_VALUE: u8 = 0x01;
/// Width in bits of the one-byte power-management registers.
const BYTE_REGISTER_BITS: u8 = 8;
/// Tables start on 16-byte boundaries (the RSDP must, 5.2.5.1; the rest for tidiness).
const ALIGN: usize = 16;
/// The end of the BIOS read-only area the RSDP scan covers (5.2.5.1: 0xE0000-0xFFFFF).
pub const ACPI_AREA_END: u64 = 0x10_0000;

/// Built tables: `bytes` go at [`ACPI_START`]; the RSDP is first.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    pub rsdp_addr: u64,
    pub bytes: Vec<u8>,
    /// Each table's name (its signature; `RSDP` for the RSDP), offset in `bytes` and length.
    pub index: Vec<(String, usize, usize)>,
}

impl AcpiTables {
    /// Each table's name and bytes, in the order they are laid out.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.index
            .iter()
            .map(|(n, off, len)| (n.as_str(), &self.bytes[*off..*off + *len]))
    }
}

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables for {0} vCPUs do not fit below 1 MiB")]
    TooBig(u32),
    #[error("{0} vCPUs cannot be described by a MADT (1 to 255)")]
    BadCpuCount(u32),
}

/// A one-byte register at `port` in system I/O space (Generic Address Structure, 5.2.3.2).
fn io_byte_register(port: u64) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        BYTE_REGISTER_BITS,
        0,
        AccessSize::ByteAccess,
        port,
    )
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons are control-method devices, not fixed features.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    let boot_arch =
        IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT;
    b.iapc_boot_arch = boot_arch.into();
    b.reset_reg = io_byte_register(ACPI_PM_PORT + ACPI_RESET_OFFSET);
    b.reset_value = RESET_VALUE;
    // Both must be non-zero for Linux to offer S5 on a hardware-reduced platform
    // (ACPICA hwxfsleep.c, acpi_hw_extended_sleep).
    b.sleep_control_reg = io_byte_register(ACPI_PM_PORT + ACPI_SLEEP_CONTROL_OFFSET);
    b.sleep_status_reg = io_byte_register(ACPI_PM_PORT + ACPI_SLEEP_STATUS_OFFSET);
    b.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_ID).into();
    let mut out = Vec::new();
    b.finalize().to_aml_bytes(&mut out);
    out
}

fn madt(cpus: u32) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for id in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(
            id as u8,
            id as u8,
            EnabledStatus::Enabled,
        ));
    }
    // The IOAPIC's id follows the CPUs', as in the MP table; its pins start at GSI 0.
    m.add_structure(IoApic::new(cpus as u8, IOAPIC_ADDR as u32, 0));
    let mut out = Vec::new();
    m.to_aml_bytes(&mut out);
    out
}

fn dsdt(body: &[u8]) -> Vec<u8> {
    let mut t = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.append_slice(body);
    t.as_slice().to_vec()
}

fn align(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(ALIGN) * ALIGN, 0);
}

/// Build the tables for `cpus` vCPUs with `dsdt_body` (AML) as the DSDT's definition block,
/// laid out from [`ACPI_START`].
pub fn build(cpus: u32, dsdt_body: &[u8]) -> Result<AcpiTables, AcpiError> {
    if cpus == 0 || cpus > u32::from(u8::MAX) {
        return Err(AcpiError::BadCpuCount(cpus));
    }
    let rsdp_len = Rsdp::len();
    let mut out = vec![0u8; rsdp_len];
    let mut index = vec![("RSDP".to_string(), 0, rsdp_len)];
    let mut place = |out: &mut Vec<u8>, name: &str, table: Vec<u8>| -> u64 {
        align(out);
        let off = out.len();
        index.push((name.to_string(), off, table.len()));
        out.extend(table);
        ACPI_START + off as u64
    };
    let dsdt_addr = place(&mut out, "DSDT", dsdt(dsdt_body));
    let fadt_addr = place(&mut out, "FACP", fadt(dsdt_addr));
    let madt_addr = place(&mut out, "APIC", madt(cpus));
    let mut x = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    x.add_entry(fadt_addr);
    x.add_entry(madt_addr);
    let mut xb = Vec::new();
    x.to_aml_bytes(&mut xb);
    let xsdt_addr = place(&mut out, "XSDT", xb);
    if ACPI_START + out.len() as u64 > ACPI_AREA_END {
        return Err(AcpiError::TooBig(cpus));
    }
    let mut r = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut r);
    out[..rsdp_len].copy_from_slice(&r);
    Ok(AcpiTables {
        rsdp_addr: ACPI_START,
        bytes: out,
        index,
    })
}

#[cfg(test)]
#[path = "acpi_tests.rs"]
mod tests;
