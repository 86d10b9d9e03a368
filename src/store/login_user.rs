//! The user `amivm ssh` logs in as: an image's `DefaultUser` attribute, else the user the
//! distribution's cloud images create for EC2 (`admin` on Debian, `ubuntu` on Ubuntu, ...).

use super::error::{Result, StoreError};

/// The longest user name accepted: useradd(8)'s limit on Linux (32 characters, the size of
/// `ut_user` in utmp).
pub const MAX_USER_NAME_LEN: usize = 32;

/// Default users of well-known distributions' EC2 images, keyed by `/etc/os-release` `ID`-like
/// words found in the image's recorded OS name (lower-cased). Source: AWS EC2 User Guide,
/// "Connect to your Linux instance" (default user names by AMI), and Debian's cloud images
/// (`admin`, set by the debian-cloud-images EC2 build).
pub const DISTRIBUTION_USERS: &[(&str, &str)] = &[
    ("debian", "admin"),
    ("ubuntu", "ubuntu"),
    ("amazon", "ec2-user"),
    ("fedora", "fedora"),
    ("centos", "centos"),
    ("red hat", "ec2-user"),
    ("rocky", "rocky"),
    ("almalinux", "ec2-user"),
    ("suse", "ec2-user"),
    ("alpine", "alpine"),
    ("arch", "arch"),
];

/// Check a login user name as useradd(8) accepts it by default (`NAME_REGEX`
/// `^[a-z_][a-z0-9_-]*[$]?$`, without the trailing `$` of machine accounts) and at most
/// [`MAX_USER_NAME_LEN`] characters.
pub fn validate_user_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        StoreError::Invalid(format!(
            "invalid user name {name:?}: {why} (a login name: a lower-case letter or '_', then \
             lower-case letters, digits, '_' or '-', at most {MAX_USER_NAME_LEN} characters)"
        ))
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(bad("it is empty")),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            return Err(bad("it must start with a letter or '_'"))
        }
        Some(_) => {}
    }
    if name.len() > MAX_USER_NAME_LEN {
        return Err(bad("it is too long"));
    }
    if chars.any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')) {
        return Err(bad("it holds a character other than a-z, 0-9, '_' and '-'"));
    }
    Ok(())
}

/// The user the distribution named `os_name` (an image's `OsName`) creates for EC2, if known.
pub fn distribution_user(os_name: &str) -> Option<&'static str> {
    let os = os_name.to_ascii_lowercase();
    DISTRIBUTION_USERS
        .iter()
        .find(|(word, _)| os.contains(word))
        .map(|(_, user)| *user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in ["admin", "ec2-user", "_svc", "u1", &"a".repeat(32)] {
            validate_user_name(ok).unwrap();
        }
        for bad in [
            "",
            "Admin",
            "1root",
            "-x",
            "a b",
            "a:b",
            "ad\u{202e}min",
            &"a".repeat(33),
        ] {
            let e = validate_user_name(bad).unwrap_err().to_string();
            assert!(e.contains("invalid user name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn distributions() {
        assert_eq!(distribution_user("Debian GNU/Linux"), Some("admin"));
        assert_eq!(distribution_user("Ubuntu"), Some("ubuntu"));
        assert_eq!(distribution_user("Amazon Linux"), Some("ec2-user"));
        assert_eq!(distribution_user("BusyBox"), None);
    }
}
