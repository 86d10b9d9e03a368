//! Image-store CLI tests: lifecycle, permission matrix, dedup, error handling.
//! Every test runs the real `amivm` binary on its own temporary store.

mod store_common;

use store_common::*;

/// A small root directory with an os-release.
fn rootfs(env: &Env) -> std::path::PathBuf {
    let root = env.path("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::write(
        root.join("usr/lib/os-release"),
        "NAME=\"Amivm Test Linux\"\nVERSION_ID=\"7.1\"\nID=amivmtest\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    std::fs::write(root.join("hello.txt"), "hello from the root volume\n").unwrap();
    root
}

#[test]
fn lifecycle() {
    let env = Env::new();
    let me = Some(OWNER);
    let root = rootfs(&env);
    let data = env.path("data.raw");
    make_disk(&data, 4 * CHUNK, &[(1, 7)]);
    let initrd = env.path("initrd");
    std::fs::write(&initrd, b"not really a cpio, but bytes").unwrap();

    let ami = env.create(
        me,
        "web server (v1)",
        &root,
        &[
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 quiet",
            "--volume-ro",
            data.to_str().unwrap(),
            "--description",
            "first image",
            "--tag",
            "env=test",
            "--tag",
            "team=storage",
            "--size",
            "48M",
        ],
    );

    // show, by id and by name, text and JSON.
    let text = env.ok(me, &["image", "show", "web server (v1)"]);
    assert!(text.contains(&ami), "{text}");
    assert!(text.contains("Amivm Test Linux 7.1"), "{text}");
    let v = env.json(me, &["image", "show", &ami]);
    assert_eq!(v["Name"], "web server (v1)");
    assert_eq!(v["OwnerId"], OWNER);
    assert_eq!(v["State"], "available");
    assert_eq!(v["Architecture"], "x86_64");
    assert_eq!(v["Public"], false);
    assert_eq!(v["OsName"], "Amivm Test Linux");
    assert_eq!(v["OsVersion"], "7.1");
    assert_eq!(v["Kernel"]["Format"], "elf");
    assert!(v["Initrd"]["Blob"].is_string());
    assert_eq!(v["KernelCommandLine"], "console=ttyS0 quiet");
    assert_eq!(v["RootDeviceName"], "/dev/vda");
    assert_eq!(v["Tags"]["env"], "test");
    let bdm = v["BlockDeviceMappings"].as_array().unwrap();
    assert_eq!(bdm.len(), 2);
    assert_eq!(bdm[0]["DeviceName"], "/dev/vda");
    assert_eq!(bdm[1]["DeviceName"], "/dev/vdb");
    assert_eq!(bdm[1]["Ebs"]["ReadOnly"], true);
    assert_eq!(bdm[0]["Ebs"]["DeleteOnTermination"], true);
    // The directory became a 48 MiB ext4 file system.
    let root_snap = bdm[0]["Ebs"]["SnapshotId"].as_str().unwrap().to_string();
    let s = env.json(me, &["snapshot", "show", &root_snap]);
    assert_eq!(s["SizeBytes"], 48 << 20);
    let dump = env.path("root.img");
    env.ok(
        me,
        &["snapshot", "dump", &root_snap, "-o", dump.to_str().unwrap()],
    );
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(&dump)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "hello from the root volume\n"
    );
    // The data volume reads back byte for byte.
    let data_snap = bdm[1]["Ebs"]["SnapshotId"].as_str().unwrap();
    assert_eq!(volume_hash(&env, me, data_snap), sha256_file(&data));

    // ls with filters and owners.
    let ls = env.ok(me, &["image", "ls"]);
    assert!(ls.contains(&ami) && ls.contains("web server (v1)"), "{ls}");
    let count = |args: &[&str]| env.json(me, args).as_array().unwrap().len();
    assert_eq!(count(&["image", "ls", "--owner", "self"]), 1);
    assert_eq!(count(&["image", "ls", "--filter", "name=web*"]), 1);
    assert_eq!(count(&["image", "ls", "--filter", "name=db*"]), 0);
    assert_eq!(count(&["image", "ls", "--filter", "tag:env=test"]), 1);
    assert_eq!(count(&["image", "ls", "--filter", "tag:env=prod"]), 0);
    assert_eq!(
        count(&[
            "image",
            "ls",
            "--filter",
            "is-public=false",
            "--filter",
            "state=available"
        ]),
        1
    );
    assert_eq!(
        count(&["image", "ls", "--filter", &format!("image-id={ami}")]),
        1
    );
    assert_eq!(
        count(&[
            "image",
            "ls",
            "--filter",
            "architecture=x86_64",
            "--filter",
            "owner-id=1111*"
        ]),
        1
    );

    // copy: a new image, no new chunks.
    let chunks_before = env.chunk_files();
    let copy = env
        .ok(me, &["image", "copy", &ami, "--name", "web copy"])
        .trim()
        .to_string();
    assert_ne!(copy, ami);
    assert_eq!(env.chunk_files(), chunks_before);
    let c = env.json(me, &["image", "show", "web copy"]);
    assert_eq!(c["SourceImageId"], ami.as_str());
    assert_eq!(c["Description"], "first image");
    let copy_snap = c["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(copy_snap, root_snap);
    assert_eq!(
        volume_hash(&env, me, &copy_snap),
        volume_hash(&env, me, &root_snap)
    );
    // Names are unique per owner.
    let err = env.fails(me, &["image", "copy", &ami, "--name", "web copy"]);
    assert!(err.contains("already has an image named"), "{err}");

    // modify.
    env.ok(
        me,
        &[
            "image",
            "modify",
            "web copy",
            "--description",
            "the copy",
            "--tag",
            "env=prod",
            "--untag",
            "team",
        ],
    );
    let c = env.json(me, &["image", "show", &copy]);
    assert_eq!(c["Description"], "the copy");
    assert_eq!(c["Tags"]["env"], "prod");
    assert!(c["Tags"].get("team").is_none());

    // rm the copy with its snapshots: the original's data stays intact.
    let out = env.ok(me, &["image", "rm", &copy, "--delete-snapshots"]);
    assert!(out.contains(&format!("deleted {copy_snap}")), "{out}");
    env.fails(me, &["image", "show", &copy]);
    env.ok(me, &["gc"]);
    assert_eq!(env.chunk_files(), chunks_before);
    assert_eq!(volume_hash(&env, me, data_snap), sha256_file(&data));

    // rm without --delete-snapshots keeps the snapshots; gc keeps their chunks, drops blobs.
    env.ok(me, &["image", "rm", &ami]);
    assert!(env
        .json(me, &["image", "ls"])
        .as_array()
        .unwrap()
        .is_empty());
    let snaps = env.json(me, &["snapshot", "ls"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    let gc = env.json(me, &["gc"]);
    assert_eq!(gc["ChunksRemoved"], 0);
    assert_eq!(gc["BlobsRemoved"], 2, "{gc}");
    assert_eq!(volume_hash(&env, me, data_snap), sha256_file(&data));

    // Deleting the snapshots frees everything.
    env.ok(me, &["snapshot", "rm", &root_snap]);
    env.ok(me, &["snapshot", "rm", data_snap]);
    let gc = env.json(me, &["gc"]);
    assert_eq!(gc["ChunksKept"], 0, "{gc}");
    assert!(env.chunk_files().is_empty());
    assert!(files_under(&env.store.join("blobs")).is_empty());
}

#[test]
fn permission_matrix() {
    let env = Env::new();
    let disk = env.path("disk.raw");
    make_disk(&disk, 2 * CHUNK, &[(0, 1)]);
    let ami = env.create(Some(OWNER), "shared-img", &disk, &[]);
    let visible = |who: &str| -> bool {
        env.json(Some(who), &["image", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["ImageId"] == ami.as_str())
    };

    // Private: only the owner sees it.
    assert!(visible(OWNER));
    assert!(!visible(FRIEND));
    assert!(!visible(STRANGER));
    let err = env.fails(Some(STRANGER), &["image", "show", &ami]);
    assert!(err.contains("not found"), "{err}");

    // Share with FRIEND.
    let out = env.ok(Some(OWNER), &["image", "share", &ami, FRIEND]);
    assert!(out.contains(FRIEND), "{out}");
    assert!(visible(FRIEND));
    assert!(!visible(STRANGER));
    let v = env.json(Some(FRIEND), &["image", "show", "shared-img"]);
    assert_eq!(v["LaunchPermissions"][0], FRIEND);
    // FRIEND sees it under --owner all and --owner OWNER, not under --owner self.
    assert_eq!(
        env.json(Some(FRIEND), &["image", "ls", "--owner", "self"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        env.json(Some(FRIEND), &["image", "ls", "--owner", OWNER])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // FRIEND can see and copy but not share, unshare, modify or deregister.
    for args in [
        vec!["image", "share", ami.as_str(), STRANGER],
        vec!["image", "share", ami.as_str(), "--public"],
        vec!["image", "unshare", ami.as_str(), FRIEND],
        vec!["image", "modify", ami.as_str(), "--description", "mine now"],
        vec!["image", "rm", ami.as_str()],
    ] {
        let err = env.fails(Some(FRIEND), &args);
        assert!(err.contains("only its owner can"), "{args:?}: {err}");
    }
    env.ok(
        Some(FRIEND),
        &["image", "copy", &ami, "--name", "friend copy"],
    );
    // STRANGER: the image does not exist as far as they can tell.
    for args in [
        vec!["image", "show", ami.as_str()],
        vec!["image", "share", ami.as_str(), STRANGER],
        vec!["image", "rm", ami.as_str()],
        vec!["image", "copy", ami.as_str(), "--name", "stolen"],
    ] {
        let err = env.fails(Some(STRANGER), &args);
        assert!(err.contains("not found"), "{args:?}: {err}");
    }

    // Public: everyone sees it, still only the owner manages it.
    env.ok(Some(OWNER), &["image", "share", &ami, "--public"]);
    assert!(visible(STRANGER));
    assert_eq!(
        env.json(
            Some(STRANGER),
            &["image", "ls", "--filter", "is-public=true"]
        )
        .as_array()
        .unwrap()
        .len(),
        1
    );
    let err = env.fails(Some(STRANGER), &["image", "rm", &ami]);
    assert!(err.contains("only its owner can"), "{err}");
    env.ok(Some(OWNER), &["image", "unshare", &ami, "--public"]);
    assert!(!visible(STRANGER));

    // Unshare FRIEND.
    env.ok(Some(OWNER), &["image", "unshare", &ami, FRIEND]);
    assert!(!visible(FRIEND));
    // FRIEND's own copy is theirs and unaffected.
    assert_eq!(
        env.json(Some(FRIEND), &["image", "ls", "--owner", "self"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The owner deregisters it.
    env.ok(Some(OWNER), &["image", "rm", &ami]);
    assert!(!visible(OWNER));
}

#[test]
fn default_account_is_created_once_and_env_overrides() {
    let env = Env::new();
    let disk = env.path("disk.raw");
    make_disk(&disk, CHUNK, &[(0, 3)]);
    let ami = env.create(None, "default-account", &disk, &[]);
    let owner = env.json(None, &["image", "show", &ami])["OwnerId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(owner.len(), 12);
    assert!(env.store.join("config.json").exists());
    // The same account next time.
    assert_eq!(
        env.json(None, &["image", "show", &ami])["OwnerId"],
        owner.as_str()
    );
    // AMIVM_ACCOUNT takes over from the store's account.
    let out = env
        .cmd(None, &["image", "show", &ami])
        .env("AMIVM_ACCOUNT", STRANGER)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(FAILED));
    let out = env
        .cmd(
            None,
            &["--output", "json", "image", "ls", "--owner", "self"],
        )
        .env("AMIVM_ACCOUNT", owner.as_str())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ami));
    // AMIVM_HOME picks the store when --store is absent.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amivm"))
        .args(["--output", "json", "image", "ls"])
        .env_remove("AMIVM_ACCOUNT")
        .env("AMIVM_HOME", &env.store)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ami));
}

#[test]
fn dedup_stores_identical_data_once() {
    let env = Env::new();
    let me = Some(OWNER);
    let disk = env.path("disk.raw");
    let data: Vec<(u64, u64)> = (1..=6).map(|i| (i, 100 + i)).collect();
    make_disk(&disk, 16 * CHUNK, &data);
    env.create(me, "first", &disk, &[]);
    let chunks = env.chunk_files();
    assert_eq!(chunks.len(), 6, "one file per non-zero chunk");
    let before = env.tree();

    // The same disk again: only manifests are added.
    env.create(me, "second", &disk, &[]);
    assert_eq!(env.chunk_files(), chunks);
    let after = env.tree();
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(
        added
            .iter()
            .all(|k| k.starts_with("images/") || k.starts_with("snapshots/")),
        "{added:?}"
    );

    // One changed chunk: exactly one new chunk file.
    poke(&disk, 3 * CHUNK + 1000, b"changed!");
    let ami3 = env.create(me, "third", &disk, &[]);
    let now = env.chunk_files();
    assert_eq!(now.len(), 7);
    let snap = root_snapshot(&env, me, &ami3);
    assert_eq!(volume_hash(&env, me, &snap), sha256_file(&disk));

    // A chunk repeated inside one disk is stored once too.
    let rep = env.path("repeat.raw");
    make_disk(&rep, 8 * CHUNK, &[(0, 9), (2, 9), (5, 9)]);
    env.create(me, "repeated", &rep, &[]);
    assert_eq!(env.chunk_files().len(), 8);
}

#[test]
fn errors_are_one_line_and_leave_the_store_unchanged() {
    let env = Env::new();
    let me = Some(OWNER);
    let disk = env.path("disk.raw");
    make_disk(&disk, 2 * CHUNK, &[(0, 1)]);
    env.create(me, "existing", &disk, &[]);
    env.create(Some(FRIEND), "twin", &disk, &[]);
    env.create(Some(STRANGER), "twin", &disk, &[]);
    for a in [FRIEND, STRANGER] {
        env.ok(Some(a), &["image", "share", "twin", "--public"]);
    }
    env.ok(me, &["gc"]);
    let before = env.tree();
    let kernel = env.kernel();
    let k = kernel.to_str().unwrap();
    let d = disk.to_str().unwrap();
    let bad_qcow = env.path("bad.qcow2");
    let mut junk = b"QFI\xfb".to_vec();
    junk.extend(noise(5, 600));
    std::fs::write(&bad_qcow, junk).unwrap();
    let odd = env.path("odd.raw");
    std::fs::write(&odd, b"12345").unwrap();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["image", "show", "ami-0123456789abcdef0"], "not found"),
        (vec!["image", "show", "no-such-name"], "no image named"),
        (vec!["image", "show", "twin"], "ambiguous"),
        (vec!["image", "show", "ami-zz"], "no image named 'ami-zz'"),
        (
            vec!["image", "create", "--name", "x", "--kernel", k, "--root", d],
            "invalid image name",
        ),
        (
            vec![
                "image", "create", "--name", "bad|name", "--kernel", k, "--root", d,
            ],
            "not allowed",
        ),
        (
            vec![
                "image", "create", "--name", "existing", "--kernel", k, "--root", d,
            ],
            "already has an image named",
        ),
        (
            vec![
                "image",
                "create",
                "--name",
                "nosrc",
                "--kernel",
                k,
                "--root",
                "/nonexistent/disk.raw",
            ],
            "No such file",
        ),
        (
            vec![
                "image",
                "create",
                "--name",
                "nokernel",
                "--kernel",
                "/nonexistent/vmlinux",
                "--root",
                d,
            ],
            "No such file",
        ),
        (
            vec![
                "image",
                "create",
                "--name",
                "badkernel",
                "--kernel",
                d,
                "--root",
                d,
            ],
            "not a kernel",
        ),
        (
            vec![
                "image",
                "create",
                "--name",
                "badqcow",
                "--kernel",
                k,
                "--root",
                bad_qcow.to_str().unwrap(),
            ],
            "qcow2 version",
        ),
        (
            vec![
                "image",
                "create",
                "--name",
                "odd",
                "--kernel",
                k,
                "--root",
                odd.to_str().unwrap(),
            ],
            "sectors",
        ),
        (
            vec![
                "image", "create", "--name", "small", "--kernel", k, "--root", d, "--size", "512K",
            ],
            "smaller than the root volume",
        ),
        (
            vec![
                "image", "create", "--name", "badtag", "--kernel", k, "--root", d, "--tag", "=v",
            ],
            "no key",
        ),
        (
            vec!["image", "ls", "--filter", "colour=blue"],
            "unknown filter",
        ),
        (vec!["image", "ls", "--owner", "bob"], "--owner"),
        (
            vec!["image", "share", "existing", "12345"],
            "not a valid account id",
        ),
        (
            vec!["snapshot", "show", "snap-0123456789abcdef0"],
            "not found",
        ),
        (
            vec!["image", "import", "/nonexistent/bundle.tar"],
            "No such file",
        ),
    ];
    for (args, want) in cases {
        let err = env.fails(me, &args);
        assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
        assert_eq!(env.tree(), before, "{args:?} changed the store");
    }

    // A bad --account.
    let err = env.fails(Some("12"), &["image", "ls"]);
    assert!(err.contains("not a valid account id"), "{err}");

    // A store that cannot be created.
    let file = env.path("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_amivm"))
        .arg("--store")
        .arg(file.join("store"))
        .args(["image", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(FAILED));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not writable"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
}

#[test]
fn os_release_is_read_from_a_raw_ext4_root() {
    let env = Env::new();
    let root = rootfs(&env);
    let img = env.path("root.ext4");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ami = env.create(Some(OWNER), "raw ext4", &img, &[]);
    let v = env.json(Some(OWNER), &["image", "show", &ami]);
    // /etc/os-release is a relative symlink here: the /usr/lib copy is found.
    assert_eq!(v["OsName"], "Amivm Test Linux");
    assert_eq!(v["OsVersion"], "7.1");
    // A disk that is not a file system simply has no OS fields.
    let blank = env.path("blank.raw");
    make_disk(&blank, 2 * CHUNK, &[(1, 5)]);
    let ami = env.create(Some(OWNER), "no fs", &blank, &[]);
    let v = env.json(Some(OWNER), &["image", "show", &ami]);
    assert!(v["OsName"].is_null());
}
