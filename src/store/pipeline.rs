//! The chunking pipeline behind [`super::chunker::chunk_volume`]: the caller's thread reads
//! chunks, hasher threads (one per core) drop the zero ones and hash the rest, and one writer
//! thread stages the new ones in the transaction.
//!
//! ```text
//!   reader (caller) ──work──▶ N hashers ──results──▶ writer (owns &mut Txn)
//!        ▲                                               │
//!        └──────────────── free chunk buffers ◀──────────┘
//! ```
//! Memory is bounded: a fixed pool of chunk buffers goes round the loop, and the reader waits
//! for a free one before it reads. Results arrive out of order; the writer records each
//! chunk's index and the list is sorted at the end, so the manifest lists chunks by index
//! whatever order the hashers finished in.
//!
//! Shutdown: every stage stops when the one before it hangs up (its channel ends) or the one
//! after it does (a send fails). A reader error, a writer error (a full disk) or a panic ends
//! all stages; the first error is returned.

use super::chunker::{is_zero, ChunkSource};
use super::error::{Result, StoreError};
use super::ids::ContentHash;
use super::snapshot::{chunk_len, CHUNK_SIZE};
use super::txn::Txn;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Most hasher threads. SHA-256 runs at about 1.5-2 GB/s per core with the SHA extensions
/// (the `sha2` crate picks them at run time), while one reader and one writer move chunks at
/// page-cache copy speed: beyond 16 hashers the extra threads would wait. Also bounds the
/// buffer pool on machines with hundreds of cores.
pub const MAX_HASHERS: usize = 16;

/// Chunk buffers in the pool per hasher: one being hashed and one queued for it, so a hasher
/// finds work waiting while the reader fills the next buffer.
pub const BUFFERS_PER_HASHER: usize = 2;

/// Buffers in the pool besides the hashers' ones: one being filled by the reader and one
/// being written by the writer.
pub const EXTRA_BUFFERS: usize = 2;

/// The number of hasher threads: one per core the process may run on
/// ([`std::thread::available_parallelism`]), at most [`MAX_HASHERS`].
pub fn hasher_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_HASHERS)
}

/// Bytes of chunk buffers a pipeline with `hashers` hashers holds at most.
pub fn pool_bytes(hashers: usize) -> u64 {
    (hashers * BUFFERS_PER_HASHER + EXTRA_BUFFERS) as u64 * CHUNK_SIZE
}

/// A chunk read by the reader, on its way to a hasher.
struct Work {
    index: u64,
    len: usize,
    buf: Vec<u8>,
}

/// A hasher's verdict on a chunk: its hash, or `None` when it is all zeros.
struct Hashed {
    work: Work,
    hash: Option<ContentHash>,
}

/// What happened to one chunk: `(index, hash)`, `None` for a chunk that reads as zeros.
pub type ChunkResult = (u64, Option<ContentHash>);

/// Read the chunks that `next` names (in any order, each once) from `src`, store the
/// non-zero ones in `txn` and return every named chunk's result, sorted by index.
///
/// `next` is called on the caller's thread (it may report progress) with the source, and
/// returns the next chunk index or `None` when done; `src` is read only on the caller's
/// thread, so it need not be `Send`.
pub fn run(
    txn: &mut Txn<'_>,
    src: &mut dyn ChunkSource,
    hashers: usize,
    mut next: impl FnMut(&mut dyn ChunkSource) -> Result<Option<u64>>,
) -> Result<Vec<ChunkResult>> {
    let hashers = hashers.max(1);
    let size = src.size();
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    for _ in 0..hashers * BUFFERS_PER_HASHER + EXTRA_BUFFERS {
        // The receiver is alive: this cannot fail.
        let _ = free_tx.send(vec![0u8; CHUNK_SIZE as usize]);
    }
    let (work_tx, work_rx) = channel::<Work>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = channel::<Hashed>();

    std::thread::scope(|s| {
        let workers: Vec<_> = (0..hashers)
            .map(|_| {
                let rx = Arc::clone(&work_rx);
                let tx = done_tx.clone();
                s.spawn(move || hash_loop(&rx, &tx))
            })
            .collect();
        // Only the hashers hold the work queue: if they all stop, the reader's sends fail.
        drop(work_rx);
        // Only the hashers' clones remain: the writer's channel ends when they all stop.
        drop(done_tx);
        let writer = s.spawn(move || write_loop(txn, &done_rx, free_tx));

        let read = read_loop(src, size, &mut next, &free_rx, &work_tx);
        // Hang up: the hashers finish what is queued and stop, then the writer.
        drop(work_tx);
        drop(free_rx);
        let mut panicked = false;
        for w in workers {
            panicked |= w.join().is_err();
        }
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(StoreError::Invalid("the chunk writer panicked".into())));
        // A read error comes first: the writer may only have stopped for want of input.
        read?;
        let mut results = written?;
        if panicked {
            return Err(StoreError::Invalid("a chunk hasher panicked".into()));
        }
        results.sort_unstable_by_key(|r| r.0);
        Ok(results)
    })
}

/// The reader: for each index `next` names, take a free buffer, fill it and queue it for the
/// hashers. A chunk the source knows to be a hole is queued with `len == 0`, which the
/// hashers report as zeros without looking.
fn read_loop(
    src: &mut dyn ChunkSource,
    size: u64,
    next: &mut dyn FnMut(&mut dyn ChunkSource) -> Result<Option<u64>>,
    free_rx: &Receiver<Vec<u8>>,
    work_tx: &Sender<Work>,
) -> Result<()> {
    while let Some(index) = next(src)? {
        // No free buffer will come back: the writer stopped (its error is returned).
        let Ok(mut buf) = free_rx.recv() else {
            return Ok(());
        };
        let len = usize::try_from(chunk_len(size, index))
            .map_err(|_| StoreError::Invalid(format!("chunk {index} is too long")))?;
        let data = src.read_chunk(index, &mut buf[..len])?;
        let work = Work {
            index,
            len: if data { len } else { 0 },
            buf,
        };
        if work_tx.send(work).is_err() {
            // Every hasher stopped: the writer did, and its error is returned.
            return Ok(());
        }
    }
    Ok(())
}

/// A hasher: take queued chunks until the reader hangs up; pass each on with its hash.
fn hash_loop(rx: &Mutex<Receiver<Work>>, tx: &Sender<Hashed>) {
    loop {
        let work = {
            // A poisoned lock means another hasher panicked: stop too.
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            }
        };
        let data = &work.buf[..work.len];
        let hash = (!data.is_empty() && !is_zero(data)).then(|| ContentHash::of(data));
        if tx.send(Hashed { work, hash }).is_err() {
            return;
        }
    }
}

/// The writer: stage each non-zero chunk in the transaction, record every result, and give
/// the buffer back to the reader.
fn write_loop(
    txn: &mut Txn<'_>,
    rx: &Receiver<Hashed>,
    free_tx: Sender<Vec<u8>>,
) -> Result<Vec<ChunkResult>> {
    let mut results = Vec::new();
    for Hashed { work, hash } in rx.iter() {
        if let Some(h) = &hash {
            txn.put_chunk(h, &work.buf[..work.len])?;
        }
        results.push((work.index, hash));
        // The reader may have stopped (an error): then nobody needs the buffer.
        let _ = free_tx.send(work.buf);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::super::chunker::{chunk_volume_with, ChunkPlan};
    use super::super::snapshot::ChunkEntry;
    use super::super::{NoProgress, Store};
    use super::*;

    /// A volume in memory; reading chunk `fail_at` fails.
    struct MemSource {
        data: Vec<u8>,
        fail_at: Option<u64>,
    }

    impl ChunkSource for MemSource {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }

        fn read_chunk(&mut self, index: u64, buf: &mut [u8]) -> Result<bool> {
            if self.fail_at == Some(index) {
                return Err(StoreError::Invalid(format!(
                    "test: chunk {index} unreadable"
                )));
            }
            let start = (index * CHUNK_SIZE) as usize;
            buf.copy_from_slice(&self.data[start..start + buf.len()]);
            Ok(true)
        }
    }

    /// 37 chunks and a short one: zeros, distinct data, and repeats of one chunk.
    fn volume() -> Vec<u8> {
        let chunk = CHUNK_SIZE as usize;
        let len = 37 * chunk + 4096;
        let mut data = vec![0u8; len];
        for i in 0..38 {
            let at = i * chunk;
            match i % 4 {
                0 => {}                                         // zeros
                1 => data[at + 7] = i as u8,                    // distinct
                2 => data[at..at + 3].copy_from_slice(b"dup"),  // the same chunk each time
                _ => data[at + chunk.min(len - at) - 1] = 0xff, // last byte only
            }
        }
        data
    }

    /// What a one-thread loop gives: every non-zero chunk, by index.
    fn expected(data: &[u8]) -> Vec<ChunkEntry> {
        data.chunks(CHUNK_SIZE as usize)
            .enumerate()
            .filter(|(_, c)| !is_zero(c))
            .map(|(i, c)| ChunkEntry(i as u64, ContentHash::of(c)))
            .collect()
    }

    #[test]
    fn any_number_of_hashers_gives_the_same_ordered_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = volume();
        let want = expected(&data);
        let distinct: std::collections::HashSet<_> = want.iter().map(|c| c.1).collect();
        for hashers in [1, 2, 3, 8] {
            let mut txn = store.begin().unwrap();
            let mut src = MemSource {
                data: data.clone(),
                fail_at: None,
            };
            let got = chunk_volume_with(&mut txn, &mut src, ChunkPlan::All, &NoProgress, hashers)
                .unwrap();
            assert_eq!(got, want, "{hashers} hashers");
            // Each distinct chunk is staged once, however many hashers saw a copy.
            assert_eq!(txn.new_chunks().0, distinct.len() as u64);
        }
    }

    #[test]
    fn dirty_chunks_replace_the_parents_and_zeros_remove_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = volume();
        let parent: Vec<ChunkEntry> = (0..38)
            .map(|i| ChunkEntry(i, ContentHash::of(b"old")))
            .collect();
        let mut txn = store.begin().unwrap();
        let mut src = MemSource {
            data: data.clone(),
            fail_at: None,
        };
        // Chunk 4 is zero now, 5 has data, 99 is beyond the volume.
        let plan = ChunkPlan::Only {
            parent: &parent,
            dirty: &[5, 4, 5, 99],
        };
        let got = chunk_volume_with(&mut txn, &mut src, plan, &NoProgress, 3).unwrap();
        assert_eq!(got.len(), 37);
        assert!(got.iter().all(|c| c.0 != 4));
        let five = got.iter().find(|c| c.0 == 5).unwrap();
        assert_eq!(
            five.1,
            ContentHash::of(&data[5 * CHUNK_SIZE as usize..6 * CHUNK_SIZE as usize])
        );
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn a_read_error_stops_every_stage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.begin().unwrap();
        let mut src = MemSource {
            data: volume(),
            fail_at: Some(21),
        };
        let e = chunk_volume_with(&mut txn, &mut src, ChunkPlan::All, &NoProgress, 4).unwrap_err();
        assert!(e.to_string().contains("chunk 21 unreadable"), "{e}");
    }

    #[test]
    fn a_write_error_stops_every_stage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.begin().unwrap();
        // The staging directory is gone: the first chunk the writer stages fails.
        std::fs::remove_dir_all(txn.scratch_dir()).unwrap();
        let mut src = MemSource {
            data: volume(),
            fail_at: None,
        };
        let e = chunk_volume_with(&mut txn, &mut src, ChunkPlan::All, &NoProgress, 2).unwrap_err();
        assert!(e.to_string().contains("create"), "{e}");
    }

    #[test]
    fn the_pool_is_bounded() {
        assert_eq!(pool_bytes(1), 4 * CHUNK_SIZE);
        assert!(hasher_count() >= 1 && hasher_count() <= MAX_HASHERS);
        assert!(pool_bytes(MAX_HASHERS) <= 64 << 20);
    }
}
