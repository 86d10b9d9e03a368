//! The store's Rust API as the instance module uses it: snapshot views as block backends,
//! incremental snapshots from a volume's dirty chunks, registering images, records that keep
//! snapshots alive.

mod store_common;

use amivm::store::records::{Record, StoreRefs};
use amivm::store::{AccountId, CreateImageRequest, NoProgress, Store, StoreError, CHUNK_SIZE};
use amivm::volume::{BlockBackend, VolumeError};
use std::collections::BTreeMap;
use store_common::*;

/// A volume in memory: the stand-in for an instance's copy-on-write disk.
struct MemVolume(Vec<u8>);

impl BlockBackend for MemVolume {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), VolumeError> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), VolumeError> {
        let o = offset as usize;
        self.0[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), VolumeError> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.0[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn read_only(&self) -> bool {
        false
    }
    fn serial(&self) -> String {
        "mem".into()
    }
}

/// `image create --name NAME --root DISK` with the test kernel, for `owner`.
fn create_request(
    env: &Env,
    owner: &AccountId,
    name: &str,
    disk: &std::path::Path,
) -> CreateImageRequest {
    CreateImageRequest {
        owner: owner.clone(),
        name: name.into(),
        description: String::new(),
        kernel: env.kernel(),
        initrd: None,
        cmdline: None,
        root: disk.to_path_buf(),
        root_size: None,
        volumes: vec![],
        tags: BTreeMap::new(),
        device_discovery: Default::default(),
        product_codes: Vec::new(),
        default_user: None,
    }
}

fn setup() -> (Env, Store, AccountId, amivm::store::Image, Vec<u8>) {
    let env = Env::new();
    let disk = env.path("disk.raw");
    make_disk(&disk, 10 * CHUNK + 8192, &[(0, 1), (2, 2), (5, 3), (10, 4)]);
    let store = Store::open(&env.store).unwrap();
    let owner = AccountId::parse(OWNER).unwrap();
    let req = create_request(&env, &owner, "base", &disk);
    let image = store.create_image(&req, &NoProgress).unwrap();
    let bytes = std::fs::read(&disk).unwrap();
    (env, store, owner, image, bytes)
}

fn read_all(v: &mut dyn BlockBackend) -> Vec<u8> {
    let mut out = vec![0u8; v.size() as usize];
    v.read_at(&mut out, 0).unwrap();
    out
}

#[test]
fn snapshot_view_is_a_read_only_block_backend() {
    let (_env, store, owner, image, bytes) = setup();
    let resolved = store.resolve_image(&owner, "base").unwrap();
    assert_eq!(resolved, image);
    store.check_launch_permission(&owner, &image).unwrap();
    let stranger = AccountId::parse(STRANGER).unwrap();
    assert!(matches!(
        store.check_launch_permission(&stranger, &image),
        Err(StoreError::PermissionDenied(_))
    ));
    let kernel = store.kernel_blob_path(&image).unwrap();
    assert_eq!(std::fs::read(kernel).unwrap().len(), 64 + 4096);
    assert!(store.initrd_blob_path(&image).unwrap().is_none());

    let snap = &image.root_mapping().unwrap().ebs.snapshot_id;
    let mut view = store.snapshot_view(snap).unwrap();
    assert_eq!(view.size(), bytes.len() as u64);
    assert!(view.read_only());
    assert!(view.serial().len() <= 20);
    assert_eq!(read_all(&mut view), bytes);
    // Reads across chunk boundaries, inside zero chunks, and sector-sized ones.
    for (off, len) in [
        (CHUNK_SIZE - 512, 1024),
        (3 * CHUNK_SIZE + 7, 100),
        (10 * CHUNK_SIZE, 8192),
        (0, 512),
    ] {
        let mut buf = vec![0xAAu8; len];
        view.read_at(&mut buf, off).unwrap();
        assert_eq!(buf, bytes[off as usize..off as usize + len]);
    }
    let mut buf = [0u8; 512];
    assert!(matches!(
        view.read_at(&mut buf, view.size()),
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(view.write_at(&buf, 0), Err(VolumeError::ReadOnly)));

    // A larger volume over the same snapshot: the tail reads as zeros, across the short last
    // chunk too.
    let size = bytes.len() as u64;
    let mut big = store
        .snapshot_view(snap)
        .unwrap()
        .with_size(size + (3 << 20))
        .unwrap();
    assert_eq!(big.size(), size + (3 << 20));
    let mut tail = vec![0xAAu8; 16384];
    big.read_at(&mut tail, 10 * CHUNK_SIZE).unwrap();
    assert_eq!(tail[..8192], bytes[10 * CHUNK_SIZE as usize..]);
    assert!(tail[8192..].iter().all(|b| *b == 0));
    let mut end = vec![0xAAu8; 4096];
    big.read_at(&mut end, size + (3 << 20) - 4096).unwrap();
    assert!(end.iter().all(|b| *b == 0));
    assert!(store
        .snapshot_view(snap)
        .unwrap()
        .with_size(size - 512)
        .is_err());
}

#[test]
fn incremental_snapshot_stores_only_dirty_chunks() {
    let (env, store, owner, image, bytes) = setup();
    let parent = image.root_mapping().unwrap().ebs.snapshot_id.clone();
    let chunks_before = env.chunk_files().len();

    // The instance writes into chunk 2 (stored), chunk 7 (was zero), and zeroes chunk 5.
    let mut vol = MemVolume(bytes.clone());
    vol.write_at(b"marker written by the guest", 2 * CHUNK_SIZE + 4096)
        .unwrap();
    vol.write_at(&noise(42, 4096), 7 * CHUNK_SIZE).unwrap();
    vol.discard(5 * CHUNK_SIZE, CHUNK_SIZE).unwrap();
    let dirty = [2u64, 7, 5];

    let id = store
        .create_snapshot_incremental(&owner, &parent, &mut vol, &dirty, "after the guest ran")
        .unwrap();
    let new = store.snapshot(&id).unwrap();
    let old = store.snapshot(&parent).unwrap();
    assert_eq!(new.parent_snapshot_id.as_ref(), Some(&parent));
    assert_eq!(new.changed_chunks_vs(&old), vec![2, 5, 7]);
    // Two new chunks stored (2 and 7); the zeroed one is elided.
    assert_eq!(env.chunk_files().len(), chunks_before + 2);
    // The new snapshot reads as the volume; the old one is unchanged.
    assert_eq!(read_all(&mut store.snapshot_view(&id).unwrap()), vol.0);
    assert_eq!(read_all(&mut store.snapshot_view(&parent).unwrap()), bytes);

    // Register an image over it (what create-image does), and launch-check it.
    let mut root = image.root_mapping().unwrap().clone();
    root.ebs.snapshot_id = id.clone();
    let new_image = store
        .image_from_snapshots(
            &owner,
            "base backup",
            "from an instance",
            &image,
            vec![root],
        )
        .unwrap();
    store.register_image(&new_image).unwrap();
    let got = store.resolve_image(&owner, "base backup").unwrap();
    assert_eq!(got.source_image_id.as_ref(), Some(&image.image_id));
    assert_eq!(got.kernel, image.kernel);
    // The same name again is refused.
    let mut dup = new_image.clone();
    dup.image_id = amivm::store::ImageId::generate();
    assert!(matches!(
        store.register_image(&dup),
        Err(StoreError::NameTaken { .. })
    ));
}

#[test]
fn snapshots_in_use_are_never_deleted() {
    let (env, store, owner, image, bytes) = setup();
    let snap = image.root_mapping().unwrap().ebs.snapshot_id.clone();

    // A second image over the same snapshot.
    let twin = store
        .image_from_snapshots(
            &owner,
            "twin",
            "",
            &image,
            image.block_device_mappings.clone(),
        )
        .unwrap();
    store.register_image(&twin).unwrap();
    let r = store
        .deregister_image(&owner, &image.image_id, true)
        .unwrap();
    assert!(r.deleted_snapshots.is_empty());
    assert!(
        r.kept_snapshots[0].1.contains("used by image"),
        "{:?}",
        r.kept_snapshots
    );

    // An instance record referencing it.
    let rec = Record {
        id: "i-0123456789abcdef0".to_string(),
        refs: StoreRefs::of_image(&twin),
        data: serde_json::json!({ "State": "stopped" }),
    };
    store.put_record("instances", &rec).unwrap();
    let back: Record<serde_json::Value> = store.get_record("instances", &rec.id).unwrap().unwrap();
    assert_eq!(back, rec);
    let dir = store.record_data_dir("instances", &rec.id).unwrap();
    std::fs::write(dir.join("overlay"), b"private data").unwrap();

    let r = store
        .deregister_image(&owner, &twin.image_id, true)
        .unwrap();
    assert!(
        r.kept_snapshots[0]
            .1
            .contains("instances/i-0123456789abcdef0"),
        "{:?}",
        r.kept_snapshots
    );
    assert!(matches!(
        store.delete_snapshot(&owner, &snap),
        Err(StoreError::InUse(_))
    ));
    // gc keeps the snapshot's chunks and the kernel the record still needs.
    let report = store.gc().unwrap();
    assert_eq!(report.chunks_removed, 0);
    assert_eq!(report.blobs_removed, 0);
    assert!(store
        .backend()
        .object_path(amivm::store::ObjectNs::Blob, &twin.kernel.blob.blob)
        .is_ok());
    assert_eq!(read_all(&mut store.snapshot_view(&snap).unwrap()), bytes);
    assert_eq!(std::fs::read(dir.join("overlay")).unwrap(), b"private data");

    // A record cannot reference a snapshot that does not exist.
    let mut bad = rec.clone();
    bad.id = "i-0000000000000000a".into();
    bad.refs.snapshot_ids = vec![amivm::store::SnapshotId::generate()];
    assert!(matches!(
        store.put_record("instances", &bad),
        Err(StoreError::NotFound(_))
    ));

    // update_record: read-modify-write under the lock.
    store
        .update_record::<serde_json::Value, _>("instances", &rec.id, |cur| {
            let mut r = cur.unwrap();
            r.data["State"] = "terminated".into();
            Ok(Some(r))
        })
        .unwrap();
    let listed: Vec<Record<serde_json::Value>> = store.list_records("instances").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].data["State"], "terminated");

    // A record whose snapshot lives elsewhere (an instance launched from a region, whose
    // record was written through the region) can still be changed here, but cannot gain a
    // reference the store lacks.
    let remote = amivm::store::SnapshotId::generate();
    let mut far = rec.clone();
    far.id = "i-0000000000000000b".into();
    far.refs.snapshot_ids = vec![remote.clone()];
    std::fs::write(
        env.store.join(format!("records/instances/{}.json", far.id)),
        serde_json::to_vec_pretty(&far).unwrap(),
    )
    .unwrap();
    store
        .update_record::<serde_json::Value, _>("instances", &far.id, |cur| {
            let mut r = cur.unwrap();
            r.data["State"] = "terminated".into();
            Ok(Some(r))
        })
        .unwrap();
    let gained = store.update_record::<serde_json::Value, _>("instances", &far.id, |cur| {
        let mut r = cur.unwrap();
        r.refs
            .snapshot_ids
            .push(amivm::store::SnapshotId::generate());
        Ok(Some(r))
    });
    assert!(matches!(gained, Err(StoreError::NotFound(_))), "{gained:?}");
    assert!(store.delete_record("instances", &far.id).unwrap());

    // Once the record is gone, the snapshot can go, and gc frees its chunks.
    assert!(store.delete_record("instances", &rec.id).unwrap());
    store.delete_snapshot(&owner, &snap).unwrap();
    let report = store.gc().unwrap();
    assert!(report.chunks_removed >= 4);
    assert!(env.chunk_files().is_empty());
}

#[test]
fn an_interrupted_commit_is_finished_on_open() {
    let (env, store, owner, image, _) = setup();
    // Simulate a crash after the journal was written but before it was applied: a staged
    // manifest in tmp/ and a journal naming it.
    let mut copy = image.clone();
    copy.image_id = amivm::store::ImageId::generate();
    copy.name = "recovered".into();
    let staged = env.store.join("tmp/doc-crashed");
    std::fs::write(&staged, serde_json::to_vec_pretty(&copy).unwrap()).unwrap();
    let journal = serde_json::json!({
        "Renames": [["tmp/doc-crashed", format!("images/{}.json", copy.image_id)]],
        "Deletes": [format!("images/{}.json", image.image_id)],
    });
    std::fs::write(env.store.join("journal.json"), journal.to_string()).unwrap();
    drop(store);
    let store = Store::open(&env.store).unwrap();
    assert!(!env.store.join("journal.json").exists());
    assert_eq!(
        store.resolve_image(&owner, "recovered").unwrap().image_id,
        copy.image_id
    );
    assert!(store.resolve_image(&owner, "base").is_err());
}

/// A launch sizes each volume from its mapping's VolumeSize without reading the snapshot
/// manifest first, so registration refuses a mapping smaller than its snapshot.
#[test]
fn a_mapping_smaller_than_its_snapshot_is_refused() {
    let env = Env::new();
    let disk = env.path("big.raw");
    // 1 GiB and one chunk: VolumeSize 2 GiB; sparse, only the last chunk holds data.
    let size = (1 << 30) + CHUNK;
    make_disk(&disk, size, &[((1 << 30) / CHUNK, 9)]);
    let store = Store::open(&env.store).unwrap();
    let owner = AccountId::parse(OWNER).unwrap();
    let req = create_request(&env, &owner, "big", &disk);
    let image = store.create_image(&req, &NoProgress).unwrap();
    let mut root = image.root_mapping().unwrap().clone();
    assert_eq!(root.ebs.volume_size, 2);
    root.ebs.volume_size = 1;
    let small = store
        .image_from_snapshots(&owner, "too small", "", &image, vec![root.clone()])
        .unwrap();
    let err = store.register_image(&small).unwrap_err().to_string();
    assert!(
        err.contains("VolumeSize 1 GiB is smaller than snapshot")
            && err.contains(&size.to_string()),
        "{err}"
    );
    assert!(store.resolve_image(&owner, "too small").is_err());
    root.ebs.volume_size = 2;
    let fits = store
        .image_from_snapshots(&owner, "fits", "", &image, vec![root])
        .unwrap();
    store.register_image(&fits).unwrap();
}
