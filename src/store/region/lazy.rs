//! [`LazyRegion`]: the local store with a region behind it, for `amivm run AMI --region R`.
//!
//! Everything is local (records, overlays, commits) except what the local store lacks:
//! image and snapshot manifests are read from the region, and a chunk or blob that is not
//! local is fetched on first use, checked against its sha256, and kept in the local chunk
//! store (so a second boot reads it locally). After fetching a chunk, the next
//! [`READ_AHEAD`] chunks of the same volume are fetched in the background.
//!
//! Latency before the guest's first console line: a launch says what it will read first
//! ([`ObjectStore::prefetch`]: its snapshot manifests, kernel and initrd) as soon as it has
//! the image manifest, and all of it is fetched at once while the launch makes the instance
//! and the VM (no HEAD first); once the kernel is in and a volume's manifest read, its first
//! [`BOOT_PREFETCH`] chunks. A reader of a manifest or an object that is on its way waits for
//! that fetch ([`super::inflight::InFlight`]), and a chunk's bytes reach the guest before they
//! are written to the local store.
//!
//! The VMM's threads run under a seccomp filter without network system calls, and a device
//! thread must never block for long: a chunk read on such a thread is handed to the region
//! client's runtime (threads started before the sandbox) and waited for at most
//! [`FETCH_TIMEOUT`]. A missing, damaged or late chunk is an I/O error for that read and a
//! logged event, never a hang.

use super::fetcher::Fetcher;
use super::inflight::{InFlight, Slot};
use super::s3::S3Dir;
use crate::store::backend::{Collection, DocOp, LocalDir, ObjectNs, ObjectReader, ObjectStore};
use crate::store::error::{Result, StoreError};
use crate::store::ids::{ContentHash, SnapshotId};
use crate::store::layout::Layout;
use crate::store::snapshot::Snapshot;
use crate::sync::relock;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chunks fetched ahead after a chunk the guest read: 2 MiB, a few sequential reads' worth.
pub const READ_AHEAD: usize = 4;
/// Chunks of a volume fetched before the guest asks, once its manifest is read and the
/// kernel is in: the first 512 KiB (MBR or GPT, boot sector), which every boot reads first.
/// More would compete with the VM's start for the server and the CPUs: with 5 (the first
/// chunk and its read-ahead), scripts/bench-region.sh measured the first console line 20 ms
/// later than with 1. The read-ahead after the guest's first miss covers what follows.
pub const BOOT_PREFETCH: usize = 1;
/// The longest a read waits for a chunk from the region before it fails with an I/O error:
/// under Linux's 30 s block-request timeout (blk-mq's default `BLK_DEFAULT_SG_TIMEOUT`,
/// which virtio-blk keeps) and the test guest's ~10 s, so the guest sees an error, not a
/// stuck request; a 512 KiB GET takes milliseconds on a working server.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(8);

/// A job for the [`Worker`].
type Job = Box<dyn FnOnce() + Send>;

/// A manifest fetched ahead of its reader: `None` when that fetch failed (the reader then asks
/// the region itself, and gets the error it would have got without the prefetch).
type DocFetch = Option<Arc<Option<Vec<u8>>>>;

/// A thread started with the region, before the VM process sandboxes itself (seccomp filters
/// and Landlock apply to the threads that install them and the threads those start): the
/// region's requests that a sandboxed thread needs (manifests, existence checks) run here.
struct Worker {
    tx: Mutex<std::sync::mpsc::Sender<Job>>,
}

impl Worker {
    fn start() -> Result<Worker> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("amivm-region".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| StoreError::io("start the region thread", std::path::Path::new("-"), e))?;
        Ok(Worker { tx: Mutex::new(tx) })
    }

    /// Run `job` on the worker without waiting for it.
    fn submit(&self, job: Job) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(job);
        }
    }

    /// Run `f` on the worker and wait for its result at most [`FETCH_TIMEOUT`].
    fn run<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let sent = self.tx.lock().map(|t| t.send(job).is_ok()).unwrap_or(false);
        let timed_out = || StoreError::Io {
            what: what.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        };
        if !sent {
            return Err(timed_out());
        }
        rx.recv_timeout(FETCH_TIMEOUT).map_err(|_| timed_out())?
    }
}

/// The local store, backed by a region for what it lacks.
pub struct LazyRegion {
    worker: Worker,
    local: Arc<LocalDir>,
    layout: Layout,
    remote: Arc<S3Dir>,
    /// For each chunk, the chunks that follow it in some volume (read-ahead).
    next: Mutex<HashMap<ContentHash, Vec<ContentHash>>>,
    /// The downloads: chunks read, read ahead or prefetched, and blobs fetched early.
    fetcher: Fetcher,
    /// The kernels and initrds being fetched early, which the boot's first chunks wait for.
    early_blobs: Mutex<Vec<Arc<Slot>>>,
    /// Manifests read from the region by this process (by `collection/id`), read once: a launch
    /// reads an image's snapshot manifests several times (checks, volumes, the record's
    /// references), each a round trip otherwise.
    docs: Mutex<HashMap<String, Option<Vec<u8>>>>,
    /// Manifests on their way ahead of their readers ([`ObjectStore::prefetch`]).
    docs_in_flight: InFlight<String, DocFetch>,
    /// Objects the region was seen to hold (content-addressed: they never change).
    present: Mutex<HashSet<(ObjectNs, ContentHash)>>,
}

impl std::fmt::Debug for LazyRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyRegion")
            .field("local", &self.layout.root())
            .field("region", &self.remote.spec().name)
            .finish()
    }
}

impl LazyRegion {
    pub fn new(layout: &Layout, remote: Arc<S3Dir>) -> Result<LazyRegion> {
        let local = Arc::new(LocalDir::new(layout.clone()));
        Ok(LazyRegion {
            worker: Worker::start()?,
            local: local.clone(),
            layout: layout.clone(),
            remote: remote.clone(),
            next: Mutex::new(HashMap::new()),
            fetcher: Fetcher::new(local, layout, remote),
            early_blobs: Mutex::new(Vec::new()),
            docs: Mutex::new(HashMap::new()),
            present: Mutex::new(HashSet::new()),
            docs_in_flight: InFlight::default(),
        })
    }

    /// The region behind the local store.
    pub fn remote(&self) -> Arc<S3Dir> {
        self.remote.clone()
    }

    /// Chunks fetched from the region so far.
    pub fn fetched(&self) -> u64 {
        self.fetcher.fetched()
    }

    /// Learn a volume's chunk order, for read-ahead, and start fetching its first
    /// [`BOOT_PREFETCH`] chunks.
    pub fn learn(&self, snap: &Snapshot) {
        {
            let mut next = relock(&self.next);
            for (i, c) in snap.chunks.iter().enumerate() {
                let after: Vec<ContentHash> = snap
                    .chunks
                    .iter()
                    .skip(i + 1)
                    .take(READ_AHEAD)
                    .map(|c| c.1)
                    .collect();
                next.entry(c.1).or_insert(after);
            }
        }
        let first = snap
            .chunks
            .iter()
            .take(BOOT_PREFETCH)
            .map(|c| c.1)
            .collect();
        let kernels = std::mem::take(&mut *relock(&self.early_blobs));
        self.fetcher.start_after(kernels, first);
    }

    /// Start fetching the blobs (kernel, initrd) that are neither local nor cached; the first
    /// chunks of the volumes wait for them ([`LazyRegion::learn`]).
    fn prefetch_blobs(&self, blobs: &[ContentHash]) {
        for h in blobs {
            if !self.remote.cached_path(ObjectNs::Blob, h).is_file()
                && !self.local.object_exists(ObjectNs::Blob, h).unwrap_or(true)
            {
                let slot = self.fetcher.start(ObjectNs::Blob, h);
                relock(&self.early_blobs).push(slot);
            }
        }
    }

    /// Start fetching a snapshot manifest on the worker, unless it is local, read already or
    /// on its way.
    fn prefetch_snapshot(&self, id: &SnapshotId) {
        if self
            .known_doc(&Collection::Snapshots, id.as_str())
            .is_some()
        {
            return;
        }
        let memo = memo_key(&Collection::Snapshots, id.as_str());
        let (slot, mine) = self.docs_in_flight.claim(&memo);
        if !mine {
            return;
        }
        let (remote, i) = (self.remote.clone(), id.to_string());
        log::debug!("region: GET Snapshots {i} (ahead of its reader)");
        self.worker.submit(Box::new(move || {
            let got = remote
                .get_doc(&Collection::Snapshots, &i)
                .ok()
                .map(Arc::new);
            slot.fill(got);
        }));
    }

    /// A manifest answered without the region: the local store's, or one this process read
    /// from the region already; `None` when the region must be asked (only for image and
    /// snapshot manifests).
    fn known_doc(&self, collection: &Collection, id: &str) -> Option<Result<Option<Vec<u8>>>> {
        match self.local.get_doc(collection, id) {
            Ok(None) if remote_docs(collection) => relock(&self.docs)
                .get(&memo_key(collection, id))
                .cloned()
                .map(Ok),
            other => Some(other),
        }
    }

    /// A manifest fetched ahead of this reader, once it is in; `None` when none was, or that
    /// fetch failed or is late.
    fn prefetched_doc(&self, memo: &String) -> Option<Option<Vec<u8>>> {
        let slot = self.docs_in_flight.get(memo)?;
        let got = slot.wait(FETCH_TIMEOUT).flatten();
        self.docs_in_flight.finish(memo);
        got.map(|d| d.as_ref().clone())
    }

    /// Keep a manifest read from the region for the rest of this process, and learn a
    /// snapshot's chunk order.
    fn remember(&self, collection: &Collection, memo: String, doc: &Option<Vec<u8>>) {
        relock(&self.docs).insert(memo, doc.clone());
        if let (Collection::Snapshots, Some(bytes)) = (collection, doc) {
            if let Ok(s) = serde_json::from_slice::<Snapshot>(bytes) {
                self.learn(&s);
            }
        }
    }

    /// Start fetching the chunks after `hash` that are neither local nor on their way.
    fn read_ahead(&self, hash: &ContentHash) {
        let after = relock(&self.next).get(hash).cloned().unwrap_or_default();
        for h in after {
            self.fetcher.start_if_absent(ObjectNs::Chunk, &h);
        }
    }

    /// Fetch one object for a reader, and (a chunk) start reading ahead of it.
    fn fetch(&self, ns: ObjectNs, hash: &ContentHash) -> Result<Vec<u8>> {
        let slot = self.fetcher.start(ns, hash);
        if ns == ObjectNs::Chunk {
            self.read_ahead(hash);
        }
        let res = self.fetcher.wait(&slot, ns, hash);
        match &res {
            Ok(_) => log::info!(
                "fetched {} {hash} from region {}",
                ns.dir(),
                self.remote.spec().name
            ),
            Err(e) => log::error!("lazy read of {} {hash}: {e}", ns.dir()),
        }
        res
    }

    /// A blob on its way into the region's cache: its cached file once it arrived; `None`
    /// when no fetch of it is under way or that fetch failed (the caller asks the region).
    fn early_blob(&self, hash: &ContentHash) -> Option<PathBuf> {
        let slot = self.fetcher.pending(ObjectNs::Blob, hash)?;
        self.fetcher.wait(&slot, ObjectNs::Blob, hash).ok()?;
        Some(self.remote.cached_path(ObjectNs::Blob, hash))
    }
}

/// The key of a manifest in [`LazyRegion`]'s memo.
fn memo_key(collection: &Collection, id: &str) -> String {
    format!("{collection:?}/{id}")
}

/// Manifests come from the region when the local store lacks them.
fn remote_docs(c: &Collection) -> bool {
    matches!(c, Collection::Images | Collection::Snapshots)
}

impl ObjectStore for LazyRegion {
    fn location(&self) -> String {
        format!(
            "{} (and region {})",
            self.local.location(),
            self.remote.spec().name
        )
    }

    fn object_exists(&self, ns: ObjectNs, hash: &ContentHash) -> Result<bool> {
        if self.local.object_exists(ns, hash)? {
            return Ok(true);
        }
        if relock(&self.present).contains(&(ns, *hash)) {
            return Ok(true);
        }
        if ns == ObjectNs::Blob
            && (self.remote.cached_path(ns, hash).is_file() || self.early_blob(hash).is_some())
        {
            return Ok(true);
        }
        let (remote, h) = (self.remote.clone(), *hash);
        log::debug!("region: HEAD {ns:?} {h}");
        let there = self
            .worker
            .run("region: HEAD", move || remote.object_exists(ns, &h))?;
        if there {
            relock(&self.present).insert((ns, *hash));
        }
        Ok(there)
    }

    fn open_object(&self, ns: ObjectNs, hash: &ContentHash) -> Result<Box<dyn ObjectReader>> {
        if self.local.object_exists(ns, hash)? {
            return self.local.open_object(ns, hash);
        }
        Ok(Box::new(super::s3::Bytes(self.fetch(ns, hash)?)))
    }

    fn object_path(&self, ns: ObjectNs, hash: &ContentHash) -> Result<PathBuf> {
        if self.local.object_exists(ns, hash)? {
            return self.local.object_path(ns, hash);
        }
        // Kernels and initrds: needed whole before the VM starts, kept in the region's cache.
        if let Some(p) = self.early_blob(hash) {
            return Ok(p);
        }
        let (remote, h) = (self.remote.clone(), *hash);
        log::debug!("region: GET {ns:?} {h}");
        self.worker
            .run("region: GET", move || remote.object_path(ns, &h))
    }

    fn list_objects(&self, ns: ObjectNs) -> Result<Vec<(ContentHash, u64)>> {
        self.local.list_objects(ns)
    }

    fn delete_object(&self, ns: ObjectNs, hash: &ContentHash) -> Result<()> {
        self.local.delete_object(ns, hash)
    }

    fn put_objects(&self, staged: &[(ObjectNs, ContentHash, PathBuf)]) -> Result<()> {
        self.local.put_objects(staged)
    }

    fn get_doc(&self, collection: &Collection, id: &str) -> Result<Option<Vec<u8>>> {
        if let Some(known) = self.known_doc(collection, id) {
            return known;
        }
        let memo = memo_key(collection, id);
        let doc = match self.prefetched_doc(&memo) {
            Some(doc) => doc,
            None => {
                let (remote, c, i) = (self.remote.clone(), collection.clone(), id.to_string());
                log::debug!("region: GET {c:?} {i}");
                self.worker
                    .run("region: GET", move || remote.get_doc(&c, &i))?
            }
        };
        self.remember(collection, memo, &doc);
        Ok(doc)
    }

    fn get_docs(&self, collection: &Collection, ids: &[String]) -> Vec<Result<Option<Vec<u8>>>> {
        // Local or read before: answered here; the rest from the region, concurrently. On the
        // calling thread, not the worker (whose wait is bounded by one fetch's): listing a
        // catalogue happens before a VM exists, never on its sandboxed threads.
        let mut known: Vec<Option<Result<Option<Vec<u8>>>>> = ids
            .iter()
            .map(|id| self.known_doc(collection, id))
            .collect();
        let missing: Vec<String> = ids
            .iter()
            .zip(&known)
            .filter(|(_, k)| k.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        if !missing.is_empty() {
            log::debug!("region: GET {collection:?} x{}", missing.len());
            let mut fetched = missing
                .iter()
                .zip(self.remote.get_docs(collection, &missing));
            for k in known.iter_mut().filter(|k| k.is_none()) {
                if let Some((id, doc)) = fetched.next() {
                    if let Ok(d) = &doc {
                        self.remember(collection, memo_key(collection, id), d);
                    }
                    *k = Some(doc);
                }
            }
        }
        known.into_iter().map(|k| k.unwrap_or(Ok(None))).collect()
    }

    fn prefetch(&self, snapshots: &[SnapshotId], blobs: &[ContentHash]) {
        self.prefetch_blobs(blobs);
        for id in snapshots {
            self.prefetch_snapshot(id);
        }
    }

    fn list_docs(&self, collection: &Collection) -> Result<Vec<String>> {
        let mut ids = self.local.list_docs(collection)?;
        if remote_docs(collection) {
            let (remote, c) = (self.remote.clone(), collection.clone());
            log::debug!("region: LIST {c:?}");
            ids.extend(
                self.worker
                    .run("region: LIST", move || remote.list_docs(&c))?,
            );
            ids.sort();
            ids.dedup();
        }
        Ok(ids)
    }

    fn commit_docs(&self, batch: Vec<DocOp>) -> Result<()> {
        self.local.commit_docs(batch)
    }

    fn recover(&self) -> Result<()> {
        self.local.recover()
    }

    fn needs_recovery(&self) -> bool {
        self.local.needs_recovery()
    }
}
