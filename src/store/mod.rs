//! The image store: images (AMIs), snapshots, blobs, accounts and launch permissions.
//!
//! # Model
//! - A **snapshot** ([`Snapshot`]) is a volume cut into 512 KiB chunks ([`CHUNK_SIZE`], the
//!   EBS block size). Each non-zero chunk is stored once under its sha256; the manifest holds
//!   the size and the ordered list of non-zero chunks, so identical data across snapshots and
//!   images is stored once and an incremental snapshot stores only the chunks that changed.
//! - An **image** ([`Image`]) names a kernel blob, an optional initrd blob, a command line and
//!   block-device mappings onto snapshots, with an owner, launch permissions and tags.
//! - **Records** ([`records`]) let other modules (instances) persist small JSON documents in
//!   the store, atomically, and tell `gc` which snapshots and blobs they still use.
//!
//! # Guarantees
//! Every change goes through a [`Txn`]: data is staged under `tmp/`, and the commit (under an
//! flock(2) on `STORE/lock`) makes objects durable (fsync) before renaming them into place and
//! applies the manifests through a redo journal, so readers see all of a change or none of it,
//! even across `kill -9` or power loss. `gc` ([`Store::gc`]) deletes only chunks and blobs
//! that no snapshot, image or record references, and staging left by dead processes; it
//! waits for running transactions (they hold `STORE/gc.lock` shared).
//!
//! # API for the instance module
//! ```no_run
//! use amivm::store::{snapshots::dirty_chunks_from_blocks, Record, Result, Store, StoreRefs};
//! use amivm::volume::cow::CowOverlay;
//!
//! fn demo() -> Result<()> {
//!     let store = Store::open(&Store::default_dir()?)?;
//!     let caller = store.resolve_account(None)?; // --account / AMIVM_ACCOUNT / config
//!     let image = store.resolve_image(&caller, "my-image")?; // id or unique name
//!     store.check_launch_permission(&caller, &image)?;
//!     let kernel = store.kernel_blob_path(&image)?; // a file the VMM can read
//!     let initrd = store.initrd_blob_path(&image)?; // Option<PathBuf>
//!     let root = image.root_mapping().expect("validated images have a root mapping");
//!     let snap = &root.ebs.snapshot_id;
//!
//!     // Keep the image's snapshots and blobs alive while the instance exists.
//!     let id = "i-0123456789abcdef0";
//!     let rec = Record { id: id.to_string(), refs: StoreRefs::of_image(&image), data: "running" };
//!     store.put_record("instances", &rec)?;
//!
//!     // The instance's disk: a copy-on-write overlay over a read-only snapshot view.
//!     let base = store.snapshot_view(snap)?; // impl BlockBackend: chunk bytes or zeros
//!     let overlay_path = store.record_data_dir("instances", id)?.join("vda.cow");
//!     let mut disk = CowOverlay::open(Box::new(base), &overlay_path, snap.as_str())?;
//!
//!     // create-image: hash only the chunks the instance wrote.
//!     let dirty = dirty_chunks_from_blocks(disk.dirty_blocks(), CowOverlay::block_size());
//!     let new_snap =
//!         store.create_snapshot_incremental(&caller, snap, &mut disk, &dirty, "from i-0123")?;
//!     let mut mapping = root.clone();
//!     mapping.ebs.snapshot_id = new_snap;
//!     let new_image = store.image_from_snapshots(&caller, "my-image v2", "", &image, vec![mapping])?;
//!     store.register_image(&new_image)?;
//!     # let _ = (kernel, initrd);
//!     Ok(())
//! }
//! ```
//! To build a multi-volume image atomically, use [`Store::begin`] and
//! [`Txn::snapshot_incremental`] per volume, then [`Txn::put_image`] and [`Txn::commit`] with
//! [`Store::check_register`] as the check. Records: [`Store::put_record`],
//! [`Store::update_record`], [`Store::get_record`], [`Store::list_records`],
//! [`Store::delete_record`], [`Store::record_data_dir`].

pub mod access_keys;
pub mod accounts;
pub mod backend;
pub mod bundle;
pub mod chunker;
pub mod disk;
pub mod disk_image;
pub mod error;
pub mod filter;
pub mod fsio;
pub mod gc;
pub mod ids;
pub mod image_index;
pub mod images;
pub mod key_pairs;
pub mod layout;
pub mod login_user;
pub mod manifest;
pub mod pipeline;
pub mod product_codes;
pub mod qcow2;
pub mod records;
pub mod region;
pub mod snapshot;
pub mod snapshots;
pub mod source;
pub mod ssh_keys;
pub mod syncer;
pub mod txn;
pub mod verify;
pub mod view;

pub use backend::{Collection, LocalDir, ObjectNs, ObjectStore};
pub use disk_image::DiskImageRequest;
pub use error::{Result, StoreError};
pub use filter::{ImageFilter, OwnerFilter};
pub use gc::GcReport;
pub use ids::{AccountId, ContentHash, ImageId, KeyPairId, SnapshotId};
pub use image_index::ImageSet;
pub use images::{CreateImageRequest, VolumeSpec};
pub use key_pairs::{KeyPair, KeyPairRef};
pub use manifest::{
    Architecture, BlobRef, BlockDeviceMapping, EbsBlockDevice, Image, ImageState, KernelFormat,
    KernelRef,
};
pub use records::{Record, StoreRefs};
pub use snapshot::{ChunkEntry, Snapshot, SnapshotState, CHUNK_SIZE};
pub use txn::Txn;
pub use verify::VerifyReport;
pub use view::SnapshotView;

use fsio::{FileLock, LockMode};
use layout::Layout;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Progress reports from long operations (hashing a volume, import). The CLI shows a bar.
pub trait Progress {
    /// A new phase of `total` units (bytes).
    fn start(&self, label: &str, total: u64);
    /// `n` more units done.
    fn advance(&self, n: u64);
    /// The phase is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}

/// An open image store. Cheap to clone; safe to share between threads and processes.
#[derive(Debug, Clone)]
pub struct Store {
    layout: Layout,
    backend: Arc<dyn ObjectStore>,
    /// Opened with [`Store::open_read_only`]: nothing may be created or changed.
    read_only: bool,
    /// The image manifests in memory, shared by clones ([`Store::images`]).
    image_cache: Arc<image_index::ImageCache>,
}

/// Parse the document `id` of collection `c` (a damaged one is a corrupt-store error).
pub(crate) fn parse_doc<T: serde::de::DeserializeOwned>(
    c: &Collection,
    id: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt(format!("{} {id}", c.dir()), e.to_string()))
}

impl Store {
    /// The default store directory: `$AMIVM_HOME`, else `$XDG_DATA_HOME/amivm`, else
    /// `~/.local/share/amivm`.
    pub fn default_dir() -> Result<PathBuf> {
        layout::default_dir()
    }

    /// Open the store in `dir`, creating it on first use, and finish any commit that a crash
    /// interrupted. The store directory and everything it creates are private to the user
    /// (modes [`fsio::PRIVATE_DIR_MODE`] and [`fsio::PRIVATE_FILE_MODE`]).
    pub fn open(dir: &Path) -> Result<Store> {
        let layout = Layout::new(dir);
        let backend = Arc::new(LocalDir::new(layout.clone()));
        Self::with_backend(dir, backend)
    }

    /// Open a store whose objects live in `backend`; `dir` holds the local state (lock files,
    /// staging, account config).
    pub fn with_backend(dir: &Path, backend: Arc<dyn ObjectStore>) -> Result<Store> {
        let layout = Layout::new(dir);
        for d in layout.skeleton() {
            fsio::mkdirs(&d)?;
        }
        fsio::make_private(layout.root())?;
        let store = Store {
            layout,
            backend,
            read_only: false,
            image_cache: Arc::default(),
        };
        if store.backend.needs_recovery() {
            drop(store.lock()?);
        }
        Ok(store)
    }

    /// Open an existing store for reading only (export, dump, verify): nothing is created in
    /// it, no lock file is written, and it may be on a read-only file system or belong to a
    /// user who only lets us read it. Refused if a commit interrupted by a crash is waiting to
    /// be finished and the store cannot be written.
    pub fn open_read_only(dir: &Path) -> Result<Store> {
        let layout = Layout::new(dir);
        if !layout.dir(layout::SNAPSHOTS_DIR).is_dir() {
            return Err(StoreError::NotFound(format!(
                "there is no image store in {}",
                dir.display()
            )));
        }
        let backend = Arc::new(LocalDir::new(layout.clone()));
        if backend.needs_recovery() {
            Store::open(dir).map_err(|e| {
                StoreError::Invalid(format!(
                    "store {} has an interrupted commit to finish, which needs write access: {e}",
                    dir.display()
                ))
            })?;
        }
        Ok(Store {
            layout,
            backend,
            read_only: true,
            image_cache: Arc::default(),
        })
    }

    /// Whether the store was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn refuse_if_read_only(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::Invalid(format!(
                "store {} is opened read-only",
                self.dir().display()
            )));
        }
        Ok(())
    }

    /// Hold `gc.lock` shared while reading objects, so gc cannot delete them meanwhile. A
    /// read-only store takes it on the existing lock file, if there is one.
    pub fn gc_shared_lock(&self) -> Result<Option<FileLock>> {
        if self.read_only {
            FileLock::acquire_existing(&self.layout.gc_lock(), LockMode::Shared)
        } else {
            FileLock::acquire(&self.layout.gc_lock(), LockMode::Shared).map(Some)
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.layout.root()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn backend(&self) -> &dyn ObjectStore {
        &*self.backend
    }

    /// A shared handle on the backend (for views that outlive a borrow of the store).
    pub fn backend_arc(&self) -> Arc<dyn ObjectStore> {
        self.backend.clone()
    }

    /// Take the store lock (exclusive) and finish any interrupted commit. Not re-entrant:
    /// never call a mutating store method while holding it.
    pub fn lock(&self) -> Result<FileLock> {
        self.refuse_if_read_only()?;
        let lock = FileLock::acquire(&self.layout.lock(), LockMode::Exclusive)?;
        self.backend.recover()?;
        Ok(lock)
    }

    /// Start a transaction (see [`Txn`]).
    pub fn begin(&self) -> Result<Txn<'_>> {
        self.refuse_if_read_only()?;
        Txn::begin(self)
    }

    fn read_doc<T: serde::de::DeserializeOwned>(
        &self,
        c: &Collection,
        id: &str,
    ) -> Result<Option<T>> {
        self.backend
            .get_doc(c, id)?
            .map(|bytes| parse_doc(c, id, &bytes))
            .transpose()
    }

    /// Several documents of a collection, parsed, in the order of `ids`; read together
    /// (concurrently from a region, see [`ObjectStore::get_docs`]).
    fn read_docs<T: serde::de::DeserializeOwned>(
        &self,
        c: &Collection,
        ids: &[String],
    ) -> Vec<Result<Option<T>>> {
        let docs = self.backend.get_docs(c, ids);
        ids.iter()
            .zip(docs)
            .map(|(id, doc)| doc?.map(|bytes| parse_doc(c, id, &bytes)).transpose())
            .collect()
    }

    /// Image manifests by id, read together, in the order of `ids`: each as
    /// [`Store::image`] gives it.
    pub fn images_by_id(&self, ids: &[ImageId]) -> Vec<Result<Image>> {
        let keys: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        self.read_docs(&Collection::Images, &keys)
            .into_iter()
            .zip(ids)
            .map(|(doc, id)| {
                doc?.ok_or_else(|| StoreError::NotFound(format!("image {id} not found")))
            })
            .collect()
    }

    /// Snapshot manifests by id, read together, in the order of `ids`: each as
    /// [`Store::snapshot`] gives it.
    pub fn snapshots_by_id(&self, ids: &[SnapshotId]) -> Vec<Result<Snapshot>> {
        let keys: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        self.read_docs::<Snapshot>(&Collection::Snapshots, &keys)
            .into_iter()
            .zip(ids)
            .map(|(doc, id)| {
                let s =
                    doc?.ok_or_else(|| StoreError::NotFound(format!("snapshot {id} not found")))?;
                s.validate()?;
                Ok(s)
            })
            .collect()
    }

    /// An image manifest by id, whoever owns it (no permission check).
    pub fn image(&self, id: &ImageId) -> Result<Image> {
        self.read_doc(&Collection::Images, id.as_str())?
            .ok_or_else(|| StoreError::NotFound(format!("image {id} not found")))
    }

    /// Every image manifest in the store (no permission check), oldest first. Damaged
    /// manifests are skipped with a warning. [`Store::images`] shares them without copying.
    pub fn all_images(&self) -> Result<Vec<Image>> {
        let mut v = self.images()?.as_slice().to_vec();
        v.sort_by(|a, b| (&a.creation_date, &a.image_id).cmp(&(&b.creation_date, &b.image_id)));
        Ok(v)
    }

    /// A snapshot manifest by id (no permission check).
    pub fn snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let s: Snapshot = self
            .read_doc(&Collection::Snapshots, id.as_str())?
            .ok_or_else(|| StoreError::NotFound(format!("snapshot {id} not found")))?;
        s.validate()?;
        Ok(s)
    }

    /// Whether a snapshot manifest exists.
    pub fn has_snapshot(&self, id: &SnapshotId) -> Result<bool> {
        Ok(self
            .backend
            .get_doc(&Collection::Snapshots, id.as_str())?
            .is_some())
    }

    /// Every snapshot manifest in the store (no permission check).
    pub fn all_snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut v = Vec::new();
        let ids: Vec<SnapshotId> = self
            .backend
            .list_docs(&Collection::Snapshots)?
            .into_iter()
            .filter_map(|id| {
                SnapshotId::parse(&id)
                    .map_err(|e| log::warn!("skipping snapshot {id}: {e}"))
                    .ok()
            })
            .collect();
        for (id, s) in ids.iter().zip(self.snapshots_by_id(&ids)) {
            match s {
                Ok(s) => v.push(s),
                Err(e) => log::warn!("skipping snapshot {id}: {e}"),
            }
        }
        v.sort_by(|a, b| (&a.start_time, &a.snapshot_id).cmp(&(&b.start_time, &b.snapshot_id)));
        Ok(v)
    }

    /// Start fetching what launching `image` reads first (its snapshot manifests, kernel and
    /// initrd) where the backend is remote; see [`ObjectStore::prefetch`].
    pub fn prefetch_launch(&self, image: &Image) {
        let snapshots: Vec<SnapshotId> = image.snapshot_ids().cloned().collect();
        self.backend.prefetch(&snapshots, &image.blobs());
    }

    /// A file holding the image's kernel.
    pub fn kernel_blob_path(&self, image: &Image) -> Result<PathBuf> {
        self.backend
            .object_path(ObjectNs::Blob, &image.kernel.blob.blob)
    }

    /// A file holding the image's initrd, if it has one.
    pub fn initrd_blob_path(&self, image: &Image) -> Result<Option<PathBuf>> {
        image
            .initrd
            .as_ref()
            .map(|b| self.backend.object_path(ObjectNs::Blob, &b.blob))
            .transpose()
    }

    /// A read-only block device over a snapshot: reads return the chunk's bytes, or zeros.
    /// Use [`SnapshotView::with_size`] to present a mapping's larger `VolumeSize`.
    pub fn snapshot_view(&self, id: &SnapshotId) -> Result<SnapshotView> {
        SnapshotView::new(self.backend.clone(), self.snapshot(id)?)
    }
}
