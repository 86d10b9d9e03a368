//! Where things live inside a store directory, and where the default store is.
//!
//! ```text
//! STORE/
//!   config.json              the store's own account id (created on first use)
//!   lock                     flock(2): exclusive around every commit
//!   gc.lock                  flock(2): shared while staging data, exclusive for gc
//!   journal.json             present only while a commit is being applied (redo log)
//!   tmp/                     staging: txn-*/ directories, temporary files (gc empties it)
//!   chunks/ab/abcd…(64 hex)  512 KiB volume chunks, named by their sha256
//!   blobs/ab/abcd…           kernels and initrds, named by their sha256
//!   snapshots/snap-….json    snapshot manifests
//!   images/ami-….json        image manifests
//!   images.stamp             a random token each commit that changes images/ rewrites
//!                            (the in-memory image index's check, see [`super::image_index`])
//!   records/KIND/ID.json     records of other modules (instances), see [`super::records`]
//!   records/KIND.stamp       the same kind of token for each kind of record (the instance
//!                            index's check, see `crate::instance::index`)
//!   records/KIND/ID/         their private data (overlays, logs): the store never reads it
//! ```

use super::error::{Result, StoreError};
use std::path::{Path, PathBuf};

/// Environment variable naming the store directory (highest precedence after `--store`).
pub const ENV_HOME: &str = "AMIVM_HOME";
/// Environment variable naming the caller's account (after `--account`).
pub const ENV_ACCOUNT: &str = "AMIVM_ACCOUNT";
/// The store's subdirectory of `$XDG_DATA_HOME` (XDG Base Directory Specification).
pub const XDG_SUBDIR: &str = "amivm";
/// `$XDG_DATA_HOME`'s default relative to `$HOME`, per the XDG Base Directory Specification.
pub const XDG_DATA_HOME_DEFAULT: &str = ".local/share";

pub const CONFIG_FILE: &str = "config.json";
pub const LOCK_FILE: &str = "lock";
pub const GC_LOCK_FILE: &str = "gc.lock";
pub const JOURNAL_FILE: &str = "journal.json";
pub const TMP_DIR: &str = "tmp";
pub const CHUNKS_DIR: &str = "chunks";
pub const BLOBS_DIR: &str = "blobs";
pub const SNAPSHOTS_DIR: &str = "snapshots";
pub const IMAGES_DIR: &str = "images";
pub const RECORDS_DIR: &str = "records";
/// Suffix of manifest and record files.
pub const JSON_EXT: &str = "json";
/// Suffix of a collection's stamp file (`images.stamp`).
pub const STAMP_EXT: &str = "stamp";

/// The default store directory: `$AMIVM_HOME`, else `$XDG_DATA_HOME/amivm`, else
/// `~/.local/share/amivm`.
pub fn default_dir() -> Result<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(home) = non_empty(ENV_HOME) {
        return Ok(PathBuf::from(home));
    }
    if let Some(xdg) = non_empty("XDG_DATA_HOME") {
        return Ok(PathBuf::from(xdg).join(XDG_SUBDIR));
    }
    match non_empty("HOME") {
        Some(home) => Ok(PathBuf::from(home)
            .join(XDG_DATA_HOME_DEFAULT)
            .join(XDG_SUBDIR)),
        None => Err(StoreError::Invalid(
            "cannot find the store: none of AMIVM_HOME, XDG_DATA_HOME, HOME is set; use --store DIR"
                .into(),
        )),
    }
}

/// Paths inside one store directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }
    pub fn gc_lock(&self) -> PathBuf {
        self.root.join(GC_LOCK_FILE)
    }
    pub fn journal(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }
    pub fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }
    /// Content-addressed objects are fanned out by the first two hex digits, so no directory
    /// holds more than 1/256 of them.
    pub fn object(&self, ns_dir: &str, hex: &str) -> PathBuf {
        let fan = hex.get(..2).unwrap_or("00");
        self.root.join(ns_dir).join(fan).join(hex)
    }
    /// A JSON document (manifest or record) named `id`.
    pub fn doc(&self, dir: &str, id: &str) -> PathBuf {
        self.root.join(dir).join(format!("{id}.{JSON_EXT}"))
    }
    /// Every directory a fresh store needs.
    pub fn skeleton(&self) -> [PathBuf; 6] {
        [
            self.tmp(),
            self.dir(CHUNKS_DIR),
            self.dir(BLOBS_DIR),
            self.dir(SNAPSHOTS_DIR),
            self.dir(IMAGES_DIR),
            self.dir(RECORDS_DIR),
        ]
    }
}
