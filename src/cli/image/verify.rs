//! `amivm store verify`: re-hash every chunk and blob of the store and report damage.

use super::progress::Bar;
use super::render::human;
use crate::cli::exit::STORE_DAMAGED;
use crate::cli::output::{print_json, store_dir};
use crate::cli::{GlobalOpts, OutputFormat};
use crate::store::verify::Damage;
use crate::store::Store;
use clap::Subcommand;

/// Exit codes of `store verify`, shown in its `--help`.
const VERIFY_EXIT_HELP: &str = "\
Exit codes:
  0    nothing is damaged
  1    damage was found (listed on stdout, one line each, with what it affects)
  125  the check could not run (no store, unreadable directory)";

#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Scrub the store: re-hash every chunk and blob, check every manifest, and list damaged or
    /// missing objects with the snapshots, images and instances they affect. Only reads.
    #[command(after_help = VERIFY_EXIT_HELP)]
    Verify,
}

/// `victims` as `snap-…, ami-…, instances/i-…`, or `nothing`.
fn affects(d: &Damage) -> String {
    let v: Vec<String> = d
        .snapshots
        .iter()
        .map(|s| s.to_string())
        .chain(d.images.iter().map(|i| i.to_string()))
        .chain(d.records.iter().cloned())
        .collect();
    if v.is_empty() {
        "nothing (gc would remove it)".into()
    } else {
        v.join(", ")
    }
}

pub fn run_store(cmd: StoreCmd, g: &GlobalOpts) -> anyhow::Result<i32> {
    match cmd {
        StoreCmd::Verify => {
            // The scrub needs no account: none is created or asked for.
            let store = Store::open_read_only(&store_dir(g)?)?;
            let r = store.verify(&Bar::stderr())?;
            if g.output == OutputFormat::Json {
                print_json(&r)?;
            } else {
                println!(
                    "checked {} snapshots, {} images, {} chunks ({}), {} blobs ({})",
                    r.snapshots_checked,
                    r.images_checked,
                    r.chunks_checked,
                    human(r.chunk_bytes_checked),
                    r.blobs_checked,
                    human(r.blob_bytes_checked)
                );
                for d in &r.damaged {
                    println!(
                        "damaged {} {}: {}; affects {}",
                        d.kind,
                        crate::text::escape_unsafe(&d.id),
                        crate::text::escape_unsafe(&d.problem),
                        affects(d)
                    );
                }
            }
            if r.is_clean() {
                return Ok(0);
            }
            let (snaps, images) = r.affected();
            eprintln!(
                "amivm: store verify: {} damaged (affecting {} snapshots, {} images)",
                r.damaged.len(),
                snaps.len(),
                images.len()
            );
            Ok(STORE_DAMAGED)
        }
    }
}
