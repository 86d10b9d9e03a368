//! The ACPI platform devices of a hardware-reduced machine (ACPI 6.5, 4.1):
//!
//! - [`PowerManagement`]: the sleep control, sleep status and reset registers the FADT points
//!   at (I/O ports from `layout::ACPI_PM_PORT`). Writing SLP_TYP 5 (S5, the `_S5_` object) with SLP_EN
//!   ends the VM as a guest power-off; writing [`RESET_VALUE`] to the reset register ends it
//!   as a reset does.
//! - [`Ged`]: a Generic Event Device (`ACPI0013`, 5.6.9) with one event register at
//!   [`GED_PORT`] and an interrupt at [`GED_GSI`]. Its `_EVT` method reads the register and
//!   notifies the power button (`PNP0C0C`, 4.8.2.2.1.3) when [`GED_EVENT_POWER_BUTTON`] is set:
//!   that is how the host asks an ACPI guest to shut down.
//!
//! [`aml`] is how these devices describe themselves in the DSDT.

use super::bus::BusDevice;
use crate::vmm::events::{EventSink, VmEvent};
use crate::vmm::layout::{
    ACPI_RESET_OFFSET, ACPI_SLEEP_CONTROL_OFFSET, ACPI_SLEEP_STATUS_OFFSET, GED_GSI, GED_PORT,
    GED_PORT_SPAN,
};
pub use crate::vmm::x86_64::acpi::RESET_VALUE;
use acpi_tables::aml::{
    self, EISAName, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    Interrupt, Local, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path,
    ResourceTemplate, Store,
};
use acpi_tables::Aml;
use vmm_sys_util::eventfd::EventFd;

/// SLP_EN, bit 5 of the sleep control register (ACPI 6.5, 4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
/// SLP_TYP occupies bits 2-4 of the sleep control register (4.8.3.7).
pub const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// The sleep type value of S5 (soft off) on this board: the first element of `_S5_` (any
/// value 0-7 would do; 5 is what QEMU and Cloud Hypervisor use).
pub const S5_SLP_TYP: u8 = 5;
/// WAK_STS, bit 7 of the sleep status register (4.8.3.8). This machine never sleeps, so the
/// register always reads "awake": a guest waiting for the wake-up after a sleep state we do
/// not implement returns at once.
const WAK_STS: u8 = 1 << 7;
/// Notify value for a power button press: "Device Check"/status change, 0x80 (5.6.6, table
/// 5.187 and 4.8.2.2.1.3: the power button device is notified with 0x80).
const POWER_BUTTON_NOTIFY: u8 = 0x80;
/// `_HID` of the Generic Event Device (ACPI 6.5, 5.6.9).
const GED_HID: &str = "ACPI0013";
/// `_HID` of the control-method power button (ACPI 6.5, 4.8.2.2.1.3, table 5.160).
const POWER_BUTTON_HID: &str = "PNP0C0C";
/// Width in bits of the GED event register.
const GED_REGISTER_BITS: usize = 32;
/// GED event bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u32 = 1 << 0;

/// What a write to the sleep control register asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepRequest {
    /// SLP_EN is clear: nothing happens (the guest may be preparing SLP_TYP).
    None,
    /// S5: power off.
    PowerOff,
    /// A sleep type this machine does not offer.
    Unsupported(u8),
}

/// Decode a byte written to the sleep control register.
pub fn decode_sleep_control(v: u8) -> SleepRequest {
    if v & SLP_EN == 0 {
        return SleepRequest::None;
    }
    match (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK {
        S5_SLP_TYP => SleepRequest::PowerOff,
        other => SleepRequest::Unsupported(other),
    }
}

/// The sleep control/status and reset registers.
pub struct PowerManagement {
    events: EventSink,
}

impl PowerManagement {
    pub fn new(events: EventSink) -> Self {
        PowerManagement { events }
    }
}

impl BusDevice for PowerManagement {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == ACPI_SLEEP_STATUS_OFFSET {
            if let Some(b) = data.first_mut() {
                *b = WAK_STS;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            ACPI_SLEEP_CONTROL_OFFSET => match decode_sleep_control(v) {
                SleepRequest::PowerOff => self.events.send(VmEvent::PowerOff),
                SleepRequest::Unsupported(t) => {
                    log::warn!("guest asked for ACPI sleep type {t}, which is not offered")
                }
                SleepRequest::None => {}
            },
            ACPI_RESET_OFFSET if v == RESET_VALUE => self.events.send(VmEvent::Reset),
            _ => {}
        }
    }
}

/// The Generic Event Device's event register and interrupt.
pub struct Ged {
    pending: u32,
    irq: Option<EventFd>,
}

impl Ged {
    /// A GED that raises its interrupt through `irq` (an irqfd for [`GED_GSI`]).
    pub fn new(irq: Option<EventFd>) -> Self {
        Ged { pending: 0, irq }
    }

    /// Latch `event` and interrupt the guest.
    pub fn raise(&mut self, event: u32) {
        self.pending |= event;
        if let Some(irq) = &self.irq {
            if let Err(e) = irq.write(1) {
                log::warn!("GED interrupt: {e}");
            }
        }
    }

    /// Ask the guest to shut down: press the power button.
    pub fn press_power_button(&mut self) {
        self.raise(GED_EVENT_POWER_BUTTON);
    }
}

impl BusDevice for Ged {
    /// A read returns the latched events; one that starts at the register's first byte also
    /// clears them (the `_EVT` method reads the whole DWord once per interrupt).
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bytes = self.pending.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| bytes.get(o).copied())
                .unwrap_or(0);
        }
        if offset == 0 {
            self.pending = 0;
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The DSDT entries of these devices (inside `\_SB_`): `\_S5_`, the GED and the power button.
pub fn aml() -> Vec<u8> {
    let mut out = Vec::new();
    // Name (\_S5_, Package () { SLP_TYPa, SLP_TYPb, reserved, reserved }), as QEMU writes it.
    Name::new(
        Path::new("\\_S5_"),
        &Package::new(vec![&S5_SLP_TYP, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut out);

    let irq = Interrupt::new(true, true, false, false, GED_GSI);
    let crs = ResourceTemplate::new(vec![&irq]);
    let region = OpRegion::new(
        "GDST".into(),
        OpRegionSpace::SystemIO,
        &GED_PORT,
        &GED_PORT_SPAN,
    );
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", GED_REGISTER_BITS)],
    );
    let gdat = Path::new("GDAT");
    let read = Store::new(&Local(0), &gdat);
    let masked = aml::And::new(&aml::ZERO, &Local(0), &GED_EVENT_POWER_BUTTON);
    let is_power = Equal::new(&masked, &GED_EVENT_POWER_BUTTON);
    let pwrb = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&pwrb, &POWER_BUTTON_NOTIFY);
    let on_power = If::new(&is_power, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&read, &on_power]);
    aml::Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &GED_HID),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    )
    .to_aml_bytes(&mut out);

    aml::Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new(POWER_BUTTON_HID)),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn sleep_control_decoding() {
        assert_eq!(decode_sleep_control(0), SleepRequest::None);
        // SLP_TYP 5 without SLP_EN: nothing yet.
        assert_eq!(decode_sleep_control(5 << 2), SleepRequest::None);
        // What Linux writes for S5: (5 << 2) | SLP_EN = 0x34.
        assert_eq!(decode_sleep_control(0x34), SleepRequest::PowerOff);
        assert_eq!(
            decode_sleep_control((3 << 2) | SLP_EN),
            SleepRequest::Unsupported(3)
        );
        // Other bits (WAK_STS-like bit 7, reserved bits 0-1) do not matter.
        assert_eq!(decode_sleep_control(0x34 | 0x83), SleepRequest::PowerOff);
    }

    #[test]
    fn power_off_and_reset_reach_the_vmm() {
        let (tx, rx) = channel();
        let mut pm = PowerManagement::new(EventSink::new(tx));
        pm.write(ACPI_SLEEP_CONTROL_OFFSET, &[5 << 2]);
        pm.write(ACPI_SLEEP_CONTROL_OFFSET, &[(1 << 2) | SLP_EN]);
        pm.write(ACPI_RESET_OFFSET, &[RESET_VALUE.wrapping_add(1)]);
        pm.write(ACPI_SLEEP_CONTROL_OFFSET, &[]);
        assert!(rx.try_recv().is_err(), "nothing ends the VM yet");
        pm.write(ACPI_SLEEP_CONTROL_OFFSET, &[(S5_SLP_TYP << 2) | SLP_EN]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::PowerOff));
        pm.write(ACPI_RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::Reset));
        let mut b = [0u8; 1];
        pm.read(ACPI_SLEEP_STATUS_OFFSET, &mut b);
        assert_eq!(b[0], WAK_STS);
    }

    #[test]
    fn ged_latches_interrupts_and_clears_on_read() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(Some(irq.try_clone().unwrap()));
        let mut d = [0u8; 4];
        ged.read(0, &mut d);
        assert_eq!(d, [0; 4]);
        ged.press_power_button();
        assert_eq!(irq.read().unwrap(), 1, "the interrupt fired");
        // A read of a later byte does not clear; a DWord read at 0 returns and clears.
        let mut b = [0xffu8; 2];
        ged.read(2, &mut b);
        assert_eq!(b, [0, 0]);
        ged.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), GED_EVENT_POWER_BUTTON);
        ged.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
        // Reads past the register and huge offsets are zero, never a panic.
        ged.read(u64::MAX, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn aml_names_the_devices() {
        let a = aml();
        let has = |n: &[u8]| a.windows(n.len()).any(|w| w == n);
        assert!(has(b"_S5_"));
        assert!(has(b"ACPI0013\0"));
        assert!(has(b"GDAT"));
        assert!(has(b"PWRB"));
        assert!(has(b"_EVT"));
    }
}
