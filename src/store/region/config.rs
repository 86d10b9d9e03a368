//! Regions: named S3 (or S3-compatible) buckets that hold images, kept in the store's
//! `regions.json`. Pure logic: parsing `s3://` URLs, checking names, reading and writing the
//! file. Opening a region's bucket is [`super::s3`]'s work.

use crate::store::error::{Result, StoreError};
use crate::store::fsio;
use crate::store::Store;
use serde::{Deserialize, Serialize};

/// The file, in the store directory, that lists the regions.
pub const REGIONS_FILE: &str = "regions.json";
/// Version of `regions.json`.
const REGIONS_VERSION: u32 = 1;
/// The local store's own region name: never a remote region.
pub const LOCAL_REGION: &str = "local";
/// Region names: at most this many characters (EC2 region names such as
/// `ap-southeast-2` are 14; room to spare).
pub const REGION_NAME_MAX_LEN: usize = 63;
/// S3 bucket names: 3 to 63 characters (Amazon S3 "Bucket naming rules").
pub const BUCKET_NAME_MIN_LEN: usize = 3;
/// See [`BUCKET_NAME_MIN_LEN`].
pub const BUCKET_NAME_MAX_LEN: usize = 63;
/// The AWS region used to sign requests when none is given (the AWS SDKs' global default).
pub const DEFAULT_SIGNING_REGION: &str = "us-east-1";

/// One region: where its bucket is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegionSpec {
    pub name: String,
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; empty for the root.
    #[serde(default)]
    pub prefix: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); `None` for Amazon S3.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`) instead of virtual-hosted ones.
    #[serde(default)]
    pub path_style: bool,
    /// The AWS region requests are signed for.
    #[serde(default = "default_signing_region")]
    pub signing_region: String,
}

fn default_signing_region() -> String {
    DEFAULT_SIGNING_REGION.to_string()
}

impl RegionSpec {
    /// Whether requests go to a plain-HTTP endpoint (an S3-compatible server on a local
    /// network or loopback), where no TLS certificate is ever checked.
    pub fn plain_http(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    }

    /// Whether `other` is a region in the same bucket of the same service (another prefix, or
    /// the same): objects can then be copied server side (S3 CopyObject) instead of through
    /// this host.
    pub fn same_bucket(&self, other: &RegionSpec) -> bool {
        self.bucket == other.bucket
            && self.endpoint == other.endpoint
            && self.signing_region == other.signing_region
    }

    /// A region from the words of `region add`.
    pub fn new(
        name: &str,
        url: &str,
        endpoint: Option<&str>,
        path_style: bool,
        signing_region: Option<&str>,
    ) -> Result<RegionSpec> {
        check_region_name(name)?;
        let (bucket, prefix) = parse_s3_url(url)?;
        if let Some(e) = endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                return Err(StoreError::Invalid(format!(
                    "--endpoint '{e}' is not an http:// or https:// URL"
                )));
            }
        }
        let signing_region = signing_region.unwrap_or(DEFAULT_SIGNING_REGION);
        if signing_region.is_empty()
            || !signing_region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(StoreError::Invalid(format!(
                "--region '{signing_region}' is not an AWS region name (like us-east-1)"
            )));
        }
        Ok(RegionSpec {
            name: name.to_string(),
            bucket,
            prefix,
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            path_style,
            signing_region: signing_region.to_string(),
        })
    }

    /// `s3://BUCKET[/PREFIX]`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Region names: letters, digits, `-` and `_`, not `local`.
pub fn check_region_name(name: &str) -> Result<()> {
    if name == LOCAL_REGION {
        return Err(StoreError::Invalid(format!(
            "'{LOCAL_REGION}' is the local store's region; choose another name"
        )));
    }
    if name.is_empty()
        || name.len() > REGION_NAME_MAX_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(StoreError::Invalid(format!(
            "region name '{}' must be 1-{REGION_NAME_MAX_LEN} letters, digits, - or _",
            crate::text::escape_unsafe(name)
        )));
    }
    Ok(())
}

/// Split `s3://BUCKET[/PREFIX]` into the bucket and the prefix (no leading or trailing `/`).
pub fn parse_s3_url(url: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        StoreError::Invalid(format!(
            "'{}' is not s3://BUCKET[/PREFIX]: {why}",
            crate::text::escape_unsafe(url)
        ))
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it must start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.len() < BUCKET_NAME_MIN_LEN
        || bucket.len() > BUCKET_NAME_MAX_LEN
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(bad(&format!(
            "a bucket name is {BUCKET_NAME_MIN_LEN}-{BUCKET_NAME_MAX_LEN} lowercase letters, digits, - or ."
        )));
    }
    let prefix = prefix.trim_matches('/');
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(bad("the prefix may not hold . or .. parts"));
        }
        if part.bytes().any(|b| b.is_ascii_control() || b == b'\\') {
            return Err(bad("the prefix may not hold control characters or \\"));
        }
    }
    if prefix.split('/').any(str::is_empty) && !prefix.is_empty() {
        return Err(bad("the prefix may not hold //"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// The contents of `regions.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegionsFile {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub regions: Vec<RegionSpec>,
}

impl Store {
    fn regions_path(&self) -> std::path::PathBuf {
        self.dir().join(REGIONS_FILE)
    }

    /// The regions this store knows, by name.
    pub fn regions(&self) -> Result<Vec<RegionSpec>> {
        Ok(
            fsio::read_versioned_json::<RegionsFile>(&self.regions_path(), REGIONS_VERSION)?
                .map(|f| f.regions)
                .unwrap_or_default(),
        )
    }

    /// One region by name.
    pub fn region(&self, name: &str) -> Result<RegionSpec> {
        self.regions()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no region named '{}' (see amivm region ls)",
                    crate::text::escape_unsafe(name)
                ))
            })
    }

    /// Add a region; its name must be new.
    pub fn add_region(&self, spec: RegionSpec) -> Result<()> {
        self.change_regions(|v| {
            if v.iter().any(|r| r.name == spec.name) {
                return Err(StoreError::Conflict(format!(
                    "region '{}' already exists (amivm region rm it first)",
                    spec.name
                )));
            }
            v.push(spec);
            v.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(())
        })
    }

    /// Forget a region (its bucket is left as it is).
    pub fn remove_region(&self, name: &str) -> Result<RegionSpec> {
        let mut removed = None;
        self.change_regions(|v| {
            let pos = v.iter().position(|r| r.name == name).ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no region named '{}'",
                    crate::text::escape_unsafe(name)
                ))
            })?;
            removed = Some(v.remove(pos));
            Ok(())
        })?;
        removed.ok_or_else(|| StoreError::NotFound(format!("no region named '{name}'")))
    }

    fn change_regions(&self, f: impl FnOnce(&mut Vec<RegionSpec>) -> Result<()>) -> Result<()> {
        let _lock = self.lock()?;
        let mut regions = self.regions()?;
        f(&mut regions)?;
        let file = RegionsFile {
            version: REGIONS_VERSION,
            regions,
        };
        fsio::write_private_json(&self.layout().tmp(), &self.regions_path(), &file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        assert_eq!(
            parse_s3_url("s3://amis").unwrap(),
            ("amis".into(), "".into())
        );
        assert_eq!(
            parse_s3_url("s3://my.bucket-1/a/b/").unwrap(),
            ("my.bucket-1".into(), "a/b".into())
        );
        for bad in [
            "amis",
            "s3://",
            "s3://ab",
            "s3://UPPER",
            "s3://b_b_b",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
            "s3://bucket/a\n",
            "http://bucket",
        ] {
            assert!(parse_s3_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_specs() {
        assert!(check_region_name("eu-west-1").is_ok());
        assert!(check_region_name("local").is_err());
        assert!(check_region_name("").is_err());
        assert!(check_region_name("a b").is_err());
        let s =
            RegionSpec::new("r1", "s3://amis/p", Some("http://127.0.0.1:9/"), true, None).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(s.signing_region, DEFAULT_SIGNING_REGION);
        assert_eq!(s.url(), "s3://amis/p");
        assert!(RegionSpec::new("r1", "s3://amis", Some("ftp://x"), false, None).is_err());
        assert!(RegionSpec::new("r1", "s3://amis", None, false, Some("US EAST")).is_err());
    }

    #[test]
    fn regions_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.regions().unwrap().is_empty());
        let s = RegionSpec::new("r1", "s3://amis", None, false, Some("eu-west-1")).unwrap();
        store.add_region(s.clone()).unwrap();
        assert!(matches!(
            store.add_region(s.clone()),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.region("r1").unwrap(), s);
        assert_eq!(store.remove_region("r1").unwrap(), s);
        assert!(store.region("r1").is_err());
        assert!(store.remove_region("r1").is_err());
    }
}
