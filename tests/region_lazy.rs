//! Issue 11, tests 5 and the lazy parts of 2 and 3: `amivm run AMI --region R` boots the test
//! guest from a region's image without pulling it; only the chunks the guest reads (and a
//! little read-ahead) are fetched, checked and kept locally; a damaged chunk is an I/O error
//! for reads of that chunk only; a stranger may not launch a private image.

mod api_common;
mod common;
mod instance_common;
mod region_common;
mod store_common;

use common::{run_with_deadline, Report};
use region_common::{push_guest_image, read_line, Host, Moto, Proxy, REGION};
use std::time::Duration;
use store_common::{CHUNK, OWNER, STRANGER};

/// 16 data chunks: an 8 MiB root volume full of noise.
const CHUNKS: u64 = 16;
/// Chunk 5 starts at this sector.
const SECTOR_OF_CHUNK5: u64 = 5 * CHUNK / 512;

fn sum64(bytes: &[u8]) -> u64 {
    common::report::sum64(bytes)
}

fn lazy_run(h: &Host, account: &str, ami: &str, append: &str) -> common::RunOutput {
    let cmd = h.cmd(
        Some(account),
        &[
            "run",
            ami,
            "--region",
            REGION,
            "--rm",
            "--timeout",
            "60",
            "--append",
            append,
        ],
    );
    run_with_deadline(cmd, Duration::from_secs(180))
}

fn local_chunks(h: &Host) -> usize {
    store_common::files_under(&h.env.store.join("chunks")).len()
}

#[test]
fn run_from_a_region_fetches_only_what_the_guest_reads() {
    let moto = Moto::start();
    let (_a, ami, disk) = push_guest_image(&moto, CHUNKS);
    let b = Host::new(&moto);
    let out = lazy_run(
        &b,
        OWNER,
        &ami,
        &format!("blk=read:0:8 blk=read:{SECTOR_OF_CHUNK5}:8"),
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    // The guest read the bytes the image holds.
    assert_eq!(read_line(&r, 0), ("0".into(), Some(sum64(&disk[..4096]))));
    let at = (5 * CHUNK) as usize;
    assert_eq!(
        read_line(&r, SECTOR_OF_CHUNK5),
        ("0".into(), Some(sum64(&disk[at..at + 4096])))
    );
    // Two chunks read, each with at most READ_AHEAD (4) more: far fewer than the 16.
    let fetched = local_chunks(&b);
    eprintln!("lazy boot: {fetched} of {CHUNKS} chunks fetched");
    assert!((2..=10).contains(&fetched), "{fetched} chunks kept locally");
    assert!(out.stderr.contains("fetched"), "{}", out.describe());
    // The local store holds no image: nothing was pulled, the chunks are a cache.
    let ls = b.json(Some(OWNER), &["image", "ls"]);
    assert_eq!(ls, serde_json::json!([]));
    // A second boot reads the kept chunks locally.
    let out = lazy_run(&b, OWNER, &ami, "blk=read:0:8");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("fetched 0 chunks"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_damaged_chunk_is_an_io_error_for_that_chunk_only_and_strangers_may_not_launch() {
    let moto = Moto::start();
    let (a, ami, disk) = push_guest_image(&moto, CHUNKS);
    let b = Host::new(&moto);
    // The stranger cannot see the private image.
    let out = lazy_run(&b, STRANGER, &ami, "blk=read:0:8");
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(out.stderr.contains("not found"), "{}", out.describe());

    // Flip a byte of chunk 5's object in the bucket.
    use sha2::Digest;
    let at = (5 * CHUNK) as usize;
    let h5 = hex::encode(sha2::Sha256::digest(&disk[at..at + CHUNK as usize]));
    let key = format!("chunks/{h5}");
    let scratch = a.env.path("obj");
    let mut bytes = moto.get(&key, &scratch);
    bytes[7] ^= 1;
    moto.put(&key, &bytes, &scratch);
    let out = lazy_run(
        &b,
        OWNER,
        &ami,
        &format!("blk=read:0:8 blk=read:{SECTOR_OF_CHUNK5}:8"),
    );
    assert_eq!(
        out.code,
        Some(0),
        "the VM ran to its end: {}",
        out.describe()
    );
    let r = Report::from_run(&out);
    assert_eq!(read_line(&r, 0), ("0".into(), Some(sum64(&disk[..4096]))));
    // VIRTIO_BLK_S_IOERR is 1 (virtio spec 1.2 §5.2.6).
    assert_eq!(read_line(&r, SECTOR_OF_CHUNK5).0, "1", "{}", out.describe());
    assert!(
        !store_common::files_under(&b.env.store.join("chunks"))
            .iter()
            .any(|p| p.ends_with(&h5)),
        "the damaged chunk was not kept"
    );
}

/// `run --region --detach`: the instance runs in the background with its chunks fetched on
/// first read; it keeps its region, so `start` reads through it again: chunks kept by the first
/// run stay local, chunks first read now are fetched.
#[test]
fn a_detached_run_from_a_region_and_its_start_read_through_the_region() {
    let moto = Moto::start();
    let (_a, ami, disk) = push_guest_image(&moto, CHUNKS);
    let b = Host::new(&moto);
    let id = b
        .ok(
            Some(OWNER),
            &[
                "run",
                &ami,
                "--region",
                REGION,
                "--detach",
                "--name",
                "lazy",
                "--timeout",
                "60",
                "--append",
                "blk=read:0:8",
            ],
        )
        .trim()
        .to_string();
    assert!(id.starts_with("i-"), "{id}");
    let t0 = std::time::Instant::now();
    let inst = loop {
        let ps = b.json(Some(OWNER), &["ps", "--all"]);
        let inst = ps.as_array().unwrap()[0].clone();
        if inst["State"]["Name"] == "stopped" {
            break inst;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{inst}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(inst["Region"], REGION, "{inst}");
    let r = Report::parse(&b.ok(Some(OWNER), &["logs", &id]));
    assert_eq!(read_line(&r, 0), ("0".into(), Some(sum64(&disk[..4096]))));
    let after_first = local_chunks(&b);
    assert!((1..CHUNKS as usize).contains(&after_first), "{after_first}");

    // The local chunk cache emptied: the same instance started again reads chunk 0 through
    // its region (without it, the read would be an I/O error).
    b.forget_chunks();
    let out = b.run_ok(&["start", "lazy", "--attach", "--timeout", "60"]);
    let r = Report::from_run(&out);
    assert_eq!(read_line(&r, 0), ("0".into(), Some(sum64(&disk[..4096]))));
    assert!(local_chunks(&b) >= 1, "fetched again and kept");
}

/// A launch asks the region for each object once: the image, its snapshot and its kernel
/// (fetched while the snapshot is read, with no HEAD first), and each chunk once, even when
/// the guest reads the first chunk while the boot's prefetch of it is still under way.
#[test]
fn a_lazy_launch_asks_the_region_for_each_object_once() {
    let moto = Moto::start();
    let (_a, ami, disk) = push_guest_image(&moto, CHUNKS);
    let proxy = Proxy::start(moto.port);
    let b = Host::with_endpoint(&proxy.url);
    let out = lazy_run(&b, OWNER, &ami, "blk=read:0:8");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    assert_eq!(read_line(&r, 0), ("0".into(), Some(sum64(&disk[..4096]))));
    let reqs = proxy.requests();
    let count = |part: &str| reqs.iter().filter(|l| l.contains(part)).count();
    assert!(
        !reqs.iter().any(|l| l.starts_with("HEAD ")),
        "no HEAD: {reqs:#?}"
    );
    assert_eq!(count("/images/"), 1, "{reqs:#?}");
    assert_eq!(count("/snapshots/"), 1, "{reqs:#?}");
    assert_eq!(count("/blobs/"), 1, "the kernel: {reqs:#?}");
    let chunks: Vec<&String> = reqs.iter().filter(|l| l.contains("/chunks/")).collect();
    let distinct: std::collections::HashSet<&&String> = chunks.iter().collect();
    assert_eq!(
        distinct.len(),
        chunks.len(),
        "a chunk fetched twice: {reqs:#?}"
    );
    // The first chunk, and at most its read-ahead (READ_AHEAD = 4).
    assert!((1..=5).contains(&chunks.len()), "{reqs:#?}");
}

/// `create-image` of an instance launched from a region makes an image of the local store that
/// needs the region no more: the instance's snapshot is pulled whole first (what is not local
/// yet is fetched and checked), and with the server gone the new image's volume is the
/// original byte for byte.
#[test]
fn an_image_of_an_instance_launched_from_a_region_is_whole_locally() {
    let mut moto = Moto::start();
    let (_a, ami, disk) = push_guest_image(&moto, CHUNKS);
    let b = Host::new(&moto);
    b.run_from_region(&ami, &["--name", "src", "--append", "blk=read:0:8"]);
    assert!(local_chunks(&b) < CHUNKS as usize);
    let out = b.run(Some(OWNER), &["create-image", "src", "--name", "backup"]);
    let err = region_common::text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("fetched from region"), "{err}");
    let backup = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(local_chunks(&b), CHUNKS as usize);

    moto.kill();
    // The volume (its mapping's 1 GiB) starts with the image's 8 MiB, then zeros.
    let copy = store_common::root_snapshot(&b.env, Some(OWNER), &backup);
    let dump = b.env.path("backup.raw");
    b.env.ok(
        Some(OWNER),
        &["snapshot", "dump", &copy, "-o", dump.to_str().unwrap()],
    );
    let bytes = std::fs::read(&dump).unwrap();
    assert!(bytes.starts_with(&disk), "the image's data");
    assert!(
        bytes[disk.len()..].iter().all(|&b| b == 0),
        "zeros after it"
    );
}

/// A launch sizes the volume from the image's mapping (its snapshot manifest is fetched while
/// the instance and the VM are made): a region image whose snapshot is larger than its
/// mapping's VolumeSize, which registration would refuse, fails to launch with a clear error.
#[test]
fn a_region_image_whose_snapshot_outgrows_its_mapping_fails_to_launch() {
    let moto = Moto::start();
    let (a, ami, _disk) = push_guest_image(&moto, CHUNKS);
    let key = moto
        .keys()
        .into_iter()
        .find(|k| k.starts_with("snapshots/"))
        .expect("a snapshot manifest in the bucket");
    let scratch = a.env.path("manifest");
    let mut snap: serde_json::Value = serde_json::from_slice(&moto.get(&key, &scratch)).unwrap();
    // The same chunks in a 2 GiB snapshot; the image still maps it as 1 GiB.
    snap["SizeBytes"] = (2u64 << 30).into();
    snap["VolumeSize"] = 2.into();
    moto.put(&key, &serde_json::to_vec(&snap).unwrap(), &scratch);
    let b = Host::new(&moto);
    let out = lazy_run(&b, OWNER, &ami, "blk=read:0:8");
    assert_eq!(out.code, Some(125), "{}", out.describe());
    assert!(
        out.stderr.contains("is smaller than snapshot") && out.stderr.contains("2147483648"),
        "{}",
        out.describe()
    );
}
