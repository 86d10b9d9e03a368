//! AWS credentials from a shared credentials file (`~/.aws/credentials`), for when the
//! environment has none. The environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`) and the instance/container sources are read by `object_store` itself.
//!
//! The file format is the AWS CLI's ("Configuration and credential file settings"): INI
//! sections `[profile-name]` with `key = value` lines, `#` or `;` comments.

use crate::store::error::{Result, StoreError};
use std::path::PathBuf;

/// Environment variable naming the profile (AWS CLI).
pub const ENV_PROFILE: &str = "AWS_PROFILE";
/// Environment variable naming the credentials file (AWS CLI).
pub const ENV_CREDENTIALS_FILE: &str = "AWS_SHARED_CREDENTIALS_FILE";
/// The profile used when `AWS_PROFILE` is unset (AWS CLI).
pub const DEFAULT_PROFILE: &str = "default";
/// The credentials file relative to `$HOME` (AWS CLI).
pub const CREDENTIALS_FILE: &str = ".aws/credentials";
/// Larger credentials files are refused: a real one holds a few profiles.
pub const MAX_CREDENTIALS_FILE_BYTES: u64 = 1 << 20;

/// A static key pair, maybe with a session token.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The key pair of `profile` in the INI text of a credentials file, if it has one.
pub fn parse_profile(text: &str, profile: &str) -> Option<StaticCredentials> {
    let mut in_section = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_section = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(StaticCredentials {
        access_key_id: id.filter(|s| !s.is_empty())?,
        secret_access_key: secret.filter(|s| !s.is_empty())?,
        session_token: token.filter(|s| !s.is_empty()),
    })
}

/// Credentials from the shared credentials file, when the environment has no key pair.
/// `Ok(None)`: use the other sources (environment, instance metadata).
pub fn from_profile_file() -> Result<Option<StaticCredentials>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if env("AWS_ACCESS_KEY_ID").is_some() {
        return Ok(None);
    }
    let path = match (env(ENV_CREDENTIALS_FILE), env("HOME")) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(h)) => PathBuf::from(h).join(CREDENTIALS_FILE),
        (None, None) => return Ok(None),
    };
    let profile = env(ENV_PROFILE).unwrap_or_else(|| DEFAULT_PROFILE.to_string());
    let text = match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("stat", &path, e)),
        Ok(m) if m.len() > MAX_CREDENTIALS_FILE_BYTES => {
            return Err(StoreError::Invalid(format!(
                "{} is larger than {MAX_CREDENTIALS_FILE_BYTES} bytes",
                path.display()
            )))
        }
        Ok(_) => std::fs::read_to_string(&path).map_err(|e| StoreError::io("read", &path, e))?,
    };
    match parse_profile(&text, &profile) {
        Some(c) => Ok(Some(c)),
        None if env(ENV_PROFILE).is_some() => Err(StoreError::Invalid(format!(
            "profile '{profile}' ({ENV_PROFILE}) has no aws_access_key_id and aws_secret_access_key in {}",
            path.display()
        ))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key=S1\n\n\
        [profile dev]\n; c\nAWS_ACCESS_KEY_ID = AK2\naws_secret_access_key = S2\naws_session_token = T2\n\
        [half]\naws_access_key_id = AK3\n";

    #[test]
    fn profiles() {
        let d = parse_profile(FILE, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str()),
            ("AK1", "S1")
        );
        assert_eq!(d.session_token, None);
        let dev = parse_profile(FILE, "dev").unwrap();
        assert_eq!(dev.session_token.as_deref(), Some("T2"));
        assert_eq!(dev.access_key_id, "AK2");
        assert!(parse_profile(FILE, "half").is_none());
        assert!(parse_profile(FILE, "none").is_none());
        assert!(!format!("{d:?}").contains("S1"));
    }
}
