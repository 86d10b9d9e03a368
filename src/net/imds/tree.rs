//! The metadata tree as EC2 serves it: versions, `meta-data/`, `user-data`, `dynamic/`.
//! Pure: built from a [`MetadataConfig`] and what the endpoint learnt of the guest.

use super::config::{format_mac, MetadataConfig};
use std::net::Ipv4Addr;

/// The dated metadata versions served besides `latest`, all with the same tree. cloud-init's
/// EC2 data source asks for `2021-03-23`, `2018-09-24` and `2016-09-02` (its
/// `extended_metadata_versions`), then `2009-04-04` (its `min_metadata_version`).
pub const VERSIONS: [&str; 5] = [
    "1.0",
    "2009-04-04",
    "2016-09-02",
    "2018-09-24",
    "2021-03-23",
];
/// The version that follows the newest.
pub const LATEST: &str = "latest";
/// The identity document's `version` field, as EC2 writes it.
const IDENTITY_DOCUMENT_VERSION: &str = "2017-09-30";
/// The only architecture amivm runs (the identity document's `architecture`).
const ARCHITECTURE: &str = "x86_64";

/// What the endpoint learnt of the guest from its frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guest {
    /// The source address of its IPv4 packets to the service.
    pub ipv4: Option<Ipv4Addr>,
    /// The source address of its frames.
    pub mac: Option<[u8; 6]>,
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Leaf(Vec<u8>),
    /// Children by name; `listing` replaces the generated listing (`public-keys/`'s `0=NAME`).
    Dir {
        children: Vec<(String, Node)>,
        listing: Option<String>,
    },
}

impl Node {
    fn dir(children: Vec<(&str, Node)>) -> Node {
        Node::Dir {
            children: children
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect(),
            listing: None,
        }
    }

    fn leaf(s: impl Into<Vec<u8>>) -> Node {
        Node::Leaf(s.into())
    }

    /// The body served for this node: a leaf's bytes, a directory's listing (one name a
    /// line, directories with a trailing `/`, no final newline, as EC2).
    pub fn body(&self) -> Vec<u8> {
        match self {
            Node::Leaf(b) => b.clone(),
            Node::Dir {
                listing: Some(l), ..
            } => l.clone().into_bytes(),
            Node::Dir { children, .. } => children
                .iter()
                .map(|(n, c)| match c {
                    Node::Dir { .. } => format!("{n}/"),
                    Node::Leaf(_) => n.clone(),
                })
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
        }
    }

    /// The node at `path` (`/latest/meta-data/ami-id`); a leaf asked with a trailing `/` is
    /// not found, a directory is found with or without one.
    pub fn lookup(&self, path: &str) -> Option<&Node> {
        let trailing = path.len() > 1 && path.ends_with('/');
        let mut node = self;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            let Node::Dir { children, .. } = node else {
                return None;
            };
            node = &children.iter().find(|(n, _)| n == seg)?.1;
        }
        if trailing && matches!(node, Node::Leaf(_)) {
            return None;
        }
        Some(node)
    }
}

/// The whole tree: `/` lists the versions, each version has the same content.
pub fn build(config: &MetadataConfig, guest: Guest) -> Node {
    let version = version_tree(config, guest);
    let mut children: Vec<(String, Node)> = VERSIONS
        .iter()
        .map(|v| (v.to_string(), version.clone()))
        .collect();
    children.push((LATEST.to_string(), version));
    // `/` lists the versions without trailing slashes, as EC2.
    let listing = children
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    Node::Dir {
        children,
        listing: Some(listing),
    }
}

fn version_tree(config: &MetadataConfig, guest: Guest) -> Node {
    let mut children = vec![
        ("dynamic", dynamic(config, guest)),
        ("meta-data", meta_data(config, guest)),
    ];
    if let Some(ud) = &config.user_data {
        children.push(("user-data", Node::leaf(ud.clone())));
    }
    Node::dir(children)
}

fn local_ipv4(config: &MetadataConfig, guest: Guest) -> Option<Ipv4Addr> {
    config.local_ipv4.or(guest.ipv4)
}

fn meta_data(config: &MetadataConfig, guest: Guest) -> Node {
    let mut md = vec![
        ("ami-id", Node::leaf(config.ami_id.as_str())),
        ("ami-launch-index", Node::leaf("0")),
        ("ami-manifest-path", Node::leaf("(unknown)")),
    ];
    if !config.block_devices.is_empty() {
        md.push((
            "block-device-mapping",
            Node::dir(
                config
                    .block_devices
                    .iter()
                    .map(|b| (b.name.as_str(), Node::leaf(b.device.as_str())))
                    .collect(),
            ),
        ));
    }
    md.extend([
        ("hostname", Node::leaf(config.hostname.as_str())),
        ("instance-action", Node::leaf("none")),
        ("instance-id", Node::leaf(config.instance_id.as_str())),
        ("instance-life-cycle", Node::leaf("on-demand")),
        ("instance-type", Node::leaf(config.instance_type.as_str())),
        ("local-hostname", Node::leaf(config.hostname.as_str())),
    ]);
    if let Some(ip) = local_ipv4(config, guest) {
        md.push(("local-ipv4", Node::leaf(ip.to_string())));
    }
    let mac = config.mac.or(guest.mac).map(|m| format_mac(&m));
    if let Some(mac) = &mac {
        md.push(("mac", Node::leaf(mac.as_str())));
        let mut nic = vec![
            ("device-number", Node::leaf("0")),
            (
                "interface-id",
                Node::leaf(format!("eni-{}", mac.replace(':', ""))),
            ),
        ];
        if let Some(ip) = local_ipv4(config, guest) {
            nic.push(("local-ipv4s", Node::leaf(ip.to_string())));
        }
        nic.push(("mac", Node::leaf(mac.as_str())));
        let macs = Node::Dir {
            children: vec![(mac.clone(), Node::dir(nic))],
            listing: None,
        };
        md.push((
            "network",
            Node::dir(vec![("interfaces", Node::dir(vec![("macs", macs)]))]),
        ));
    }
    md.push((
        "placement",
        Node::dir(vec![
            (
                "availability-zone",
                Node::leaf(config.availability_zone.as_str()),
            ),
            ("region", Node::leaf(config.region.as_str())),
        ]),
    ));
    if !config.public_keys.is_empty() {
        let children = config
            .public_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    i.to_string(),
                    Node::dir(vec![("openssh-key", Node::leaf(k.openssh.as_str()))]),
                )
            })
            .collect();
        let listing = config
            .public_keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{i}={}", k.name))
            .collect::<Vec<_>>()
            .join("\n");
        md.push((
            "public-keys",
            Node::Dir {
                children,
                listing: Some(listing),
            },
        ));
    }
    md.extend([
        ("reservation-id", Node::leaf(reservation_id(config))),
        ("security-groups", Node::leaf("default")),
        (
            "services",
            Node::dir(vec![
                ("domain", Node::leaf("amazonaws.com")),
                ("partition", Node::leaf("aws")),
            ]),
        ),
    ]);
    Node::dir(md)
}

/// `r-` and the instance id's hex digits (amivm makes one reservation per instance).
fn reservation_id(config: &MetadataConfig) -> String {
    format!(
        "r-{}",
        config
            .instance_id
            .strip_prefix("i-")
            .unwrap_or(&config.instance_id)
    )
}

/// The identity document, the fields in EC2's order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument<'a> {
    account_id: &'a str,
    architecture: &'a str,
    availability_zone: &'a str,
    billing_products: Option<()>,
    devpay_product_codes: Option<()>,
    marketplace_product_codes: Option<()>,
    image_id: &'a str,
    instance_id: &'a str,
    instance_type: &'a str,
    kernel_id: Option<()>,
    pending_time: &'a str,
    private_ip: Option<String>,
    ramdisk_id: Option<()>,
    region: &'a str,
    version: &'a str,
}

/// `/latest/dynamic/instance-identity/document`'s JSON.
pub fn identity_document(config: &MetadataConfig, guest: Guest) -> String {
    let doc = IdentityDocument {
        account_id: &config.account_id,
        architecture: ARCHITECTURE,
        availability_zone: &config.availability_zone,
        billing_products: None,
        devpay_product_codes: None,
        marketplace_product_codes: None,
        image_id: &config.ami_id,
        instance_id: &config.instance_id,
        instance_type: &config.instance_type,
        kernel_id: None,
        pending_time: &config.launch_time,
        private_ip: local_ipv4(config, guest).map(|ip| ip.to_string()),
        ramdisk_id: None,
        region: &config.region,
        version: IDENTITY_DOCUMENT_VERSION,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn dynamic(config: &MetadataConfig, guest: Guest) -> Node {
    Node::dir(vec![(
        "instance-identity",
        Node::dir(vec![(
            "document",
            Node::leaf(identity_document(config, guest)),
        )]),
    )])
}
