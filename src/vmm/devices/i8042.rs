//! A minimal i8042 keyboard controller: enough for Linux's i8042 driver to find a keyboard,
//! for the guest to reset the machine (command 0xFE), and for amivm to send Ctrl-Alt-Del
//! (how `amivm stop` asks a Linux guest to shut down). Register and command semantics from the
//! IBM PC/AT technical reference as documented in Linux drivers/input/serio/i8042.h.

use super::bus::BusDevice;
use crate::vmm::events::{EventSink, VmEvent};
use std::collections::VecDeque;
use vmm_sys_util::eventfd::EventFd;

/// Data port (port 0x60); the device is inserted at 0x60 with length 5 so 0x64 is offset 4.
pub const I8042_DATA_PORT: u64 = 0x60;
/// Span of the device on the port bus: 0x60..=0x64.
pub const I8042_PORT_SPAN: u64 = 5;
/// Offset of the status/command register (port 0x64).
const OFFSET_COMMAND: u64 = 4;
/// Status bit 0: output buffer full.
const STATUS_OBF: u8 = 0x01;
/// Status bit 2: system flag (self-test passed).
const STATUS_SYS: u8 = 0x04;
/// Status bit 3: last write was a command.
const STATUS_CMD: u8 = 0x08;
/// Controller commands (i8042.h).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPORT: u8 = 0xd0;
const CMD_WRITE_OUTPORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
/// Pulse the reset line: the "reboot=k" path.
pub const CMD_RESET_CPU: u8 = 0xfe;
/// Self-test passed.
const SELF_TEST_OK: u8 = 0x55;
/// Keyboard acknowledge.
const KBD_ACK: u8 = 0xfa;
/// Keyboard self-test passed (after a reset command 0xff).
const KBD_BAT_OK: u8 = 0xaa;
/// Keyboard command: reset.
const KBD_CMD_RESET: u8 = 0xff;
/// Keyboard command: get id (answers ACK, 0xab, 0x83 for an MF2 keyboard).
const KBD_CMD_GET_ID: u8 = 0xf2;
/// Controller configuration byte bit 0: keyboard interrupt enabled.
const CTR_KBD_INT: u8 = 0x01;
/// Default configuration byte: keyboard interrupt on, translation on, system flag.
const CTR_DEFAULT: u8 = 0x45;
/// Set-1 scancodes (as translated for the OS) for Ctrl, Alt, Delete, and their releases.
const CTRL_ALT_DEL: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
/// Output buffer limit: a stuck guest cannot make us grow without bound.
const MAX_BUFFER: usize = 64;

/// The i8042 controller.
pub struct I8042 {
    events: EventSink,
    kbd_irq: Option<EventFd>,
    buf: VecDeque<u8>,
    ctr: u8,
    status_cmd: bool,
    pending_cmd: Option<u8>,
}

impl I8042 {
    /// A controller that reports resets to `events` and raises IRQ 1 through `kbd_irq`.
    pub fn new(events: EventSink, kbd_irq: Option<EventFd>) -> Self {
        I8042 {
            events,
            kbd_irq,
            buf: VecDeque::new(),
            ctr: CTR_DEFAULT,
            status_cmd: false,
            pending_cmd: None,
        }
    }

    fn push(&mut self, b: u8) {
        if self.buf.len() < MAX_BUFFER {
            self.buf.push_back(b);
        }
        if self.ctr & CTR_KBD_INT != 0 {
            if let Some(irq) = &self.kbd_irq {
                let _ = irq.write(1);
            }
        }
    }

    /// Queue the Ctrl-Alt-Del key sequence (press and release).
    pub fn ctrl_alt_del(&mut self) {
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_SYS;
        if !self.buf.is_empty() {
            s |= STATUS_OBF;
        }
        if self.status_cmd {
            s |= STATUS_CMD;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.status_cmd = true;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPORT | CMD_WRITE_KBD_OUTBUF => {
                self.pending_cmd = Some(cmd)
            }
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST => self.push(0),
            CMD_READ_OUTPORT => self.push(0x01),
            CMD_KBD_DISABLE | CMD_KBD_ENABLE => {}
            CMD_RESET_CPU => self.events.send(VmEvent::Reset),
            other => log::debug!("i8042: ignoring controller command {other:#04x}"),
        }
    }

    fn data(&mut self, v: u8) {
        self.status_cmd = false;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.ctr = v,
            Some(CMD_WRITE_KBD_OUTBUF) => self.push(v),
            Some(_) => {}
            None => match v {
                KBD_CMD_RESET => {
                    self.push(KBD_ACK);
                    self.push(KBD_BAT_OK);
                }
                KBD_CMD_GET_ID => {
                    self.push(KBD_ACK);
                    self.push(0xab);
                    self.push(0x83);
                }
                _ => self.push(KBD_ACK),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.buf.pop_front().unwrap_or(0),
            OFFSET_COMMAND => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.data(v),
            OFFSET_COMMAND => self.command(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn reset_command_ends_the_vm() {
        let (tx, rx) = channel();
        let mut k = I8042::new(EventSink::new(tx), None);
        k.write(OFFSET_COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::Reset);
    }

    #[test]
    fn probe_sequence_and_ctrl_alt_del() {
        let (tx, _rx) = channel();
        let irq = EventFd::new(0).unwrap();
        let mut k = I8042::new(EventSink::new(tx), Some(irq.try_clone().unwrap()));
        let mut b = [0u8];
        k.write(OFFSET_COMMAND, &[CMD_SELF_TEST]);
        k.read(OFFSET_COMMAND, &mut b);
        assert_eq!(b[0] & STATUS_OBF, STATUS_OBF);
        k.read(0, &mut b);
        assert_eq!(b[0], SELF_TEST_OK);
        k.write(OFFSET_COMMAND, &[CMD_WRITE_CTR]);
        k.write(0, &[0x47]);
        k.write(OFFSET_COMMAND, &[CMD_READ_CTR]);
        k.read(0, &mut b);
        assert_eq!(b[0], 0x47);
        k.ctrl_alt_del();
        let mut seq = vec![];
        for _ in 0..8 {
            k.read(0, &mut b);
            seq.push(b[0]);
        }
        assert_eq!(seq, CTRL_ALT_DEL);
        k.read(OFFSET_COMMAND, &mut b);
        assert_eq!(b[0] & STATUS_OBF, 0);
        assert!(irq.read().unwrap() > 0, "keyboard interrupt raised");
    }
}
