//! `--drive path=FILE[,ro][,overlay=FILE][,id=NAME]`: parsing one drive argument.
//!
//! Items are separated by commas (so a path cannot contain one); each appears at most once;
//! `path=` is required. `id` is the serial the guest reads with VIRTIO_BLK_T_GET_ID: letters,
//! digits and `._:-`, at most [`MAX_ID_LEN`] bytes, of which the first 20 reach the guest.

use crate::volume::DriveSpec;
use std::path::PathBuf;

/// Longest `id=` accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why a `--drive` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriveSpecError {
    #[error("--drive needs path=FILE")]
    MissingPath,
    #[error("--drive: empty item (two commas in a row, or a trailing comma?)")]
    EmptyItem,
    #[error("--drive: unknown item {0:?} (expected path=, ro, overlay=, id=)")]
    Unknown(String),
    #[error("--drive: {0} given twice")]
    Duplicate(&'static str),
    #[error("--drive: {0}= needs a value")]
    EmptyValue(&'static str),
    #[error("--drive: ro takes no value")]
    RoValue,
    #[error("--drive: id {0:?} must be 1 to 64 letters, digits or ._:-")]
    BadId(String),
}

/// Parse one `--drive` value.
pub fn parse_drive(s: &str) -> Result<DriveSpec, DriveSpecError> {
    let mut path: Option<PathBuf> = None;
    let mut read_only = false;
    let mut overlay: Option<PathBuf> = None;
    let mut id: Option<String> = None;
    for item in s.split(',') {
        if item.is_empty() {
            return Err(DriveSpecError::EmptyItem);
        }
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        match (key, value) {
            ("ro", None) => {
                if read_only {
                    return Err(DriveSpecError::Duplicate("ro"));
                }
                read_only = true;
            }
            ("ro", Some(_)) => return Err(DriveSpecError::RoValue),
            ("path", Some(v)) => set_path(&mut path, "path", v)?,
            ("overlay", Some(v)) => set_path(&mut overlay, "overlay", v)?,
            ("id", Some(v)) => {
                if id.is_some() {
                    return Err(DriveSpecError::Duplicate("id"));
                }
                let ok = !v.is_empty()
                    && v.len() <= MAX_ID_LEN
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
                if !ok {
                    return Err(DriveSpecError::BadId(v.to_string()));
                }
                id = Some(v.to_string());
            }
            _ => return Err(DriveSpecError::Unknown(item.to_string())),
        }
    }
    Ok(DriveSpec {
        path: path.ok_or(DriveSpecError::MissingPath)?,
        read_only,
        overlay,
        id,
    })
}

fn set_path(slot: &mut Option<PathBuf>, name: &'static str, v: &str) -> Result<(), DriveSpecError> {
    if slot.is_some() {
        return Err(DriveSpecError::Duplicate(name));
    }
    if v.is_empty() {
        return Err(DriveSpecError::EmptyValue(name));
    }
    *slot = Some(PathBuf::from(v));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_item_in_any_order() {
        let d = parse_drive("path=/img/root.img").unwrap();
        assert_eq!(d.path, PathBuf::from("/img/root.img"));
        assert!(!d.read_only && d.overlay.is_none() && d.id.is_none());
        let d = parse_drive("id=vol-0abc,ro,overlay=o.cow,path=base.img").unwrap();
        assert_eq!(
            d,
            DriveSpec {
                path: "base.img".into(),
                read_only: true,
                overlay: Some("o.cow".into()),
                id: Some("vol-0abc".into()),
            }
        );
        // '=' inside a path is kept.
        assert_eq!(parse_drive("path=a=b").unwrap().path, PathBuf::from("a=b"));
    }

    #[test]
    fn refuses_bad_arguments_with_a_reason() {
        use DriveSpecError::*;
        let cases: &[(&str, DriveSpecError)] = &[
            ("", EmptyItem),
            ("ro", MissingPath),
            ("path=", EmptyValue("path")),
            ("path=a,", EmptyItem),
            ("path=a,,ro", EmptyItem),
            ("path=a,path=b", Duplicate("path")),
            ("path=a,ro,ro", Duplicate("ro")),
            ("path=a,ro=yes", RoValue),
            ("path=a,overlay=", EmptyValue("overlay")),
            ("path=a,id=", BadId(String::new())),
            ("path=a,id=has space", BadId("has space".into())),
            ("path=a,id=x,id=y", Duplicate("id")),
            ("path=a,cache=none", Unknown("cache=none".into())),
            ("file=a", Unknown("file=a".into())),
        ];
        for (arg, want) in cases {
            assert_eq!(parse_drive(arg).unwrap_err(), *want, "{arg:?}");
        }
        assert!(parse_drive(&format!("path=a,id={}", "x".repeat(65))).is_err());
        assert!(parse_drive(&format!("path=a,id={}", "x".repeat(64))).is_ok());
    }
}
