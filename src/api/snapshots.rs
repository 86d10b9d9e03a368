//! Snapshot actions: DescribeSnapshots, DeleteSnapshot.

use super::dispatch::Ctx;
use super::errors::{self, from_store, ApiError, Resource};
use super::images::{account, ec2_time};
use super::params::page;
use super::xml::Xml;
use crate::store::manifest::GIB;
use crate::store::{AccountId, Snapshot, SnapshotId};
use std::collections::BTreeSet;

/// DescribeSnapshots' MaxResults range (EC2 API Reference).
const SNAPSHOTS_MAX_RESULTS: (i64, i64) = (5, 1000);

fn snapshot_matches(s: &Snapshot, name: &str, values: &[String]) -> Result<bool, ApiError> {
    let any = |t: &str| {
        values
            .iter()
            .any(|v| crate::store::filter::glob_match(v, t))
    };
    Ok(match name {
        "snapshot-id" => any(s.snapshot_id.as_str()),
        "owner-id" => any(s.owner_id.as_str()),
        "description" => any(&s.description),
        "status" => any(snapshot_status(s)),
        "volume-size" => any(&s.volume_size.to_string()),
        "start-time" => any(&ec2_time(&s.start_time)),
        _ => {
            return Err(ApiError::invalid(format!("The filter '{name}' is invalid")));
        }
    })
}

fn snapshot_status(s: &Snapshot) -> &'static str {
    match s.state {
        crate::store::SnapshotState::Pending => "pending",
        crate::store::SnapshotState::Completed => "completed",
        crate::store::SnapshotState::Error => "error",
    }
}

pub fn describe_snapshots(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let p = ctx.params;
    let ids = p.list("SnapshotId")?;
    let owners = p.list("Owner")?;
    let restorable = p.list("RestorableBy")?;
    let filters = p.filters()?;
    let max = p.int(
        "MaxResults",
        SNAPSHOTS_MAX_RESULTS.0,
        SNAPSHOTS_MAX_RESULTS.1,
    )?;
    if max.is_some() && !ids.is_empty() {
        return Err(ApiError::new(
            errors::INVALID_PARAMETER_COMBINATION,
            "The parameter SnapshotIds cannot be used with the parameter MaxResults",
        ));
    }
    let mut snaps = ctx
        .api
        .store
        .list_snapshots(&ctx.caller)
        .map_err(|e| from_store(e, Resource::Snapshot))?;
    if !ids.is_empty() {
        let mut want = BTreeSet::new();
        for id in &ids {
            let sid = SnapshotId::parse(id).map_err(|_| {
                ApiError::new(
                    errors::INVALID_SNAPSHOT_ID_MALFORMED,
                    format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
                )
            })?;
            if !snaps.iter().any(|s| s.snapshot_id == sid) {
                return Err(ApiError::new(
                    errors::INVALID_SNAPSHOT_NOT_FOUND,
                    format!("The snapshot '{id}' does not exist."),
                ));
            }
            want.insert(sid);
        }
        snaps.retain(|s| want.contains(&s.snapshot_id));
    }
    let mut owner_ids = Vec::new();
    for o in &owners {
        owner_ids.push(if o == "self" {
            ctx.caller.clone()
        } else {
            account(o)?
        });
    }
    if !restorable.is_empty() {
        // Everything listed is restorable by the caller; other accounts' views are not known
        // here beyond ownership.
        let r: Vec<AccountId> = restorable
            .iter()
            .map(|r| {
                if r == "self" {
                    Ok(ctx.caller.clone())
                } else {
                    account(r)
                }
            })
            .collect::<Result<_, _>>()?;
        snaps.retain(|s| r.iter().any(|a| *a == ctx.caller || *a == s.owner_id));
    }
    let mut kept = Vec::new();
    for s in snaps {
        if !owner_ids.is_empty() && !owner_ids.contains(&s.owner_id) {
            continue;
        }
        let mut ok = true;
        for (name, values) in &filters {
            ok &= snapshot_matches(&s, name, values)?;
        }
        if ok {
            kept.push(s);
        }
    }
    kept.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
    let (kept, next) = page(kept, |s| s.snapshot_id.as_str(), p.get("NextToken"), max)?;
    x.list("snapshotSet", &kept, |x, s| {
        x.leaf("snapshotId", s.snapshot_id.as_str())
            .leaf("volumeId", "vol-ffffffff")
            .leaf("status", snapshot_status(s))
            .leaf("startTime", &ec2_time(&s.start_time))
            .leaf("progress", "100%")
            .leaf("ownerId", s.owner_id.as_str())
            .num("volumeSize", s.size_bytes.div_ceil(GIB).max(1))
            .leaf("description", &s.description)
            .bool("encrypted", false)
            .leaf("storageTier", "standard");
    });
    x.leaf_opt("nextToken", next.as_deref());
    Ok(())
}

pub fn delete_snapshot(ctx: &Ctx, x: &mut Xml) -> Result<(), ApiError> {
    let id = ctx.params.required("SnapshotId")?;
    let sid = SnapshotId::parse(id).map_err(|_| {
        ApiError::new(
            errors::INVALID_SNAPSHOT_ID_MALFORMED,
            format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
        )
    })?;
    let store = &ctx.api.store;
    let snap = store
        .resolve_snapshot(&ctx.caller, sid.as_str())
        .map_err(|e| match e {
            crate::store::StoreError::NotFound(_) => ApiError::new(
                errors::INVALID_SNAPSHOT_NOT_FOUND,
                format!("The snapshot '{id}' does not exist."),
            ),
            e => from_store(e, Resource::Snapshot),
        })?;
    store
        .delete_snapshot(&ctx.caller, &snap.snapshot_id)
        .map_err(|e| from_store(e, Resource::Snapshot))?;
    x.bool("return", true);
    Ok(())
}
