//! The smoltcp device between the endpoint and the guest's frames: IP packets in (one at a
//! time, handed over by [`super::MetadataEndpoint::receive`]) and out (a bounded queue the
//! endpoint drains into frames).

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;

/// The IP MTU offered to the guest's TCP (Ethernet's 1500, RFC 894).
pub const MTU: usize = 1500;
/// The most packets waiting for the guest. When full, smoltcp keeps its data in the sockets'
/// buffers and sends it later (its transmit finds no token): the queue never grows past this.
pub const MAX_QUEUED_PACKETS: usize = 64;

/// Packets to and from the interface.
#[derive(Default)]
pub struct PacketQueue {
    /// The packet the guest just sent, if not consumed yet.
    pub rx: Option<Vec<u8>>,
    /// Packets for the guest, oldest first.
    pub tx: VecDeque<Vec<u8>>,
}

impl Device for PacketQueue {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.tx.len() >= MAX_QUEUED_PACKETS {
            return None;
        }
        let packet = self.rx.take()?;
        Some((
            RxToken { packet },
            TxToken {
                queue: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        (self.tx.len() < MAX_QUEUED_PACKETS).then_some(TxToken {
            queue: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(1);
        caps
    }
}

pub struct RxToken {
    packet: Vec<u8>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.packet)
    }
}

pub struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let r = f(&mut packet);
        self.queue.push_back(packet);
        r
    }
}
