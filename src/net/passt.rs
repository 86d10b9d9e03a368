//! `--network user`: rootless user-mode networking through passt (https://passt.top, Debian
//! package `passt`). amivm creates a socketpair, hands one end to passt (`--fd`) and keeps the
//! other as a [`StreamBackend`]; passt gives the guest DHCP, DNS and outbound TCP/UDP through
//! the host's sockets, and forwards published ports (`-t` / `-u`).

use super::stream::StreamBackend;
use super::{NetError, Protocol, Publish, MTU};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The program started (looked up in `PATH`).
pub const PASST: &str = "passt";

/// The permissions of passt's log file: the user's only.
const LOG_MODE: u32 = 0o600;

/// How to start passt.
#[derive(Debug, Clone, Default)]
pub struct PasstOptions {
    /// Ports forwarded from the host to the guest.
    pub publish: Vec<Publish>,
    /// Where passt's own messages go (its stderr); discarded when absent.
    pub log: Option<PathBuf>,
}

/// A running passt and the backend connected to it.
pub struct Passt {
    pub backend: StreamBackend,
    pub child: Child,
}

/// Check that every published host port is free now, so that a taken one is one clear error
/// before the guest boots (passt would only log it).
pub fn check_ports(publish: &[Publish]) -> Result<(), NetError> {
    for p in publish {
        let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let res = match p.protocol {
            Protocol::Tcp => TcpListener::bind((ip, p.host_port)).map(drop),
            Protocol::Udp => UdpSocket::bind((ip, p.host_port)).map(drop),
        };
        res.map_err(|e| NetError::PortInUse {
            spec: p.to_string(),
            port: p.host_port,
            proto: p.protocol.as_str(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// passt's arguments for `fd` (the child's end of the socketpair): foreground, quiet, the
/// socket, the Ethernet MTU for DHCP (its default, 65520, is more than the device carries),
/// and one `-t`/`-u` per forward.
pub fn passt_args(fd: i32, publish: &[Publish]) -> Vec<String> {
    let mut args = vec![
        "--foreground".to_string(),
        "--quiet".to_string(),
        "--fd".to_string(),
        fd.to_string(),
        "--mtu".to_string(),
        MTU.to_string(),
    ];
    for p in publish {
        let (flag, spec) = p.passt_arg();
        args.push(flag.to_string());
        args.push(spec);
    }
    args
}

/// Start passt (after [`check_ports`]).
pub fn start(opts: &PasstOptions) -> Result<Passt, NetError> {
    check_ports(&opts.publish)?;
    let (ours, theirs) = UnixStream::pair().map_err(NetError::Io)?;
    let fd = theirs.as_raw_fd();
    let stderr = match &opts.log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                // Private to the user, whatever the umask (as the instance's other files).
                .mode(LOG_MODE)
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| NetError::PasstStart(format!("{}: {e}", p.display())))?,
        ),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(PASST);
    cmd.args(passt_args(fd, &opts.publish))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (fcntl, prctl) on the fd the parent just created and still owns.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // passt ends with amivm even if amivm is killed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NetError::PasstMissing
        } else {
            NetError::PasstStart(e.to_string())
        }
    })?;
    drop(theirs);
    Ok(Passt {
        backend: StreamBackend::new(ours, "passt")?,
        child,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let p: Vec<Publish> = vec![
            "2222:22".parse().unwrap(),
            "127.0.0.1:53:53/udp".parse().unwrap(),
        ];
        assert_eq!(
            passt_args(7, &p).join(" "),
            "--foreground --quiet --fd 7 --mtu 1500 -t 2222:22 -u 127.0.0.1/53:53"
        );
    }

    #[test]
    fn a_taken_port_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p: Publish = format!("127.0.0.1:{port}:22").parse().unwrap();
        let e = check_ports(&[p]).unwrap_err();
        assert!(e.to_string().contains("already in use"), "{e}");
        drop(l);
        check_ports(&[format!("127.0.0.1:{port}:22").parse().unwrap()]).unwrap();
    }
}
