//! `--network tap:NAME`: a Linux tap device (drivers/net/tun.c), opened or created through
//! `/dev/net/tun` with `TUNSETIFF`. Needs CAP_NET_ADMIN unless the device already exists and is
//! owned by the user. One read(2) or write(2) carries one frame.

use super::{FrameBackend, NetError, Sent};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The tun/tap control device.
const TUN_DEVICE: &str = "/dev/net/tun";
/// `TUNSETIFF` = `_IOW('T', 202, int)` (linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `IFF_TAP`: an Ethernet device (linux/if_tun.h).
const IFF_TAP: libc::c_short = 0x0002;
/// `IFF_NO_PI`: no packet-information header before each frame (linux/if_tun.h).
const IFF_NO_PI: libc::c_short = 0x1000;
/// Scratch for one read: the largest frame a tap can hand over (64 KiB, its MTU limit), so a
/// frame longer than the caller's buffer is recognised and dropped rather than cut short.
const READ_BUF: usize = 64 * 1024;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (linux/if.h).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A tap device as a [`FrameBackend`].
pub struct TapBackend {
    file: File,
    name: String,
    scratch: Box<[u8]>,
    dropped: u64,
}

impl TapBackend {
    /// Attach to (or create) tap device `name`.
    pub fn open(name: &str) -> Result<Self, NetError> {
        let err = |why: String| NetError::Tap {
            name: name.to_string(),
            why,
        };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(err("name too long".into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|e| err(format!("{TUN_DEVICE}: {e}")))?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes, matched by `IfReq`) from a valid,
        // live pointer, and writes the chosen name back into it; the fd is our open tun device.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                " (needs CAP_NET_ADMIN, or a tap device created for this user: ip tuntap add NAME mode tap user $USER)"
            } else {
                ""
            };
            return Err(err(format!("TUNSETIFF: {e}{hint}")));
        }
        Ok(TapBackend {
            file,
            name: name.to_string(),
            scratch: vec![0u8; READ_BUF].into_boxed_slice(),
            dropped: 0,
        })
    }

    fn io_err(&self, e: std::io::Error) -> NetError {
        match e.raw_os_error() {
            Some(libc::EBADFD) | Some(libc::EIO) | Some(libc::ENXIO) => {
                NetError::Closed(format!("{}: {e}", self.name))
            }
            _ => NetError::Io(e),
        }
    }
}

impl FrameBackend for TapBackend {
    fn send(&mut self, frame: &[u8]) -> Result<Sent, NetError> {
        match self.file.write(frame) {
            Ok(_) => Ok(Sent::Done),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Sent::WouldBlock),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Sent::WouldBlock),
            Err(e) => Err(self.io_err(e)),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        loop {
            match self.file.read(&mut self.scratch) {
                Ok(n) if n <= buf.len() => {
                    buf[..n].copy_from_slice(&self.scratch[..n]);
                    return Ok(Some(n));
                }
                Ok(_) => self.dropped += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
    }

    fn as_raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
