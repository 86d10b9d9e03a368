//! The image index: every image manifest held in memory, shared by all clones of a [`Store`],
//! so listing 10 000 images is a scan of memory instead of 10 000 file reads.
//!
//! # Coherence
//! The index is rebuilt whenever the images collection's **stamp** ([`ObjectStore::doc_stamp`])
//! differs from the one it was built under. The local store's stamp is a random token that
//! every commit touching `images/` rewrites *after* its manifests are in place and *before* it
//! releases the store lock (and before it removes its journal, so a commit finished by crash
//! recovery rewrites it too), plus the directory's inode and change times (which catch
//! manifests written by hand). So:
//! - once a change (a launch permission revoked by `amivm image unshare` in another process,
//!   say) has been committed, the next lookup in any process sees it: an index never serves
//!   a permission older than the last finished commit;
//! - a lookup that races with a commit sees the state before or after it, and an index built
//!   from a half-seen state carries the old stamp, so the next lookup rebuilds it;
//! - a backend without stamps (`None`) is read afresh on every lookup.
//!
//! Reading the stamp costs one small file read and one `statx`; a rebuild reads every
//! manifest, as listing did before (damaged manifests are skipped with a warning).

use super::backend::{Collection, ObjectStore};
use super::error::Result;
use super::filter::{self, ImageFilter, OwnerFilter};
use super::ids::{AccountId, ImageId};
use super::manifest::Image;
use super::Store;
use std::sync::{Arc, Mutex, MutexGuard};

/// Every image manifest of a store at one moment, ordered by image id.
#[derive(Debug, Default)]
pub struct ImageSet {
    by_id: Vec<Image>,
}

impl ImageSet {
    /// Read every image manifest from `backend` (no permission check).
    pub fn load(backend: &dyn ObjectStore) -> Result<ImageSet> {
        let mut by_id = Vec::new();
        let ids = backend.list_docs(&Collection::Images)?;
        let docs = backend.get_docs(&Collection::Images, &ids);
        for (id, doc) in ids.iter().zip(docs) {
            let parsed = doc.and_then(|b| {
                b.map(|bytes| super::parse_doc::<Image>(&Collection::Images, id, &bytes))
                    .transpose()
            });
            match parsed {
                Ok(Some(img)) => by_id.push(img),
                // Deleted between the listing and the read.
                Ok(None) => {}
                Err(e) => log::warn!("skipping image {id}: {e}"),
            }
        }
        Ok(ImageSet::from_images(by_id))
    }

    /// A set of the given manifests.
    pub fn from_images(mut images: Vec<Image>) -> ImageSet {
        images.sort_by(|a, b| a.image_id.cmp(&b.image_id));
        ImageSet { by_id: images }
    }

    /// Every image, ordered by image id.
    pub fn as_slice(&self) -> &[Image] {
        &self.by_id
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The image with this id, whoever owns it (no permission check).
    pub fn get(&self, id: &ImageId) -> Option<&Image> {
        self.by_id
            .binary_search_by(|i| i.image_id.cmp(id))
            .ok()
            .map(|n| &self.by_id[n])
    }

    /// The images `caller` may see that pass `owner` and `filter`, ordered by image id.
    pub fn select(
        &self,
        caller: &AccountId,
        owner: &OwnerFilter,
        filter: &ImageFilter,
    ) -> Vec<&Image> {
        filter::select(&self.by_id, caller, owner, filter)
    }
}

/// The index one store (and its clones) keeps: the set and the stamp it was built under.
#[derive(Default)]
pub(super) struct ImageCache {
    current: Mutex<Option<(String, Arc<ImageSet>)>>,
}

impl std::fmt::Debug for ImageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCache").finish_non_exhaustive()
    }
}

impl ImageCache {
    fn lock(&self) -> MutexGuard<'_, Option<(String, Arc<ImageSet>)>> {
        // A panic while rebuilding leaves at worst an old (stamp, set) pair, which the next
        // lookup checks against the stamp like any other.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Every image manifest, current as of the last finished commit (see the module docs).
    /// Cheap when nothing changed: the set is shared, not copied.
    pub fn images(&self) -> Result<Arc<ImageSet>> {
        let stamp = self.backend().doc_stamp(&Collection::Images)?;
        // Held while rebuilding, so concurrent lookups wait for one rebuild instead of each
        // reading every manifest.
        let mut current = self.image_cache.lock();
        if let (Some(stamp), Some((built_under, set))) = (&stamp, &*current) {
            if stamp == built_under {
                return Ok(set.clone());
            }
        }
        let set = Arc::new(ImageSet::load(self.backend())?);
        *current = stamp.map(|s| (s, set.clone()));
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::{
        Architecture, BlobRef, ImageState, KernelFormat, KernelRef, MANIFEST_VERSION,
    };
    use crate::store::ContentHash;

    fn image(id: &str, owner: &str, name: &str) -> Image {
        let h = ContentHash::parse(&"ab".repeat(32)).unwrap();
        Image {
            manifest_version: MANIFEST_VERSION,
            image_id: ImageId::parse(id).unwrap(),
            name: name.into(),
            description: String::new(),
            architecture: Architecture::X86_64,
            owner_id: AccountId::parse(owner).unwrap(),
            creation_date: "2024-01-01T00:00:00Z".into(),
            state: ImageState::Available,
            public: false,
            launch_permissions: Vec::new(),
            kernel: KernelRef {
                blob: BlobRef { blob: h, size: 1 },
                format: KernelFormat::Elf,
            },
            initrd: None,
            kernel_command_line: String::new(),
            root_device_name: "/dev/vda".into(),
            block_device_mappings: Vec::new(),
            tags: Default::default(),
            source_image_id: None,
            os_name: None,
            os_version: None,
            device_discovery: Default::default(),
            product_codes: Vec::new(),
            default_user: None,
        }
    }

    #[test]
    fn ordered_by_id_and_found_by_id() {
        let a = "111111111111";
        let set = ImageSet::from_images(vec![
            image("ami-00000000000000003", a, "c"),
            image("ami-00000000000000001", a, "a"),
            image("ami-00000000000000002", a, "b"),
        ]);
        let names: Vec<&str> = set.as_slice().iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let id = ImageId::parse("ami-00000000000000002").unwrap();
        assert_eq!(set.get(&id).map(|i| i.name.as_str()), Some("b"));
        let missing = ImageId::parse("ami-00000000000000004").unwrap();
        assert!(set.get(&missing).is_none());
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn select_applies_visibility_owner_and_filter() {
        let (a, b) = ("111111111111", "222222222222");
        let mut shared = image("ami-00000000000000002", b, "shared");
        shared.launch_permissions.push(AccountId::parse(a).unwrap());
        let set = ImageSet::from_images(vec![
            image("ami-00000000000000001", a, "mine"),
            shared,
            image("ami-00000000000000003", b, "private"),
        ]);
        let caller = AccountId::parse(a).unwrap();
        let all = set.select(&caller, &OwnerFilter::All, &ImageFilter::default());
        let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["mine", "shared"]);
        let own = set.select(&caller, &OwnerFilter::Caller, &ImageFilter::default());
        assert_eq!(own.len(), 1);
        let f = ImageFilter::parse(&["name=sh*".into()]).unwrap();
        assert_eq!(set.select(&caller, &OwnerFilter::All, &f).len(), 1);
    }
}
