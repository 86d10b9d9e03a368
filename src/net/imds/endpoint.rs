//! [`MetadataEndpoint`]: the metadata service on the guest's network, fed the guest's frames
//! for 169.254.169.254 and giving back its own, with no socket on the host.
//!
//! ARP and Ethernet are done here ([`super::frame`]); IPv4 and TCP by smoltcp on an IP-medium
//! interface with a fixed set of [`MAX_CONNECTIONS`] listening sockets. Each connection carries
//! one request ([`super::http`]), answered by [`super::service`] and then closed.

use super::config::MetadataConfig;
use super::device::PacketQueue;
use super::frame::{self, Frame, ETH_HEADER, METADATA_IPV4};
use super::http::{self, Parse, Response};
use super::service;
use super::token::TokenKey;
use super::tree::Guest;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The metadata service's TCP port (HTTP).
pub const PORT: u16 = 80;
/// Connections served at once; a connection beyond them is refused (TCP RST), as a listen
/// backlog would. cloud-init and the AWS tools open one at a time.
pub const MAX_CONNECTIONS: usize = 16;
/// Receive buffer per connection: one request head ([`http::MAX_HEAD_BYTES`]) and some room.
const RX_BUFFER: usize = http::MAX_HEAD_BYTES + 1024;
/// Send buffer per connection; a longer answer (user data: 16 KiB) is fed in as it drains.
const TX_BUFFER: usize = 16 * 1024;
/// A connection that has not been answered and closed this long after it opened is aborted
/// (a slow or silent client cannot hold a socket). AWS's SDKs time a metadata request out
/// after 1 s; 10 s leaves slow guests (an emulated CPU) room.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// ARP replies waiting to be sent; more requests are dropped until they drain (a guest asks
/// again).
const MAX_QUEUED_ARP: usize = 4;
/// The address prefix of the service's interface: IPv4 link-local (RFC 3927).
const LINK_LOCAL_PREFIX: u8 = 16;
/// The "router" of the default route: smoltcp answers only addresses it can route, and the
/// guest's address is not link-local. On an IP-medium interface the router's address is never
/// looked up (no ARP): every packet goes to the one peer, the guest. Any link-local address
/// other than the service's would do.
const DEFAULT_ROUTER: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

/// One connection's progress.
#[derive(Default)]
struct Conn {
    /// When the connection opened (first seen active).
    opened: Option<Instant>,
    /// The request bytes so far.
    request: Vec<u8>,
    /// The answer, and how much of it the socket has taken.
    answer: Option<(Vec<u8>, usize)>,
}

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Frames taken by [`MetadataEndpoint::receive`].
    pub frames_in: u64,
    /// Frames given by [`MetadataEndpoint::transmit`].
    pub frames_out: u64,
    /// Frames dropped: not for the service, too large, or too large for the caller's buffer.
    pub dropped: u64,
    /// Requests answered.
    pub requests: u64,
    /// Connections aborted for idling past [`IDLE_TIMEOUT`].
    pub timeouts: u64,
}

/// The instance metadata service for one guest.
pub struct MetadataEndpoint {
    config: MetadataConfig,
    key: TokenKey,
    iface: Interface,
    device: PacketQueue,
    sockets: SocketSet<'static>,
    conns: Vec<(SocketHandle, Conn)>,
    arp: VecDeque<Vec<u8>>,
    guest: Guest,
    /// The time origin of tokens and smoltcp's clock.
    epoch: Instant,
    /// When [`Self::poll_at`] says to call again (absolute), computed after each call.
    next: Option<Instant>,
    stats: Stats,
}

impl MetadataEndpoint {
    /// A service answering with `config`. `guest_mac`: the guest NIC's address, when known
    /// (frames are sent to it until the guest's own frames say otherwise).
    pub fn new(config: MetadataConfig, guest_mac: Option<[u8; 6]>) -> MetadataEndpoint {
        Self::with_key(config, guest_mac, TokenKey::random(), Instant::now())
    }

    /// As [`Self::new`], with a given token key and time origin (tests, fuzzing).
    pub fn with_key(
        config: MetadataConfig,
        guest_mac: Option<[u8; 6]>,
        key: TokenKey,
        epoch: Instant,
    ) -> MetadataEndpoint {
        let mut device = PacketQueue::default();
        let iface_config = Config::new(HardwareAddress::Ip);
        let mut iface = Interface::new(iface_config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // One address on an empty list: cannot exceed the list's capacity.
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(METADATA_IPV4),
                LINK_LOCAL_PREFIX,
            ));
        });
        // An empty route table has room for one route: this cannot fail.
        let _ = iface.routes_mut().add_default_ipv4_route(DEFAULT_ROUTER);
        let mut sockets = SocketSet::new(Vec::with_capacity(MAX_CONNECTIONS));
        let conns = (0..MAX_CONNECTIONS)
            .map(|_| {
                let socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
                );
                let h = sockets.add(socket);
                listen(sockets.get_mut::<tcp::Socket>(h));
                (h, Conn::default())
            })
            .collect();
        MetadataEndpoint {
            guest: Guest {
                ipv4: None,
                mac: guest_mac.or(config.mac),
            },
            config,
            key,
            iface,
            device,
            sockets,
            conns,
            arp: VecDeque::new(),
            epoch,
            next: None,
            stats: Stats::default(),
        }
    }

    /// Whether `frame` (guest to host) is for the metadata service: an ARP request for
    /// 169.254.169.254, or an IPv4 packet to it. Such frames go to [`Self::receive`], not to
    /// the network backend.
    pub fn accepts(frame: &[u8]) -> bool {
        frame::classify(frame).is_some()
    }

    /// Take one guest-to-host frame (one that [`Self::accepts`]; others are dropped).
    pub fn receive(&mut self, now: Instant, frame: &[u8]) {
        self.stats.frames_in += 1;
        match frame::classify(frame) {
            Some(Frame::ArpRequest { mac, ipv4 }) => {
                if self.arp.len() < MAX_QUEUED_ARP {
                    self.arp.push_back(frame::arp_reply(mac, ipv4));
                } else {
                    self.stats.dropped += 1;
                }
            }
            Some(Frame::Ipv4 { mac, src, packet }) if packet.len() <= super::device::MTU => {
                self.guest.mac = Some(mac);
                if !src.is_unspecified() && !src.is_broadcast() && !src.is_multicast() {
                    self.guest.ipv4 = Some(src);
                }
                self.device.rx = Some(packet.to_vec());
                self.service(now);
            }
            _ => self.stats.dropped += 1,
        }
        self.device.rx = None;
        self.plan(now);
    }

    /// The next host-to-guest frame, written to `out`; its length. A frame longer than `out`
    /// is dropped (counted) and the next one tried.
    pub fn transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.service(now);
        let frame = loop {
            if let Some(arp) = self.arp.pop_front() {
                match out.get_mut(..arp.len()) {
                    Some(dst) => {
                        dst.copy_from_slice(&arp);
                        break Some(arp.len());
                    }
                    None => self.stats.dropped += 1,
                }
                continue;
            }
            let Some(packet) = self.device.tx.pop_front() else {
                break None;
            };
            let len = ETH_HEADER + packet.len();
            match (self.guest.mac, out.get_mut(..len)) {
                (Some(mac), Some(dst)) => {
                    frame::write_ipv4_header(dst, mac);
                    dst[ETH_HEADER..].copy_from_slice(&packet);
                    break Some(len);
                }
                _ => self.stats.dropped += 1,
            }
        };
        if frame.is_some() {
            self.stats.frames_out += 1;
        }
        self.plan(now);
        frame
    }

    /// How long until the endpoint needs [`Self::transmit`] again for its timers (TCP
    /// retransmissions, idle connections); zero when frames are waiting now, `None` when
    /// nothing is pending.
    pub fn poll_at(&self, now: Instant) -> Option<Duration> {
        if !self.arp.is_empty() || !self.device.tx.is_empty() {
            return Some(Duration::ZERO);
        }
        self.next.map(|t| t.saturating_duration_since(now))
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// What the endpoint learnt of the guest from its frames.
    pub fn guest(&self) -> Guest {
        self.guest
    }

    fn since_epoch(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = i64::try_from(self.since_epoch(now).as_micros()).unwrap_or(i64::MAX);
        smoltcp::time::Instant::from_micros(micros)
    }

    /// Run the stack and the connections until nothing changes.
    fn service(&mut self, now: Instant) {
        let t = self.smol_now(now);
        self.iface.poll(t, &mut self.device, &mut self.sockets);
        self.serve_connections(now);
        self.iface.poll(t, &mut self.device, &mut self.sockets);
    }

    fn serve_connections(&mut self, now: Instant) {
        let since = self.since_epoch(now);
        for (h, conn) in &mut self.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(*h);
            if !socket.is_open() {
                // Closed (done, reset or timed out): listen again.
                *conn = Conn::default();
                listen(socket);
                continue;
            }
            if socket.is_listening() {
                continue;
            }
            let opened = *conn.opened.get_or_insert(now);
            if now.saturating_duration_since(opened) >= IDLE_TIMEOUT {
                socket.abort();
                *conn = Conn::default();
                self.stats.timeouts += 1;
                continue;
            }
            if conn.answer.is_none() {
                read_request(socket, conn);
                let parsed = http::parse(&conn.request);
                let reply = match parsed {
                    // Still to come (a handshake not finished yet cannot receive either).
                    Parse::Incomplete
                        if socket.may_recv() || socket.state() == tcp::State::SynReceived =>
                    {
                        None
                    }
                    // The client closed its side before a whole head.
                    Parse::Incomplete => {
                        socket.close();
                        continue;
                    }
                    Parse::Bad(status) => Some(Response::error(status).into()),
                    Parse::Done(req) => Some(service::handle(
                        &self.config,
                        &self.key,
                        &req,
                        since,
                        self.guest,
                    )),
                };
                if let Some(reply) = reply {
                    self.stats.requests += 1;
                    if let Some(hops) = reply.hop_limit {
                        socket.set_hop_limit(Some(hops));
                    }
                    conn.answer = Some((reply.response.to_bytes(), 0));
                    conn.request = Vec::new();
                }
            }
            if let Some((bytes, sent)) = &mut conn.answer {
                if *sent < bytes.len() && socket.can_send() {
                    *sent += socket.send_slice(&bytes[*sent..]).unwrap_or(0);
                }
                if *sent >= bytes.len() {
                    socket.close();
                }
            }
        }
    }

    /// Work out when the endpoint must run again.
    fn plan(&mut self, now: Instant) {
        let t = self.smol_now(now);
        let stack = self.iface.poll_at(t, &self.sockets).map(|at| {
            if at <= t {
                now
            } else {
                now + Duration::from_micros((at - t).total_micros())
            }
        });
        let idle = self
            .conns
            .iter()
            .filter_map(|(_, c)| c.opened)
            .map(|o| o + IDLE_TIMEOUT)
            .min();
        self.next = match (stack, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Put a socket back to listening on [`PORT`], its options reset. (No smoltcp timeout: the
/// whole connection, retransmissions included, is bounded by [`IDLE_TIMEOUT`].)
fn listen(socket: &mut tcp::Socket) {
    socket.set_hop_limit(None);
    // Listening on a closed socket with a non-zero port cannot fail.
    let _ = socket.listen(PORT);
}

/// Move what the socket has received into the connection's request, up to one head's limit
/// (the parser then refuses it as too large).
fn read_request(socket: &mut tcp::Socket, conn: &mut Conn) {
    let mut buf = [0u8; 1024];
    while socket.can_recv() && conn.request.len() < http::MAX_HEAD_BYTES + 4 {
        let room = (http::MAX_HEAD_BYTES + 4 - conn.request.len()).min(buf.len());
        match socket.recv_slice(&mut buf[..room]) {
            Ok(0) | Err(_) => break,
            Ok(n) => conn.request.extend_from_slice(&buf[..n]),
        }
    }
}
