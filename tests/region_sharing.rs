//! Issue 11, tests 2 and 4: launch permissions through a region (owner, shared-with,
//! stranger), and hosts racing each other: concurrent pushes sharing chunks, concurrent
//! permission changes on one image (conditional writes: nothing is lost).

mod api_common;
mod common;
mod instance_common;
mod region_common;
mod store_common;

use region_common::{text, Host, Moto, REGION};
use store_common::{make_disk, root_snapshot, volume_hash, CHUNK, FRIEND, OWNER, STRANGER};

fn image(host: &Host, name: &str, data: &[(u64, u64)]) -> String {
    let disk = host.env.path(&format!("{name}.img"));
    make_disk(&disk, 8 * CHUNK, data);
    host.env.create(Some(OWNER), name, &disk, &[])
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["ImageId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn three_accounts_see_what_ec2_would_show_them() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let b = Host::new(&moto);
    let ami = image(&a, "web", &[(0, 1), (2, 2)]);
    // Only the owner may push.
    let err = a.fails(Some(FRIEND), &["image", "push", &ami, "--region", REGION]);
    assert!(err.contains("not found") || err.contains("owner"), "{err}");
    a.ok(Some(OWNER), &["image", "push", &ami, "--region", REGION]);

    let ls = |acct| ids(&b.json(Some(acct), &["image", "ls", "--region", REGION]));
    assert_eq!(ls(OWNER), vec![ami.clone()]);
    assert!(ls(FRIEND).is_empty());
    assert!(ls(STRANGER).is_empty());

    // The owner shares with FRIEND from host B (the region's manifest changes).
    b.ok(
        Some(OWNER),
        &["image", "share", &ami, FRIEND, "--region", REGION],
    );
    assert_eq!(ls(FRIEND), vec![ami.clone()]);
    assert!(ls(STRANGER).is_empty());
    let err = b.fails(Some(STRANGER), &["image", "show", &ami, "--region", REGION]);
    assert!(err.contains("not found"), "{err}");
    let err = b.fails(Some(STRANGER), &["image", "pull", &ami, "--region", REGION]);
    assert!(err.contains("not found"), "{err}");
    // Only the owner changes permissions.
    let err = b.fails(
        Some(FRIEND),
        &["image", "share", &ami, STRANGER, "--region", REGION],
    );
    assert!(err.contains("owner") || err.contains("may not"), "{err}");
    // The friend pulls it.
    b.ok(Some(FRIEND), &["image", "pull", &ami, "--region", REGION]);
    let snap = root_snapshot(&b.env, Some(FRIEND), &ami);
    assert_eq!(
        volume_hash(&b.env, Some(FRIEND), &snap),
        volume_hash(&a.env, Some(OWNER), &snap)
    );
    // Filters work on the region too.
    let f = ids(&b.json(
        Some(FRIEND),
        &["image", "ls", "--region", REGION, "--filter", "name=we*"],
    ));
    assert_eq!(f, vec![ami.clone()]);
    let f = ids(&b.json(
        Some(FRIEND),
        &["image", "ls", "--region", REGION, "--filter", "name=x*"],
    ));
    assert!(f.is_empty());

    // Public: the stranger sees it; unshare takes it back.
    a.ok(
        Some(OWNER),
        &["image", "share", &ami, "--public", "--region", REGION],
    );
    assert_eq!(ls(STRANGER), vec![ami.clone()]);
    a.ok(
        Some(OWNER),
        &[
            "image", "unshare", &ami, "--public", FRIEND, "--region", REGION,
        ],
    );
    assert!(ls(STRANGER).is_empty());
    assert!(ls(FRIEND).is_empty());
    // The local stores were not touched by region permission changes.
    let local = a.json(Some(OWNER), &["image", "show", &ami]);
    assert_eq!(local["Public"], false);
    assert_eq!(local["LaunchPermissions"], serde_json::json!([]));
}

/// `image rm --region`: only the owner deregisters a region's image; afterwards no account
/// sees or pulls it there, its snapshot goes with --delete-snapshots, the chunks stay in
/// the bucket (another image may share them) and the local store keeps its copy.
#[test]
fn the_owner_deregisters_a_regions_image() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let b = Host::new(&moto);
    let ami = image(&a, "gone", &[(0, 7), (3, 8)]);
    a.ok(Some(OWNER), &["image", "push", &ami, "--region", REGION]);
    a.ok(
        Some(OWNER),
        &["image", "share", &ami, FRIEND, "--region", REGION],
    );
    let snap = root_snapshot(&a.env, Some(OWNER), &ami);
    let rm = [
        "image",
        "rm",
        &ami,
        "--delete-snapshots",
        "--region",
        REGION,
    ];
    let err = b.fails(Some(FRIEND), &rm);
    assert!(err.contains("owner") || err.contains("may not"), "{err}");
    let err = b.fails(Some(STRANGER), &rm);
    assert!(err.contains("not found"), "{err}");
    let keys = moto.keys();
    assert!(
        keys.iter().any(|k| k == &format!("images/{ami}.json")),
        "{keys:?}"
    );

    let out = b.ok(Some(OWNER), &rm);
    assert!(out.contains(&ami), "{out}");
    let keys = moto.keys();
    assert!(!keys.iter().any(|k| k.starts_with("images/")), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.starts_with("snapshots/")),
        "{keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("chunks/")).count(),
        2,
        "{keys:?}"
    );
    for acct in [OWNER, FRIEND] {
        let ls = b.json(Some(acct), &["image", "ls", "--region", REGION]);
        assert_eq!(ls, serde_json::json!([]));
        let err = b.fails(Some(acct), &["image", "pull", &ami, "--region", REGION]);
        assert!(err.contains("not found"), "{err}");
    }
    // A second rm is a clear not-found, and the local image is untouched.
    let err = a.fails(Some(OWNER), &rm);
    assert!(err.contains("not found"), "{err}");
    let local = a.json(Some(OWNER), &["image", "show", &ami]);
    assert_eq!(local["ImageId"], ami.as_str());
    a.ok(Some(OWNER), &["snapshot", "show", &snap]);
}

#[test]
fn concurrent_pushes_of_images_sharing_chunks_both_complete() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let c = Host::new(&moto);
    // Same data on two hosts (same chunks), different images.
    let shared: Vec<(u64, u64)> = (0..8).map(|i| (i, 7 + i)).collect();
    let ami_a = image(&a, "from-a", &shared);
    let ami_c = image(&c, "from-c", &shared);
    // Two hosts push at once: each checks and uploads the same 8 chunks.
    let spawn = |h: &Host, ami: &str| {
        h.cmd(Some(OWNER), &["image", "push", ami, "--region", REGION])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (h1, h2) = (spawn(&a, &ami_a), spawn(&c, &ami_c));
    let (o1, o2) = (
        h1.wait_with_output().unwrap(),
        h2.wait_with_output().unwrap(),
    );
    assert!(o1.status.success(), "{}", text(&o1));
    assert!(o2.status.success(), "{}", text(&o2));
    let keys = moto.keys();
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("chunks/")).count(),
        8,
        "{keys:?}"
    );
    let b = Host::new(&moto);
    for ami in [&ami_a, &ami_c] {
        b.ok(Some(OWNER), &["image", "pull", ami, "--region", REGION]);
    }
    b.ok(None, &["store", "verify"]);
    let sa = root_snapshot(&a.env, Some(OWNER), &ami_a);
    assert_eq!(
        volume_hash(&b.env, Some(OWNER), &sa),
        volume_hash(&a.env, Some(OWNER), &sa)
    );
}

#[test]
fn concurrent_permission_changes_are_all_kept() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let b = Host::new(&moto);
    let ami = image(&a, "web", &[(0, 1)]);
    a.ok(Some(OWNER), &["image", "push", &ami, "--region", REGION]);
    // Two hosts share with different accounts at the same moment, several times over.
    let accounts: Vec<String> = (0..6).map(|i| format!("4444444444{i:02}")).collect();
    for pair in accounts.chunks(2) {
        let spawn = |h: &Host, acct: &str| {
            h.cmd(
                Some(OWNER),
                &["image", "share", &ami, acct, "--region", REGION],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        };
        let (h1, h2) = (spawn(&a, &pair[0]), spawn(&b, &pair[1]));
        let (o1, o2) = (
            h1.wait_with_output().unwrap(),
            h2.wait_with_output().unwrap(),
        );
        // Share is a merge: a lost race is retried, so both succeed.
        assert!(o1.status.success(), "{}", text(&o1));
        assert!(o2.status.success(), "{}", text(&o2));
    }
    let shown = b.json(Some(OWNER), &["image", "show", &ami, "--region", REGION]);
    let perms: Vec<String> = shown["LaunchPermissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(perms, accounts, "no change was lost: {shown}");
}

#[test]
fn a_write_over_a_manifest_changed_since_it_was_read_is_a_conflict() {
    use amivm::store::backend::{Collection, DocOp};
    use amivm::store::{AccountId, ImageId, Store, StoreError};
    let moto = Moto::start();
    let a = Host::new(&moto);
    let ami = image(&a, "web", &[(0, 1)]);
    a.ok(Some(OWNER), &["image", "push", &ami, "--region", REGION]);
    for (k, v) in region_common::AWS_ENV {
        // std serialises environment access; every test of this binary sets the same values.
        std::env::set_var(k, v);
    }
    let local = Store::open(&a.env.store).unwrap();
    let (h1, h2) = (
        local.open_region(REGION).unwrap(),
        local.open_region(REGION).unwrap(),
    );
    let id = ImageId::parse(&ami).unwrap();
    let owner = AccountId::parse(OWNER).unwrap();
    // Both "hosts" read the manifest; the first changes it.
    let mut stale = h2.store.image(&id).unwrap();
    h1.store
        .share_image(&owner, &id, &[AccountId::parse(FRIEND).unwrap()], false)
        .unwrap();
    // The second writes what it read, changed: refused, and the first change is kept.
    stale.description = "two".into();
    let put = DocOp::Put {
        collection: Collection::Images,
        id: ami.clone(),
        bytes: serde_json::to_vec(&stale).unwrap(),
    };
    match h2.store.backend().commit_docs(vec![put.clone()]) {
        Err(StoreError::Conflict(why)) => assert!(why.contains("changed"), "{why}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let now = h1.store.image(&id).unwrap();
    assert_eq!(now.launch_permissions.len(), 1);
    // A client that never read it may not create it over the existing one either.
    let h3 = local.open_region(REGION).unwrap();
    assert!(matches!(
        h3.store.backend().commit_docs(vec![put]),
        Err(StoreError::Conflict(_))
    ));
    // After reading the current version, the change goes through.
    h2.store
        .modify_image(&owner, &id, Some("two"), &Default::default(), &[])
        .unwrap();
    let now = h1.store.image(&id).unwrap();
    assert_eq!(
        (now.description.as_str(), now.launch_permissions.len()),
        ("two", 1)
    );
}

#[test]
fn product_codes_survive_copies_and_only_their_owner_publishes() {
    let moto = Moto::start();
    let a = Host::new(&moto);
    let disk = a.env.path("paid.img");
    make_disk(&disk, 2 * CHUNK, &[(0, 3)]);
    let paid = a
        .env
        .create(Some(OWNER), "paid", &disk, &["--product-code", "abc123def"]);
    let free = image(&a, "free", &[(0, 4)]);
    let bad = a.env.run(
        Some(OWNER),
        &[
            "image",
            "create",
            "--name",
            "x1x",
            "--kernel",
            a.env.kernel().to_str().unwrap(),
            "--root",
            disk.to_str().unwrap(),
            "--product-code",
            "no-dashes",
        ],
    );
    assert_eq!(bad.status.code(), Some(125));
    for ami in [&paid, &free] {
        a.ok(Some(OWNER), &["image", "push", ami, "--region", REGION]);
    }
    let shown = a.json(Some(OWNER), &["image", "show", &paid, "--region", REGION]);
    assert_eq!(
        shown["ProductCodes"][0]["ProductCodeId"], "abc123def",
        "{shown}"
    );
    assert_eq!(shown["ProductCodes"][0]["ProductCodeType"], "marketplace");
    // The filter, locally and in the region.
    for extra in [&[][..], &["--region", REGION][..]] {
        let mut args = vec!["image", "ls", "--product-code", "abc123def"];
        args.extend_from_slice(extra);
        assert_eq!(ids(&a.json(Some(OWNER), &args)), vec![paid.clone()]);
    }
    // A customer it is shared with copies it (in the region, and into their store): the copies
    // keep the code, and the customer cannot make them public.
    a.ok(
        Some(OWNER),
        &["image", "share", &paid, FRIEND, "--region", REGION],
    );
    let b = Host::new(&moto);
    let in_region = b
        .ok(
            Some(FRIEND),
            &[
                "image",
                "copy",
                &paid,
                "--source-region",
                REGION,
                "--region",
                REGION,
                "--name",
                "mine",
            ],
        )
        .trim()
        .to_string();
    let local = b
        .ok(
            Some(FRIEND),
            &[
                "image",
                "copy",
                &paid,
                "--source-region",
                REGION,
                "--name",
                "mine-local",
            ],
        )
        .trim()
        .to_string();
    let c = b.json(
        Some(FRIEND),
        &["image", "show", &in_region, "--region", REGION],
    );
    assert_eq!(c["ProductCodes"], shown["ProductCodes"], "{c}");
    assert_eq!(c["OwnerId"], FRIEND);
    let c = b.json(Some(FRIEND), &["image", "show", &local]);
    assert_eq!(c["ProductCodes"], shown["ProductCodes"], "{c}");
    for (ami, region) in [(&in_region, Some(REGION)), (&local, None)] {
        let mut args = vec!["image", "share", ami.as_str(), "--public"];
        if let Some(r) = region {
            args.extend_from_slice(&["--region", r]);
        }
        let err = b.fails(Some(FRIEND), &args);
        assert!(err.contains("product code abc123def"), "{err}");
    }
    // The seller may publish it; images without codes are unaffected.
    a.ok(
        Some(OWNER),
        &["image", "share", &paid, "--public", "--region", REGION],
    );
    a.ok(
        Some(OWNER),
        &["image", "share", &free, "--public", "--region", REGION],
    );
    let f2 = b.ok(
        Some(FRIEND),
        &[
            "image",
            "copy",
            &free,
            "--source-region",
            REGION,
            "--name",
            "free-copy",
        ],
    );
    b.ok(Some(FRIEND), &["image", "share", f2.trim(), "--public"]);
    let v = ids(&b.json(
        Some(STRANGER),
        &[
            "image",
            "ls",
            "--region",
            REGION,
            "--product-code",
            "abc123def",
        ],
    ));
    assert_eq!(v, vec![paid.clone()], "public now, to everyone");
}
