//! Where the store's bytes live: the [`ObjectStore`] trait and its local-directory
//! implementation, [`LocalDir`].
//!
//! The trait is the seam for a remote object store. It speaks only of what such a store has:
//! immutable content-addressed objects (chunks, blobs), small JSON documents (manifests,
//! records) in named collections, listing, deletion, ranged reads, and one atomic operation,
//! [`ObjectStore::commit_docs`], which applies a batch of document writes all-or-nothing. The
//! local implementation gets that atomicity from a redo journal; a remote one would write the
//! batch as one versioned object (or use conditional writes). Locks, the staging directory and
//! the account config stay local to the machine and live in [`super::Store`].

use super::error::{Result, StoreError};
use super::fsio;
use super::ids::{ContentHash, SnapshotId};
use super::layout::{self, Layout};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Kinds of content-addressed objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectNs {
    /// 512 KiB volume chunks.
    Chunk,
    /// Kernels and initrds.
    Blob,
}

impl ObjectNs {
    pub fn dir(self) -> &'static str {
        match self {
            ObjectNs::Chunk => layout::CHUNKS_DIR,
            ObjectNs::Blob => layout::BLOBS_DIR,
        }
    }
}

/// Collections of JSON documents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Collection {
    Images,
    Snapshots,
    /// Records kept for other modules, e.g. `Records("instances")`.
    Records(String),
}

impl Collection {
    /// Directory of the collection relative to the store root.
    pub fn dir(&self) -> String {
        match self {
            Collection::Images => layout::IMAGES_DIR.to_string(),
            Collection::Snapshots => layout::SNAPSHOTS_DIR.to_string(),
            Collection::Records(kind) => format!("{}/{kind}", layout::RECORDS_DIR),
        }
    }
}

/// One change in an atomic batch.
#[derive(Debug, Clone)]
pub enum DocOp {
    Put {
        collection: Collection,
        id: String,
        bytes: Vec<u8>,
    },
    Delete {
        collection: Collection,
        id: String,
    },
}

/// Positioned reads of one object.
pub trait ObjectReader: Send {
    /// Fill `buf` from `offset` (the object must be long enough).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ObjectReader for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// The storage behind a store. See the module docs.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Where the objects are, for messages.
    fn location(&self) -> String;

    /// Whether the object exists.
    fn object_exists(&self, ns: ObjectNs, hash: &ContentHash) -> Result<bool>;
    /// Open an object for positioned reads.
    fn open_object(&self, ns: ObjectNs, hash: &ContentHash) -> Result<Box<dyn ObjectReader>>;
    /// A local file holding the object, for consumers that need a path (the VMM loading a
    /// kernel). A remote store would download to a local cache first.
    fn object_path(&self, ns: ObjectNs, hash: &ContentHash) -> Result<PathBuf>;
    /// Every object of a kind, with its size in bytes.
    fn list_objects(&self, ns: ObjectNs) -> Result<Vec<(ContentHash, u64)>>;
    /// Delete an object (gc only).
    fn delete_object(&self, ns: ObjectNs, hash: &ContentHash) -> Result<()>;
    /// Make complete staged files durable objects, consuming them. Objects that already exist
    /// are kept (same name, same content).
    fn put_objects(&self, staged: &[(ObjectNs, ContentHash, PathBuf)]) -> Result<()>;

    /// One document, or `None`.
    fn get_doc(&self, collection: &Collection, id: &str) -> Result<Option<Vec<u8>>>;
    /// Several documents, in the order of `ids`: what [`ObjectStore::get_doc`] gives for
    /// each. A remote backend reads them concurrently.
    fn get_docs(&self, collection: &Collection, ids: &[String]) -> Vec<Result<Option<Vec<u8>>>> {
        ids.iter().map(|id| self.get_doc(collection, id)).collect()
    }
    /// The ids of a collection's documents.
    fn list_docs(&self, collection: &Collection) -> Result<Vec<String>>;
    /// Apply a batch of document changes all-or-nothing. Callers hold the store lock.
    fn commit_docs(&self, batch: Vec<DocOp>) -> Result<()>;
    /// Finish a batch that a crash interrupted. Callers hold the store lock.
    fn recover(&self) -> Result<()>;
    /// Whether a batch was interrupted and awaits [`ObjectStore::recover`].
    fn needs_recovery(&self) -> bool;

    /// A value that changes whenever a finished [`ObjectStore::commit_docs`] changed the
    /// collection, for caches of it (see [`super::image_index`]); `None` when this backend
    /// cannot tell, and the caller must read the collection afresh.
    fn doc_stamp(&self, _collection: &Collection) -> Result<Option<String>> {
        Ok(None)
    }

    /// A hint that these snapshot manifests and blobs are about to be read (a launch's volumes
    /// and kernel): a backend with a slow side starts fetching them now, so that the work
    /// before their first reader overlaps the wait. Reading them later gives what reading them
    /// without the hint would (the same errors included). The local directory ignores it.
    fn prefetch(&self, _snapshots: &[SnapshotId], _blobs: &[ContentHash]) {}
}

/// The redo journal of [`LocalDir::commit_docs`]: renames of staged files into place and
/// deletions, by paths relative to the store root.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Journal {
    renames: Vec<(String, String)>,
    deletes: Vec<String>,
}

/// Objects and documents in a local directory (see [`super::layout`]).
#[derive(Debug, Clone)]
pub struct LocalDir {
    layout: Layout,
}

impl LocalDir {
    pub fn new(layout: Layout) -> Self {
        LocalDir { layout }
    }

    fn obj(&self, ns: ObjectNs, hash: &ContentHash) -> PathBuf {
        self.layout.object(ns.dir(), &hash.to_hex())
    }

    fn rel_doc(&self, c: &Collection, id: &str) -> String {
        format!("{}/{id}.{}", c.dir(), layout::JSON_EXT)
    }

    fn apply(&self, j: &Journal) -> Result<()> {
        let root = self.layout.root();
        let mut dirs = std::collections::BTreeSet::new();
        for (from, to) in &j.renames {
            let (from, to) = (root.join(from), root.join(to));
            if from.exists() {
                if let Some(parent) = to.parent() {
                    fsio::mkdirs(parent)?;
                    dirs.insert(parent.to_path_buf());
                }
                std::fs::rename(&from, &to).map_err(|e| StoreError::io("rename into", &to, e))?;
            }
        }
        for d in &j.deletes {
            let p = root.join(d);
            if fsio::remove_if_exists(&p)? {
                if let Some(parent) = p.parent() {
                    dirs.insert(parent.to_path_buf());
                }
            }
        }
        fsio::fsync_all(&dirs.into_iter().collect::<Vec<_>>())?;
        // After the documents are in place, before the journal goes: a crash in between
        // makes recovery apply the journal, and write the stamps, again.
        let touched = j.renames.iter().map(|(_, to)| to).chain(&j.deletes);
        let stamped: std::collections::BTreeSet<String> = touched
            .filter_map(|p| stamped_collection_of(p))
            .map(|c| c.dir())
            .collect();
        for dir in stamped {
            self.new_stamp(&dir)?;
        }
        fsio::remove_if_exists(&self.layout.journal())?;
        fsio::fsync_dir(root)
    }
}

/// Whether [`LocalDir`] stamps a collection's changes (see [`ObjectStore::doc_stamp`]): the
/// images (the image index) and every kind of record (the instance index).
fn is_stamped(c: &Collection) -> bool {
    matches!(c, Collection::Images | Collection::Records(_))
}

/// The stamped collection a document path (relative to the store root, as the journal keeps
/// it) belongs to: `images/ID.json` or `records/KIND/ID.json`.
fn stamped_collection_of(rel: &str) -> Option<Collection> {
    let mut parts = rel.split('/');
    let c = match (parts.next()?, parts.next()?, parts.next()) {
        (layout::IMAGES_DIR, _, None) => Collection::Images,
        (layout::RECORDS_DIR, kind, Some(_)) if !kind.is_empty() => {
            Collection::Records(kind.to_string())
        }
        _ => return None,
    };
    (parts.next().is_none() && is_stamped(&c)).then_some(c)
}

impl LocalDir {
    /// Where the stamp token of the collection in directory `dir` (relative to the store
    /// root) is kept: `images.stamp`, `records/instances.stamp`.
    fn stamp_path(&self, dir: &str) -> PathBuf {
        self.layout
            .root()
            .join(format!("{dir}.{}", layout::STAMP_EXT))
    }

    /// Give the collection in directory `dir` a new random stamp token. Written atomically (a
    /// rename) but not fsynced: the token only has to differ from the ones running processes
    /// have seen, and after a crash no process has.
    fn new_stamp(&self, dir: &str) -> Result<()> {
        let dest = self.stamp_path(dir);
        let tmp = self.layout.tmp().join(fsio::temp_name("stamp"));
        let token = hex::encode(rand::random::<[u8; 16]>());
        // Private like every store file (fsio::PRIVATE_FILE_MODE; the umask only takes bits away).
        let mut f = fsio::create_private(&tmp).map_err(|e| StoreError::io("write", &tmp, e))?;
        std::io::Write::write_all(&mut f, token.as_bytes())
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io("rename into", &dest, e)
        })
    }
}

fn check_doc_id(id: &str) -> Result<()> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(StoreError::Invalid(format!(
            "'{id}' is not a valid document id"
        )));
    }
    Ok(())
}

impl ObjectStore for LocalDir {
    fn location(&self) -> String {
        self.layout.root().display().to_string()
    }

    fn object_exists(&self, ns: ObjectNs, hash: &ContentHash) -> Result<bool> {
        let p = self.obj(ns, hash);
        match std::fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("stat", &p, e)),
        }
    }

    fn open_object(&self, ns: ObjectNs, hash: &ContentHash) -> Result<Box<dyn ObjectReader>> {
        let p = self.obj(ns, hash);
        let f = File::open(&p)
            .map_err(|e| StoreError::corrupt(format!("object {}", p.display()), e.to_string()))?;
        Ok(Box::new(f))
    }

    fn object_path(&self, ns: ObjectNs, hash: &ContentHash) -> Result<PathBuf> {
        let p = self.obj(ns, hash);
        if !p.is_file() {
            return Err(StoreError::corrupt(
                format!("store {}", self.location()),
                format!("{} {hash} is missing", ns.dir()),
            ));
        }
        Ok(p)
    }

    fn list_objects(&self, ns: ObjectNs) -> Result<Vec<(ContentHash, u64)>> {
        let dir = self.layout.dir(ns.dir());
        let mut out = Vec::new();
        for fan in read_dir_sorted(&dir)? {
            if !fan.is_dir() {
                continue;
            }
            for p in read_dir_sorted(&fan)? {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if let Ok(h) = ContentHash::parse(name) {
                    let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    out.push((h, len));
                }
            }
        }
        Ok(out)
    }

    fn delete_object(&self, ns: ObjectNs, hash: &ContentHash) -> Result<()> {
        fsio::remove_if_exists(&self.obj(ns, hash)).map(|_| ())
    }

    fn put_objects(&self, staged: &[(ObjectNs, ContentHash, PathBuf)]) -> Result<()> {
        if staged.is_empty() {
            return Ok(());
        }
        // The data must be durable before it gets its final name: a chunk that exists under
        // its hash is trusted forever after (dedup never re-reads it). Each file is renamed
        // as soon as its own fsync returns, so the renames overlap the other files' fsyncs.
        let dirs = std::sync::Mutex::new(std::collections::BTreeSet::new());
        fsio::parallel_each(staged, |(ns, hash, path)| {
            let f = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
            f.sync_all().map_err(|e| StoreError::io("fsync", path, e))?;
            drop(f);
            if self.object_exists(*ns, hash)? {
                fsio::remove_if_exists(path)?;
                return Ok(());
            }
            let dest = self.obj(*ns, hash);
            if let Some(parent) = dest.parent() {
                let created = !parent.exists();
                if created {
                    fsio::mkdirs(parent)?;
                }
                let mut dirs = dirs
                    .lock()
                    .map_err(|_| StoreError::Invalid("a commit thread panicked".into()))?;
                dirs.insert(parent.to_path_buf());
                if created {
                    dirs.insert(self.layout.dir(ns.dir()));
                }
            }
            std::fs::rename(path, &dest).map_err(|e| StoreError::io("rename into", &dest, e))
        })?;
        let dirs = dirs
            .into_inner()
            .map_err(|_| StoreError::Invalid("a commit thread panicked".into()))?;
        fsio::fsync_all(&dirs.into_iter().collect::<Vec<_>>())
    }

    fn get_doc(&self, collection: &Collection, id: &str) -> Result<Option<Vec<u8>>> {
        check_doc_id(id)?;
        fsio::read_optional(&self.layout.root().join(self.rel_doc(collection, id)))
    }

    fn list_docs(&self, collection: &Collection) -> Result<Vec<String>> {
        let dir = self.layout.root().join(collection.dir());
        let suffix = format!(".{}", layout::JSON_EXT);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("list", &dir, e)),
        };
        let mut ids = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| StoreError::io("list", &dir, e))?;
            let Some(id) = ent
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(&suffix))
                .map(str::to_string)
            else {
                continue;
            };
            // The entry's type comes with the listing (no stat), except for a symlink.
            let ft = ent
                .file_type()
                .map_err(|e| StoreError::io("list", &dir, e))?;
            if ft.is_file() || (ft.is_symlink() && ent.path().is_file()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn commit_docs(&self, batch: Vec<DocOp>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let root = self.layout.root();
        let tmp = self.layout.tmp();
        let mut journal = Journal::default();
        let mut staged = Vec::new();
        let res = (|| {
            for op in &batch {
                match op {
                    DocOp::Put {
                        collection,
                        id,
                        bytes,
                    } => {
                        check_doc_id(id)?;
                        let p = fsio::write_temp(&tmp, "doc", bytes)?;
                        staged.push(p.clone());
                        let rel_tmp = p
                            .strip_prefix(root)
                            .map_err(|_| StoreError::Invalid("staging outside the store".into()))?;
                        journal
                            .renames
                            .push((rel_tmp.display().to_string(), self.rel_doc(collection, id)));
                    }
                    DocOp::Delete { collection, id } => {
                        check_doc_id(id)?;
                        journal.deletes.push(self.rel_doc(collection, id));
                    }
                }
            }
            let bytes = serde_json::to_vec_pretty(&journal)
                .map_err(|e| StoreError::Invalid(format!("journal: {e}")))?;
            // The staged documents were fsynced one by one; the journal's rename is the commit
            // point.
            fsio::write_atomic(&tmp, &self.layout.journal(), &bytes)
        })();
        if let Err(e) = res {
            for p in staged {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        self.apply(&journal)
    }

    fn recover(&self) -> Result<()> {
        let path = self.layout.journal();
        let Some(bytes) = fsio::read_optional(&path)? else {
            return Ok(());
        };
        let journal: Journal = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::corrupt(format!("journal {}", path.display()), e.to_string())
        })?;
        log::warn!(
            "finishing an interrupted store commit from {}",
            path.display()
        );
        self.apply(&journal)
    }

    fn needs_recovery(&self) -> bool {
        self.layout.journal().exists()
    }

    /// The collection's stamp token (rewritten by every commit that changes it), and its
    /// directory's inode, modification and change times (which move when a file is written
    /// there by other means, to the clock's granularity).
    fn doc_stamp(&self, collection: &Collection) -> Result<Option<String>> {
        if !is_stamped(collection) {
            return Ok(None);
        }
        let token = fsio::read_optional(&self.stamp_path(&collection.dir()))?.unwrap_or_default();
        let dir = self.layout.root().join(collection.dir());
        let m = match std::fs::metadata(&dir) {
            Ok(m) => m,
            // No directory, no documents: a store opened read-only before its first image.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("stat", &dir, e)),
        };
        Ok(Some(format!(
            "{}:{}:{}.{}:{}.{}",
            String::from_utf8_lossy(&token),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        )))
    }
}

/// The entries of a directory, sorted; a missing directory is empty.
pub fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| StoreError::io("list", dir, e))?;
        v.push(ent.path());
    }
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_belong_to_their_stamped_collection() {
        let records = |k: &str| Some(Collection::Records(k.to_string()));
        assert_eq!(
            stamped_collection_of("images/ami-0123.json"),
            Some(Collection::Images)
        );
        assert_eq!(
            stamped_collection_of("records/instances/i-0123.json"),
            records("instances")
        );
        for other in [
            "snapshots/snap-1.json",
            "images",
            "images/x/y.json",
            "records/instances",
            "records//x.json",
            "records/instances/i-1/vda.cow",
            "config.json",
        ] {
            assert_eq!(stamped_collection_of(other), None, "{other}");
        }
        assert!(is_stamped(&Collection::Images));
        assert!(is_stamped(&Collection::Records("instances".into())));
        assert!(!is_stamped(&Collection::Snapshots));
    }

    #[test]
    fn a_record_commit_moves_only_its_collections_stamp() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        for d in layout.skeleton() {
            std::fs::create_dir_all(d).unwrap();
        }
        let b = LocalDir::new(layout);
        let inst = Collection::Records("instances".into());
        let put = |c: &Collection, id: &str| {
            b.commit_docs(vec![DocOp::Put {
                collection: c.clone(),
                id: id.into(),
                bytes: b"{}".to_vec(),
            }])
            .unwrap()
        };
        put(&inst, "i-1");
        put(&Collection::Images, "ami-1");
        let (s_inst, s_img) = (
            b.doc_stamp(&inst).unwrap(),
            b.doc_stamp(&Collection::Images).unwrap(),
        );
        assert!(s_inst.is_some() && s_img.is_some());
        assert_eq!(b.doc_stamp(&Collection::Snapshots).unwrap(), None);
        put(&inst, "i-1");
        assert_ne!(
            b.doc_stamp(&inst).unwrap(),
            s_inst,
            "an update moves the stamp"
        );
        assert_eq!(b.doc_stamp(&Collection::Images).unwrap(), s_img);
        let s_inst = b.doc_stamp(&inst).unwrap();
        b.commit_docs(vec![DocOp::Delete {
            collection: inst.clone(),
            id: "i-1".into(),
        }])
        .unwrap();
        assert_ne!(
            b.doc_stamp(&inst).unwrap(),
            s_inst,
            "a deletion moves the stamp"
        );
        // The stamp file sits beside the records' directory, not among the records.
        assert!(b.list_docs(&inst).unwrap().is_empty());
    }
}
