//! Frames over a stream socket, each preceded by its length as a 4-byte big-endian integer:
//! the framing of passt's `--fd` / `--socket` interface and of QEMU's `-netdev stream`
//! (passt's tap.c, `tap_send_frames_passt` / `tap_handler_passt`: "struct { uint32_t vnet_len;
//! char frame[] }" with `vnet_len` in network order).
//!
//! Memory is bounded: outgoing frames are gathered in one fixed-size buffer (so that a burst
//! costs one write(2), not one per frame) and pushed out by [`FrameBackend::flush`] or when it
//! is full; once it is full and the socket takes nothing, `send` answers [`Sent::WouldBlock`].
//! Incoming bytes go through one fixed-size buffer; an announced length over the caller's
//! buffer is skipped and counted.

use super::{FrameBackend, NetError, Sent, MAX_FRAME};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// Size of the length prefix.
pub const PREFIX_LEN: usize = 4;
/// Outgoing buffer: a burst of frames per write(2), bounded.
const OUT_BUF: usize = 64 * 1024;
/// Incoming buffer: room for many frames per read(2) (fewer system calls under load) while
/// staying a fixed, small allocation.
const IN_BUF: usize = 64 * 1024;

/// A [`FrameBackend`] over a connected, non-blocking stream socket.
pub struct StreamBackend {
    /// The socket as a plain file: read(2) and write(2), the calls the device thread's seccomp
    /// filter allows (a `UnixStream` reads with recvfrom(2)).
    sock: std::fs::File,
    name: String,
    /// Frames (with prefixes) not yet written, from `out_pos`; at most [`OUT_BUF`] bytes.
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    /// Bytes of an over-long incoming frame still to discard.
    skip: usize,
    dropped: u64,
}

impl StreamBackend {
    /// Wrap `sock` (set non-blocking here).
    pub fn new(sock: UnixStream, name: &str) -> Result<Self, NetError> {
        sock.set_nonblocking(true).map_err(NetError::Io)?;
        Ok(StreamBackend {
            sock: std::fs::File::from(std::os::fd::OwnedFd::from(sock)),
            name: name.to_string(),
            out: Vec::with_capacity(OUT_BUF),
            out_pos: 0,
            inbuf: vec![0u8; IN_BUF].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            skip: 0,
            dropped: 0,
        })
    }

    fn closed(&self, why: &str) -> NetError {
        NetError::Closed(format!("{}: {why}", self.name))
    }

    fn io_err(&self, e: std::io::Error) -> NetError {
        match e.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::NotConnected => {
                self.closed(&e.to_string())
            }
            _ => NetError::Io(e),
        }
    }

    /// Take the next complete frame out of the input buffer, if there is one.
    fn take_buffered(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let avail = self.in_end - self.in_start;
            if self.skip > 0 {
                let n = self.skip.min(avail);
                self.skip -= n;
                self.in_start += n;
                if self.skip > 0 {
                    return None;
                }
                continue;
            }
            if avail < PREFIX_LEN {
                return None;
            }
            let p = &self.inbuf[self.in_start..self.in_start + PREFIX_LEN];
            let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            if len > buf.len() || len > IN_BUF - PREFIX_LEN {
                self.dropped += 1;
                self.in_start += PREFIX_LEN;
                self.skip = len;
                continue;
            }
            if avail < PREFIX_LEN + len {
                return None;
            }
            let from = self.in_start + PREFIX_LEN;
            buf[..len].copy_from_slice(&self.inbuf[from..from + len]);
            self.in_start = from + len;
            return Some(len);
        }
    }
}

impl FrameBackend for StreamBackend {
    fn send(&mut self, frame: &[u8]) -> Result<Sent, NetError> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l as usize <= MAX_FRAME)
            .ok_or_else(|| NetError::Io(std::io::Error::other("frame too long")))?;
        let need = PREFIX_LEN + frame.len();
        if self.out.len() + need > OUT_BUF {
            // Full: push out what is queued, and take the frame only if room was made.
            if self.flush()? == Sent::WouldBlock && self.out.len() + need > OUT_BUF {
                return Ok(Sent::WouldBlock);
            }
        }
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(frame);
        Ok(Sent::Done)
    }

    fn flush(&mut self) -> Result<Sent, NetError> {
        let mut result = Ok(Sent::Done);
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    result = Err(self.closed("wrote nothing"));
                    break;
                }
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    result = Ok(Sent::WouldBlock);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(self.io_err(e));
                    break;
                }
            }
        }
        // Keep only the unwritten tail, at the front.
        self.out.drain(..self.out_pos);
        self.out_pos = 0;
        result
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        loop {
            if let Some(n) = self.take_buffered(buf) {
                return Ok(Some(n));
            }
            // Move the partial frame to the front, then read more behind it.
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
            match self.sock.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => return Err(self.closed("end of stream")),
                Ok(n) => self.in_end += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
    }

    fn as_raw_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (StreamBackend, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (StreamBackend::new(a, "test").unwrap(), b)
    }

    #[test]
    fn frames_carry_a_big_endian_length() {
        let (mut be, mut peer) = pair();
        assert_eq!(be.send(&[1, 2, 3]).unwrap(), Sent::Done);
        assert_eq!(be.flush().unwrap(), Sent::Done);
        let mut got = [0u8; 7];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, [0, 0, 0, 3, 1, 2, 3]);
        // Two frames and half a third in one write; then the rest.
        peer.write_all(&[0, 0, 0, 2, 9, 8, 0, 0, 0, 1, 7, 0, 0])
            .unwrap();
        let mut buf = [0u8; MAX_FRAME];
        assert_eq!(be.recv(&mut buf).unwrap(), Some(2));
        assert_eq!(&buf[..2], &[9, 8]);
        assert_eq!(be.recv(&mut buf).unwrap(), Some(1));
        assert_eq!(be.recv(&mut buf).unwrap(), None);
        peer.write_all(&[0, 1, 5]).unwrap();
        assert_eq!(be.recv(&mut buf).unwrap(), Some(1));
        assert_eq!(buf[0], 5);
    }

    #[test]
    fn oversized_incoming_frames_are_skipped_and_counted() {
        let (mut be, mut peer) = pair();
        let big = 100_000u32;
        let mut msg = big.to_be_bytes().to_vec();
        msg.extend(std::iter::repeat_n(0xaa, big as usize));
        msg.extend([0, 0, 0, 1, 0x55]);
        let writer = std::thread::spawn(move || peer.write_all(&msg).map(|_| peer));
        let mut buf = [0u8; MAX_FRAME];
        let got = loop {
            if let Some(n) = be.recv(&mut buf).unwrap() {
                break n;
            }
        };
        assert_eq!((got, buf[0]), (1, 0x55));
        assert_eq!(be.dropped(), 1);
        drop(writer.join().unwrap().unwrap());
        assert!(matches!(be.recv(&mut buf), Err(NetError::Closed(_))));
    }

    #[test]
    fn a_full_socket_pushes_back_within_a_fixed_buffer() {
        let (mut be, mut peer) = pair();
        let frame = vec![0x42u8; MAX_FRAME];
        let mut taken = 0;
        while be.send(&frame).unwrap() == Sent::Done {
            taken += 1;
            assert!(taken < 100_000, "never pushed back");
        }
        assert!(be.out.len() <= OUT_BUF);
        // Drain the peer: everything taken arrives intact, and sending works again.
        peer.set_nonblocking(true).unwrap();
        let mut seen = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let want = taken * (PREFIX_LEN + MAX_FRAME);
        while seen.len() < want {
            match peer.read(&mut chunk) {
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert_eq!(be.flush().unwrap(), Sent::Done);
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(seen.len(), want);
        for f in seen.chunks(PREFIX_LEN + MAX_FRAME) {
            assert_eq!(&f[..4], &(MAX_FRAME as u32).to_be_bytes());
            assert!(f[4..].iter().all(|&b| b == 0x42));
        }
        assert_eq!(be.send(&frame).unwrap(), Sent::Done);
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (mut be, peer) = pair();
        drop(peer);
        let mut buf = [0u8; MAX_FRAME];
        assert!(matches!(be.recv(&mut buf), Err(NetError::Closed(_))));
        assert_eq!(be.send(&[0u8; 60]).unwrap(), Sent::Done);
        assert!(matches!(be.flush(), Err(NetError::Closed(_))));
    }
}
