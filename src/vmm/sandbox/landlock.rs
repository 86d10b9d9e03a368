//! The VM process's file-system view once the guest runs (Landlock): by then every kernel, initrd,
//! volume, overlay, console log and /dev/kvm is open, so the process needs only what the config
//! lists: read-only trees (the store's chunks, read lazily by snapshot views) and read-write trees
//! (for `amivm run`, the store, where the instance record is committed when the guest ends).

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError,
    RulesetStatus, ABI,
};
use std::path::PathBuf;

/// The newest Landlock ABI amivm asks for; older kernels enforce what they can (best effort).
const LANDLOCK_ABI: ABI = ABI::V5;

/// What Landlock leaves reachable by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsPolicy {
    /// Trees (or files) the process may read.
    pub read_only: Vec<PathBuf>,
    /// Trees the process may read, write, create in and remove from.
    pub read_write: Vec<PathBuf>,
}

/// How far the kernel enforced the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    Fully,
    Partially,
    /// The kernel has no Landlock (or it is disabled).
    Not,
}

/// Restrict the calling thread (and the threads it starts afterwards) to `policy`.
pub fn restrict(policy: &FsPolicy) -> Result<Enforced, RulesetError> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .create()?
        .add_rules(path_beneath_rules(
            &policy.read_only,
            AccessFs::from_read(LANDLOCK_ABI),
        ))?
        .add_rules(path_beneath_rules(
            &policy.read_write,
            AccessFs::from_all(LANDLOCK_ABI),
        ))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partially,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}
