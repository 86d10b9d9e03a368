//! Export and import of images as tar bundles.
//!
//! ```text
//! SHA256SUMS                 first entry: "<sha256>  <path>" for every other entry
//! amivm-bundle.json          {"Format": "amivm-bundle", "Version": 1, "ImageId": ...}
//! image.json                 the image manifest
//! snapshots/snap-….json      its snapshot manifests
//! blobs/<sha256>             kernel, initrd
//! chunks/<sha256>            every non-zero chunk of its snapshots, once
//! ```
//! Export re-hashes every chunk and blob it copies, so a damaged store object is reported
//! instead of being exported.
//!
//! Import streams the tar into a staging directory, checks every entry against SHA256SUMS
//! (and chunk and blob names against their content), checks that nothing listed is missing,
//! that the bundle carries every chunk and blob its manifests use (a bundle that only names
//! the hashes of data in the store would let anyone link to another account's private
//! volumes), and that the manifests are complete and consistent, and only then commits: a
//! tampered, truncated or incomplete bundle leaves the store unchanged. Ids and tags are kept;
//! as with EC2's `ImportImage`, the importing account owns the image and its snapshots, and
//! the image is private (no launch permissions, not public).

use super::accounts::can_see;
use super::backend::ObjectNs;
use super::error::{Result, StoreError};
use super::fsio;
use super::ids::{AccountId, ContentHash, SnapshotId};
use super::manifest::{Image, GIB};
use super::snapshot::{check_parent_chains, Snapshot, CHUNK_SIZE};
use super::txn::to_json;
use super::verify::{damaged_object, HashingReader};
use super::{Progress, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Value of `Format` in `amivm-bundle.json`.
pub const BUNDLE_FORMAT: &str = "amivm-bundle";
/// Version of the bundle layout written by this code.
pub const BUNDLE_VERSION: u32 = 1;
pub const SUMS_NAME: &str = "SHA256SUMS";
pub const BUNDLE_INFO_NAME: &str = "amivm-bundle.json";
pub const IMAGE_NAME: &str = "image.json";
/// Largest SHA256SUMS accepted: 100 bytes a line for 2.5 million entries (over 1 TiB of chunks).
pub const MAX_SUMS_BYTES: u64 = 256 << 20;
/// Largest manifest accepted (a fully written 4 TiB volume lists 8 Mi chunks at ~80 bytes).
pub const MAX_DOC_BYTES: u64 = 1 << 30;
/// Largest kernel or initrd accepted.
pub const MAX_BLOB_BYTES: u64 = 4 << 30;
/// Copy buffer for tar entries.
const COPY_BUF: usize = 1 << 20;

/// `amivm-bundle.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BundleInfo {
    format: String,
    version: u32,
    image_id: String,
}

/// What an entry of a bundle is, from its path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    Info,
    Image,
    Snapshot(SnapshotId),
    Blob(ContentHash),
    Chunk(ContentHash),
}

impl Entry {
    fn parse(path: &str) -> Option<Entry> {
        match path {
            BUNDLE_INFO_NAME => return Some(Entry::Info),
            IMAGE_NAME => return Some(Entry::Image),
            _ => {}
        }
        let (dir, name) = path.split_once('/')?;
        match dir {
            "snapshots" => SnapshotId::parse(name.strip_suffix(".json")?)
                .ok()
                .map(Entry::Snapshot),
            "blobs" => ContentHash::parse(name).ok().map(Entry::Blob),
            "chunks" => ContentHash::parse(name).ok().map(Entry::Chunk),
            _ => None,
        }
    }

    fn path(&self) -> String {
        match self {
            Entry::Info => BUNDLE_INFO_NAME.into(),
            Entry::Image => IMAGE_NAME.into(),
            Entry::Snapshot(id) => format!("snapshots/{id}.json"),
            Entry::Blob(h) => format!("blobs/{h}"),
            Entry::Chunk(h) => format!("chunks/{h}"),
        }
    }

    fn max_len(&self) -> u64 {
        match self {
            Entry::Chunk(_) => CHUNK_SIZE,
            Entry::Blob(_) => MAX_BLOB_BYTES,
            _ => MAX_DOC_BYTES,
        }
    }
}

/// Sizes written by an export.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExportReport {
    pub chunks: u64,
    pub bytes: u64,
}

fn tar_header(len: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

impl Store {
    /// Write `image` (which `caller` must be able to see) to a tar bundle at `out`, atomically.
    pub fn export_image(
        &self,
        caller: &AccountId,
        image: &Image,
        out: &Path,
        progress: &dyn Progress,
    ) -> Result<ExportReport> {
        if !can_see(caller, image) {
            return Err(StoreError::NotFound(format!(
                "image {} not found",
                image.image_id
            )));
        }
        // Keep gc away while objects are being read.
        let _gc = self.gc_shared_lock()?;
        let mut docs: Vec<(Entry, Vec<u8>)> = Vec::new();
        let info = BundleInfo {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            image_id: image.image_id.to_string(),
        };
        docs.push((Entry::Info, to_json(&info)?));
        docs.push((Entry::Image, to_json(image)?));
        let mut chunks = BTreeMap::new();
        for sid in image.snapshot_ids() {
            let snap = self.snapshot(sid)?;
            for c in &snap.chunks {
                chunks.insert(c.1, snap.chunk_len(c.0));
            }
            docs.push((Entry::Snapshot(sid.clone()), to_json(&snap)?));
        }
        let mut objects: Vec<(Entry, ObjectNs, ContentHash)> = Vec::new();
        for b in image.blobs().into_iter().collect::<BTreeSet<_>>() {
            objects.push((Entry::Blob(b), ObjectNs::Blob, b));
        }
        for h in chunks.keys() {
            objects.push((Entry::Chunk(*h), ObjectNs::Chunk, *h));
        }
        let mut sums = String::new();
        for (e, bytes) in &docs {
            sums.push_str(&format!("{}  {}\n", ContentHash::of(bytes), e.path()));
        }
        for (e, _, h) in &objects {
            sums.push_str(&format!("{h}  {}\n", e.path()));
        }

        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle");
        let tmp = dir.join(format!(".{name}.{}", fsio::temp_name("part")));
        let mut report = ExportReport::default();
        let res = (|| {
            let f = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
            let mut tar = tar::Builder::new(BufWriter::new(f));
            let werr = |e: std::io::Error| StoreError::io("write", &tmp, e);
            tar.append_data(
                &mut tar_header(sums.len() as u64),
                SUMS_NAME,
                sums.as_bytes(),
            )
            .map_err(werr)?;
            for (e, bytes) in &docs {
                tar.append_data(&mut tar_header(bytes.len() as u64), e.path(), &bytes[..])
                    .map_err(werr)?;
            }
            let total: u64 = objects
                .iter()
                .map(|(_, ns, h)| if *ns == ObjectNs::Chunk { chunks[h] } else { 0 })
                .sum();
            progress.start("exporting", total);
            for (e, ns, h) in &objects {
                let path = self.backend().object_path(*ns, h)?;
                let file = File::open(&path).map_err(|err| StoreError::io("open", &path, err))?;
                let len = file
                    .metadata()
                    .map_err(|err| StoreError::io("stat", &path, err))?
                    .len();
                if *ns == ObjectNs::Chunk && len > CHUNK_SIZE {
                    return Err(damaged_object(*ns, h, &format!("it has {len} bytes")));
                }
                // Hash what goes into the tar: a damaged object stops the export (the
                // partial file is removed) instead of travelling as good data.
                let mut reader = HashingReader::new(BufReader::new(file));
                tar.append_data(&mut tar_header(len), e.path(), &mut reader)
                    .map_err(werr)?;
                if reader.len() != len || reader.hash() != *h {
                    return Err(damaged_object(
                        *ns,
                        h,
                        "its content does not match its hash",
                    ));
                }
                if *ns == ObjectNs::Chunk {
                    report.chunks += 1;
                    progress.advance(len);
                }
            }
            progress.finish();
            let w = tar.into_inner().map_err(werr)?;
            let f = w.into_inner().map_err(|e| werr(e.into_error()))?;
            f.sync_all().map_err(werr)?;
            report.bytes = f.metadata().map_err(werr)?.len();
            std::fs::rename(&tmp, out).map_err(|e| StoreError::io("rename to", out, e))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map(|_| report)
    }

    /// Import a bundle written by [`Store::export_image`] as `caller`, who becomes the owner
    /// of the (private) image and its snapshots. Returns the imported image.
    pub fn import_bundle(
        &self,
        caller: &AccountId,
        path: &Path,
        progress: &dyn Progress,
    ) -> Result<Image> {
        let bad = |why: String| StoreError::Bundle {
            path: path.display().to_string(),
            why,
        };
        let file = File::open(path).map_err(|e| StoreError::source(path, e.to_string()))?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut txn = self.begin()?;
        let stage = txn.scratch_dir().join("import");
        fsio::mkdirs(&stage)?;

        let mut archive = tar::Archive::new(BufReader::new(file));
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        let mut expected: Option<BTreeMap<String, ContentHash>> = None;
        let mut got: BTreeMap<Entry, PathBuf> = BTreeMap::new();
        progress.start("verifying", total);
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| bad(format!("truncated or damaged: {e}")))?;
            let name = entry
                .path()
                .map_err(|e| bad(format!("bad entry name: {e}")))?
                .to_string_lossy()
                .into_owned();
            let size = entry
                .header()
                .size()
                .map_err(|e| bad(format!("{name}: {e}")))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                return Err(bad(format!("{name}: not a regular file")));
            }
            let Some(sums) = &expected else {
                if name != SUMS_NAME || size > MAX_SUMS_BYTES {
                    return Err(bad(format!(
                        "first entry is '{name}', not {SUMS_NAME}: not an amivm bundle"
                    )));
                }
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| bad(format!("{SUMS_NAME}: truncated or damaged: {e}")))?;
                expected = Some(parse_sums(&text).map_err(bad)?);
                continue;
            };
            let kind =
                Entry::parse(&name).ok_or_else(|| bad(format!("unexpected entry '{name}'")))?;
            let want = *sums
                .get(&name)
                .ok_or_else(|| bad(format!("'{name}' is not listed in {SUMS_NAME}")))?;
            if got.contains_key(&kind) {
                return Err(bad(format!("'{name}' appears twice")));
            }
            if size > kind.max_len() {
                return Err(bad(format!(
                    "'{name}' is {size} bytes, more than {}",
                    kind.max_len()
                )));
            }
            let dest = stage.join(format!("{n}"));
            let (hash, len) = copy_hashing(&mut entry, &dest).map_err(|e| match e {
                CopyError::Read(e) => bad(format!("{name}: truncated or damaged: {e}")),
                CopyError::Write(e) => StoreError::io("write", &dest, e),
            })?;
            if len != size {
                return Err(bad(format!(
                    "'{name}' is truncated ({len} of {size} bytes)"
                )));
            }
            if hash != want {
                return Err(bad(format!(
                    "checksum mismatch for '{name}': the bundle is damaged"
                )));
            }
            got.insert(kind, dest);
            progress.advance(size);
        }
        progress.finish();
        let sums = expected.ok_or_else(|| bad("empty archive: not an amivm bundle".into()))?;
        let missing: Vec<&String> = sums
            .keys()
            .filter(|p| Entry::parse(p).is_none_or(|e| !got.contains_key(&e)))
            .collect();
        if let Some(first) = missing.first() {
            return Err(bad(format!(
                "truncated: {} listed file(s) missing, e.g. '{first}'",
                missing.len()
            )));
        }

        let read_doc = |e: &Entry| -> Result<Vec<u8>> {
            let p = got
                .get(e)
                .ok_or_else(|| bad(format!("'{}' is missing", e.path())))?;
            std::fs::read(p).map_err(|err| StoreError::io("read", p, err))
        };
        let info: BundleInfo = serde_json::from_slice(&read_doc(&Entry::Info)?)
            .map_err(|e| bad(format!("{BUNDLE_INFO_NAME}: {e}")))?;
        if info.format != BUNDLE_FORMAT || info.version != BUNDLE_VERSION {
            return Err(bad(format!(
                "format {} version {} (this amivm reads {BUNDLE_FORMAT} version {BUNDLE_VERSION})",
                info.format, info.version
            )));
        }
        let mut image: Image = serde_json::from_slice(&read_doc(&Entry::Image)?)
            .map_err(|e| bad(format!("{IMAGE_NAME}: {e}")))?;
        image.validate().map_err(|e| bad(e.to_string()))?;
        if image.image_id.as_str() != info.image_id {
            return Err(bad("image.json does not match amivm-bundle.json".into()));
        }
        // The importer owns what it imports, privately: whatever the bundle says about owner
        // and sharing was decided in another store, possibly by someone else.
        image.owner_id = caller.clone();
        image.public = false;
        image.launch_permissions.clear();
        let mut snaps = Vec::new();
        for sid in image.snapshot_ids().collect::<BTreeSet<_>>() {
            let mut snap: Snapshot =
                serde_json::from_slice(&read_doc(&Entry::Snapshot(sid.clone()))?)
                    .map_err(|e| bad(format!("snapshot {sid}: {e}")))?;
            snap.owner_id = caller.clone();
            snap.validate_new().map_err(|e| bad(e.to_string()))?;
            if snap.snapshot_id != *sid {
                return Err(bad(format!(
                    "snapshots/{sid}.json holds {}",
                    snap.snapshot_id
                )));
            }
            for c in &snap.chunks {
                check_carried(&got, ObjectNs::Chunk, &c.1, snap.chunk_len(c.0))
                    .map_err(|why| bad(format!("chunk {} of {sid} {why}", c.1)))?;
            }
            snaps.push(snap);
        }
        for m in &image.block_device_mappings {
            let snap = snaps.iter().find(|s| s.snapshot_id == m.ebs.snapshot_id);
            if let Some(s) = snap.filter(|s| m.ebs.volume_size.saturating_mul(GIB) < s.size_bytes) {
                return Err(bad(format!(
                    "{}: VolumeSize {} GiB is smaller than snapshot {} ({} bytes)",
                    m.device_name, m.ebs.volume_size, s.snapshot_id, s.size_bytes
                )));
            }
        }
        for b in std::iter::once(&image.kernel.blob).chain(&image.initrd) {
            check_carried(&got, ObjectNs::Blob, &b.blob, b.size)
                .map_err(|why| bad(format!("blob {} {why}", b.blob)))?;
        }
        check_parent_chains(&snaps, |p| {
            self.snapshot(p).ok().and_then(|s| s.parent_snapshot_id)
        })
        .map_err(|e| bad(e.to_string()))?;
        self.check_import(&image, &snaps)?;

        for (e, p) in &got {
            match e {
                Entry::Chunk(h) => txn.put_verified_object(ObjectNs::Chunk, h, p.clone())?,
                Entry::Blob(h) => txn.put_verified_object(ObjectNs::Blob, h, p.clone())?,
                _ => {}
            }
        }
        for s in &snaps {
            if !self.has_snapshot(&s.snapshot_id)? {
                txn.put_snapshot(s)?;
            }
        }
        txn.put_image(&image)?;
        txn.commit(|s| s.check_import(&image, &snaps))?;
        Ok(image)
    }

    /// Refuse an import that would clash with what the store holds.
    pub(crate) fn check_import(&self, image: &Image, snaps: &[Snapshot]) -> Result<()> {
        if self.image(&image.image_id).is_ok() {
            return Err(StoreError::Conflict(format!(
                "image {} is already in this store",
                image.image_id
            )));
        }
        for s in snaps {
            match self.snapshot(&s.snapshot_id) {
                Ok(mine) if mine != *s => {
                    return Err(StoreError::Conflict(format!(
                        "snapshot {} is already in this store with different content",
                        s.snapshot_id
                    )))
                }
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.check_name_free(&image.owner_id, &image.name, None)
    }
}

/// Check that the bundle itself carries an object, of `len` bytes: linking to an
/// object the store has but the bundle does not bring would hand the importer data that may
/// belong to another account's private volume. The error completes "chunk H of snap-…".
fn check_carried(
    got: &BTreeMap<Entry, PathBuf>,
    ns: ObjectNs,
    hash: &ContentHash,
    len: u64,
) -> Result<(), String> {
    let (entry, noun) = match ns {
        ObjectNs::Chunk => (Entry::Chunk(*hash), "chunk"),
        ObjectNs::Blob => (Entry::Blob(*hash), "blob"),
    };
    let Some(path) = got.get(&entry) else {
        return Err(format!(
            "is not in the bundle (a bundle must carry every {noun} it uses)"
        ));
    };
    let have = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if have != len {
        return Err(format!("has {have} bytes where {len} are used"));
    }
    Ok(())
}

/// Parse `"<sha256>  <path>"` lines.
fn parse_sums(text: &str) -> Result<BTreeMap<String, ContentHash>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let (hash, path) = line
            .split_once("  ")
            .ok_or_else(|| format!("{SUMS_NAME} line {}: not '<sha256>  <path>'", i + 1))?;
        let hash =
            ContentHash::parse(hash).map_err(|e| format!("{SUMS_NAME} line {}: {e}", i + 1))?;
        let entry =
            Entry::parse(path).ok_or_else(|| format!("{SUMS_NAME} lists unexpected '{path}'"))?;
        if let Entry::Chunk(h) | Entry::Blob(h) = entry {
            if h != hash {
                return Err(format!("{SUMS_NAME}: '{path}' is listed with another hash"));
            }
        }
        if out.insert(path.to_string(), hash).is_some() {
            return Err(format!("{SUMS_NAME} lists '{path}' twice"));
        }
    }
    if !out.contains_key(BUNDLE_INFO_NAME) || !out.contains_key(IMAGE_NAME) {
        return Err(format!(
            "{SUMS_NAME} does not list {BUNDLE_INFO_NAME} and {IMAGE_NAME}"
        ));
    }
    Ok(out)
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copy `r` into a new file at `dest`, returning the sha256 and length of what was copied.
fn copy_hashing(r: &mut dyn Read, dest: &Path) -> Result<(ContentHash, u64), CopyError> {
    let mut out = fsio::create_private(dest).map_err(CopyError::Write)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut len = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        len += n as u64;
    }
    Ok((ContentHash::from_digest(hasher.finalize()), len))
}
