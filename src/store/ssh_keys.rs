//! SSH key material for key pairs: generating ed25519 keys, reading OpenSSH public keys, and
//! the fingerprints EC2 shows. Pure functions, no store access.
//!
//! # Fingerprints (EC2 API Reference, `KeyPairInfo.keyFingerprint`; EC2 User Guide, "Verify
//! the fingerprint of your key pair")
//! - **ed25519**, created or imported: the base64-encoded SHA-256 digest of the public key,
//!   as OpenSSH 6.8+ prints it (`ssh-keygen -l`), with base64's `=` padding, which EC2 keeps
//!   and OpenSSH drops.
//! - **rsa, imported**: the MD5 digest of the DER-encoded public key (SubjectPublicKeyInfo),
//!   as colon-separated hex, which is what EC2 shows and what the User Guide's
//!   `openssl rsa -pubout -outform DER | openssl md5 -c` computes (the API Reference calls it
//!   "the MD5 public key fingerprint as specified in section 4 of RFC 4716", which would be
//!   the MD5 of the SSH key blob, `ssh-keygen -E md5 -l`; EC2's real answers and moto follow
//!   the DER one).
//! - rsa key pairs are not created here (ed25519 only), so EC2's SHA-1-of-the-private-key
//!   fingerprint of created RSA keys never arises.

use super::error::{Result, StoreError};
use base64::Engine;
use md5::{Digest, Md5};
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

/// The smallest RSA key accepted for import, in bits: EC2 accepts 1024, 2048 and 4096-bit keys
/// (EC2 User Guide, "Create a key pair using a third-party tool and import the public key").
pub const RSA_MIN_BITS: usize = 1024;
/// The largest RSA key accepted for import, in bits (same source).
pub const RSA_MAX_BITS: usize = 4096;
/// The longest public key text accepted: a 4096-bit RSA key in OpenSSH form is about 750
/// bytes, plus a comment; EC2 bounds ImportKeyPair's material the same way (it must be a key).
pub const MAX_PUBLIC_KEY_TEXT: usize = 16 * 1024;

/// The kinds of key pairs (EC2's `KeyType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Ed25519,
    Rsa,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa => "rsa",
        }
    }
}

/// A public key, checked, with what EC2 shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyInfo {
    pub key_type: KeyType,
    pub fingerprint: String,
    /// `ALGORITHM BASE64` (the user's comment is not kept), one line, no newline.
    pub openssh: String,
}

/// A newly generated key: its public part, and the private key in OpenSSH format.
pub struct GeneratedKey {
    pub public: PublicKeyInfo,
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` ... with a final newline. Shown once, never kept.
    pub private_openssh: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn key_error(why: impl std::fmt::Display) -> StoreError {
    StoreError::BadKey(format!("not a valid OpenSSH public key: {why}"))
}

/// A fresh ed25519 key pair from the operating system's random source.
pub fn generate_ed25519() -> Result<GeneratedKey> {
    let private = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .map_err(|e| StoreError::Invalid(format!("cannot generate an ed25519 key: {e}")))?;
    let private_openssh = private
        .to_openssh(LineEnding::LF)
        .map_err(|e| StoreError::Invalid(format!("cannot encode the private key: {e}")))?
        .to_string();
    let public = describe(private.public_key())?;
    Ok(GeneratedKey {
        public,
        private_openssh,
    })
}

/// Read an OpenSSH public key (`ssh-ed25519 AAAA... comment` or `ssh-rsa AAAA...`, as in a
/// `.pub` file or `authorized_keys`), as ImportKeyPair takes it.
pub fn parse_public_key(text: &[u8]) -> Result<PublicKeyInfo> {
    if text.len() > MAX_PUBLIC_KEY_TEXT {
        return Err(key_error(format!(
            "{} bytes, more than {MAX_PUBLIC_KEY_TEXT}",
            text.len()
        )));
    }
    let text = std::str::from_utf8(text).map_err(|_| key_error("not UTF-8 text"))?;
    // One key, on one line; blank lines around it are fine.
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines.next().ok_or_else(|| key_error("empty"))?;
    if lines.next().is_some() {
        return Err(key_error("more than one line (give one key)"));
    }
    let key = PublicKey::from_openssh(line).map_err(key_error)?;
    describe(&key)
}

/// Check a public key's type and size, and compute its EC2 fingerprint.
fn describe(key: &PublicKey) -> Result<PublicKeyInfo> {
    let (key_type, fingerprint) = match key.key_data() {
        KeyData::Ed25519(_) => (KeyType::Ed25519, sha256_fingerprint(key)),
        KeyData::Rsa(rsa_key) => {
            let k = rsa::RsaPublicKey::try_from(rsa_key).map_err(key_error)?;
            let bits = k.n().bits();
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(key_error(format!(
                    "an RSA key of {bits} bits (amivm, like EC2, takes {RSA_MIN_BITS} to {RSA_MAX_BITS})"
                )));
            }
            let der = k.to_public_key_der().map_err(key_error)?;
            (KeyType::Rsa, colon_hex(&Md5::digest(der.as_bytes())))
        }
        _ => {
            return Err(key_error(format!(
                "{} keys are not supported (ed25519 and rsa are, as in EC2)",
                key.algorithm()
            )))
        }
    };
    let mut bare = key.clone();
    bare.set_comment("");
    let openssh = bare.to_openssh().map_err(key_error)?.trim().to_string();
    Ok(PublicKeyInfo {
        key_type,
        fingerprint,
        openssh,
    })
}

/// base64 (standard, padded) of the SHA-256 of the key blob.
fn sha256_fingerprint(key: &PublicKey) -> String {
    let fp = key.fingerprint(HashAlg::Sha256);
    base64::engine::general_purpose::STANDARD.encode(fp.as_bytes())
}

/// `ab:cd:...`, lower-case.
fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Keys made with `ssh-keygen -t ed25519` and `ssh-keygen -t rsa -b 2048`. For the first,
    // `ssh-keygen -l` shows SHA256:fgDG6MRZisurmToXyhNTEYlwIktTnpEoKB+vY0V/ocQ; for the
    // second, `ssh-keygen -e -m PKCS8 -f KEY.pub | openssl pkey -pubin -outform DER |
    // openssl md5 -c` shows the MD5 (and moto computes the same).
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINTV9N7Fphvkxtzc3HTXMbUjY8HHEE8NQ7UlWAdG7wj+ user@host";
    const ED25519_FP: &str = "fgDG6MRZisurmToXyhNTEYlwIktTnpEoKB+vY0V/ocQ=";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCXzDtY4ow+IB3pifX847Xg5rLmrv3CFbNrFrHjVpMXL4kVTQ6vDqlxdxPOIHGsXHi+pmtBYBN3htyriyk8+2EDVB9wO5caCIijJ/pf7p3vyEytqNYqIk63hhc/5mMLv+9VdNvNc2Y5QzstJJszy/fDv2i/DHkjvCN6oH9q+mwJ5lski48IWRYjILKlaJY8t5BwLtrylvFhZtz1Dei01J5utbbGVhfCt/GdaX9i3R7OibvDwH5GAKh6DzBQPafr+JLlrLpA7ADtrkWl19w9hDVAOHIIY5tykcttSHNToyYQXu1p6ju+6kPS2g2YXemPXkYHgOguJ9Buj13ZBnwjLl49 r@h";
    const RSA_FP: &str = "8f:b2:35:e3:a8:1c:cf:0d:72:31:91:b1:e8:d1:6b:17";

    #[test]
    fn rsa_fingerprint_is_md5_of_der() {
        let k = parse_public_key(RSA.as_bytes()).unwrap();
        assert_eq!(k.key_type, KeyType::Rsa);
        assert_eq!(k.fingerprint, RSA_FP);
        assert!(k.openssh.starts_with("ssh-rsa AAAAB3"));
    }

    #[test]
    fn ed25519_fingerprint_is_openssh_sha256_padded() {
        let k = parse_public_key(ED25519.as_bytes()).unwrap();
        assert_eq!(k.key_type, KeyType::Ed25519);
        assert_eq!(k.fingerprint, ED25519_FP);
        assert!(k.openssh.starts_with("ssh-ed25519 AAAAC3"), "{}", k.openssh);
        assert!(!k.openssh.contains("user@host"));
        // Blank lines and a trailing newline are fine.
        let again = parse_public_key(format!("\n{ED25519}\n\n").as_bytes()).unwrap();
        assert_eq!(again, k);
    }

    #[test]
    fn generated_keys_read_back() {
        let g = generate_ed25519().unwrap();
        assert!(g
            .private_openssh
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        let private = PrivateKey::from_openssh(&g.private_openssh).unwrap();
        let public = describe(private.public_key()).unwrap();
        assert_eq!(public, g.public);
        assert_eq!(
            parse_public_key(g.public.openssh.as_bytes()).unwrap(),
            g.public
        );
        assert!(!format!("{g:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 !!!notbase64",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINTV9N7Fphvkxtzc3HTXMbUjY8HHEE8NQ7UlWAdG7w",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKuDcTDb07F8wYokl8B4Yiw+OR/ze+2AOj0SfXZbqnkyDV80TLVPbD8JPu1MBzx6sA9YucPH0O3G1a9GduWchvo=",
        ] {
            assert!(parse_public_key(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let two = format!("{ED25519}\n{ED25519}\n");
        assert!(parse_public_key(two.as_bytes()).is_err());
        assert!(parse_public_key(&[0xff, 0xfe]).is_err());
        assert!(parse_public_key(&vec![b'a'; MAX_PUBLIC_KEY_TEXT + 1]).is_err());
    }

    #[test]
    fn colon_hex_form() {
        assert_eq!(colon_hex(&[0x0a, 0xff, 0x10]), "0a:ff:10");
    }
}
