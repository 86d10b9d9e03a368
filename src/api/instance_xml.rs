//! Instances as EC2's XML shows them (DescribeInstances, RunInstances, state changes).

use super::images::ec2_time;
use super::xml::Xml;
use crate::instance::launch;
use crate::instance::{Instance, InstanceState, ShutdownBehavior};
use crate::store::AccountId;

/// EC2's numeric state codes (the low byte of `InstanceState.Code`).
pub fn state_code(s: InstanceState) -> u32 {
    match s {
        InstanceState::Pending => 0,
        InstanceState::Running => 16,
        InstanceState::ShuttingDown => 32,
        InstanceState::Terminated => 48,
        InstanceState::Stopping => 64,
        InstanceState::Stopped => 80,
    }
}

pub fn render_state(x: &mut Xml, tag: &str, s: InstanceState) {
    x.open(tag)
        .num("code", state_code(s))
        .leaf("name", s.as_str())
        .close(tag);
}

/// A reservation id for an instance (amivm keeps no reservations: one per instance, named
/// after it).
pub fn reservation_id(instance_id: &str) -> String {
    format!("r-{}", instance_id.trim_start_matches("i-"))
}

/// EC2's `StateReason.Code` for how an instance came to its state.
fn state_reason_code(i: &Instance) -> &'static str {
    if i.state_reason.starts_with(launch::LAUNCH_FAILED) {
        "Server.InternalError"
    } else if i.state_reason.starts_with("guest") {
        "Client.InstanceInitiatedShutdown"
    } else {
        "Client.UserInitiatedShutdown"
    }
}

/// One instance as DescribeInstances shows it.
pub fn render_instance(x: &mut Xml, i: &Instance, zone: &str) {
    x.leaf("instanceId", &i.instance_id)
        .leaf("imageId", i.image.image_id.as_str());
    render_state(x, "instanceState", i.state);
    x.leaf("privateDnsName", "")
        .leaf("dnsName", "")
        .leaf("reason", &i.state_reason)
        .leaf_opt("keyName", i.key_name.as_deref())
        .num("amiLaunchIndex", 0);
    super::images::render_product_codes(x, &i.image.product_codes);
    x.leaf("instanceType", &i.instance_type)
        .leaf("launchTime", &ec2_time(&i.launch_time))
        .open("placement")
        .leaf("availabilityZone", zone)
        .leaf("tenancy", "default")
        .close("placement")
        .open("monitoring")
        .leaf("state", "disabled")
        .close("monitoring")
        .leaf("architecture", i.image.architecture.as_str())
        .leaf("rootDeviceType", "ebs")
        .leaf("rootDeviceName", &i.image.root_device_name);
    let vols: Vec<_> = i.volumes.iter().filter(|v| !v.deleted).collect();
    x.list("blockDeviceMapping", &vols, |x, v| {
        x.leaf("deviceName", &v.device_name)
            .open("ebs")
            .leaf("volumeId", &v.volume_id)
            .leaf("status", "attached")
            .leaf("attachTime", &ec2_time(&i.launch_time))
            .bool("deleteOnTermination", v.delete_on_termination)
            .close("ebs");
    });
    if let Some(mac) = &i.mac_address {
        // One card: the instance's virtio-net device (EC2's primary interface, index 0).
        let eni = format!("eni-{}", i.instance_id.trim_start_matches("i-"));
        x.open("networkInterfaceSet")
            .open("item")
            .leaf("networkInterfaceId", &eni)
            .leaf("description", &format!("network {}", i.network))
            .leaf("ownerId", i.owner_id.as_str())
            .leaf("status", "in-use")
            .leaf("macAddress", mac)
            .bool("sourceDestCheck", true)
            .open("attachment")
            .leaf(
                "attachmentId",
                &format!("eni-attach-{}", i.instance_id.trim_start_matches("i-")),
            )
            .num("deviceIndex", 0)
            .leaf("status", "attached")
            .leaf("attachTime", &ec2_time(&i.launch_time))
            .bool("deleteOnTermination", true)
            .close("attachment")
            .close("item")
            .close("networkInterfaceSet");
    }
    x.leaf("virtualizationType", "hvm")
        .leaf(
            "instanceInitiatedShutdownBehavior",
            match i.shutdown_behavior {
                ShutdownBehavior::Stop => "stop",
                ShutdownBehavior::Terminate => "terminate",
            },
        )
        .open("cpuOptions")
        .num("coreCount", i.vcpus)
        .num("threadsPerCore", 1)
        .close("cpuOptions")
        .open("metadataOptions")
        .leaf("state", "applied")
        .leaf("httpTokens", i.metadata_options.http_tokens.as_str())
        .num(
            "httpPutResponseHopLimit",
            i.metadata_options.http_put_response_hop_limit,
        )
        .leaf("httpEndpoint", "enabled")
        .close("metadataOptions")
        .leaf("platformDetails", "Linux/UNIX");
    if matches!(
        i.state,
        InstanceState::Stopped
            | InstanceState::Stopping
            | InstanceState::ShuttingDown
            | InstanceState::Terminated
    ) && !i.state_reason.is_empty()
    {
        x.open("stateReason")
            .leaf("code", state_reason_code(i))
            .leaf("message", &i.state_reason)
            .close("stateReason");
    }
    if !i.tags.is_empty() {
        x.tags(&i.tags);
    }
}

pub fn render_reservation(x: &mut Xml, owner: &AccountId, insts: &[Instance], zone: &str) {
    let first = insts.first().map_or("", |i| i.instance_id.as_str());
    x.leaf("reservationId", &reservation_id(first))
        .leaf("ownerId", owner.as_str())
        .open("groupSet")
        .close("groupSet")
        .list("instancesSet", insts, |x, i| render_instance(x, i, zone));
}
