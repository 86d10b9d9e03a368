//! The words users give: `--network user|none|tap:NAME`, `--publish [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]`,
//! and the MAC address an instance gets. Pure, unit-tested.

use super::NetError;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Longest Linux interface name: `IFNAMSIZ` (16, linux/if.h) less the terminating NUL.
pub const IFNAME_MAX: usize = 15;

/// Which backend carries the guest's frames.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum NetworkSpec {
    /// Rootless user-mode networking through passt.
    User,
    /// No backend: the guest's frames go nowhere.
    None,
    /// A tap device of this name.
    Tap(String),
}

impl FromStr for NetworkSpec {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        match s {
            "user" => Ok(NetworkSpec::User),
            "none" => Ok(NetworkSpec::None),
            _ => match s.strip_prefix("tap:") {
                Some(name) if valid_ifname(name) => Ok(NetworkSpec::Tap(name.to_string())),
                Some(_) => Err(NetError::Syntax(format!(
                    "--network {s:?}: a tap name is 1 to {IFNAME_MAX} characters of letters, digits, '-', '_' and '.'"
                ))),
                None => Err(NetError::Syntax(format!(
                    "--network {s:?}: expected user, none or tap:NAME"
                ))),
            },
        }
    }
}

impl fmt::Display for NetworkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkSpec::User => f.write_str("user"),
            NetworkSpec::None => f.write_str("none"),
            NetworkSpec::Tap(n) => write!(f, "tap:{n}"),
        }
    }
}

impl From<NetworkSpec> for String {
    fn from(n: NetworkSpec) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for NetworkSpec {
    type Error = NetError;
    fn try_from(s: String) -> Result<Self, NetError> {
        s.parse()
    }
}

/// A Linux interface name we accept: short, and no character the kernel or a shell would treat
/// specially (the kernel itself refuses '/', ':' and whitespace: `dev_valid_name`).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A forwarded port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One `--publish`: a host port forwarded to a guest port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Publish {
    /// The host address to listen on; all addresses when absent.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

impl FromStr for Publish {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = |why: &str| {
            NetError::Syntax(format!(
                "--publish {s:?}: {why} (expected [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp])"
            ))
        };
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad("the protocol is tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let (rest, guest) = ports.rsplit_once(':').ok_or_else(|| bad("no guest port"))?;
        let (host_ip, host) = match rest.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                let ip: IpAddr = ip.parse().map_err(|_| bad("bad host address"))?;
                (Some(ip), port)
            }
            None => (None, rest),
        };
        let port = |p: &str, what: &str| -> Result<u16, NetError> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(bad(&format!("{what} port must be 1 to 65535"))),
            }
        };
        Ok(Publish {
            host_ip,
            host_port: port(host, "the host")?,
            guest_port: port(guest, "the guest")?,
            protocol,
        })
    }
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.guest_port,
            self.protocol.as_str()
        )
    }
}

impl From<Publish> for String {
    fn from(p: Publish) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for Publish {
    type Error = NetError;
    fn try_from(s: String) -> Result<Self, NetError> {
        s.parse()
    }
}

impl Publish {
    /// passt's spelling of this forward, the argument of `-t` or `-u`:
    /// `[ADDR/]PORT:TARGET` (passt(1), "--tcp-ports").
    pub fn passt_arg(&self) -> (&'static str, String) {
        let flag = match self.protocol {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
        };
        let spec = match self.host_ip {
            Some(ip) => format!("{ip}/{}:{}", self.host_port, self.guest_port),
            None => format!("{}:{}", self.host_port, self.guest_port),
        };
        (flag, spec)
    }
}

/// The MAC address of an instance: stable (derived from its id), locally administered
/// (bit 1 of the first octet set) and unicast (bit 0 clear), IEEE 802 clause 8.2.2.
pub fn mac_for_instance(instance_id: &str) -> [u8; 6] {
    let h = Sha256::digest(instance_id.as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&h[..6]);
    mac[0] = (mac[0] & !0b01) | 0b10;
    mac
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_words() {
        assert_eq!("user".parse::<NetworkSpec>().unwrap(), NetworkSpec::User);
        assert_eq!("none".parse::<NetworkSpec>().unwrap(), NetworkSpec::None);
        assert_eq!(
            "tap:tap0".parse::<NetworkSpec>().unwrap(),
            NetworkSpec::Tap("tap0".into())
        );
        for bad in [
            "",
            "tap:",
            "tap:a/b",
            "tap:0123456789abcdef",
            "bridge",
            "tap:..",
            "tap:a b",
        ] {
            assert!(bad.parse::<NetworkSpec>().is_err(), "{bad:?}");
        }
        for ok in ["user", "none", "tap:br-0.1"] {
            assert_eq!(ok.parse::<NetworkSpec>().unwrap().to_string(), ok);
        }
    }

    #[test]
    fn publish_words() {
        let p: Publish = "2222:22".parse().unwrap();
        assert_eq!(
            p,
            Publish {
                host_ip: None,
                host_port: 2222,
                guest_port: 22,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(p.to_string(), "2222:22/tcp");
        assert_eq!(p.passt_arg(), ("-t", "2222:22".into()));
        let p: Publish = "127.0.0.1:8053:53/udp".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.passt_arg(), ("-u", "127.0.0.1/8053:53".into()));
        let p: Publish = "[::1]:80:8080".parse().unwrap();
        assert_eq!(p.to_string(), "[::1]:80:8080/tcp");
        assert_eq!(p.to_string().parse::<Publish>().unwrap(), p);
        for bad in [
            "",
            "22",
            "0:22",
            "22:0",
            "70000:22",
            "a:22",
            "22:22/sctp",
            "x.y:1:2",
            "+1:2",
            ":22",
        ] {
            assert!(bad.parse::<Publish>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&"1:2/udp".parse::<Publish>().unwrap()).unwrap();
        assert_eq!(json, "\"1:2/udp\"");
        assert!(serde_json::from_str::<Publish>("\"1:0\"").is_err());
    }

    #[test]
    fn macs_are_stable_local_unicast_and_distinct() {
        let a = mac_for_instance("i-0123456789abcdef0");
        assert_eq!(a, mac_for_instance("i-0123456789abcdef0"));
        assert_eq!(a[0] & 0b11, 0b10, "{}", format_mac(&a));
        let b = mac_for_instance("i-0123456789abcdef1");
        assert_ne!(a, b);
        assert_eq!(b[0] & 0b11, 0b10);
        assert_eq!(format_mac(&[2, 0, 0xab, 1, 2, 3]), "02:00:ab:01:02:03");
    }
}
