//! Pins: an instance launched with `run --region` keeps what it still reads from the region.
//! After its image is deregistered with `--delete-snapshots` and the region is gc'd, the
//! stopped instance starts again and reads a chunk it never had locally; terminating it takes
//! the pin away, and the next gc removes the rest. Against moto_server, with the AWS CLI as
//! the third-party view of the bucket.

mod api_common;
mod common;
mod instance_common;
mod region_common;
mod store_common;

use common::Report;
use region_common::{push_guest_image, read_line, Host, REGION};
use store_common::{CHUNK, OWNER};

/// Chunks of the image's root volume.
const CHUNKS: u64 = 8;

fn under(keys: &[String], prefix: &str) -> Vec<String> {
    keys.iter()
        .filter(|k| k.starts_with(prefix))
        .cloned()
        .collect()
}

#[test]
fn what_an_instance_reads_from_a_region_outlives_its_image_until_it_is_terminated() {
    let moto = region_common::Moto::start();
    let (a, ami, disk) = push_guest_image(&moto, CHUNKS);
    let b = Host::new(&moto);
    // The guest reads the last chunk: no boot prefetch or read-ahead fetches it before.
    let sector = (CHUNKS - 1) * CHUNK / 512;
    let append = format!("blk=read:{sector}:8");
    b.run_from_region(&ami, &["--name", "pinned", "--append", &append]);
    let ps = b.json(Some(OWNER), &["ps", "--all"]);
    let id = ps[0]["InstanceId"].as_str().unwrap().to_string();
    assert_eq!(ps[0]["State"]["Name"], "stopped", "{ps}");
    let pins = under(&moto.keys(), "pins/");
    assert_eq!(pins, vec![format!("pins/{id}.json")]);
    // The local store does not count what lives in the region as its own (nor as missing).
    let verify = b.ok(None, &["store", "verify"]);
    assert!(verify.contains("checked 0 snapshots"), "{verify}");

    // The owner deregisters the image and asks for its snapshot to go: the instance's pin
    // keeps it, and gc keeps its chunks and kernel.
    let out = a.json(
        Some(OWNER),
        &[
            "image",
            "rm",
            &ami,
            "--delete-snapshots",
            "--region",
            REGION,
        ],
    );
    let kept = out.to_string();
    assert!(kept.contains(&format!("used by instance {id}")), "{kept}");
    let r = a.json(Some(OWNER), &["gc", "--region", REGION]);
    assert_eq!(
        (&r["Pins"], &r["ChunksRemoved"]),
        (&1.into(), &0.into()),
        "{r}"
    );
    assert_eq!(r["PinnedBy"][0]["InstanceId"], id.as_str(), "{r}");
    let text = a.ok(Some(OWNER), &["gc", "--region", REGION, "--dry-run"]);
    assert!(
        text.contains(&format!("pinned by instance {id} on ")),
        "{text}"
    );
    assert_eq!(
        (&r["BlobsRemoved"], &r["SnapshotsRemoved"]),
        (&0.into(), &0.into())
    );
    let keys = moto.keys();
    assert!(under(&keys, "images/").is_empty(), "{keys:?}");
    assert_eq!(under(&keys, "snapshots/").len(), 1, "{keys:?}");
    assert_eq!(under(&keys, "chunks/").len(), CHUNKS as usize, "{keys:?}");

    // With nothing local, the stopped instance starts and reads through the region.
    b.forget_chunks();
    let out = b.run_ok(&["start", "pinned", "--attach", "--timeout", "60"]);
    let at = (sector * 512) as usize;
    assert_eq!(
        read_line(&Report::from_run(&out), sector),
        (
            "0".into(),
            Some(common::report::sum64(&disk[at..at + 4096]))
        )
    );

    // Terminated, it keeps nothing: its pin goes, and gc takes the rest.
    b.ok(Some(OWNER), &["terminate", "pinned"]);
    assert!(under(&moto.keys(), "pins/").is_empty());
    let r = a.json(Some(OWNER), &["gc", "--region", REGION]);
    assert_eq!(r["Pins"], 0, "{r}");
    assert_eq!(r["ChunksRemoved"], CHUNKS, "{r}");
    assert_eq!(
        (&r["BlobsRemoved"], &r["SnapshotsRemoved"]),
        (&1.into(), &1.into())
    );
}

#[test]
fn an_instance_removed_at_its_end_leaves_no_pin() {
    let moto = region_common::Moto::start();
    let (_a, ami, _) = push_guest_image(&moto, 2);
    let b = Host::new(&moto);
    b.run_from_region(&ami, &["--rm", "--append", "blk=read:0:8"]);
    assert_eq!(b.json(Some(OWNER), &["ps", "--all"]), serde_json::json!([]));
    let keys = moto.keys();
    assert!(under(&keys, "pins/").is_empty(), "{keys:?}");
}

/// While a gc runs (its lock is live), a new pin is not safe yet: the run ends with a warning,
/// and the pin is made safe by the next start, once that gc is over.
#[test]
fn a_pin_made_while_a_gc_runs_waits_for_it_and_warns() {
    let moto = region_common::Moto::start();
    let (a, ami, _) = push_guest_image(&moto, 2);
    let gc_lock = "locks/gc-otherhost-4242-0000000000000001.json";
    moto.put(gc_lock, b"{}", &a.env.path("lock.json"));
    let b = Host::new(&moto);
    let out = b.run_ok(&[
        "run",
        &ami,
        "--region",
        REGION,
        "--name",
        "waits",
        "--timeout",
        "60",
        "--append",
        "blk=read:0:8",
    ]);
    assert!(
        out.stderr
            .contains("a gc of the region may remove what instance"),
        "{}",
        out.describe()
    );
    // The pin is there (a gc that starts now sees it), but the run could not know whether the
    // running gc had.
    assert_eq!(under(&moto.keys(), "pins/").len(), 1);

    moto.rm(gc_lock);
    let out = b.run_ok(&["start", "waits", "--attach", "--timeout", "60"]);
    assert!(!out.stderr.contains("warning"), "{}", out.describe());
    assert_eq!(under(&moto.keys(), "pins/").len(), 1);
    b.ok(Some(OWNER), &["terminate", "waits"]);
    assert!(under(&moto.keys(), "pins/").is_empty());
}

/// `stop` keeps the pin (the stopped instance reads through the region when started again);
/// only `terminate` removes it.
#[test]
fn a_stopped_instance_keeps_its_pin() {
    let moto = region_common::Moto::start();
    let (_a, ami, _) = push_guest_image(&moto, 2);
    let b = Host::new(&moto);
    b.ok(
        Some(OWNER),
        &[
            "run",
            &ami,
            "--region",
            REGION,
            "--name",
            "hangs",
            "--detach",
            "--append",
            "exit=hang",
        ],
    );
    let t0 = std::time::Instant::now();
    while under(&moto.keys(), "pins/").is_empty() {
        assert!(
            t0.elapsed().as_secs() < 60,
            "no pin while the instance runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    b.ok(Some(OWNER), &["stop", "--force", "hangs"]);
    assert_eq!(
        b.json(Some(OWNER), &["ps", "--all"])[0]["State"]["Name"],
        "stopped"
    );
    assert_eq!(under(&moto.keys(), "pins/").len(), 1, "stop keeps the pin");
    b.ok(Some(OWNER), &["terminate", "hangs"]);
    assert!(under(&moto.keys(), "pins/").is_empty());
}

/// A host that is gone for good leaves its instances' pins behind: `region unpin` removes them
/// from another host (every one named must exist, else none goes), and the next gc removes
/// what they kept. The host that has the instance is refused.
#[test]
fn the_pins_of_a_lost_host_are_removed_by_hand() {
    let moto = region_common::Moto::start();
    let (a, ami, _) = push_guest_image(&moto, 2);
    let b = Host::new(&moto);
    b.run_from_region(&ami, &["--append", "blk=read:0:8"]);
    let id = b.json(Some(OWNER), &["ps", "--all"])[0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        under(&moto.keys(), "pins/"),
        vec![format!("pins/{id}.json")]
    );
    let err = b.fails(None, &["region", "unpin", REGION, &id]);
    assert!(err.contains("terminate it instead"), "{err}");
    // Host b is lost. Its image goes, with its snapshot.
    a.ok(
        Some(OWNER),
        &[
            "image",
            "rm",
            &ami,
            "--delete-snapshots",
            "--region",
            REGION,
        ],
    );
    let err = a.fails(
        None,
        &["region", "unpin", REGION, &id, "i-0123456789abcdef0"],
    );
    assert!(
        err.contains("i-0123456789abcdef0 has no pin in region"),
        "{err}"
    );
    assert_eq!(under(&moto.keys(), "pins/").len(), 1, "nothing removed");
    let r = a.json(None, &["region", "unpin", REGION, &id]);
    assert_eq!(r["Unpinned"][0]["InstanceId"], id.as_str(), "{r}");
    assert!(under(&moto.keys(), "pins/").is_empty());
    let r = a.json(Some(OWNER), &["gc", "--region", REGION]);
    assert_eq!(
        (&r["Pins"], &r["ChunksRemoved"]),
        (&0.into(), &2.into()),
        "{r}"
    );
    let keys = moto.keys();
    assert!(under(&keys, "snapshots/").is_empty(), "{keys:?}");
}
