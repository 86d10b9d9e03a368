//! The same boto3 script (tests/api/shapes.py) against `amivm serve` and against moto's EC2
//! (`moto_server`, the third-party reference): for every action both implement, the response
//! shapes boto3 parses (field paths and value types) must agree, except the known differences
//! listed below, each with its reason.

mod api_common;
mod common;
mod instance_common;

use api_common::{venv, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server returns a field the other does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    Amivm,
    Moto,
}

/// (action or "*" for all, a part of the field path, which side has it, why).
const KNOWN: &[(&str, &str, Only, &str)] = &[
    ("*", "Instances[].NetworkInterfaces", Only::Moto, "amivm instances have no network interface yet"),
    ("*", "Instances[].PrivateIpAddress", Only::Moto, "no network: no addresses"),
    ("*", "Instances[].PublicIpAddress", Only::Moto, "no network: no addresses"),
    ("*", "Instances[].SubnetId", Only::Moto, "no VPCs or subnets"),
    ("*", "Instances[].VpcId", Only::Moto, "no VPCs or subnets"),
    ("*", "Instances[].SecurityGroups", Only::Moto, "no security groups"),
    ("*", "Instances[].SourceDestCheck", Only::Moto, "no network interfaces to check"),
    ("*", "Instances[].Placement.GroupName", Only::Moto, "no placement groups"),
    ("*", "Instances[].MetadataOptions", Only::Moto, "no instance metadata service yet"),
    ("*", "Instances[].SriovNetSupport", Only::Moto, "no SR-IOV networking"),
    ("*", "Instances[].EbsOptimized", Only::Moto, "volumes are local copy-on-write files"),
    ("*", "Instances[].ClientToken", Only::Moto, "ClientToken is accepted but not kept (no idempotency)"),
    ("*", "Instances[].Hypervisor", Only::Moto, "EC2's values are xen/ovm; amivm is KVM, so it leaves the field out"),
    ("*", "Instances[].Platform", Only::Moto, "EC2 sets Platform only for Windows; moto sends an empty one"),
    ("*", "Instances[].StateReason", Only::Moto, "amivm gives a StateReason only to stopped or terminated instances, as EC2 does; moto to every one"),
    ("*", "Instances[].CpuOptions", Only::Amivm, "EC2 returns CpuOptions; moto leaves it out"),
    ("*", "Instances[].PlatformDetails", Only::Amivm, "EC2 returns PlatformDetails; moto leaves it out"),
    ("DescribeImages", "Images[].BootMode", Only::Moto, "amivm boots kernels directly, neither legacy-bios nor uefi"),
    ("DescribeImages", "Images[].Hypervisor", Only::Moto, "EC2's values are xen/ovm; amivm is KVM"),
    ("DescribeImages", "Images[].ImageOwnerAlias", Only::Moto, "moto's image is Amazon's ('amazon' alias); amivm's belongs to an account"),
    ("DescribeImages", "Images[].Platform", Only::Moto, "EC2 sets Platform only for Windows"),
    ("DescribeImages", "Images[].ProductCodes", Only::Moto, "no Marketplace product codes"),
    ("DescribeImages", "Images[].Tags", Only::Moto, "moto's stock image has tags; the test's AMI has none"),
    ("DescribeImages", "Images[].Description", Only::Moto, "EC2 leaves out an empty description; moto sends it"),
    ("DescribeImages", "Images[].BlockDeviceMappings[].Ebs.Encrypted", Only::Amivm, "EC2 returns Encrypted; moto leaves it out"),
    ("DescribeImages", "Images[].PlatformDetails", Only::Amivm, "EC2 returns PlatformDetails; moto leaves it out"),
    ("DescribeImages", "Images[].UsageOperation", Only::Amivm, "EC2 returns UsageOperation; moto leaves it out"),
    ("DescribeInstanceTypes", "InstanceTypes[]", Only::Moto, "moto ships EC2's whole catalogue (EBS, network, NitroTPM...); amivm knows vCPUs, memory and architecture"),
    ("DescribeAvailabilityZones", "AvailabilityZones[].", Only::Amivm, "EC2 returns GroupName, NetworkBorderGroup and OptInStatus; moto leaves them out"),
    ("DescribeInstanceStatus", "InstanceStatuses[].Events", Only::Amivm, "EC2 returns the (empty) scheduled events list; moto leaves it out"),
    ("DescribeSnapshots", "Snapshots[].Tags", Only::Moto, "amivm snapshots have no tags"),
    ("ResetImageAttribute", "failed", Only::Moto, "moto 5.2.5 does not implement ResetImageAttribute (HTTP 500)"),
    ("ImportKeyPair", "Tags", Only::Moto, "moto sends an empty tag list for a key imported without tags; amivm leaves it out, as EC2 leaves out empty lists"),
];

fn known(action: &str, path: &str, side: Only) -> bool {
    KNOWN
        .iter()
        .any(|(a, p, s, _)| (*a == "*" || *a == action) && *s == side && path.contains(p))
}

type Shapes = BTreeMap<String, BTreeSet<String>>;

fn parse(out: &common::RunOutput) -> Shapes {
    assert_eq!(out.code, Some(0), "shapes.py: {}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

/// `moto_server` on a free loopback port.
struct Moto(Child, String);

impl Moto {
    fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto(child, format!("http://127.0.0.1:{port}"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn response_shapes_agree_with_motos_ec2() {
    let server = Server::start();
    let amivm = parse(&server.python("shapes.py", &[&server.env.ami]));
    let moto = Moto::start();
    let mut cmd = Command::new(venv().join("bin/python"));
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/shapes.py"))
        .arg("moto")
        .env("AMIVM_ENDPOINT", &moto.1)
        .env("AMIVM_REGION", api_common::REGION)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE");
    let moto_shapes = parse(&common::run_with_deadline(cmd, api_common::SCRIPT_DEADLINE));

    let mut unexplained = Vec::new();
    let mut explained = 0;
    for (action, a) in &amivm {
        let Some(m) = moto_shapes.get(action) else {
            unexplained.push(format!("{action}: moto has no result"));
            continue;
        };
        for (paths, side) in [
            (a.difference(m), Only::Amivm),
            (m.difference(a), Only::Moto),
        ] {
            for p in paths {
                if known(action, p, side) {
                    explained += 1;
                } else {
                    unexplained.push(format!("{action}: only {side:?} returns {p}"));
                }
            }
        }
    }
    eprintln!(
        "{} actions compared, {explained} known differences, {} unexplained",
        amivm.len(),
        unexplained.len()
    );
    assert!(amivm.len() >= 20, "{:?}", amivm.keys());
    assert!(unexplained.is_empty(), "{}", unexplained.join("\n"));
}
