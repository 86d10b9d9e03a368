//! Hostile testing of the image store outside import: file modes under a permissive umask,
//! control characters in text, absurd sizes, id-shaped names, damaged chunks (and
//! `store verify`), and reading a store that cannot be written.

mod store_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use store_common::*;

/// Exit code of `store verify` when it finds damage.
const DAMAGED: i32 = 1;

/// Run `cmd` through `sh -c 'umask 000; exec ...'`: files created with the default modes would
/// be readable and writable by everyone.
fn with_umask_000(cmd: Command) -> Output {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_remove("AMIVM_ACCOUNT")
        .env_remove("AMIVM_HOME");
    let out = sh.output().expect("run sh");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn store_files_are_private_whatever_the_umask() {
    let env = Env::new();
    let disk = env.path("disk.raw");
    make_disk(&disk, 3 * CHUNK, &[(0, 1), (2, 2)]);
    let dir = env.path("rootdir");
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/hostname"), "box\n").unwrap();
    let me = Some(OWNER);
    let out = with_umask_000(env.create_cmd(me, "private", &disk, &[]));
    let ami = String::from_utf8_lossy(&out.stdout).trim().to_string();
    with_umask_000(env.create_cmd(me, "from-dir", &dir, &["--size", "64M"]));
    with_umask_000(env.cmd(me, &["image", "copy", &ami, "--name", "copy"]));
    let bundle = env.path("b.tar");
    with_umask_000(env.cmd(
        me,
        &["image", "export", &ami, "-o", bundle.to_str().unwrap()],
    ));
    with_umask_000(env.cmd(me, &["image", "rm", &ami]));
    with_umask_000(env.cmd(me, &["image", "import", bundle.to_str().unwrap()]));
    with_umask_000(env.cmd(None, &["image", "ls"])); // creates config.json
    with_umask_000(env.cmd(me, &["gc"]));

    let all = modes(&env.store);
    assert!(all.len() > 10, "{all:?}");
    for (p, mode) in &all {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", p.display());
    }

    // A store made before (0755) is made private when it is next opened.
    std::fs::set_permissions(
        &env.store,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    env.ok(me, &["image", "ls"]);
    assert_eq!(modes(&env.store)[0].1, 0o700);
}

#[test]
fn control_characters_are_refused_at_input_and_escaped_on_output() {
    let env = Env::new();
    let me = Some(OWNER);
    let disk = env.path("disk.raw");
    make_disk(&disk, CHUNK, &[(0, 1)]);
    let ami = env.create(me, "plain", &disk, &[]);
    let before = env.tree();
    let kernel = env.kernel();
    let (k, d) = (kernel.to_str().unwrap(), disk.to_str().unwrap());
    let create = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "image", "create", "--name", "evil", "--kernel", k, "--root", d,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<Vec<String>> = vec![
        create(&["--description", "web\x1b]0;owned\x07"]),
        create(&["--tag", "env=dev\r\x1b[2K"]),
        create(&["--tag", "e\nv=dev"]),
        create(&["--description", "csi \u{9b}2J"]),
        create(&["--description", "abc\u{202e}fed"]),
        ["image", "modify", &ami, "--description", "line\nbreak"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        [
            "image",
            "copy",
            &ami,
            "--name",
            "copy",
            "--description",
            "\x1b[31mred",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    for args in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = env.fails(me, &args);
        assert!(err.contains("character U+"), "{args:?}: {err}");
        assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    }
    assert_eq!(env.tree(), before);

    // Text stored before the check (or by hand): escaped by every renderer.
    let manifest = env.store.join("images").join(format!("{ami}.json"));
    let mut img: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    img["Description"] = "evil\x1b]0;owned\x07".into();
    img["Tags"] = serde_json::json!({ "k\r": "v\x1b[2J" });
    img["OsName"] = "Deb\u{9b}ian".into();
    std::fs::write(&manifest, serde_json::to_vec(&img).unwrap()).unwrap();
    let snap = root_snapshot(&env, me, &ami);
    let snap_file = env.store.join("snapshots").join(format!("{snap}.json"));
    let mut s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&snap_file).unwrap()).unwrap();
    s["Description"] = "from \x1b[8mhidden".into();
    std::fs::write(&snap_file, serde_json::to_vec(&s).unwrap()).unwrap();
    for args in [
        vec!["image", "ls"],
        vec!["image", "show", &ami],
        vec!["snapshot", "show", &snap],
        vec!["snapshot", "ls"],
    ] {
        let out = env.ok(me, &args);
        for bad in ['\x1b', '\x07', '\r', '\u{9b}'] {
            assert!(!out.contains(bad), "{args:?} printed {bad:?}: {out:?}");
        }
        if args[1] == "show" {
            assert!(out.contains("\\x1b"), "{args:?}: {out}");
        }
    }
    // Errors quote what the user typed, escaped too.
    let err = env.fails(me, &["image", "show", "no\x1b[2Jsuch"]);
    assert!(!err.contains('\x1b'), "{err:?}");
}

#[test]
fn sizes_beyond_the_largest_volume_are_refused() {
    let env = Env::new();
    let disk = env.path("disk.raw");
    make_disk(&disk, CHUNK, &[(0, 1)]);
    env.create(Some(OWNER), "existing", &disk, &[]);
    let before = env.tree();
    for size in [
        "18446744073709551615",
        "16385",
        "17T",
        "99999999999999999999G",
    ] {
        let out = env
            .create_cmd(Some(OWNER), "huge", &disk, &["--size", size])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(FAILED), "--size {size}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("largest volume, 16384 GiB"),
            "--size {size}: {err}"
        );
    }
    assert_eq!(env.tree(), before);
    // The largest size is accepted.
    env.create(Some(OWNER), "largest", &disk, &["--size", "16384"]);
}

#[test]
fn id_shaped_image_names_are_refused() {
    let env = Env::new();
    let disk = env.path("disk.raw");
    make_disk(&disk, CHUNK, &[(0, 1)]);
    let ami = env.create(Some(OWNER), "ami-web", &disk, &[]);
    let before = env.tree();
    let k = env.kernel();
    let (k, d) = (k.to_str().unwrap(), disk.to_str().unwrap());
    for name in ["ami-0123456789abcdef0", "snap-0123456789abcdef0"] {
        let err = env.fails(
            Some(OWNER),
            &[
                "image", "create", "--name", name, "--kernel", k, "--root", d,
            ],
        );
        assert!(err.contains("form of an id"), "{err}");
        let err = env.fails(Some(OWNER), &["image", "copy", &ami, "--name", name]);
        assert!(err.contains("form of an id"), "{err}");
    }
    assert_eq!(env.tree(), before);
    // A name that only starts like an id is still a name, and reachable as one.
    env.ok(Some(OWNER), &["image", "show", "ami-web"]);
}

/// The path of a chunk or blob file in the store.
fn object(env: &Env, dir: &str, hash: &str) -> std::path::PathBuf {
    env.store.join(dir).join(&hash[..2]).join(hash)
}

#[test]
fn damaged_chunks_are_never_served_and_store_verify_finds_them() {
    let env = Env::new();
    let me = Some(OWNER);
    let disk = env.path("disk.raw");
    make_disk(&disk, 4 * CHUNK, &[(0, 1), (1, 2), (3, 3)]);
    let ami = env.create(me, "victim", &disk, &[]);
    let copy = env
        .ok(me, &["image", "copy", &ami, "--name", "copy"])
        .trim()
        .to_string();
    let snap = root_snapshot(&env, me, &ami);
    let copy_snap = root_snapshot(&env, me, &copy);
    let verify = |env: &Env| env.run(None, &["--output", "json", "store", "verify"]);

    let clean = verify(&env);
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    let r: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(r["ChunksChecked"], 3, "{r}");
    assert_eq!(r["Damaged"], serde_json::json!([]));

    // Flip one byte of the chunk at index 1.
    let chunks = stored_snapshot(&env, &snap)["Chunks"].clone();
    let bad = chunks[1][1].as_str().unwrap().to_string();
    poke(&object(&env, "chunks", &bad), 1000, b"\xff\x00");

    let dump = env.path("dump.raw");
    let err = env.fails(
        me,
        &["snapshot", "dump", &snap, "-o", dump.to_str().unwrap()],
    );
    assert!(err.contains(&bad) && err.contains("store verify"), "{err}");
    assert!(!dump.exists());
    let out_dir = env.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let bundle = out_dir.join("b.tar");
    let err = env.fails(
        me,
        &["image", "export", &ami, "-o", bundle.to_str().unwrap()],
    );
    assert!(err.contains(&bad), "{err}");
    assert!(files_under(&out_dir).is_empty(), "export left files behind");

    // A missing chunk and a damaged kernel too.
    let gone = chunks[2][1].as_str().unwrap().to_string();
    std::fs::remove_file(object(&env, "chunks", &gone)).unwrap();
    let kernel = env.json(me, &["image", "show", &ami])["Kernel"]["Blob"]
        .as_str()
        .unwrap()
        .to_string();
    poke(&object(&env, "blobs", &kernel), 0, b"MZ");

    let text = env.run(None, &["store", "verify"]);
    assert_eq!(text.status.code(), Some(DAMAGED), "{text:?}");
    let stdout = String::from_utf8_lossy(&text.stdout);
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("3 damaged"), "{stderr}");
    let line = |h: &str| {
        stdout
            .lines()
            .find(|l| l.contains(h))
            .unwrap_or_else(|| panic!("{h} not reported: {stdout}"))
            .to_string()
    };
    for (h, what) in [(&bad, "content hashes to"), (&gone, "missing")] {
        let l = line(h);
        assert!(l.starts_with("damaged chunk") && l.contains(what), "{l}");
        for id in [&snap, &copy_snap, &ami, &copy] {
            assert!(l.contains(id.as_str()), "{id} missing from: {l}");
        }
    }
    let l = line(&kernel);
    assert!(
        l.starts_with("damaged blob") && l.contains(&ami) && l.contains(&copy),
        "{l}"
    );

    let r: serde_json::Value = serde_json::from_slice(&verify(&env).stdout).unwrap();
    assert_eq!(r["Damaged"].as_array().unwrap().len(), 3, "{r}");
}

/// Run amivm with `env`'s store read-only: on a read-only bind mount in a private mount
/// namespace when root (permission bits do not stop root), else with the write bits removed.
/// `None` (and a reason on stderr) when neither is possible here.
fn read_only(env: &Env, account: Option<&str>, args: &[&str]) -> Option<Output> {
    let cmd = env.cmd(account, args);
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    if uid == 0 {
        let out = Command::new("unshare")
            .args([
                "-m",
                "sh",
                "-c",
                "mount --bind -o ro \"$0\" \"$0\" && exec \"$@\"",
            ])
            .arg(&env.store)
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env_remove("AMIVM_ACCOUNT")
            .env_remove("AMIVM_HOME")
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("unshare:") || err.contains("mount:") {
            eprintln!("skipping the read-only store check: cannot bind-mount read-only: {err}");
            return None;
        }
        Some(out)
    } else {
        let chmod = |m: &str| {
            let st = Command::new("chmod")
                .args(["-R", m])
                .arg(&env.store)
                .status();
            assert!(st.unwrap().success());
        };
        chmod("a-w");
        let out = cmd_output(cmd);
        chmod("u+w");
        Some(out)
    }
}

fn cmd_output(mut c: Command) -> Output {
    c.output().expect("run amivm")
}

/// Every file of the store, lock files included, with its content hash.
fn all_files(store: &Path) -> Vec<(String, String)> {
    files_under(store)
        .iter()
        .map(|p| (p.display().to_string(), sha256_file(p)))
        .collect()
}

#[test]
fn export_dump_and_verify_work_on_a_read_only_store() {
    let env = Env::new();
    let me = Some(OWNER);
    let disk = env.path("disk.raw");
    make_disk(&disk, 3 * CHUNK, &[(0, 1), (2, 2)]);
    let ami = env.create(me, "read-only", &disk, &[]);
    let snap = root_snapshot(&env, me, &ami);
    let before = all_files(&env.store);

    // On a writable store, export creates nothing in it either.
    let first = env.path("first.tar");
    env.ok(
        me,
        &["image", "export", &ami, "-o", first.to_str().unwrap()],
    );
    assert_eq!(all_files(&env.store), before);

    let bundle = env.path("ro.tar");
    let Some(out) = read_only(
        &env,
        me,
        &["image", "export", &ami, "-o", bundle.to_str().unwrap()],
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&bundle).unwrap(),
        std::fs::read(&first).unwrap()
    );
    let dump = env.path("ro.raw");
    let out = read_only(
        &env,
        me,
        &["snapshot", "dump", &snap, "-o", dump.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&dump), sha256_file(&disk));
    let out = read_only(&env, None, &["store", "verify"]).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Changing it is refused with one line.
    let out = read_only(&env, me, &["image", "modify", &ami, "--description", "x"]).unwrap();
    assert_eq!(out.status.code(), Some(FAILED));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
    assert_eq!(all_files(&env.store), before);

    // The bundle is good.
    let dest = Env::new();
    dest.ok(me, &["image", "import", bundle.to_str().unwrap()]);
}
