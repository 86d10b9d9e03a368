//! Ethernet and ARP around the endpoint's IP stack: which guest frames belong to the metadata
//! service, the ARP replies for its address, and the Ethernet header of its packets. Pure.

use std::net::Ipv4Addr;

/// The metadata service's address (EC2 User Guide, "Instance metadata": 169.254.169.254).
pub const METADATA_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The MAC address the service answers ARP with and sends from: locally administered
/// (bit 1 of the first byte, IEEE 802 section 8.2.2), unicast, and spelling the address's
/// last two bytes (a9:fe:a9:fe = 169.254.169.254).
pub const METADATA_MAC: [u8; 6] = [0x06, 0x00, 0xa9, 0xfe, 0xa9, 0xfe];

/// An Ethernet II header's length (IEEE 802.3 section 3.1.1: destination, source, type).
pub const ETH_HEADER: usize = 14;
/// EtherType of IPv4 (IANA "IEEE 802 Numbers").
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// An ARP packet for IPv4 over Ethernet (RFC 826): 8 bytes of header, two (MAC, IPv4) pairs.
pub const ARP_LEN: usize = 28;
/// ARP hardware type Ethernet (RFC 826, IANA "ARP Parameters").
const ARP_HTYPE_ETHERNET: u16 = 1;
/// ARP operation: request.
const ARP_REQUEST: u16 = 1;
/// ARP operation: reply.
const ARP_REPLY: u16 = 2;
/// The smallest IPv4 header (RFC 791: IHL 5 words).
const IPV4_MIN_HEADER: usize = 20;
/// Where the IPv4 source and destination addresses are in the header (RFC 791).
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;

/// A guest frame, as far as the endpoint cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// An ARP request for the service's address: who asks.
    ArpRequest { mac: [u8; 6], ipv4: Ipv4Addr },
    /// An IPv4 packet to the service (the Ethernet payload), from `mac`.
    Ipv4 {
        mac: [u8; 6],
        src: Ipv4Addr,
        packet: &'a [u8],
    },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

/// What `frame` is to the metadata service; `None`: not for it.
pub fn classify(frame: &[u8]) -> Option<Frame<'_>> {
    let src_mac = mac_at(frame, 6)?;
    let payload = frame.get(ETH_HEADER..)?;
    match u16_at(frame, 12)? {
        ETHERTYPE_ARP => {
            let arp = payload.get(..ARP_LEN)?;
            let ok = u16_at(arp, 0)? == ARP_HTYPE_ETHERNET
                && u16_at(arp, 2)? == ETHERTYPE_IPV4
                && arp[4] == 6
                && arp[5] == 4
                && u16_at(arp, 6)? == ARP_REQUEST
                && ipv4_at(arp, 24)? == METADATA_IPV4;
            ok.then_some(Frame::ArpRequest {
                mac: mac_at(arp, 8)?,
                ipv4: ipv4_at(arp, 14)?,
            })
        }
        ETHERTYPE_IPV4 => {
            let ip = payload;
            if ip.len() < IPV4_MIN_HEADER
                || ip[0] >> 4 != 4
                || ipv4_at(ip, IPV4_DST)? != METADATA_IPV4
            {
                return None;
            }
            // The header's length (IHL words) and checksum must hold before the guest's
            // addresses are believed.
            let header = ip.get(..usize::from(ip[0] & 0xf) * 4)?;
            if header.len() < IPV4_MIN_HEADER || internet_checksum(header) != 0 {
                return None;
            }
            Some(Frame::Ipv4 {
                mac: src_mac,
                src: ipv4_at(ip, IPV4_SRC)?,
                packet: ip,
            })
        }
        _ => None,
    }
}

/// The Internet checksum (RFC 1071) of `data`: zero over a header whose checksum is right.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ARP reply to a request from (`mac`, `ipv4`): 42 bytes, unpadded.
pub fn arp_reply(mac: [u8; 6], ipv4: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER + ARP_LEN);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&METADATA_MAC);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&ARP_HTYPE_ETHERNET.to_be_bytes());
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&ARP_REPLY.to_be_bytes());
    f.extend_from_slice(&METADATA_MAC);
    f.extend_from_slice(&METADATA_IPV4.octets());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ipv4.octets());
    f
}

/// Write an Ethernet header for an IPv4 packet to `dst` into `out[..ETH_HEADER]`.
pub fn write_ipv4_header(out: &mut [u8], dst: [u8; 6]) {
    out[..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&METADATA_MAC);
    out[12..ETH_HEADER].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let mut f = arp_reply(GUEST_MAC, GUEST_IP);
        // Turn the reply around into a request from the guest for `target`.
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&GUEST_MAC);
        f[20..22].copy_from_slice(&ARP_REQUEST.to_be_bytes());
        f[22..28].copy_from_slice(&GUEST_MAC);
        f[28..32].copy_from_slice(&GUEST_IP.octets());
        f[32..38].copy_from_slice(&[0; 6]);
        f[38..42].copy_from_slice(&target.octets());
        f
    }

    #[test]
    fn answers_arp_for_the_service_only() {
        let req = arp_request(METADATA_IPV4);
        assert_eq!(
            classify(&req),
            Some(Frame::ArpRequest {
                mac: GUEST_MAC,
                ipv4: GUEST_IP
            })
        );
        assert_eq!(classify(&arp_request(Ipv4Addr::new(10, 0, 2, 2))), None);
        assert_eq!(classify(&req[..40]), None);
        let reply = arp_reply(GUEST_MAC, GUEST_IP);
        assert_eq!(reply.len(), 42);
        assert_eq!(&reply[..6], &GUEST_MAC);
        assert_eq!(&reply[22..28], &METADATA_MAC);
        assert_eq!(&reply[28..32], &METADATA_IPV4.octets());
        // A reply is not a request.
        assert_eq!(classify(&reply), None);
    }

    #[test]
    fn takes_ipv4_to_the_service_only() {
        let mut f = vec![0u8; ETH_HEADER + 40];
        f[6..12].copy_from_slice(&GUEST_MAC);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[14 + IPV4_SRC..14 + IPV4_SRC + 4].copy_from_slice(&GUEST_IP.octets());
        f[14 + IPV4_DST..14 + IPV4_DST + 4].copy_from_slice(&METADATA_IPV4.octets());
        assert_eq!(classify(&f), None, "bad header checksum");
        let sum = internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        match classify(&f) {
            Some(Frame::Ipv4 { mac, src, packet }) => {
                assert_eq!((mac, src, packet.len()), (GUEST_MAC, GUEST_IP, 40));
            }
            o => panic!("{o:?}"),
        }
        f[14] = 0x46; // a header longer than its checksum covered
        assert_eq!(classify(&f), None);
        f[14] = 0x65; // IPv6 version nibble
        assert_eq!(classify(&f), None);
        f[14] = 0x45;
        f[14 + IPV4_DST] = 8; // another destination
        assert_eq!(classify(&f), None);
        for n in 0..ETH_HEADER + IPV4_MIN_HEADER {
            assert_eq!(classify(&f[..n]), None);
        }
    }
}
