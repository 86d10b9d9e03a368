//! [`Fetcher`]: the object downloads of a [`super::lazy::LazyRegion`], run on the region
//! client's runtime (never on the calling thread, which may be a sandboxed device thread),
//! one per object at a time ([`InFlight`]).

use super::inflight::{Fetched, InFlight, Slot};
use super::lazy::FETCH_TIMEOUT;
use super::s3::{get_verified, S3Dir};
use crate::store::backend::{LocalDir, ObjectNs, ObjectStore};
use crate::store::error::{Result, StoreError};
use crate::store::fsio;
use crate::store::ids::ContentHash;
use crate::store::layout::Layout;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Starts and waits for downloads from a region into the local store (chunks) or the
/// region's cache (blobs). Cheap to clone: every clone shares the same fetches.
#[derive(Clone)]
pub struct Fetcher {
    remote: Arc<S3Dir>,
    local: Arc<LocalDir>,
    layout: Layout,
    in_flight: Arc<InFlight<(ObjectNs, ContentHash)>>,
    fetched: Arc<AtomicU64>,
}

impl Fetcher {
    /// Fetches from `remote` into `local`, the store at `layout` (staging under its `tmp/`).
    pub fn new(local: Arc<LocalDir>, layout: &Layout, remote: Arc<S3Dir>) -> Fetcher {
        Fetcher {
            remote,
            local,
            layout: layout.clone(),
            in_flight: Arc::new(InFlight::default()),
            fetched: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Chunks fetched from the region so far (read, read ahead or prefetched).
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The fetch of an object under way, if any.
    pub fn pending(&self, ns: ObjectNs, hash: &ContentHash) -> Option<Arc<Slot>> {
        self.in_flight.get(&(ns, *hash))
    }

    /// Once every fetch in `after` has ended (or [`FETCH_TIMEOUT`] passed), start fetching
    /// `chunks`: the boot's first chunks wait for its kernel, which the VM needs first.
    pub fn start_after(&self, after: Vec<Arc<Slot>>, chunks: Vec<ContentHash>) {
        let f = self.clone();
        self.remote.runtime().spawn_blocking(move || {
            for slot in after {
                let _ = slot.wait(FETCH_TIMEOUT);
            }
            for h in chunks {
                f.start_if_absent(ObjectNs::Chunk, &h);
            }
        });
    }

    /// [`Fetcher::start`] unless the local store has the object.
    pub fn start_if_absent(&self, ns: ObjectNs, hash: &ContentHash) {
        if !self.local.object_exists(ns, hash).unwrap_or(true) {
            self.start(ns, hash);
        }
    }

    /// The fetch of an object: the one under way, or a new one. A fetched chunk is
    /// published to its readers first and kept in the local store after; a blob is kept in
    /// the region's cache first (its readers want the file).
    pub fn start(&self, ns: ObjectNs, hash: &ContentHash) -> Arc<Slot> {
        let key = (ns, *hash);
        let (slot, mine) = self.in_flight.claim(&key);
        if !mine {
            return slot;
        }
        let (remote, local, layout, in_flight, fetched, out) = (
            self.remote.clone(),
            self.local.clone(),
            self.layout.clone(),
            self.in_flight.clone(),
            self.fetched.clone(),
            slot.clone(),
        );
        self.remote.runtime().spawn(async move {
            let (ns, h) = key;
            let k = remote.object_key(ns, &h);
            let got = get_verified(&remote.client(), remote.spec(), k, h, ns).await;
            match (got, ns) {
                (Ok(bytes), ObjectNs::Chunk) => {
                    fetched.fetch_add(1, Ordering::Relaxed);
                    let bytes = Arc::new(bytes);
                    out.fill(Ok(bytes.clone()));
                    // Off the runtime's threads: the write and its fsyncs must not hold up
                    // the other fetches' responses.
                    let kept =
                        tokio::task::spawn_blocking(move || keep(&local, &layout, &h, &bytes));
                    match kept.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::warn!("keeping chunk {h}: {e}"),
                        Err(e) => log::warn!("keeping chunk {h}: {e}"),
                    }
                }
                (Ok(bytes), _) => {
                    let kept = remote.keep_cached(ns, &h, &bytes);
                    out.fill(kept.map(|_| Arc::new(bytes)).map_err(Arc::new));
                }
                (Err(e), _) => out.fill(Err(Arc::new(e))),
            }
            in_flight.finish(&key);
        });
        slot
    }

    /// Wait at most [`FETCH_TIMEOUT`] for a fetch's bytes.
    pub fn wait(&self, slot: &Slot, ns: ObjectNs, hash: &ContentHash) -> Result<Vec<u8>> {
        let failed = |source: std::io::Error| StoreError::Io {
            what: format!(
                "region {}: fetch {} {hash}",
                self.remote.spec().name,
                ns.dir()
            ),
            source,
        };
        let got: Fetched = slot
            .wait(FETCH_TIMEOUT)
            .ok_or_else(|| failed(std::io::Error::from(std::io::ErrorKind::TimedOut)))?;
        match got {
            Ok(bytes) => Ok(Arc::try_unwrap(bytes).unwrap_or_else(|b| b.as_ref().clone())),
            Err(e) => Err(failed(std::io::Error::other(e.to_string()))),
        }
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
