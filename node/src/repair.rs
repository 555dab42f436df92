//! Self-healing: repair, surplus and orphan removal, scrubbing.
//!
//! Every `repair_interval` (and at once when a member goes down) the node
//! runs a round over the manifests it holds:
//! 1. It asks the members ranked above it, and the top `r` of each
//!    object's manifest ranking, which manifests they hold
//!    (`ManifestStates`, batched per member). An object that anyone knows
//!    as removed is removed here too (tombstones outlive a member's absence).
//! 2. For the objects it is responsible for (`protocol::repair::responsible`)
//!    it checks every shard's holder (`Has`, batched; a `Down` holder counts
//!    as having nothing), rebuilds each stripe short of `k + m` from any `k`
//!    verified shards, writes the missing shards to new members
//!    (`protocol::repair::repair_targets`), and pushes the updated manifest
//!    to every replica and to the top `r` of the current ranking.
//! 3. Replacing the local replica with the updated manifest records a
//!    pending release for every copy the old manifest placed and the new
//!    one does not (`ManifestStore::put`), kept in the index and sent when
//!    that member is alive again, and only after it is checked against the
//!    newest manifest this node can confirm ([`send_pending_releases`]): a
//!    member that comes back does not keep stray copies once the object is
//!    whole without them, and no release ever removes a copy the current
//!    manifest places there.
//!
//! Repair traffic goes through a token bucket of `repair_rate_bytes_per_sec`.
//! A repair that dies with its node is finished by the next holder in the
//! ranking at its next round: every step is idempotent.
//!
//! Scrubbing re-hashes every local shard every `scrub_interval` (with 10%
//! jitter) or on demand; a corrupt copy is deleted, so the responsible node
//! sees it missing and rebuilds it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynostore_protocol::erasure::Encoder;
use dynostore_protocol::manifest::{Manifest, ManifestVersion, ShardSlot};
use dynostore_protocol::placement::{PlacementKey, View};
use dynostore_protocol::repair::{
    decide_release, manifest_ranking, manifest_replicas, rebalance_moves, repair_targets,
    responsible, Confirmed, ReleaseDecision,
};
use dynostore_protocol::wire::{
    ControlRequest, ControlResponse, ErrorKind, ManifestState, MAX_SHARDS_PER_REQUEST,
};
use dynostore_protocol::{MemberState, NodeId, ObjectId, ShardId};

use crate::datapath::{control, delete_shards, get_one, put_one, read_segment, slot_presence};

/// A shard moves only to a member whose fill fraction is lower by more than
/// this share of the holder's.
const REBALANCE_MARGIN: f64 = 0.1;
/// Most shards one node moves per round, so that announcements of free
/// space can catch up before the next round decides more moves.
const MAX_MOVES_PER_ROUND: usize = 64;
use crate::manifests::wall_ms;
use crate::node::Shared;

/// Settings of the repair loop.
#[derive(Debug, Clone, Copy)]
pub struct RepairConfig {
    pub interval: Duration,
    pub rate_bytes_per_sec: u64,
    pub enabled: bool,
    pub scrub_interval: Duration,
    pub tombstone_ttl: Duration,
}

/// A token bucket over bytes: `take` waits until the budget allows.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        RateLimit {
            rate: bytes_per_sec.max(1) as f64,
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    pub(crate) async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// The repair loop; runs until the node stops.
pub(crate) async fn run(shared: Arc<Shared>, cfg: RepairConfig) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let scrubber = tokio::spawn(scrub_loop(shared.clone(), cfg.scrub_interval));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.repair_wake.notified() => {}
        }
        if let Err(e) = shared.manifests.purge_tombstones(wall_ms()) {
            tracing::warn!(error = %e, "cannot purge tombstones");
        }
        send_pending_releases(&shared).await;
        if cfg.enabled {
            round(&shared, &cfg).await;
            shared.repair_stats(|s| s.rounds += 1);
        }
        if shared.is_closed() {
            break;
        }
    }
    scrubber.abort();
}

/// Asks the top `r` replicas of each object (and this node) what they hold,
/// and fetches the newest manifest. Unreachable replicas make the answer
/// incomplete: they do not vote "absent".
async fn confirm(shared: &Arc<Shared>, objects: &[ObjectId]) -> HashMap<ObjectId, Confirmed> {
    let view = shared.membership().view();
    let now = wall_ms();
    let mut out: HashMap<ObjectId, Confirmed> = HashMap::new();
    let mut held: HashMap<ObjectId, Vec<(NodeId, ManifestVersion)>> = HashMap::new();
    let mut ask: BTreeMap<NodeId, Vec<ObjectId>> = BTreeMap::new();
    for object in objects {
        let c = out.entry(*object).or_default();
        c.complete = true;
        if let Ok(state) = shared.manifests.state(object, now) {
            c.removed.extend(state.removed);
            if let Some(v) = state.held {
                held.entry(*object)
                    .or_default()
                    .push((shared.local.clone(), v));
            }
        }
        // The geometry is not known here; m + 1 <= 16 replicas.
        let r = shared
            .manifests
            .get(object)
            .ok()
            .flatten()
            .map_or(MAX_REPLICAS_ASKED, |m| manifest_replicas(&m.geometry));
        for n in manifest_ranking(&view, object).into_iter().take(r) {
            if *n != shared.local {
                ask.entry(n.clone()).or_default().push(*object);
            }
        }
    }
    let answers = futures::future::join_all(ask.into_iter().map(|(node, objects)| async move {
        let got = manifest_states(shared, &node, &objects).await;
        (node, objects, got)
    }))
    .await;
    for (node, objects, got) in answers {
        match got {
            Some(states) => {
                for (object, state) in objects.iter().zip(states) {
                    let c = out.entry(*object).or_default();
                    c.removed.extend(state.removed);
                    if let Some(v) = state.held {
                        held.entry(*object).or_default().push((node.clone(), v));
                    }
                }
            }
            None => {
                for object in &objects {
                    out.entry(*object).or_default().complete = false;
                }
            }
        }
    }
    for (object, versions) in held {
        let Some((node, v)) = versions.into_iter().max_by_key(|(_, v)| *v) else {
            continue;
        };
        let m = if node == shared.local {
            shared.manifests.get(&object).ok().flatten()
        } else {
            crate::datapath::remote_manifest(shared, &node, object).await
        };
        let c = out.entry(object).or_default();
        match m.filter(|m| m.version() == v) {
            Some(m) => c.newest = Some(m),
            None => c.complete = false,
        }
    }
    out
}

/// Most replicas asked about an object whose geometry this node does not know.
const MAX_REPLICAS_ASKED: usize = 16;

/// `ManifestStates` of `objects` on `node`, in order; `None` if any batch
/// went unanswered.
async fn manifest_states(
    shared: &Shared,
    node: &NodeId,
    objects: &[ObjectId],
) -> Option<Vec<ManifestState>> {
    let mut got = Vec::with_capacity(objects.len());
    for chunk in objects.chunks(MAX_SHARDS_PER_REQUEST) {
        let req = ControlRequest::ManifestStates {
            objects: chunk.to_vec(),
        };
        match control(shared, node, req).await {
            Ok(ControlResponse::ManifestStates { states }) if states.len() == chunk.len() => {
                got.extend(states)
            }
            Ok(other) => {
                tracing::debug!(node = %node.short(), "unexpected answer {other:?}");
                return None;
            }
            Err(e) => {
                tracing::debug!(node = %node.short(), error = %e, "manifest states unavailable");
                return None;
            }
        }
    }
    Some(got)
}

/// Sends the pending releases of members that are alive, each checked
/// against the newest manifest of its object that can be confirmed.
async fn send_pending_releases(shared: &Arc<Shared>) {
    let pending = shared.manifests.pending().all();
    if pending.is_empty() {
        return;
    }
    let mut objects: Vec<ObjectId> = pending.values().flatten().map(|s| s.owner.object).collect();
    objects.sort_unstable();
    objects.dedup();
    let confirmed = confirm(shared, &objects).await;
    for (node, entries) in pending {
        let alive = node == shared.local
            || shared
                .membership()
                .get(&node)
                .is_some_and(|e| e.state == MemberState::Alive);
        if !alive {
            continue;
        }
        let mut send = Vec::new();
        let mut done = Vec::new();
        for slot in &entries {
            match decide_release(confirmed.get(&slot.owner.object), &node, slot) {
                ReleaseDecision::Send => send.push(*slot),
                ReleaseDecision::Drop => done.push(*slot),
                ReleaseDecision::Wait => {}
            }
        }
        if !send.is_empty() {
            match delete_shards(shared, &node, send.clone()).await {
                Ok(n) => {
                    tracing::info!(node = %node.short(), released = send.len(), deleted = n, "sent pending releases");
                    done.extend(send);
                }
                Err(e) => {
                    tracing::debug!(node = %node.short(), error = %e, "pending releases not sent yet")
                }
            }
        }
        if !done.is_empty() {
            shared.manifests.pending().remove(&node, &done).await;
        }
    }
}

async fn round(shared: &Arc<Shared>, cfg: &RepairConfig) {
    let manifests = match shared.manifests.all() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read manifests for repair");
            return;
        }
    };
    if manifests.is_empty() {
        return;
    }
    let view = shared.membership().view();
    // Whom to ask about which object.
    let mut ask: BTreeMap<NodeId, Vec<ObjectId>> = BTreeMap::new();
    for m in &manifests {
        let ranking = manifest_ranking(&view, &m.object);
        let r = manifest_replicas(&m.geometry);
        let mine = ranking.iter().position(|n| **n == shared.local);
        let upto = mine.unwrap_or(0).max(r).min(ranking.len());
        for n in &ranking[..upto] {
            if **n != shared.local {
                ask.entry((*n).clone()).or_default().push(m.object);
            }
        }
    }
    let mut states: HashMap<(NodeId, ObjectId), ManifestState> = HashMap::new();
    let answers = futures::future::join_all(ask.into_iter().map(|(node, objects)| async move {
        let got = manifest_states(shared, &node, &objects).await;
        (node, objects, got)
    }))
    .await;
    for (node, objects, got) in answers {
        for (object, state) in objects.into_iter().zip(got.into_iter().flatten()) {
            states.insert((node.clone(), object), state);
        }
    }
    let mut queue = 0u64;
    let mut moves_left = MAX_MOVES_PER_ROUND;
    for mut m in manifests {
        let object = m.object;
        let generation = m.generation;
        if states
            .iter()
            .any(|((_, o), s)| *o == object && s.removed.contains(&generation))
        {
            forget_removed(shared, &m, cfg).await;
            continue;
        }
        // A replica that missed a repair or a re-upload (its node was down
        // or cut off) must not act on what it holds: its holders are out
        // of date, and its decisions would remove copies the current
        // manifest needs. Fetch the newest and act on it next round.
        let mine = m.version();
        let newest = states
            .iter()
            .filter(|((_, o), _)| *o == object)
            .filter_map(|((n, _), s)| s.held.map(|v| (n.clone(), v)))
            .max_by_key(|(_, v)| *v);
        if let Some((node, v)) = newest.filter(|(_, v)| *v > mine) {
            match crate::datapath::remote_manifest(shared, &node, object).await {
                Some(fresh) if fresh.version() > mine => {
                    if let Err(e) = shared.manifests.put(object, &fresh.encode()).await {
                        tracing::debug!(object = %object.short(), error = %e, "newer manifest not taken");
                    } else {
                        tracing::info!(object = %object.short(), from = m.revision, to = fresh.revision, generation = %fresh.generation, "stale manifest replica brought up to date");
                    }
                }
                _ => {
                    tracing::debug!(object = %object.short(), node = %node.short(), version = ?v, "newer manifest not fetched")
                }
            }
            continue;
        }
        let ranking = manifest_ranking(&view, &object);
        let current = |n: &NodeId| {
            states
                .get(&(n.clone(), object))
                .is_some_and(|s| s.held == Some(mine))
        };
        let holds = |n: &NodeId| *n == shared.local || current(n);
        if responsible(&ranking, holds) != Some(&shared.local) {
            // A replica outside the top r is surplus once the top r all
            // hold the manifest: drop it, so that it cannot go stale.
            let r = manifest_replicas(&m.geometry);
            let top: Vec<&NodeId> = ranking.iter().take(r).copied().collect();
            if top.len() == r && !top.contains(&&shared.local) && top.iter().all(|n| holds(n)) {
                if let Err(e) = shared.manifests.discard(&object).await {
                    tracing::debug!(error = %e, "cannot drop a surplus manifest replica");
                }
            }
            continue;
        }
        let (mut changed, whole) = repair_object(shared, &view, &mut m, &mut queue).await;
        if whole && moves_left > 0 {
            changed |= rebalance_object(shared, &view, &mut m, &mut moves_left).await;
        }
        // A removal may have raced with the rebuild: then the rebuilt
        // shards are orphans, and go too.
        if changed
            && shared
                .manifests
                .is_deleted(&object, generation, wall_ms())
                .unwrap_or(false)
        {
            tracing::info!(object = %object.short(), "object removed during its repair");
            remove_shards(shared, &m).await;
            continue;
        }
        if changed {
            m.revision += 1;
            // Keep the local replica current first: it decides the next round.
            if let Err(e) = shared.manifests.put(object, &m.encode()).await {
                tracing::info!(object = %object.short(), error = %e, "updated manifest not taken locally; another node got there first");
                continue;
            }
        }
        // Every replica, and the top r of the ranking, get the manifest.
        let r = manifest_replicas(&m.geometry);
        let bytes = m.encode();
        let mut targets: Vec<NodeId> = ranking.iter().take(r).map(|n| (*n).clone()).collect();
        for ((n, o), s) in &states {
            if *o == object && s.held.is_some() && !targets.contains(n) {
                targets.push(n.clone());
            }
        }
        for node in targets {
            // Stale replicas get the current manifest even when nothing changed.
            let has = node == shared.local || current(&node);
            if has && !changed {
                continue;
            }
            if let Err(e) = crate::datapath::put_manifest_one(shared, &node, object, &bytes).await {
                tracing::debug!(node = %node.short(), object = %object.short(), error = %e, "manifest replica not pushed");
            }
        }
    }
    shared.repair_stats(|s| s.queue_len = queue);
}

/// Moves shards of a whole object towards the members the current ranking
/// prefers, when those are clearly emptier (copy first; the old copy is
/// deleted later through a pending deletion). Returns whether any holder
/// changed.
async fn rebalance_object(
    shared: &Arc<Shared>,
    view: &View,
    m: &mut Manifest,
    moves_left: &mut usize,
) -> bool {
    let fills: HashMap<NodeId, f64> = shared
        .membership()
        .entries()
        .filter(|(_, e)| e.state == MemberState::Alive)
        .filter_map(|(id, e)| {
            let cap = e.announcement.capacity_bytes();
            (cap > 0).then(|| {
                (
                    id.clone(),
                    1.0 - e.announcement.free_bytes() as f64 / cap as f64,
                )
            })
        })
        .collect();
    let mut changed = false;
    for idx in 0..m.segments.len() {
        let holders: Vec<NodeId> = m.segments[idx]
            .shards
            .iter()
            .map(|e| m.holders[e.holder as usize].clone())
            .collect();
        let key = PlacementKey::for_segment(&m.object, idx as u64);
        let moves = rebalance_moves(
            view,
            key,
            &holders,
            |n| fills.get(n).copied(),
            REBALANCE_MARGIN,
            usize::from(m.geometry.m),
        );
        for (i, target) in moves {
            if *moves_left == 0 {
                return changed;
            }
            let id = m.segments[idx].shards[i].id;
            let slot = ShardSlot {
                shard: id,
                owner: m.shard_ref(idx as u64, i as u16),
            };
            let size = u64::from(m.segments[idx].shard_size);
            shared.repair_rate.take(2 * size).await;
            let bytes = match get_one(shared, &holders[i], id).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(shard = %id.short(), error = %e, "cannot read a shard to move");
                    continue;
                }
            };
            if let Err(e) = put_one(shared, view, &target, slot, bytes).await {
                tracing::debug!(shard = %id.short(), to = %target.short(), error = %e, "cannot move a shard");
                continue;
            }
            // The old copy's release is recorded when the local replica
            // takes the updated manifest.
            m.set_holder(idx, i, &target);
            *moves_left -= 1;
            changed = true;
            shared.repair_stats(|s| s.shards_moved += 1);
        }
    }
    if changed {
        m.compact_holders();
    }
    changed
}

/// Rebuilds the stripes of `m` that are short of shards. Returns whether
/// any holder changed, and whether every stripe was whole to begin with.
#[tracing::instrument(skip_all, fields(object = %m.object.short()))]
async fn repair_object(
    shared: &Arc<Shared>,
    view: &View,
    m: &mut Manifest,
    queue: &mut u64,
) -> (bool, bool) {
    let g = m.geometry;
    let k = usize::from(g.k);
    // Which copies are where. A holder that does not answer but is not
    // down yet counts as present, rather than rebuild on a hiccup.
    let present = slot_presence(shared, m, true).await;
    let mut whole = true;
    let mut changed = false;
    let mut encoder = match Encoder::new(g) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "cannot repair: bad geometry");
            return (false, false);
        }
    };
    for (idx, here) in present.iter().enumerate().take(m.segments.len()) {
        let seg = &m.segments[idx];
        let missing: Vec<usize> = (0..seg.shards.len())
            .filter(|&i| !here.get(i).copied().unwrap_or(false))
            .collect();
        if missing.is_empty() {
            continue;
        }
        whole = false;
        *queue += 1;
        let healthy = seg.shards.len() - missing.len();
        if healthy < k {
            tracing::error!(
                segment = idx,
                healthy,
                k,
                "stripe has fewer than k shards: unrecoverable"
            );
            shared.repair_stats(|s| s.stripes_lost += 1);
            continue;
        }
        let shard_size = u64::from(seg.shard_size);
        cfg_rate(shared, (k + missing.len()) as u64 * shard_size).await;
        let bytes = match read_segment(shared, m, idx).await {
            Ok((b, _)) => {
                let read = k as u64 * shard_size;
                shared.repair_stats(|s| s.bytes_read += read);
                b
            }
            Err(e) => {
                tracing::warn!(segment = idx, error = %e, "cannot read the stripe for repair");
                continue;
            }
        };
        let encoded = match encoder.encode(&bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(segment = idx, error = %e, "re-encoding failed");
                continue;
            }
        };
        let keep: Vec<NodeId> = seg
            .shards
            .iter()
            .enumerate()
            .filter(|(i, _)| !missing.contains(i))
            .map(|(_, e)| m.holders[e.holder as usize].clone())
            .collect();
        let key = PlacementKey::for_segment(&m.object, idx as u64);
        let targets = repair_targets(view, key, missing.len(), &keep, usize::from(g.m));
        let mut repaired_here = 0;
        for (&i, target) in missing.iter().zip(&targets) {
            let expected = m.segments[idx].shards[i].id;
            let shard = encoded.shard(i);
            if ShardId::of(shard) != expected {
                tracing::error!(
                    segment = idx,
                    shard_idx = i,
                    "rebuilt shard does not match the manifest"
                );
                continue;
            }
            let slot = ShardSlot {
                shard: expected,
                owner: m.shard_ref(idx as u64, i as u16),
            };
            let copy = bytes::Bytes::copy_from_slice(shard);
            match put_one(shared, view, target, slot, copy).await {
                Ok(()) => {
                    // The old copy's release is recorded when the local
                    // replica takes the updated manifest.
                    m.set_holder(idx, i, target);
                    changed = true;
                    repaired_here += 1;
                    let n = shard.len() as u64;
                    shared.repair_stats(|s| {
                        s.shards_repaired += 1;
                        s.bytes_repaired += n;
                    });
                    tracing::info!(segment = idx, shard_idx = i, to = %target.short(), "shard rebuilt");
                }
                Err(e) => {
                    tracing::warn!(segment = idx, to = %target.short(), error = %e, "rebuilt shard not stored")
                }
            }
        }
        if repaired_here == missing.len() {
            *queue -= 1;
        }
    }
    if changed {
        m.compact_holders();
    }
    (changed, whole)
}

async fn cfg_rate(shared: &Shared, bytes: u64) {
    shared.repair_rate.take(bytes).await;
}

/// The object was removed while this node held a replica: drop it, and
/// every shard of it (the holders that are down get pending deletions).
async fn forget_removed(shared: &Arc<Shared>, m: &Manifest, cfg: &RepairConfig) {
    tracing::info!(object = %m.object.short(), "removing a manifest the network deleted");
    let until = wall_ms() + cfg.tombstone_ttl.as_millis() as u64;
    if let Err(e) = shared
        .manifests
        .remove(&m.object, m.generation, until)
        .await
    {
        tracing::warn!(error = %e, "cannot remove a deleted manifest");
        return;
    }
    remove_shards(shared, m).await;
}

/// Releases every copy of `m` on its holder, or records pending releases
/// for holders that cannot be reached now. Returns how many copies went.
pub(crate) async fn remove_shards(shared: &Arc<Shared>, m: &Manifest) -> u32 {
    let mut by_holder: BTreeMap<NodeId, Vec<ShardSlot>> = BTreeMap::new();
    for (node, slot) in m.slots() {
        by_holder.entry(node.clone()).or_default().push(slot);
    }
    let mut deleted = 0;
    for (node, slots) in by_holder {
        match delete_shards(shared, &node, slots.clone()).await {
            Ok(n) => deleted += n,
            Err(e) => {
                tracing::info!(node = %node.short(), error = %e, "holder unreachable: release kept for its return");
                if let Err(e) = shared.manifests.pending().add(&node, &slots).await {
                    tracing::warn!(error = %e, "cannot record pending releases");
                }
            }
        }
    }
    deleted
}

async fn scrub_loop(shared: Arc<Shared>, interval: Duration) {
    loop {
        let jitter = 0.9 + 0.2 * rand::random::<f64>();
        tokio::time::sleep(interval.mul_f64(jitter)).await;
        scrub(&shared).await;
    }
}

/// Re-hashes every local shard; deletes corrupt copies. Returns (checked, corrupt).
pub(crate) async fn scrub(shared: &Arc<Shared>) -> (u64, u64) {
    let _one_at_a_time = shared.scrub_lock.lock().await;
    let list = match shared.store.list() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list shards to scrub");
            return (0, 0);
        }
    };
    let (mut checked, mut corrupt) = (0u64, 0u64);
    for id in list {
        checked += 1;
        if let Err(e) = shared.store.get(&id).await {
            if e.kind() == ErrorKind::Integrity {
                corrupt += 1;
                tracing::warn!(shard = %id.short(), error = %e, "scrub found a corrupt shard; deleting the copy");
                if let Err(e) = shared.store.delete(&id).await {
                    tracing::warn!(shard = %id.short(), error = %e, "cannot delete a corrupt shard");
                }
            }
        }
    }
    let now = shared.start.elapsed().as_millis() as u64;
    shared.repair_stats(|s| {
        s.last_scrub_checked = checked;
        s.last_scrub_corrupt = corrupt;
    });
    shared.last_scrub_ms.store(now + 1, Ordering::Relaxed);
    tracing::info!(checked, corrupt, "scrub finished");
    (checked, corrupt)
}
