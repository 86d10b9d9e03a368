//! Image operations: resolve, list, create, register, copy, share, modify, deregister.

use super::accounts::{can_see, require_owner};
use super::backend::{Collection, DocOp};
use super::chunker::ChunkPlan;
use super::error::{Result, StoreError};
use super::filter::{ImageFilter, OwnerFilter};
use super::ids::{AccountId, ImageId, SnapshotId};
use super::manifest::{
    self, device_name, gib_ceil, now_rfc3339, Architecture, BlockDeviceMapping, EbsBlockDevice,
    Image, ImageState, KernelRef, GIB, MANIFEST_VERSION, MAX_VOLUME_BYTES, MAX_VOLUME_SIZE_GIB,
    ROOT_DEVICE_NAME,
};
use super::snapshot::Snapshot;
use super::source::{self, OsRelease, SourceKind};
use super::txn::to_json;
use super::{BlobRef, Progress, Store, Txn};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One extra disk of `image create`.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub source: PathBuf,
    pub read_only: bool,
}

/// Everything `image create` needs.
#[derive(Debug, Clone)]
pub struct CreateImageRequest {
    pub owner: AccountId,
    pub name: String,
    pub description: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel command line; [`manifest::DEFAULT_CMDLINE`] when `None`.
    pub cmdline: Option<String>,
    /// Root volume source: raw file, qcow2 image or directory.
    pub root: PathBuf,
    /// Root volume size in bytes: the file-system size for a directory source, else the
    /// mapping's VolumeSize (at least the source's size).
    pub root_size: Option<u64>,
    /// Further disks, `/dev/vdb` onwards.
    pub volumes: Vec<VolumeSpec>,
    pub tags: BTreeMap<String, String>,
    /// How the kernel finds its devices (recorded in the manifest).
    pub device_discovery: manifest::DeviceDiscovery,
    /// Marketplace product codes the owner attaches ([`super::product_codes`]).
    pub product_codes: Vec<String>,
    /// The user to log in as over SSH ([`super::login_user`]).
    pub default_user: Option<String>,
}

/// What `deregister_image` did with the image's snapshots.
#[derive(Debug, Clone, Default)]
pub struct DeregisterReport {
    pub deleted_snapshots: Vec<SnapshotId>,
    /// Snapshots kept although deletion was asked, and why.
    pub kept_snapshots: Vec<(SnapshotId, String)>,
}

impl Store {
    /// Find an image `caller` can see by id, or by name (a name several visible images share
    /// resolves to the caller's own one if exactly one is theirs, else it is ambiguous).
    pub fn resolve_image(&self, caller: &AccountId, id_or_name: &str) -> Result<Image> {
        // "ami-" + 17 hex digits is an id; anything else (even "ami-web") is a name.
        if let Ok(id) = ImageId::parse(id_or_name) {
            return match self.image(&id) {
                Ok(img) if can_see(caller, &img) => Ok(img),
                Ok(_) | Err(StoreError::NotFound(_)) => Err(StoreError::NotFound(format!(
                    "image {id} not found (or not visible to account {caller})"
                ))),
                Err(e) => Err(e),
            };
        }
        let all = self.images()?;
        let matches: Vec<&Image> = all
            .as_slice()
            .iter()
            .filter(|i| i.name == id_or_name && can_see(caller, i))
            .collect();
        let own: Vec<&&Image> = matches.iter().filter(|i| i.owner_id == *caller).collect();
        match (matches.len(), own.len()) {
            (0, _) => Err(StoreError::NotFound(format!(
                "no image named '{id_or_name}' is visible to account {caller}"
            ))),
            (1, _) => Ok(matches[0].clone()),
            (_, 1) => Ok((*own[0]).clone()),
            _ => Err(StoreError::Ambiguous {
                name: id_or_name.to_string(),
                ids: matches.iter().map(|i| i.image_id.to_string()).collect(),
            }),
        }
    }

    /// Images `caller` can see, selected by `owner` and `filter`, oldest first.
    pub fn list_images(
        &self,
        caller: &AccountId,
        owner: &OwnerFilter,
        filter: &ImageFilter,
    ) -> Result<Vec<Image>> {
        let all = self.images()?;
        let mut v: Vec<Image> = all
            .select(caller, owner, filter)
            .into_iter()
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.creation_date, &a.image_id).cmp(&(&b.creation_date, &b.image_id)));
        Ok(v)
    }

    /// Refuse if `owner` already has an image called `name` (other than `except`).
    pub fn check_name_free(
        &self,
        owner: &AccountId,
        name: &str,
        except: Option<&ImageId>,
    ) -> Result<()> {
        for img in self.images()?.as_slice() {
            if img.owner_id == *owner && img.name == name && Some(&img.image_id) != except {
                return Err(StoreError::NameTaken {
                    owner: owner.to_string(),
                    name: name.to_string(),
                    id: img.image_id.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Create an image from a kernel and volume sources (`amivm image create`).
    pub fn create_image(&self, req: &CreateImageRequest, progress: &dyn Progress) -> Result<Image> {
        manifest::validate_description(&req.description)?;
        let format = source::kernel_format(&req.kernel)?;
        if let Some(i) = &req.initrd {
            source::check_initrd(i)?;
        }
        let common = req.common();
        let root_kind = self.check_new_image(&common)?;

        let started = std::time::Instant::now();
        let mut txn = self.begin()?;
        let kernel = txn.put_blob_file(&req.kernel)?;
        let initrd = req
            .initrd
            .as_ref()
            .map(|p| txn.put_blob_file(p))
            .transpose()?;
        let staged = self.stage_volumes(&mut txn, &common, root_kind, true, progress)?;
        let os = staged.os.unwrap_or_default();
        let image = new_image(
            &common,
            req.description.clone(),
            KernelRef {
                blob: kernel,
                format,
            },
            initrd,
            req.cmdline
                .clone()
                .unwrap_or_else(|| manifest::DEFAULT_CMDLINE.into()),
            staged.mappings,
            os,
        );
        commit_new_image(txn, image, started)
    }

    /// The checks every new image passes before anything is staged: name, tags, volume
    /// count, readable sources, name free. Returns what the root source is.
    pub(super) fn check_new_image(&self, req: &NewImage<'_>) -> Result<SourceKind> {
        manifest::validate_name(req.name)?;
        manifest::validate_tags(req.tags)?;
        super::product_codes::new_codes(req.owner, req.product_codes)?;
        if let Some(u) = req.default_user {
            super::login_user::validate_user_name(u)?;
        }
        if let Some(size) = req.root_size.filter(|s| *s > MAX_VOLUME_BYTES) {
            return Err(StoreError::Invalid(format!(
                "root size {size} bytes is more than the largest volume, {MAX_VOLUME_SIZE_GIB} GiB"
            )));
        }
        let root_kind = source::detect(req.root)?;
        for v in req.volumes {
            source::detect(&v.source)?;
        }
        if req.volumes.len() >= 26 {
            return Err(StoreError::Invalid(
                "at most 25 extra volumes (/dev/vdb../dev/vdz)".into(),
            ));
        }
        self.check_name_free(req.owner, req.name, None)?;
        Ok(root_kind)
    }

    /// Chunk the root and extra volumes into `txn`, with their snapshots and mappings.
    /// `want_os` reads the root's os-release (a directory or a bare ext2/3/4 image).
    pub(super) fn stage_volumes(
        &self,
        txn: &mut Txn<'_>,
        req: &NewImage<'_>,
        root_kind: SourceKind,
        want_os: bool,
        progress: &dyn Progress,
    ) -> Result<StagedVolumes> {
        let mut mappings = Vec::new();
        let mut os = None;
        let mut root_snapshot = None;
        let sources = std::iter::once((req.root, false, true)).chain(
            req.volumes
                .iter()
                .map(|v| (v.source.as_path(), v.read_only, false)),
        );
        for (n, (src, read_only, is_root)) in sources.enumerate() {
            let dev =
                device_name(n).ok_or_else(|| StoreError::Invalid("too many volumes".into()))?;
            let fs_size = if is_root && root_kind == SourceKind::Directory {
                req.root_size
            } else {
                None
            };
            let scratch = txn.scratch_dir().to_path_buf();
            let mut opened = source::open(src, fs_size, &scratch, is_root && want_os)?;
            if is_root {
                os = opened.os.take();
            }
            let chunks =
                super::chunker::chunk_volume(txn, &mut *opened.reader, ChunkPlan::All, progress)?;
            let size = opened.reader.size();
            // The path is the user's, and may hold any byte: keep the description printable.
            let src_name = crate::text::escape_unsafe(&src.display().to_string()).into_owned();
            let desc = format!("{} of image {} from {src_name}", dev, req.name);
            let snap = txn.stage_snapshot(req.owner, size, chunks, None, &desc)?;
            let mut volume_size = gib_ceil(size);
            if is_root && root_kind != SourceKind::Directory {
                if let Some(want) = req.root_size {
                    if want < size {
                        return Err(StoreError::Invalid(format!(
                            "--size {} GiB is smaller than the root volume ({size} bytes)",
                            want as f64 / GIB as f64
                        )));
                    }
                    volume_size = gib_ceil(want);
                }
            }
            mappings.push(BlockDeviceMapping {
                device_name: dev,
                ebs: EbsBlockDevice {
                    snapshot_id: snap.snapshot_id.clone(),
                    volume_size,
                    delete_on_termination: true,
                    read_only,
                },
            });
            if is_root {
                root_snapshot = Some(snap);
            }
        }
        let root_snapshot =
            root_snapshot.ok_or_else(|| StoreError::Invalid("no root volume".into()))?;
        Ok(StagedVolumes {
            mappings,
            os,
            root_snapshot,
        })
    }

    /// Register a ready manifest (the instance module's create-image): its snapshots must
    /// exist and its name be free for its owner. Id, date and state are taken as given.
    pub fn register_image(&self, image: &Image) -> Result<ImageId> {
        image.validate()?;
        let mut txn = self.begin()?;
        txn.put_image(image)?;
        txn.commit(|s| s.check_register(image))?;
        Ok(image.image_id.clone())
    }

    /// Checks before an image manifest becomes visible (run under the store lock).
    pub fn check_register(&self, image: &Image) -> Result<()> {
        if self.image(&image.image_id).is_ok() {
            return Err(StoreError::Conflict(format!(
                "image {} already exists",
                image.image_id
            )));
        }
        for m in &image.block_device_mappings {
            let s = &m.ebs.snapshot_id;
            // A missing snapshot is NotFound. A launch sizes the volume from the mapping alone
            // (before the manifest is read), so the mapping must cover the snapshot.
            let size = self.snapshot(s)?.size_bytes;
            if m.ebs.volume_size.saturating_mul(GIB) < size {
                return Err(StoreError::Invalid(format!(
                    "{}: VolumeSize {} GiB is smaller than snapshot {s} ({size} bytes)",
                    m.device_name, m.ebs.volume_size
                )));
            }
        }
        for b in image.blobs() {
            if !self.backend().object_exists(super::ObjectNs::Blob, &b)? {
                return Err(StoreError::NotFound(format!("blob {b} not found")));
            }
        }
        self.check_name_free(&image.owner_id, &image.name, None)
    }

    /// A new image manifest for `owner` from existing parts, e.g. the snapshots of an
    /// instance's volumes; stage it with [`super::Txn::put_image`] or pass it to
    /// [`Store::register_image`].
    pub fn image_from_snapshots(
        &self,
        owner: &AccountId,
        name: &str,
        description: &str,
        base: &Image,
        mappings: Vec<BlockDeviceMapping>,
    ) -> Result<Image> {
        manifest::validate_name(name)?;
        manifest::validate_description(description)?;
        let mut img = base.clone();
        img.image_id = ImageId::generate();
        img.name = name.to_string();
        img.description = description.to_string();
        img.owner_id = owner.clone();
        img.creation_date = now_rfc3339();
        img.state = ImageState::Available;
        img.public = false;
        img.launch_permissions.clear();
        img.block_device_mappings = mappings;
        img.source_image_id = Some(base.image_id.clone());
        img.validate()?;
        Ok(img)
    }

    /// Copy an image the caller can see: new image and snapshot manifests owned by the caller,
    /// sharing every chunk and blob (no data is copied).
    pub fn copy_image(
        &self,
        caller: &AccountId,
        src: &Image,
        name: &str,
        description: Option<&str>,
    ) -> Result<Image> {
        if !can_see(caller, src) {
            return Err(StoreError::NotFound(format!(
                "image {} not found",
                src.image_id
            )));
        }
        manifest::validate_name(name)?;
        self.check_name_free(caller, name, None)?;
        let mut txn = self.begin()?;
        let mut mappings = Vec::new();
        for m in &src.block_device_mappings {
            let s = self.snapshot(&m.ebs.snapshot_id)?;
            let desc = format!(
                "Copied for {name} from {} ({})",
                s.snapshot_id, src.image_id
            );
            let copy = txn.stage_snapshot(
                caller,
                s.size_bytes,
                s.chunks.clone(),
                Some(&s.snapshot_id),
                &desc,
            )?;
            let mut m = m.clone();
            m.ebs.snapshot_id = copy.snapshot_id;
            mappings.push(m);
        }
        let desc = description.unwrap_or(&src.description);
        let image = self.image_from_snapshots(caller, name, desc, src, mappings)?;
        txn.put_image(&image)?;
        let sources: Vec<SnapshotId> = src.snapshot_ids().cloned().collect();
        txn.commit(|s| {
            for id in &sources {
                if !s.has_snapshot(id)? {
                    return Err(StoreError::NotFound(format!(
                        "snapshot {id} was deleted during the copy"
                    )));
                }
            }
            s.check_name_free(caller, name, None)
        })?;
        Ok(image)
    }

    /// Change an image under the store lock, as its owner.
    fn update_owned_image(
        &self,
        caller: &AccountId,
        id: &ImageId,
        action: &str,
        f: impl FnOnce(&mut Image) -> Result<()>,
    ) -> Result<Image> {
        let _lock = self.lock()?;
        let mut img = self.image(id)?;
        if !can_see(caller, &img) {
            return Err(StoreError::NotFound(format!(
                "image {id} not found (or not visible to account {caller})"
            )));
        }
        require_owner(caller, &img, action)?;
        f(&mut img)?;
        img.validate()?;
        self.backend().commit_docs(vec![DocOp::Put {
            collection: Collection::Images,
            id: id.to_string(),
            bytes: to_json(&img)?,
        }])?;
        Ok(img)
    }

    /// Grant launch permission to accounts, or make the image public.
    pub fn share_image(
        &self,
        caller: &AccountId,
        id: &ImageId,
        accounts: &[AccountId],
        public: bool,
    ) -> Result<Image> {
        self.update_owned_image(caller, id, "share", |img| {
            for a in accounts {
                if *a != img.owner_id && !img.launch_permissions.contains(a) {
                    img.launch_permissions.push(a.clone());
                }
            }
            img.launch_permissions.sort();
            if public {
                super::product_codes::check_make_public(caller, img)?;
            }
            img.public |= public;
            Ok(())
        })
    }

    /// Revoke launch permissions, or make the image private.
    pub fn unshare_image(
        &self,
        caller: &AccountId,
        id: &ImageId,
        accounts: &[AccountId],
        public: bool,
    ) -> Result<Image> {
        self.update_owned_image(caller, id, "unshare", |img| {
            img.launch_permissions.retain(|a| !accounts.contains(a));
            if public {
                img.public = false;
            }
            Ok(())
        })
    }

    /// Change the description and tags.
    pub fn modify_image(
        &self,
        caller: &AccountId,
        id: &ImageId,
        description: Option<&str>,
        add_tags: &BTreeMap<String, String>,
        remove_tags: &[String],
    ) -> Result<Image> {
        self.update_owned_image(caller, id, "modify", |img| {
            if let Some(d) = description {
                manifest::validate_description(d)?;
                img.description = d.to_string();
            }
            for k in remove_tags {
                img.tags.remove(k);
            }
            img.tags
                .extend(add_tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            manifest::validate_tags(&img.tags)
        })
    }

    /// Deregister an image; with `delete_snapshots`, also delete its snapshots that the caller
    /// owns and that no other image and no record uses.
    pub fn deregister_image(
        &self,
        caller: &AccountId,
        id: &ImageId,
        delete_snapshots: bool,
    ) -> Result<DeregisterReport> {
        self.deregister_image_keeping(caller, id, delete_snapshots, &HashMap::new())
    }

    /// [`Store::deregister_image`], keeping also the snapshots in `users` (by whom they are
    /// used: a region's pins, see [`super::region::pins`]).
    pub fn deregister_image_keeping(
        &self,
        caller: &AccountId,
        id: &ImageId,
        delete_snapshots: bool,
        users: &HashMap<SnapshotId, String>,
    ) -> Result<DeregisterReport> {
        let _lock = self.lock()?;
        let img = self.image(id)?;
        if !can_see(caller, &img) {
            return Err(StoreError::NotFound(format!(
                "image {id} not found (or not visible to account {caller})"
            )));
        }
        require_owner(caller, &img, "deregister")?;
        let mut report = DeregisterReport::default();
        let mut batch = vec![DocOp::Delete {
            collection: Collection::Images,
            id: id.to_string(),
        }];
        if delete_snapshots {
            let others: Vec<Image> = self
                .all_images()?
                .into_iter()
                .filter(|i| i.image_id != *id)
                .collect();
            let held = self.record_refs()?;
            for sid in img.snapshot_ids() {
                let why =
                    if let Some(o) = others.iter().find(|o| o.snapshot_ids().any(|s| s == sid)) {
                        Some(format!("used by image {}", o.image_id))
                    } else if let Some(r) = held.snapshot_users.get(sid).or(users.get(sid)) {
                        Some(format!("used by {r}"))
                    } else {
                        match self.snapshot(sid) {
                            Ok(s) if s.owner_id != *caller => {
                                Some(format!("owned by account {}", s.owner_id))
                            }
                            Ok(_) => None,
                            Err(StoreError::NotFound(_)) => Some("already deleted".into()),
                            Err(e) => return Err(e),
                        }
                    };
                match why {
                    Some(w) => report.kept_snapshots.push((sid.clone(), w)),
                    None => {
                        batch.push(DocOp::Delete {
                            collection: Collection::Snapshots,
                            id: sid.to_string(),
                        });
                        report.deleted_snapshots.push(sid.clone());
                    }
                }
            }
        }
        self.backend().commit_docs(batch)?;
        Ok(report)
    }
}

/// What every new image is made of, whatever its kernel comes from.
pub(super) struct NewImage<'a> {
    pub owner: &'a AccountId,
    pub name: &'a str,
    pub tags: &'a BTreeMap<String, String>,
    pub root: &'a Path,
    pub root_size: Option<u64>,
    pub volumes: &'a [VolumeSpec],
    pub device_discovery: manifest::DeviceDiscovery,
    pub product_codes: &'a [String],
    pub default_user: Option<&'a str>,
}

impl CreateImageRequest {
    pub(super) fn common(&self) -> NewImage<'_> {
        NewImage {
            owner: &self.owner,
            name: &self.name,
            tags: &self.tags,
            root: &self.root,
            root_size: self.root_size,
            volumes: &self.volumes,
            device_discovery: self.device_discovery,
            product_codes: &self.product_codes,
            default_user: self.default_user.as_deref(),
        }
    }
}

/// What [`Store::stage_volumes`] staged.
pub(super) struct StagedVolumes {
    pub mappings: Vec<BlockDeviceMapping>,
    /// The root's os-release, when asked for and found.
    pub os: Option<OsRelease>,
    /// The root volume's staged snapshot.
    pub root_snapshot: Snapshot,
}

/// A new image manifest owned by `req.owner`, available, private.
pub(super) fn new_image(
    req: &NewImage<'_>,
    description: String,
    kernel: KernelRef,
    initrd: Option<BlobRef>,
    cmdline: String,
    mappings: Vec<BlockDeviceMapping>,
    os: OsRelease,
) -> Image {
    Image {
        manifest_version: MANIFEST_VERSION,
        image_id: ImageId::generate(),
        name: req.name.to_string(),
        description,
        architecture: Architecture::X86_64,
        owner_id: req.owner.clone(),
        creation_date: now_rfc3339(),
        state: ImageState::Available,
        public: false,
        launch_permissions: Vec::new(),
        kernel,
        initrd,
        kernel_command_line: cmdline,
        root_device_name: ROOT_DEVICE_NAME.into(),
        block_device_mappings: mappings,
        tags: req.tags.clone(),
        source_image_id: None,
        os_name: os.name,
        os_version: os.version,
        device_discovery: req.device_discovery,
        // Checked by check_new_image before anything was staged.
        product_codes: super::product_codes::new_codes(req.owner, req.product_codes)
            .unwrap_or_default(),
        default_user: req.default_user.map(str::to_string),
    }
}

/// Stage `image` and commit `txn`, checking under the lock that its name is still free.
pub(super) fn commit_new_image(
    mut txn: Txn<'_>,
    image: Image,
    started: std::time::Instant,
) -> Result<Image> {
    txn.put_image(&image)?;
    let (chunks, bytes) = txn.new_chunks();
    let staged = started.elapsed();
    txn.commit(|s| s.check_name_free(&image.owner_id, &image.name, None))?;
    log::info!(
        "{}: staged {chunks} new chunks ({bytes} bytes) in {:.3} s, committed in {:.3} s",
        image.image_id,
        staged.as_secs_f64(),
        (started.elapsed() - staged).as_secs_f64()
    );
    Ok(image)
}
