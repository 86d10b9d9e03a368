//! `image export` / `image import`: byte-identical round trip, and damaged bundles rejected
//! with the store unchanged.

mod store_common;

use std::io::Read;
use store_common::*;

/// A store with one shared image over two volumes; returns (env, image id, bundle path, disks).
fn exported() -> (Env, String, std::path::PathBuf, Vec<std::path::PathBuf>) {
    let env = Env::new();
    let root = env.path("root.raw");
    make_disk(&root, 12 * CHUNK, &[(0, 1), (3, 2), (4, 2), (11, 3)]);
    let data = env.path("data.raw");
    make_disk(&data, 3 * CHUNK + 4096, &[(1, 4), (3, 5)]);
    let initrd = env.path("initrd.img");
    std::fs::write(&initrd, noise(9, 70_000)).unwrap();
    let ami = env.create(
        Some(OWNER),
        "exported",
        &root,
        &[
            "--volume",
            data.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--tag",
            "k=v",
        ],
    );
    env.ok(Some(OWNER), &["image", "share", &ami, FRIEND]);
    let bundle = env.path("bundle.tar");
    let out = env.ok(
        Some(OWNER),
        &["image", "export", &ami, "-o", bundle.to_str().unwrap()],
    );
    assert_eq!(out.trim(), bundle.to_str().unwrap());
    (env, ami, bundle, vec![root, data])
}

/// A second store in the same temporary directory, with its lock files made already.
fn fresh_store(env: &Env) -> Env {
    let other = Env::new();
    other.ok(Some(STRANGER), &["gc"]);
    let _ = env;
    other
}

#[test]
fn export_import_round_trip_is_byte_identical() {
    let (env, ami, bundle, disks) = exported();
    let dest = fresh_store(&env);
    let out = dest.ok(Some(OWNER), &["image", "import", bundle.to_str().unwrap()]);
    assert_eq!(out.trim(), ami);

    // Same manifest: ids, owner (the importer), tags kept; the import is private.
    let mut src = env.json(Some(OWNER), &["image", "show", &ami]);
    let got = dest.json(Some(OWNER), &["image", "show", &ami]);
    assert_eq!(src["LaunchPermissions"][0], FRIEND);
    src["LaunchPermissions"] = serde_json::json!([]);
    assert_eq!(src, got);
    assert_eq!(got["OwnerId"], OWNER);
    dest.fails(Some(STRANGER), &["image", "show", &ami]);
    dest.fails(Some(FRIEND), &["image", "show", &ami]);

    // Every volume reassembles to the original bytes.
    for (i, disk) in disks.iter().enumerate() {
        let snap = got["BlockDeviceMappings"][i]["Ebs"]["SnapshotId"]
            .as_str()
            .unwrap();
        assert_eq!(
            volume_hash(&dest, Some(OWNER), snap),
            sha256_file(disk),
            "volume {i}"
        );
    }
    // Same chunks and blobs, and nothing left in staging.
    let names = |e: &Env, d: &str| -> Vec<String> {
        files_under(&e.store.join(d))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&env, "chunks"), names(&dest, "chunks"));
    assert_eq!(names(&env, "blobs"), names(&dest, "blobs"));
    assert!(files_under(&dest.store.join("tmp")).is_empty());

    // Importing it again is refused, and changes nothing.
    let before = dest.tree();
    let err = dest.fails(Some(OWNER), &["image", "import", bundle.to_str().unwrap()]);
    assert!(err.contains("already in this store"), "{err}");
    assert_eq!(dest.tree(), before);
}

/// Where each entry's data starts in the tar, and its length.
fn entries(bundle: &std::path::Path) -> Vec<(String, u64, u64)> {
    let mut ar = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    let mut v = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let pos = e.raw_file_position();
        let len = e.header().size().unwrap();
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
        v.push((name, pos, len));
    }
    v
}

fn import_fails(env: &Env, bundle: &std::path::Path, want: &str) {
    let dest = fresh_store(env);
    let before = dest.tree();
    let err = dest.fails(
        Some(STRANGER),
        &["image", "import", bundle.to_str().unwrap()],
    );
    assert!(err.contains(want), "expected '{want}' in: {err}");
    assert_eq!(dest.tree(), before, "a failed import changed the store");
    assert!(files_under(&dest.store.join("tmp")).is_empty());
}

#[test]
fn flipped_byte_in_a_chunk_is_rejected() {
    let (env, _ami, bundle, _) = exported();
    let ents = entries(&bundle);
    assert_eq!(ents[0].0, "SHA256SUMS");
    // The last chunk entry: everything before it would import fine.
    let (name, pos, len) = ents
        .iter()
        .rev()
        .find(|e| e.0.starts_with("chunks/"))
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = (pos + len / 2) as usize;
    bytes[at] ^= 0x01;
    let bad = env.path("flipped.tar");
    std::fs::write(&bad, &bytes).unwrap();
    import_fails(&env, &bad, &format!("checksum mismatch for '{name}'"));
}

#[test]
fn flipped_byte_in_a_manifest_is_rejected() {
    let (env, _ami, bundle, _) = exported();
    let (_, pos, _) = entries(&bundle)
        .into_iter()
        .find(|e| e.0 == "image.json")
        .unwrap();
    let mut bytes = std::fs::read(&bundle).unwrap();
    // Inside the JSON text: turn a letter of a key into another one.
    bytes[pos as usize + 5] ^= 0x20;
    let bad = env.path("manifest.tar");
    std::fs::write(&bad, &bytes).unwrap();
    import_fails(&env, &bad, "checksum mismatch for 'image.json'");
}

#[test]
fn truncated_bundles_are_rejected() {
    let (env, _ami, bundle, _) = exported();
    let bytes = std::fs::read(&bundle).unwrap();
    let ents = entries(&bundle);

    // Cut in the middle of a chunk's data.
    let (_, pos, len) = ents
        .iter()
        .rev()
        .find(|e| e.0.starts_with("chunks/"))
        .unwrap()
        .clone();
    let mid = env.path("mid.tar");
    std::fs::write(&mid, &bytes[..(pos + len / 2) as usize]).unwrap();
    import_fails(&env, &mid, "truncated");

    // Cut exactly between two entries: the tar itself looks complete.
    let (_, pos, _) = ents.last().unwrap().clone();
    let boundary = env.path("boundary.tar");
    std::fs::write(&boundary, &bytes[..(pos - 512) as usize]).unwrap();
    import_fails(&env, &boundary, "missing");

    // Only the first few hundred bytes.
    let head = env.path("head.tar");
    std::fs::write(&head, &bytes[..300]).unwrap();
    import_fails(&env, &head, "bundle");

    // Not a bundle at all.
    let junk = env.path("junk.tar");
    std::fs::write(&junk, noise(1, 10_000)).unwrap();
    import_fails(&env, &junk, "bundle");
}
