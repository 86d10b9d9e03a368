//! The image manifest (JSON, versioned) and its validation.
//!
//! Field names follow EC2's `DescribeImages` output (PascalCase), so `--output json` reads like
//! the AWS CLI's.

use super::error::{Result, StoreError};
use super::ids::{AccountId, ContentHash, ImageId, SnapshotId};
use crate::text::find_unsafe_char;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the image and snapshot manifest format written by this code.
pub const MANIFEST_VERSION: u32 = 1;
/// Image names: at least 3 characters (EC2 `RegisterImage`, parameter `Name`).
pub const NAME_MIN_LEN: usize = 3;
/// Image names: at most 128 characters (EC2 `RegisterImage`, parameter `Name`).
pub const NAME_MAX_LEN: usize = 128;
/// Punctuation allowed in image names besides letters and digits (EC2 `RegisterImage`).
pub const NAME_PUNCTUATION: &str = "()[] ./-'@_";
/// Descriptions: at most 255 characters (EC2 `RegisterImage`, parameter `Description`).
pub const DESCRIPTION_MAX_LEN: usize = 255;
/// Tag keys: at most 128 characters (EC2 tag restrictions).
pub const TAG_KEY_MAX_LEN: usize = 128;
/// Tag values: at most 256 characters (EC2 tag restrictions).
pub const TAG_VALUE_MAX_LEN: usize = 256;
/// At most 50 tags per resource (EC2 tag restrictions).
pub const MAX_TAGS: usize = 50;
/// The root device of every image: the first virtio-blk disk as Linux names it.
pub const ROOT_DEVICE_NAME: &str = "/dev/vda";
/// The kernel command line an image gets when `--cmdline` is not given: serial console on the
/// first 16550 UART, root filesystem on the first virtio-blk disk.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";
/// Bytes in a GiB: EC2 volume sizes are whole GiB.
pub const GIB: u64 = 1 << 30;
/// The largest volume, in GiB: 16 TiB, the largest EBS gp3 (and gp2) volume (EC2 `CreateVolume`,
/// parameter `Size`). Bigger `VolumeSize`s and `--size`s are refused.
pub const MAX_VOLUME_SIZE_GIB: u64 = 16 * 1024;
/// [`MAX_VOLUME_SIZE_GIB`] in bytes.
pub const MAX_VOLUME_BYTES: u64 = MAX_VOLUME_SIZE_GIB * GIB;

/// The only architecture amivm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "x86_64")]
    X86_64,
}

impl Architecture {
    pub fn as_str(&self) -> &'static str {
        "x86_64"
    }
}

/// Image states, as in EC2. The local store commits an image in one atomic step, so the images
/// it creates are always `available`; the other states exist for manifests from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    Pending,
    Available,
    Failed,
    Deregistered,
}

impl ImageState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageState::Pending => "pending",
            ImageState::Available => "available",
            ImageState::Failed => "failed",
            ImageState::Deregistered => "deregistered",
        }
    }
}

/// How a kernel file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A compressed `bzImage` (Linux x86 boot protocol).
    Bzimage,
}

impl KernelFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            KernelFormat::Elf => "elf",
            KernelFormat::Bzimage => "bzimage",
        }
    }
}

/// How the image's kernel finds its virtio-mmio devices (the VMM's `--device-discovery`).
/// Manifests written before this field existed mean `cmdline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceDiscovery {
    /// `virtio_mmio.device=` kernel arguments (micro-VM kernels without ACPI).
    #[default]
    Cmdline,
    /// ACPI DSDT entries (kernels like Debian's cloud kernel).
    Acpi,
}

impl DeviceDiscovery {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceDiscovery::Cmdline => "cmdline",
            DeviceDiscovery::Acpi => "acpi",
        }
    }
}

/// A kernel or initrd, stored as a content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlobRef {
    /// sha256 of the file: its name under `blobs/`.
    pub blob: ContentHash,
    /// Size in bytes.
    pub size: u64,
}

/// The kernel of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KernelRef {
    #[serde(flatten)]
    pub blob: BlobRef,
    pub format: KernelFormat,
}

/// The EBS part of a block-device mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EbsBlockDevice {
    pub snapshot_id: SnapshotId,
    /// Size of the volume an instance gets, in GiB (at least the snapshot's size).
    pub volume_size: u64,
    pub delete_on_termination: bool,
    /// The guest sees the disk read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// One disk of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlockDeviceMapping {
    /// `/dev/vda`, `/dev/vdb`, ...
    pub device_name: String,
    pub ebs: EbsBlockDevice,
}

/// An image (AMI) manifest: `images/ami-….json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Image {
    pub manifest_version: u32,
    pub image_id: ImageId,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub architecture: Architecture,
    pub owner_id: AccountId,
    /// RFC 3339, UTC.
    pub creation_date: String,
    pub state: ImageState,
    pub public: bool,
    /// Accounts other than the owner that may see and launch the image.
    #[serde(default)]
    pub launch_permissions: Vec<AccountId>,
    pub kernel: KernelRef,
    #[serde(default)]
    pub initrd: Option<BlobRef>,
    pub kernel_command_line: String,
    pub root_device_name: String,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The image this one was copied from.
    #[serde(default)]
    pub source_image_id: Option<ImageId>,
    /// `NAME` from the root filesystem's `/etc/os-release`, when it could be read.
    #[serde(default)]
    pub os_name: Option<String>,
    /// `VERSION_ID` (else `VERSION`) from `/etc/os-release`.
    #[serde(default)]
    pub os_version: Option<String>,
    /// How the kernel finds its devices.
    #[serde(default)]
    pub device_discovery: DeviceDiscovery,
    /// Marketplace product codes ([`super::product_codes`]); absent from most manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub product_codes: Vec<super::product_codes::ProductCode>,
    /// The user to log in as over SSH (`amivm ssh`), when the image says (`admin` for the
    /// Debian recipe); [`Image::login_user`] falls back on the distribution's usual one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
}

impl Image {
    /// The mapping of the root device.
    pub fn root_mapping(&self) -> Option<&BlockDeviceMapping> {
        self.block_device_mappings
            .iter()
            .find(|m| m.device_name == self.root_device_name)
    }

    /// The user `amivm ssh` logs in as: the image's `DefaultUser`, else the user its
    /// distribution's EC2 images create, if known.
    pub fn login_user(&self) -> Option<&str> {
        self.default_user
            .as_deref()
            .or_else(|| super::login_user::distribution_user(self.os_name.as_deref()?))
    }

    /// Every snapshot the image uses.
    pub fn snapshot_ids(&self) -> impl Iterator<Item = &SnapshotId> {
        self.block_device_mappings
            .iter()
            .map(|m| &m.ebs.snapshot_id)
    }

    /// Every blob the image uses (kernel, initrd).
    pub fn blobs(&self) -> Vec<ContentHash> {
        let mut v = vec![self.kernel.blob.blob];
        v.extend(self.initrd.iter().map(|b| b.blob));
        v
    }

    /// Check everything that the types alone do not.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| StoreError::corrupt(format!("image {}", self.image_id), why);
        super::product_codes::validate(&self.product_codes).map_err(bad)?;
        if self.manifest_version != MANIFEST_VERSION {
            return Err(bad(format!(
                "manifest version {} (this amivm reads version {MANIFEST_VERSION})",
                self.manifest_version
            )));
        }
        validate_name(&self.name).map_err(|e| bad(e.to_string()))?;
        if let Some(u) = &self.default_user {
            super::login_user::validate_user_name(u).map_err(|e| bad(e.to_string()))?;
        }
        validate_description(&self.description).map_err(|e| bad(e.to_string()))?;
        validate_tags(&self.tags).map_err(|e| bad(e.to_string()))?;
        for (what, v) in [("OsName", &self.os_name), ("OsVersion", &self.os_version)] {
            if let Some(c) = v.as_deref().and_then(find_unsafe_char) {
                return Err(bad(format!("{what} contains {}", char_name(c))));
            }
        }
        time::OffsetDateTime::parse(
            &self.creation_date,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| bad(format!("CreationDate '{}': {e}", self.creation_date)))?;
        if self.block_device_mappings.is_empty() {
            return Err(bad("no block-device mappings".into()));
        }
        if self.root_mapping().is_none() {
            return Err(bad(format!(
                "root device {} has no block-device mapping",
                self.root_device_name
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.block_device_mappings {
            if device_index(&m.device_name).is_none() {
                return Err(bad(format!("bad device name '{}'", m.device_name)));
            }
            if !seen.insert(&m.device_name) {
                return Err(bad(format!("device {} mapped twice", m.device_name)));
            }
            if m.ebs.volume_size == 0 || m.ebs.volume_size > MAX_VOLUME_SIZE_GIB {
                return Err(bad(format!(
                    "device {} has VolumeSize {} (1 to {MAX_VOLUME_SIZE_GIB} GiB)",
                    m.device_name, m.ebs.volume_size
                )));
            }
        }
        Ok(())
    }
}

/// The Linux name of the `n`-th virtio-blk disk: `/dev/vda`, `/dev/vdb`, … (26 at most).
pub fn device_name(n: usize) -> Option<String> {
    let letter = u8::try_from(n).ok().filter(|n| *n < 26)?;
    Some(format!("/dev/vd{}", char::from(b'a' + letter)))
}

/// The index of a `/dev/vdX` name.
pub fn device_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("/dev/vd")?;
    match rest.as_bytes() {
        [c @ b'a'..=b'z'] => Some(usize::from(c - b'a')),
        _ => None,
    }
}

/// How an error names a character: `U+001B`.
pub fn char_name(c: char) -> String {
    format!("character U+{:04X}", u32::from(c))
}

/// Check an image name against EC2's rules, and that it cannot be taken for an image or
/// snapshot id (such a name could never be looked up by name).
pub fn validate_name(name: &str) -> Result<()> {
    let n = name.chars().count();
    if !(NAME_MIN_LEN..=NAME_MAX_LEN).contains(&n) {
        return Err(StoreError::Invalid(format!(
            "invalid image name '{name}': it must be {NAME_MIN_LEN} to {NAME_MAX_LEN} characters long"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !NAME_PUNCTUATION.contains(*c))
    {
        return Err(StoreError::Invalid(format!(
            "invalid image name {name:?}: {} is not allowed (use letters, digits and {NAME_PUNCTUATION:?})",
            char_name(c)
        )));
    }
    if ImageId::looks_like(name) || SnapshotId::looks_like(name) {
        return Err(StoreError::Invalid(format!(
            "invalid image name '{name}': it has the form of an id, so it could only be looked up as one"
        )));
    }
    Ok(())
}

/// Check a description's length.
pub fn validate_description(d: &str) -> Result<()> {
    if d.chars().count() > DESCRIPTION_MAX_LEN {
        return Err(StoreError::Invalid(format!(
            "description is longer than {DESCRIPTION_MAX_LEN} characters"
        )));
    }
    if let Some(c) = find_unsafe_char(d) {
        return Err(StoreError::Invalid(format!(
            "description contains {}: control and bidirectional characters are not allowed",
            char_name(c)
        )));
    }
    Ok(())
}

/// Check tags against EC2's restrictions.
pub fn validate_tags(tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(StoreError::Invalid(format!(
            "at most {MAX_TAGS} tags are allowed"
        )));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > TAG_KEY_MAX_LEN {
            return Err(StoreError::Invalid(format!(
                "tag key '{k}' must be 1 to {TAG_KEY_MAX_LEN} characters"
            )));
        }
        if k.starts_with("aws:") {
            return Err(StoreError::Invalid(format!(
                "tag key '{k}': the aws: prefix is reserved"
            )));
        }
        if v.chars().count() > TAG_VALUE_MAX_LEN {
            return Err(StoreError::Invalid(format!(
                "tag '{k}': value longer than {TAG_VALUE_MAX_LEN} characters"
            )));
        }
        if let Some(c) = find_unsafe_char(k).or_else(|| find_unsafe_char(v)) {
            return Err(StoreError::Invalid(format!(
                "tag {k:?}: {} is not allowed (no control or bidirectional characters)",
                char_name(c)
            )));
        }
    }
    Ok(())
}

/// Parse `K=V` (a missing `=V` means an empty value).
pub fn parse_tag(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        return Err(StoreError::Invalid(format!(
            "tag '{s}' has no key (use KEY=VALUE)"
        )));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Now, as RFC 3339 in UTC with whole seconds (as EC2 prints `CreationDate`, less the millis).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Whole GiB needed to hold `bytes` (at least 1).
pub fn gib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ec2_rules() {
        assert!(validate_name("my image (v1.2) [test]/a-b'c@d_e").is_ok());
        assert!(validate_name("ab").is_err());
        assert!(validate_name(&"a".repeat(129)).is_err());
        assert!(validate_name(&"a".repeat(128)).is_ok());
        assert!(validate_name("bad*name").is_err());
        assert!(validate_name("tab\tname").is_err());
        // Id-shaped names would be unreachable by name; near misses stay names.
        assert!(validate_name("ami-0123456789abcdef0").is_err());
        assert!(validate_name("snap-0123456789abcdef0").is_err());
        assert!(validate_name("ami-web").is_ok());
        assert!(validate_name("ami-0123456789abcdef").is_ok());
    }

    #[test]
    fn control_characters_are_refused_in_text() {
        assert!(validate_description("web tier, v2 (é)").is_ok());
        for d in [
            "a\x1b[2J",
            "line\nbreak",
            "cr\r",
            "csi\u{9b}",
            "rlo\u{202e}",
        ] {
            let e = validate_description(d).unwrap_err().to_string();
            assert!(e.contains("character U+"), "{e}");
        }
        let tags = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(validate_tags(&tags("env", "dev")).is_ok());
        assert!(validate_tags(&tags("env", "d\x1bev")).is_err());
        assert!(validate_tags(&tags("e\nnv", "dev")).is_err());
    }

    #[test]
    fn device_names() {
        assert_eq!(device_name(0).as_deref(), Some("/dev/vda"));
        assert_eq!(device_name(25).as_deref(), Some("/dev/vdz"));
        assert_eq!(device_name(26), None);
        assert_eq!(device_index("/dev/vdc"), Some(2));
        assert_eq!(device_index("/dev/sda"), None);
        assert_eq!(device_index("/dev/vdaa"), None);
    }

    #[test]
    fn tags_and_sizes() {
        assert_eq!(parse_tag("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_tag("k").unwrap(), ("k".into(), String::new()));
        assert!(parse_tag("=v").is_err());
        assert_eq!(gib_ceil(1), 1);
        assert_eq!(gib_ceil(GIB), 1);
        assert_eq!(gib_ceil(GIB + 1), 2);
        let t = now_rfc3339();
        assert!(t.ends_with('Z'), "{t}");
    }
}
