//! Access keys: the credentials `amivm serve` checks AWS Signature Version 4 requests against.
//!
//! Each key belongs to one account. The secret must be kept (a SigV4 signature is an HMAC
//! keyed by it, so the server needs it to verify), so the keys live in one file,
//! `STORE/access-keys.json`, created with mode 0600 and replaced atomically under the store
//! lock. The secret is shown once, when the key is created.

use super::error::{Result, StoreError};
use super::fsio;
use super::ids::AccountId;
use super::manifest::now_rfc3339;
use super::Store;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The file holding every access key, in the store directory.
pub const ACCESS_KEYS_FILE: &str = "access-keys.json";
/// Version of the file's format.
const FILE_VERSION: u32 = 1;
/// AWS long-term access key ids: `AKIA` and 16 characters of the RFC 4648 base32 alphabet
/// (IAM User Guide, "Understanding unique ID prefixes").
pub const KEY_ID_PREFIX: &str = "AKIA";
const KEY_ID_SUFFIX_LEN: usize = 16;
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// AWS secret access keys are 40 characters of the base64 alphabet.
const SECRET_LEN: usize = 40;
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// One access key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account_id: AccountId,
    /// RFC 3339, UTC.
    pub create_date: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeysFile {
    version: u32,
    access_keys: Vec<AccessKey>,
}

fn random_from(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

/// Whether `s` has the form of an access key id this store issues.
pub fn looks_like_key_id(s: &str) -> bool {
    s.strip_prefix(KEY_ID_PREFIX)
        .is_some_and(|r| r.len() == KEY_ID_SUFFIX_LEN && r.bytes().all(|b| BASE32.contains(&b)))
}

impl Store {
    fn access_keys_path(&self) -> PathBuf {
        self.dir().join(ACCESS_KEYS_FILE)
    }

    fn read_access_keys(&self) -> Result<KeysFile> {
        Ok(
            fsio::read_versioned_json(&self.access_keys_path(), FILE_VERSION)?.unwrap_or(
                KeysFile {
                    version: FILE_VERSION,
                    access_keys: Vec::new(),
                },
            ),
        )
    }

    /// Replace the keys file (caller holds the store lock): mode 0600, atomically.
    fn write_access_keys(&self, f: &KeysFile) -> Result<()> {
        fsio::write_private_json(&self.layout().tmp(), &self.access_keys_path(), f)
    }

    /// A new access key for `account`; the returned value holds the secret.
    pub fn create_access_key(&self, account: &AccountId) -> Result<AccessKey> {
        let _lock = self.lock()?;
        let mut f = self.read_access_keys()?;
        let key = loop {
            let id = format!("{KEY_ID_PREFIX}{}", random_from(BASE32, KEY_ID_SUFFIX_LEN));
            if !f.access_keys.iter().any(|k| k.access_key_id == id) {
                break AccessKey {
                    access_key_id: id,
                    secret_access_key: random_from(SECRET_ALPHABET, SECRET_LEN),
                    account_id: account.clone(),
                    create_date: now_rfc3339(),
                };
            }
        };
        f.access_keys.push(key.clone());
        self.write_access_keys(&f)?;
        Ok(key)
    }

    /// The access keys of `account` (all accounts when `None`), oldest first, secrets included.
    pub fn list_access_keys(&self, account: Option<&AccountId>) -> Result<Vec<AccessKey>> {
        Ok(self
            .read_access_keys()?
            .access_keys
            .into_iter()
            .filter(|k| account.is_none_or(|a| k.account_id == *a))
            .collect())
    }

    /// Delete one of `account`'s access keys.
    pub fn delete_access_key(&self, account: &AccountId, key_id: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut f = self.read_access_keys()?;
        let before = f.access_keys.len();
        f.access_keys
            .retain(|k| !(k.access_key_id == key_id && k.account_id == *account));
        if f.access_keys.len() == before {
            return Err(StoreError::NotFound(format!(
                "account {account} has no access key {key_id}"
            )));
        }
        self.write_access_keys(&f)
    }

    /// The access key with this id, if any.
    pub fn access_key(&self, key_id: &str) -> Result<Option<AccessKey>> {
        Ok(self
            .read_access_keys()?
            .access_keys
            .into_iter()
            .find(|k| k.access_key_id == key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn keys_are_created_listed_found_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = AccountId::parse("111111111111").unwrap();
        let b = AccountId::parse("222222222222").unwrap();
        let ka = store.create_access_key(&a).unwrap();
        let kb = store.create_access_key(&b).unwrap();
        assert!(looks_like_key_id(&ka.access_key_id), "{}", ka.access_key_id);
        assert_eq!(ka.secret_access_key.len(), SECRET_LEN);
        assert_ne!(ka.secret_access_key, kb.secret_access_key);
        let mode = std::fs::metadata(dir.path().join(ACCESS_KEYS_FILE))
            .unwrap()
            .mode();
        // Owner read/write only: the file holds secrets.
        assert_eq!(mode & 0o777, fsio::PRIVATE_FILE_MODE);
        assert_eq!(store.list_access_keys(Some(&a)).unwrap(), vec![ka.clone()]);
        assert_eq!(store.list_access_keys(None).unwrap().len(), 2);
        assert_eq!(
            store.access_key(&kb.access_key_id).unwrap(),
            Some(kb.clone())
        );
        // Another account cannot delete the key.
        assert!(store.delete_access_key(&b, &ka.access_key_id).is_err());
        store.delete_access_key(&a, &ka.access_key_id).unwrap();
        assert_eq!(store.access_key(&ka.access_key_id).unwrap(), None);
        assert!(store.delete_access_key(&a, &ka.access_key_id).is_err());
        assert!(!looks_like_key_id("AKIA123"));
    }
}
