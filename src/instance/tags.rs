//! Instance tags (EC2's `CreateTags` / `DeleteTags` on an instance), kept in the instance
//! record and checked against the same rules as image tags.

use super::record::{self, Instance};
use super::Result;
use crate::store::manifest::validate_tags;
use crate::store::AccountId;
use crate::store::Store;
use std::collections::BTreeMap;

/// Add or replace `add` and remove `remove` (a key with `Some(value)` only when its value is
/// that) on one of the caller's instances, in one record update.
pub fn update(
    store: &Store,
    caller: &AccountId,
    id: &str,
    add: &BTreeMap<String, String>,
    remove: &[(String, Option<String>)],
) -> Result<Instance> {
    // Ownership (and the id's form) first: another account's instance is "not found".
    record::load(store, caller, id)?;
    record::update(store, id, |i| {
        let mut tags = i.tags.clone();
        for (k, v) in remove {
            if v.as_ref().is_none_or(|v| tags.get(k) == Some(v)) {
                tags.remove(k);
            }
        }
        tags.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
        validate_tags(&tags)?;
        i.tags = tags;
        Ok(())
    })
}
