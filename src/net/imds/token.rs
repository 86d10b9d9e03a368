//! IMDSv2 session tokens, kept by nobody: a token carries its own expiry and an HMAC-SHA256
//! of it under a key made when the endpoint is, so any number of tokens costs no memory and a
//! token is worth nothing to another instance or after the VMM restarts.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// Bytes of the HMAC kept in a token: 128 bits, beyond guessing.
const MAC_BYTES: usize = 16;
/// Bytes of the expiry (milliseconds since the endpoint's epoch, big endian).
const EXPIRY_BYTES: usize = 8;
/// A token's length once decoded.
const TOKEN_BYTES: usize = EXPIRY_BYTES + MAC_BYTES;
/// The longest token text accepted before decoding (base64 of [`TOKEN_BYTES`], unpadded).
const MAX_TOKEN_TEXT: usize = TOKEN_BYTES.div_ceil(3) * 4;

/// Issues and checks tokens for one endpoint.
pub struct TokenKey {
    key: [u8; 32],
}

impl TokenKey {
    /// A key of 32 random bytes.
    pub fn random() -> TokenKey {
        TokenKey {
            key: rand::random(),
        }
    }

    /// A fixed key (tests and fuzzing).
    pub fn from_bytes(key: [u8; 32]) -> TokenKey {
        TokenKey { key }
    }

    fn mac(&self, expiry: &[u8; EXPIRY_BYTES]) -> Hmac<Sha256> {
        // HMAC takes a key of any length: new_from_slice cannot fail here.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(expiry);
        m
    }

    /// A token valid until `now + ttl` (both since the endpoint's epoch).
    pub fn issue(&self, now: Duration, ttl: Duration) -> String {
        let expiry = u64::try_from((now + ttl).as_millis())
            .unwrap_or(u64::MAX)
            .to_be_bytes();
        let tag = self.mac(&expiry).finalize().into_bytes();
        let mut raw = [0u8; TOKEN_BYTES];
        raw[..EXPIRY_BYTES].copy_from_slice(&expiry);
        raw[EXPIRY_BYTES..].copy_from_slice(&tag[..MAC_BYTES]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `token` was issued by this key and is still valid at `now`.
    pub fn check(&self, token: &str, now: Duration) -> bool {
        if token.len() > MAX_TOKEN_TEXT {
            return false;
        }
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        let Ok(raw) = <[u8; TOKEN_BYTES]>::try_from(raw.as_slice()) else {
            return false;
        };
        let mut expiry = [0u8; EXPIRY_BYTES];
        expiry.copy_from_slice(&raw[..EXPIRY_BYTES]);
        if self
            .mac(&expiry)
            .verify_truncated_left(&raw[EXPIRY_BYTES..])
            .is_err()
        {
            return false;
        }
        u128::from(u64::from_be_bytes(expiry)) > now.as_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_until_it_expires() {
        let k = TokenKey::from_bytes([7; 32]);
        let t = k.issue(Duration::from_secs(10), Duration::from_secs(60));
        assert!(k.check(&t, Duration::from_secs(10)));
        assert!(k.check(&t, Duration::from_millis(69_999)));
        assert!(!k.check(&t, Duration::from_secs(70)));
    }

    #[test]
    fn forged_or_foreign_tokens_fail() {
        let k = TokenKey::from_bytes([7; 32]);
        let t = k.issue(Duration::ZERO, Duration::from_secs(60));
        assert!(!TokenKey::from_bytes([8; 32]).check(&t, Duration::ZERO));
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t)
            .unwrap();
        raw[0] ^= 1; // a later expiry, same tag
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert!(!k.check(&forged, Duration::ZERO));
        for bad in ["", "!!!", "AAAA", &"A".repeat(10_000), &t[..t.len() - 1]] {
            assert!(!k.check(bad, Duration::ZERO), "{bad:?}");
        }
    }
}
