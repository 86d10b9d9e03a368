//! Text and JSON rendering of instances and instance types.

use crate::cli::output::table;
use crate::instance::{Instance, InstanceType};
use crate::store::Store;
use serde_json::{json, Value};

pub fn types_table(types: &[InstanceType]) -> String {
    let rows: Vec<Vec<String>> = types
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.vcpus.to_string(),
                t.memory_mib.to_string(),
                t.family.clone(),
            ]
        })
        .collect();
    table(&["TYPE", "VCPUS", "MEMORY_MIB", "FAMILY"], &rows)
}

pub fn ps_table(list: &[Instance]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.instance_id.clone(),
                i.name.clone().unwrap_or_else(|| "-".into()),
                i.state.to_string(),
                i.instance_type.clone(),
                i.image.image_id.to_string(),
                i.key_name.clone().unwrap_or_else(|| "-".into()),
                i.launch_time.clone(),
                network_word(i),
                reason(i),
            ]
        })
        .collect();
    table(
        &[
            "INSTANCE ID",
            "NAME",
            "STATE",
            "TYPE",
            "IMAGE",
            "KEY",
            "LAUNCHED",
            "NETWORK",
            "REASON",
        ],
        &rows,
    )
}

/// The REASON column: the state reason, and a lost network while the instance runs on.
fn reason(i: &Instance) -> String {
    if i.network_lost() {
        format!("{}; {NETWORK_LOST}", i.state_reason)
    } else {
        i.state_reason.clone()
    }
}

/// What `ps` says of a running instance whose passt has gone.
pub const NETWORK_LOST: &str = "network lost: passt exited (see passt.log)";

/// The NETWORK column: the mode and the forwards, one word (`user,8080:80/tcp`).
fn network_word(i: &Instance) -> String {
    std::iter::once(i.network.to_string())
        .chain(i.publish.iter().map(|p| p.to_string()))
        .collect::<Vec<_>>()
        .join(",")
}

/// An instance as `ps --output json` shows it (EC2 DescribeInstances field names).
pub fn json(i: &Instance, store: &Store) -> Value {
    json!({
        "InstanceId": i.instance_id,
        "Name": i.name,
        "State": { "Name": i.state.as_str() },
        "StateReason": i.state_reason,
        "InstanceType": i.instance_type,
        "Vcpus": i.vcpus,
        "MemoryMib": i.memory_mib,
        "ImageId": i.image.image_id.to_string(),
        "ImageName": i.image.name,
        "LaunchTime": i.launch_time,
        "KeyName": i.key_name,
        "PublicKey": i.public_key,
        "KernelCommandLine": i.kernel_command_line,
        "InstanceInitiatedShutdownBehavior": i.shutdown_behavior,
        "ConsoleLog": i.console_log_path(store),
        "SerialLog": i.serial_log,
        "Pid": i.process.map(|p| p.pid),
        "MetadataOptions": {
            "HttpTokens": i.metadata_options.http_tokens.as_str(),
            "HttpPutResponseHopLimit": i.metadata_options.http_put_response_hop_limit,
            "HttpEndpoint": "enabled",
        },
        "Network": i.network.to_string(),
        "Publish": i.publish.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "MacAddress": i.mac_address,
        "NetworkLost": i.network_lost(),
        "Region": i.region,
        "UserDataBytes": i.user_data.as_deref().map(|d| {
            crate::instance::metadata::decode_user_data(d).map(|b| b.len()).unwrap_or(0)
        }),
        "BlockDeviceMappings": i.volumes.iter().map(|v| json!({
            "DeviceName": v.device_name,
            "Ebs": {
                "VolumeId": v.volume_id,
                "SnapshotId": v.snapshot_id.to_string(),
                "SizeBytes": v.size_bytes,
                "DeleteOnTermination": v.delete_on_termination,
                "ReadOnly": v.read_only,
                "Deleted": v.deleted,
            }
        })).collect::<Vec<_>>(),
    })
}
