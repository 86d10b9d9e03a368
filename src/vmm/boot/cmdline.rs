//! The kernel command line: defaults, `--cmdline` / `--append`, device fragments, checks.

use crate::vmm::devices::virtio::cmdline_fragment;
use crate::vmm::layout::drive_window;

/// The default command line: serial console, reboot through the keyboard controller (which
/// ends the VM), reboot 1 s after a panic, and an i8042 that does not probe for a mouse or a
/// multiplexer (Firecracker uses the same set).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Errors in a command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// Longer than the kernel accepts (bytes, excluding the terminating NUL).
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    TooLong { len: usize, max: usize },
    /// Contains a NUL or a non-printable character.
    #[error("kernel command line contains a control character (byte {0:#04x})")]
    BadChar(u8),
}

/// Join the base command line (`--cmdline`, or the default), `--append` text and device
/// fragments, separated by single spaces.
pub fn compose(base: Option<&str>, append: Option<&str>, fragments: &[String]) -> String {
    let mut parts: Vec<&str> = vec![base.unwrap_or(DEFAULT_CMDLINE)];
    if let Some(a) = append {
        parts.push(a);
    }
    parts.extend(fragments.iter().map(String::as_str));
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command line a VM gets: `base`, then `root=/dev/vda rw` (`ro` with `Some(true)`) when the
/// VM has a root drive (`root_ro` is `Some`) and `base` sets no `root=`, then `device_args` (the
/// `virtio_mmio.device=` arguments of devices announced on the command line).
pub fn with_drives(base: &str, device_args: &[String], root_ro: Option<bool>) -> String {
    let mut fragments = Vec::with_capacity(device_args.len() + 1);
    if let Some(ro) = root_ro {
        if !has_param(base, "root") {
            fragments.push(format!("root=/dev/vda {}", if ro { "ro" } else { "rw" }));
        }
    }
    fragments.extend(device_args.iter().cloned());
    compose(Some(base), None, &fragments)
}

/// The `virtio_mmio.device=` arguments of `drives` drives announced on the command line (at
/// [`drive_window`]): the longest command line a VM with that many drives can get.
pub fn drive_args(drives: usize) -> Vec<String> {
    (0..drives)
        .map(|i| {
            let (addr, gsi) = drive_window(i);
            cmdline_fragment(addr, gsi)
        })
        .collect()
}

/// Whether the command line sets parameter `name` (as `name` or `name=...`).
pub fn has_param(cmdline: &str, name: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| {
        w == name
            || w.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// Check a command line against a kernel's limit `max` (bytes, excluding the NUL).
pub fn validate(cmdline: &str, max: usize) -> Result<(), CmdlineError> {
    if let Some(&b) = cmdline.as_bytes().iter().find(|&&b| b < 0x20 || b == 0x7f) {
        return Err(CmdlineError::BadChar(b));
    }
    if cmdline.len() > max {
        return Err(CmdlineError::TooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_append_and_fragments() {
        assert_eq!(compose(None, None, &[]), DEFAULT_CMDLINE);
        assert_eq!(
            compose(
                Some("quiet"),
                Some(" x=1 "),
                &["virtio_mmio.device=4K@0xc0000000:5".into()]
            ),
            "quiet x=1 virtio_mmio.device=4K@0xc0000000:5"
        );
        assert_eq!(
            compose(None, Some("foo"), &[]),
            format!("{DEFAULT_CMDLINE} foo")
        );
        assert_eq!(compose(Some(""), None, &[]), "");
    }

    #[test]
    fn drives_add_root_and_one_device_argument_each() {
        assert_eq!(with_drives("quiet", &drive_args(0), None), "quiet");
        assert_eq!(
            with_drives("quiet", &drive_args(2), Some(true)),
            "quiet root=/dev/vda ro virtio_mmio.device=4K@0xc0000000:5 virtio_mmio.device=4K@0xc0001000:6"
        );
        assert_eq!(
            with_drives("root=/dev/vdb", &drive_args(1), Some(false)),
            "root=/dev/vdb virtio_mmio.device=4K@0xc0000000:5"
        );
    }

    #[test]
    fn finds_parameters_by_name() {
        assert!(has_param("console=ttyS0 root=/dev/vda rw", "root"));
        assert!(has_param("ro quiet", "quiet"));
        assert!(!has_param("rootwait noroot=1", "root"));
    }

    #[test]
    fn validates_length_and_characters() {
        assert!(validate("a b c", 5).is_ok());
        assert_eq!(
            validate("abcdef", 5),
            Err(CmdlineError::TooLong { len: 6, max: 5 })
        );
        assert_eq!(validate("a\nb", 100), Err(CmdlineError::BadChar(b'\n')));
        assert_eq!(validate("a\0b", 100), Err(CmdlineError::BadChar(0)));
    }
}
