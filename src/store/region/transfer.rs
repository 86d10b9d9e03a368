//! Moving images between the local store and a region: `image push` and `image pull`.
//!
//! Push uploads what the region lacks (a HEAD per object, [`PARALLEL_REQUESTS`] at a time,
//! multipart for blobs over [`super::s3::MULTIPART_THRESHOLD`]), then the snapshot manifests,
//! then the image manifest, each create-only: a push cut short leaves only unreferenced
//! objects, never a partial image, and the next push completes it.
//!
//! Pull downloads what the local store lacks, checks every object's sha256, and commits the
//! objects and manifests in one local transaction: a damaged or missing object fails the pull
//! with the local store unchanged.

use super::lock::{LockKind, RegionLock};
use super::s3::{get_verified, S3Dir, MULTIPART_THRESHOLD};
use super::Region;
use crate::store::accounts::require_owner;
use crate::store::backend::{Collection, ObjectNs, ObjectStore as _};
use crate::store::error::{Result, StoreError};
use crate::store::ids::{ContentHash, SnapshotId};
use crate::store::manifest::Image;
use crate::store::snapshot::Snapshot;
use crate::store::txn::to_json;
use crate::store::{fsio, AccountId, Progress, Store};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

/// Requests in flight at once during a push or pull: enough to hide the round-trip time of
/// one request, few enough not to swamp a small server (the AWS CLI's default
/// `max_concurrent_requests` is 10).
pub const PARALLEL_REQUESTS: usize = 16;
/// Objects fetched per batch during a pull: bounds the memory a pull holds
/// (64 × 512 KiB = 32 MiB of chunks) before they are staged on disk.
pub const PULL_BATCH: usize = 64;
/// Part size of multipart uploads (the AWS CLI's `multipart_chunksize` default).
pub const PART_SIZE: usize = 8 << 20;

/// Where an upload's bytes come from.
#[derive(Debug, Clone)]
pub enum UploadSource {
    /// A local file (an object of the local store).
    File(PathBuf),
    /// An object of another region: copied server side when both regions are in one bucket
    /// ([`super::config::RegionSpec::same_bucket`]), else fetched, checked against its hash and
    /// uploaded.
    Region {
        from: Arc<S3Dir>,
        ns: ObjectNs,
        hash: ContentHash,
    },
}

/// One object to upload unless the region has it.
#[derive(Debug, Clone)]
pub struct Upload {
    pub key: Key,
    pub source: UploadSource,
}

/// What an upload pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadCounts {
    /// Objects checked.
    pub checked: u64,
    /// Objects uploaded (the region lacked them).
    pub uploaded: u64,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// Upload every item the region lacks, [`PARALLEL_REQUESTS`] at a time.
pub fn upload_all(
    region: &S3Dir,
    items: Vec<Upload>,
    progress: &dyn Progress,
) -> Result<UploadCounts> {
    let s3 = region.client();
    let spec = region.spec().clone();
    let sem = Arc::new(Semaphore::new(PARALLEL_REQUESTS));
    progress.start("upload", items.len() as u64);
    let res = region.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for item in items {
            let (s3, spec, sem) = (s3.clone(), spec.clone(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                match s3.head(&item.key).await {
                    Ok(_) => return Ok((false, 0u64)),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(super::s3::remote_err(&spec, "HEAD", item.key.as_ref(), e))
                    }
                }
                let up = match &item.source {
                    UploadSource::File(path) => upload_file(&s3, &item.key, path).await,
                    UploadSource::Region { from, ns, hash } if from.spec().same_bucket(&spec) => {
                        // Same bucket: CopyObject, the bytes never leave the service.
                        let key = from.object_key(*ns, hash);
                        let copied = async {
                            let size = s3.head(&key).await?.size;
                            s3.copy(&key, &item.key).await.map(|()| size)
                        };
                        copied.await.map_err(UpErr::Remote)
                    }
                    UploadSource::Region { from, ns, hash } => {
                        let key = from.object_key(*ns, hash);
                        match get_verified(&from.client(), from.spec(), key, *hash, *ns).await {
                            Ok(bytes) => {
                                let len = bytes.len() as u64;
                                s3.put(&item.key, PutPayload::from(bytes))
                                    .await
                                    .map(|_| len)
                                    .map_err(UpErr::Remote)
                            }
                            Err(e) => Err(UpErr::Local(e)),
                        }
                    }
                };
                let len = up.map_err(|e| match e {
                    UpErr::Local(e) => e,
                    UpErr::Remote(e) => super::s3::remote_err(&spec, "PUT", item.key.as_ref(), e),
                })?;
                Ok((true, len))
            });
        }
        let mut counts = UploadCounts::default();
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            progress.advance(1);
            match joined {
                Ok(Ok((up, len))) => {
                    counts.checked += 1;
                    if up {
                        counts.uploaded += 1;
                        counts.bytes += len;
                    }
                }
                Ok(Err(e)) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                        // Stop the rest: the push is failing anyway.
                        set.abort_all();
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    first_err.get_or_insert(StoreError::Invalid(format!("upload task: {e}")));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(counts),
        }
    });
    progress.finish();
    res
}

enum UpErr {
    Local(StoreError),
    Remote(object_store::Error),
}

/// Upload one file: one PUT, or a multipart upload when it is large.
async fn upload_file(
    s3: &object_store::aws::AmazonS3,
    key: &Key,
    path: &std::path::Path,
) -> std::result::Result<u64, UpErr> {
    let local = |e| UpErr::Local(StoreError::io("read", path, e));
    let mut f = tokio::fs::File::open(path).await.map_err(local)?;
    let len = f.metadata().await.map_err(local)?.len();
    if len <= MULTIPART_THRESHOLD {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf).await.map_err(local)?;
        s3.put(key, PutPayload::from(buf))
            .await
            .map_err(UpErr::Remote)?;
        return Ok(len);
    }
    let up = s3.put_multipart(key).await.map_err(UpErr::Remote)?;
    let mut w = WriteMultipart::new_with_chunk_size(up, PART_SIZE);
    let mut buf = vec![0u8; PART_SIZE];
    loop {
        let n = f.read(&mut buf).await.map_err(local)?;
        if n == 0 {
            break;
        }
        w.wait_for_capacity(2).await.map_err(UpErr::Remote)?;
        w.write(&buf[..n]);
    }
    w.finish().await.map_err(UpErr::Remote)?;
    Ok(len)
}

/// What `image push` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PushReport {
    pub image_id: String,
    pub region: String,
    /// Distinct chunks the image's snapshots use.
    pub chunks: u64,
    /// Chunks uploaded (the region lacked them).
    pub chunks_uploaded: u64,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    /// The image manifest was already in the region.
    pub already_there: bool,
}

/// What `image pull` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PullReport {
    pub image_id: String,
    pub region: String,
    pub chunks: u64,
    /// Chunks downloaded (the local store lacked them).
    pub chunks_fetched: u64,
    pub blobs_fetched: u64,
    pub bytes_fetched: u64,
    /// The image was already in the local store.
    pub already_there: bool,
}

/// The distinct chunks of some snapshots.
fn chunk_set(snaps: &[Snapshot]) -> BTreeSet<ContentHash> {
    snaps
        .iter()
        .flat_map(|s| s.chunks.iter().map(|c| c.1))
        .collect()
}

/// Whether two manifests describe the same image data (kernel, initrd, command line,
/// volumes): permissions, tags and descriptions may differ between copies of one image.
fn same_data(a: &Image, b: &Image) -> bool {
    a.kernel.blob.blob == b.kernel.blob.blob
        && a.initrd.as_ref().map(|i| i.blob) == b.initrd.as_ref().map(|i| i.blob)
        && a.kernel_command_line == b.kernel_command_line
        && a.block_device_mappings == b.block_device_mappings
        && a.owner_id == b.owner_id
}

/// `image push`: make the local image `image` (owned by `caller`) available in `region`.
pub fn push_image(
    local: &Store,
    region: &Region,
    caller: &AccountId,
    image: &Image,
    progress: &dyn Progress,
) -> Result<PushReport> {
    require_owner(caller, image, "push")?;
    let mut report = PushReport {
        image_id: image.image_id.to_string(),
        region: region.spec.name.clone(),
        ..Default::default()
    };
    match region.store.image(&image.image_id) {
        Ok(there) if same_data(&there, image) => report.already_there = true,
        Ok(_) => {
            return Err(StoreError::Conflict(format!(
                "region {} already holds a different image {}",
                region.spec.name, image.image_id
            )))
        }
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    // Hold gc off the local objects while they are read, and `gc --region` off the region's
    // until the manifests that name them are written.
    let _gc = local.gc_shared_lock()?;
    let _region_gc = RegionLock::acquire(&region.s3, LockKind::Write)?;
    let snaps: Vec<Snapshot> = image
        .snapshot_ids()
        .map(|id| local.snapshot(id))
        .collect::<Result<_>>()?;
    let chunks = chunk_set(&snaps);
    report.chunks = chunks.len() as u64;
    let layout = local.layout();
    let file = |ns: ObjectNs, h: &ContentHash| Upload {
        key: region.s3.object_key(ns, h),
        source: UploadSource::File(layout.object(ns.dir(), &h.to_hex())),
    };
    let blobs: Vec<Upload> = image
        .blobs()
        .iter()
        .map(|h| file(ObjectNs::Blob, h))
        .collect();
    let b = upload_all(&region.s3, blobs, &crate::store::NoProgress)?;
    report.blobs_uploaded = b.uploaded;
    let items: Vec<Upload> = chunks.iter().map(|h| file(ObjectNs::Chunk, h)).collect();
    let c = upload_all(&region.s3, items, progress)?;
    report.chunks_uploaded = c.uploaded;
    report.bytes_uploaded = b.bytes + c.bytes;
    // Manifests last: the image becomes visible only when everything it names is there.
    for s in &snaps {
        region
            .s3
            .create_doc(&Collection::Snapshots, s.snapshot_id.as_str(), &to_json(s)?)?;
    }
    if !report.already_there {
        region.s3.create_doc(
            &Collection::Images,
            image.image_id.as_str(),
            &to_json(image)?,
        )?;
    }
    Ok(report)
}

/// `image pull`: copy the region's image `ami` (id or name, visible to `caller`) into the
/// local store.
pub fn pull_image(
    local: &Store,
    region: &Region,
    caller: &AccountId,
    ami: &str,
    progress: &dyn Progress,
) -> Result<PullReport> {
    let image = region.store.resolve_image(caller, ami)?;
    let mut report = PullReport {
        image_id: image.image_id.to_string(),
        region: region.spec.name.clone(),
        ..Default::default()
    };
    if local.image(&image.image_id).is_ok() {
        report.already_there = true;
        return Ok(report);
    }
    let snaps: Vec<Snapshot> = image
        .snapshot_ids()
        .map(|id| region.store.snapshot(id))
        .collect::<Result<_>>()?;
    let mut txn = local.begin()?;
    stage_missing(
        local,
        region,
        &snaps,
        &image.blobs(),
        &mut txn,
        &mut report,
        progress,
    )?;
    txn.put_image(&image)?;
    txn.commit(|s| s.check_import(&image, &snaps))?;
    Ok(report)
}

/// Stage in `txn` what the local store lacks of the snapshots `snaps` (manifests and chunks)
/// and of `blobs`, downloaded from the region and checked. An object the local store already
/// has must be in the region too (a manifest naming a hash the region does not hold must not
/// hand out local data).
fn stage_missing(
    local: &Store,
    region: &Region,
    snaps: &[Snapshot],
    blobs: &[ContentHash],
    txn: &mut crate::store::Txn<'_>,
    report: &mut PullReport,
    progress: &dyn Progress,
) -> Result<()> {
    for s in snaps {
        s.validate_new()?;
    }
    let chunks = chunk_set(snaps);
    report.chunks = chunks.len() as u64;
    let mut wanted: Vec<(ObjectNs, ContentHash)> =
        blobs.iter().map(|b| (ObjectNs::Blob, *b)).collect();
    wanted.extend(chunks.iter().map(|h| (ObjectNs::Chunk, *h)));
    let mut missing = Vec::new();
    for (ns, h) in wanted {
        if local.backend().object_exists(ns, &h)? {
            if !region.s3.object_exists(ns, &h)? {
                return Err(StoreError::corrupt(
                    format!("region {}", region.spec.name),
                    format!("{} {h} is missing", ns.dir()),
                ));
            }
        } else {
            missing.push((ns, h));
        }
    }
    progress.start("download", missing.len() as u64);
    for batch in missing.chunks(PULL_BATCH) {
        let got = fetch_batch(&region.s3, batch)?;
        for ((ns, h), bytes) in batch.iter().zip(got) {
            report.bytes_fetched += bytes.len() as u64;
            match ns {
                ObjectNs::Chunk => {
                    txn.put_chunk(h, &bytes)?;
                    report.chunks_fetched += 1;
                }
                ObjectNs::Blob => {
                    let p = fsio::write_temp(txn.scratch_dir(), "blob", &bytes)?;
                    txn.put_verified_object(ObjectNs::Blob, h, p)?;
                    report.blobs_fetched += 1;
                }
            }
            progress.advance(1);
        }
    }
    progress.finish();
    for s in snaps {
        if !local.has_snapshot(&s.snapshot_id)? {
            txn.put_snapshot(s)?;
        }
    }
    Ok(())
}

/// Make the local store hold the region's snapshots `ids` whole (manifests and every chunk)
/// and the blobs `blobs`, all checked: what an instance launched from the region (of image
/// `image_id`) needs before its volumes can become an image of the local store. A snapshot the
/// local store has is whole already.
pub fn pull_snapshots(
    local: &Store,
    region: &Region,
    image_id: &str,
    ids: &[SnapshotId],
    blobs: &[ContentHash],
    progress: &dyn Progress,
) -> Result<PullReport> {
    let mut report = PullReport {
        image_id: image_id.to_string(),
        region: region.spec.name.clone(),
        ..Default::default()
    };
    let mut snaps = Vec::new();
    for id in ids {
        if !local.has_snapshot(id)? {
            snaps.push(region.store.snapshot(id)?);
        }
    }
    let mut txn = local.begin()?;
    stage_missing(
        local,
        region,
        &snaps,
        blobs,
        &mut txn,
        &mut report,
        progress,
    )?;
    txn.commit(|_| Ok(()))?;
    Ok(report)
}

/// Download and verify `batch`, [`PARALLEL_REQUESTS`] at a time, in order.
pub fn fetch_batch(region: &S3Dir, batch: &[(ObjectNs, ContentHash)]) -> Result<Vec<Vec<u8>>> {
    let s3 = region.client();
    let spec = region.spec().clone();
    let sem = Arc::new(Semaphore::new(PARALLEL_REQUESTS));
    region.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, (ns, h)) in batch.iter().enumerate() {
            let (s3, spec, sem) = (s3.clone(), spec.clone(), sem.clone());
            let key = region.object_key(*ns, h);
            let (h, ns) = (*h, *ns);
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                get_verified(&s3, &spec, key, h, ns).await.map(|b| (i, b))
            });
        }
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); batch.len()];
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok((i, b))) => out[i] = b,
                Ok(Err(e)) => {
                    set.abort_all();
                    return Err(e);
                }
                Err(e) => return Err(StoreError::Invalid(format!("download task: {e}"))),
            }
        }
        Ok(out)
    })
}
