//! A guest for the metadata endpoint, in process: a smoltcp Ethernet interface (10.0.2.15/24,
//! default route via 10.0.2.2, as passt and slirp give) wired to a [`MetadataEndpoint`] the
//! way the virtio-net device wires it: guest frames the endpoint accepts go to it, ARP for the
//! gateway is answered here (playing the backend), everything else is dropped; the endpoint's
//! frames go to the guest. Time is simulated.

#![allow(dead_code)]

use amivm::net::imds::{MetadataConfig, MetadataEndpoint};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const GATEWAY_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
/// Simulated time per step.
pub const STEP: Duration = Duration::from_millis(1);

#[derive(Default)]
pub struct Frames {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Frames {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// The guest, the wire and the endpoint.
pub struct Wire {
    pub endpoint: MetadataEndpoint,
    pub iface: Interface,
    pub dev: Frames,
    pub sockets: SocketSet<'static>,
    pub start: Instant,
    pub now: Instant,
    /// The IPv4 TTL of each TCP segment with data the endpoint sent.
    pub data_ttls: Vec<u8>,
    next_port: u16,
}

impl Wire {
    pub fn new(config: MetadataConfig) -> Wire {
        let start = Instant::now();
        let mut dev = Frames::default();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC))),
            &mut dev,
            smoltcp::time::Instant::ZERO,
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 24)).unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .unwrap();
        Wire {
            endpoint: MetadataEndpoint::new(config, None),
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            start,
            now: start,
            data_ttls: Vec::new(),
            next_port: 40000,
        }
    }

    fn smol_now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros((self.now - self.start).as_micros() as i64)
    }

    /// Send a raw frame from the guest's side of the wire.
    pub fn inject(&mut self, frame: &[u8]) {
        self.route_guest_frame(frame.to_vec());
    }

    fn route_guest_frame(&mut self, f: Vec<u8>) {
        if MetadataEndpoint::accepts(&f) {
            self.endpoint.receive(self.now, &f);
        } else if let Some(reply) = gateway_arp_reply(&f) {
            self.dev.rx.push_back(reply);
        }
    }

    /// One step of simulated time: the guest's stack, the wire both ways.
    pub fn step(&mut self) {
        self.now += STEP;
        let t = self.smol_now();
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        while let Some(f) = self.dev.tx.pop_front() {
            self.route_guest_frame(f);
        }
        let mut buf = [0u8; 1514];
        while let Some(n) = self.endpoint.transmit(self.now, &mut buf) {
            let f = buf[..n].to_vec();
            if f[12..14] == [8, 0] {
                assert_eq!(&f[..6], &GUEST_MAC, "IPv4 frames go to the guest's MAC");
            }
            // IPv4 with TCP payload: note the TTL.
            if f.len() > 14 + 20 + 20 && f[12..14] == [8, 0] {
                let ihl = usize::from(f[14] & 0xf) * 4;
                let tcp_hdr = usize::from(f[14 + ihl + 12] >> 4) * 4;
                let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
                if total > ihl + tcp_hdr {
                    self.data_ttls.push(f[14 + 8]);
                }
            }
            self.dev.rx.push_back(f);
        }
        let t = self.smol_now();
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
    }

    /// Advance simulated time by `d` without traffic, then step.
    pub fn idle(&mut self, d: Duration) {
        self.now += d;
        self.step();
    }

    /// Open a connection to 169.254.169.254:80 (not yet established).
    pub fn connect(&mut self) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        );
        self.next_port += 1;
        s.connect(
            self.iface.context(),
            (IpAddress::v4(169, 254, 169, 254), 80),
            self.next_port,
        )
        .unwrap();
        self.sockets.add(s)
    }

    pub fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Step until `done` or `max` steps; whether it became true.
    pub fn run_until(&mut self, max: usize, mut done: impl FnMut(&mut Wire) -> bool) -> bool {
        for _ in 0..max {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Send `request` on `h` once established, read until the server closes; the bytes read.
    pub fn exchange(&mut self, h: SocketHandle, request: &[u8]) -> Vec<u8> {
        let mut sent = 0;
        let mut got = Vec::new();
        for _ in 0..20_000 {
            let s = self.socket(h);
            if s.can_send() && sent < request.len() {
                sent += s.send_slice(&request[sent..]).unwrap();
            }
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if !s.may_recv() && s.state() != tcp::State::SynSent && sent > 0 {
                s.close();
                break;
            }
            if !s.is_open() {
                break;
            }
            self.step();
        }
        for _ in 0..50 {
            self.step();
        }
        got
    }

    /// One request on a new connection; the response as text.
    pub fn request(&mut self, request: &str) -> String {
        let h = self.connect();
        let got = self.exchange(h, request.as_bytes());
        self.sockets.remove(h);
        String::from_utf8_lossy(&got).into_owned()
    }

    /// `GET path` with optional token; (status, body).
    pub fn get(&mut self, path: &str, token: Option<&str>) -> (u16, String) {
        let t = token
            .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
            .unwrap_or_default();
        split(&self.request(&format!(
            "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{t}\r\n"
        )))
    }

    /// A token for `ttl` seconds.
    pub fn token(&mut self, ttl: u32) -> String {
        let (status, body) = split(&self.request(&format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             X-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n\r\n"
        )));
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// (status, body) of a response.
pub fn split(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The backend's answer to the guest's ARP request for the gateway.
fn gateway_arp_reply(f: &[u8]) -> Option<Vec<u8>> {
    if f.len() < 42
        || f[12..14] != [8, 6]
        || f[20..22] != [0, 1]
        || f[38..42] != GATEWAY_IP.octets()
    {
        return None;
    }
    let mut r = Vec::with_capacity(42);
    r.extend_from_slice(&f[22..28]);
    r.extend_from_slice(&GATEWAY_MAC);
    r.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 2]);
    r.extend_from_slice(&GATEWAY_MAC);
    r.extend_from_slice(&GATEWAY_IP.octets());
    r.extend_from_slice(&f[22..32]);
    Some(r)
}
