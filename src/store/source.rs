//! Inputs of `image create`: volume sources (raw file, qcow2 image, directory), the OS name
//! and version from `/etc/os-release`, and kernel format detection.

use super::chunker::{ChunkSource, Qcow2Source, RawSource};
use super::error::{Result, StoreError};
use super::manifest::KernelFormat;
use super::qcow2::QCOW2_MAGIC;
use crate::files;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bytes in a MiB.
const MIB: u64 = 1 << 20;
/// Extra space a directory's file system gets beyond its contents: a fixed part...
pub const DIR_HEADROOM_BYTES: u64 = 64 * MIB;
/// ...and a proportional part, in percent of the contents.
pub const DIR_HEADROOM_PERCENT: u64 = 50;
/// Space counted per file or directory for its inode and directory entry: ext4's default
/// inode size (mke2fs.conf `inode_size = 256`) rounded up to a 4 KiB block for safety.
const PER_ENTRY_BYTES: u64 = 4096;
/// mke2fs's default bytes-per-inode ratio (mke2fs.conf `inode_ratio = 16384`).
const EXT4_INODE_RATIO: u64 = 16384;
/// Inodes a directory's file system gets per entry of the directory (room for the guest to
/// create as many files again)...
const INODE_GROWTH_FACTOR: u64 = 2;
/// ...plus this many spare inodes.
const INODE_SPARE: u64 = 1024;
/// The ELF magic (System V ABI, e_ident[EI_MAG0..EI_MAG3]).
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// e_ident[EI_CLASS] value for 64-bit objects (ELFCLASS64).
const ELFCLASS64: u8 = 2;
/// Offset of e_machine in the ELF header.
const ELF_E_MACHINE_OFFSET: usize = 18;
/// e_machine of x86-64 (EM_X86_64).
const EM_X86_64: u16 = 62;
/// Offset of the "HdrS" signature in a bzImage (Linux boot protocol, Documentation/arch/x86/boot.rst).
const BZIMAGE_HDRS_OFFSET: u64 = 0x202;
/// The boot-protocol header signature.
const BZIMAGE_HDRS: [u8; 4] = *b"HdrS";

/// What a volume source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Raw,
    Qcow2,
    Directory,
}

/// OS name and version read from `/etc/os-release`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    pub name: Option<String>,
    pub version: Option<String>,
    /// `PRETTY_NAME`, e.g. "Debian GNU/Linux 12 (bookworm)".
    pub pretty_name: Option<String>,
}

/// A source opened for chunking. Owns any temporary file built for it (a directory's ext4
/// image), removed on drop.
pub struct OpenedSource {
    pub kind: SourceKind,
    pub reader: Box<dyn ChunkSource>,
    pub os: Option<OsRelease>,
    temp: Option<PathBuf>,
}

impl Drop for OpenedSource {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = std::fs::remove_file(t);
        }
    }
}

/// Tell what `path` is.
pub fn detect(path: &Path) -> Result<SourceKind> {
    let meta = files::check(path, "volume source", files::VOLUME_SOURCE)
        .map_err(|e| StoreError::source(path, e.reason()))?;
    if meta.is_dir() {
        return Ok(SourceKind::Directory);
    }
    let mut magic = [0u8; 4];
    let f = files::open(
        path,
        "volume source",
        files::VOLUME_SOURCE,
        files::Mode::Read,
    )
    .map_err(|e| StoreError::source(path, e.reason()))?;
    let n = f
        .read_at(&mut magic, 0)
        .map_err(|e| StoreError::source(path, e.to_string()))?;
    Ok(if n == 4 && magic == QCOW2_MAGIC {
        SourceKind::Qcow2
    } else {
        SourceKind::Raw
    })
}

/// Open a source. A directory becomes an ext4 file system of `size` bytes (or its contents
/// plus headroom) built in `scratch`. `want_os` asks for `/etc/os-release` (root volumes).
pub fn open(path: &Path, size: Option<u64>, scratch: &Path, want_os: bool) -> Result<OpenedSource> {
    match detect(path)? {
        SourceKind::Raw => {
            let reader = Box::new(RawSource::open(path)?);
            let os = if want_os {
                os_release_from_ext4(path)
            } else {
                None
            };
            Ok(OpenedSource {
                kind: SourceKind::Raw,
                reader,
                os,
                temp: None,
            })
        }
        SourceKind::Qcow2 => Ok(OpenedSource {
            kind: SourceKind::Qcow2,
            reader: Box::new(Qcow2Source::open(path)?),
            os: None,
            temp: None,
        }),
        SourceKind::Directory => {
            let img = scratch.join("dir.ext4");
            let mut opened = OpenedSource {
                kind: SourceKind::Directory,
                reader: Box::new(NoSource),
                os: None,
                temp: Some(img.clone()),
            };
            mkfs_ext4_from_dir(path, &img, size)?;
            opened.reader = Box::new(RawSource::open(&img)?);
            if want_os {
                opened.os = os_release_from_dir(path);
            }
            Ok(opened)
        }
    }
}

/// Placeholder reader while a directory's file system is being built.
struct NoSource;

impl ChunkSource for NoSource {
    fn size(&self) -> u64 {
        0
    }
    fn read_chunk(&mut self, _index: u64, _buf: &mut [u8]) -> Result<bool> {
        Ok(false)
    }
}

/// Bytes and entries under `dir` (not following symlinks).
fn dir_usage(dir: &Path) -> Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| StoreError::source(&d, e.to_string()))?;
        for ent in rd {
            let ent = ent.map_err(|e| StoreError::source(&d, e.to_string()))?;
            let meta = ent
                .path()
                .symlink_metadata()
                .map_err(|e| StoreError::source(&ent.path(), e.to_string()))?;
            entries += 1;
            bytes += meta.len().div_ceil(PER_ENTRY_BYTES) * PER_ENTRY_BYTES + PER_ENTRY_BYTES;
            if meta.is_dir() {
                stack.push(ent.path());
            }
        }
    }
    Ok((bytes, entries))
}

/// The size a directory's file system gets when `--size` is not given: contents plus
/// [`DIR_HEADROOM_PERCENT`] plus [`DIR_HEADROOM_BYTES`], rounded up to a MiB.
pub fn default_dir_fs_size(used: u64) -> u64 {
    let size = used + used * DIR_HEADROOM_PERCENT / 100 + DIR_HEADROOM_BYTES;
    size.div_ceil(MIB) * MIB
}

/// Build an ext4 file system holding `dir` in the sparse file `out` with `mkfs.ext4 -d`
/// (e2fsprogs ≥ 1.43): no loop device, no root privileges.
pub fn mkfs_ext4_from_dir(dir: &Path, out: &Path, size: Option<u64>) -> Result<()> {
    let (used, entries) = dir_usage(dir)?;
    let size = size.unwrap_or_else(|| default_dir_fs_size(used));
    if size < used {
        return Err(StoreError::source(
            dir,
            format!(
                "holds about {} MiB, more than --size allows ({} MiB)",
                used / MIB,
                size / MIB
            ),
        ));
    }
    let f = super::fsio::create_private(out).map_err(|e| StoreError::io("create", out, e))?;
    f.set_len(size)
        .map_err(|e| StoreError::io("size", out, e))?;
    drop(f);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", "root", "-E", "root_owner=0:0", "-d"])
        .arg(dir);
    // Enough inodes for every entry and room to grow, when the default ratio would give fewer.
    let want_inodes = entries * INODE_GROWTH_FACTOR + INODE_SPARE;
    if want_inodes > size / EXT4_INODE_RATIO {
        cmd.arg("-N").arg(want_inodes.to_string());
    }
    cmd.arg(out);
    let res = cmd.output().map_err(|e| StoreError::Tool {
        tool: "mkfs.ext4".into(),
        why: format!("cannot run it ({e}); install e2fsprogs"),
    })?;
    if !res.status.success() {
        let err = String::from_utf8_lossy(&res.stderr);
        return Err(StoreError::Tool {
            tool: "mkfs.ext4".into(),
            why: format!(
                "building a file system from {} failed: {}",
                dir.display(),
                err.trim().replace('\n', "; ")
            ),
        });
    }
    Ok(())
}

/// Parse os-release(5) text: `KEY=value` lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> Option<OsRelease> {
    let mut vars = std::collections::HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        let v = v
            .replace("\\\"", "\"")
            .replace("\\$", "$")
            .replace("\\\\", "\\");
        // The file comes from the image's root file system, which anyone may have built:
        // control characters are kept visible but harmless.
        let v = crate::text::escape_unsafe(&v).into_owned();
        vars.insert(k.trim().to_string(), v);
    }
    let name = vars.get("NAME").or_else(|| vars.get("ID")).cloned();
    let version = vars
        .get("VERSION_ID")
        .or_else(|| vars.get("VERSION"))
        .or_else(|| vars.get("BUILD_ID"))
        .cloned();
    let pretty_name = vars.get("PRETTY_NAME").cloned();
    if name.is_none() && version.is_none() && pretty_name.is_none() {
        return None;
    }
    Some(OsRelease {
        name,
        version,
        pretty_name,
    })
}

/// Candidate locations of os-release(5) inside a root file system, in order.
const OS_RELEASE_PATHS: [&str; 2] = ["etc/os-release", "usr/lib/os-release"];

/// Read os-release from a directory that is a root file system. Absolute symlinks are
/// resolved inside the directory.
pub fn os_release_from_dir(root: &Path) -> Option<OsRelease> {
    for rel in OS_RELEASE_PATHS {
        let mut p = root.join(rel);
        for _ in 0..8 {
            match std::fs::read_link(&p) {
                Ok(target) if target.is_absolute() => {
                    p = root.join(target.strip_prefix("/").unwrap_or(&target));
                }
                Ok(target) => {
                    p = p.parent().unwrap_or(root).join(target);
                }
                Err(_) => break,
            }
        }
        if let Some(os) = std::fs::read_to_string(&p)
            .ok()
            .and_then(|t| parse_os_release(&t))
        {
            return Some(os);
        }
    }
    None
}

/// Read os-release from an ext2/3/4 file system image with `debugfs -R cat` (e2fsprogs),
/// without mounting it. `None` if the image holds no such file system or no os-release.
pub fn os_release_from_ext4(image: &Path) -> Option<OsRelease> {
    for rel in OS_RELEASE_PATHS {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat /{rel}"))
            .arg(image)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        if let Some(os) = parse_os_release(&String::from_utf8_lossy(&out.stdout)) {
            return Some(os);
        }
    }
    None
}

/// Tell a kernel's format: an x86-64 ELF `vmlinux` or a `bzImage`.
pub fn kernel_format(path: &Path) -> Result<KernelFormat> {
    let mut f = files::open(path, "kernel", files::REGULAR, files::Mode::Read)
        .map_err(|e| StoreError::source(path, e.reason()))?;
    let mut head = [0u8; 64];
    let n = f
        .read(&mut head)
        .map_err(|e| StoreError::source(path, e.to_string()))?;
    if n >= 20 && head[..4] == ELF_MAGIC {
        let machine =
            u16::from_le_bytes([head[ELF_E_MACHINE_OFFSET], head[ELF_E_MACHINE_OFFSET + 1]]);
        if head[4] != ELFCLASS64 || machine != EM_X86_64 {
            return Err(StoreError::source(
                path,
                "is an ELF file but not a 64-bit x86-64 kernel",
            ));
        }
        return Ok(KernelFormat::Elf);
    }
    let mut sig = [0u8; 4];
    if f.read_exact_at(&mut sig, BZIMAGE_HDRS_OFFSET).is_ok() && sig == BZIMAGE_HDRS {
        return Ok(KernelFormat::Bzimage);
    }
    Err(StoreError::source(
        path,
        "is not a kernel: neither an x86-64 ELF vmlinux nor a bzImage",
    ))
}

/// Check an initrd: a readable, non-empty regular file (the kind check is the one `amivm boot`
/// applies, [`files::REGULAR`]).
pub fn check_initrd(path: &Path) -> Result<()> {
    let meta = files::check(path, "initrd", files::REGULAR)
        .map_err(|e| StoreError::source(path, e.reason()))?;
    if meta.len() == 0 {
        return Err(StoreError::source(path, "is empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing() {
        let t = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n# c\nID=debian\n";
        let os = parse_os_release(t).unwrap();
        assert_eq!(os.name.as_deref(), Some("Debian GNU/Linux"));
        assert_eq!(os.version.as_deref(), Some("12"));
        assert_eq!(
            os.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let os = parse_os_release("ID=alpine\nVERSION='3.19 x'\n").unwrap();
        assert_eq!(os.name.as_deref(), Some("alpine"));
        assert_eq!(os.version.as_deref(), Some("3.19 x"));
        assert!(parse_os_release("garbage\n").is_none());
        let os = parse_os_release("NAME=\"Evil\x1b[2J\"\n").unwrap();
        assert_eq!(os.name.as_deref(), Some("Evil\\x1b[2J"));
    }

    #[test]
    fn os_release_through_absolute_symlink() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("usr/lib/os-release"),
            "NAME=Test\nVERSION_ID=1\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", d.path().join("etc/os-release")).unwrap();
        let os = os_release_from_dir(d.path()).unwrap();
        assert_eq!(os.name.as_deref(), Some("Test"));
    }

    #[test]
    fn kernel_formats() {
        let d = tempfile::tempdir().unwrap();
        let elf = d.path().join("vmlinux");
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&ELF_MAGIC);
        h[4] = ELFCLASS64;
        h[ELF_E_MACHINE_OFFSET..ELF_E_MACHINE_OFFSET + 2].copy_from_slice(&EM_X86_64.to_le_bytes());
        std::fs::write(&elf, &h).unwrap();
        assert_eq!(kernel_format(&elf).unwrap(), KernelFormat::Elf);
        let bz = d.path().join("bzImage");
        let mut b = vec![0u8; 1024];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&bz, &b).unwrap();
        assert_eq!(kernel_format(&bz).unwrap(), KernelFormat::Bzimage);
        let junk = d.path().join("junk");
        std::fs::write(&junk, b"hello").unwrap();
        assert!(kernel_format(&junk).is_err());
    }

    #[test]
    fn dir_size_has_headroom() {
        assert_eq!(default_dir_fs_size(0), DIR_HEADROOM_BYTES);
        assert!(default_dir_fs_size(100 * MIB) >= 150 * MIB + DIR_HEADROOM_BYTES);
    }
}
