//! The in-memory image index stays coherent with changes made elsewhere: a long-lived store
//! handle (as `amivm serve` holds) sees every image committed, shared, unshared or deregistered
//! by another handle or by the `amivm` CLI in another process, on its very next lookup, and
//! never serves a launch permission that was revoked.

mod store_common;

use amivm::store::{AccountId, ImageFilter, ImageId, OwnerFilter, Store};
use store_common::*;

fn visible(store: &Store, who: &str) -> Vec<String> {
    let caller = AccountId::parse(who).unwrap();
    store
        .list_images(&caller, &OwnerFilter::All, &ImageFilter::default())
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn a_warm_index_sees_other_processes_changes_at_once() {
    let env = Env::new();
    let disk = env.path("disk.raw");
    make_disk(&disk, 2 * CHUNK, &[(0, 1)]);
    let ami = env.create(Some(OWNER), "base", &disk, &[]);
    let server = Store::open(&env.store).unwrap();
    let friend = AccountId::parse(FRIEND).unwrap();
    let id = ImageId::parse(&ami).unwrap();
    // Warm: the friend sees nothing; a lookup twice in a row is served from memory.
    assert!(visible(&server, FRIEND).is_empty());
    let a = server.images().unwrap();
    let b = server.images().unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "an unchanged store is not re-read"
    );

    // Shared and unshared by the CLI (another process), many times in quick succession (within
    // one tick of the file-system clock): every lookup right after a change sees it.
    for round in 0..20 {
        env.ok(Some(OWNER), &["image", "share", &ami, FRIEND]);
        assert_eq!(visible(&server, FRIEND), ["base"], "round {round}: share");
        assert!(server.resolve_image(&friend, &ami).is_ok());
        env.ok(Some(OWNER), &["image", "unshare", &ami, FRIEND]);
        assert!(
            visible(&server, FRIEND).is_empty(),
            "round {round}: a revoked permission was served"
        );
        assert!(server.resolve_image(&friend, &ami).is_err());
        assert!(server
            .images()
            .unwrap()
            .get(&id)
            .unwrap()
            .launch_permissions
            .is_empty());
    }

    // Another handle in this process (its own index) changes the store: seen too.
    let other = Store::open(&env.store).unwrap();
    let owner = AccountId::parse(OWNER).unwrap();
    other
        .share_image(&owner, &id, std::slice::from_ref(&friend), false)
        .unwrap();
    assert_eq!(visible(&server, FRIEND), ["base"]);

    // New images and deregistered ones.
    let second = env.create(Some(OWNER), "second", &disk, &[]);
    assert_eq!(visible(&server, OWNER), ["base", "second"]);
    env.ok(Some(OWNER), &["image", "rm", &second]);
    assert_eq!(visible(&server, OWNER), ["base"]);
    // The name is free again for the server's own checks.
    server.check_name_free(&owner, "second", None).unwrap();
}

#[test]
fn a_manifest_written_by_hand_is_seen() {
    let env = Env::new();
    let disk = env.path("disk.raw");
    make_disk(&disk, CHUNK, &[(0, 1)]);
    let ami = env.create(Some(OWNER), "base", &disk, &[]);
    let server = Store::open(&env.store).unwrap();
    assert_eq!(visible(&server, OWNER), ["base"]);
    // A copy of the manifest under a new id, written into images/ without amivm (as a restore
    // from backup would): the directory's times move, so the index is rebuilt.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let src = env.store.join("images").join(format!("{ami}.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&src).unwrap()).unwrap();
    m["ImageId"] = "ami-0123456789abcdef0".into();
    m["Name"] = "by-hand".into();
    let dst = env.store.join("images").join("ami-0123456789abcdef0.json");
    std::fs::write(&dst, serde_json::to_vec(&m).unwrap()).unwrap();
    assert_eq!(visible(&server, OWNER), ["base", "by-hand"]);
}
