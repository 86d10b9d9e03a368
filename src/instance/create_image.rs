//! `amivm create-image`: a new AMI from an instance's volumes.
//!
//! Each volume's new snapshot is incremental over the snapshot the volume was created from:
//! only the 512 KiB chunks holding a block the instance wrote (the overlay's dirty bitmap) are
//! read, hashed and stored if new; every other chunk is taken from the parent snapshot's
//! manifest. All snapshots and the image are committed in one store transaction. The source
//! image and its snapshots are never written.
//!
//! An instance launched from a region (`run --region`) reads the chunks of its snapshots from
//! there: the new image must not depend on the region, so the snapshots are first pulled whole
//! into the local store (what it lacks is downloaded and checked).

use super::record::Instance;
use super::state::InstanceState;
use super::{InstanceError, Result};
use crate::store::snapshots::dirty_chunks_from_blocks;
use crate::store::{AccountId, BlockDeviceMapping, EbsBlockDevice, Image, Progress, Store};
use crate::volume::CowOverlay;

/// What create-image did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateImageReport {
    pub image_id: String,
    pub snapshot_ids: Vec<String>,
    /// Chunks read and hashed (those the instance wrote to).
    pub chunks_hashed: u64,
    /// Chunks the store did not have yet, and their bytes.
    pub new_chunks: u64,
    pub new_bytes: u64,
    /// Chunks of the instance's snapshots downloaded from its region first.
    pub chunks_fetched: u64,
}

/// Create image `name` from `inst`, owned by `caller`, in `store` (the local store, not one
/// with a region behind it). A running instance needs `no_reboot`: the image then holds what
/// the guest had flushed.
pub fn create_image(
    store: &Store,
    caller: &AccountId,
    inst: &Instance,
    name: &str,
    description: &str,
    no_reboot: bool,
    progress: &dyn Progress,
) -> Result<(Image, CreateImageReport)> {
    match inst.state {
        InstanceState::Terminated | InstanceState::ShuttingDown => {
            return Err(InstanceError::WrongState {
                id: inst.instance_id.clone(),
                state: inst.state,
                why: "its volumes are gone".into(),
            })
        }
        s if s.is_active() && !no_reboot => {
            return Err(InstanceError::WrongState {
                id: inst.instance_id.clone(),
                state: inst.state,
                why: "stop it first, or pass --no-reboot to image what the guest has flushed"
                    .into(),
            })
        }
        _ => {}
    }
    crate::store::manifest::validate_name(name)?;
    crate::store::manifest::validate_description(description)?;
    store.check_name_free(caller, name, None)?;
    let chunks_fetched = match &inst.region {
        Some(r) => {
            let region = store.open_region(r)?;
            let ids: Vec<_> = inst
                .volumes
                .iter()
                .filter(|v| !v.deleted)
                .map(|v| v.snapshot_id.clone())
                .collect();
            let pulled = crate::store::region::transfer::pull_snapshots(
                store,
                &region,
                inst.image.image_id.as_str(),
                &ids,
                &inst.image.blobs(),
                progress,
            )?;
            pulled.chunks_fetched
        }
        None => 0,
    };
    let dir = inst.dir(store)?;
    let mut txn = store.begin()?;
    let mut mappings = Vec::new();
    let mut snapshot_ids = Vec::new();
    let mut hashed = 0;
    for v in &inst.volumes {
        if v.deleted {
            continue;
        }
        let view = super::launch::base_view(store, v)?;
        // Read-only and unlocked: a running instance (--no-reboot) holds the write lock.
        let mut overlay = CowOverlay::open_read_only(
            Box::new(view),
            &dir.file_path(&v.overlay)?,
            v.snapshot_id.as_str(),
        )?;
        let chunks = dirty_chunks_from_blocks(overlay.dirty_blocks(), CowOverlay::block_size());
        hashed += chunks.len() as u64;
        let snap_desc = format!(
            "Created by amivm create-image for {} from {} ({})",
            inst.instance_id, v.volume_id, v.device_name
        );
        let snap = txn.snapshot_incremental(
            caller,
            &v.snapshot_id,
            &mut overlay,
            &chunks,
            &snap_desc,
            progress,
        )?;
        let volume_size = inst
            .image
            .block_device_mappings
            .iter()
            .find(|m| m.device_name == v.device_name)
            .map_or(snap.volume_size, |m| {
                m.ebs.volume_size.max(snap.volume_size)
            });
        snapshot_ids.push(snap.snapshot_id.to_string());
        mappings.push(BlockDeviceMapping {
            device_name: v.device_name.clone(),
            ebs: EbsBlockDevice {
                snapshot_id: snap.snapshot_id,
                volume_size,
                delete_on_termination: v.delete_on_termination,
                read_only: v.read_only,
            },
        });
    }
    let image = store.image_from_snapshots(caller, name, description, &inst.image, mappings)?;
    txn.put_image(&image)?;
    let (new_chunks, new_bytes) = txn.new_chunks();
    let blobs = image.blobs();
    txn.commit(|s| {
        s.check_name_free(caller, name, None)?;
        for b in &blobs {
            if !s.backend().object_exists(crate::store::ObjectNs::Blob, b)? {
                return Err(crate::store::StoreError::NotFound(format!(
                    "blob {b} not found"
                )));
            }
        }
        Ok(())
    })?;
    let report = CreateImageReport {
        image_id: image.image_id.to_string(),
        snapshot_ids,
        chunks_hashed: hashed,
        new_chunks,
        new_bytes,
        chunks_fetched,
    };
    Ok((image, report))
}
