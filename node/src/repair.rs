//! Self-healing: the repair round, pending releases, tombstone spreading
//! and scrubbing. Every decision is [`dynostore_protocol::planner`]'s; this
//! module gathers what the planner needs over the network, executes the
//! actions it returns, and counts.
//!
//! Every `repair_interval` (and at once when a member goes down) the node:
//! 1. Sends its pending releases ([`send_pending_releases`]): asks every
//!    member not `Down` what it knows of each object concerned
//!    (`ManifestStates`, batched per member), and lets
//!    [`plan_releases`] decide which to send, which to forget and which to
//!    keep waiting. A release goes only once the newest manifest is in hand
//!    and every member answered, or when its generation is known removed.
//! 2. Runs a round over the manifest replicas it holds ([`round`]): asks
//!    [`replicas_to_ask`] for their `ManifestStates`, and for each replica
//!    lets [`plan_object`] decide (forget a removed one, fetch a newer one,
//!    wait for silent replicas, leave it to the responsible member, or,
//!    when responsible, check the holders with `Has` and rebuild, move and
//!    push the new revision through [`commit`]).
//! 3. Spreads its tombstones ([`spread_tombstones`]): every member of
//!    [`tombstone_askees`] that still holds a replica a tombstone removes
//!    gets the tombstone ([`plan_tombstone`]).
//!
//! Repair traffic goes through a token bucket of `repair_rate_bytes_per_sec`,
//! the upper bound; the scheduler (`Shared::repair_take`) gives client work
//! priority: while any member reports client operations, repair runs at its
//! reserved share of that budget (`REPAIR_RESERVED_SHARE`).
//! A repair that dies with its node is finished by the next holder in the
//! ranking at its next round: every step is idempotent.
//!
//! Scrubbing re-hashes every local shard every `scrub_interval` (with 10%
//! jitter) or on demand; a corrupt copy is deleted, so the responsible node
//! sees it missing and rebuilds it. Inline objects (small objects held in
//! their manifest) are re-hashed too; a replica whose bytes fail is
//! dropped, and the responsible member pushes a good copy back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dynostore_protocol::erasure::Encoder;
use dynostore_protocol::manifest::{Generation, Manifest, ShardSlot};
use dynostore_protocol::placement::View;
use dynostore_protocol::planner::{
    commit, plan_object, plan_releases, plan_tombstone, release_askees, replicas_to_ask,
    tombstone_askees, Action, Move, ObjectInput, Placed, PlannerConfig, ReleaseInput, Replies,
    WaitReason,
};
use dynostore_protocol::wire::ErrorKind;
use dynostore_protocol::{MemberState, NodeId, ObjectId, ShardId};

use crate::dashboard::EventKind;
use crate::manifests::wall_ms;
use crate::shared::Shared;
use crate::stripes::{read_segment, slot_presence};

/// A shard moves only to a member whose fill fraction is lower by more than
/// this share of the holder's.
const REBALANCE_MARGIN: f64 = 0.1;
/// Most shards one node moves per round, so that announcements of free
/// space can catch up before the next round decides more moves.
const MAX_MOVES_PER_ROUND: usize = 64;

/// Settings of the repair loop.
#[derive(Debug, Clone, Copy)]
pub struct RepairConfig {
    pub interval: Duration,
    pub rate_bytes_per_sec: u64,
    pub enabled: bool,
    pub scrub_interval: Duration,
    pub tombstone_ttl: Duration,
}

impl RepairConfig {
    fn planner(&self) -> PlannerConfig {
        PlannerConfig {
            tombstone_ttl_ms: self.tombstone_ttl.as_millis() as u64,
            rebalance_margin: REBALANCE_MARGIN,
        }
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
            () = shared.repair.wake.notified() => {}
        }
        if let Err(e) = shared.manifests.purge_tombstones(wall_ms()) {
            tracing::warn!(error = %e, "cannot purge tombstones");
        }
        send_pending_releases(&shared).await;
        if cfg.enabled {
            round(&shared, &cfg).await;
            spread_tombstones(&shared).await;
            shared.repair_stats(|s| s.rounds += 1);
        }
        if shared.is_closed() {
            break;
        }
    }
    scrubber.abort();
}

/// The `ManifestStates` of `objects` from each member of `ask`, as
/// [`Replies`] per object: `None` for a member whose batch went unanswered.
async fn gather(
    shared: &Shared,
    ask: BTreeMap<NodeId, Vec<ObjectId>>,
) -> HashMap<ObjectId, Replies> {
    let peers = shared.peers();
    let answers = futures::future::join_all(ask.into_iter().map(|(node, objects)| async move {
        let got = peers.manifest_states(&node, &objects).await;
        (node, objects, got)
    }))
    .await;
    let mut out: HashMap<ObjectId, Replies> = HashMap::new();
    for (node, objects, got) in answers {
        match got {
            Ok(states) => {
                for (object, state) in objects.into_iter().zip(states) {
                    out.entry(object)
                        .or_default()
                        .insert(node.clone(), Some(state));
                }
            }
            Err(e) => {
                tracing::debug!(node = %node.short(), error = %e, "manifest states unavailable");
                for object in objects {
                    out.entry(object).or_default().insert(node.clone(), None);
                }
            }
        }
    }
    out
}

/// Fetches the manifest `from` holds, if it is at `version`.
async fn fetch_newer(
    shared: &Shared,
    object: ObjectId,
    from: &NodeId,
    version: dynostore_protocol::manifest::ManifestVersion,
) -> Option<Manifest> {
    match shared.peers().manifest(from, object).await {
        Ok(Some(m)) if m.version() == version => Some(m),
        Ok(_) => {
            tracing::debug!(object = %object.short(), node = %from.short(), "newer manifest moved on or went");
            None
        }
        Err(e) => {
            tracing::debug!(object = %object.short(), error = %e, "newer manifest not fetched");
            None
        }
    }
}

/// Sends the pending releases that [`plan_releases`] allows, forgets the
/// ones it says the newest manifest needs again, and keeps the rest.
async fn send_pending_releases(shared: &Arc<Shared>) {
    let pending = shared.manifests.pending().all();
    if pending.is_empty() {
        return;
    }
    let mut by_object: BTreeMap<ObjectId, Vec<(NodeId, ShardSlot)>> = BTreeMap::new();
    for (node, slots) in &pending {
        for s in slots {
            by_object
                .entry(s.owner.object)
                .or_default()
                .push((node.clone(), *s));
        }
    }
    let view = shared.membership().view();
    let me = &shared.local;
    let objects: Vec<ObjectId> = by_object.keys().copied().collect();
    let ask: BTreeMap<NodeId, Vec<ObjectId>> = release_askees(&view, me)
        .into_iter()
        .map(|n| (n, objects.clone()))
        .collect();
    let mut replies = gather(shared, ask).await;
    let now = wall_ms();
    for (object, entries) in by_object {
        let replies = replies.remove(&object).unwrap_or_default();
        let local = shared.manifests.get(&object).ok().flatten();
        let local_removed = shared.manifests.removed(&object, now).unwrap_or_default();
        let mut input = ReleaseInput {
            me,
            view: &view,
            object,
            local: local.as_ref(),
            local_removed: &local_removed,
            fetched: None,
            replies: &replies,
            pending: &entries,
        };
        let mut actions = plan_releases(&input);
        let fetched = match actions.iter().find_map(|a| match a {
            Action::FetchNewer { from, version } => Some((from.clone(), *version)),
            _ => None,
        }) {
            Some((from, version)) => fetch_newer(shared, object, &from, version).await,
            None => None,
        };
        if let Some(m) = &fetched {
            input.fetched = Some(m);
            actions = plan_releases(&input);
        }
        execute_releases(shared, &actions).await;
    }
}

/// The `Release` and `DropPending` actions of [`plan_releases`]; a release
/// that cannot be sent stays pending.
async fn execute_releases(shared: &Shared, actions: &[Action]) {
    let peers = shared.peers();
    for a in actions {
        match a {
            Action::Release { node, slots } => match peers.release(node, slots).await {
                Ok(n) => {
                    tracing::info!(node = %node.short(), released = slots.len(), deleted = n, "sent pending releases");
                    shared.manifests.pending().remove(node, slots).await;
                }
                Err(e) => {
                    tracing::debug!(node = %node.short(), error = %e, "pending releases not sent yet")
                }
            },
            Action::DropPending { node, slots } => {
                shared.manifests.pending().remove(node, slots).await;
            }
            _ => {}
        }
    }
}

/// Fill fraction of alive members with a known capacity.
fn fills(shared: &Shared) -> BTreeMap<NodeId, f64> {
    shared
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
        .collect()
}

/// Per-round counters.
#[derive(Debug, Default)]
struct RoundCounts {
    /// Stripes short of k + m left after the round.
    queue: u64,
    moves_left: usize,
    /// When this round began rebuilding (its first rebuild), for the
    /// dashboard's events: one "started" and one "done" per round.
    rebuild_started: Option<std::time::Instant>,
    objects_rebuilt: u64,
    shards_planned: usize,
    shards_rebuilt: usize,
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
        shared.repair_stats(|s| s.queue_len = 0);
        return;
    }
    let view = shared.membership().view();
    let mut ask: BTreeMap<NodeId, Vec<ObjectId>> = BTreeMap::new();
    for m in &manifests {
        for n in replicas_to_ask(&view, &shared.local, m) {
            ask.entry(n).or_default().push(m.object);
        }
    }
    let mut replies = gather(shared, ask).await;
    let fill = fills(shared);
    let mut counts = RoundCounts {
        moves_left: MAX_MOVES_PER_ROUND,
        ..RoundCounts::default()
    };
    for m in manifests {
        let r = replies.remove(&m.object).unwrap_or_default();
        repair_one(shared, cfg, &view, &m, &r, &fill, &mut counts).await;
    }
    shared.repair_stats(|s| s.queue_len = counts.queue);
    if let Some(started) = counts.rebuild_started {
        shared.dashboard.events.push(
            EventKind::RepairDone,
            None,
            format!(
                "repair round done: {} of {} shards rebuilt for {} object{} in {:.1} s; {} stripes still short",
                counts.shards_rebuilt,
                counts.shards_planned,
                counts.objects_rebuilt,
                if counts.objects_rebuilt == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64(),
                counts.queue
            ),
        );
    }
}

/// Plans and executes one object's round.
#[tracing::instrument(skip_all, fields(object = %m.object.short()))]
async fn repair_one(
    shared: &Arc<Shared>,
    cfg: &RepairConfig,
    view: &View,
    m: &Manifest,
    replies: &Replies,
    fill: &BTreeMap<NodeId, f64>,
    counts: &mut RoundCounts,
) {
    let pcfg = cfg.planner();
    let object = m.object;
    let local_removed = shared
        .manifests
        .removed(&object, wall_ms())
        .unwrap_or_default();
    let mut input = ObjectInput {
        me: &shared.local,
        view,
        now_ms: wall_ms(),
        local: m,
        local_removed: &local_removed,
        replies,
        presence: None,
        fill,
        moves_left: counts.moves_left,
    };
    let mut actions = plan_object(&input, &pcfg);
    let presence;
    if let Some(Action::CheckHolders { .. }) = actions.first() {
        presence = slot_presence(shared, view, m).await;
        shared.dashboard.record_presence(m, &presence);
        input.presence = Some(&presence);
        actions = plan_object(&input, &pcfg);
    }
    let to_rebuild: usize = actions
        .iter()
        .map(|a| match a {
            Action::Rebuild { shards, .. } => shards.len(),
            _ => 0,
        })
        .sum();
    if to_rebuild > 0 && counts.rebuild_started.is_none() {
        counts.rebuild_started = Some(std::time::Instant::now());
        shared.dashboard.events.push(
            EventKind::RepairStarted,
            Some(object.to_string()),
            format!(
                "repair started: stripes short of k + m found (first: object {}, {to_rebuild} shard{} to rebuild)",
                object.short(),
                if to_rebuild == 1 { "" } else { "s" }
            ),
        );
    }
    let mut placed = Vec::new();
    let mut rebuilt = 0usize;
    let mut changes = false;
    for action in &actions {
        match action {
            Action::Rebuild { segment, shards } => {
                changes = true;
                let got = rebuild(shared, view, m, *segment, shards).await;
                rebuilt += got.len();
                if got.len() < shards.len() {
                    counts.queue += 1;
                }
                placed.extend(got);
            }
            Action::Rebalance { moves } => {
                changes = true;
                let got = rebalance(shared, view, m, moves).await;
                counts.moves_left = counts.moves_left.saturating_sub(got.len());
                placed.extend(got);
            }
            Action::Lost { segment, healthy } => {
                counts.queue += 1;
                tracing::error!(
                    segment,
                    healthy,
                    k = m.geometry.k,
                    "stripe has fewer than k shards: unrecoverable"
                );
                shared.repair_stats(|s| s.stripes_lost += 1);
            }
            Action::Wait { reason } => match reason {
                WaitReason::NoTargets { segment } => {
                    counts.queue += 1;
                    tracing::warn!(segment, "no member can take a rebuilt shard of this stripe");
                }
                WaitReason::Unanswered(nodes) => {
                    tracing::debug!(
                        silent = nodes.len(),
                        "replicas did not answer: nothing decided"
                    );
                }
                WaitReason::Unreadable { segment, readable } => {
                    counts.queue += 1;
                    tracing::info!(
                        segment,
                        readable,
                        "stripe short of shards, and fewer than k holders answer: rebuilt once they do"
                    );
                }
            },
            other => execute(shared, m, other).await,
        }
    }
    if changes {
        // A removal may have raced with the rebuild: `commit` sees it in
        // the tombstones read again, and releases the copies just made.
        let local_removed = shared
            .manifests
            .removed(&object, wall_ms())
            .unwrap_or_default();
        input.local_removed = &local_removed;
        for action in commit(&input, &pcfg, &placed) {
            execute(shared, m, &action).await;
        }
    }
    if to_rebuild > 0 {
        counts.objects_rebuilt += 1;
        counts.shards_planned += to_rebuild;
        counts.shards_rebuilt += rebuilt;
    }
}

/// Executes one action that needs no planning afterwards.
async fn execute(shared: &Shared, m: &Manifest, action: &Action) {
    let object = m.object;
    let peers = shared.peers();
    match action {
        Action::Forget {
            generation,
            tombstone_until_ms,
        } => {
            tracing::info!(generation = %generation, "removing a manifest the network deleted");
            if let Err(e) = shared
                .manifests
                .remove(&object, *generation, *tombstone_until_ms)
                .await
            {
                tracing::warn!(error = %e, "cannot remove a deleted manifest");
            }
        }
        Action::FetchNewer { from, version } => {
            // A replica that missed a repair or a re-upload must not act
            // on what it holds: take the newest, and act on it next round.
            if let Some(fresh) = fetch_newer(shared, object, from, *version).await {
                match shared.manifests.put(object, &fresh.encode()).await {
                    Ok(()) => {
                        tracing::info!(from = m.revision, to = fresh.revision, generation = %fresh.generation, "stale manifest replica brought up to date")
                    }
                    Err(e) => tracing::debug!(error = %e, "newer manifest not taken"),
                }
            }
        }
        Action::NotResponsible { .. } | Action::CheckHolders { .. } => {}
        Action::DropSurplus => {
            if let Err(e) = shared.manifests.discard(&object).await {
                tracing::debug!(error = %e, "cannot drop a surplus manifest replica");
            }
        }
        Action::Release { node, slots } => {
            peers.release_or_keep(node, slots).await;
        }
        Action::DropPending { node, slots } => {
            shared.manifests.pending().remove(node, slots).await;
        }
        Action::SendTombstone { to, generation } => {
            for node in to {
                if let Err(e) = peers.remove_manifest(node, object, *generation).await {
                    tracing::debug!(node = %node.short(), error = %e, "tombstone not delivered");
                }
            }
        }
        Action::PushManifest { to, manifest } => {
            let bytes = manifest.encode();
            for node in to {
                let r = peers.put_manifest(node, object, &bytes).await;
                if node == &shared.local {
                    if let Err(e) = r {
                        // Another member got there first: the next round
                        // decides again.
                        tracing::info!(error = %e, "updated manifest not taken locally");
                        return;
                    }
                } else if let Err(e) = r {
                    tracing::debug!(node = %node.short(), error = %e, "manifest replica not pushed");
                }
            }
        }
        Action::Rebuild { .. }
        | Action::Rebalance { .. }
        | Action::Lost { .. }
        | Action::Wait { .. } => {}
    }
}

/// Rebuilds shards of `segment` from any k verified ones and stores each
/// on its target. Returns the copies stored.
async fn rebuild(
    shared: &Arc<Shared>,
    view: &View,
    m: &Manifest,
    segment: u64,
    shards: &[(u16, NodeId)],
) -> Vec<Placed> {
    let Ok(idx) = usize::try_from(segment) else {
        return Vec::new();
    };
    let Some(seg) = m.segments.get(idx) else {
        return Vec::new();
    };
    let k = usize::from(m.geometry.k);
    let shard_size = u64::from(seg.shard_size);
    shared
        .repair_take((k + shards.len()) as u64 * shard_size)
        .await;
    let bytes = match read_segment(shared, m, idx).await {
        Ok((b, _)) => {
            let read = k as u64 * shard_size;
            shared.repair_stats(|s| s.bytes_read += read);
            b
        }
        Err(e) => {
            tracing::warn!(segment, error = %e, "cannot read the stripe for repair");
            return Vec::new();
        }
    };
    let mut encoder = match Encoder::new(m.geometry) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(segment, error = %e, "cannot repair: bad geometry");
            return Vec::new();
        }
    };
    let encoded = match encoder.encode(&bytes) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(segment, error = %e, "re-encoding failed");
            return Vec::new();
        }
    };
    let peers = shared.peers();
    let mut placed = Vec::new();
    for (index, target) in shards {
        let i = usize::from(*index);
        let Some(entry) = seg.shards.get(i).filter(|_| i < encoded.len()) else {
            continue;
        };
        let shard = encoded.shard(i);
        if ShardId::of(shard) != entry.id {
            tracing::error!(
                segment,
                shard_idx = i,
                "rebuilt shard does not match the manifest"
            );
            continue;
        }
        let slot = ShardSlot {
            shard: entry.id,
            owner: m.shard_ref(segment, *index),
        };
        let copy = bytes::Bytes::copy_from_slice(shard);
        let n = copy.len() as u64;
        match peers.place_shard(view, target, slot, copy).await {
            Ok(()) => {
                shared.repair_stats(|s| {
                    s.shards_repaired += 1;
                    s.bytes_repaired += n;
                });
                tracing::info!(segment, shard_idx = i, to = %target.short(), "shard rebuilt");
                placed.push(Placed {
                    segment,
                    index: *index,
                    node: target.clone(),
                });
            }
            Err(e) => {
                tracing::warn!(segment, to = %target.short(), error = %e, "rebuilt shard not stored")
            }
        }
    }
    placed
}

/// Copies each moved shard to its new member (the old copy is released
/// later, once the new manifest replaced the old one). Returns the copies
/// stored.
async fn rebalance(shared: &Arc<Shared>, view: &View, m: &Manifest, moves: &[Move]) -> Vec<Placed> {
    let peers = shared.peers();
    let mut placed = Vec::new();
    for mv in moves {
        let Some(entry) = usize::try_from(mv.segment)
            .ok()
            .and_then(|s| m.segments.get(s))
            .and_then(|seg| {
                seg.shards
                    .get(usize::from(mv.index))
                    .map(|e| (e, seg.shard_size))
            })
        else {
            continue;
        };
        let (entry, size) = entry;
        shared.repair_take(2 * u64::from(size)).await;
        let bytes = match peers.get_shard(&mv.from, entry.id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(shard = %entry.id.short(), error = %e, "cannot read a shard to move");
                continue;
            }
        };
        let slot = ShardSlot {
            shard: entry.id,
            owner: m.shard_ref(mv.segment, mv.index),
        };
        if let Err(e) = peers.place_shard(view, &mv.to, slot, bytes).await {
            tracing::debug!(shard = %entry.id.short(), to = %mv.to.short(), error = %e, "cannot move a shard");
            continue;
        }
        shared.repair_stats(|s| s.shards_moved += 1);
        placed.push(Placed {
            segment: mv.segment,
            index: mv.index,
            node: mv.to.clone(),
        });
    }
    placed
}

/// Gives each tombstone held here to the members near the top of its
/// object's ranking that still hold a replica it removes.
async fn spread_tombstones(shared: &Arc<Shared>) {
    let tombstones = match shared.manifests.tombstones(wall_ms()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list tombstones");
            return;
        }
    };
    if tombstones.is_empty() {
        return;
    }
    let view = shared.membership().view();
    // The latest tombstone per object covers the older ones.
    let mut latest: BTreeMap<ObjectId, Generation> = BTreeMap::new();
    for (o, g) in tombstones {
        let e = latest.entry(o).or_insert(g);
        *e = (*e).max(g);
    }
    let mut ask: BTreeMap<NodeId, BTreeSet<ObjectId>> = BTreeMap::new();
    for o in latest.keys() {
        for n in tombstone_askees(&view, &shared.local, o) {
            ask.entry(n).or_default().insert(*o);
        }
    }
    let ask = ask
        .into_iter()
        .map(|(n, o)| (n, o.into_iter().collect()))
        .collect();
    let mut replies = gather(shared, ask).await;
    let peers = shared.peers();
    for (object, generation) in latest {
        let r = replies.remove(&object).unwrap_or_default();
        for action in plan_tombstone(&view, &shared.local, &object, generation, &r) {
            if let Action::SendTombstone { to, generation } = action {
                for node in to {
                    match peers.remove_manifest(&node, object, generation).await {
                        Ok(_) => {
                            tracing::info!(object = %object.short(), node = %node.short(), "tombstone spread to a stale replica")
                        }
                        Err(e) => {
                            tracing::debug!(node = %node.short(), error = %e, "tombstone not delivered")
                        }
                    }
                }
            }
        }
    }
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
    let _one_at_a_time = shared.repair.scrub_lock.lock().await;
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
                shared.dashboard.events.push(
                    EventKind::Corruption,
                    Some(id.to_string()),
                    format!(
                        "scrub found shard {} corrupt: copy deleted, repair rebuilds it",
                        id.short()
                    ),
                );
                if let Err(e) = shared.store.delete(&id).await {
                    tracing::warn!(shard = %id.short(), error = %e, "cannot delete a corrupt shard");
                }
            }
        }
    }
    // Inline objects live in manifest replicas, not shards.
    match shared.manifests.scrub_inline().await {
        Ok((c, bad)) => {
            checked += c;
            corrupt += bad;
        }
        Err(e) => tracing::warn!(error = %e, "cannot scrub inline objects"),
    }
    let now = shared.start.elapsed().as_millis() as u64;
    shared.repair_stats(|s| {
        s.last_scrub_checked = checked;
        s.last_scrub_corrupt = corrupt;
    });
    shared
        .repair
        .last_scrub_ms
        .store(now + 1, Ordering::Relaxed);
    shared.metrics.scrubbed(corrupt);
    tracing::info!(checked, corrupt, "scrub finished");
    (checked, corrupt)
}
