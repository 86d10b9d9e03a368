//! `amivm region add/ls/rm`, and `image push/pull`: images in S3-compatible object storage.

use super::image::progress::Bar;
use super::output::{open_store, print_json, print_out, table};
use super::{GlobalOpts, OutputFormat};
use crate::store::region::lock::{LockKind, RegionLock};
use crate::store::region::pins;
use crate::store::region::{Region, RegionSpec, LOCAL_REGION};
use crate::store::Store;
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::HashMap;

#[derive(Debug, Subcommand)]
pub enum RegionCmd {
    /// Add a region: an S3 bucket (and key prefix) that holds images. Credentials come from
    /// the environment (AWS_ACCESS_KEY_ID...) or ~/.aws/credentials (AWS_PROFILE).
    Add {
        /// Region name (letters, digits, - and _; not "local").
        name: String,
        /// Where: s3://BUCKET[/PREFIX].
        #[arg(value_name = "s3://BUCKET[/PREFIX]")]
        url: String,
        /// An S3-compatible server (http://127.0.0.1:9000), instead of Amazon S3.
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// Path-style requests (ENDPOINT/BUCKET/KEY), as most S3-compatible servers want.
        #[arg(long)]
        path_style: bool,
        /// The AWS region requests are signed for [default: us-east-1].
        #[arg(long = "region", value_name = "R")]
        signing_region: Option<String>,
    },
    /// List regions.
    Ls,
    /// Forget a region (the bucket and what it holds are left alone).
    Rm { name: String },
    /// Remove the pins of instances whose host is gone for good, so that `gc --region` may
    /// remove what they kept (`gc --region --dry-run` lists every pin with its host). An
    /// instance that still exists somewhere loses that protection: this host's own instances
    /// are refused (terminate them instead).
    Unpin {
        /// Region name.
        name: String,
        /// The instances whose pins go.
        #[arg(required = true, value_name = "INSTANCE-ID")]
        instances: Vec<String>,
    },
}

pub fn run(cmd: RegionCmd, g: &GlobalOpts) -> anyhow::Result<i32> {
    let (store, _) = open_store(g)?;
    let json = g.output == OutputFormat::Json;
    match cmd {
        RegionCmd::Add {
            name,
            url,
            endpoint,
            path_style,
            signing_region,
        } => {
            let spec = RegionSpec::new(
                &name,
                &url,
                endpoint.as_deref(),
                path_style,
                signing_region.as_deref(),
            )?;
            store.add_region(spec.clone())?;
            if json {
                print_json(&spec)?;
            } else {
                println!("{name}");
            }
        }
        RegionCmd::Ls => {
            let regions = store.regions()?;
            if json {
                print_json(&regions)?;
            } else {
                let mut rows = vec![vec![
                    LOCAL_REGION.to_string(),
                    store.dir().display().to_string(),
                    "-".into(),
                    "-".into(),
                ]];
                rows.extend(regions.iter().map(|r| {
                    vec![
                        r.name.clone(),
                        r.url(),
                        r.endpoint.clone().unwrap_or_else(|| "-".into()),
                        if r.path_style { "path" } else { "virtual-host" }.into(),
                    ]
                }));
                print_out(&table(&["NAME", "WHERE", "ENDPOINT", "STYLE"], &rows))?;
            }
        }
        RegionCmd::Unpin { name, instances } => {
            for id in &instances {
                if let Some(i) = crate::instance::record::get(&store, id)? {
                    if i.state != crate::instance::InstanceState::Terminated {
                        anyhow::bail!(
                            "instance {id} is on this host ({}): terminate it instead, which removes its pin",
                            i.state
                        );
                    }
                }
            }
            let r = store.open_region(&name)?;
            let gone = pins::unpin_gone(&r.s3, &instances)?;
            if json {
                print_json(&json!({ "Region": name, "Unpinned": gone }))?;
            } else {
                for p in &gone {
                    println!(
                        "unpinned instance {} of {} (on {} since {})",
                        p.instance_id, p.image_id, p.host, p.created
                    );
                }
            }
        }
        RegionCmd::Rm { name } => {
            let r = store.remove_region(&name)?;
            if json {
                print_json(&json!({ "Name": r.name, "Removed": true }))?;
            } else {
                println!("removed {}", r.name);
            }
        }
    }
    Ok(0)
}

/// The store a command with `--region R` works on: the region's, or the local one for no
/// region or `local`.
pub fn target(local: &Store, region: Option<&str>) -> anyhow::Result<(Store, Option<Region>)> {
    match region {
        None | Some(LOCAL_REGION) => Ok((local.clone(), None)),
        Some(name) => {
            let r = local.open_region(name)?;
            Ok((r.store.clone(), Some(r)))
        }
    }
}

/// `image push AMI --region R`.
pub fn push(
    local: &Store,
    caller: &crate::store::AccountId,
    ami: &str,
    region: &str,
    json: bool,
) -> anyhow::Result<()> {
    let r = local.open_region(region)?;
    let img = local.resolve_image(caller, ami)?;
    let rep = crate::store::region::transfer::push_image(local, &r, caller, &img, &Bar::stderr())?;
    if json {
        print_json(&rep)?;
    } else {
        println!(
            "{}: pushed to {}: {} of {} chunks uploaded, {} blobs, {} bytes{}",
            rep.image_id,
            rep.region,
            rep.chunks_uploaded,
            rep.chunks,
            rep.blobs_uploaded,
            rep.bytes_uploaded,
            if rep.already_there {
                " (the image was already there)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `image pull AMI --region R`.
pub fn pull(
    local: &Store,
    caller: &crate::store::AccountId,
    ami: &str,
    region: &str,
    json: bool,
) -> anyhow::Result<()> {
    let r = local.open_region(region)?;
    let rep = crate::store::region::transfer::pull_image(local, &r, caller, ami, &Bar::stderr())?;
    if json {
        print_json(&rep)?;
    } else {
        println!(
            "{}: pulled from {}: {} of {} chunks downloaded, {} blobs, {} bytes{}",
            rep.image_id,
            rep.region,
            rep.chunks_fetched,
            rep.chunks,
            rep.blobs_fetched,
            rep.bytes_fetched,
            if rep.already_there {
                " (the image was already here)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Run a merging change (share, unshare) on the local store, or on a region's, where a lost
/// race with another host is retried ([`Region::retry_merge`]).
pub fn merge<T>(
    local: &Store,
    region: Option<&str>,
    f: impl FnMut(&Store) -> crate::store::Result<T>,
) -> anyhow::Result<T> {
    let mut f = f;
    Ok(match target(local, region)? {
        (_, Some(r)) => r.retry_merge(f)?,
        (s, None) => f(&s)?,
    })
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Collect a region instead of the local store. It runs alone there: while it does,
    /// pushes and copies into the region refuse, and it refuses while they run.
    #[arg(long, value_name = "R")]
    pub region: Option<String>,
    /// With --region: report what would be removed, remove nothing.
    #[arg(long, requires = "region")]
    pub dry_run: bool,
}

/// `gc --region R [--dry-run]`.
pub fn run_gc(args: GcArgs, g: &GlobalOpts) -> anyhow::Result<i32> {
    let (local, _) = open_store(g)?;
    let name = args.region.as_deref().unwrap_or(LOCAL_REGION);
    let r = local.open_region(name)?;
    let rep = crate::store::region::gc::gc_region(&r, args.dry_run)?;
    if g.output == OutputFormat::Json {
        print_json(&rep)?;
    } else {
        println!(
            "region {}: {} {} chunks, {} blobs, {} snapshot manifests ({}), {} stale locks; kept {} chunks, {} blobs of {} images and {} instances' pins",
            rep.region,
            if rep.dry_run { "would remove" } else { "removed" },
            rep.chunks_removed,
            rep.blobs_removed,
            rep.snapshots_removed,
            super::image::render::human(rep.bytes_freed),
            rep.stale_locks_removed,
            rep.chunks_kept,
            rep.blobs_kept,
            rep.images,
            rep.pins
        );
        for p in &rep.pinned_by {
            println!(
                "  pinned by instance {} on {} (image {}, since {})",
                p.instance_id, p.host, p.image_id, p.created
            );
        }
    }
    Ok(0)
}

/// `image rm AMI [--region R] [--delete-snapshots]`: the image's id and what was removed.
pub fn deregister(
    local: &Store,
    caller: &crate::store::AccountId,
    ami: &str,
    region: Option<&str>,
    delete_snapshots: bool,
) -> anyhow::Result<(
    crate::store::ImageId,
    crate::store::images::DeregisterReport,
)> {
    let (store, r) = target(local, region)?;
    // Deleting a region's snapshot manifests runs alone there, as gc does: a push naming the
    // same snapshot cannot be between its check and its manifest.
    let _alone = match (&r, delete_snapshots) {
        (Some(r), true) => Some(RegionLock::acquire(&r.s3, LockKind::Gc)?),
        _ => None,
    };
    // Snapshots that instances launched from the region still read stay (see pins).
    let pinned: HashMap<_, _> = match (&r, delete_snapshots) {
        (Some(r), true) => pins::list(&r.s3)?
            .into_iter()
            .flat_map(|p| {
                let by = format!("instance {} on {}", p.instance_id, p.host);
                p.snapshots.into_iter().map(move |s| (s, by.clone()))
            })
            .collect(),
        _ => HashMap::new(),
    };
    let rm = |s: &Store| {
        let id = s.resolve_image(caller, ami)?.image_id;
        let report = s.deregister_image_keeping(caller, &id, delete_snapshots, &pinned)?;
        Ok((id, report))
    };
    Ok(match &r {
        Some(r) => r.retry_merge(rm)?,
        None => rm(&store)?,
    })
}
