//! The JSON forms of status, stat and list: what `dynostore status --json`,
//! `stat --json` and `ls --json` print and what the admin API serves
//! (`/v1/status`, `/v1/objects/ID`, `/v1/objects`), written once.

use dynostore_protocol::wire::{ObjectStat, ObjectSummary, StatusReport};

/// The objects of a list, as `ls --json` prints them.
pub fn list_json(objects: &[ObjectSummary]) -> serde_json::Value {
    objects
        .iter()
        .map(|o| serde_json::json!({"id": o.object.to_string(), "size": o.size, "name": o.name, "owner": o.owner}))
        .collect()
}

/// One object's stat, as `stat --json` prints it.
pub fn stat_json(st: &ObjectStat) -> serde_json::Value {
    serde_json::json!({
        "id": st.object.to_string(),
        "size": st.size,
        "codec": st.codec.name(),
        "k": st.k,
        "m": st.m,
        "segment_size": st.segment_size,
        "name": st.meta.name,
        "owner": st.meta.owner,
        "health": st.health,
        "durability_target": st.durability_target.map(|d| d.0),
        "durability_now": st.durability_now.map(|d| d.0),
        "segments": st.segments.iter().map(|seg| serde_json::json!({
            "len": seg.len,
            "shards": seg.shards.iter().map(|s| serde_json::json!({
                "id": s.id.to_string(), "holder": s.holder.to_string(), "ok": s.ok,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "inline": st.segments.is_empty() && !st.inline_replicas.is_empty(),
        "inline_replicas": st.inline_replicas.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// A node's status, as `status --json` prints it.
pub fn status_json(r: &StatusReport) -> serde_json::Value {
    use serde_json::json;
    json!({
        "node": r.node.to_string(),
        "shards_stored": r.shards_stored,
        "repair": {
            "queue_len": r.repair.queue_len,
            "shards_repaired": r.repair.shards_repaired,
            "bytes_repaired": r.repair.bytes_repaired,
            "bytes_read": r.repair.bytes_read,
            "shards_moved": r.repair.shards_moved,
            "stripes_lost": r.repair.stripes_lost,
            "rounds": r.repair.rounds,
            "yielded": r.repair.yielded,
            "pending_deletes": r.repair.pending_deletes,
            "last_scrub_ms_ago": r.repair.last_scrub_ms_ago,
            "last_scrub_checked": r.repair.last_scrub_checked,
            "last_scrub_corrupt": r.repair.last_scrub_corrupt,
        },
        "containers": r.containers.iter().map(|c| json!({
            "name": c.name, "kind": c.kind,
            "capacity_bytes": c.capacity_bytes, "free_bytes": c.free_bytes,
        })).collect::<Vec<_>>(),
        "members": r.members.iter().map(|m| json!({
            "id": m.id.to_string(),
            "site": m.site,
            "state": m.state.as_str(),
            "capacity_bytes": m.capacity_bytes,
            "free_bytes": m.free_bytes,
            "addrs": m.addrs,
            "last_seen_ms": m.last_seen_ms,
            "seq": m.seq,
            "volatile": m.volatile,
            "software": m.software,
            "requests_in_flight": m.load.requests_in_flight,
            "bytes_per_sec": m.load.bytes_per_sec,
            "rtt_ms": m.rtt_ms,
        })).collect::<Vec<_>>(),
        "read_bytes_by_site": r.read_bytes_by_site,
    })
}
