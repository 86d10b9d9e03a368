//! `gc --region`: what no image in a region names goes (after `image rm --region`), what
//! another image shares stays and still pulls byte-identical; and the region locks keep gc
//! and pushes apart (a live lock of the other kind makes either refuse, touching nothing).
//! Against moto_server, with the AWS CLI as the third-party view of the bucket.

mod api_common;
mod common;
mod instance_common;
mod region_common;
mod store_common;

use region_common::{assert_pulls_whole, Host, Moto, REGION};
use store_common::{make_disk, CHUNK, OWNER};

fn image(host: &Host, name: &str, data: &[(u64, u64)]) -> String {
    let disk = host.env.path(&format!("{name}.img"));
    make_disk(&disk, 8 * CHUNK, data);
    host.env.create(Some(OWNER), name, &disk, &[])
}

fn count(keys: &[String], prefix: &str) -> usize {
    keys.iter().filter(|k| k.starts_with(prefix)).count()
}

fn gc(host: &Host, dry_run: bool) -> serde_json::Value {
    let mut args = vec!["gc", "--region", REGION];
    if dry_run {
        args.push("--dry-run");
    }
    host.json(Some(OWNER), &args)
}

#[test]
fn gc_removes_only_what_no_image_in_the_region_names() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    // Two images sharing two chunks (and the kernel); each has one of its own.
    let x = image(&a, "x-image", &[(0, 1), (1, 2), (2, 3)]);
    let y = image(&a, "y-image", &[(0, 1), (1, 2), (3, 4)]);
    for ami in [&x, &y] {
        a.ok(Some(OWNER), &["image", "push", ami, "--region", REGION]);
    }
    let keys = moto.keys();
    assert_eq!(count(&keys, "chunks/"), 4, "{keys:?}");
    assert_eq!(count(&keys, "locks/"), 0, "pushes leave no lock: {keys:?}");
    let r = gc(&a, false);
    assert_eq!(r["ChunksRemoved"], 0, "{r}");
    assert_eq!(r["ChunksKept"], 4, "{r}");

    a.ok(
        Some(OWNER),
        &["image", "rm", &x, "--delete-snapshots", "--region", REGION],
    );
    let keys = moto.keys();
    assert_eq!(count(&keys, "images/"), 1, "{keys:?}");
    let r = gc(&a, true);
    assert_eq!(
        (r["ChunksRemoved"].as_u64(), r["DryRun"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(moto.keys(), keys, "a dry run removes nothing");
    let r = gc(&a, false);
    assert_eq!(r["ChunksRemoved"], 1, "{r}");
    assert_eq!(r["BytesFreed"], CHUNK, "{r}");
    assert_eq!(r["BlobsRemoved"], 0, "the kernel is still y's: {r}");
    let keys = moto.keys();
    assert_eq!(count(&keys, "chunks/"), 3, "{keys:?}");
    assert_eq!(count(&keys, "locks/"), 0, "{keys:?}");
    assert_eq!(gc(&a, false)["ChunksRemoved"], 0);

    // What is left is whole: another host pulls y byte-identical.
    assert_pulls_whole(&moto, &a, &y);

    // Deregistered without --delete-snapshots: gc takes its snapshot manifest too.
    a.ok(Some(OWNER), &["image", "rm", &y, "--region", REGION]);
    let r = gc(&a, false);
    assert_eq!(
        (
            &r["ChunksRemoved"],
            &r["BlobsRemoved"],
            &r["SnapshotsRemoved"]
        ),
        (&3.into(), &1.into(), &1.into()),
        "{r}"
    );
    let keys = moto.keys();
    assert!(keys.is_empty(), "{keys:?}");
    // The local stores keep their images.
    a.ok(Some(OWNER), &["image", "show", &x]);
}

#[test]
fn a_live_lock_keeps_gc_and_pushes_apart() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let x = image(&a, "x-image", &[(0, 1), (1, 2)]);
    let scratch = a.env.path("lock");
    // Another host's gc is running: a push refuses and uploads nothing.
    let gc_lock = "locks/gc-otherhost-4242-0000000000000001.json";
    moto.put(gc_lock, b"{}", &scratch);
    // A file under locks/ that amivm did not write is ignored.
    moto.put("locks/readme.txt", b"notes", &scratch);
    let err = a.fails(Some(OWNER), &["image", "push", &x, "--region", REGION]);
    assert!(
        err.contains("gc --region") && err.contains(gc_lock),
        "{err}"
    );
    let keys = moto.keys();
    assert_eq!(count(&keys, "chunks/"), 0, "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.starts_with("locks/write-")),
        "{keys:?}"
    );
    // A second gc refuses too.
    let err = a.fails(Some(OWNER), &["gc", "--region", REGION]);
    assert!(err.contains(gc_lock), "{err}");
    moto.rm(gc_lock);
    a.ok(Some(OWNER), &["image", "push", &x, "--region", REGION]);

    // Another host is pushing: gc refuses and removes nothing, even what it would.
    a.ok(Some(OWNER), &["image", "rm", &x, "--region", REGION]);
    let write_lock = "locks/write-otherhost-77-0000000000000002.json";
    moto.put(write_lock, b"{}", &scratch);
    let before = moto.keys();
    let err = a.fails(Some(OWNER), &["gc", "--region", REGION]);
    assert!(
        err.contains("push or copy") && err.contains(write_lock),
        "{err}"
    );
    assert_eq!(moto.keys(), before);
    // Pushes run beside each other.
    let y = image(&a, "y-image", &[(0, 9)]);
    a.ok(Some(OWNER), &["image", "push", &y, "--region", REGION]);
    moto.rm(write_lock);
    let r = gc(&a, false);
    assert_eq!(r["ChunksRemoved"], 2, "x's chunks: {r}");
    assert_eq!(r["ChunksKept"], 1, "y's chunk: {r}");
    assert_eq!(
        moto.keys()
            .iter()
            .filter(|k| k.as_str() == "locks/readme.txt")
            .count(),
        1
    );
}

/// A push and a gc started at the same moment, on two hosts: each either completes or refuses
/// with the lock message, and whenever the push completed, its image pulls whole.
#[test]
fn a_push_and_a_gc_at_once_never_leave_a_broken_image() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let b = Host::new(&moto);
    // Garbage for the gc to find: an image pushed then deregistered, sharing chunks with the
    // ones pushed below (the push finds them there and does not upload them again).
    let old = image(&a, "old-image", &[(0, 1), (1, 2), (2, 3), (3, 4)]);
    a.ok(Some(OWNER), &["image", "push", &old, "--region", REGION]);
    a.ok(Some(OWNER), &["image", "rm", &old, "--region", REGION]);
    for round in 0..3u64 {
        let ami = image(
            &a,
            &format!("new-{round}"),
            &[(0, 1), (1, 2), (5, 10 + round)],
        );
        let (push, collect) = std::thread::scope(|s| {
            let p = s.spawn(|| a.run(Some(OWNER), &["image", "push", &ami, "--region", REGION]));
            let g = s.spawn(|| b.run(Some(OWNER), &["gc", "--region", REGION]));
            (p.join().unwrap(), g.join().unwrap())
        });
        for (what, out) in [("push", &push), ("gc", &collect)] {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || err.contains("try again when it is done"),
                "round {round}: {what}: {err}"
            );
        }
        if !push.status.success() {
            a.ok(Some(OWNER), &["image", "push", &ami, "--region", REGION]);
        }
        assert_pulls_whole(&moto, &a, &ami);
    }
    assert_eq!(count(&moto.keys(), "locks/"), 0);
}
