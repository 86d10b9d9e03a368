//! [`LazyRegion`]: the local store with a region behind it, for `amivm run AMI --region R`.
//!
//! Everything is local (records, overlays, commits) except what the local store lacks:
//! image and snapshot manifests are read from the region, and a chunk or blob that is not
//! local is fetched on first use, checked against its sha256, and kept in the local chunk
//! store (so a second boot reads it locally). After fetching a chunk, the next
//! [`READ_AHEAD`] chunks of the same volume are fetched in the background.
//!
//! The VMM's threads run under a seccomp filter without network system calls, and a device
//! thread must never block for long: a chunk read on such a thread is handed to the region
//! client's runtime (threads started before the sandbox) and waited for at most
//! [`FETCH_TIMEOUT`]. A missing, damaged or late chunk is an I/O error for that read and a
//! logged event, never a hang.

use super::s3::{get_verified, S3Dir};
use crate::store::backend::{Collection, DocOp, LocalDir, ObjectNs, ObjectReader, ObjectStore};
use crate::store::error::{Result, StoreError};
use crate::store::fsio;
use crate::store::ids::ContentHash;
use crate::store::layout::Layout;
use crate::store::snapshot::Snapshot;
use crate::sync::relock;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chunks fetched ahead after a chunk the guest read: 2 MiB, a few sequential reads' worth.
pub const READ_AHEAD: usize = 4;
/// The longest a read waits for a chunk from the region before it fails with an I/O error:
/// under Linux's 30 s block-request timeout (blk-mq's default `BLK_DEFAULT_SG_TIMEOUT`,
/// which virtio-blk keeps) and the test guest's ~10 s, so the guest sees an error, not a
/// stuck request; a 512 KiB GET takes milliseconds on a working server.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(8);

/// A job for the [`Worker`].
type Job = Box<dyn FnOnce() + Send>;

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
    /// Chunks being fetched in the background.
    in_flight: Arc<Mutex<HashSet<ContentHash>>>,
    /// Chunks fetched from the region (read or read ahead).
    fetched: Arc<AtomicU64>,
    /// Manifests read from the region by this process (by `collection/id`), read once: a launch
    /// reads an image's snapshot manifests several times (checks, volumes, the record's
    /// references), each a round trip otherwise.
    docs: Mutex<HashMap<String, Option<Vec<u8>>>>,
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
        Ok(LazyRegion {
            worker: Worker::start()?,
            local: Arc::new(LocalDir::new(layout.clone())),
            layout: layout.clone(),
            remote,
            next: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            fetched: Arc::new(AtomicU64::new(0)),
            docs: Mutex::new(HashMap::new()),
            present: Mutex::new(HashSet::new()),
        })
    }

    /// Chunks fetched from the region so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Learn a volume's chunk order, for read-ahead.
    pub fn learn(&self, snap: &Snapshot) {
        if let Ok(mut next) = self.next.lock() {
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
    }

    /// Start fetching the chunks after `hash` that are neither local nor on their way.
    fn read_ahead(&self, hash: &ContentHash) {
        let after = match self.next.lock() {
            Ok(n) => n.get(hash).cloned().unwrap_or_default(),
            Err(_) => return,
        };
        for h in after {
            if self
                .local
                .object_exists(ObjectNs::Chunk, &h)
                .unwrap_or(true)
            {
                continue;
            }
            let claimed = self
                .in_flight
                .lock()
                .map(|mut f| f.insert(h))
                .unwrap_or(false);
            if !claimed {
                continue;
            }
            let (remote, local, layout, in_flight, fetched) = (
                self.remote.clone(),
                self.local.clone(),
                self.layout.clone(),
                self.in_flight.clone(),
                self.fetched.clone(),
            );
            self.remote.runtime().spawn(async move {
                let key = remote.object_key(ObjectNs::Chunk, &h);
                match get_verified(&remote.client(), remote.spec(), key, h, ObjectNs::Chunk).await {
                    Ok(bytes) => {
                        fetched.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = keep(&local, &layout, &h, &bytes) {
                            log::warn!("read-ahead of chunk {h}: {e}");
                        }
                    }
                    Err(e) => log::warn!("read-ahead of chunk {h}: {e}"),
                }
                if let Ok(mut f) = in_flight.lock() {
                    f.remove(&h);
                }
            });
        }
    }

    /// Fetch one object on the client's runtime (never on the calling thread, which may be a
    /// sandboxed device thread), keep it locally, and return its bytes.
    fn fetch(&self, ns: ObjectNs, hash: &ContentHash) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (remote, local, layout, h) = (
            self.remote.clone(),
            self.local.clone(),
            self.layout.clone(),
            *hash,
        );
        self.remote.runtime().spawn(async move {
            let key = remote.object_key(ns, &h);
            let res = get_verified(&remote.client(), remote.spec(), key, h, ns).await;
            let res = res.and_then(|bytes| {
                if ns == ObjectNs::Chunk {
                    keep(&local, &layout, &h, &bytes)?;
                }
                Ok(bytes)
            });
            let _ = tx.send(res);
        });
        let res = match rx.recv_timeout(FETCH_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err(StoreError::Io {
                what: format!(
                    "region {}: fetch {} {hash}",
                    self.remote.spec().name,
                    ns.dir()
                ),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            }),
        };
        match &res {
            Ok(_) => {
                self.fetched.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "fetched {} {hash} from region {}",
                    ns.dir(),
                    self.remote.spec().name
                );
            }
            Err(e) => log::error!("lazy read of {} {hash}: {e}", ns.dir()),
        }
        res
    }
}

/// Keep a verified object in the local store (atomically: staged, fsynced, renamed).
fn keep(local: &LocalDir, layout: &Layout, hash: &ContentHash, bytes: &[u8]) -> Result<()> {
    if local.object_exists(ObjectNs::Chunk, hash)? {
        return Ok(());
    }
    let p = fsio::write_temp(&layout.tmp(), "lazy", bytes)?;
    local.put_objects(&[(ObjectNs::Chunk, *hash, p)])
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
        let bytes = self.fetch(ns, hash)?;
        if ns == ObjectNs::Chunk {
            self.read_ahead(hash);
        }
        Ok(Box::new(super::s3::Bytes(bytes)))
    }

    fn object_path(&self, ns: ObjectNs, hash: &ContentHash) -> Result<PathBuf> {
        if self.local.object_exists(ns, hash)? {
            return self.local.object_path(ns, hash);
        }
        // Kernels and initrds: needed whole before the VM starts, kept in the region's cache.
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
        match self.local.get_doc(collection, id)? {
            Some(d) => Ok(Some(d)),
            None if remote_docs(collection) => {
                let memo = format!("{collection:?}/{id}");
                if let Some(doc) = relock(&self.docs).get(&memo) {
                    return Ok(doc.clone());
                }
                let (remote, c, i) = (self.remote.clone(), collection.clone(), id.to_string());
                log::debug!("region: GET {c:?} {i}");
                let doc = self
                    .worker
                    .run("region: GET", move || remote.get_doc(&c, &i))?;
                relock(&self.docs).insert(memo, doc.clone());
                if let (Collection::Snapshots, Some(bytes)) = (collection, &doc) {
                    if let Ok(s) = serde_json::from_slice::<Snapshot>(bytes) {
                        self.learn(&s);
                    }
                }
                Ok(doc)
            }
            None => Ok(None),
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
