//! Issue 11, tests 1, 3 and 6: `image push` and `image pull` through a real S3-compatible
//! server (moto_server), with the AWS CLI as the third-party view of the bucket.

mod api_common;
mod common;
mod instance_common;
mod region_common;
mod store_common;

use region_common::{assert_pulls_whole, Host, Moto, Proxy, REGION};
use store_common::{make_disk, root_snapshot, volume_hash, CHUNK, OWNER};

/// A 4 MiB disk with 5 data chunks (the rest zeros): what an image's root volume holds.
const DATA: &[(u64, u64)] = &[(0, 1), (1, 2), (3, 3), (5, 4), (7, 5)];

fn image(host: &Host, name: &str, data: &[(u64, u64)]) -> String {
    let disk = host.env.path(&format!("{name}.img"));
    make_disk(&disk, 8 * CHUNK, data);
    host.env.create(Some(OWNER), name, &disk, &[])
}

fn push(host: &Host, ami: &str) -> serde_json::Value {
    host.json(Some(OWNER), &["image", "push", ami, "--region", REGION])
}

#[test]
fn push_then_pull_is_byte_identical_and_second_push_uploads_nothing() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let b = Host::new(&moto);
    let ami = image(&a, "web", DATA);

    let r = push(&a, &ami);
    assert_eq!(r["Chunks"], 5, "{r}");
    assert_eq!(r["ChunksUploaded"], 5, "{r}");
    assert_eq!(r["BlobsUploaded"], 1, "{r}");

    // The documented layout, as the AWS CLI sees it.
    let keys = moto.keys();
    let snap = root_snapshot(&a.env, Some(OWNER), &ami);
    let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let chunks: Vec<_> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("chunks/"))
        .collect();
    assert_eq!(chunks.len(), 5, "{keys:?}");
    assert!(chunks.iter().all(|c| is_hex(c)), "{keys:?}");
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("blobs/")).count(),
        1,
        "{keys:?}"
    );
    assert!(keys.contains(&format!("images/{ami}.json")), "{keys:?}");
    assert!(keys.contains(&format!("snapshots/{snap}.json")), "{keys:?}");
    assert_eq!(keys.len(), 8, "nothing else in the bucket: {keys:?}");
    // Each chunk object is the bytes whose sha256 names it.
    let got = moto.get(&format!("chunks/{}", chunks[0]), &a.env.path("c0"));
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&got)), chunks[0]);

    // A second push of the same image uploads nothing.
    let r = push(&a, &ami);
    assert_eq!(r["ChunksUploaded"], 0, "{r}");
    assert_eq!(r["BlobsUploaded"], 0, "{r}");
    assert_eq!(r["AlreadyThere"], true, "{r}");
    let text = a.ok(Some(OWNER), &["image", "push", &ami, "--region", REGION]);
    assert!(text.contains("0 of 5 chunks uploaded"), "{text}");

    // An image sharing 4 of its 6 chunks uploads only the 2 new ones.
    let ami2 = image(
        &a,
        "web2",
        &[(0, 1), (1, 2), (3, 3), (5, 4), (6, 9), (7, 10)],
    );
    let r = push(&a, &ami2);
    assert_eq!(r["Chunks"], 6, "{r}");
    assert_eq!(r["ChunksUploaded"], 2, "{r}");

    // Host B sees it in the region, pulls it, and reassembles the same volume.
    let ls = b.json(Some(OWNER), &["image", "ls", "--region", REGION]);
    let ids: Vec<_> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ImageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ls}");
    assert!(ids.contains(&ami) && ids.contains(&ami2), "{ls}");
    let shown = b.json(Some(OWNER), &["image", "show", "web", "--region", REGION]);
    assert_eq!(shown["ImageId"], ami.as_str());
    b.fails(Some(OWNER), &["image", "show", &ami]);
    let r = b.json(Some(OWNER), &["image", "pull", "web", "--region", REGION]);
    assert_eq!(r["ChunksFetched"], 5, "{r}");
    assert_eq!(r["BlobsFetched"], 1, "{r}");
    assert_eq!(
        volume_hash(&b.env, Some(OWNER), &snap),
        volume_hash(&a.env, Some(OWNER), &snap)
    );
    let local = b.json(Some(OWNER), &["image", "show", &ami]);
    let remote = a.json(Some(OWNER), &["image", "show", &ami]);
    assert_eq!(local, remote, "the pulled manifest is the pushed one");
    // The second image's shared chunks are already local: only its 2 new ones are fetched.
    let r = b.json(Some(OWNER), &["image", "pull", &ami2, "--region", REGION]);
    assert_eq!(r["ChunksFetched"], 2, "{r}");
    let r = b.json(Some(OWNER), &["image", "pull", &ami2, "--region", REGION]);
    assert_eq!(r["AlreadyThere"], true, "{r}");
    b.ok(None, &["store", "verify"]);
}

#[test]
fn damaged_objects_fail_the_pull_and_leave_the_store_unchanged() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let b = Host::new(&moto);
    let ami = image(&a, "web", DATA);
    push(&a, &ami);
    let chunk = moto
        .keys()
        .into_iter()
        .find(|k| k.starts_with("chunks/"))
        .unwrap();
    let manifest = format!("images/{ami}.json");
    let scratch = b.env.path("obj");
    let original_chunk = moto.get(&chunk, &scratch);
    let original_manifest = moto.get(&manifest, &scratch);
    let before = b.env.tree();

    // A flipped byte in a chunk object.
    let mut flipped = original_chunk.clone();
    flipped[1000] ^= 0x40;
    moto.put(&chunk, &flipped, &scratch);
    let err = b.fails(Some(OWNER), &["image", "pull", &ami, "--region", REGION]);
    assert!(err.contains("damaged") && err.contains(&chunk), "{err}");
    assert_eq!(b.env.tree(), before, "a failed pull changed the store");

    // A deleted chunk.
    moto.rm(&chunk);
    let err = b.fails(Some(OWNER), &["image", "pull", &ami, "--region", REGION]);
    assert!(err.contains("missing") && err.contains(&chunk), "{err}");
    assert_eq!(b.env.tree(), before);
    moto.put(&chunk, &original_chunk, &scratch);

    // A truncated image manifest.
    moto.put(
        &manifest,
        &original_manifest[..original_manifest.len() / 2],
        &scratch,
    );
    let err = b.fails(Some(OWNER), &["image", "pull", &ami, "--region", REGION]);
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(b.env.tree(), before);

    // Repaired, the pull works.
    moto.put(&manifest, &original_manifest, &scratch);
    b.ok(Some(OWNER), &["image", "pull", &ami, "--region", REGION]);
    b.ok(None, &["store", "verify"]);
}

#[test]
fn a_push_cut_short_leaves_no_image_and_the_next_push_completes() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let a = Host {
        env: store_common::Env::new(),
    };
    a.ok(
        None,
        &[
            "region",
            "add",
            REGION,
            "s3://amis",
            "--endpoint",
            &proxy.url,
            "--path-style",
        ],
    );
    // 40 data chunks (20 MiB); the server goes away after ~5 MiB of requests.
    let data: Vec<(u64, u64)> = (0..40).map(|i| (i, 100 + i)).collect();
    let disk = a.env.path("big.img");
    make_disk(&disk, 40 * CHUNK, &data);
    let ami = a.env.create(Some(OWNER), "big", &disk, &[]);
    proxy.cut_after(5 << 20);
    let t0 = std::time::Instant::now();
    let err = a.fails(Some(OWNER), &["image", "push", &ami, "--region", REGION]);
    assert!(proxy.is_cut());
    assert!(
        err.contains("region r1"),
        "the error names the region: {err}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
    let keys = moto.keys();
    let chunks = keys.iter().filter(|k| k.starts_with("chunks/")).count();
    assert!(chunks < 40, "the push was cut short: {chunks} chunks");
    assert!(
        !keys.iter().any(|k| k.starts_with("images/")),
        "no partial image: {keys:?}"
    );
    // The server is reachable again: the next push uploads the rest and the image appears.
    proxy.heal();
    let r = push(&a, &ami);
    assert_eq!(
        r["ChunksUploaded"].as_u64().unwrap() as usize,
        40 - chunks,
        "{r}"
    );
    assert!(moto.keys().contains(&format!("images/{ami}.json")));
    assert_pulls_whole(&moto, &a, &ami);
}

/// `image copy` between two regions in one bucket (two prefixes) is a server-side copy: the
/// chunks reach the target prefix (as the AWS CLI lists them) while almost no bytes go from this
/// host to the server (counted by a proxy in front of it), and the copy pulls back whole.
#[test]
fn a_copy_between_regions_of_one_bucket_stays_on_the_server() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let a = Host::new(&moto);
    for (name, prefix) in [("east", "east"), ("west", "west")] {
        a.ok(
            None,
            &[
                "region",
                "add",
                name,
                &format!("s3://{}/{prefix}", region_common::BUCKET),
                "--endpoint",
                &proxy.url,
                "--path-style",
            ],
        );
    }
    let ami = image(&a, "web", DATA);
    a.ok(Some(OWNER), &["image", "push", &ami, "--region", "east"]);
    let pushed = proxy.request_bytes();
    assert!(
        pushed > 5 * CHUNK,
        "the push sent the chunks: {pushed} bytes"
    );
    let copy = a
        .ok(
            Some(OWNER),
            &[
                "image",
                "copy",
                &ami,
                "--source-region",
                "east",
                "--region",
                "west",
                "--name",
                "web-west",
            ],
        )
        .trim()
        .to_string();
    let sent = proxy.request_bytes() - pushed;
    eprintln!("copy: {sent} request bytes for 5 chunks of {CHUNK} bytes");
    assert!(
        sent < CHUNK,
        "server-side: only requests went out ({sent} bytes)"
    );
    let keys = moto.keys();
    let west = keys
        .iter()
        .filter(|k| k.starts_with("west/chunks/"))
        .count();
    assert_eq!(west, 5, "{keys:?}");
    // Another host pulls the copy from the target region: every hash checks.
    let b = Host::new(&moto);
    b.ok(
        None,
        &[
            "region",
            "add",
            "west",
            &format!("s3://{}/west", region_common::BUCKET),
            "--endpoint",
            &moto.url,
            "--path-style",
        ],
    );
    let r = b.json(Some(OWNER), &["image", "pull", &copy, "--region", "west"]);
    assert_eq!(r["ChunksFetched"], 5, "{r}");
    let snap = root_snapshot(&a.env, Some(OWNER), &ami);
    let copied = root_snapshot(&b.env, Some(OWNER), &copy);
    assert_eq!(
        volume_hash(&b.env, Some(OWNER), &copied),
        volume_hash(&a.env, Some(OWNER), &snap)
    );
}
