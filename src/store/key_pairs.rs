//! Key pairs (EC2's CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair): per-account
//! named SSH public keys that instances are launched with.
//!
//! Only public material is kept: a created key's private half is returned once, to be shown
//! or written where the user says, and forgotten. All key pairs live in one file,
//! `STORE/key-pairs.json` (mode 0600, like the access keys), replaced atomically under the
//! store lock. Names are unique per account; each account may have at most
//! [`MAX_KEY_PAIRS_PER_ACCOUNT`].

use super::error::{Result, StoreError};
use super::fsio;
use super::ids::{AccountId, KeyPairId};
use super::manifest::{now_rfc3339, validate_tags};
use super::ssh_keys::{self, KeyType, PublicKeyInfo};
use super::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The file holding every key pair, in the store directory.
pub const KEY_PAIRS_FILE: &str = "key-pairs.json";
/// Version of the file's format.
const FILE_VERSION: u32 = 1;
/// EC2: "Constraints: Up to 255 ASCII characters" (API Reference, CreateKeyPair `KeyName`).
pub const MAX_KEY_NAME_LEN: usize = 255;
/// EC2's quota: "You can have up to 5,000 key pairs per Region" (EC2 User Guide, "Amazon EC2
/// key pairs and Amazon EC2 instances"). Bounds the file.
pub const MAX_KEY_PAIRS_PER_ACCOUNT: usize = 5000;

/// One key pair, as stored and described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyPair {
    pub key_pair_id: KeyPairId,
    pub key_name: String,
    pub account_id: AccountId,
    pub key_type: KeyType,
    /// As EC2 shows it (see [`ssh_keys`]).
    pub key_fingerprint: String,
    /// The OpenSSH public key, `ssh-ed25519 AAAA...` (what instances get as
    /// `public-keys/0/openssh-key`).
    pub public_key: String,
    /// RFC 3339, UTC: when it was created or imported.
    pub create_time: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Where this host keeps the private key, when amivm knows (`key-pair create --key-file`,
    /// or the file beside an imported `.pub`): what `amivm ssh` passes as `-i`. A local hint,
    /// never the key itself, not part of EC2's view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<std::path::PathBuf>,
}

/// A key pair just created, with its private key (shown once, never stored).
#[derive(Debug)]
pub struct CreatedKeyPair {
    pub key_pair: KeyPair,
    pub key: ssh_keys::GeneratedKey,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyPairsFile {
    version: u32,
    key_pairs: Vec<KeyPair>,
}

/// Check a key pair name as EC2 does: 1 to 255 ASCII characters (printable ones here, so a
/// name never carries control characters into a terminal).
pub fn validate_key_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_KEY_NAME_LEN {
        return Err(StoreError::Invalid(format!(
            "a key pair name must be 1 to {MAX_KEY_NAME_LEN} ASCII characters"
        )));
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(StoreError::Invalid(format!(
            "key pair name {name:?}: {c:?} is not a printable ASCII character"
        )));
    }
    Ok(())
}

impl Store {
    fn key_pairs_path(&self) -> PathBuf {
        self.dir().join(KEY_PAIRS_FILE)
    }

    fn read_key_pairs(&self) -> Result<KeyPairsFile> {
        Ok(
            fsio::read_versioned_json(&self.key_pairs_path(), FILE_VERSION)?.unwrap_or(
                KeyPairsFile {
                    version: FILE_VERSION,
                    key_pairs: Vec::new(),
                },
            ),
        )
    }

    /// Replace the file (caller holds the store lock): mode 0600, atomically.
    fn write_key_pairs(&self, f: &KeyPairsFile) -> Result<()> {
        fsio::write_private_json(&self.layout().tmp(), &self.key_pairs_path(), f)
    }

    /// Add a key pair for `account` under the lock, refusing a taken name or a full quota.
    fn add_key_pair(
        &self,
        account: &AccountId,
        name: &str,
        public: PublicKeyInfo,
        tags: BTreeMap<String, String>,
    ) -> Result<KeyPair> {
        validate_key_name(name)?;
        validate_tags(&tags)?;
        let _lock = self.lock()?;
        let mut f = self.read_key_pairs()?;
        let mine = f.key_pairs.iter().filter(|k| k.account_id == *account);
        let mut count = 0;
        for k in mine {
            if k.key_name == name {
                return Err(StoreError::KeyNameTaken {
                    owner: account.to_string(),
                    name: name.to_string(),
                    id: k.key_pair_id.to_string(),
                });
            }
            count += 1;
        }
        if count >= MAX_KEY_PAIRS_PER_ACCOUNT {
            return Err(StoreError::LimitExceeded(format!(
                "account {account} has {MAX_KEY_PAIRS_PER_ACCOUNT} key pairs, the most allowed"
            )));
        }
        let kp = KeyPair {
            key_pair_id: KeyPairId::generate(),
            key_name: name.to_string(),
            account_id: account.clone(),
            key_type: public.key_type,
            key_fingerprint: public.fingerprint,
            public_key: public.openssh,
            create_time: now_rfc3339(),
            tags,
            private_key_file: None,
        };
        f.key_pairs.push(kp.clone());
        self.write_key_pairs(&f)?;
        Ok(kp)
    }

    /// Create an ed25519 key pair: the store keeps the public key, the caller gets the
    /// private key once.
    pub fn create_key_pair(
        &self,
        account: &AccountId,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<CreatedKeyPair> {
        validate_key_name(name)?;
        let key = ssh_keys::generate_ed25519()?;
        let key_pair = self.add_key_pair(account, name, key.public.clone(), tags)?;
        Ok(CreatedKeyPair { key_pair, key })
    }

    /// Import an OpenSSH public key (ed25519 or rsa) as a key pair.
    pub fn import_key_pair(
        &self,
        account: &AccountId,
        name: &str,
        public_key_text: &[u8],
        tags: BTreeMap<String, String>,
    ) -> Result<KeyPair> {
        validate_key_name(name)?;
        let public = ssh_keys::parse_public_key(public_key_text)?;
        self.add_key_pair(account, name, public, tags)
    }

    /// Record where this host keeps the private key of `account`'s key pair `id` (an absolute
    /// path), for `amivm ssh`.
    pub fn set_private_key_file(
        &self,
        account: &AccountId,
        id: &KeyPairId,
        path: &std::path::Path,
    ) -> Result<()> {
        if !path.is_absolute() {
            return Err(StoreError::Invalid(format!(
                "private key file {}: not an absolute path",
                path.display()
            )));
        }
        let _lock = self.lock()?;
        let mut f = self.read_key_pairs()?;
        let k = f
            .key_pairs
            .iter_mut()
            .find(|k| k.account_id == *account && k.key_pair_id == *id)
            .ok_or_else(|| key_not_found(id.as_str()))?;
        k.private_key_file = Some(path.to_path_buf());
        self.write_key_pairs(&f)
    }

    /// `account`'s key pairs, by name.
    pub fn list_key_pairs(&self, account: &AccountId) -> Result<Vec<KeyPair>> {
        let mut v: Vec<KeyPair> = self
            .read_key_pairs()?
            .key_pairs
            .into_iter()
            .filter(|k| k.account_id == *account)
            .collect();
        v.sort_by(|a, b| a.key_name.cmp(&b.key_name));
        Ok(v)
    }

    /// `account`'s key pair called `name`.
    pub fn key_pair(&self, account: &AccountId, name: &str) -> Result<KeyPair> {
        self.read_key_pairs()?
            .key_pairs
            .into_iter()
            .find(|k| k.account_id == *account && k.key_name == name)
            .ok_or_else(|| key_not_found(name))
    }

    /// Delete `account`'s key pair named `name` or with id `id`; returns it. Instances
    /// launched with it keep their copy of the public key.
    pub fn delete_key_pair(&self, account: &AccountId, name_or_id: &KeyPairRef) -> Result<KeyPair> {
        let _lock = self.lock()?;
        let mut f = self.read_key_pairs()?;
        let pos = f
            .key_pairs
            .iter()
            .position(|k| k.account_id == *account && name_or_id.matches(k))
            .ok_or_else(|| key_not_found(name_or_id.as_str()))?;
        let gone = f.key_pairs.remove(pos);
        self.write_key_pairs(&f)?;
        Ok(gone)
    }
}

/// A key pair named by the user: its name, or its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPairRef {
    Name(String),
    Id(KeyPairId),
}

impl KeyPairRef {
    fn matches(&self, k: &KeyPair) -> bool {
        match self {
            KeyPairRef::Name(n) => k.key_name == *n,
            KeyPairRef::Id(id) => k.key_pair_id == *id,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            KeyPairRef::Name(n) => n,
            KeyPairRef::Id(id) => id.as_str(),
        }
    }
}

fn key_not_found(what: &str) -> StoreError {
    StoreError::NotFound(format!("the key pair '{what}' does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const PUB: &[u8] = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINTV9N7Fphvkxtzc3HTXMbUjY8HHEE8NQ7UlWAdG7wj+ me@host\n";

    #[test]
    fn names_are_checked_like_ec2s() {
        assert!(validate_key_name("my key-1_(prod)").is_ok());
        assert!(validate_key_name(&"k".repeat(MAX_KEY_NAME_LEN)).is_ok());
        assert!(validate_key_name(&"k".repeat(MAX_KEY_NAME_LEN + 1)).is_err());
        assert!(validate_key_name("").is_err());
        assert!(validate_key_name("tab\there").is_err());
        assert!(validate_key_name("clé").is_err());
    }

    #[test]
    fn key_pairs_are_per_account_private_and_public_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = AccountId::parse("111111111111").unwrap();
        let b = AccountId::parse("222222222222").unwrap();
        let created = store.create_key_pair(&a, "k1", BTreeMap::new()).unwrap();
        let imported = store
            .import_key_pair(&a, "k2", PUB, BTreeMap::new())
            .unwrap();
        assert_eq!(
            imported.key_fingerprint,
            "fgDG6MRZisurmToXyhNTEYlwIktTnpEoKB+vY0V/ocQ="
        );
        // The same name in another account is another key pair; a taken name is refused.
        store
            .import_key_pair(&b, "k1", PUB, BTreeMap::new())
            .unwrap();
        assert!(matches!(
            store.import_key_pair(&a, "k1", PUB, BTreeMap::new()),
            Err(StoreError::KeyNameTaken { .. })
        ));
        let names: Vec<String> = store
            .list_key_pairs(&a)
            .unwrap()
            .into_iter()
            .map(|k| k.key_name)
            .collect();
        assert_eq!(names, ["k1", "k2"]);
        assert_eq!(store.key_pair(&a, "k1").unwrap(), created.key_pair);
        assert!(matches!(
            store.key_pair(&b, "k2"),
            Err(StoreError::NotFound(_))
        ));
        // The file is private (owner read/write only, like the access keys: it says which
        // keys open which instances) and holds no private key.
        let path = dir.path().join(KEY_PAIRS_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            fsio::PRIVATE_FILE_MODE
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("PRIVATE"), "{text}");
        // Deleting by id or name; the other account's key stays.
        let id = KeyPairRef::Id(created.key_pair.key_pair_id.clone());
        store.delete_key_pair(&a, &id).unwrap();
        assert!(store.delete_key_pair(&a, &id).is_err());
        store
            .delete_key_pair(&a, &KeyPairRef::Name("k2".into()))
            .unwrap();
        assert!(store.list_key_pairs(&a).unwrap().is_empty());
        assert_eq!(store.list_key_pairs(&b).unwrap().len(), 1);
        // A bad key leaves nothing behind.
        assert!(store
            .import_key_pair(&a, "bad", b"ssh-ed25519 AAAA", BTreeMap::new())
            .is_err());
        assert!(store.list_key_pairs(&a).unwrap().is_empty());
    }
}
