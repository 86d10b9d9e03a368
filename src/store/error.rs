//! The store's error type: one variant per kind of failure, each a one-line message.

use crate::volume::VolumeError;
use std::path::Path;
use thiserror::Error;

/// Errors from the image store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file-system call failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The store directory cannot be created or written.
    #[error("store {path} is not writable: {source}")]
    NotWritable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A manifest or object in the store is damaged.
    #[error("{what} is damaged: {why}")]
    Corrupt { what: String, why: String },
    /// No such image, snapshot or record (or the caller may not see it).
    #[error("{0}")]
    NotFound(String),
    /// A name matches more than one image the caller can see.
    #[error("name '{name}' is ambiguous: it matches {}; use an image id", ids.join(", "))]
    Ambiguous { name: String, ids: Vec<String> },
    /// A user-supplied value is malformed (name, id, account, tag, size...).
    #[error("{0}")]
    Invalid(String),
    /// The caller's account may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The owner already has an image with this name.
    #[error("account {owner} already has an image named '{name}' ({id})")]
    NameTaken {
        owner: String,
        name: String,
        id: String,
    },
    /// Something to be deleted or replaced is still referenced.
    #[error("{0}")]
    InUse(String),
    /// A volume, kernel or initrd source cannot be used.
    #[error("{path}: {why}")]
    Source { path: String, why: String },
    /// An external tool (mkfs.ext4, debugfs) failed or is missing.
    #[error("{tool}: {why}")]
    Tool { tool: String, why: String },
    /// An export bundle is malformed, truncated or fails verification.
    #[error("bundle {path}: {why}")]
    Bundle { path: String, why: String },
    /// The account already has a key pair with this name.
    #[error("account {owner} already has a key pair named '{name}' ({id})")]
    KeyNameTaken {
        owner: String,
        name: String,
        id: String,
    },
    /// A public key is not an OpenSSH ed25519 or rsa key amivm accepts.
    #[error("{0}")]
    BadKey(String),
    /// A quota is reached (key pairs per account).
    #[error("{0}")]
    LimitExceeded(String),
    /// An import would overwrite different data under the same id.
    #[error("{0}")]
    Conflict(String),
    /// A whole disk (`image create --disk`) cannot be made into an image.
    #[error("{path}: {source}")]
    Disk {
        path: String,
        #[source]
        source: super::disk::DiskError,
    },
    /// Reading a block backend failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// An I/O error with the operation and path that failed.
    pub fn io(what: impl std::fmt::Display, path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            what: format!("{what} {}", path.display()),
            source,
        }
    }

    /// A damaged manifest or object.
    pub fn corrupt(what: impl Into<String>, why: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            why: why.into(),
        }
    }

    /// An unusable source file or directory.
    pub fn source(path: &Path, why: impl Into<String>) -> Self {
        StoreError::Source {
            path: path.display().to_string(),
            why: why.into(),
        }
    }
}
