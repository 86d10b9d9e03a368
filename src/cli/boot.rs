//! `amivm boot`: boot a kernel directly.

#[derive(Debug, clap::Args)]
pub struct BootArgs {}

pub fn run(_args: BootArgs) -> anyhow::Result<i32> {
    anyhow::bail!("boot is not implemented yet")
}
