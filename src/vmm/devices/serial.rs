//! The 16550A UART at COM1 (I/O 0x3f8, IRQ 4), from vm-superio, and the console sink its
//! output goes to: stdout, an optional log file, and the watchers for a kernel panic and the
//! `--expect` pattern.

use super::bus::BusDevice;
use crate::vmm::events::{CrashReason, EventSink, VmEvent};
use regex::Regex;
use std::fs::File;
use std::io::Write;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's I/O base (the PC convention Linux's 8250 driver probes first).
pub const COM1_PORT: u64 = 0x3f8;
/// The UART's eight registers.
pub const COM1_PORT_SPAN: u64 = 8;
/// COM1's ISA IRQ.
pub const COM1_GSI: u32 = 4;
/// `_HID` of a 16550A-compatible serial port (PNP ids, "PNP0501").
const COM1_HID: &str = "PNP0501";
/// COM1's `_UID` in the DSDT.
const COM1_UID: u8 = 0;

/// The DSDT entry (inside `\_SB_`) for COM1: a 16550A-compatible port (`PNP0501`) with its
/// eight I/O ports and ISA IRQ 4 (edge-triggered, active-high, as ISA interrupts are).
pub fn acpi_aml() -> Vec<u8> {
    use acpi_tables::aml::{self, EISAName, Interrupt, Name, ResourceTemplate, IO};
    use acpi_tables::Aml;
    let io = IO::new(COM1_PORT as u16, COM1_PORT as u16, 0, COM1_PORT_SPAN as u8);
    let irq = Interrupt::new(true, true, false, false, COM1_GSI);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    let mut out = Vec::new();
    aml::Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new(COM1_HID)),
            &Name::new("_UID".into(), &COM1_UID),
            &Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// What Linux prints when it panics (kernel/panic.c).
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Longest console line kept for matching; longer lines are matched in pieces.
const MAX_LINE: usize = 4096;

/// An interrupt line backed by an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Where console output goes.
pub struct ConsoleSink {
    stdout: bool,
    log: Option<File>,
    expect: Option<Regex>,
    events: EventSink,
    line: Vec<u8>,
    matched: bool,
}

impl ConsoleSink {
    /// A sink writing to stdout (if `stdout`) and `log`, watching for panics and `expect`.
    pub fn new(stdout: bool, log: Option<File>, expect: Option<Regex>, events: EventSink) -> Self {
        ConsoleSink {
            stdout,
            log,
            expect,
            events,
            line: Vec::new(),
            matched: false,
        }
    }

    fn check_line(&mut self, complete: bool) {
        let text = String::from_utf8_lossy(&self.line);
        if let Some(re) = &self.expect {
            if !self.matched && re.is_match(&text) {
                self.matched = true;
                self.events.send(VmEvent::ExpectMatched);
            }
        }
        if complete && text.contains(PANIC_MARKER) {
            let line = text.trim().to_string();
            self.events
                .send(VmEvent::Crash(CrashReason::KernelPanic { line }));
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stdout {
            let mut out = std::io::stdout().lock();
            // A closed stdout must not stop the guest.
            let _ = out.write_all(buf).and_then(|_| out.flush());
        }
        if let Some(f) = &mut self.log {
            let _ = f.write_all(buf);
        }
        for &b in buf {
            if b == b'\n' {
                self.check_line(true);
                self.line.clear();
            } else if b != b'\r' {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.check_line(true);
                    self.line.clear();
                }
            }
        }
        if self.expect.is_some() && !self.line.is_empty() {
            self.check_line(false);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(f) = &mut self.log {
            f.flush()?;
        }
        Ok(())
    }
}

/// The UART on the port bus.
pub struct SerialDevice(pub Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>);

impl SerialDevice {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        SerialDevice(Serial::new(IrqTrigger(irq), sink))
    }

    /// Feed host keystrokes to the guest; returns how many bytes the FIFO took.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        self.0.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.0.read(offset as u8);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            if let Err(e) = self.0.write(offset as u8, v) {
                log::debug!("serial: write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn detects_panic_lines_and_expect() {
        let (tx, rx) = channel();
        let re = Regex::new("login: $").unwrap();
        let mut s = ConsoleSink::new(false, None, Some(re), EventSink::new(tx));
        s.write_all(b"booting\r\nKernel panic - not syncing: VFS: Unable to mount root fs\r\n")
            .unwrap();
        match rx.try_recv().unwrap() {
            VmEvent::Crash(CrashReason::KernelPanic { line }) => assert!(line.contains("VFS")),
            e => panic!("unexpected {e:?}"),
        }
        s.write_all(b"host login: ").unwrap();
        assert_eq!(rx.try_recv().unwrap(), VmEvent::ExpectMatched);
        s.write_all(b"x\nhost login: ").unwrap();
        assert!(rx.try_recv().is_err(), "expect fires once");
    }

    #[test]
    fn uart_output_reaches_the_log() {
        let (tx, _rx) = channel();
        let path = std::env::temp_dir().join(format!("amivm-serial-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let mut dev = SerialDevice::new(
            EventFd::new(0).unwrap(),
            ConsoleSink::new(false, Some(f), None, EventSink::new(tx)),
        );
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
        dev.0.writer_mut().flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hi\n");
        let _ = std::fs::remove_file(path);
    }
}
