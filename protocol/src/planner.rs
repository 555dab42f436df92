//! The repair planner: what one node should do about one object, decided
//! from what it knows, with no IO.
//!
//! The node's repair round gathers answers over the network and hands them
//! here; the planner answers with [`Action`]s that the node executes one by
//! one, and, where an action needs more answers (the holders' `Has`) or
//! produced results (rebuilt or moved copies), the node calls again with
//! them. Three entry points, in the order of a round:
//!
//! 1. [`plan_releases`]: the pending releases of copies, per object, from
//!    the `ManifestStates` of every member not `Down`
//!    ([`release_askees`]). A release is sent only when the slot's
//!    generation is known removed, or when every member answered and the
//!    newest manifest (in hand, not just its version) does not place that
//!    copy there ([`crate::repair::decide_release`]).
//! 2. [`plan_object`]: for each manifest replica held, from the
//!    `ManifestStates` of [`replicas_to_ask`]: forget it (a tombstone names
//!    its generation or a later one), fetch a newer one, wait (a replica
//!    did not answer: unreachable replicas never vote), leave it to the
//!    responsible member (and drop a surplus replica), or, when this node
//!    is responsible, ask the holders ([`Action::CheckHolders`]) and then
//!    rebuild, rebalance, report lost stripes or refresh stale replicas.
//!    What each stripe needs is [`plan_stripe`]'s, which `dynostore-sim
//!    scale` runs too.
//! 3. [`commit`]: after the node executed the rebuilds and moves, the new
//!    manifest revision (the holders that were stored) and where it goes.
//! 4. [`plan_tombstone`]: for each tombstone held, the members of
//!    [`tombstone_askees`] that still hold a replica it removes get it.
//!
//! Every decision that changes holders or deletes is taken on a confirmed
//! newest manifest: every replica asked answered and none holds a later
//! [`ManifestVersion`] (generation, revision, digest: a total order, so two
//! manifests written on both sides of a partition at one revision resolve
//! the same way on every node). Copies are only ever created by repair;
//! the copies a new revision no longer places are released later, through
//! [`plan_releases`], never here.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{NodeId, ObjectId};
use crate::manifest::{Generation, Manifest, ManifestVersion, ShardEntry, ShardSlot};
use crate::placement::{MemberState, PlacementKey, View, Weighting};
use crate::repair::{
    decide_release, manifest_ranking, manifest_replicas, rebalance_moves, repair_targets,
    responsible, Confirmed, ReleaseDecision,
};
use crate::wire::ManifestState;

/// Most replicas asked about an object whose geometry is not known here
/// (`m + 1 <= 16`).
pub const MAX_REPLICAS_ASKED: usize = 16;

/// Tunables of the planner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannerConfig {
    /// How long a tombstone written by [`Action::Forget`] lives.
    pub tombstone_ttl_ms: u64,
    /// A shard moves only to a member whose fill fraction is lower by more
    /// than this share of its holder's ([`rebalance_moves`]).
    pub rebalance_margin: f64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            tombstone_ttl_ms: 7 * 24 * 3600 * 1000,
            rebalance_margin: 0.1,
        }
    }
}

/// What each member asked said: `None` when it did not answer (in time).
pub type Replies = BTreeMap<NodeId, Option<ManifestState>>;

/// A holder's answer about one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Stored, with this slot's owner reference.
    Present,
    /// Not stored (or stored without this slot's reference).
    Absent,
    /// The holder did not answer. Counts as present while the holder is not
    /// `Down` (no rebuild on a hiccup), and blocks moves of its stripe.
    NoAnswer,
}

/// Why nothing is changed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// These members did not answer: they may hold a later manifest or a
    /// tombstone, so nothing is decided without them.
    Unanswered(Vec<NodeId>),
    /// No eligible member to take a rebuilt shard of this segment.
    NoTargets { segment: u64 },
    /// Shards of this segment are missing, but only `readable` (fewer than
    /// k) answered present: the others are held by members that did not
    /// answer, so a rebuild could not read k now ([`StripePlan::Unreadable`]).
    Unreadable { segment: u64, readable: usize },
}

/// One shard position of a stripe, as [`plan_stripe`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// Held and readable now: its holder answered [`Presence::Present`].
    Readable,
    /// Presumed held but not readable now: its holder is not `Down` and did
    /// not answer (in the scale model: its site is dark).
    Unreachable,
    /// Not held: no holder, a holder `Down` or not in the view, or one that
    /// answered [`Presence::Absent`] (in the scale model: destroyed).
    Missing,
}

/// What one stripe needs ([`plan_stripe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripePlan {
    /// Nothing is missing. `unreachable` positions are held by members
    /// that did not answer: while any is, nothing of the object is moved.
    Whole { unreachable: usize },
    /// `missing` positions are not held and at least k can be read:
    /// rebuild them now.
    Rebuild { missing: usize },
    /// `missing` positions are not held; at least k are, but only
    /// `readable` (fewer than k) can be read now. The rebuild waits until k
    /// can be read; nothing is lost yet.
    Unreadable { missing: usize, readable: usize },
    /// Fewer than k positions are held (`healthy`): the stripe cannot be
    /// rebuilt.
    Lost { healthy: usize },
}

/// A copy to put on a new holder: shard `index` of `segment` goes from
/// `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub segment: u64,
    pub index: u16,
    pub from: NodeId,
    pub to: NodeId,
}

/// A copy the node stored for a [`Action::Rebuild`] or [`Action::Rebalance`]:
/// shard `index` of `segment` is now on `node`, durably, with its slot's
/// reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub segment: u64,
    pub index: u16,
    pub node: NodeId,
}

/// One step for the node to execute, in the order given.
// A handful of actions live per object for one planning round: the size of
// the manifest-carrying variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A tombstone names this generation or a later one: remove the local
    /// replica, keep a tombstone for `generation` until `tombstone_until_ms`
    /// (`ManifestStore::remove`, which records pending releases of its
    /// copies). The [`Action::Release`]s that follow release every copy.
    Forget {
        generation: Generation,
        tombstone_until_ms: u64,
    },
    /// A member holds a later manifest: fetch it from `from`, check that it
    /// is at `version`, take it (as the local replica, or as the `fetched`
    /// manifest of [`ReleaseInput`]), and plan again.
    FetchNewer {
        from: NodeId,
        version: ManifestVersion,
    },
    /// Another member is responsible for the object (`None`: nobody this
    /// node can see).
    NotResponsible { responsible: Option<NodeId> },
    /// This replica is outside the top r, all of which hold the same
    /// manifest: discard it without a tombstone so that it cannot go stale.
    DropSurplus,
    /// Nothing may change until more is known.
    Wait { reason: WaitReason },
    /// Ask each holder which of these slots it stores (`Has`; this node
    /// checks its own store), then plan again with the answers in
    /// [`ObjectInput::presence`]. Holders that are `Down` or unknown are
    /// not listed: they count as holding nothing.
    CheckHolders {
        holders: Vec<(NodeId, Vec<ShardSlot>)>,
    },
    /// Read any k verified shards of `segment`, re-encode, check each
    /// rebuilt shard against the manifest's ID, and store shard `index` on
    /// its target, for each `(index, target)`. Report the ones stored to
    /// [`commit`].
    Rebuild {
        segment: u64,
        shards: Vec<(u16, NodeId)>,
    },
    /// Fewer than k copies of `segment` are left: it cannot be rebuilt.
    Lost { segment: u64, healthy: usize },
    /// Copy each shard from its holder to a member the ranking prefers.
    /// Report the ones stored to [`commit`]; the old copies are released
    /// later, once the new manifest replaced the old one.
    Rebalance { moves: Vec<Move> },
    /// Release these owner references on `node` now (`Delete`). When it
    /// cannot be reached, keep them as pending releases.
    Release { node: NodeId, slots: Vec<ShardSlot> },
    /// The newest manifest places these copies on `node` again: forget the
    /// pending releases without sending them.
    DropPending { node: NodeId, slots: Vec<ShardSlot> },
    /// Send these members the tombstone of `generation` (`DeleteManifest`):
    /// they hold a replica of that generation or an older one.
    SendTombstone {
        to: Vec<NodeId>,
        generation: Generation,
    },
    /// Store `manifest` on each of `to`, in order. When this node is listed
    /// (always first) and its own store refuses the manifest (another
    /// member got there first), stop: the next round decides again.
    PushManifest { to: Vec<NodeId>, manifest: Manifest },
}

/// Members not `Down`, in the order that should hold `object`'s manifest
/// (the manifest ranking with `Suspect` members kept: a suspect member may
/// hold a later manifest, so it is asked, and blocks while it is silent).
pub fn ask_ranking<'a>(view: &'a View, object: &ObjectId) -> Vec<&'a NodeId> {
    view.ranking(
        PlacementKey::for_manifest(object),
        Weighting::Uniform,
        |m| m.state != MemberState::Down,
    )
}

/// The members whose `ManifestStates` [`plan_object`] needs about a replica
/// `m` held by `me`: every member ranked above `me` and the top r of
/// [`ask_ranking`], without `me`.
pub fn replicas_to_ask(view: &View, me: &NodeId, m: &Manifest) -> Vec<NodeId> {
    let ranking = ask_ranking(view, &m.object);
    let r = manifest_replicas(&m.geometry);
    let mine = ranking.iter().position(|n| *n == me).unwrap_or(0);
    let upto = mine.max(r).min(ranking.len());
    ranking[..upto]
        .iter()
        .filter(|n| **n != me)
        .map(|n| (*n).clone())
        .collect()
}

/// The members whose `ManifestStates` [`plan_releases`] needs: every member
/// not `Down`, without `me`. A later manifest may sit on any of them (a
/// replica written on the other side of a partition ranks below the top r
/// once the partition heals), and a release is final.
pub fn release_askees(view: &View, me: &NodeId) -> Vec<NodeId> {
    view.members()
        .iter()
        .filter(|m| m.state != MemberState::Down && m.id != *me)
        .map(|m| m.id.clone())
        .collect()
}

/// What a node knows about one object whose manifest replica it holds.
#[derive(Debug, Clone, Copy)]
pub struct ObjectInput<'a> {
    pub me: &'a NodeId,
    pub view: &'a View,
    pub now_ms: u64,
    /// The local replica.
    pub local: &'a Manifest,
    /// Generations of this object with a local tombstone.
    pub local_removed: &'a [Generation],
    /// `ManifestStates` of [`replicas_to_ask`]; a member missing here
    /// counts as not answering.
    pub replies: &'a Replies,
    /// The holders' answers after [`Action::CheckHolders`], per segment and
    /// shard position; `None` before they were asked.
    pub presence: Option<&'a [Vec<Presence>]>,
    /// Fill fraction (0..=1) of alive members with a known capacity.
    pub fill: &'a BTreeMap<NodeId, f64>,
    /// How many more moves this round may make.
    pub moves_left: usize,
}

/// Every generation some answer (or the local store) knows removed.
fn removed_generations<'a>(
    local: &'a [Generation],
    replies: &'a Replies,
) -> impl Iterator<Item = Generation> + 'a {
    local.iter().copied().chain(
        replies
            .values()
            .flatten()
            .flat_map(|s| s.removed.iter().copied()),
    )
}

/// The latest version held by a member that answered, and the first such
/// member in node order (so that every node fetches from the same one).
fn newest_reply(replies: &Replies) -> Option<(&NodeId, ManifestVersion)> {
    let mut best: Option<(&NodeId, ManifestVersion)> = None;
    for (n, s) in replies {
        if let Some(v) = s.as_ref().and_then(|s| s.held) {
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((n, v));
            }
        }
    }
    best
}

/// Release actions for every copy of `manifests`, grouped by holder.
fn release_all<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> Vec<Action> {
    let mut by_node: BTreeMap<NodeId, BTreeSet<ShardSlot>> = BTreeMap::new();
    for m in manifests {
        for (n, s) in m.slots() {
            by_node.entry(n.clone()).or_default().insert(s);
        }
    }
    by_node
        .into_iter()
        .map(|(node, slots)| Action::Release {
            node,
            slots: slots.into_iter().collect(),
        })
        .collect()
}

fn forget(input: &ObjectInput<'_>, cfg: &PlannerConfig, extra: Option<&Manifest>) -> Vec<Action> {
    let mut out = vec![Action::Forget {
        generation: input.local.generation,
        tombstone_until_ms: input.now_ms.saturating_add(cfg.tombstone_ttl_ms),
    }];
    out.extend(release_all(std::iter::once(input.local).chain(extra)));
    out
}

/// What the replica answers say about the local replica, before any holder
/// is asked: `Err(actions)` when that settles the round for this object.
fn settle(input: &ObjectInput<'_>, cfg: &PlannerConfig) -> Result<(), Vec<Action>> {
    let m = input.local;
    // A tombstone of this generation or a later one: the object as this
    // replica knows it was removed (a later generation supersedes this
    // one, so removing it removes the object), as `ManifestStore::remove`
    // drops a replica of the named generation or an older one. A put
    // takes a generation above every tombstone it sees
    // ([`put_generation`]), so a re-upload after `rm` is never touched.
    if removed_generations(input.local_removed, input.replies).any(|g| g >= m.generation) {
        return Err(forget(input, cfg, None));
    }
    let mine = m.version();
    if let Some((from, version)) = newest_reply(input.replies).filter(|(_, v)| *v > mine) {
        return Err(vec![Action::FetchNewer {
            from: from.clone(),
            version,
        }]);
    }
    let unanswered: Vec<NodeId> = replicas_to_ask(input.view, input.me, m)
        .into_iter()
        .filter(|n| !matches!(input.replies.get(n), Some(Some(_))))
        .collect();
    if !unanswered.is_empty() {
        return Err(vec![Action::Wait {
            reason: WaitReason::Unanswered(unanswered),
        }]);
    }
    let ranking = manifest_ranking(input.view, &m.object);
    let holds = |n: &NodeId| n == input.me || holds_version(input.replies, n, mine);
    let resp = responsible(&ranking, holds);
    if resp != Some(input.me) {
        let r = manifest_replicas(&m.geometry);
        let top: Vec<&NodeId> = ranking.iter().take(r).copied().collect();
        if top.len() == r && !top.contains(&input.me) && top.iter().all(|n| holds(n)) {
            return Err(vec![Action::DropSurplus]);
        }
        return Err(vec![Action::NotResponsible {
            responsible: resp.cloned(),
        }]);
    }
    Ok(())
}

/// Whether `n` answered holding exactly version `v`.
fn holds_version(replies: &Replies, n: &NodeId, v: ManifestVersion) -> bool {
    matches!(replies.get(n), Some(Some(s)) if s.held == Some(v))
}

/// Whether `node` is absent from the view or `Down` in it: it holds nothing.
fn gone(view: &View, node: &NodeId) -> bool {
    view.get(node).is_none_or(|m| m.state == MemberState::Down)
}

/// What a stripe needs, from the state of each of its positions; any `k`
/// of them rebuild the others. Pure and allocation-free: [`plan_object`]
/// calls it per segment, and `dynostore-sim scale` per repair, millions of
/// times. Nothing missing is [`StripePlan::Whole`] whatever k: there is
/// nothing to rebuild.
pub fn plan_stripe(k: usize, shards: impl IntoIterator<Item = ShardState>) -> StripePlan {
    let (mut readable, mut unreachable, mut missing) = (0usize, 0usize, 0usize);
    for s in shards {
        match s {
            ShardState::Readable => readable += 1,
            ShardState::Unreachable => unreachable += 1,
            ShardState::Missing => missing += 1,
        }
    }
    let healthy = readable + unreachable;
    if missing == 0 {
        StripePlan::Whole { unreachable }
    } else if healthy < k {
        StripePlan::Lost { healthy }
    } else if readable < k {
        StripePlan::Unreadable { missing, readable }
    } else {
        StripePlan::Rebuild { missing }
    }
}

/// A position's [`ShardState`] from its recorded holder and the holder's
/// answer. A holder `Down` or unknown holds nothing (this node is never
/// `Down` to itself); one that did not answer is presumed to hold its copy,
/// so that a hiccup starts no rebuild.
fn shard_state(input: &ObjectInput<'_>, holder: Option<&NodeId>, answer: Presence) -> ShardState {
    match (holder, answer) {
        (None, _) => ShardState::Missing,
        (Some(h), _) if h != input.me && gone(input.view, h) => ShardState::Missing,
        (Some(_), Presence::Present) => ShardState::Readable,
        (Some(_), Presence::NoAnswer) => ShardState::Unreachable,
        (Some(_), Presence::Absent) => ShardState::Missing,
    }
}

/// The holders to ask, each with the slots it should store.
fn holder_checks(input: &ObjectInput<'_>) -> Vec<(NodeId, Vec<ShardSlot>)> {
    let mut by_node: BTreeMap<NodeId, Vec<ShardSlot>> = BTreeMap::new();
    for (n, s) in input.local.slots() {
        if n == input.me || !gone(input.view, n) {
            by_node.entry(n.clone()).or_default().push(s);
        }
    }
    by_node.into_iter().collect()
}

/// Where a manifest goes: this node, the top r of the manifest ranking, and
/// every member that answered holding a replica.
fn push_targets(input: &ObjectInput<'_>) -> Vec<NodeId> {
    let r = manifest_replicas(&input.local.geometry);
    let mut to = vec![input.me.clone()];
    for n in manifest_ranking(input.view, &input.local.object)
        .into_iter()
        .take(r)
    {
        if !to.contains(n) {
            to.push(n.clone());
        }
    }
    for (n, s) in input.replies {
        if s.as_ref().is_some_and(|s| s.held.is_some()) && !to.contains(n) {
            to.push(n.clone());
        }
    }
    to
}

/// The local manifest again to the targets that do not hold it.
fn refresh_stale(input: &ObjectInput<'_>) -> Vec<Action> {
    let mine = input.local.version();
    let to: Vec<NodeId> = push_targets(input)
        .into_iter()
        .filter(|n| n != input.me && !holds_version(input.replies, n, mine))
        .collect();
    if to.is_empty() {
        return Vec::new();
    }
    vec![Action::PushManifest {
        to,
        manifest: input.local.clone(),
    }]
}

/// Decides what to do about one object whose replica this node holds.
///
/// Call it with `presence: None` first; when it answers
/// [`Action::CheckHolders`], ask the holders and call it again with their
/// answers. An empty answer means nothing to do.
pub fn plan_object(input: &ObjectInput<'_>, cfg: &PlannerConfig) -> Vec<Action> {
    if let Err(actions) = settle(input, cfg) {
        return actions;
    }
    let Some(presence) = input.presence else {
        return vec![Action::CheckHolders {
            holders: holder_checks(input),
        }];
    };
    let m = input.local;
    let k = usize::from(m.geometry.k);
    let mut out = Vec::new();
    let mut whole = true;
    for (s, seg) in m.segments.iter().enumerate() {
        let answers = presence.get(s);
        let state = |(i, e): (usize, &ShardEntry)| {
            let answer = answers
                .and_then(|a| a.get(i))
                .copied()
                .unwrap_or(Presence::NoAnswer);
            shard_state(input, m.holder(e), answer)
        };
        let segment = s as u64;
        match plan_stripe(k, seg.shards.iter().enumerate().map(state)) {
            StripePlan::Whole { unreachable } => {
                whole &= unreachable == 0;
                continue;
            }
            StripePlan::Lost { healthy } => out.push(Action::Lost { segment, healthy }),
            StripePlan::Unreadable { readable, .. } => out.push(Action::Wait {
                reason: WaitReason::Unreadable { segment, readable },
            }),
            StripePlan::Rebuild { .. } => {
                let mut missing: Vec<u16> = Vec::new();
                let mut keep: Vec<NodeId> = Vec::new();
                for (i, e) in seg.shards.iter().enumerate() {
                    match m.holder(e) {
                        Some(h) if state((i, e)) != ShardState::Missing => keep.push(h.clone()),
                        _ => missing.push(i as u16),
                    }
                }
                let key = PlacementKey::for_segment(&m.object, segment);
                // At most m shards of a stripe on volatile members.
                let targets = repair_targets(
                    input.view,
                    key,
                    missing.len(),
                    &keep,
                    usize::from(m.geometry.m),
                );
                let shards: Vec<(u16, NodeId)> = missing.into_iter().zip(targets).collect();
                if shards.is_empty() {
                    out.push(Action::Wait {
                        reason: WaitReason::NoTargets { segment },
                    });
                } else {
                    out.push(Action::Rebuild { segment, shards });
                }
            }
        }
        whole = false;
    }
    if whole && input.moves_left > 0 {
        let mut moves = Vec::new();
        for (s, seg) in m.segments.iter().enumerate() {
            let holders: Vec<NodeId> = seg
                .shards
                .iter()
                .filter_map(|e| m.holder(e).cloned())
                .collect();
            if holders.len() != seg.shards.len() {
                continue;
            }
            let key = PlacementKey::for_segment(&m.object, s as u64);
            let found = rebalance_moves(
                input.view,
                key,
                &holders,
                |n| input.fill.get(n).copied(),
                cfg.rebalance_margin,
                usize::from(m.geometry.m),
            );
            for (i, to) in found {
                if moves.len() == input.moves_left {
                    break;
                }
                moves.push(Move {
                    segment: s as u64,
                    index: i as u16,
                    from: holders[i].clone(),
                    to,
                });
            }
        }
        if !moves.is_empty() {
            out.push(Action::Rebalance { moves });
        }
    }
    let changes = out
        .iter()
        .any(|a| matches!(a, Action::Rebuild { .. } | Action::Rebalance { .. }));
    if !changes {
        out.extend(refresh_stale(input));
    }
    out
}

/// After the node executed [`Action::Rebuild`] and [`Action::Rebalance`]:
/// the new revision of the manifest with the copies in `placed` as their
/// slots' holders, pushed to this node first and then to every replica.
/// When nothing was placed, the stale replicas get the manifest as it is.
///
/// `input` is the one the rebuilds were planned from, with
/// `local_removed` read again: when the generation was removed meanwhile,
/// the copies just made are orphans, and everything is released instead.
/// Placements at positions the manifest does not have are ignored.
pub fn commit(input: &ObjectInput<'_>, cfg: &PlannerConfig, placed: &[Placed]) -> Vec<Action> {
    let mut m = input.local.clone();
    let mut changed = false;
    for p in placed {
        let Ok(segment) = usize::try_from(p.segment) else {
            continue;
        };
        let current = m
            .segments
            .get(segment)
            .and_then(|s| s.shards.get(usize::from(p.index)))
            .and_then(|e| m.holder(e));
        if current == Some(&p.node) {
            continue;
        }
        changed |= m.set_holder(segment, usize::from(p.index), &p.node);
    }
    if input
        .local_removed
        .iter()
        .any(|g| *g >= input.local.generation)
    {
        return forget(input, cfg, changed.then_some(&m));
    }
    if !changed {
        return refresh_stale(input);
    }
    m.compact_holders();
    m.revision = m.revision.saturating_add(1);
    vec![Action::PushManifest {
        to: push_targets(input),
        manifest: m,
    }]
}

/// What a node knows about one object it has pending releases for.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseInput<'a> {
    pub me: &'a NodeId,
    pub view: &'a View,
    pub object: ObjectId,
    /// The local replica, if any.
    pub local: Option<&'a Manifest>,
    /// Generations of this object with a local tombstone.
    pub local_removed: &'a [Generation],
    /// A manifest fetched after [`Action::FetchNewer`].
    pub fetched: Option<&'a Manifest>,
    /// `ManifestStates` of [`release_askees`]; a member missing here counts
    /// as not answering.
    pub replies: &'a Replies,
    /// The pending releases of this object: `(holder, slot)`.
    pub pending: &'a [(NodeId, ShardSlot)],
}

/// Decides the pending releases of one object: [`Action::Release`] for the
/// ones to send now, [`Action::DropPending`] for the ones the newest
/// manifest places again, nothing for the ones that wait; first
/// [`Action::FetchNewer`] when a later manifest than the ones in hand
/// exists. Releases go only to members `Alive` in the view (or this node).
pub fn plan_releases(input: &ReleaseInput<'_>) -> Vec<Action> {
    let mut out = Vec::new();
    let pending: Vec<&(NodeId, ShardSlot)> = input
        .pending
        .iter()
        .filter(|(_, s)| s.owner.object == input.object)
        .collect();
    if pending.is_empty() {
        return out;
    }
    let removed: Vec<Generation> =
        removed_generations(input.local_removed, input.replies).collect();
    let answered_all = release_askees(input.view, input.me)
        .iter()
        .all(|n| matches!(input.replies.get(n), Some(Some(_))));
    let in_hand = [input.local, input.fetched]
        .into_iter()
        .flatten()
        .filter(|m| m.object == input.object)
        .max_by_key(|m| m.version());
    let newest_known = newest_reply(input.replies)
        .map(|(n, v)| (Some(n), v))
        .into_iter()
        .chain(in_hand.map(|m| (None, m.version())))
        .max_by_key(|(_, v)| *v);
    // The newest manifest counts only when it is in hand: a later version
    // known by number alone can place anything anywhere.
    let mut newest = in_hand;
    if let Some((Some(from), version)) = newest_known {
        if in_hand.is_none_or(|m| m.version() != version) {
            newest = None;
            out.push(Action::FetchNewer {
                from: from.clone(),
                version,
            });
        }
    }
    let confirmed = Confirmed {
        complete: answered_all && newest.map(Manifest::version) == newest_known.map(|(_, v)| v),
        newest: newest.cloned(),
        removed,
    };
    let mut send: BTreeMap<NodeId, Vec<ShardSlot>> = BTreeMap::new();
    let mut drop: BTreeMap<NodeId, Vec<ShardSlot>> = BTreeMap::new();
    for (node, slot) in pending {
        match decide_release(Some(&confirmed), node, slot) {
            ReleaseDecision::Send => {
                let alive = node == input.me
                    || input
                        .view
                        .get(node)
                        .is_some_and(|m| m.state == MemberState::Alive);
                if alive {
                    send.entry(node.clone()).or_default().push(*slot);
                }
            }
            ReleaseDecision::Drop => drop.entry(node.clone()).or_default().push(*slot),
            ReleaseDecision::Wait => {}
        }
    }
    out.extend(
        send.into_iter()
            .map(|(node, slots)| Action::Release { node, slots }),
    );
    out.extend(
        drop.into_iter()
            .map(|(node, slots)| Action::DropPending { node, slots }),
    );
    out
}

/// The members a tombstone holder asks about `object`: the top
/// [`MAX_REPLICAS_ASKED`] of [`ask_ranking`], without `me` (the geometry,
/// hence r, is not known without a manifest).
pub fn tombstone_askees(view: &View, me: &NodeId, object: &ObjectId) -> Vec<NodeId> {
    ask_ranking(view, object)
        .into_iter()
        .filter(|n| *n != me)
        .take(MAX_REPLICAS_ASKED)
        .cloned()
        .collect()
}

/// Spreads a tombstone of `object`'s `generation` held by this node: every
/// member of [`tombstone_askees`] that answered holding a replica of that
/// generation or an older one, and no tombstone as late, gets it.
///
/// Why: `rm` leaves tombstones on the members it reaches; a replica on the
/// other side of a partition learns of the removal only from a member it
/// asks, and a replica ranked first asks only the top r. Without this, such
/// a replica stays responsible and re-replicates a removed object.
pub fn plan_tombstone(
    view: &View,
    me: &NodeId,
    object: &ObjectId,
    generation: Generation,
    replies: &Replies,
) -> Vec<Action> {
    let to: Vec<NodeId> = tombstone_askees(view, me, object)
        .into_iter()
        .filter(|n| {
            matches!(replies.get(n), Some(Some(s))
                if s.held.is_some_and(|v| v.generation <= generation)
                    && !s.removed.iter().any(|g| *g >= generation))
        })
        .collect();
    if to.is_empty() {
        return Vec::new();
    }
    vec![Action::SendTombstone { to, generation }]
}

/// The generation a put takes at `now_ms` (with a random `nonce`): above
/// every generation of the object it saw, held (`ManifestStates.held`) or
/// removed (`ManifestStates.removed`). Raising above the tombstones too is
/// what keeps an upload after `rm` out of the tombstone's reach: a
/// tombstone removes its generation and every older one.
pub fn put_generation(
    now_ms: u64,
    seen: impl IntoIterator<Item = Generation>,
    nonce: u64,
) -> Generation {
    Generation::next(now_ms, seen.into_iter().max(), nonce)
}
