//! Collection of unreferenced shard copies.
//!
//! A copy is kept for the owners its references name (object, generation,
//! segment, index). A put that failed half-way and could not clean up, a
//! release that never arrived, or a member that stored copies no manifest
//! ever named leaves references that nothing releases. Every
//! `gc_interval_ms` a node looks at its references whose generation began
//! more than `gc_grace_ms` ago (a generation's `ms` is the wall-clock start
//! of its upload, so the grace period must exceed the longest put) and
//! releases those of objects that no member holds a manifest of.
//!
//! The rule errs towards keeping: a round is skipped unless every member
//! answers, except members down for longer than the grace period (whose
//! manifest replicas repair has long since placed elsewhere); any manifest
//! of the object on any member (any generation, any revision) keeps all of
//! the object's references, since a repair may be about to name this copy.
//! So a shard is never collected while the object it belongs to is
//! readable from anywhere the node can see, and a partition postpones
//! collection rather than deciding on half a view.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dynostore_protocol::manifest::ShardSlot;
use dynostore_protocol::wire::MAX_SHARDS_PER_REQUEST;
use dynostore_protocol::{MemberState, NodeId, ObjectId};

use crate::manifests::wall_ms;
use crate::shared::Shared;

/// References looked at per round.
const REFS_PER_ROUND: usize = 100_000;

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcRound {
    /// Objects older than the grace period that no member holds.
    pub orphaned_objects: usize,
    /// References released, and copies deleted by those releases.
    pub released: usize,
    pub deleted: usize,
    /// Why the round decided nothing, if it did not.
    pub postponed: Option<String>,
}

/// Runs a round every `interval`.
pub(crate) async fn gc_loop(shared: Arc<Shared>, interval: Duration, grace_ms: u64) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let r = collect_once(&shared, grace_ms).await;
        match &r.postponed {
            Some(why) => tracing::info!(%why, "shard collection postponed"),
            None if r.released > 0 => tracing::info!(
                objects = r.orphaned_objects,
                released = r.released,
                deleted = r.deleted,
                "collected unreferenced shard copies"
            ),
            None => tracing::debug!("no unreferenced shard copies"),
        }
    }
}

/// One round: see the module header.
pub(crate) async fn collect_once(shared: &Arc<Shared>, grace_ms: u64) -> GcRound {
    let mut round = GcRound::default();
    let cutoff = wall_ms().saturating_sub(grace_ms);
    let refs = match shared.store.refs_older_than(cutoff, REFS_PER_ROUND) {
        Ok(r) => r,
        Err(e) => {
            round.postponed = Some(format!("cannot read references: {e}"));
            return round;
        }
    };
    let mut by_object: BTreeMap<ObjectId, Vec<ShardSlot>> = BTreeMap::new();
    for slot in refs {
        // A manifest held here keeps the object without asking anyone.
        if matches!(shared.manifests.get(&slot.owner.object), Ok(Some(_))) {
            continue;
        }
        by_object.entry(slot.owner.object).or_default().push(slot);
    }
    if by_object.is_empty() {
        return round;
    }
    // Every member must answer, but for those down longer than the grace.
    let now = shared.now_ms();
    let mut ask: Vec<NodeId> = Vec::new();
    for (id, e) in shared.membership().entries() {
        if *id == shared.local {
            continue;
        }
        let gone = e.state == MemberState::Down && now.saturating_sub(e.last_seen_ms) > grace_ms;
        if gone {
            continue;
        }
        if e.state != MemberState::Alive {
            round.postponed = Some(format!("member {} is {}", id.short(), e.state.as_str()));
            return round;
        }
        ask.push(id.clone());
    }
    let objects: Vec<ObjectId> = by_object.keys().copied().collect();
    let peers = shared.peers();
    for chunk in objects.chunks(MAX_SHARDS_PER_REQUEST) {
        let answers =
            futures::future::join_all(ask.iter().map(|n| peers.manifest_states(n, chunk))).await;
        for (node, a) in ask.iter().zip(answers) {
            match a {
                Ok(states) => {
                    for (o, st) in chunk.iter().zip(states) {
                        if st.held.is_some() {
                            by_object.remove(o);
                        }
                    }
                }
                Err(e) => {
                    round.postponed = Some(format!("member {} did not answer: {e}", node.short()));
                    return round;
                }
            }
        }
    }
    round.orphaned_objects = by_object.len();
    for slots in by_object.into_values() {
        for slot in slots {
            match shared.store.release(&slot).await {
                Ok(deleted) => {
                    round.released += 1;
                    round.deleted += usize::from(deleted);
                }
                Err(e) => {
                    tracing::warn!(shard = %slot.shard.short(), error = %e, "could not release an unreferenced copy")
                }
            }
        }
    }
    round
}
