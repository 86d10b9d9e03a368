//! Instances of an image recorded with `--device-discovery acpi` (issue 9): the attribute is
//! stored in the manifest (old manifests without it read as `cmdline`) and shown by `image
//! show`; a guest that powers off through ACPI leaves its instance `stopped` (or `terminated`
//! with `--shutdown-behavior terminate`); `amivm stop` presses the ACPI power button, and a
//! guest that polls the GED powers off at once: the instance is stopped without being forced.

mod common;
mod instance_common;

use common::Report;
use instance_common::*;
use std::time::{Duration, Instant};

/// How long a state change may take here (guests run under KVM's emulator).
const STATE_WAIT: Duration = Duration::from_secs(30);

/// An image of the test guest recorded with ACPI device discovery; returns its id.
fn acpi_image(env: &Env) -> String {
    let guest = common::build_guest();
    let out = env.ok(&[
        "image",
        "create",
        "--name",
        "acpi-ami",
        "--kernel",
        guest.to_str().unwrap(),
        "--root",
        env.path("root.raw").to_str().unwrap(),
        "--device-discovery",
        "acpi",
    ]);
    out.trim().to_string()
}

#[test]
fn device_discovery_is_an_image_attribute() {
    let env = Env::new();
    let ami = acpi_image(&env);
    let show = env.ok(&["image", "show", &ami]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("DeviceDiscovery") && l.trim_end().ends_with("acpi")),
        "{show}"
    );
    let show = env.ok(&["image", "show", &env.ami]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("DeviceDiscovery") && l.trim_end().ends_with("cmdline")),
        "{show}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "show", &ami, "--output", "json"])).unwrap();
    assert_eq!(json["DeviceDiscovery"], "acpi");
    // A manifest written before the attribute existed reads as cmdline.
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("DeviceDiscovery");
    let img: amivm::store::Image = serde_json::from_value(old).expect("old manifest");
    assert_eq!(
        img.device_discovery,
        amivm::store::manifest::DeviceDiscovery::Cmdline
    );
    let out = env.run(&[
        "image",
        "create",
        "--name",
        "bad-ami",
        "--kernel",
        common::build_guest().to_str().unwrap(),
        "--root",
        env.path("root.raw").to_str().unwrap(),
        "--device-discovery",
        "bios",
    ]);
    assert_eq!(out.code, Some(EXIT_FAILED), "{}", out.describe());
}

#[test]
fn acpi_power_off_stops_or_terminates_the_instance() {
    let env = Env::new();
    let ami = acpi_image(&env);
    let out = env.launch(&ami, &["--append", "exit=poweroff"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    assert_eq!(env.state(&id), "stopped");
    let reason = env.instance(&id)["StateReason"].to_string();
    assert!(reason.contains("guest shut down"), "{reason}");
    let r = env.logs(&id);
    r.expect_str("exit", "poweroff");
    r.expect_num("acpi_s5_slp_typ", 5);
    // No virtio_mmio.device= argument: the disk is in the DSDT.
    let cmdline = r.str("cmdline");
    assert!(!cmdline.contains("virtio_mmio"), "{cmdline}");

    let out = env.launch(
        &ami,
        &[
            "--append",
            "exit=poweroff",
            "--shutdown-behavior",
            "terminate",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(env.state(&launched_id(&out)), "terminated");
}

#[test]
fn stop_presses_the_power_button() {
    let env = Env::new();
    let ami = acpi_image(&env);
    let out = env.ok(&["run", &ami, "--detach", "--append", "exit=ged"]);
    let id = out.trim().to_string();
    let t0 = Instant::now();
    while !env.logs(&id).raw.contains("ged_polling=") {
        assert!(t0.elapsed() < STATE_WAIT, "the guest never polled the GED");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    let out = env.run(&["stop", &id]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    // Well within the grace period (10 s): the guest powered off by itself.
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_eq!(env.state(&id), "stopped");
    let reason = env.instance(&id)["StateReason"].to_string();
    assert!(reason.contains("guest shut down"), "{reason}");
    let r: Report = env.logs(&id);
    r.expect_num("ged_event", 1);
    r.expect_str("exit", "poweroff");
}
