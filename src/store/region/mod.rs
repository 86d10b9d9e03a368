//! Regions: images kept in S3-compatible object storage, shared by many hosts.
//!
//! - [`config`]: the region list (`regions.json` in the store directory) and `s3://` URLs.
//! - [`credentials`]: the shared credentials file (`~/.aws/credentials`).
//! - [`s3`]: [`S3Dir`], the store's [`crate::store::ObjectStore`] trait over a bucket, with
//!   conditional puts for manifests.
//! - [`transfer`]: `image push` and `image pull`.
//!
//! A [`Region`] is a [`Store`] whose backend is the bucket, so listing, showing and sharing
//! work on a region's images with the same code, filters and permission rules as on the
//! local store. Its local state (lock file, staging, a blob cache) lives in
//! `STORE/regions/NAME/`.

pub mod config;
pub mod copy;
pub mod credentials;
pub mod fetcher;
pub mod gc;
pub mod inflight;
pub mod lazy;
pub mod lock;
pub mod pins;
pub mod s3;
pub mod transfer;

pub use config::{RegionSpec, LOCAL_REGION};
pub use s3::S3Dir;
pub use transfer::{PullReport, PushReport};

use super::error::{Result, StoreError};
use super::Store;
use std::sync::Arc;

/// The store's subdirectory holding each region's local state.
pub const REGIONS_DIR: &str = "regions";
/// How many times a merge (share, unshare) is retried after losing a race to another host.
pub const MERGE_RETRIES: usize = 5;

/// An opened region: its bucket as a store.
#[derive(Debug, Clone)]
pub struct Region {
    pub spec: RegionSpec,
    pub s3: Arc<S3Dir>,
    /// The region's images, snapshots and objects through the usual store API.
    pub store: Store,
}

impl Store {
    /// Open the region called `name` (see `amivm region add`).
    pub fn open_region(&self, name: &str) -> Result<Region> {
        let spec = self.region(name)?;
        let state = self.dir().join(REGIONS_DIR).join(&spec.name);
        let s3 = Arc::new(S3Dir::open(&spec, &state.join("cache"))?);
        let store = Store::with_backend(&state, s3.clone())?;
        Ok(Region { spec, s3, store })
    }
}

impl Region {
    /// Run a change that merges into the current manifest (share, unshare), retrying when
    /// another host changed the manifest in between (the conditional put failed).
    pub fn retry_merge<T>(&self, mut f: impl FnMut(&Store) -> Result<T>) -> Result<T> {
        let mut tries = 0;
        loop {
            match f(&self.store) {
                Err(StoreError::Conflict(why)) if tries < MERGE_RETRIES => {
                    tries += 1;
                    log::info!("region {}: {why}; retrying ({tries})", self.spec.name);
                }
                other => return other,
            }
        }
    }
}
