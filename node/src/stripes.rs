//! Operations on whole stripes over [`crate::peers`]: reading one (as
//! [`StripeRead`] directs) and checking where a manifest's copies are.
//! The entry peer reads stripes for clients, the repairer to rebuild them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use dynostore_protocol::erasure;
use dynostore_protocol::manifest::{Manifest, ShardSlot};
use dynostore_protocol::placement::View;
use dynostore_protocol::planner::Presence;
use dynostore_protocol::read::{ReadStep, StripeRead};
use dynostore_protocol::wire::SkippedShard;
use dynostore_protocol::{MemberState, NodeId};

use crate::shared::Shared;

/// When a stripe read sends its hedged extra request if the first `k`
/// holders' fetch costs are not all measured yet: at once (one more shard
/// costs less than waiting for a holder nothing is known of). Once they
/// are (ping round-trip times and learnt transfer rates, normally within
/// seconds of a node's start), the hedge waits until those `k` should
/// have answered ([`StripeRead::hedge_by_cost`]), so a read moves `k`
/// shards, not `k + 1`, unless a holder straggles.
const HEDGE_AFTER_MS: u64 = 0;

/// Why a stripe could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StripeError {
    #[error("segment {segment} is past the manifest's segments")]
    NoSegment { segment: u64 },
    #[error("stripe read cannot start: {0}")]
    Setup(String),
    #[error("segment {segment}: found {found} of the {needed} shards needed; {details}")]
    Unreadable {
        segment: u64,
        found: usize,
        needed: usize,
        details: String,
    },
    #[error("segment {segment}: decoding failed: {reason}")]
    Decode { segment: u64, reason: String },
}

/// Fetches any `k` verified shards of segment `idx` and decodes it, as
/// [`StripeRead`] directs: the cheapest holders by measured round-trip
/// time and transfer rate first (parity from a near site before data from
/// a far one), else data shards first, live and lightly loaded holders
/// first, a failed request replaced by the next candidate, one
/// hedged extra request when the first ones are late (see
/// [`HEDGE_AFTER_MS`]).
pub(crate) async fn read_segment(
    shared: &Arc<Shared>,
    m: &Manifest,
    idx: usize,
) -> Result<(Vec<u8>, Vec<SkippedShard>), StripeError> {
    let g = m.geometry;
    let seg = m.segments.get(idx).ok_or(StripeError::NoSegment {
        segment: idx as u64,
    })?;
    let skip = |slot: u16, holder: NodeId, reason: String| SkippedShard {
        segment: idx as u64,
        shard: seg.shards[usize::from(slot)].id,
        holder,
        reason,
    };
    let (mut read, down) = {
        let members = shared.membership();
        let view = members.view();
        let load = |n: &NodeId| {
            members
                .get(n)
                .map_or(u32::MAX, |e| e.announcement.load.requests_in_flight)
        };
        // This node's own shards cost nothing to fetch.
        let cost = |n: &NodeId, bytes: u32| {
            if *n == shared.local && shared.paths.site_aware {
                Some(0)
            } else {
                shared.paths.cost_ms(n, bytes)
            }
        };
        let now = shared.now_ms();
        let decode_ms = shared.paths.decode_ms(g.k, seg.shard_size);
        StripeRead::for_segment_costed(m, idx, &view, load, cost, now, HEDGE_AFTER_MS)
            .map(|(read, down)| (read.with_decode_ms(decode_ms).hedge_by_cost(now), down))
            .map_err(|e| StripeError::Setup(e.to_string()))?
    };
    let mut skipped: Vec<SkippedShard> = down
        .into_iter()
        .map(|(slot, holder)| skip(slot, holder, "holder is down".into()))
        .collect();
    let peers = shared.peers();
    let mut pending = FuturesUnordered::new();
    let mut got: Vec<Option<Bytes>> = vec![None; g.n()];
    let slots = loop {
        let answer = match read.next(shared.now_ms()) {
            ReadStep::Fetch { slot, holder } => {
                let id = seg.shards[usize::from(slot)].id;
                pending.push(async move {
                    let t0 = std::time::Instant::now();
                    let r = peers.get_shard(&holder, id).await;
                    (slot, holder, r, t0.elapsed())
                });
                continue;
            }
            ReadStep::Done { slots } => break slots,
            ReadStep::Failed { found, needed } => {
                return Err(unreadable(idx, found, needed, &skipped));
            }
            ReadStep::Wait { until_ms } => {
                let wait =
                    until_ms.map(|t| Duration::from_millis(t.saturating_sub(shared.now_ms())));
                tokio::select! {
                    a = pending.next() => a,
                    () = sleep_or_forever(wait) => continue,
                }
            }
        };
        let Some((slot, holder, r, elapsed)) = answer else {
            // Nothing in flight and nothing to ask: the read cannot finish.
            return Err(unreadable(idx, read.found(), usize::from(g.k), &skipped));
        };
        match r {
            Ok(bytes) => {
                let site = shared
                    .membership()
                    .get(&holder)
                    .map(|e| e.announcement.site.clone())
                    .unwrap_or_default();
                shared
                    .paths
                    .record_fetch(&holder, &site, bytes.len(), elapsed);
                got[usize::from(slot)] = Some(bytes);
                read.on_ok(slot);
            }
            Err(e) => {
                skipped.push(skip(slot, holder, e.to_string()));
                read.on_err(slot);
            }
        }
    };
    drop(pending);
    let view: Vec<Option<&[u8]>> = (0..g.n())
        .map(|i| {
            slots
                .contains(&(i as u16))
                .then(|| got[i].as_deref())
                .flatten()
        })
        .collect();
    let parity_used = slots.iter().any(|&s| s >= g.k);
    let t0 = std::time::Instant::now();
    let bytes = erasure::decode(g, seg.len, &view).map_err(|e| StripeError::Decode {
        segment: idx as u64,
        reason: e.to_string(),
    })?;
    if parity_used {
        shared.paths.record_decode(bytes.len(), t0.elapsed());
    }
    Ok((bytes, skipped))
}

/// Sleeps for `wait`, or forever when there is nothing to wait for.
async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn unreadable(idx: usize, found: usize, needed: usize, skipped: &[SkippedShard]) -> StripeError {
    let details = skipped
        .iter()
        .map(|s| {
            format!(
                "shard {} on {}: {}",
                s.shard.short(),
                s.holder.short(),
                s.reason
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    StripeError::Unreadable {
        segment: idx as u64,
        found,
        needed,
        details,
    }
}

/// Which copies of `m` are present, per segment and shard position, by a
/// cheap `Has` on every holder (no re-hash). A `Down` or unknown holder
/// holds nothing (it is not asked).
pub(crate) async fn slot_presence(
    shared: &Shared,
    view: &View,
    m: &Manifest,
) -> Vec<Vec<Presence>> {
    let mut by_holder: BTreeMap<NodeId, Vec<(usize, usize, ShardSlot)>> = BTreeMap::new();
    for (s, seg) in m.segments.iter().enumerate() {
        for (i, e) in seg.shards.iter().enumerate() {
            let Some(holder) = m.holder(e) else { continue };
            let slot = ShardSlot {
                shard: e.id,
                owner: m.shard_ref(s as u64, i as u16),
            };
            by_holder
                .entry(holder.clone())
                .or_default()
                .push((s, i, slot));
        }
    }
    let mut out: Vec<Vec<Presence>> = m
        .segments
        .iter()
        .map(|seg| vec![Presence::Absent; seg.shards.len()])
        .collect();
    let peers = shared.peers();
    let answers =
        futures::future::join_all(by_holder.into_iter().map(|(node, slots)| async move {
            let gone = node != shared.local
                && view.get(&node).is_none_or(|e| e.state == MemberState::Down);
            if gone {
                return (slots, Vec::new());
            }
            let asked: Vec<ShardSlot> = slots.iter().map(|(_, _, s)| *s).collect();
            let flags = peers.presence(&node, &asked).await;
            (slots, flags)
        }))
        .await;
    for (slots, flags) in answers {
        for ((s, i, _), p) in slots.into_iter().zip(flags) {
            out[s][i] = p;
        }
    }
    out
}
