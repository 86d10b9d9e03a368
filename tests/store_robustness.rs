//! Concurrency and crash safety: parallel creates, `kill -9` in the middle of a create.

mod store_common;

use std::time::{Duration, Instant};
use store_common::*;

#[test]
fn concurrent_creates_both_succeed() {
    let env = Env::new();
    // Two disks sharing some chunks, so both processes race on the same chunk names too.
    let a = env.path("a.raw");
    let b = env.path("b.raw");
    let shared: Vec<(u64, u64)> = (0..6).map(|i| (i, 50 + i)).collect();
    let mut only_a = shared.clone();
    only_a.extend((6..10).map(|i| (i, 100 + i)));
    let mut only_b = shared;
    only_b.extend((6..10).map(|i| (i, 200 + i)));
    make_disk(&a, 10 * CHUNK, &only_a);
    make_disk(&b, 10 * CHUNK, &only_b);

    let spawn = |name: &str, disk: &std::path::Path| env.spawn_create(Some(OWNER), name, disk);
    for round in 0..3 {
        let na = format!("a-{round}");
        let nb = format!("b-{round}");
        let pa = spawn(&na, &a);
        let pb = spawn(&nb, &b);
        for (name, p) in [(na, pa), (nb, pb)] {
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let images = env.json(Some(OWNER), &["image", "ls"]);
    assert_eq!(images.as_array().unwrap().len(), 6);
    for img in images.as_array().unwrap() {
        let name = img["Name"].as_str().unwrap();
        let snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
            .as_str()
            .unwrap();
        let disk = if name.starts_with("a-") { &a } else { &b };
        assert_eq!(
            volume_hash(&env, Some(OWNER), snap),
            sha256_file(disk),
            "{name}"
        );
    }
    // 6 shared + 4 + 4 distinct chunks, each stored once.
    assert_eq!(env.chunk_files().len(), 14);
    assert!(files_under(&env.store.join("tmp")).is_empty());
}

/// Staged chunk files of running transactions.
fn staged_chunks(env: &Env) -> usize {
    files_under(&env.store.join("tmp"))
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 64))
        .count()
}

/// Start `image create NAME` from a disk of `chunks` noise chunks and wait until it has
/// staged at least one chunk. `None` if it finished first (a fast release build): the caller
/// retries with a bigger disk.
fn create_caught_staging(env: &Env, name: &str, chunks: u64) -> Option<std::process::Child> {
    let disk = env.path(&format!("{name}.raw"));
    let data: Vec<(u64, u64)> = (0..chunks).map(|i| (i, 1000 + i)).collect();
    make_disk(&disk, chunks * CHUNK, &data);
    let mut child = env.spawn_create(Some(OWNER), name, &disk);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if staged_chunks(env) >= 1 {
            return Some(child);
        }
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "create never started staging chunks"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Catch a create while it stages chunks, growing the disk until one is slow enough.
fn catch_a_create(env: &Env, name: &str) -> (std::process::Child, std::path::PathBuf) {
    let mut chunks = 64;
    for attempt in 0..4 {
        let attempt_name = format!("{name}-{attempt}");
        if let Some(child) = create_caught_staging(env, &attempt_name, chunks) {
            return (child, env.path(&format!("{attempt_name}.raw")));
        }
        // Too fast: undo that image and try a bigger disk.
        env.ok(
            Some(OWNER),
            &["image", "rm", &attempt_name, "--delete-snapshots"],
        );
        env.ok(Some(OWNER), &["gc"]);
        chunks *= 4;
    }
    panic!("every create finished before it could be caught");
}

#[test]
fn kill_9_during_create_leaves_no_image_and_gc_cleans_up() {
    let env = Env::new();
    // An earlier image whose data must survive everything below.
    let keep = env.path("keep.raw");
    make_disk(&keep, 4 * CHUNK, &[(0, 1), (2, 2)]);
    let kept_ami = env.create(Some(OWNER), "keep me", &keep, &[]);
    env.ok(Some(OWNER), &["gc"]);
    let before = env.tree();

    let (mut child, big) = catch_a_create(&env, "doomed");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(staged_chunks(&env) >= 1);

    // No image, no snapshot, no chunk became visible.
    let images = env.json(Some(OWNER), &["image", "ls"]);
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert_eq!(images[0]["ImageId"], kept_ami.as_str());
    assert_eq!(
        env.json(Some(OWNER), &["snapshot", "ls"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let visible = |t: &std::collections::BTreeMap<String, String>| -> Vec<String> {
        t.keys()
            .filter(|k| !k.starts_with("tmp/"))
            .cloned()
            .collect()
    };
    assert_eq!(visible(&env.tree()), visible(&before));

    // gc removes the dead transaction's staging, and nothing else.
    let gc = env.json(Some(OWNER), &["gc"]);
    assert!(gc["TempEntriesRemoved"].as_u64().unwrap() >= 1, "{gc}");
    assert_eq!(gc["ChunksRemoved"], 0);
    assert_eq!(env.tree(), before);
    let snap = root_snapshot(&env, Some(OWNER), &kept_ami);
    assert_eq!(volume_hash(&env, Some(OWNER), &snap), sha256_file(&keep));

    // The store works normally afterwards.
    let ami = env.create(Some(OWNER), "doomed", &big, &[]);
    let snap = root_snapshot(&env, Some(OWNER), &ami);
    assert_eq!(volume_hash(&env, Some(OWNER), &snap), sha256_file(&big));
}

#[test]
fn gc_waits_for_a_running_create() {
    let env = Env::new();
    let (child, big) = catch_a_create(&env, "racing");
    // gc now must not delete the staged chunks out from under the create.
    let gc = env.run(Some(OWNER), &["gc"]);
    assert!(gc.status.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ami = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let snap = root_snapshot(&env, Some(OWNER), &ami);
    assert_eq!(volume_hash(&env, Some(OWNER), &snap), sha256_file(&big));
    env.ok(Some(OWNER), &["gc"]);
    assert_eq!(volume_hash(&env, Some(OWNER), &snap), sha256_file(&big));
}
