//! `amivm gc --region R`: delete from a region what no image there names any more: chunks
//! and blobs of deregistered images, and snapshot manifests no image names (left by
//! `image rm --region --delete-snapshots` cut short, or a push that died).
//!
//! It runs alone in the region ([`super::lock`]): a push or copy into the region holds a
//! write lock from before its first object check until its manifests are written, so no
//! object that a manifest is about to name can look unused. Every image manifest must read
//! back whole: a damaged one (whose chunks cannot be known) stops gc before anything is
//! deleted. What an instance launched from the region pins ([`super::pins`]) is kept as if an
//! image named it.

use super::lock::{self, LockKind, RegionLock};
use super::pins::{self, Pin};
use super::Region;
use crate::store::backend::{Collection, DocOp, ObjectNs, ObjectStore};
use crate::store::error::{Result, StoreError};
use crate::store::ids::{ContentHash, ImageId, SnapshotId};
use crate::store::manifest::Image;
use crate::store::snapshot::Snapshot;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// Deletes in flight at once (S3 DELETE requests are small: latency-bound).
pub const DELETES_IN_FLIGHT: usize = 16;

/// What `gc --region` removed (or, with `--dry-run`, would remove).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegionGcReport {
    pub region: String,
    pub dry_run: bool,
    pub images: u64,
    /// Instances whose pins kept what they name.
    pub pins: u64,
    /// Those pins: which instance, on which host, since when (a pin whose host is gone for
    /// good is removed by hand, see [`super::pins`]).
    pub pinned_by: Vec<Pin>,
    pub snapshots_removed: u64,
    pub chunks_removed: u64,
    pub chunks_kept: u64,
    pub blobs_removed: u64,
    pub blobs_kept: u64,
    pub bytes_freed: u64,
    pub stale_locks_removed: u64,
}

/// What a region gc deletes, worked out from the manifests and the object listings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Snapshot manifests no image names.
    pub snapshots: Vec<String>,
    /// Chunks and blobs no named snapshot or image uses, with their sizes.
    pub chunks: Vec<(ContentHash, u64)>,
    pub blobs: Vec<(ContentHash, u64)>,
    pub chunks_kept: u64,
    pub blobs_kept: u64,
}

/// The plan for a region whose images are `images`, whose pins are `pins`, whose snapshot
/// manifests are `listed_snapshots` (ids), of which `snapshots` are the ones the images and
/// pins name, read back, and whose objects are `chunks` and `blobs`. An image naming a
/// snapshot missing from `snapshots` is an error: its chunks cannot be known. A pin naming one
/// keeps nothing of it (the manifest is gone, and with it what its chunks were).
pub fn plan(
    images: &[Image],
    pins: &[Pin],
    snapshots: &HashMap<SnapshotId, Snapshot>,
    listed_snapshots: &[String],
    chunks: &[(ContentHash, u64)],
    blobs: &[(ContentHash, u64)],
) -> Result<Plan> {
    let mut named = BTreeSet::new();
    let mut used_chunks = BTreeSet::new();
    let mut used_blobs = BTreeSet::new();
    for img in images {
        used_blobs.extend(img.blobs());
        for sid in img.snapshot_ids() {
            let s = snapshots.get(sid).ok_or_else(|| {
                StoreError::corrupt(
                    format!("image {}", img.image_id),
                    format!("it names snapshot {sid}, which could not be read: nothing removed"),
                )
            })?;
            named.insert(sid.to_string());
            used_chunks.extend(s.chunks.iter().map(|c| c.1));
        }
    }
    for pin in pins {
        used_blobs.extend(pin.blobs.iter().copied());
        for sid in &pin.snapshots {
            if let Some(s) = snapshots.get(sid) {
                named.insert(sid.to_string());
                used_chunks.extend(s.chunks.iter().map(|c| c.1));
            }
        }
    }
    let split = |objects: &[(ContentHash, u64)], used: &BTreeSet<ContentHash>| {
        let (kept, gone): (Vec<_>, Vec<_>) = objects.iter().partition(|(h, _)| used.contains(h));
        (gone, kept.len() as u64)
    };
    let (chunks, chunks_kept) = split(chunks, &used_chunks);
    let (blobs, blobs_kept) = split(blobs, &used_blobs);
    Ok(Plan {
        snapshots: listed_snapshots
            .iter()
            .filter(|id| !named.contains(*id))
            .cloned()
            .collect(),
        chunks,
        blobs,
        chunks_kept,
        blobs_kept,
    })
}

/// `gc --region`: work out the [`Plan`] under a gc lock and, unless `dry_run`, carry it out
/// (stale locks included).
pub fn gc_region(region: &Region, dry_run: bool) -> Result<RegionGcReport> {
    let held = RegionLock::acquire(&region.s3, LockKind::Gc)?;
    let s3 = &region.s3;
    let image_ids = s3
        .list_docs(&Collection::Images)?
        .iter()
        .map(|id| ImageId::parse(id))
        .collect::<Result<Vec<_>>>()?;
    let images = region
        .store
        .images_by_id(&image_ids)
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let pins = pins::list(s3)?;
    let mut named: Vec<SnapshotId> = images
        .iter()
        .flat_map(|i| i.snapshot_ids())
        .chain(pins.iter().flat_map(|p| p.snapshots.iter()))
        .cloned()
        .collect();
    named.sort();
    named.dedup();
    let mut snapshots = HashMap::new();
    for (sid, s) in named.iter().zip(region.store.snapshots_by_id(&named)) {
        match s {
            Ok(s) => {
                snapshots.insert(sid.clone(), s);
            }
            // A missing one is reported by `plan` with the image naming it; any other failure
            // (the server, a damaged manifest) stops gc with its own message.
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let listed = s3.list_docs(&Collection::Snapshots)?;
    let p = plan(
        &images,
        &pins,
        &snapshots,
        &listed,
        &s3.list_objects(ObjectNs::Chunk)?,
        &s3.list_objects(ObjectNs::Blob)?,
    )?;
    // Acquiring succeeded, so every other lock it saw is stale.
    let stale: Vec<String> = held.others.iter().map(|l| l.name.clone()).collect();
    let report = RegionGcReport {
        region: region.spec.name.clone(),
        dry_run,
        images: images.len() as u64,
        pins: pins.len() as u64,
        pinned_by: pins,
        snapshots_removed: p.snapshots.len() as u64,
        chunks_removed: p.chunks.len() as u64,
        chunks_kept: p.chunks_kept,
        blobs_removed: p.blobs.len() as u64,
        blobs_kept: p.blobs_kept,
        bytes_freed: p.chunks.iter().chain(&p.blobs).map(|(_, n)| n).sum(),
        stale_locks_removed: stale.len() as u64,
    };
    if dry_run {
        return Ok(report);
    }
    // Snapshot manifests first: a manifest still in the region means its chunks are too (a
    // new pin relies on it, see super::pins).
    let ops = p
        .snapshots
        .iter()
        .map(|id| DocOp::Delete {
            collection: Collection::Snapshots,
            id: id.clone(),
        })
        .collect();
    s3.commit_docs(ops)?;
    let keys: Vec<_> = p
        .chunks
        .iter()
        .map(|(h, _)| s3.object_key(ObjectNs::Chunk, h))
        .chain(
            p.blobs
                .iter()
                .map(|(h, _)| s3.object_key(ObjectNs::Blob, h)),
        )
        .collect();
    let client = s3.client();
    let failures: Vec<_> = s3.block_on(
        futures::stream::iter(keys)
            .map(|k| {
                let c = client.clone();
                async move { c.delete(&k).await.map_err(|e| (k, e)) }
            })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .filter_map(|r| async move { r.err() })
            .collect(),
    );
    if let Some((k, e)) = failures.into_iter().next() {
        return Err(s3.err("DELETE", &k, e));
    }
    for name in &stale {
        lock::remove(s3, name)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> ContentHash {
        crate::store::region::s3::hash_of(&[n])
    }

    fn image_json(id: &str, snap: &str, kernel: ContentHash) -> Image {
        serde_json::from_value(serde_json::json!({
            "ManifestVersion": crate::store::manifest::MANIFEST_VERSION,
            "ImageId": id, "Name": format!("n-{id}"), "Architecture": "x86_64",
            "OwnerId": "111111111111", "CreationDate": "2026-12-01T00:00:00Z",
            "State": "available", "Public": false, "LaunchPermissions": [],
            "Kernel": {"Blob": kernel.to_hex(), "Size": 1, "Format": "elf"},
            "KernelCommandLine": "", "RootDeviceName": "/dev/vda",
            "BlockDeviceMappings": [{"DeviceName": "/dev/vda", "Ebs": {
                "SnapshotId": snap, "VolumeSize": 1, "DeleteOnTermination": true}}],
        }))
        .expect("an image manifest")
    }

    fn snapshot(id: &str, chunks: &[ContentHash]) -> Snapshot {
        let list: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| serde_json::json!([i, c.to_hex()]))
            .collect();
        serde_json::from_value(serde_json::json!({
            "ManifestVersion": crate::store::manifest::MANIFEST_VERSION,
            "SnapshotId": id, "OwnerId": "111111111111", "StartTime": "2026-12-01T00:00:00Z",
            "State": "completed", "VolumeSize": 1, "SizeBytes": 1u64 << 30,
            "ChunkSize": crate::store::snapshot::CHUNK_SIZE, "DataBytes": 0, "Chunks": list,
        }))
        .expect("a snapshot manifest")
    }

    #[test]
    fn only_what_no_image_names_goes() {
        let (k, k_old) = (h(100), h(101));
        let img = image_json("ami-0000000000000000a", "snap-0000000000000000a", k);
        let snap = snapshot("snap-0000000000000000a", &[h(1), h(2)]);
        let snaps = HashMap::from([(snap.snapshot_id.clone(), snap)]);
        let listed = vec![
            "snap-0000000000000000a".to_string(),
            "snap-0000000000000000b".to_string(),
        ];
        let chunks = [(h(1), 10), (h(2), 20), (h(3), 30)];
        let blobs = [(k, 5), (k_old, 6)];
        let p = plan(&[img], &[], &snaps, &listed, &chunks, &blobs).unwrap();
        assert_eq!(p.snapshots, vec!["snap-0000000000000000b".to_string()]);
        assert_eq!(p.chunks, vec![(h(3), 30)]);
        assert_eq!(p.blobs, vec![(k_old, 6)]);
        assert_eq!((p.chunks_kept, p.blobs_kept), (2, 1));
    }

    #[test]
    fn an_image_whose_snapshot_cannot_be_read_stops_everything() {
        let img = image_json("ami-0000000000000000a", "snap-0000000000000000a", h(100));
        let err = plan(&[img], &[], &HashMap::new(), &[], &[(h(1), 1)], &[]).unwrap_err();
        assert!(err.to_string().contains("nothing removed"), "{err}");
    }

    #[test]
    fn an_empty_region_keeps_nothing_unnamed() {
        let p = plan(
            &[],
            &[],
            &HashMap::new(),
            &["snap-1".into()],
            &[(h(1), 1)],
            &[(h(2), 2)],
        );
        let p = p.unwrap();
        assert_eq!(p.snapshots.len(), 1);
        assert_eq!((p.chunks.len(), p.blobs.len()), (1, 1));
    }

    #[test]
    fn what_a_pin_names_stays_after_its_image_is_gone() {
        let (k, other) = (h(100), h(101));
        let snap = snapshot("snap-0000000000000000a", &[h(1), h(2)]);
        let pin = Pin::new(
            "i-0000000000000000a",
            "ami-0000000000000000a",
            vec![snap.snapshot_id.clone()],
            vec![k],
        );
        // A pin naming a snapshot that is gone keeps nothing of it, and is no error.
        let gone = Pin::new(
            "i-0000000000000000b",
            "ami-0000000000000000b",
            vec![SnapshotId::parse("snap-0000000000000000b").unwrap()],
            vec![],
        );
        let snaps = HashMap::from([(snap.snapshot_id.clone(), snap)]);
        let listed = vec!["snap-0000000000000000a".to_string()];
        let chunks = [(h(1), 10), (h(2), 20), (h(3), 30)];
        let blobs = [(k, 5), (other, 6)];
        let p = plan(&[], &[pin, gone], &snaps, &listed, &chunks, &blobs).unwrap();
        assert!(p.snapshots.is_empty(), "{:?}", p.snapshots);
        assert_eq!(p.chunks, vec![(h(3), 30)]);
        assert_eq!(p.blobs, vec![(other, 6)]);
    }
}
