//! An instance's metadata service settings and user data (`--metadata-options`,
//! `--user-data`, RunInstances' `MetadataOptions` and `UserData`), kept in its record, and the
//! [`MetadataConfig`] the VMM's metadata endpoint serves, built from the record.

use super::record::Instance;
use super::{InstanceError, Result};
use crate::net::imds::config::{DEFAULT_HOP_LIMIT, MAX_HOP_LIMIT, MAX_USER_DATA};
use crate::net::imds::{BlockDevice, HttpTokens, MetadataConfig, PublicKey};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// The region the metadata service reports: the one `amivm serve` answers for.
pub const REGION: &str = crate::api::DEFAULT_REGION;
/// The longest host name served (RFC 1035 section 2.3.4: a label is at most 63 octets).
const MAX_HOSTNAME: usize = 63;

/// `--metadata-options`: EC2's InstanceMetadataOptions, the parts amivm honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetadataOptions {
    /// `http-tokens`: `optional` (IMDSv1 and v2) or `required` (IMDSv2 only).
    #[serde(default)]
    pub http_tokens: HttpTokens,
    /// `http-put-response-hop-limit`: the IP TTL of token responses, 1 to 64.
    #[serde(default = "default_hop_limit")]
    pub http_put_response_hop_limit: u8,
}

fn default_hop_limit() -> u8 {
    DEFAULT_HOP_LIMIT
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_tokens: HttpTokens::Optional,
            http_put_response_hop_limit: DEFAULT_HOP_LIMIT,
        }
    }
}

impl MetadataOptions {
    /// Parse `http-tokens=required|optional[,http-put-response-hop-limit=N]` (the aws CLI's
    /// shorthand for `--metadata-options`; `http-endpoint=enabled` is accepted too).
    pub fn parse(s: &str) -> Result<MetadataOptions> {
        let mut o = MetadataOptions::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                InstanceError::Invalid(format!("--metadata-options: {part:?} is not KEY=VALUE"))
            })?;
            match k.trim().to_ascii_lowercase().as_str() {
                "http-tokens" | "httptokens" => o.http_tokens = parse_tokens(v.trim())?,
                "http-put-response-hop-limit" | "httpputresponsehoplimit" => {
                    o.http_put_response_hop_limit = parse_hop_limit(v.trim())?
                }
                "http-endpoint" | "httpendpoint" if v.trim() == "enabled" => {}
                _ => {
                    return Err(InstanceError::Invalid(format!(
                        "--metadata-options: {part:?} is not supported (http-tokens=optional|required, \
                         http-put-response-hop-limit=1..{MAX_HOP_LIMIT}, http-endpoint=enabled)"
                    )))
                }
            }
        }
        Ok(o)
    }
}

/// `optional` or `required`.
pub fn parse_tokens(v: &str) -> Result<HttpTokens> {
    match v {
        "optional" => Ok(HttpTokens::Optional),
        "required" => Ok(HttpTokens::Required),
        _ => Err(InstanceError::Invalid(format!(
            "http-tokens {v:?}: optional or required"
        ))),
    }
}

/// 1 to [`MAX_HOP_LIMIT`].
pub fn parse_hop_limit(v: &str) -> Result<u8> {
    v.parse::<u8>()
        .ok()
        .filter(|n| (1..=MAX_HOP_LIMIT).contains(n))
        .ok_or_else(|| {
            InstanceError::Invalid(format!(
                "http-put-response-hop-limit {v:?}: a whole number from 1 to {MAX_HOP_LIMIT}"
            ))
        })
}

/// Check user data's size (EC2: at most 16 KiB before base64).
pub fn check_user_data(data: &[u8]) -> Result<()> {
    if data.len() > MAX_USER_DATA {
        return Err(InstanceError::Invalid(format!(
            "user data is {} bytes; at most {MAX_USER_DATA} bytes (16 KiB, as EC2)",
            data.len()
        )));
    }
    Ok(())
}

/// Read `--user-data FILE`: a regular file of at most [`MAX_USER_DATA`] bytes (never read
/// past that).
pub fn read_user_data(path: &Path) -> Result<Vec<u8>> {
    let f = crate::files::open(
        path,
        "user data",
        crate::files::REGULAR,
        crate::files::Mode::Read,
    )
    .map_err(|e| InstanceError::Invalid(e.to_string()))?;
    let mut data = Vec::new();
    f.take(MAX_USER_DATA as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| InstanceError::io(format!("--user-data {}", path.display()), e))?;
    if data.len() > MAX_USER_DATA {
        return Err(InstanceError::Invalid(format!(
            "--user-data {}: more than {MAX_USER_DATA} bytes (16 KiB, as EC2)",
            path.display()
        )));
    }
    Ok(data)
}

/// User data as the record keeps it (base64, as EC2's API carries it).
pub fn encode_user_data(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The record's user data, decoded and checked.
pub fn decode_user_data(b64: &str) -> Result<Vec<u8>> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| InstanceError::Invalid("the record's user data is not base64".into()))?;
    check_user_data(&data)?;
    Ok(data)
}

/// The host name served: the instance's name when it is a valid host name label (RFC 1123),
/// else its id.
pub fn hostname(inst: &Instance) -> String {
    match &inst.name {
        Some(n)
            if !n.is_empty()
                && n.len() <= MAX_HOSTNAME
                && !n.starts_with('-')
                && !n.ends_with('-')
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            n.to_ascii_lowercase()
        }
        _ => inst.instance_id.clone(),
    }
}

/// The public key served as `public-keys/0`, from a record's key pair name and key.
pub fn public_keys(key_name: Option<&str>, openssh: Option<&str>) -> Vec<PublicKey> {
    match (key_name, openssh) {
        (Some(name), Some(key)) => vec![PublicKey {
            name: name.to_string(),
            openssh: key.trim().to_string(),
        }],
        _ => Vec::new(),
    }
}

/// What the metadata service serves for `inst`, with the key pair it was launched with
/// (`--key-name`, RunInstances' KeyName) as `public-keys/0`.
pub fn for_instance(inst: &Instance) -> Result<MetadataConfig> {
    metadata_config(
        inst,
        public_keys(inst.key_name.as_deref(), inst.public_key.as_deref()),
    )
}

/// What the metadata service serves for `inst`. `public_keys`: from the record's key pair
/// ([`public_keys`] over its `key_name` and `public_key`).
pub fn metadata_config(inst: &Instance, public_keys: Vec<PublicKey>) -> Result<MetadataConfig> {
    let root = &inst.image.root_device_name;
    let mut block_devices = vec![
        BlockDevice {
            name: "ami".into(),
            device: root.clone(),
        },
        BlockDevice {
            name: "root".into(),
            device: root.clone(),
        },
    ];
    block_devices.extend(
        inst.volumes
            .iter()
            .filter(|v| &v.device_name != root && !v.deleted)
            .enumerate()
            .map(|(i, v)| BlockDevice {
                name: format!("ebs{}", i + 1),
                device: v.device_name.clone(),
            }),
    );
    Ok(MetadataConfig {
        instance_id: inst.instance_id.clone(),
        ami_id: inst.image.image_id.to_string(),
        instance_type: inst.instance_type.clone(),
        hostname: hostname(inst),
        local_ipv4: None,
        mac: None,
        region: REGION.to_string(),
        availability_zone: format!("{REGION}a"),
        account_id: inst.owner_id.to_string(),
        public_keys,
        block_devices,
        user_data: inst
            .user_data
            .as_deref()
            .map(decode_user_data)
            .transpose()?,
        http_tokens: inst.metadata_options.http_tokens,
        hop_limit: inst.metadata_options.http_put_response_hop_limit,
        launch_time: inst.launch_time.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metadata_options() {
        assert_eq!(
            MetadataOptions::parse("http-tokens=required").unwrap(),
            MetadataOptions {
                http_tokens: HttpTokens::Required,
                http_put_response_hop_limit: 1
            }
        );
        let o =
            MetadataOptions::parse("http-tokens=optional,http-put-response-hop-limit=2").unwrap();
        assert_eq!(o.http_put_response_hop_limit, 2);
        assert_eq!(
            MetadataOptions::parse("HttpTokens=required,HttpEndpoint=enabled")
                .unwrap()
                .http_tokens,
            HttpTokens::Required
        );
        for bad in [
            "http-tokens=maybe",
            "http-tokens",
            "http-put-response-hop-limit=0",
            "http-put-response-hop-limit=65",
            "http-put-response-hop-limit=x",
            "http-endpoint=disabled",
            "colour=blue",
        ] {
            assert!(MetadataOptions::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_data_is_bounded() {
        assert!(check_user_data(&[0; MAX_USER_DATA]).is_ok());
        assert!(check_user_data(&[0; MAX_USER_DATA + 1]).is_err());
        let enc = encode_user_data(b"#!/bin/sh\n\x00\xff");
        assert_eq!(decode_user_data(&enc).unwrap(), b"#!/bin/sh\n\x00\xff");
        assert!(decode_user_data("not base64!").is_err());
        assert!(decode_user_data(&encode_user_data(&[1; MAX_USER_DATA + 1])).is_err());
    }

    #[test]
    fn reads_user_data_files() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"#cloud-config\n").unwrap();
        assert_eq!(read_user_data(&ok).unwrap(), b"#cloud-config\n");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_USER_DATA + 1]).unwrap();
        let e = read_user_data(&big).unwrap_err().to_string();
        assert!(e.contains("16 KiB"), "{e}");
        assert!(read_user_data(dir.path()).is_err(), "a directory");
        assert!(read_user_data(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn public_keys_need_name_and_key() {
        assert_eq!(
            public_keys(Some("k"), Some("ssh-ed25519 AAAA c\n")),
            vec![PublicKey {
                name: "k".into(),
                openssh: "ssh-ed25519 AAAA c".into()
            }]
        );
        assert!(public_keys(Some("k"), None).is_empty());
        assert!(public_keys(None, None).is_empty());
    }
}
