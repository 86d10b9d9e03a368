//! `amivm image ...`, `amivm snapshot ...` and `amivm gc`: the image-store commands.
//!
//! Each command opens the store (`--store`, else the default directory), works out the
//! caller's account (`--account`, else `$AMIVM_ACCOUNT`, else the store's own), calls the
//! store library and prints a text table or, with `--output json`, JSON. Errors go up to
//! `cli::main`, which prints them on one line and exits with 125.

pub(super) mod progress;
pub(super) mod render;
mod verify;

pub use verify::{run_store, StoreCmd};

use super::output::{open_store as open, open_store_read_only, print_json};
use super::region;
use super::{GlobalOpts, OutputFormat};
use crate::store::images::DeregisterReport;
use crate::store::manifest::DeviceDiscovery as ImageDiscovery;
use crate::store::manifest::{
    parse_tag, DEFAULT_CMDLINE, GIB, MAX_VOLUME_BYTES, MAX_VOLUME_SIZE_GIB,
};
use crate::store::region::LOCAL_REGION;
use crate::store::{
    AccountId, CreateImageRequest, DiskImageRequest, ImageFilter, ImageId, OwnerFilter, VolumeSpec,
};
use crate::vmm::DeviceDiscovery;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use progress::Bar;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum ImageCmd {
    /// Create an image from a kernel and a root volume (raw, qcow2 or directory), or from a
    /// whole disk with its own kernel (--disk).
    Create(CreateArgs),
    /// List images you own, images shared with you, and public images.
    Ls(LsArgs),
    /// Show one image (AMI = image id or unique name).
    Show {
        /// Image id or unique name.
        ami: String,
        /// The region's image instead of the local store's.
        #[arg(long, value_name = "R")]
        region: Option<String>,
    },
    /// Copy an image: a new image sharing all its data (nothing is copied within a store;
    /// between regions, what the target lacks is transferred).
    Copy {
        ami: String,
        /// Name of the new image.
        #[arg(long)]
        name: String,
        /// Description of the new image (default: the source's).
        #[arg(long)]
        description: Option<String>,
        /// Where the source image is (default: local).
        #[arg(long, value_name = "R1")]
        source_region: Option<String>,
        /// Where the copy goes (default: local).
        #[arg(long, value_name = "R2")]
        region: Option<String>,
    },
    /// Upload an image you own to a region: only the chunks and blobs it lacks, then the
    /// manifests (the image appears there only when complete).
    Push {
        ami: String,
        #[arg(long, value_name = "R")]
        region: String,
    },
    /// Download an image from a region into the local store (every hash is checked; all or
    /// nothing).
    Pull {
        ami: String,
        #[arg(long, value_name = "R")]
        region: String,
    },
    /// Give accounts launch permission, or make the image public.
    Share(ShareArgs),
    /// Take launch permission away from accounts, or make the image private.
    Unshare(ShareArgs),
    /// Change an image's description or tags.
    Modify {
        ami: String,
        #[arg(long)]
        description: Option<String>,
        /// Add or replace a tag (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Remove a tag (repeatable).
        #[arg(long = "untag", value_name = "KEY")]
        untags: Vec<String>,
    },
    /// Deregister an image; its snapshots stay unless --delete-snapshots.
    Rm {
        ami: String,
        /// Also delete its snapshots that you own and nothing else uses.
        #[arg(long)]
        delete_snapshots: bool,
        /// Deregister the region's image instead of the local store's (its chunks and blobs
        /// stay in the bucket: other images may share them).
        #[arg(long)]
        region: Option<String>,
    },
    /// Write an image, its snapshots, chunks and blobs to a tar bundle (every chunk and blob
    /// is checked against its hash; the store is only read).
    Export {
        ami: String,
        /// The bundle to write.
        #[arg(short = 'o', long = "output-file", value_name = "FILE.tar")]
        out: PathBuf,
    },
    /// Import a bundle written by `image export`, verifying every hash first. You own the
    /// imported image, and it is private.
    Import {
        /// The bundle to read.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image name: 3-128 letters, digits and ()[] ./-'@_
    #[arg(long)]
    name: String,
    /// Kernel: an x86-64 ELF vmlinux or a bzImage (with --disk: instead of the disk's).
    #[arg(long, value_name = "FILE", required_unless_present = "disk")]
    kernel: Option<PathBuf>,
    /// Initrd (with --disk: instead of the disk's).
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: console=ttyS0 root=/dev/vda rw; with --disk:
    /// console=ttyS0 root=UUID=<root file system> rw].
    #[arg(long, value_name = "S")]
    cmdline: Option<String>,
    /// Add to the kernel command line.
    #[arg(long, value_name = "ARGS")]
    append: Option<String>,
    /// Root volume (/dev/vda): a raw disk image, a qcow2 image or a directory.
    #[arg(long, value_name = "SRC", required_unless_present = "disk")]
    root: Option<PathBuf>,
    /// A whole disk (raw or qcow2; GPT or MBR) as the root volume: the kernel, initrd,
    /// root= and OS are read from it (ext2/3/4 root, its /boot or a /boot partition).
    #[arg(long, value_name = "FILE", conflicts_with = "root")]
    disk: Option<PathBuf>,
    /// Extra volume, /dev/vdb onwards (repeatable).
    #[arg(long = "volume", value_name = "SRC")]
    volumes: Vec<PathBuf>,
    /// Extra read-only volume, after the --volume ones (repeatable).
    #[arg(long = "volume-ro", value_name = "SRC")]
    volumes_ro: Vec<PathBuf>,
    /// Root size in GiB (or with a unit: 512M, 2G): the file-system size for a directory,
    /// else the root volume size (at least the source's).
    #[arg(long, value_name = "GIB")]
    size: Option<String>,
    #[arg(long, default_value = "")]
    description: String,
    /// Tag (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// How the kernel finds its virtio disks, recorded in the image and used by every
    /// instance: cmdline (virtio_mmio.device= arguments, micro-VM kernels) or acpi (DSDT
    /// entries, kernels like Debian's cloud kernel; `amivm stop` then presses the ACPI power
    /// button instead of sending Ctrl-Alt-Del).
    /// Default: acpi with --disk (a distribution's kernel), else cmdline.
    #[arg(long, value_enum)]
    device_discovery: Option<DeviceDiscovery>,
    /// A Marketplace product code to attach (repeatable): copies keep it, and only you may
    /// make an image carrying it public.
    #[arg(long = "product-code", value_name = "CODE")]
    product_codes: Vec<String>,
    /// The user `amivm ssh` logs in as (the image's DefaultUser attribute). Default: the user
    /// the distribution's EC2 images create (admin on Debian, ubuntu on Ubuntu, ...).
    #[arg(long, value_name = "USER")]
    default_user: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Whose images: self, all (everything visible to you), or an account id.
    #[arg(long, default_value = "all")]
    owner: String,
    /// EC2-style filter NAME=VALUE (repeatable): name, image-id, state, is-public, owner-id,
    /// architecture, description, tag:KEY, tag-key; values may use * and ?.
    #[arg(long = "filter", value_name = "NAME=VALUE")]
    filters: Vec<String>,
    /// List a region's images instead of the local store's.
    #[arg(long, value_name = "R")]
    region: Option<String>,
    /// Only images carrying this product code (the filter product-code=CODE).
    #[arg(long, value_name = "CODE")]
    product_code: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    ami: String,
    /// Account ids to grant or revoke (the global --account names you, the caller).
    #[arg(value_name = "ACCOUNT_ID", required_unless_present = "public")]
    accounts: Vec<String>,
    /// Everyone (share) / no longer everyone (unshare).
    #[arg(long)]
    public: bool,
    /// Change the region's image instead of the local store's.
    #[arg(long, value_name = "R")]
    region: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List snapshots you own or can reach through an image you can see.
    Ls,
    /// Show one snapshot.
    Show { snapshot: String },
    /// Delete a snapshot you own that no image or instance uses.
    Rm { snapshot: String },
    /// Write a snapshot's volume to a sparse raw file (every chunk is checked against its hash).
    Dump {
        snapshot: String,
        #[arg(short = 'o', long = "output-file", value_name = "FILE")]
        out: PathBuf,
    },
}

/// ext4's default block size (mke2fs.conf `blocksize = 4096`): `--size` is rounded up to it.
const FS_BLOCK: u64 = 4096;

/// Parse `--size`: a number of GiB, or a number with a K/M/G/T unit (binary), rounded up to
/// a 4 KiB block; at most [`MAX_VOLUME_SIZE_GIB`].
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "g" | "gb" | "gib" => GIB,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("--size '{s}': unknown unit (use a number of GiB, or K, M, G, T)"),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .with_context(|| format!("--size '{s}' is not a positive size"))?;
    let bytes = (n * mult as f64).ceil();
    // Compare as floats: the conversion to u64 saturates, and rounding up to a block could
    // then wrap around to 0.
    if bytes > MAX_VOLUME_BYTES as f64 {
        bail!("--size '{s}' is more than the largest volume, {MAX_VOLUME_SIZE_GIB} GiB");
    }
    Ok((bytes as u64).div_ceil(FS_BLOCK) * FS_BLOCK)
}

fn parse_tags(tags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(tags
        .iter()
        .map(|t| parse_tag(t))
        .collect::<Result<BTreeMap<_, _>, _>>()?)
}

fn parse_accounts(v: &[String]) -> anyhow::Result<Vec<AccountId>> {
    Ok(v.iter()
        .map(|a| AccountId::parse(a))
        .collect::<Result<Vec<_>, _>>()?)
}

pub fn run_image(cmd: ImageCmd, g: &GlobalOpts) -> anyhow::Result<i32> {
    let json = g.output == OutputFormat::Json;
    // Export only reads: it works on a read-only store and creates nothing in it.
    let (store, caller) = match cmd {
        ImageCmd::Export { .. } => open_store_read_only(g)?,
        _ => open(g)?,
    };
    match cmd {
        ImageCmd::Create(a) => {
            let img = create(&store, caller, a)?;
            if json {
                print_json(&json!({ "ImageId": img.image_id }))?;
            } else {
                println!("{}", img.image_id);
            }
        }
        ImageCmd::Ls(a) => {
            let owner = OwnerFilter::parse(&a.owner)?;
            let mut filter = ImageFilter::parse(&a.filters)?;
            if let Some(code) = a.product_code {
                filter.add("product-code", vec![code])?;
            }
            let (store, _) = region::target(&store, a.region.as_deref())?;
            let images = store.list_images(&caller, &owner, &filter)?;
            if json {
                print_json(&images)?;
            } else {
                print!("{}", render::image_table(&images, &caller));
            }
        }
        ImageCmd::Show { ami, region } => {
            let (store, _) = region::target(&store, region.as_deref())?;
            let img = store.resolve_image(&caller, &ami)?;
            if json {
                print_json(&img)?;
            } else {
                let mut snaps = BTreeMap::new();
                for id in img.snapshot_ids() {
                    if let Ok(s) = store.snapshot(id) {
                        snaps.insert(id.clone(), s);
                    }
                }
                print!("{}", render::image_details(&img, &snaps, &caller));
            }
        }
        ImageCmd::Copy {
            ami,
            name,
            description,
            source_region,
            region,
        } => {
            let (src_store, src_region) = region::target(&store, source_region.as_deref())?;
            let (dst_store, dst_region) = region::target(&store, region.as_deref())?;
            let src = src_store.resolve_image(&caller, &ami)?;
            let img = if source_region.as_deref().unwrap_or(LOCAL_REGION)
                == region.as_deref().unwrap_or(LOCAL_REGION)
            {
                src_store.copy_image(&caller, &src, &name, description.as_deref())?
            } else {
                use crate::store::region::copy::{copy_between, End};
                copy_between(
                    End {
                        store: &src_store,
                        region: src_region.as_ref(),
                    },
                    End {
                        store: &dst_store,
                        region: dst_region.as_ref(),
                    },
                    &caller,
                    &src,
                    &name,
                    description.as_deref(),
                    &Bar::stderr(),
                )?
            };
            if json {
                print_json(&json!({ "ImageId": img.image_id, "SourceImageId": src.image_id }))?;
            } else {
                println!("{}", img.image_id);
            }
        }
        ImageCmd::Share(a) | ImageCmd::Unshare(a) if a.accounts.is_empty() && !a.public => {
            bail!("give account ids or --public")
        }
        ImageCmd::Share(a) => {
            let accounts = parse_accounts(&a.accounts)?;
            let img = region::merge(&store, a.region.as_deref(), |s| {
                let id = s.resolve_image(&caller, &a.ami)?.image_id;
                s.share_image(&caller, &id, &accounts, a.public)
            })?;
            print_permissions(&img, json)?;
        }
        ImageCmd::Unshare(a) => {
            let accounts = parse_accounts(&a.accounts)?;
            let img = region::merge(&store, a.region.as_deref(), |s| {
                let id = s.resolve_image(&caller, &a.ami)?.image_id;
                s.unshare_image(&caller, &id, &accounts, a.public)
            })?;
            print_permissions(&img, json)?;
        }
        ImageCmd::Push { ami, region } => region::push(&store, &caller, &ami, &region, json)?,
        ImageCmd::Pull { ami, region } => region::pull(&store, &caller, &ami, &region, json)?,
        ImageCmd::Modify {
            ami,
            description,
            tags,
            untags,
        } => {
            let id = store.resolve_image(&caller, &ami)?.image_id;
            let img = store.modify_image(
                &caller,
                &id,
                description.as_deref(),
                &parse_tags(&tags)?,
                &untags,
            )?;
            if json {
                print_json(&img)?;
            }
        }
        ImageCmd::Rm {
            ami,
            delete_snapshots,
            region,
        } => {
            let (id, report) =
                region::deregister(&store, &caller, &ami, region.as_deref(), delete_snapshots)?;
            print_deregister(&id, &report, json)?;
        }
        ImageCmd::Export { ami, out } => {
            let img = store.resolve_image(&caller, &ami)?;
            let r = store.export_image(&caller, &img, &out, &Bar::stderr())?;
            if json {
                print_json(&json!({
                    "ImageId": img.image_id, "File": out, "Bytes": r.bytes, "Chunks": r.chunks
                }))?;
            } else {
                println!("{}", out.display());
            }
        }
        ImageCmd::Import { file } => {
            let img = store.import_bundle(&caller, &file, &Bar::stderr())?;
            if json {
                print_json(&json!({ "ImageId": img.image_id }))?;
            } else {
                println!("{}", img.image_id);
            }
        }
    }
    Ok(0)
}

/// `image create`: from a kernel and volumes, or from a whole disk.
fn create(
    store: &crate::store::Store,
    owner: AccountId,
    a: CreateArgs,
) -> anyhow::Result<crate::store::Image> {
    let volumes = a
        .volumes
        .iter()
        .map(|p| (p, false))
        .chain(a.volumes_ro.iter().map(|p| (p, true)))
        .map(|(p, ro)| VolumeSpec {
            source: p.clone(),
            read_only: ro,
        })
        .collect();
    let size = a.size.as_deref().map(parse_size).transpose()?;
    let tags = parse_tags(&a.tags)?;
    let discovery = |default| match a.device_discovery.unwrap_or(default) {
        DeviceDiscovery::Cmdline => ImageDiscovery::Cmdline,
        DeviceDiscovery::Acpi => ImageDiscovery::Acpi,
    };
    if let Some(disk) = a.disk {
        let req = DiskImageRequest {
            owner,
            name: a.name,
            description: a.description,
            disk,
            kernel: a.kernel,
            initrd: a.initrd,
            cmdline: a.cmdline,
            append: a.append,
            disk_size: size,
            volumes,
            tags,
            device_discovery: discovery(DeviceDiscovery::Acpi),
            product_codes: a.product_codes,
            default_user: a.default_user,
        };
        return Ok(store.create_image_from_disk(&req, &Bar::stderr())?);
    }
    let (Some(kernel), Some(root)) = (a.kernel, a.root) else {
        bail!("give --kernel and --root, or --disk");
    };
    let cmdline = match a.append.as_deref().map(str::trim).filter(|x| !x.is_empty()) {
        Some(extra) => Some(format!(
            "{} {extra}",
            a.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE).trim_end()
        )),
        None => a.cmdline,
    };
    let req = CreateImageRequest {
        owner,
        name: a.name,
        description: a.description,
        kernel,
        initrd: a.initrd,
        cmdline,
        root,
        root_size: size,
        volumes,
        tags,
        device_discovery: discovery(DeviceDiscovery::Cmdline),
        product_codes: a.product_codes,
        default_user: a.default_user,
    };
    // The rules `amivm boot` applies: an image that could never boot is refused here.
    let cmdline = req.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
    crate::vmm::boot::check_image(&req.kernel, cmdline, 1 + req.volumes.len())?;
    Ok(store.create_image(&req, &Bar::stderr())?)
}

fn print_permissions(img: &crate::store::Image, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&json!({
            "ImageId": img.image_id,
            "Public": img.public,
            "LaunchPermissions": img.launch_permissions,
        }));
    }
    let perms: Vec<String> = img
        .launch_permissions
        .iter()
        .map(|a| a.to_string())
        .collect();
    println!(
        "{}: public={} launch-permissions={}",
        img.image_id,
        if img.public { "yes" } else { "no" },
        if perms.is_empty() {
            "-".into()
        } else {
            perms.join(",")
        }
    );
    Ok(())
}

fn print_deregister(id: &ImageId, r: &DeregisterReport, json: bool) -> anyhow::Result<()> {
    if json {
        let kept: Vec<_> = r
            .kept_snapshots
            .iter()
            .map(|(s, why)| json!({ "SnapshotId": s, "Reason": why }))
            .collect();
        return print_json(&json!({
            "ImageId": id, "DeletedSnapshots": r.deleted_snapshots, "KeptSnapshots": kept
        }));
    }
    println!("deregistered {id}");
    for s in &r.deleted_snapshots {
        println!("deleted {s}");
    }
    for (s, why) in &r.kept_snapshots {
        println!("kept {s}: {why}");
    }
    Ok(())
}

pub fn run_snapshot(cmd: SnapshotCmd, g: &GlobalOpts) -> anyhow::Result<i32> {
    let json = g.output == OutputFormat::Json;
    // Like export, dump only reads the store.
    let (store, caller) = match cmd {
        SnapshotCmd::Dump { .. } => open_store_read_only(g)?,
        _ => open(g)?,
    };
    match cmd {
        SnapshotCmd::Ls => {
            let snaps = store.list_snapshots(&caller)?;
            if json {
                // Chunk lists can be long: `snapshot show` prints them.
                let v: Vec<_> = snaps
                    .iter()
                    .map(|s| {
                        let mut v = serde_json::to_value(s).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            o.remove("Chunks");
                            o.insert("ChunkCount".into(), s.chunks.len().into());
                        }
                        v
                    })
                    .collect();
                print_json(&v)?;
            } else {
                print!(
                    "{}",
                    render::snapshot_table(&snaps, &store.snapshot_users()?)
                );
            }
        }
        SnapshotCmd::Show { snapshot } => {
            let s = store.resolve_snapshot(&caller, &snapshot)?;
            if json {
                print_json(&s)?;
            } else {
                let users = store.snapshot_users()?;
                print!(
                    "{}",
                    render::snapshot_details(&s, users.get(&s.snapshot_id))
                );
            }
        }
        SnapshotCmd::Rm { snapshot } => {
            let s = store.resolve_snapshot(&caller, &snapshot)?;
            store.delete_snapshot(&caller, &s.snapshot_id)?;
            if json {
                print_json(&json!({ "SnapshotId": s.snapshot_id, "Deleted": true }))?;
            } else {
                println!("deleted {}", s.snapshot_id);
            }
        }
        SnapshotCmd::Dump { snapshot, out } => {
            let s = store.resolve_snapshot(&caller, &snapshot)?;
            store.dump_snapshot(&s, &out, &Bar::stderr())?;
            if json {
                print_json(&json!({ "SnapshotId": s.snapshot_id, "File": out }))?;
            } else {
                println!("{}", out.display());
            }
        }
    }
    Ok(0)
}

pub fn run_gc(g: &GlobalOpts) -> anyhow::Result<i32> {
    let (store, _) = open(g)?;
    if store.gc_would_wait()? {
        eprintln!("amivm: waiting for running image creates and imports to finish...");
    }
    let r = store.gc()?;
    if g.output == OutputFormat::Json {
        print_json(&r)?;
    } else {
        println!(
            "removed {} chunks ({}), {} blobs ({}), {} temporary entries ({}); kept {} chunks, {} blobs",
            r.chunks_removed,
            render::human(r.chunk_bytes_freed),
            r.blobs_removed,
            render::human(r.blob_bytes_freed),
            r.temp_entries_removed,
            render::human(r.temp_bytes_freed),
            r.chunks_kept,
            r.blobs_kept
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2").unwrap(), 2 * GIB);
        assert_eq!(parse_size("0.5").unwrap(), GIB / 2);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000K").unwrap(), 1000 << 10);
        assert_eq!(parse_size("1K").unwrap(), 4096);
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("3Q").is_err());
        assert_eq!(parse_size("16384").unwrap(), MAX_VOLUME_BYTES);
        for huge in [
            "16385",
            "18446744073709551615",
            "999999999999999999999999999999",
            "99999999T",
        ] {
            let e = parse_size(huge).unwrap_err().to_string();
            assert!(e.contains("largest volume"), "{huge}: {e}");
        }
    }
}
