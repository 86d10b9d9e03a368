//! qcow2 sources: an image made by `qemu-img` imports to the same volume as its raw
//! conversion.

mod store_common;

use std::process::Command;
use store_common::*;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img not found: install qemu-utils (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qcow2_matches_its_raw_conversion() {
    let env = Env::new();
    let me = Some(OWNER);
    let src = env.path("src.raw");
    make_disk(&src, 20 * CHUNK, &[(0, 1), (1, 2), (7, 3), (19, 4)]);
    // A write that straddles qcow2's 64 KiB clusters and our 512 KiB chunks.
    poke(&src, 9 * CHUNK - 100, &noise(77, 300));

    let plain = env.path("plain.qcow2");
    let compressed = env.path("compressed.qcow2");
    let back = env.path("back.raw");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        plain.to_str().unwrap(),
    ]);
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        src.to_str().unwrap(),
        compressed.to_str().unwrap(),
    ]);
    // The reference: qemu-img's own raw conversion of the qcow2 image.
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        plain.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    let want = sha256_file(&back);
    assert_eq!(want, sha256_file(&src));

    let raw_ami = env.create(me, "from raw", &back, &[]);
    let raw_snap = env.json(
        me,
        &["snapshot", "show", &root_snapshot(&env, me, &raw_ami)],
    );
    for (name, q) in [
        ("from qcow2", &plain),
        ("from compressed qcow2", &compressed),
    ] {
        let ami = env.create(me, name, q, &[]);
        let snap_id = root_snapshot(&env, me, &ami);
        assert_eq!(volume_hash(&env, me, &snap_id), want, "{name}");
        let snap = env.json(me, &["snapshot", "show", &snap_id]);
        assert_eq!(snap["SizeBytes"], raw_snap["SizeBytes"]);
        assert_eq!(
            snap["Chunks"], raw_snap["Chunks"],
            "{name}: same chunks as the raw image"
        );
    }
    // Nothing new was stored for the qcow2 images: same content, same chunks.
    // Chunks 0, 1, 7, 19, and 8 and 9 for the straddling write.
    assert_eq!(env.chunk_files().len(), 6);

    // A qcow2 image with a virtual size qemu-img chose and nothing written.
    let empty = env.path("empty.qcow2");
    qemu_img(&["create", "-f", "qcow2", empty.to_str().unwrap(), "3M"]);
    let ami = env.create(me, "empty qcow2", &empty, &[]);
    let snap = env.json(me, &["snapshot", "show", &root_snapshot(&env, me, &ami)]);
    assert_eq!(snap["SizeBytes"], 3 << 20);
    assert_eq!(snap["Chunks"].as_array().unwrap().len(), 0);
}
