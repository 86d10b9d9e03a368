//! Hostile bundles: `image import` of bundles crafted by hand (every checksum right) that try to
//! reach another account's data, pose as another account, or carry absurd manifests. Each is
//! refused with one line and the store unchanged.

mod store_common;

use serde_json::json;
use std::path::{Path, PathBuf};
use store_common::*;

/// Import `bundle` as STRANGER into `env`'s store and require a one-line refusal containing
/// `want`, with the store unchanged.
fn refused(env: &Env, bundle: &Path, want: &str) {
    let before = env.tree();
    let err = env.fails(
        Some(STRANGER),
        &["image", "import", bundle.to_str().unwrap()],
    );
    assert!(err.contains(want), "expected '{want}' in: {err}");
    assert_eq!(env.tree(), before, "a refused import changed the store");
    assert!(files_under(&env.store.join("tmp")).is_empty());
}

/// STRANGER's own image over a disk of `size` bytes, exported and then deregistered with its
/// snapshots: a bundle whose ids are free again, to be edited.
fn strangers_bundle(env: &Env, size: u64) -> Entries {
    let disk = env.path("mine.raw");
    make_disk(&disk, size, &[(1, 21)]);
    let ami = env.create(Some(STRANGER), "mine", &disk, &[]);
    let bundle = env.path("mine.tar");
    env.ok(
        Some(STRANGER),
        &["image", "export", &ami, "-o", bundle.to_str().unwrap()],
    );
    env.ok(Some(STRANGER), &["image", "rm", &ami, "--delete-snapshots"]);
    read_bundle(&bundle)
}

#[test]
fn a_bundle_must_carry_every_chunk_and_blob_it_uses() {
    let env = Env::new();
    // OWNER's private image: secret data and a secret initrd.
    let secret = env.path("secret.raw");
    make_disk(&secret, 4 * CHUNK, &[(0, 11), (2, 12)]);
    let initrd = env.path("initrd.img");
    std::fs::write(&initrd, noise(13, 5000)).unwrap();
    let private = env.create(
        Some(OWNER),
        "private",
        &secret,
        &["--initrd", initrd.to_str().unwrap()],
    );
    let private_snap = root_snapshot(&env, Some(OWNER), &private);
    let secret_chunks = stored_snapshot(&env, &private_snap)["Chunks"].clone();
    let secret_initrd = env.json(Some(OWNER), &["image", "show", &private])["Initrd"].clone();
    assert_eq!(secret_chunks.as_array().unwrap().len(), 2);

    // STRANGER learns the hashes (a leaked manifest, an old public export...) and crafts a
    // bundle that names them without carrying the data.
    let mut entries = strangers_bundle(&env, 4 * CHUNK);
    entries.retain(|(n, _)| !n.starts_with("chunks/"));
    let snap = snapshot_entry(&entries);
    edit_json(&mut entries, &snap, |s| {
        s["Chunks"] = secret_chunks.clone();
        s["DataBytes"] = json!(2 * CHUNK);
    });
    let chunks_only = env.path("chunks-only.tar");
    write_bundle(&chunks_only, &entries);
    refused(&env, &chunks_only, "is not in the bundle");

    // The same with the initrd: STRANGER's own volume (carried), OWNER's initrd (not).
    let mut entries = strangers_bundle(&env, 4 * CHUNK);
    edit_json(&mut entries, "image.json", |i| {
        i["Initrd"] = secret_initrd.clone();
    });
    let blob_only = env.path("blob-only.tar");
    write_bundle(&blob_only, &entries);
    refused(&env, &blob_only, "is not in the bundle");

    // STRANGER got nothing: no image of their own, and OWNER's snapshot stays out of reach.
    let mine = env.json(Some(STRANGER), &["image", "ls", "--owner", "self"]);
    assert_eq!(mine.as_array().unwrap().len(), 0, "{mine}");
    let out = env.path("stolen.raw");
    env.fails(
        Some(STRANGER),
        &[
            "snapshot",
            "dump",
            &private_snap,
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(!out.exists());
}

/// OWNER's image shared with FRIEND and public, exported.
fn shared_export(env: &Env) -> PathBuf {
    let disk = env.path("disk.raw");
    make_disk(&disk, 3 * CHUNK, &[(0, 1), (2, 2)]);
    let ami = env.create(Some(OWNER), "shared", &disk, &[]);
    env.ok(Some(OWNER), &["image", "share", &ami, FRIEND, STRANGER]);
    env.ok(Some(OWNER), &["image", "share", &ami, "--public"]);
    let bundle = env.path("shared.tar");
    env.ok(
        Some(OWNER),
        &["image", "export", &ami, "-o", bundle.to_str().unwrap()],
    );
    bundle
}

#[test]
fn the_importer_owns_what_it_imports_privately() {
    let env = Env::new();
    let bundle = shared_export(&env);
    let b = bundle.to_str().unwrap();

    // STRANGER imports OWNER's bundle into another store: it is STRANGER's, and private.
    let dest = Env::new();
    let ami = dest
        .ok(Some(STRANGER), &["image", "import", b])
        .trim()
        .to_string();
    let img = dest.json(Some(STRANGER), &["image", "show", &ami]);
    assert_eq!(img["OwnerId"], STRANGER, "{img}");
    assert_eq!(img["Public"], false, "{img}");
    assert_eq!(img["LaunchPermissions"], json!([]), "{img}");
    let snap = root_snapshot(&dest, Some(STRANGER), &ami);
    let s = dest.json(Some(STRANGER), &["snapshot", "show", &snap]);
    assert_eq!(s["OwnerId"], STRANGER, "{s}");
    // Nobody else was granted anything by the bundle.
    for who in [OWNER, FRIEND] {
        let err = dest.fails(Some(who), &["image", "show", &ami]);
        assert!(err.contains("not found"), "{who}: {err}");
        let mine = dest.json(Some(who), &["image", "ls"]);
        assert_eq!(mine.as_array().unwrap().len(), 0, "{who}: {mine}");
    }
    // STRANGER may manage it (share, modify): it is theirs.
    dest.ok(
        Some(STRANGER),
        &["image", "modify", &ami, "--description", "mine"],
    );

    // OWNER importing their own bundle elsewhere keeps ownership; still private.
    let other = Env::new();
    other.ok(Some(OWNER), &["image", "import", b]);
    let img = other.json(Some(OWNER), &["image", "show", &ami]);
    assert_eq!(img["OwnerId"], OWNER);
    assert_eq!(img["Public"], false);
    other.fails(Some(FRIEND), &["image", "show", &ami]);
}

#[test]
fn control_characters_in_a_bundle_are_refused() {
    let env = Env::new();
    let base = strangers_bundle(&env, 2 * CHUNK);
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("Description", json!("web\u{1b}]0;owned\u{7}")),
        ("Tags", json!({ "env": "dev\r\u{1b}[2K" })),
        ("OsName", json!("Debian\u{9b}2J")),
    ];
    for (field, value) in cases {
        let mut entries = base.clone();
        edit_json(&mut entries, "image.json", |i| i[field] = value.clone());
        let bad = env.path("control.tar");
        write_bundle(&bad, &entries);
        refused(&env, &bad, "character U+");
    }
}

#[test]
fn absurd_sizes_and_parent_loops_in_a_bundle_are_refused() {
    let env = Env::new();
    let root = env.path("root.raw");
    make_disk(&root, 2 * CHUNK, &[(0, 1)]);
    let data = env.path("data.raw");
    make_disk(&data, CHUNK, &[(0, 2)]);
    let ami = env.create(
        Some(STRANGER),
        "two-volumes",
        &root,
        &["--volume", data.to_str().unwrap()],
    );
    let bundle = env.path("two.tar");
    env.ok(
        Some(STRANGER),
        &["image", "export", &ami, "-o", bundle.to_str().unwrap()],
    );
    env.ok(Some(STRANGER), &["image", "rm", &ami, "--delete-snapshots"]);
    let base = read_bundle(&bundle);
    let image: serde_json::Value =
        serde_json::from_slice(&base.iter().find(|(n, _)| n == "image.json").unwrap().1).unwrap();
    let snap_of = |i: usize| {
        image["BlockDeviceMappings"][i]["Ebs"]["SnapshotId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (root_snap, data_snap) = (snap_of(0), snap_of(1));
    let entry = |s: &str| format!("snapshots/{s}.json");

    let mut cases: Vec<(Entries, &str)> = Vec::new();
    // A VolumeSize of a million TiB.
    let mut e = base.clone();
    edit_json(&mut e, "image.json", |i| {
        i["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] = json!(1u64 << 40);
    });
    cases.push((e, "VolumeSize"));
    // A snapshot that claims a petabyte.
    let mut e = base.clone();
    edit_json(&mut e, &entry(&root_snap), |s| {
        s["SizeBytes"] = json!(1u64 << 50);
        s["VolumeSize"] = json!(1u64 << 20);
    });
    cases.push((e, "largest volume"));
    // A kernel whose recorded size is not the blob's.
    let mut e = base.clone();
    edit_json(&mut e, "image.json", |i| i["Kernel"]["Size"] = json!(1));
    cases.push((e, "bytes where"));
    // A full chunk used as a 512-byte last chunk.
    let mut e = base.clone();
    edit_json(&mut e, &entry(&root_snap), |s| {
        let h = s["Chunks"][0][1].clone();
        s["Chunks"] = json!([[1, h]]);
        s["SizeBytes"] = json!(CHUNK + 512);
        s["DataBytes"] = json!(512);
    });
    cases.push((e, "bytes where"));
    // Its own parent.
    let mut e = base.clone();
    edit_json(&mut e, &entry(&root_snap), |s| {
        s["ParentSnapshotId"] = json!(root_snap);
    });
    cases.push((e, "its own parent"));
    // Each other's parent.
    let mut e = base.clone();
    edit_json(&mut e, &entry(&root_snap), |s| {
        s["ParentSnapshotId"] = json!(data_snap)
    });
    edit_json(&mut e, &entry(&data_snap), |s| {
        s["ParentSnapshotId"] = json!(root_snap)
    });
    cases.push((e, "loops back"));
    for (entries, want) in cases {
        let bad = env.path("absurd.tar");
        write_bundle(&bad, &entries);
        refused(&env, &bad, want);
    }
    // The unedited bundle still imports.
    let good = env.path("good.tar");
    write_bundle(&good, &base);
    env.ok(Some(STRANGER), &["image", "import", good.to_str().unwrap()]);
}
