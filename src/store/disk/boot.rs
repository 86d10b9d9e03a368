//! Finding the kernel and initrd in a file system's `/boot` (or in a separate boot
//! partition), and the OS name in `/etc/os-release`.

use super::super::source::{parse_os_release, OsRelease};
use ext4_view::{Ext4, Ext4Error};
use std::cmp::Ordering;

/// Kernel symlinks a Debian-style system keeps (linux-base's `linux-update-symlinks`: at the
/// root, or in /boot with `link_in_boot`), each with its initrd companion, in the order they
/// are tried on a root file system.
pub const ROOT_LINKS: [(&str, &str); 2] = [
    ("/vmlinuz", "/initrd.img"),
    ("/boot/vmlinuz", "/boot/initrd.img"),
];
/// The same symlinks as seen on a separate /boot partition (mounted at /boot).
pub const BOOT_PARTITION_LINKS: [(&str, &str); 1] = [("/vmlinuz", "/initrd.img")];
/// Where versioned kernels live on a root file system...
pub const ROOT_KERNEL_DIR: &str = "/boot";
/// ...and on a separate /boot partition.
pub const BOOT_PARTITION_KERNEL_DIR: &str = "/";
/// Versioned kernel file names start with this (`vmlinuz-6.1.0-13-amd64`).
const KERNEL_PREFIX: &str = "vmlinuz-";
/// Initrd names for kernel version `V`, in the order they are tried: Debian/Ubuntu
/// (`initrd.img-V`), Fedora/Arch dracut (`initramfs-V.img`), SUSE (`initrd-V`).
const INITRD_NAMES: [(&str, &str); 3] =
    [("initrd.img-", ""), ("initramfs-", ".img"), ("initrd-", "")];
/// os-release(5) locations, in the order the spec says to read them.
const OS_RELEASE_PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];
/// os-release files are a few hundred bytes; a larger one is not read (bounded memory).
const OS_RELEASE_MAX: u64 = 64 * 1024;

/// A kernel (and its initrd) found in a file system: absolute paths inside it, symlinks
/// resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kernel: String,
    pub initrd: Option<String>,
}

/// Compare version strings the way `sort -V` orders kernel versions: runs of digits by their
/// value, everything else byte by byte (`6.1.0-9` < `6.1.0-10` < `6.10.0-1`).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let run = |s: &[u8], digits: bool| {
        s.iter()
            .take_while(|c| c.is_ascii_digit() == digits)
            .count()
    };
    while !a.is_empty() && !b.is_empty() {
        let digits = a[0].is_ascii_digit();
        if digits != b[0].is_ascii_digit() {
            return a[0].cmp(&b[0]);
        }
        let (na, nb) = (run(a, digits), run(b, digits));
        let (ra, rb) = (&a[..na], &b[..nb]);
        let ord = if digits {
            let strip = |r: &[u8]| -> usize { r.iter().take_while(|c| **c == b'0').count() };
            let (ta, tb) = (&ra[strip(ra)..], &rb[strip(rb)..]);
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            ra.cmp(rb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    a.len().cmp(&b.len())
}

/// Whether `path` exists and is (through symlinks) a regular file.
fn is_file(fs: &Ext4, path: &str) -> Result<bool, Ext4Error> {
    match fs.metadata(path) {
        Ok(m) => Ok(m.file_type().is_regular_file()),
        Err(Ext4Error::NotFound) | Err(Ext4Error::NotADirectory) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `path` with symlinks resolved, as text.
fn resolve(fs: &Ext4, path: &str) -> Result<String, Ext4Error> {
    let p = fs.canonicalize(path)?;
    p.to_str()
        .map(str::to_string)
        .map_err(|_| Ext4Error::NotUtf8)
}

/// The directory part of an absolute path ("/" for a file at the root).
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The initrd that belongs to kernel file `kernel` (`.../vmlinuz-V`): the first of
/// [`INITRD_NAMES`] for version V in the kernel's directory.
fn matching_initrd(fs: &Ext4, kernel: &str) -> Result<Option<String>, Ext4Error> {
    let dir = parent(kernel);
    let name = &kernel[kernel.rfind('/').map_or(0, |i| i + 1)..];
    let Some(version) = name.strip_prefix(KERNEL_PREFIX) else {
        return Ok(None);
    };
    for (pre, post) in INITRD_NAMES {
        let p = join(dir, &format!("{pre}{version}{post}"));
        if is_file(fs, &p)? {
            return Ok(Some(resolve(fs, &p)?));
        }
    }
    Ok(None)
}

/// The newest `vmlinuz-*` regular file in `dir` (by [`version_cmp`]), if any. Keeps one
/// name at a time, whatever the directory's size.
fn newest_kernel(fs: &Ext4, dir: &str) -> Result<Option<String>, Ext4Error> {
    let entries = match fs.read_dir(dir) {
        Ok(rd) => rd,
        Err(Ext4Error::NotFound) | Err(Ext4Error::NotADirectory) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut best: Option<String> = None;
    for e in entries {
        let e = e?;
        let Ok(name) = e.file_name().as_str().map(str::to_string) else {
            continue;
        };
        let Some(version) = name.strip_prefix(KERNEL_PREFIX) else {
            continue;
        };
        if version.is_empty() || !is_file(fs, &join(dir, &name))? {
            continue;
        }
        let newer = best
            .as_deref()
            .is_none_or(|b| version_cmp(version, &b[KERNEL_PREFIX.len()..]) == Ordering::Greater);
        if newer {
            best = Some(name);
        }
    }
    best.map(|n| resolve(fs, &join(dir, &n))).transpose()
}

/// Find a kernel in `fs`: the first of `links` that leads to a regular file (with its initrd
/// link, else the initrd matching the kernel's version), else the newest `vmlinuz-*` in
/// `dir` with its matching initrd.
pub fn find_kernel(
    fs: &Ext4,
    links: &[(&str, &str)],
    dir: &str,
) -> Result<Option<Found>, Ext4Error> {
    for (k, i) in links {
        if is_file(fs, k)? {
            let kernel = resolve(fs, k)?;
            let initrd = if is_file(fs, i)? {
                Some(resolve(fs, i)?)
            } else {
                matching_initrd(fs, &kernel)?
            };
            return Ok(Some(Found { kernel, initrd }));
        }
    }
    let Some(kernel) = newest_kernel(fs, dir)? else {
        return Ok(None);
    };
    let initrd = matching_initrd(fs, &kernel)?;
    Ok(Some(Found { kernel, initrd }))
}

/// Whether `fs` looks like a root file system: it has an `/etc` directory.
pub fn looks_like_root(fs: &Ext4) -> Result<bool, Ext4Error> {
    match fs.metadata("/etc") {
        Ok(m) => Ok(m.is_dir()),
        Err(Ext4Error::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The OS named by `/etc/os-release` (or `/usr/lib/os-release`), if readable.
pub fn os_release(fs: &Ext4) -> Option<OsRelease> {
    OS_RELEASE_PATHS.iter().find_map(|p| {
        let meta = fs.metadata(*p).ok()?;
        if !meta.file_type().is_regular_file() || meta.len() > OS_RELEASE_MAX {
            return None;
        }
        parse_os_release(&String::from_utf8_lossy(&fs.read(*p).ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_sort_v() {
        let mut v = vec![
            "6.1.0-10-amd64",
            "6.1.0-9-amd64",
            "5.10.0-28-amd64",
            "6.10.0-1-amd64",
            "6.1.0-10-cloud-amd64",
            "6.1.0-010-amd64x",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-28-amd64",
                "6.1.0-9-amd64",
                "6.1.0-10-amd64",
                "6.1.0-010-amd64x",
                "6.1.0-10-cloud-amd64",
                "6.10.0-1-amd64",
            ]
        );
        assert_eq!(version_cmp("6.1", "6.1.0"), Ordering::Less);
        assert_eq!(version_cmp("", ""), Ordering::Equal);
        // Numbers far beyond any integer type still compare.
        assert_eq!(
            version_cmp("1-99999999999999999999999", "1-100000000000000000000000"),
            Ordering::Less
        );
    }

    #[test]
    fn paths() {
        assert_eq!(parent("/boot/vmlinuz-1"), "/boot");
        assert_eq!(parent("/vmlinuz-1"), "/");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/boot", "a"), "/boot/a");
    }
}
