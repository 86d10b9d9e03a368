//! The exit port: a guest writes one byte N to I/O port 0xf4 and amivm exits with status N.
//! The port and its width follow QEMU's `isa-debug-exit,iobase=0xf4,iosize=1`, so the same
//! test guest works on both (QEMU exits with `(N << 1) | 1`, amivm with N).

use super::bus::BusDevice;
use crate::vmm::events::{EventSink, VmEvent};

/// The exit port's I/O address.
pub const EXIT_PORT: u64 = 0xf4;
/// Width of the exit port in bytes.
pub const EXIT_PORT_SIZE: u64 = 1;

/// The exit-port device.
pub struct ExitPort {
    events: EventSink,
}

impl ExitPort {
    pub fn new(events: EventSink) -> Self {
        ExitPort { events }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.events.send(VmEvent::ExitPort(v));
        }
    }
}
