//! Accounts and permissions: who the caller is, and what they may see and do.
//!
//! - An image is **visible** to its owner, to accounts in its launch permissions, and to
//!   everyone when public. Visible images can be listed, shown, copied, exported and launched.
//! - Only the **owner** may share, unshare, modify or deregister an image.
//! - A snapshot is visible to its owner and to whoever can see an image that uses it.
//!
//! An image the caller cannot see is reported as not found, as EC2 does.

use super::error::{Result, StoreError};
use super::fsio;
use super::ids::AccountId;
use super::layout::ENV_ACCOUNT;
use super::manifest::Image;
use super::snapshot::Snapshot;
use super::Store;
use serde::{Deserialize, Serialize};

/// Version of `config.json`.
const CONFIG_VERSION: u32 = 1;

/// The store's `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoreConfig {
    pub version: u32,
    /// The account used when neither `--account` nor `AMIVM_ACCOUNT` is given.
    pub account_id: AccountId,
}

impl Store {
    /// The store's own account, created (and kept in `config.json`) on first use.
    pub fn store_account(&self) -> Result<AccountId> {
        let path = self.layout().config();
        if let Some(cfg) = self.read_config()? {
            return Ok(cfg.account_id);
        }
        if self.is_read_only() {
            return Err(StoreError::Invalid(format!(
                "store {} has no account of its own yet (it is opened read-only): give --account",
                self.dir().display()
            )));
        }
        let _lock = self.lock()?;
        if let Some(cfg) = self.read_config()? {
            return Ok(cfg.account_id);
        }
        let cfg = StoreConfig {
            version: CONFIG_VERSION,
            account_id: AccountId::generate(),
        };
        fsio::write_private_json(&self.layout().tmp(), &path, &cfg)?;
        Ok(cfg.account_id)
    }

    fn read_config(&self) -> Result<Option<StoreConfig>> {
        fsio::read_versioned_json(&self.layout().config(), CONFIG_VERSION)
    }

    /// The caller's account: `explicit` (from `--account`), else `$AMIVM_ACCOUNT`, else the
    /// store's own account.
    pub fn resolve_account(&self, explicit: Option<&str>) -> Result<AccountId> {
        if let Some(a) = explicit {
            return AccountId::parse(a);
        }
        match std::env::var(ENV_ACCOUNT) {
            Ok(a) if !a.is_empty() => {
                AccountId::parse(&a).map_err(|e| StoreError::Invalid(format!("{ENV_ACCOUNT}: {e}")))
            }
            _ => self.store_account(),
        }
    }

    /// Refuse unless `caller` may launch (own, be granted, or see a public) `image`.
    pub fn check_launch_permission(&self, caller: &AccountId, image: &Image) -> Result<()> {
        if can_see(caller, image) {
            Ok(())
        } else {
            Err(StoreError::PermissionDenied(format!(
                "account {caller} has no launch permission for image {}",
                image.image_id
            )))
        }
    }
}

/// Whether `caller` may see (and launch) `image`.
pub fn can_see(caller: &AccountId, image: &Image) -> bool {
    image.owner_id == *caller || image.public || image.launch_permissions.contains(caller)
}

/// Refuse unless `caller` owns `image`; `action` completes "only the owner can …".
pub fn require_owner(caller: &AccountId, image: &Image, action: &str) -> Result<()> {
    if image.owner_id == *caller {
        Ok(())
    } else {
        Err(StoreError::PermissionDenied(format!(
            "image {} belongs to account {}: only its owner can {action} it",
            image.image_id, image.owner_id
        )))
    }
}

/// Whether `caller` may see `snap`, given every image in the store.
pub fn can_see_snapshot(caller: &AccountId, snap: &Snapshot, images: &[Image]) -> bool {
    snap.owner_id == *caller
        || images
            .iter()
            .any(|i| can_see(caller, i) && i.snapshot_ids().any(|s| *s == snap.snapshot_id))
}
