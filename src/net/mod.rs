//! Guest networks: the [`FrameBackend`] trait (the one seam between the virtio-net device and
//! whatever carries the guest's Ethernet frames), its backends, MAC assignment, and the
//! `--network` / `--publish` words.
//!
//! - [`stream`]: frames over a stream socket with a 4-byte big-endian length prefix (passt's and
//!   QEMU's `-netdev stream` framing), with bounded buffers and backpressure.
//! - [`passt`]: `--network user`: starts passt on one end of a socketpair.
//! - [`tap`]: `--network tap:NAME`: a Linux tap device (needs CAP_NET_ADMIN).
//! - [`NoNetwork`]: `--network none`: frames go nowhere.
//! - [`config`]: parsing `--network` and `--publish`, and the instance MAC.
//! - [`imds`]: the instance metadata service at 169.254.169.254, answered off the frame path.
//!
//! The VMM consumes a `Box<dyn FrameBackend>`; it never starts processes or opens devices.

pub mod config;
pub mod imds;
pub mod open;
pub mod passt;
pub mod stream;
pub mod tap;

pub use config::{mac_for_instance, NetworkSpec, Protocol, Publish};
use std::os::fd::RawFd;

/// Largest Ethernet frame carried, without the frame check sequence: 1500 bytes of payload
/// (the MTU offered to the guest), the 14-byte header and one 802.1Q tag (IEEE 802.3 clause 3,
/// 802.1Q 9.3): Linux's `VLAN_ETH_FRAME_LEN`.
pub const MAX_FRAME: usize = 1518;
/// The MTU offered to the guest (VIRTIO_NET_F_MTU) and to passt's DHCP (`--mtu`): Ethernet's.
pub const MTU: u16 = 1500;
/// Shortest frame accepted from the guest: an Ethernet header (destination, source, type).
pub const ETH_HEADER_LEN: usize = 14;

/// Errors of the network backends.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The backend's peer went away (passt exited, the tap device was removed).
    #[error("network backend closed: {0}")]
    Closed(String),
    /// An I/O error on the backend.
    #[error("network backend: {0}")]
    Io(#[source] std::io::Error),
    /// passt is not installed.
    #[error("passt is not installed: install the Debian package `passt` (apt-get install passt) or use --network none")]
    PasstMissing,
    /// passt could not be started.
    #[error("cannot start passt: {0}")]
    PasstStart(String),
    /// A tap device could not be opened.
    #[error("cannot open tap device {name}: {why}")]
    Tap { name: String, why: String },
    /// A published host port is already taken.
    #[error("--publish {spec}: host port {port}/{proto} is already in use ({why})")]
    PortInUse {
        spec: String,
        port: u16,
        proto: &'static str,
        why: String,
    },
    /// A `--network` or `--publish` value that does not parse.
    #[error("{0}")]
    Syntax(String),
}

/// What [`FrameBackend::send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The frame was taken (sent, or queued within the backend's fixed bound).
    Done,
    /// The backend cannot take it now: nothing was taken; retry when its fd is writable.
    WouldBlock,
}

/// A carrier of Ethernet frames (no virtio header).
pub trait FrameBackend: Send {
    /// Offer one frame (at most [`MAX_FRAME`] bytes). A backend may gather frames in a
    /// buffer of fixed size; the device calls [`FrameBackend::flush`] after each burst.
    fn send(&mut self, frame: &[u8]) -> Result<Sent, NetError>;
    /// Receive one frame into `buf` (at least [`MAX_FRAME`] bytes): `Ok(Some(len))`, or
    /// `Ok(None)` when none is waiting. Frames longer than `buf` are discarded and counted.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError>;
    /// Push out what earlier `send`s left queued: `Done` once nothing is pending, `WouldBlock`
    /// while some is (wait for the fd to be writable).
    fn flush(&mut self) -> Result<Sent, NetError> {
        Ok(Sent::Done)
    }
    /// The fd to watch for readability (frames to receive) and, after `WouldBlock`,
    /// writability; `None` for a backend without one.
    fn as_raw_fd(&self) -> Option<RawFd>;
    /// Frames received from the far side and discarded for being too long.
    fn dropped(&self) -> u64 {
        0
    }
    /// A short name for logs ("passt", "tap0", "none").
    fn name(&self) -> String;
}

/// `--network none`: the guest's frames are dropped, nothing ever arrives (the metadata
/// endpoint, which the device serves itself, still answers).
#[derive(Debug, Default)]
pub struct NoNetwork;

impl FrameBackend for NoNetwork {
    fn send(&mut self, _frame: &[u8]) -> Result<Sent, NetError> {
        Ok(Sent::Done)
    }
    fn recv(&mut self, _buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        Ok(None)
    }
    fn as_raw_fd(&self) -> Option<RawFd> {
        None
    }
    fn name(&self) -> String {
        "none".into()
    }
}
