//! Instances launched from images (AMIs), and EC2 instance types.
//!
//! An instance is a record in the image store (`records/instances/i-….json`, see
//! [`crate::store::records`]) plus a private directory next to it holding one copy-on-write
//! overlay per block-device mapping (over the image's snapshot, O(1) to create), the console
//! log and `run.lock`:
//!
//! - [`types`]: instance types (vCPUs, memory), compiled in from `data/ec2-instance-types.tsv`.
//! - [`state`]: EC2's instance states and which transitions are allowed.
//! - [`record`]: the instance record, loading/saving it, and noticing dead amivm processes.
//! - [`lock`]: the run lock an instance's amivm process holds while it runs the VM.
//! - [`index`]: every instance record in memory, kept current by the store's stamp, for
//!   `amivm serve`.
//! - [`launch`]: creating an instance and booting it (`amivm run`, `amivm start`).
//! - [`lifecycle`]: stop and terminate.
//! - [`tags`]: instance tags.
//! - [`detach`]: running an instance in a background process (`--detach`, `amivm serve`).
//! - [`create_image`]: a new AMI from an instance's volumes, incremental over its snapshots.
//!
//! Whoever runs the VM holds an flock on `run.lock` for as long as it runs, so any command can
//! tell a live instance from one whose amivm process died (even after the pid is reused): if it
//! can take the lock, the process is gone and the instance is shown as `stopped`, its volumes
//! intact up to the guest's last flush.

pub mod create_image;
pub mod detach;
pub mod dir;
pub mod index;
pub mod jailed;
pub mod launch;
pub mod lifecycle;
pub mod lock;
pub mod metadata;
pub mod network;
pub mod process;
pub mod record;
pub mod ssh;
pub mod state;
pub mod tags;
pub mod types;

pub use record::{Instance, InstanceVolume};
pub use state::{InstanceState, ShutdownBehavior};
pub use types::InstanceType;

use crate::store::StoreError;
use crate::vmm::VmmError;
use crate::volume::VolumeError;
use thiserror::Error;

/// Errors from the instance module.
#[derive(Debug, Error)]
pub enum InstanceError {
    /// `--instance-type` names no known type.
    #[error("unknown instance type '{name}'; closest: {}", closest.join(", "))]
    UnknownType { name: String, closest: Vec<String> },
    /// No such instance (or it belongs to another account).
    #[error("instance {0} not found")]
    NotFound(String),
    /// The instance is not in a state that allows the action.
    #[error("instance {id} is {state}: {why}")]
    WrongState {
        id: String,
        state: InstanceState,
        why: String,
    },
    /// A user-supplied value is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A record or the instance's directory points outside that directory (a `..`, an
    /// absolute path, a symbolic link): refused, nothing touched.
    #[error("refusing to use the instance's files: {0}")]
    Outside(String),
    /// The process a record names is not the one running the instance: not signalled.
    #[error("{0}")]
    NotOurProcess(String),
    /// A background launch ended before the VM ran.
    #[error("instance {id} did not start: {why}")]
    NotStarted { id: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The network could not be set up (passt missing, a published port taken).
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl InstanceError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        InstanceError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result alias for the instance module.
pub type Result<T> = std::result::Result<T, InstanceError>;
