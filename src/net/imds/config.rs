//! What the metadata service serves: plain data the instance layer builds from an instance
//! record ([`crate::instance::metadata::metadata_config`]).

use std::net::Ipv4Addr;

/// The most user data an instance may have: 16 KiB, as EC2 ("Instance user data", EC2 User
/// Guide: "User data is limited to 16 KB, in raw form, before it is base64-encoded").
pub const MAX_USER_DATA: usize = 16 * 1024;

/// The shortest IMDSv2 token lifetime a client may ask for, in seconds (EC2 User Guide,
/// "Use IMDSv2": `X-aws-ec2-metadata-token-ttl-seconds` from 1 second ...).
pub const MIN_TOKEN_TTL_SECS: u32 = 1;
/// ... to 21,600 seconds (six hours).
pub const MAX_TOKEN_TTL_SECS: u32 = 21_600;

/// EC2's default `http-put-response-hop-limit` (EC2 API Reference,
/// InstanceMetadataOptionsRequest: "Default: 1").
pub const DEFAULT_HOP_LIMIT: u8 = 1;
/// The largest `http-put-response-hop-limit` EC2 accepts ("Possible values: Integers from 1
/// to 64").
pub const MAX_HOP_LIMIT: u8 = 64;

/// Whether requests need an IMDSv2 session token (`--metadata-options http-tokens=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    /// IMDSv1 and IMDSv2 (EC2's default for images without `ImdsSupport=v2.0`).
    #[default]
    Optional,
    /// IMDSv2 only: a request without a valid token gets 401.
    Required,
}

impl HttpTokens {
    /// The word used on the command line and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpTokens::Optional => "optional",
            HttpTokens::Required => "required",
        }
    }
}

/// A public key the guest may log in with (`public-keys/0=NAME`, `public-keys/0/openssh-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key pair's name.
    pub name: String,
    /// One OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub openssh: String,
}

/// One `block-device-mapping/` entry: `ami`, `root`, `ebs1`, ... and the device it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The entry's name (`ami`, `root`, `ebs1`).
    pub name: String,
    /// The device (`/dev/vda`).
    pub device: String,
}

/// Everything the metadata service serves about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataConfig {
    pub instance_id: String,
    pub ami_id: String,
    pub instance_type: String,
    /// `hostname` and `local-hostname` (EC2: `ip-10-0-0-1.ec2.internal`; amivm: the instance
    /// name if any, else the instance id).
    pub hostname: String,
    /// `local-ipv4`. `None`: the source address of the guest's own requests to the service.
    pub local_ipv4: Option<Ipv4Addr>,
    /// `mac`, `aa:bb:cc:dd:ee:ff` in lower case. `None`: the source address of the guest's
    /// frames.
    pub mac: Option<[u8; 6]>,
    /// `placement/region` (amivm: the API's region, `us-east-1`).
    pub region: String,
    /// `placement/availability-zone` (the region and `a`, as `amivm serve` reports).
    pub availability_zone: String,
    /// The owner's account id (the identity document's `accountId`).
    pub account_id: String,
    pub public_keys: Vec<PublicKey>,
    pub block_devices: Vec<BlockDevice>,
    /// `/latest/user-data` (404 when `None`); at most [`MAX_USER_DATA`] bytes.
    pub user_data: Option<Vec<u8>>,
    pub http_tokens: HttpTokens,
    /// IP TTL of the responses to token requests (`http-put-response-hop-limit`).
    pub hop_limit: u8,
    /// RFC 3339 launch time (the identity document's `pendingTime`).
    pub launch_time: String,
}

/// Format a MAC address as EC2 does (`0e:49:61:0f:c3:11`).
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The instance id `amivm boot` serves (a VM booted without an instance record).
pub const BOOT_INSTANCE_ID: &str = "i-boot";
/// The region `amivm boot` serves (the API's default, `crate::api::DEFAULT_REGION`).
pub const BOOT_REGION: &str = "us-east-1";
/// The instance type `amivm boot` serves (the API's default for `run`).
pub const BOOT_INSTANCE_TYPE: &str = "t3.micro";
/// The account id `amivm boot` serves: EC2's documentation example account.
pub const BOOT_ACCOUNT_ID: &str = "123456789012";

impl MetadataConfig {
    /// What `amivm boot` serves: no instance record, so fixed ids ([`BOOT_INSTANCE_ID`]), the
    /// given user data and token policy, no keys, the root drive as `/dev/vda`.
    pub fn for_boot(user_data: Option<Vec<u8>>, http_tokens: HttpTokens) -> MetadataConfig {
        MetadataConfig {
            instance_id: BOOT_INSTANCE_ID.into(),
            ami_id: "ami-boot".into(),
            instance_type: BOOT_INSTANCE_TYPE.into(),
            hostname: BOOT_INSTANCE_ID.into(),
            local_ipv4: None,
            mac: None,
            region: BOOT_REGION.into(),
            availability_zone: format!("{BOOT_REGION}a"),
            account_id: BOOT_ACCOUNT_ID.into(),
            public_keys: Vec::new(),
            block_devices: vec![BlockDevice {
                name: "root".into(),
                device: "/dev/vda".into(),
            }],
            user_data,
            http_tokens,
            hop_limit: DEFAULT_HOP_LIMIT,
            launch_time: "1970-01-01T00:00:00Z".into(),
        }
    }
}
