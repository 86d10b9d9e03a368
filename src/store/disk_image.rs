//! `image create --disk`: an image from a whole disk (raw or qcow2, GPT or MBR). The disk is
//! stored whole as the root snapshot; the kernel, initrd, `root=` and OS come from the disk
//! itself ([`super::disk`]).
//!
//! The disk is analysed *after* it is staged, by reading the staged snapshot (its chunks in
//! the transaction's staging directory, or already in the store). So the analysis reads
//! exactly the bytes the image will boot from, through one path whatever the source format
//! (raw, qcow2, anything a future source reader handles), and a bad disk only aborts the
//! transaction: its staging is removed and the store is unchanged.

use super::backend::{ObjectNs, ObjectReader, ObjectStore};
use super::disk::{self, BootFile, DiskAnalysis, ReadAt};
use super::error::{Result, StoreError};
use super::ids::ContentHash;
use super::images::{commit_new_image, new_image, NewImage, VolumeSpec};
use super::manifest::{self, KernelRef, DESCRIPTION_MAX_LEN};
use super::snapshot::{chunk_len, Snapshot, CHUNK_SIZE};
use super::source::{self, SourceKind};
use super::{BlobRef, Image, KernelFormat, Progress, Store, Txn};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// Open chunk files a staged-disk reader keeps: the partition tables and the few file-system
/// areas the analysis visits.
const OPEN_CHUNKS: usize = 16;
/// Console and flags of a command line amivm writes for a disk image; `root=` follows.
const DISK_CMDLINE_CONSOLE: &str = "console=ttyS0";

/// Everything `image create --disk` needs.
#[derive(Debug, Clone)]
pub struct DiskImageRequest {
    pub owner: super::AccountId,
    pub name: String,
    /// Empty: the disk's OS (`PRETTY_NAME` of its os-release).
    pub description: String,
    /// The whole disk: a raw or qcow2 image.
    pub disk: PathBuf,
    /// A kernel to use instead of the disk's own. Without `initrd`, the image then has none.
    pub kernel: Option<PathBuf>,
    /// An initrd to use instead of the disk's own.
    pub initrd: Option<PathBuf>,
    /// The whole command line, instead of `console=ttyS0 root=UUID=<root fs> rw`.
    pub cmdline: Option<String>,
    /// Words added to the command line.
    pub append: Option<String>,
    /// The root mapping's VolumeSize in bytes (at least the disk's size).
    pub disk_size: Option<u64>,
    pub volumes: Vec<VolumeSpec>,
    pub tags: BTreeMap<String, String>,
    /// How the kernel finds the devices (a distribution disk: ACPI).
    pub device_discovery: super::manifest::DeviceDiscovery,
    /// Marketplace product codes the owner attaches.
    pub product_codes: Vec<String>,
    /// The user to log in as over SSH ([`super::login_user`]).
    pub default_user: Option<String>,
}

impl DiskImageRequest {
    fn common(&self) -> NewImage<'_> {
        NewImage {
            owner: &self.owner,
            name: &self.name,
            tags: &self.tags,
            root: &self.disk,
            root_size: self.disk_size,
            volumes: &self.volumes,
            device_discovery: self.device_discovery,
            product_codes: &self.product_codes,
            default_user: self.default_user.as_deref(),
        }
    }
}

/// A staged snapshot read as a disk: each chunk from the transaction's staging directory if
/// it was staged there, else from the store.
struct StagedDisk {
    backend: Arc<dyn ObjectStore>,
    staged: HashMap<ContentHash, PathBuf>,
    snap: Snapshot,
    open: RefCell<Vec<(ContentHash, Box<dyn ObjectReader>)>>,
}

impl StagedDisk {
    fn new(txn: &Txn<'_>, snap: &Snapshot) -> StagedDisk {
        StagedDisk {
            backend: txn.store().backend_arc(),
            staged: txn.staged_files(ObjectNs::Chunk),
            snap: snap.clone(),
            open: RefCell::new(Vec::new()),
        }
    }

    /// Read `buf.len()` bytes at `within` of the chunk with hash `h`.
    fn read_chunk(&self, h: &ContentHash, buf: &mut [u8], within: u64) -> std::io::Result<()> {
        let mut open = self.open.borrow_mut();
        let pos = match open.iter().position(|(x, _)| x == h) {
            Some(p) => p,
            None => {
                let r: Box<dyn ObjectReader> = match self.staged.get(h) {
                    Some(p) => Box::new(std::fs::File::open(p)?),
                    None => self
                        .backend
                        .open_object(ObjectNs::Chunk, h)
                        .map_err(|e| std::io::Error::other(e.to_string()))?,
                };
                open.insert(0, (*h, r));
                open.truncate(OPEN_CHUNKS);
                0
            }
        };
        open[pos].1.read_exact_at(buf, within)
    }
}

impl ReadAt for StagedDisk {
    fn size(&self) -> u64 {
        self.snap.size_bytes
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let size = self.size();
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("read at {offset} past the end of the disk ({size} bytes)"),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / CHUNK_SIZE;
            let within = pos % CHUNK_SIZE;
            let n = ((chunk_len(size, index) - within) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.snap.chunks.binary_search_by_key(&index, |c| c.0) {
                Ok(i) => self.read_chunk(&self.snap.chunks[i].1, out, within)?,
                Err(_) => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }
}

/// Copy a file found on the disk into a staged blob; returns it with the file it was copied
/// to (in the transaction's scratch directory).
fn stage_boot_file(
    txn: &mut Txn<'_>,
    disk: &Path,
    file: &BootFile,
    name: &str,
) -> Result<(BlobRef, PathBuf)> {
    let tmp = txn.scratch_dir().join(name);
    let mut out = std::fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    file.copy_to(&mut out).map_err(|source| StoreError::Disk {
        path: disk.display().to_string(),
        source,
    })?;
    drop(out);
    let blob = txn.put_blob_file(&tmp)?;
    Ok((blob, tmp))
}

/// The description of a disk image: the one given, else the OS's PRETTY_NAME (cut to the
/// longest description allowed).
fn description(given: &str, a: &DiskAnalysis) -> String {
    if !given.is_empty() {
        return given.to_string();
    }
    a.os.as_ref()
        .and_then(|o| o.pretty_name.as_deref())
        .map(|p| p.chars().take(DESCRIPTION_MAX_LEN).collect())
        .unwrap_or_default()
}

impl Store {
    /// Create an image from a whole disk (`amivm image create --disk`). See the module docs.
    pub fn create_image_from_disk(
        &self,
        req: &DiskImageRequest,
        progress: &dyn Progress,
    ) -> Result<Image> {
        manifest::validate_description(&req.description)?;
        let given_format = req
            .kernel
            .as_deref()
            .map(source::kernel_format)
            .transpose()?;
        if let Some(i) = &req.initrd {
            source::check_initrd(i)?;
        }
        let common = req.common();
        if self.check_new_image(&common)? == SourceKind::Directory {
            return Err(StoreError::source(
                &req.disk,
                "is a directory: --disk takes a raw or qcow2 disk image (use --root for a directory)",
            ));
        }

        let started = std::time::Instant::now();
        let mut txn = self.begin()?;
        let staged = self.stage_volumes(&mut txn, &common, SourceKind::Raw, false, progress)?;
        let disk_err = |source| StoreError::Disk {
            path: req.disk.display().to_string(),
            source,
        };
        let view = StagedDisk::new(&txn, &staged.root_snapshot);
        let analysis = disk::analyse(Rc::new(view), req.kernel.is_none()).map_err(disk_err)?;
        let kernel = match (&req.kernel, given_format, &analysis.kernel) {
            (Some(p), Some(format), _) => KernelRef {
                blob: txn.put_blob_file(p)?,
                format,
            },
            (_, _, Some(found)) => {
                let (blob, copy) = stage_boot_file(&mut txn, &req.disk, found, "disk-kernel")?;
                let format = kernel_format_of(&req.disk, found, &copy)?;
                KernelRef { blob, format }
            }
            _ => return Err(StoreError::Invalid("no kernel to use".into())),
        };
        let initrd = match (&req.initrd, &req.kernel, &analysis.initrd) {
            (Some(p), _, _) => Some(txn.put_blob_file(p)?),
            // A kernel of the caller's own does not get the disk's initrd (its modules
            // belong to the disk's kernel).
            (None, Some(_), _) | (None, None, None) => None,
            (None, None, Some(found)) => {
                Some(stage_boot_file(&mut txn, &req.disk, found, "disk-initrd")?.0)
            }
        };
        let mut cmdline = req.cmdline.clone().unwrap_or_else(|| {
            format!(
                "{DISK_CMDLINE_CONSOLE} {} rw",
                analysis.root_arg(initrd.is_some())
            )
        });
        if let Some(extra) = req.append.as_deref().filter(|a| !a.trim().is_empty()) {
            cmdline = format!("{} {}", cmdline.trim_end(), extra.trim());
        }
        // Images from disks boot distribution kernels that find their virtio-mmio devices
        // through ACPI (`analysis.acpi_device_discovery`): set the manifest's device
        // discovery from it once the manifest has that attribute.
        let image = new_image(
            &common,
            description(&req.description, &analysis),
            kernel,
            initrd,
            cmdline,
            staged.mappings,
            analysis.os.clone().unwrap_or_default(),
        );
        log::info!(
            "{}: {} disk, root partition {} (UUID {}), kernel {}",
            req.disk.display(),
            analysis.table.as_str(),
            analysis.root.number,
            analysis.root_fs_uuid,
            analysis
                .kernel
                .as_ref()
                .map_or("given".into(), |k| k.describe())
        );
        drop(analysis);
        commit_new_image(txn, image, started)
    }
}

/// The format of a kernel copied off the disk; an error naming the file on the disk.
fn kernel_format_of(disk: &Path, found: &BootFile, copy: &Path) -> Result<KernelFormat> {
    source::kernel_format(copy).map_err(|_| {
        StoreError::source(
            disk,
            format!(
                "{} is not a kernel: neither an x86-64 ELF vmlinux nor a bzImage",
                found.describe()
            ),
        )
    })
}
