//! How backups and instances look on the wire: Trove's v1.0 fields first,
//! cairn's extensions after (DESIGN.md §5).

use cairn_shared::{
    entities::{backup, instance},
    status::{BackupStatus, InstanceStatus},
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const GIB: f64 = (1u64 << 30) as f64;

/// Trove's timestamp format: `2014-03-19T14:09:13`.
pub fn timestamp(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn percent(done: i64, total: i64) -> f64 {
    if total <= 0 { 0.0 } else { ((done as f64 / total as f64) * 1000.0).round() / 10.0 }
}

/// A backup object.
pub fn backup(b: &backup::Model) -> Value {
    let running = BackupStatus::parse(&b.status).is_some_and(|s| s.is_running());
    let progress = match (running, b.progress_done, b.progress_total) {
        (true, done, total) => {
            let (done, total) = (done.unwrap_or(0), total.unwrap_or(0));
            json!({ "done": done, "total": total, "percent": percent(done, total) })
        }
        _ => Value::Null,
    };
    json!({
        "id": b.id,
        "name": b.name,
        "description": b.description,
        "instance_id": b.instance_id,
        "parent_id": b.parent_id,
        "project_id": b.project_id,
        "status": b.status,
        "size": b.bytes.map(|bytes| bytes as f64 / GIB),
        "locationRef": b.location_ref,
        "created": timestamp(&b.created),
        "updated": timestamp(&b.updated),
        "datastore": {
            "type": b.datastore_type,
            "version": b.datastore_version,
            "version_id": format!("{}-{}", b.datastore_type, b.datastore_version),
        },
        "checksum": b.checksum,
        "bytes": b.bytes,
        "progress": progress,
        "fail_reason": b.fail_reason,
        "verify": b.verify_status.as_ref().map(|status| json!({
            "status": status,
            "message": b.verify_message,
            "checked_at": b.verified_at.as_ref().map(timestamp),
        })),
    })
}

/// An instance object.
pub fn instance(i: &instance::Model, base: &str) -> Value {
    let restore = i.restore_backup_id.map(|backup_id| {
        let step = i64::from(i.restore_step.unwrap_or(0));
        let steps = i64::from(i.restore_steps.unwrap_or(0));
        let pct =
            if InstanceStatus::parse(&i.status) == Some(InstanceStatus::Active) { 100.0 } else { percent(step, steps) };
        json!({ "backup_id": backup_id, "step": step, "steps": steps, "percent": pct })
    });
    json!({
        "id": i.id,
        "name": i.name,
        "status": i.status,
        "created": timestamp(&i.created),
        "updated": timestamp(&i.updated),
        "flavor": { "id": i.flavor_id, "links": [{ "rel": "self", "href": format!("{base}/flavors/{}", i.flavor_id) }] },
        "datastore": { "type": i.datastore_type, "version": i.datastore_version },
        "volume": { "size": i.volume_size, "path": i.volume_path },
        "links": [{ "rel": "self", "href": format!("{base}/instances/{}", i.id) }],
        "restore": restore,
        "fail_reason": i.fail_reason,
    })
}
