//! Identifiers: image ids, snapshot ids, account ids and content hashes.

use super::error::{Result, StoreError};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Number of hex digits after the prefix of an EC2 resource id (`ami-0123456789abcdef0`): EC2's
/// "longer resource IDs" format, 17 lowercase hex characters.
pub const RESOURCE_ID_HEX_LEN: usize = 17;
/// Number of decimal digits of an AWS account id.
pub const ACCOUNT_ID_LEN: usize = 12;
/// Length in bytes of a sha256 digest (FIPS 180-4).
pub const HASH_LEN: usize = 32;

fn random_hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

macro_rules! resource_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id's prefix, with its dash.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            pub fn generate() -> Self {
                $name(format!("{}{}", $prefix, random_hex(RESOURCE_ID_HEX_LEN)))
            }

            /// Parse and validate an id.
            pub fn parse(s: &str) -> Result<Self> {
                match s.strip_prefix($prefix) {
                    Some(hex) if hex.len() == RESOURCE_ID_HEX_LEN && is_lower_hex(hex) => {
                        Ok($name(s.to_string()))
                    }
                    _ => Err(StoreError::Invalid(format!(
                        "'{s}' is not a valid {} id ({}{} hex digits)",
                        $what, $prefix, RESOURCE_ID_HEX_LEN
                    ))),
                }
            }

            /// Whether `s` has the shape of such an id.
            pub fn looks_like(s: &str) -> bool {
                Self::parse(s).is_ok()
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = StoreError;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

resource_id!(
    /// An image id: `ami-` and 17 hex digits.
    ImageId,
    "ami-",
    "image"
);
resource_id!(
    /// A snapshot id: `snap-` and 17 hex digits.
    SnapshotId,
    "snap-",
    "snapshot"
);

resource_id!(
    /// A key pair id: `key-` and 17 hex digits.
    KeyPairId,
    "key-",
    "key pair"
);

/// A 12-digit account id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// A fresh random account id (no leading zero, so it reads as a number too).
    pub fn generate() -> Self {
        let lowest = 10u64.pow(ACCOUNT_ID_LEN as u32 - 1);
        let n: u64 = rand::thread_rng().gen_range(lowest..lowest * 10);
        AccountId(n.to_string())
    }

    pub fn parse(s: &str) -> Result<Self> {
        if s.len() == ACCOUNT_ID_LEN && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(AccountId(s.to_string()))
        } else {
            Err(StoreError::Invalid(format!(
                "'{s}' is not a valid account id ({ACCOUNT_ID_LEN} digits)"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AccountId {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<AccountId> for String {
    fn from(id: AccountId) -> String {
        id.0
    }
}

/// The sha256 of a chunk or blob: its name in the store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentHash([u8; HASH_LEN]);

impl ContentHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        ContentHash(Sha256::digest(data).into())
    }

    pub fn from_digest(d: sha2::digest::Output<Sha256>) -> Self {
        ContentHash(d.into())
    }

    pub fn parse(s: &str) -> Result<Self> {
        let mut out = [0u8; HASH_LEN];
        if s.len() != 2 * HASH_LEN || !is_lower_hex(s) {
            return Err(StoreError::Invalid(format!(
                "'{s}' is not a sha256 hex digest"
            )));
        }
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| StoreError::Invalid(format!("'{s}' is not a sha256 hex digest: {e}")))?;
        Ok(ContentHash(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

impl TryFrom<String> for ContentHash {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<ContentHash> for String {
    fn from(h: ContentHash) -> String {
        h.to_hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_bad_shapes() {
        let id = ImageId::generate();
        assert_eq!(id.as_str().len(), 4 + RESOURCE_ID_HEX_LEN);
        assert_eq!(ImageId::parse(id.as_str()).unwrap(), id);
        assert!(ImageId::parse("ami-123").is_err());
        assert!(ImageId::parse("ami-0123456789ABCDEF0").is_err());
        assert!(SnapshotId::parse(id.as_str()).is_err());
        let snap = SnapshotId::generate();
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(serde_json::from_str::<SnapshotId>(&json).unwrap(), snap);
        assert!(serde_json::from_str::<SnapshotId>("\"snap-xyz\"").is_err());
    }

    #[test]
    fn accounts_are_twelve_digits() {
        let a = AccountId::generate();
        assert_eq!(a.as_str().len(), ACCOUNT_ID_LEN);
        assert!(AccountId::parse("123456789012").is_ok());
        assert!(AccountId::parse("12345678901").is_err());
        assert!(AccountId::parse("12345678901a").is_err());
    }

    #[test]
    fn content_hash_hex() {
        let h = ContentHash::of(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ContentHash::parse(&h.to_hex()).unwrap(), h);
        assert!(ContentHash::parse("00").is_err());
    }
}
