//! `amivm ssh`: the `ssh` command line that logs in to an instance through the host port
//! forwarded to its SSH port, with its key pair's private key and its image's login user.
//! Pure: it only reads the instance record; the CLI runs the command.

use super::record::Instance;
use super::state::InstanceState;
use super::{InstanceError, Result};
use crate::net::{Protocol, Publish};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The guest port sshd listens on (IANA "ssh", RFC 4253 section 4.1).
pub const SSH_PORT: u16 = 22;

/// The file in the instance's directory that holds the host keys `ssh` saw for it: per
/// instance, so a port reused by another instance never trips ssh's host-key check, and gone
/// with the instance.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// What the user asked of `amivm ssh`, beside the instance.
#[derive(Debug, Clone, Default)]
pub struct SshRequest {
    /// `--user`: overrides the image's login user.
    pub user: Option<String>,
    /// `-i`: overrides the key pair's recorded private key file.
    pub identity: Option<PathBuf>,
    /// The key pair's recorded private key file ([`crate::store::KeyPair::private_key_file`]).
    pub key_pair_file: Option<PathBuf>,
    /// Further arguments for ssh after the host: options, then the remote command.
    pub args: Vec<OsString>,
}

/// The host port forwarded to the instance's TCP port `guest_port`, and the address to reach it
/// at (loopback when the forward listens on every address).
pub fn forwarded(publish: &[Publish], guest_port: u16) -> Option<(IpAddr, u16)> {
    publish
        .iter()
        .find(|p| p.guest_port == guest_port && p.protocol == Protocol::Tcp)
        .map(|p| {
            let ip = p
                .host_ip
                .filter(|ip| !ip.is_unspecified())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            (ip, p.host_port)
        })
}

/// The arguments for `ssh` (without the program name) to log in to `inst`;
/// `known_hosts` is the instance's own known-hosts file.
pub fn ssh_args(inst: &Instance, req: &SshRequest, known_hosts: &Path) -> Result<Vec<OsString>> {
    let id = &inst.instance_id;
    if inst.state != InstanceState::Running {
        return Err(InstanceError::WrongState {
            id: id.clone(),
            state: inst.state,
            why: "only a running instance can be reached over ssh (amivm start it first)".into(),
        });
    }
    let user = req.user.as_deref().or_else(|| inst.image.login_user());
    if let Some(u) = user {
        crate::store::login_user::validate_user_name(u)?;
    }
    let (ip, port) = forwarded(&inst.publish, SSH_PORT).ok_or_else(|| {
        InstanceError::Invalid(format!(
            "instance {id} has no host port forwarded to its port {SSH_PORT}: launch it with \
             --publish HOSTPORT:{SSH_PORT} (--network user)"
        ))
    })?;
    // The host key is new for every instance: accept it the first time, check it after.
    let mut known = OsString::from("UserKnownHostsFile=");
    known.push(known_hosts);
    let mut a: Vec<OsString> = vec![
        "-o".into(),
        "StrictHostKeyChecking=accept-new".into(),
        "-o".into(),
        known,
        "-o".into(),
        format!("HostKeyAlias={id}").into(),
        "-p".into(),
        port.to_string().into(),
    ];
    if let Some(key) = req.identity.as_ref().or(req.key_pair_file.as_ref()) {
        a.extend(["-i".into(), key.clone().into_os_string()]);
        a.extend(["-o".into(), "IdentitiesOnly=yes".into()]);
    }
    if let Some(u) = user {
        a.extend(["-l".into(), u.into()]);
    }
    a.push(ip.to_string().into());
    a.extend(req.args.iter().cloned());
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(s: &str) -> Publish {
        s.parse().unwrap()
    }

    #[test]
    fn the_ssh_forward_is_found() {
        let p = [
            publish("8080:80"),
            publish("2222:22/udp"),
            publish("2200:22"),
        ];
        assert_eq!(
            forwarded(&p, 22),
            Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 2200))
        );
        assert_eq!(forwarded(&p[..2], 22), None);
        let p = [publish("0.0.0.0:2222:22")];
        assert_eq!(
            forwarded(&p, 22),
            Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 2222))
        );
        let p = [publish("127.0.0.2:2222:22")];
        assert_eq!(forwarded(&p, 22).unwrap().0.to_string(), "127.0.0.2");
    }
}
