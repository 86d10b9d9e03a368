//! Region locks: what keeps `gc --region` from deleting chunks that a push (or a copy into the
//! region) has uploaded, or found there, but whose manifests it has not written yet.
//!
//! S3 has no lock server. As restic does with its repository locks, every writer and every gc
//! first creates an object of its own under `locks/`, then lists `locks/`: a writer backs off
//! when it sees a gc's lock, a gc when it sees any other lock. With S3's read-after-write
//! consistency (Amazon S3 since December 2020, and the S3-compatible servers), of two
//! processes that each create and then list, at least one sees the other, so a gc and a
//! writer never run at once (both may back off; the user retries). Writers do not exclude
//! each other: they only add immutable, content-addressed objects and create-only manifests.
//!
//! A lock is deleted when its holder finishes (or fails). One left by a process that died
//! counts for [`LOCK_STALE`]; after that it is ignored, and `gc --region` deletes it.

use super::s3::S3Dir;
use crate::store::error::{Result, StoreError};
use object_store::path::Path as Key;
use object_store::{ObjectStore as _, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;
use std::time::Duration;

/// The prefix (under the region's prefix) of the lock objects.
pub const LOCKS_DIR: &str = "locks";
/// How long a lock whose holder never deleted it keeps others off: far longer than a push of
/// a large image takes (8 GiB at a slow 10 MiB/s is 14 minutes), short enough that a host
/// that died does not block gc for a day.
pub const LOCK_STALE: Duration = Duration::from_secs(6 * 3600);

/// What a lock's holder does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Uploads objects and manifests (push, copy into the region).
    Write,
    /// Deletes what no manifest names (`gc --region`).
    Gc,
}

impl LockKind {
    fn word(self) -> &'static str {
        match self {
            LockKind::Write => "write",
            LockKind::Gc => "gc",
        }
    }
}

/// A lock object seen in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Its file name under `locks/`.
    pub name: String,
    pub kind: LockKind,
    /// How long ago it was written (by the server's clock).
    pub age: Duration,
}

/// The file name of a new lock: `KIND-HOST-PID-RANDOM.json` (the host reduced to
/// `[A-Za-z0-9.-]`, so that the name is a plain key).
pub fn lock_name(kind: LockKind, host: &str, pid: u32, random: u64) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{}-{host}-{pid}-{random:016x}.json", kind.word())
}

/// The kind of the lock called `name`; `None` for a name no amivm writes (ignored).
pub fn parse_lock_name(name: &str) -> Option<LockKind> {
    if !name.ends_with(".json") {
        return None;
    }
    match name.split('-').next()? {
        "write" => Some(LockKind::Write),
        "gc" => Some(LockKind::Gc),
        _ => None,
    }
}

/// The lock among `others` (not including the caller's own) that keeps a holder of `mine` off,
/// if any: a live gc lock for a writer; any live lock for a gc.
pub fn blocking(mine: LockKind, others: &[LockInfo]) -> Option<&LockInfo> {
    others.iter().find(|l| {
        l.age < LOCK_STALE
            && match mine {
                LockKind::Write => l.kind == LockKind::Gc,
                LockKind::Gc => true,
            }
    })
}

/// A lock this process holds in a region; deleted when dropped.
pub struct RegionLock {
    s3: Arc<S3Dir>,
    key: Key,
    /// The locks listed when it was taken, besides this one.
    pub others: Vec<LockInfo>,
}

impl std::fmt::Debug for RegionLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionLock")
            .field("key", &self.key)
            .finish()
    }
}

impl RegionLock {
    /// Create a lock of `kind` in `s3`'s region and check that nobody holds one that excludes
    /// it; when somebody does, the lock is removed again and the error (exit 125) names it.
    pub fn acquire(s3: &Arc<S3Dir>, kind: LockKind) -> Result<RegionLock> {
        let host = host_name();
        let name = lock_name(kind, &host, std::process::id(), rand::random());
        let key = s3.rel_key(&format!("{LOCKS_DIR}/{name}"));
        let body = serde_json::json!({
            "Kind": kind.word(),
            "Host": host,
            "Pid": std::process::id(),
        });
        let put = s3.block_on(s3.client().put_opts(
            &key,
            PutPayload::from(body.to_string().into_bytes()),
            PutOptions::from(PutMode::Create),
        ));
        put.map_err(|e| s3.err("PUT", &key, e))?;
        let mut lock = RegionLock {
            s3: s3.clone(),
            key,
            others: Vec::new(),
        };
        lock.others = list(s3)?.into_iter().filter(|l| l.name != name).collect();
        if let Some(b) = blocking(kind, &lock.others) {
            let what = match b.kind {
                LockKind::Gc => "gc --region is removing unused objects",
                LockKind::Write => "a push or copy is writing",
            };
            return Err(StoreError::InUse(format!(
                "region {}: {what} (lock {LOCKS_DIR}/{}, {} s old); try again when it is done \
                 (a lock whose holder died is ignored after {} h)",
                s3.spec().name,
                b.name,
                b.age.as_secs(),
                LOCK_STALE.as_secs() / 3600
            )));
        }
        Ok(lock)
    }
}

impl Drop for RegionLock {
    fn drop(&mut self) {
        // When this fails, the command has usually failed already for the same reason (the
        // server went away) and said so in its one error line; the lock left behind is named
        // by the gc it keeps off, and ignored after LOCK_STALE.
        if let Err(e) = self.s3.block_on(self.s3.client().delete(&self.key)) {
            log::debug!(
                "region {}: removing lock {}: {e}",
                self.s3.spec().name,
                self.key
            );
        }
    }
}

/// The amivm locks in `s3`'s region, with their ages.
pub fn list(s3: &S3Dir) -> Result<Vec<LockInfo>> {
    s3.block_on(list_async(s3))
}

/// [`list`], for a task on the region's runtime.
pub async fn list_async(s3: &S3Dir) -> Result<Vec<LockInfo>> {
    let metas = s3.list_under(LOCKS_DIR).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(metas
        .into_iter()
        .filter_map(|m| {
            let name = m.location.filename()?.to_string();
            let kind = parse_lock_name(&name)?;
            let written = u64::try_from(m.last_modified.timestamp()).unwrap_or(0);
            let age = Duration::from_secs(now.saturating_sub(written));
            Some(LockInfo { name, kind, age })
        })
        .collect())
}

/// Delete the lock called `name` (a stale one: see [`LOCK_STALE`]).
pub fn remove(s3: &S3Dir, name: &str) -> Result<()> {
    s3.block_on(s3.remove_rel(&format!("{LOCKS_DIR}/{name}")))
}

/// This host's name (for the lock's name: who holds it), `host` when unknown.
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: LockKind, age_s: u64) -> LockInfo {
        LockInfo {
            name: lock_name(kind, "h", 1, age_s),
            kind,
            age: Duration::from_secs(age_s),
        }
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_ignored() {
        let n = lock_name(LockKind::Write, "web 1/a", 42, 0xabc);
        assert_eq!(n, "write-web_1_a-42-0000000000000abc.json");
        assert_eq!(parse_lock_name(&n), Some(LockKind::Write));
        let g = lock_name(LockKind::Gc, "h.example-2", 7, 1);
        assert_eq!(parse_lock_name(&g), Some(LockKind::Gc));
        assert_eq!(parse_lock_name("readme.txt"), None);
        assert_eq!(parse_lock_name("other-h-1-2.json"), None);
    }

    #[test]
    fn writers_exclude_gc_and_gc_excludes_everyone_until_stale() {
        let stale = LOCK_STALE.as_secs() + 1;
        // Writers run beside writers, not beside a live gc.
        assert!(blocking(LockKind::Write, &[info(LockKind::Write, 5)]).is_none());
        assert!(blocking(LockKind::Write, &[info(LockKind::Gc, 5)]).is_some());
        assert!(blocking(LockKind::Write, &[info(LockKind::Gc, stale)]).is_none());
        // A gc runs alone.
        assert!(blocking(LockKind::Gc, &[]).is_none());
        assert!(blocking(LockKind::Gc, &[info(LockKind::Write, 5)]).is_some());
        assert!(blocking(LockKind::Gc, &[info(LockKind::Gc, 5)]).is_some());
        assert!(blocking(LockKind::Gc, &[info(LockKind::Write, stale)]).is_none());
    }
}
