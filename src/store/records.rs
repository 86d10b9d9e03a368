//! Records: small JSON documents that other modules keep in the store, atomically and under
//! the store lock, in `records/KIND/ID.json` (e.g. `records/instances/i-….json`).
//!
//! A record says which snapshots and blobs it still needs ([`StoreRefs`]): `gc` keeps them,
//! and `image rm --delete-snapshots` / `snapshot rm` refuse to delete such snapshots. Each
//! record may also own a private directory, [`Store::record_data_dir`], that the store never
//! reads or collects (copy-on-write overlays, console logs).

use super::backend::{Collection, DocOp};
use super::error::{Result, StoreError};
use super::fsio;
use super::ids::{ContentHash, SnapshotId};
use super::manifest::Image;
use super::txn::to_json;
use super::{ObjectNs, Store};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// What a record keeps alive in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoreRefs {
    #[serde(default)]
    pub snapshot_ids: Vec<SnapshotId>,
    #[serde(default)]
    pub blobs: Vec<ContentHash>,
}

impl StoreRefs {
    /// The references of `self` that `known` does not have.
    pub fn without(&self, known: &StoreRefs) -> StoreRefs {
        StoreRefs {
            snapshot_ids: self
                .snapshot_ids
                .iter()
                .filter(|s| !known.snapshot_ids.contains(s))
                .cloned()
                .collect(),
            blobs: self
                .blobs
                .iter()
                .filter(|b| !known.blobs.contains(b))
                .copied()
                .collect(),
        }
    }

    /// Everything an instance of `image` needs: its snapshots, kernel and initrd (so a
    /// stopped instance can start again after the image is deregistered).
    pub fn of_image(image: &Image) -> Self {
        StoreRefs {
            snapshot_ids: image.snapshot_ids().cloned().collect(),
            blobs: image.blobs(),
        }
    }
}

/// A record: an id, what it references, and the owner module's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Record<T> {
    pub id: String,
    pub refs: StoreRefs,
    pub data: T,
}

/// Everything all records reference (for gc and deletions).
#[derive(Debug, Clone, Default)]
pub struct RecordRefs {
    /// Each referenced snapshot and one record (`KIND/ID`) that uses it.
    pub snapshot_users: BTreeMap<SnapshotId, String>,
    pub blobs: BTreeSet<ContentHash>,
    /// Each referenced blob and one record that uses it.
    pub blob_users: BTreeMap<ContentHash, String>,
}

fn check_kind(kind: &str) -> Result<()> {
    let ok = kind.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "'{kind}' is not a valid record kind"
        )))
    }
}

fn decode<T: DeserializeOwned>(kind: &str, id: &str, bytes: &[u8]) -> Result<Record<T>> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt(format!("record {kind}/{id}"), e.to_string()))
}

impl Store {
    /// Read one record.
    pub fn get_record<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<Record<T>>> {
        check_kind(kind)?;
        match self
            .backend()
            .get_doc(&Collection::Records(kind.into()), id)?
        {
            None => Ok(None),
            Some(b) => decode(kind, id, &b).map(Some),
        }
    }

    /// Every record of a kind, by id.
    pub fn list_records<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<Record<T>>> {
        check_kind(kind)?;
        let c = Collection::Records(kind.into());
        let mut out = Vec::new();
        for id in self.backend().list_docs(&c)? {
            if let Some(b) = self.backend().get_doc(&c, &id)? {
                out.push(decode(kind, &id, &b)?);
            }
        }
        Ok(out)
    }

    /// A token that changes whenever a finished commit changed the records of `kind` (or a
    /// file was added there by other means), for caches of them (the instance index); `None`
    /// when the backend cannot tell. See [`super::image_index`] for how the images' token keeps
    /// their index coherent: the same rules hold.
    pub fn record_stamp(&self, kind: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        self.backend().doc_stamp(&Collection::Records(kind.into()))
    }

    /// Write a record atomically. Its references must exist.
    pub fn put_record<T: Serialize>(&self, kind: &str, rec: &Record<T>) -> Result<()> {
        check_kind(kind)?;
        let _lock = self.lock()?;
        self.put_record_locked(kind, rec)
    }

    fn put_record_locked<T: Serialize>(&self, kind: &str, rec: &Record<T>) -> Result<()> {
        self.check_refs(&rec.refs)?;
        self.commit_record(kind, rec)
    }

    fn commit_record<T: Serialize>(&self, kind: &str, rec: &Record<T>) -> Result<()> {
        self.backend().commit_docs(vec![DocOp::Put {
            collection: Collection::Records(kind.into()),
            id: rec.id.clone(),
            bytes: to_json(rec)?,
        }])
    }

    /// Read-modify-write a record under the store lock. `f` gets the current record (or
    /// `None`) and returns the new one, or `None` to delete it. `f` must not call other
    /// mutating store methods (the lock is not re-entrant).
    pub fn update_record<T, F>(&self, kind: &str, id: &str, f: F) -> Result<Option<Record<T>>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Option<Record<T>>) -> Result<Option<Record<T>>>,
    {
        check_kind(kind)?;
        let c = Collection::Records(kind.into());
        let _lock = self.lock()?;
        let current = self.get_record::<T>(kind, id)?;
        let existed = current.is_some();
        // Only references the record gains are checked: one it already had may live elsewhere
        // (an instance launched from a region reads its snapshots there).
        let known = current.as_ref().map(|c| c.refs.clone()).unwrap_or_default();
        let next = f(current)?;
        match &next {
            Some(rec) => {
                if rec.id != id {
                    return Err(StoreError::Invalid(format!(
                        "record id '{}' does not match '{id}'",
                        rec.id
                    )));
                }
                self.check_refs(&rec.refs.without(&known))?;
                self.commit_record(kind, rec)?;
            }
            None if existed => {
                self.backend().commit_docs(vec![DocOp::Delete {
                    collection: c,
                    id: id.to_string(),
                }])?;
            }
            None => {}
        }
        Ok(next)
    }

    /// Delete a record; returns whether it existed. Its data directory is left to the caller.
    pub fn delete_record(&self, kind: &str, id: &str) -> Result<bool> {
        let mut existed = false;
        self.update_record::<serde_json::Value, _>(kind, id, |cur| {
            existed = cur.is_some();
            Ok(None)
        })?;
        Ok(existed)
    }

    /// A record's private directory (`records/KIND/ID/`), created if missing.
    pub fn record_data_dir(&self, kind: &str, id: &str) -> Result<PathBuf> {
        check_kind(kind)?;
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(StoreError::Invalid(format!(
                "'{id}' is not a valid record id"
            )));
        }
        let dir = self
            .layout()
            .dir(super::layout::RECORDS_DIR)
            .join(kind)
            .join(id);
        fsio::mkdirs(&dir)?;
        Ok(dir)
    }

    fn check_refs(&self, refs: &StoreRefs) -> Result<()> {
        for s in &refs.snapshot_ids {
            if !self.has_snapshot(s)? {
                return Err(StoreError::NotFound(format!("snapshot {s} not found")));
            }
        }
        for b in &refs.blobs {
            if !self.backend().object_exists(ObjectNs::Blob, b)? {
                return Err(StoreError::NotFound(format!("blob {b} not found")));
            }
        }
        Ok(())
    }

    /// What every record of every kind references.
    pub fn record_refs(&self) -> Result<RecordRefs> {
        let mut out = RecordRefs::default();
        let root = self.layout().dir(super::layout::RECORDS_DIR);
        for kind_dir in super::backend::read_dir_sorted(&root)? {
            let Some(kind) = kind_dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !kind_dir.is_dir() || check_kind(kind).is_err() {
                continue;
            }
            for rec in self.list_records::<serde_json::Value>(kind)? {
                for s in rec.refs.snapshot_ids {
                    out.snapshot_users
                        .entry(s)
                        .or_insert_with(|| format!("{kind}/{}", rec.id));
                }
                for b in rec.refs.blobs {
                    out.blob_users
                        .entry(b)
                        .or_insert_with(|| format!("{kind}/{}", rec.id));
                    out.blobs.insert(b);
                }
            }
        }
        Ok(out)
    }
}
