//! `image copy --source-region R1 --region R2`: a new image (new id, new snapshot ids, owned
//! by the caller) in another region, sharing the source's chunks; what the target lacks is
//! transferred first, checked against its hash, and the manifests are written last.

use super::lock::{LockKind, RegionLock};
use super::transfer::{fetch_batch, upload_all, Upload, UploadSource, PULL_BATCH};
use super::Region;
use crate::store::accounts::can_see;
use crate::store::backend::ObjectNs;
use crate::store::error::{Result, StoreError};
use crate::store::ids::ContentHash;
use crate::store::manifest::{self, Image};
use crate::store::snapshot::Snapshot;
use crate::store::{fsio, AccountId, Progress, Store};
use std::collections::BTreeSet;

/// One end of a copy: the local store (`region` is `None`) or a region.
pub struct End<'a> {
    pub store: &'a Store,
    pub region: Option<&'a Region>,
}

/// Copy `src` (visible to `caller`, in `from`) to `to` as a new image called `name`.
pub fn copy_between(
    from: End<'_>,
    to: End<'_>,
    caller: &AccountId,
    src: &Image,
    name: &str,
    description: Option<&str>,
    progress: &dyn Progress,
) -> Result<Image> {
    if !can_see(caller, src) {
        return Err(StoreError::NotFound(format!(
            "image {} not found",
            src.image_id
        )));
    }
    manifest::validate_name(name)?;
    to.store.check_name_free(caller, name, None)?;
    let snaps: Vec<Snapshot> = src
        .snapshot_ids()
        .map(|id| from.store.snapshot(id))
        .collect::<Result<_>>()?;
    let mut objects: BTreeSet<(ObjectNs, ContentHash)> = src
        .blobs()
        .into_iter()
        .map(|b| (ObjectNs::Blob, b))
        .collect();
    objects.extend(
        snaps
            .iter()
            .flat_map(|s| s.chunks.iter().map(|c| (ObjectNs::Chunk, c.1))),
    );
    let _gc = from.store.gc_shared_lock()?;
    // `gc --region` stays off the target region until the new manifests are written.
    let _region_gc = match to.region {
        Some(r) => Some(RegionLock::acquire(&r.s3, LockKind::Write)?),
        None => None,
    };
    let mut txn = to.store.begin()?;
    match (from.region, to.region) {
        (_, Some(dst)) => {
            let items = objects
                .iter()
                .map(|(ns, h)| Upload {
                    key: dst.s3.object_key(*ns, h),
                    source: match from.region {
                        Some(r) => UploadSource::Region {
                            from: r.s3.clone(),
                            ns: *ns,
                            hash: *h,
                        },
                        None => {
                            UploadSource::File(from.store.layout().object(ns.dir(), &h.to_hex()))
                        }
                    },
                })
                .collect();
            upload_all(&dst.s3, items, progress)?;
        }
        (Some(srcr), None) => {
            let mut missing = Vec::new();
            for (ns, h) in &objects {
                if !to.store.backend().object_exists(*ns, h)? {
                    missing.push((*ns, *h));
                }
            }
            progress.start("download", missing.len() as u64);
            for batch in missing.chunks(PULL_BATCH) {
                for ((ns, h), bytes) in batch.iter().zip(fetch_batch(&srcr.s3, batch)?) {
                    match ns {
                        ObjectNs::Chunk => txn.put_chunk(h, &bytes)?,
                        ObjectNs::Blob => {
                            let p = fsio::write_temp(txn.scratch_dir(), "blob", &bytes)?;
                            txn.put_verified_object(ObjectNs::Blob, h, p)?;
                        }
                    }
                    progress.advance(1);
                }
            }
            progress.finish();
        }
        (None, None) => {
            return Err(StoreError::Invalid(
                "source and target are both the local store: use image copy without regions".into(),
            ))
        }
    }
    let mut mappings = Vec::new();
    for (m, s) in src.block_device_mappings.iter().zip(&snaps) {
        let desc = format!(
            "Copied for {name} from {} ({})",
            s.snapshot_id, src.image_id
        );
        let copy = txn.stage_snapshot(caller, s.size_bytes, s.chunks.clone(), None, &desc)?;
        let mut m = m.clone();
        m.ebs.snapshot_id = copy.snapshot_id;
        mappings.push(m);
    }
    let desc = description.unwrap_or(&src.description);
    let image = to
        .store
        .image_from_snapshots(caller, name, desc, src, mappings)?;
    txn.put_image(&image)?;
    txn.commit(|s| s.check_name_free(caller, name, None))?;
    Ok(image)
}
