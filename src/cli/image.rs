//! `amivm image ...`, `amivm snapshot ...` and `amivm gc`: the image-store commands.

use super::GlobalOpts;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// List images you own, images shared with you, and public images.
    Ls,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List snapshots.
    Ls,
}

pub fn run_image(_cmd: ImageCmd, _g: &GlobalOpts) -> anyhow::Result<i32> {
    anyhow::bail!("image commands are not implemented yet")
}

pub fn run_snapshot(_cmd: SnapshotCmd, _g: &GlobalOpts) -> anyhow::Result<i32> {
    anyhow::bail!("snapshot commands are not implemented yet")
}

pub fn run_gc(_g: &GlobalOpts) -> anyhow::Result<i32> {
    anyhow::bail!("gc is not implemented yet")
}
