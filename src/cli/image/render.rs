//! Text rendering of images and snapshots: aligned tables and key/value blocks.

use crate::store::manifest::GIB;
use crate::store::snapshots::SnapshotUsers;
use crate::store::{AccountId, Image, Snapshot, SnapshotId};
use crate::text::escape_unsafe;
use std::collections::BTreeMap;
use std::fmt::Write;

pub use crate::cli::output::table;

/// Bytes in a MiB.
const MIB: u64 = 1 << 20;

/// A size for people: bytes below a MiB, else MiB or GiB with one decimal.
pub fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} B")
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// How `caller` sees an image's visibility.
pub fn visibility(img: &Image, caller: &AccountId) -> String {
    if img.public {
        "public".into()
    } else if img.owner_id != *caller {
        "shared".into()
    } else if img.launch_permissions.is_empty() {
        "private".into()
    } else {
        format!("shared({})", img.launch_permissions.len())
    }
}

fn os(img: &Image) -> String {
    match (&img.os_name, &img.os_version) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        (Some(n), None) => n.clone(),
        (None, Some(v)) => v.clone(),
        (None, None) => "-".into(),
    }
}

/// `image ls`.
pub fn image_table(images: &[Image], caller: &AccountId) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let root = i
                .root_mapping()
                .map(|m| m.ebs.volume_size.to_string())
                .unwrap_or_else(|| "-".into());
            vec![
                i.image_id.to_string(),
                i.name.clone(),
                i.owner_id.to_string(),
                i.state.as_str().into(),
                visibility(i, caller),
                root,
                os(i),
                i.creation_date.clone(),
            ]
        })
        .collect();
    table(
        &[
            "IMAGE ID",
            "NAME",
            "OWNER",
            "STATE",
            "VISIBILITY",
            "ROOT GiB",
            "OS",
            "CREATED",
        ],
        &rows,
    )
}

/// `image show`.
pub fn image_details(
    img: &Image,
    snaps: &BTreeMap<SnapshotId, Snapshot>,
    caller: &AccountId,
) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(s, "{:<20}{}", format!("{k}:"), escape_unsafe(&v));
    };
    kv("ImageId", img.image_id.to_string());
    kv("Name", img.name.clone());
    kv("Description", dash(&img.description));
    kv("OwnerId", img.owner_id.to_string());
    kv("State", img.state.as_str().into());
    kv("Architecture", img.architecture.as_str().into());
    kv("CreationDate", img.creation_date.clone());
    kv("Visibility", visibility(img, caller));
    kv("Public", if img.public { "yes" } else { "no" }.into());
    let perms: Vec<String> = img
        .launch_permissions
        .iter()
        .map(|a| a.to_string())
        .collect();
    kv("LaunchPermissions", dash(&perms.join(", ")));
    kv(
        "Kernel",
        format!(
            "{} ({}, {} bytes)",
            img.kernel.blob.blob,
            img.kernel.format.as_str(),
            img.kernel.blob.size
        ),
    );
    kv(
        "Initrd",
        img.initrd
            .as_ref()
            .map(|b| format!("{} ({} bytes)", b.blob, b.size))
            .unwrap_or_else(|| "-".into()),
    );
    kv("KernelCommandLine", img.kernel_command_line.clone());
    kv("DeviceDiscovery", img.device_discovery.as_str().to_string());
    kv("OS", os(img));
    kv("DefaultUser", img.login_user().unwrap_or("-").to_string());
    kv(
        "SourceImageId",
        img.source_image_id
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    let tags: Vec<String> = img.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    kv("Tags", dash(&tags.join(", ")));
    kv("RootDeviceName", img.root_device_name.clone());
    s.push_str("BlockDeviceMappings:\n");
    let rows: Vec<Vec<String>> = img
        .block_device_mappings
        .iter()
        .map(|m| {
            let snap = snaps.get(&m.ebs.snapshot_id);
            vec![
                m.device_name.clone(),
                m.ebs.snapshot_id.to_string(),
                m.ebs.volume_size.to_string(),
                snap.map(|s| s.size_bytes.to_string())
                    .unwrap_or_else(|| "?".into()),
                snap.map(|s| human(s.data_bytes))
                    .unwrap_or_else(|| "?".into()),
                m.ebs.delete_on_termination.to_string(),
                m.ebs.read_only.to_string(),
            ]
        })
        .collect();
    let t = table(
        &[
            "DEVICE",
            "SNAPSHOT",
            "GiB",
            "BYTES",
            "DATA",
            "DELETE-ON-TERMINATION",
            "READ-ONLY",
        ],
        &rows,
    );
    for l in t.lines() {
        let _ = writeln!(s, "  {l}");
    }
    s
}

fn users_text(u: Option<&SnapshotUsers>) -> String {
    let Some(u) = u else { return "-".into() };
    let v: Vec<String> = u
        .images
        .iter()
        .map(|i| i.to_string())
        .chain(u.records.iter().cloned())
        .collect();
    dash(&v.join(","))
}

/// `snapshot ls`.
pub fn snapshot_table(snaps: &[Snapshot], users: &BTreeMap<SnapshotId, SnapshotUsers>) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.snapshot_id.to_string(),
                s.owner_id.to_string(),
                s.volume_size.to_string(),
                s.chunks.len().to_string(),
                human(s.data_bytes),
                s.parent_snapshot_id
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                users_text(users.get(&s.snapshot_id)),
                s.start_time.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SNAPSHOT ID",
            "OWNER",
            "GiB",
            "CHUNKS",
            "DATA",
            "PARENT",
            "USED BY",
            "STARTED",
        ],
        &rows,
    )
}

/// `snapshot show`.
pub fn snapshot_details(s: &Snapshot, users: Option<&SnapshotUsers>) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{:<18}{}", format!("{k}:"), escape_unsafe(&v));
    };
    kv("SnapshotId", s.snapshot_id.to_string());
    kv("OwnerId", s.owner_id.to_string());
    kv("Description", dash(&s.description));
    kv("State", format!("{:?}", s.state).to_lowercase());
    kv("StartTime", s.start_time.clone());
    kv("VolumeSize", format!("{} GiB", s.volume_size));
    kv("SizeBytes", s.size_bytes.to_string());
    kv("ChunkSize", s.chunk_size.to_string());
    kv(
        "Chunks",
        format!(
            "{} non-zero of {} ({})",
            s.chunks.len(),
            s.chunk_count(),
            human(s.data_bytes)
        ),
    );
    kv(
        "ParentSnapshotId",
        s.parent_snapshot_id
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    kv("UsedBy", users_text(users));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * MIB / 2), "1.5 MiB");
        assert_eq!(human(2 * GIB), "2.0 GiB");
    }
}
