//! `amivm run` with the test guest as the AMI's kernel (issue 5): instance types map to what the
//! guest sees, exit codes (exit port, timeout, --expect, crash), bad input, launch permissions,
//! the memory warning, create-image with a marker the guest writes to its root volume, and 10
//! instances of one AMI started at once.

mod common;
mod instance_common;

use common::{sum64, Report};
use instance_common::*;
use std::time::Duration;

/// The guest's write pattern (tests/guest/README.md, "Pattern"): the little-endian word at disk
/// byte offset `o` is `seed + o / 8`.
fn pattern_sum(seed: u64, sector: u64, count: u64) -> u64 {
    let start = sector * 512;
    let bytes: Vec<u8> = (0..count * 512 / 8)
        .flat_map(|w| seed.wrapping_add(start / 8 + w).to_le_bytes())
        .collect();
    sum64(&bytes)
}

fn zeros_sum(count: u64) -> u64 {
    sum64(&vec![0u8; (count * 512) as usize])
}

/// The `sum` of the guest's `blk read` line for `sector`.
#[track_caller]
fn read_sum(r: &Report, sector: u64) -> u64 {
    let rec = r
        .records("blk")
        .into_iter()
        .find(|rec| {
            rec.words.first().map(String::as_str) == Some("read")
                && rec.field("sector") == Some(&sector.to_string())
        })
        .unwrap_or_else(|| r.fail(&format!("no `blk read sector={sector}` line")));
    r.check(rec.field("status") == Some("0"), "blk read status is not 0");
    common::report::parse_num(rec.field("sum").unwrap_or(""))
        .unwrap_or_else(|| r.fail("blk read has no sum"))
}

#[test]
fn instance_types_give_the_guest_their_vcpus_and_memory() {
    let env = Env::new();
    for (ty, vcpus, mib) in [
        ("t2.nano", 1, 512),
        ("t3.micro", 2, 1024),
        ("c5.xlarge", 4, 8192),
        ("m5.large", 2, 8192),
    ] {
        let out = env.launch(&env.ami, &["--instance-type", ty]);
        assert_eq!(out.code, Some(0), "{ty}: {}", out.describe());
        let r = Report::from_run(&out);
        r.expect_num("cpus_up", vcpus);
        r.expect_num("mptable_cpus", vcpus);
        let ram: u64 = common::expected_usable_ram(mib)
            .iter()
            .map(|(_, len)| len)
            .sum();
        r.expect_num("ram_kib", ram / 1024);
        let id = launched_id(&out);
        let inst = env.instance(&id);
        assert_eq!(inst["InstanceType"], ty);
        assert_eq!(inst["Vcpus"], vcpus);
        assert_eq!(inst["MemoryMib"], mib);
        assert_eq!(inst["State"]["Name"], "stopped");
    }
    // The default type is t3.micro.
    let out = env.launch(&env.ami, &[]);
    let r = Report::from_run(&out);
    r.expect_num("cpus_up", 2);
    assert_eq!(env.instance(&launched_id(&out))["InstanceType"], "t3.micro");
}

#[test]
fn exit_codes_match_amivm_boot() {
    let env = Env::new();
    let out = env.launch(&env.ami, &["--append", "exit_code=3"]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    let id = launched_id(&out);
    assert_eq!(env.state(&id), "stopped");
    let reason = env.instance(&id)["StateReason"].to_string();
    assert!(reason.contains("status 3"), "{reason}");

    let out = env.run(&["run", &env.ami, "--timeout", "1", "--append", "exit=hang"]);
    assert_eq!(out.code, Some(EXIT_TIMEOUT), "{}", out.describe());
    assert_eq!(env.state(&launched_id(&out)), "stopped");

    let out = env.launch(&env.ami, &["--append", "exit=triple"]);
    assert_eq!(out.code, Some(EXIT_CRASHED), "{}", out.describe());
    assert!(out.stderr.contains("crash"), "{}", out.describe());

    // --expect: exit 0 as soon as the console matches, although the guest would hang.
    let out = env.launch(
        &env.ami,
        &["--append", "exit=hang", "--expect", "cpus_up=[0-9]+"],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.elapsed < Duration::from_secs(30), "{}", out.describe());
    let id = launched_id(&out);
    assert_eq!(env.state(&id), "stopped");
    assert!(env.instance(&id)["StateReason"]
        .to_string()
        .contains("--expect"));
}

#[test]
fn bad_input_fails_with_one_line_and_leaves_nothing() {
    let env = Env::new();
    let out = env.run(&["run", &env.ami, "--instance-type", "t3.micor"]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("t3.micor") && out.stderr.contains("closest: t3.micro"),
        "{}",
        out.describe()
    );
    for args in [
        &["run", "no-such-image"][..],
        &["run", &env.ami, "--expect", "("][..],
        &["run", &env.ami, "--timeout", "0"][..],
        &["run", &env.ami, "--name", "two words"][..],
        // Names shaped like instance ids would read as ids (issue 8).
        &["run", &env.ami, "--name", "i-0123456789abcdef0"][..],
        &["run", &env.ami, "--name", "i-0123456789ABCDEF0"][..],
        &["run", &env.ami, "--name", "i-1234abcd"][..],
    ] {
        let out = env.run(args);
        assert_eq!(out.code, Some(EXIT_FAILED), "{args:?}: {}", out.describe());
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "{args:?}: {}",
            out.describe()
        );
    }
    assert!(env.ps().is_empty(), "failed runs left instances behind");
    for args in [
        &["stop", "i-0123456789abcdef0"][..],
        &["start", "nobody"][..],
        &["logs", "i-00"][..],
    ] {
        let out = env.run(args);
        assert_eq!(out.code, Some(EXIT_FAILED), "{args:?}: {}", out.describe());
    }
}

#[test]
fn launch_permissions_are_enforced() {
    let env = Env::new();
    let out = env.run_as(STRANGER, &["run", &env.ami, "--timeout", GUEST_TIMEOUT]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    assert!(out.stdout.is_empty(), "the guest ran: {}", out.describe());
    env.ok(&["image", "share", &env.ami, STRANGER]);
    let out = env.run_as(STRANGER, &["run", &env.ami, "--timeout", GUEST_TIMEOUT]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    // Instances belong to the account that launched them.
    assert!(env.ps().is_empty());
    let out = env.run(&["terminate", &id]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    env.ok(&["image", "unshare", &env.ami, STRANGER]);
    let out = env.run_as(STRANGER, &["run", &env.ami, "--timeout", GUEST_TIMEOUT]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
    // Its existing instance still starts: the volumes are its own.
    let out = env.run_as(STRANGER, &["start", &id, "--attach"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

#[test]
fn bigger_than_host_memory_warns_but_runs() {
    let env = Env::new();
    // r5.2xlarge has 64 GiB; the development and CI hosts have less.
    let out = env.launch(&env.ami, &["-t", "r5.2xlarge", "--rm"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let host_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    if host_mib < 65536 {
        assert!(out.stderr.contains("warning"), "{}", out.describe());
    }
    Report::from_run(&out).expect_num("cpus_up", 8);
    assert!(env.ps().is_empty(), "--rm left the instance");
}

#[test]
fn serial_log_and_logs() {
    let env = Env::new();
    let log = env.path("console.txt");
    let out = env.launch(
        &env.ami,
        &[
            "--serial-log",
            log.to_str().unwrap(),
            "--append",
            "exit_code=7",
        ],
    );
    assert_eq!(out.code, Some(7), "{}", out.describe());
    let id = launched_id(&out);
    let file = std::fs::read_to_string(&log).expect("serial log written");
    assert!(file.contains("AMIVM-GUEST exit=7"), "{file}");
    // `logs` prints the instance's own log, which that run did not write, and names the file
    // (the record only remembers it: a path in a record is never opened again, issue 8).
    let out = env.run(&["logs", &id]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(!out.stdout.contains("AMIVM-GUEST"), "{}", out.describe());
    assert!(
        out.stderr.contains(log.to_str().unwrap()),
        "{}",
        out.describe()
    );
    // A later start writes the instance's log, and leaves the file alone.
    let out = env.run(&["start", &id, "--attach", "--timeout", GUEST_TIMEOUT]);
    assert_eq!(out.code, Some(7), "{}", out.describe());
    env.logs(&id).expect_str("exit", "7");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), file);
}

/// Count the chunk objects in the store.
fn chunk_files(env: &Env) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            walk(&p)
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&env.store.join("chunks"))
}

fn root_snapshot(env: &Env, ami: &str) -> String {
    let img: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "show", ami, "--output", "json"])).unwrap();
    img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn create_image_keeps_the_marker_and_stores_only_touched_chunks() {
    let env = Env::new();
    let seed: u64 = 0x6d61_726b_6572_0001;
    // 16 sectors at 1 MiB: inside the third 512 KiB chunk only.
    let (sector, count) = (2048u64, 16u64);
    let old_snap = root_snapshot(&env, &env.ami);
    let old_manifest = env.ok(&["snapshot", "show", &old_snap, "--output", "json"]);
    let chunks_before = chunk_files(&env);

    let out = env.launch(
        &env.ami,
        &[
            "--append",
            &format!("blk=write:{sector}:{count}:{seed} blk=flush"),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    let w = r.records("blk");
    assert!(
        w.iter()
            .any(|b| b.words.first().map(String::as_str) == Some("write")
                && b.field("status") == Some("0")),
        "write failed: {}",
        out.describe()
    );
    let id = launched_id(&out);

    let out = env.run(&["create-image", &id, "--name", "marked", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["ChunksHashed"], 1, "{report}");
    assert_eq!(report["NewChunks"], 1, "{report}");
    let new_ami = report["ImageId"].as_str().unwrap().to_string();
    assert_eq!(chunk_files(&env), chunks_before + 1);
    let new_snap = root_snapshot(&env, &new_ami);
    let snap: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshot", "show", &new_snap, "--output", "json"]))
            .unwrap();
    assert_eq!(snap["ParentSnapshotId"], old_snap.as_str());
    assert_eq!(snap["Chunks"].as_array().map(Vec::len), Some(1), "{snap}");

    let read = format!("blk=read:{sector}:{count}");
    let out = env.launch(&new_ami, &["--append", &read]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    // The volume is the mapping's VolumeSize (1 GiB, the root file's size rounded up), not the
    // 8 MiB snapshot.
    r.expect_num("blk_capacity", (1u64 << 30) / 512);
    assert_eq!(
        read_sum(&r, sector),
        pattern_sum(seed, sector, count),
        "the new AMI lacks the marker"
    );

    let out = env.launch(&env.ami, &["--append", &read]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    assert_eq!(
        read_sum(&r, sector),
        zeros_sum(count),
        "the old AMI sees the marker"
    );
    assert_eq!(
        env.ok(&["snapshot", "show", &old_snap, "--output", "json"]),
        old_manifest,
        "the old snapshot changed"
    );
    // The source instance is untouched and can be imaged again under another name only.
    let out = env.run(&["create-image", &id, "--name", "marked"]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
}

#[test]
fn ten_instances_of_one_ami_at_once() {
    let env = Env::new();
    const N: u64 = 10;
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let env = &env;
                s.spawn(move || {
                    env.launch(
                        &env.ami,
                        &[
                            "--append",
                            &format!("blk=write:0:8:{} blk=flush blk=read:0:8", 1000 + i),
                        ],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ids = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(out.code, Some(0), "instance {i}: {}", out.describe());
        let r = Report::from_run(out);
        assert_eq!(read_sum(&r, 0), pattern_sum(1000 + i as u64, 0, 8));
        ids.push(launched_id(out));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N as usize, "instance ids are not unique");
    let ps = env.ps();
    assert_eq!(ps.len(), N as usize);
    let mut vols: Vec<String> = ps
        .iter()
        .map(|i| i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"].to_string())
        .collect();
    vols.sort();
    vols.dedup();
    assert_eq!(vols.len(), N as usize, "instances share a volume");
    for id in &ids {
        assert!(env.instance_dir(id).join("vda.cow").is_file());
        assert_eq!(env.state(id), "stopped");
    }
    // Each volume holds its own instance's data: image two of them and read back.
    for (n, i) in [0usize, 9].into_iter().enumerate() {
        let id = launched_id(&outs[i]);
        let name = format!("from-{n}");
        let ami = env.ok(&["create-image", &id, "--name", &name]);
        let out = env.launch(ami.trim(), &["--append", "blk=read:0:8"]);
        let r = Report::from_run(&out);
        assert_eq!(read_sum(&r, 0), pattern_sum(1000 + i as u64, 0, 8));
    }
    // The AMI itself is untouched.
    let out = env.launch(&env.ami, &["--append", "blk=read:0:8", "--rm"]);
    assert_eq!(read_sum(&Report::from_run(&out), 0), zeros_sum(8));
}

#[test]
fn instance_types_command_lists_the_table() {
    let env = Env::new();
    let text = env.ok(&["instance-types"]);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["t3.micro", "2", "1024", "t3"]),
        "{text}"
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&env.ok(&["instance-types", "--family", "c5", "--output", "json"]))
            .unwrap();
    assert!(!json.is_empty());
    assert!(json.iter().all(|t| t["Family"] == "c5"), "{json:?}");
    let xl = json.iter().find(|t| t["Name"] == "c5.xlarge").unwrap();
    assert_eq!(
        (xl["Vcpus"].as_u64(), xl["MemoryMib"].as_u64()),
        (Some(4), Some(8192))
    );
    let out = env.run(&["instance-types", "--family", "zz9"]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
}

#[test]
fn every_mapping_gets_its_own_volume_and_create_image_keeps_them() {
    let env = Env::new();
    let data = env.path("data.raw");
    std::fs::File::create(&data)
        .and_then(|f| f.set_len(ROOT_BYTES))
        .expect("data.raw");
    let ro = env.path("ro.raw");
    std::fs::write(&ro, vec![0x5au8; 4096]).expect("ro.raw");
    let guest = common::build_guest();
    let ami = env
        .ok(&[
            "image",
            "create",
            "--name",
            "two-disks",
            "--kernel",
            guest.to_str().unwrap(),
            "--root",
            env.path("root.raw").to_str().unwrap(),
            "--volume",
            data.to_str().unwrap(),
            "--volume-ro",
            ro.to_str().unwrap(),
        ])
        .trim()
        .to_string();
    let seed = 0x7664_6232_0000_0001_u64;
    // Write to /dev/vdb (the second virtio-mmio device), read its serial; try to write the
    // read-only /dev/vdc.
    let out = env.launch(
        &ami,
        &[
            "--append",
            &format!("blk_dev=1 blk=getid blk=write:0:8:{seed} blk=flush"),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let r = Report::from_run(&out);
    let id = launched_id(&out);
    let inst = env.instance(&id);
    let vols = inst["BlockDeviceMappings"].as_array().unwrap();
    assert_eq!(vols.len(), 3);
    assert_eq!(vols[1]["DeviceName"], "/dev/vdb");
    let serial = vols[1]["Ebs"]["VolumeId"]
        .as_str()
        .unwrap()
        .replace('-', "");
    let getid = r
        .records("blk")
        .into_iter()
        .find(|b| b.words.first().map(String::as_str) == Some("getid"))
        .unwrap_or_else(|| r.fail("no blk getid line"));
    assert_eq!(getid.field("id"), Some(serial.as_str()), "volume serial");
    assert_eq!(vols[2]["Ebs"]["ReadOnly"], true);
    let out = env.launch(&ami, &["--append", "blk_dev=2 blk=write:0:8:1"]);
    let r = Report::from_run(&out);
    r.expect_num("blk_ro", 1);
    let w = r
        .records("blk")
        .into_iter()
        .find(|b| b.words.first().map(String::as_str) == Some("write"))
        .unwrap_or_else(|| r.fail("no blk write line"));
    r.check(
        w.field("status") != Some("0"),
        "a write to the read-only volume succeeded",
    );

    let new_ami = env.ok(&["create-image", &id, "--name", "two-disks-copy"]);
    let img: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "show", new_ami.trim(), "--output", "json"]))
            .unwrap();
    let maps = img["BlockDeviceMappings"].as_array().unwrap();
    assert_eq!(maps.len(), 3, "{img}");
    assert_eq!(maps[2]["Ebs"]["ReadOnly"], true);
    for (dev, want) in [
        (0, zeros_sum(8)),
        (1, pattern_sum(seed, 0, 8)),
        (2, sum64(&[0x5au8; 4096])),
    ] {
        let out = env.launch(
            new_ami.trim(),
            &["--rm", "--append", &format!("blk_dev={dev} blk=read:0:8")],
        );
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert_eq!(
            read_sum(&Report::from_run(&out), 0),
            want,
            "/dev/vd{}",
            (b'a' + dev as u8) as char
        );
    }
}
