//! [`S3Dir`]: the store's [`ObjectStore`] trait over an S3 bucket, with the `object_store`
//! crate (Apache Arrow's; custom endpoints, path-style requests, multipart uploads and
//! conditional puts, all of which S3-compatible servers speak).
//!
//! Bucket layout (stable; see docs/regions.md), under the region's prefix:
//! ```text
//! chunks/<sha256 hex>          512 KiB volume chunks, immutable
//! blobs/<sha256 hex>           kernels and initrds, immutable
//! snapshots/snap-<id>.json     snapshot manifests
//! images/ami-<id>.json         image manifests
//! ```
//! Concurrency without a lock server: objects are content-addressed and never change;
//! documents are written with conditional puts. A document this process read is replaced
//! only if its ETag still matches (`If-Match`); any other is created only if absent
//! (`If-None-Match: *`). A lost race is [`StoreError::Conflict`].
//!
//! The trait is synchronous; each `S3Dir` owns a small tokio runtime and blocks on it.

use super::config::RegionSpec;
use super::credentials;
use crate::store::backend::{Collection, DocOp, ObjectNs, ObjectReader, ObjectStore};
use crate::store::error::{Result, StoreError};
use crate::store::fsio;
use crate::store::ids::ContentHash;
use crate::store::snapshot::CHUNK_SIZE;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore as _, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Requests retried after a transient failure (connection refused, 5xx): few, so a dead
/// server is reported within seconds rather than object_store's default minutes.
pub const MAX_RETRIES: usize = 2;
/// Give up retrying a request after this long.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait between retries.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Connecting to the server takes at most this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request (a 512 KiB chunk, a manifest, a multipart part) takes at most this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Worker threads of the runtime each region client owns: transfers are I/O-bound.
pub const RUNTIME_THREADS: usize = 4;
/// Blobs larger than this are uploaded in parts (S3's smallest part is 5 MiB; parts of
/// 8 MiB, the AWS CLI's `multipart_chunksize` default).
pub const MULTIPART_THRESHOLD: u64 = 8 << 20;
/// Manifests larger than this are refused: the largest volume (16 TiB) in 512 KiB chunks
/// lists 32 Mi entries of ~80 bytes, ~2.6 GiB; no real manifest comes near, so this bounds
/// what a hostile bucket can make us hold in memory.
pub const MAX_DOC_BYTES: u64 = 256 << 20;

/// A region's bucket as an [`ObjectStore`].
pub struct S3Dir {
    spec: RegionSpec,
    s3: Arc<AmazonS3>,
    rt: tokio::runtime::Runtime,
    /// ETags of the documents this process read: what a later put must match.
    etags: Mutex<HashMap<String, String>>,
    /// Where blobs are downloaded for consumers that need a path (the kernel of `run --region`).
    cache: PathBuf,
}

impl std::fmt::Debug for S3Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Dir").field("region", &self.spec).finish()
    }
}

/// An object's bytes in memory, as an [`ObjectReader`].
pub(super) struct Bytes(pub(super) Vec<u8>);

impl ObjectReader for Bytes {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The sha256 of `data`.
pub fn hash_of(data: &[u8]) -> ContentHash {
    ContentHash::from_digest(Sha256::digest(data))
}

impl S3Dir {
    /// A client for `spec`'s bucket; `cache` is a local directory for downloaded blobs.
    pub fn open(spec: &RegionSpec, cache: &Path) -> Result<S3Dir> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&spec.bucket)
            .with_region(&spec.signing_region)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: RETRY_BACKOFF,
                    max_backoff: RETRY_TIMEOUT,
                    base: 2.0,
                },
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_allow_http(true)
                    // A plain-HTTP endpoint never verifies a certificate: skip loading the
                    // system's trust store (~150 files under /etc/ssl/certs, 10-20 ms of every
                    // command that opens the region, before its first request).
                    .with_no_system_certificates(spec.plain_http()),
            )
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
        if let Some(e) = &spec.endpoint {
            b = b
                .with_endpoint(e)
                .with_virtual_hosted_style_request(!spec.path_style);
        }
        if let Some(c) = credentials::from_profile_file()? {
            b = b
                .with_access_key_id(c.access_key_id)
                .with_secret_access_key(c.secret_access_key);
            if let Some(t) = c.session_token {
                b = b.with_token(t);
            }
        }
        let s3 = b.build().map_err(|e| remote_err(spec, "open", "", e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("amivm-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("start the S3 client runtime", cache, e))?;
        fsio::mkdirs(cache)?;
        Ok(S3Dir {
            spec: spec.clone(),
            s3: Arc::new(s3),
            rt,
            etags: Mutex::new(HashMap::new()),
            cache: cache.to_path_buf(),
        })
    }

    /// The region this client talks to.
    pub fn spec(&self) -> &RegionSpec {
        &self.spec
    }

    /// Run `fut` on this client's runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// The runtime, for work that must not run on the calling thread (see [`super::lazy`]).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// A handle for concurrent transfers (see [`super::transfer`]).
    pub fn client(&self) -> Arc<AmazonS3> {
        self.s3.clone()
    }

    /// Where [`ObjectStore::object_path`] keeps a downloaded object (kernels, initrds).
    pub fn cached_path(&self, ns: ObjectNs, hash: &ContentHash) -> PathBuf {
        self.cache.join(ns.dir()).join(hash.to_hex())
    }

    /// Keep verified bytes of an object at its [`S3Dir::cached_path`] (atomically).
    pub fn keep_cached(&self, ns: ObjectNs, hash: &ContentHash, bytes: &[u8]) -> Result<PathBuf> {
        let dest = self.cached_path(ns, hash);
        fsio::mkdirs(&self.cache.join(ns.dir()))?;
        fsio::write_atomic(&self.cache, &dest, bytes)?;
        Ok(dest)
    }

    /// The key of an object (without the prefix when `prefix` is empty).
    pub fn object_key(&self, ns: ObjectNs, hash: &ContentHash) -> Key {
        self.key(&format!("{}/{}", ns.dir(), hash.to_hex()))
    }

    /// The key of a document (manifest) `id` of collection `c`.
    pub fn doc_key(&self, c: &Collection, id: &str) -> Key {
        self.key(&format!("{}/{id}.json", c.dir()))
    }

    /// Read the document at `key`, remembering its ETag for a conditional update; `None` when
    /// there is none.
    async fn fetch_doc(&self, key: Key) -> Result<Option<Vec<u8>>> {
        let res = async {
            let g = self.s3.get(&key).await?;
            if g.meta.size > MAX_DOC_BYTES {
                return Ok(Err(g.meta.size));
            }
            let etag = g.meta.e_tag.clone();
            let bytes = g.bytes().await?;
            Ok(Ok((etag, bytes)))
        }
        .await;
        match res {
            Ok(Ok((etag, bytes))) => {
                if let Some(t) = etag {
                    if let Ok(mut m) = self.etags.lock() {
                        m.insert(key.to_string(), t);
                    }
                }
                Ok(Some(bytes.to_vec()))
            }
            Ok(Err(size)) => Err(StoreError::corrupt(
                format!("{key} in region {}", self.spec.name),
                format!("it is {size} bytes, more than {MAX_DOC_BYTES}"),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("GET", &key, e)),
        }
    }

    /// The objects under `rel` (a folder under the region's prefix: `locks`, `pins`).
    pub async fn list_under(&self, rel: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let prefix = self.key(rel);
        self.s3
            .list(Some(&prefix))
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.err("LIST", &prefix, e))
    }

    /// The key of `rel` under the region's prefix (locks and pins: [`super::lock`],
    /// [`super::pins`]).
    pub fn rel_key(&self, rel: &str) -> Key {
        self.key(rel)
    }

    /// Delete the object `rel` under the region's prefix; one already gone is fine.
    pub async fn remove_rel(&self, rel: &str) -> Result<()> {
        let key = self.key(rel);
        match self.s3.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("DELETE", &key, e)),
        }
    }

    fn key(&self, rel: &str) -> Key {
        if self.spec.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.spec.prefix))
        }
    }

    /// A failure of `op` on `key`, as one line naming the region.
    pub fn err(&self, op: &str, key: &Key, e: object_store::Error) -> StoreError {
        remote_err(&self.spec, op, key.as_ref(), e)
    }

    /// Fetch an object, check its hash, return its bytes.
    pub fn fetch_verified(&self, ns: ObjectNs, hash: &ContentHash) -> Result<Vec<u8>> {
        let key = self.object_key(ns, hash);
        self.block_on(get_verified(&self.s3, &self.spec, key, *hash, ns))
    }

    /// Upload `bytes` as a document, create-only (for [`super::transfer`]'s manifests).
    /// An existing document with the same bytes is success (`false`); different bytes are a
    /// conflict.
    pub fn create_doc(&self, c: &Collection, id: &str, bytes: &[u8]) -> Result<bool> {
        let key = self.doc_key(c, id);
        let opts = PutOptions::from(PutMode::Create);
        let res = self.block_on(
            self.s3
                .put_opts(&key, PutPayload::from(bytes.to_vec()), opts),
        );
        match res {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => match self.get_doc(c, id)? {
                Some(existing) if existing == bytes => Ok(false),
                _ => Err(StoreError::Conflict(format!(
                    "{} {id} already exists in region {} with different contents",
                    c.dir(),
                    self.spec.name
                ))),
            },
            Err(e) => Err(self.err("PUT", &key, e)),
        }
    }
}

/// The largest object of a kind a download accepts: a chunk is at most [`CHUNK_SIZE`]; a blob
/// at most the largest one an export bundle carries ([`crate::store::bundle::MAX_BLOB_BYTES`]).
/// A bucket holding more under such a key is damaged, and is not read into memory.
pub fn max_object_bytes(ns: ObjectNs) -> u64 {
    match ns {
        ObjectNs::Chunk => CHUNK_SIZE,
        ObjectNs::Blob => crate::store::bundle::MAX_BLOB_BYTES,
    }
}

/// GET an object of kind `ns` and check that its sha256 is `hash`.
pub async fn get_verified(
    s3: &AmazonS3,
    spec: &RegionSpec,
    key: Key,
    hash: ContentHash,
    ns: ObjectNs,
) -> Result<Vec<u8>> {
    let got = match s3.get(&key).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(StoreError::corrupt(
                format!("region {}", spec.name),
                format!("object {key} is missing"),
            ))
        }
        Err(e) => return Err(remote_err(spec, "GET", key.as_ref(), e)),
    };
    if got.meta.size > max_object_bytes(ns) {
        return Err(StoreError::corrupt(
            format!("object {key} in region {}", spec.name),
            format!(
                "it is {} bytes, more than a {} may be",
                got.meta.size,
                ns.dir()
            ),
        ));
    }
    let bytes = got
        .bytes()
        .await
        .map_err(|e| remote_err(spec, "GET", key.as_ref(), e))?;
    let actual = hash_of(&bytes);
    if actual != hash {
        return Err(StoreError::corrupt(
            format!("object {key} in region {}", spec.name),
            format!("its sha256 is {actual}"),
        ));
    }
    Ok(bytes.to_vec())
}

/// A failure talking to a region, as a store error: a missing object is `NotFound`, a failed
/// precondition a `Conflict`, anything else an I/O error naming the request.
pub fn remote_err(spec: &RegionSpec, op: &str, key: &str, e: object_store::Error) -> StoreError {
    let place = format!("{}/{key}", spec.url());
    match e {
        object_store::Error::NotFound { .. } => {
            StoreError::NotFound(format!("{place} not found in region {}", spec.name))
        }
        object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. } => {
            StoreError::Conflict(format!(
                "{place} was changed by someone else in region {} (try again)",
                spec.name
            ))
        }
        other => StoreError::Io {
            what: format!("region {}: {op} {place}", spec.name),
            source: std::io::Error::other(one_line(&other)),
        },
    }
}

/// An error and its sources on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        src = inner.source();
    }
    s.replace('\n', " ")
}

impl ObjectStore for S3Dir {
    fn location(&self) -> String {
        match &self.spec.endpoint {
            Some(e) => format!("{} at {e}", self.spec.url()),
            None => self.spec.url(),
        }
    }

    fn object_exists(&self, ns: ObjectNs, hash: &ContentHash) -> Result<bool> {
        let key = self.object_key(ns, hash);
        match self.block_on(self.s3.head(&key)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("HEAD", &key, e)),
        }
    }

    fn open_object(&self, ns: ObjectNs, hash: &ContentHash) -> Result<Box<dyn ObjectReader>> {
        Ok(Box::new(Bytes(self.fetch_verified(ns, hash)?)))
    }

    fn object_path(&self, ns: ObjectNs, hash: &ContentHash) -> Result<PathBuf> {
        let dest = self.cached_path(ns, hash);
        if dest.is_file() {
            return Ok(dest);
        }
        let bytes = self.fetch_verified(ns, hash)?;
        self.keep_cached(ns, hash, &bytes)
    }

    fn list_objects(&self, ns: ObjectNs) -> Result<Vec<(ContentHash, u64)>> {
        let prefix = self.key(ns.dir());
        let metas: Vec<_> = self
            .block_on(self.s3.list(Some(&prefix)).try_collect::<Vec<_>>())
            .map_err(|e| self.err("LIST", &prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                Some((ContentHash::parse(name).ok()?, m.size))
            })
            .collect())
    }

    fn delete_object(&self, ns: ObjectNs, hash: &ContentHash) -> Result<()> {
        let key = self.object_key(ns, hash);
        self.block_on(self.s3.delete(&key))
            .map_err(|e| self.err("DELETE", &key, e))
    }

    fn put_objects(&self, staged: &[(ObjectNs, ContentHash, PathBuf)]) -> Result<()> {
        let items: Vec<_> = staged
            .iter()
            .map(|(ns, h, p)| super::transfer::Upload {
                key: self.object_key(*ns, h),
                source: super::transfer::UploadSource::File(p.clone()),
            })
            .collect();
        super::transfer::upload_all(self, items, &crate::store::NoProgress).map(|_| ())?;
        for (_, _, p) in staged {
            fsio::remove_if_exists(p)?;
        }
        Ok(())
    }

    fn get_doc(&self, collection: &Collection, id: &str) -> Result<Option<Vec<u8>>> {
        self.block_on(self.fetch_doc(self.doc_key(collection, id)))
    }

    fn get_docs(&self, collection: &Collection, ids: &[String]) -> Vec<Result<Option<Vec<u8>>>> {
        // In order, PARALLEL_REQUESTS at a time: a catalogue of N images is read in about
        // N / PARALLEL_REQUESTS round trips instead of N.
        let reads = ids
            .iter()
            .map(|id| self.fetch_doc(self.doc_key(collection, id)));
        self.block_on(
            futures::stream::iter(reads)
                .buffered(super::transfer::PARALLEL_REQUESTS)
                .collect(),
        )
    }

    fn list_docs(&self, collection: &Collection) -> Result<Vec<String>> {
        let prefix = self.key(&collection.dir());
        let metas: Vec<_> = self
            .block_on(self.s3.list(Some(&prefix)).try_collect::<Vec<_>>())
            .map_err(|e| self.err("LIST", &prefix, e))?;
        let mut ids: Vec<String> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let id = name.strip_suffix(".json")?;
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    .then(|| id.to_string())
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Not atomic across documents (S3 has no transactions): snapshots are written before
    /// images, so an image never names a snapshot that is not there yet. Each put is
    /// conditional (see the module docs).
    fn commit_docs(&self, mut batch: Vec<DocOp>) -> Result<()> {
        let rank = |op: &DocOp| match op {
            DocOp::Put { collection, .. } if *collection == Collection::Images => 1,
            DocOp::Delete { collection, .. } if *collection == Collection::Snapshots => 2,
            _ => 0,
        };
        batch.sort_by_key(rank);
        for op in batch {
            match op {
                DocOp::Put {
                    collection,
                    id,
                    bytes,
                } => {
                    let key = self.doc_key(&collection, &id);
                    let etag = self
                        .etags
                        .lock()
                        .ok()
                        .and_then(|m| m.get(key.as_ref()).cloned());
                    let mode = match etag {
                        Some(e_tag) => PutMode::Update(UpdateVersion {
                            e_tag: Some(e_tag),
                            version: None,
                        }),
                        None => PutMode::Create,
                    };
                    let put = self.block_on(self.s3.put_opts(
                        &key,
                        PutPayload::from(bytes),
                        PutOptions::from(mode),
                    ));
                    match put {
                        Ok(r) => {
                            if let (Some(t), Ok(mut m)) = (r.e_tag, self.etags.lock()) {
                                m.insert(key.to_string(), t);
                            }
                        }
                        Err(e) => return Err(self.err("PUT", &key, e)),
                    }
                }
                DocOp::Delete { collection, id } => {
                    let key = self.doc_key(&collection, &id);
                    match self.block_on(self.s3.delete(&key)) {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(self.err("DELETE", &key, e)),
                    }
                }
            }
        }
        Ok(())
    }

    fn recover(&self) -> Result<()> {
        Ok(())
    }

    fn needs_recovery(&self) -> bool {
        false
    }
}
