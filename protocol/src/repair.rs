//! Repair planning: who repairs an object, which shards are missing, and
//! where the rebuilt ones go. Pure functions of a [`View`] and what the
//! caller observed; the node does the IO, the scale simulator runs the same
//! code.
//!
//! Responsibility. An object's manifest replicas belong on the first `r`
//! alive members of its manifest ranking (uniform weights, see
//! [`manifest_ranking`]). The member responsible for the object's health is
//! the first member *in that ranking* that actually holds a replica
//! ([`responsible`]). In a stable view exactly one member qualifies; when it
//! dies, the next holder in the ranking takes over with no message
//! exchanged, and when a new member joins at the top, it becomes
//! responsible as soon as the current one has copied the manifest to it.
//!
//! Targets. A rebuilt shard goes to the best-ranked eligible member (alive,
//! with room) of the stripe's weighted ranking that holds no other shard of
//! the stripe, preferring sites the stripe does not use yet
//! ([`repair_targets`]), so that repair keeps the write-time invariants:
//! distinct nodes, distinct sites first, and at most `m` shards of a stripe
//! on volatile members (see [`crate::placement`]). Rebalancing
//! ([`rebalance_moves`]) restores the placement at even fill
//! ([`Weighting::Capacity`]) only where fills differ by a margin, keeps
//! that cap too, and moves a stripe that holds more than `m` volatile shards
//! (written before a member became volatile, or by an older writer) onto
//! durable members regardless of fill.

use std::collections::HashSet;

use crate::erasure::Geometry;
use crate::ids::{NodeId, ObjectId};
use crate::manifest::{Generation, Manifest, ShardSlot};
use crate::placement::{eligible_for_writes, MemberState, PlacementKey, View, Weighting};

/// What the top replicas of one object said about it, as a node gathered
/// it before deciding on a release.
#[derive(Debug, Clone, Default)]
pub struct Confirmed {
    /// The newest manifest found, if any replica holds one.
    pub newest: Option<Manifest>,
    /// Generations some replica knows removed.
    pub removed: Vec<Generation>,
    /// Every replica asked answered, and the newest held version was
    /// fetched.
    pub complete: bool,
}

/// What to do with a pending release of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseDecision {
    /// Release the reference now.
    Send,
    /// The newest manifest places that copy there again: forget the release.
    Drop,
    /// Not enough is known (a replica did not answer): ask again later.
    Wait,
}

/// Decides a pending release of `slot` on `node` from what the replicas
/// said. The invariant: `Send` only when the slot's generation is known
/// removed, or when every replica answered and the newest manifest does
/// not place that slot on that node. Unreachable replicas never count as
/// "absent".
pub fn decide_release(c: Option<&Confirmed>, node: &NodeId, slot: &ShardSlot) -> ReleaseDecision {
    let Some(c) = c else {
        return ReleaseDecision::Wait;
    };
    if c.removed.contains(&slot.owner.generation) {
        return ReleaseDecision::Send;
    }
    match &c.newest {
        Some(m) if m.places(node, slot) => ReleaseDecision::Drop,
        Some(_) | None if c.complete => ReleaseDecision::Send,
        _ => ReleaseDecision::Wait,
    }
}

/// Alive members in the order that should hold `object`'s manifest.
pub fn manifest_ranking<'a>(view: &'a View, object: &ObjectId) -> Vec<&'a NodeId> {
    view.ranking(
        PlacementKey::for_manifest(object),
        Weighting::Uniform,
        |m| m.state == MemberState::Alive,
    )
}

/// Number of manifest replicas for a geometry: `m + 1`, so that the
/// manifest survives as many losses as the data.
pub fn manifest_replicas(g: &Geometry) -> usize {
    usize::from(g.m) + 1
}

/// The member responsible for an object: the first in `ranking` for which
/// `holds` is true.
pub fn responsible<'a>(
    ranking: &[&'a NodeId],
    holds: impl Fn(&NodeId) -> bool,
) -> Option<&'a NodeId> {
    ranking.iter().copied().find(|n| holds(n))
}

/// Targets for `count` rebuilt shards of the stripe `key`. `keep` are the
/// members that hold a healthy shard of the stripe (never chosen). The
/// stripe ends with at most `max_volatile` shards on volatile members
/// (those in `keep` count; a volatile candidate is passed over once the
/// cap is reached). Fewer than `count` when too few members are eligible.
pub fn repair_targets(
    view: &View,
    key: PlacementKey,
    count: usize,
    keep: &[NodeId],
    max_volatile: usize,
) -> Vec<NodeId> {
    // Most stripes find their targets among members of unused sites near
    // the head of the ranking: try the head first. When its first pass
    // (unused sites) fills every target, the full ranking's first pass
    // picks the same ones, as it walks the same prefix.
    let head_len = (4 * (count + keep.len())).max(32);
    let head = view.ranking_head(key, Weighting::Weighted, eligible_for_writes, head_len);
    let whole = head.len() < head_len;
    let (chosen, by_site) = pick_targets(view, &head, count, keep, max_volatile);
    if whole || by_site {
        return chosen;
    }
    let all = view.ranking(key, Weighting::Weighted, eligible_for_writes);
    pick_targets(view, &all, count, keep, max_volatile).0
}

/// The two passes of [`repair_targets`] over `ranked` candidates; also
/// whether the first pass alone found all `count`.
fn pick_targets(
    view: &View,
    ranked: &[&NodeId],
    count: usize,
    keep: &[NodeId],
    max_volatile: usize,
) -> (Vec<NodeId>, bool) {
    let mut volatile = keep.iter().filter(|id| view.is_volatile(id)).count();
    let mut fits = |id: &NodeId| {
        if !view.is_volatile(id) {
            return true;
        }
        if volatile >= max_volatile {
            return false;
        }
        volatile += 1;
        true
    };
    let used_sites: HashSet<&str> = keep
        .iter()
        .filter_map(|id| view.get(id).map(|m| m.site.as_str()))
        .collect();
    let candidates: Vec<&NodeId> = ranked
        .iter()
        .copied()
        .filter(|id| !keep.contains(id))
        .collect();
    let mut chosen: Vec<NodeId> = Vec::with_capacity(count);
    let mut sites = used_sites;
    // First pass: members of sites the stripe does not use yet.
    for id in &candidates {
        if chosen.len() == count {
            break;
        }
        if let Some(m) = view.get(id) {
            if !sites.contains(m.site.as_str()) && fits(id) {
                sites.insert(m.site.as_str());
                chosen.push((*id).clone());
            }
        }
    }
    let by_site = chosen.len() == count;
    // Then anyone, in ranking order.
    for id in &candidates {
        if chosen.len() == count {
            break;
        }
        if !chosen.contains(id) && fits(id) {
            chosen.push((*id).clone());
        }
    }
    (chosen, by_site)
}

/// Rebalancing moves for one stripe: `(shard index, new holder)` pairs.
///
/// The stripe's desired holders are what [`View::place`] picks by
/// [`Weighting::Capacity`]: the placement at even fill, which changes with
/// membership and capacity, not with every write (new shards are placed by
/// the fill-corrected [`Weighting::Weighted`], so most stripes sit a little
/// off it, and that is fine). A shard whose holder is not desired moves to
/// a desired member that holds none of the stripe, but only when that
/// member's fill fraction (0..=1, from `fill`) is below the holder's by
/// more than the relative `margin` (`to < from * (1 - margin)`). So a
/// shard moves only towards a fixed target and never back: after a join a
/// stripe moves at most the shards the joiners displaced from its desired
/// set (their fair share), even when fills are announced late, and while
/// fills are even nothing moves at all. The caller copies first and deletes
/// after, so the stripe never drops below k + m.
///
/// Volatile members: the desired holders have at most `max_volatile` of
/// them ([`View::place_capped`]); no move raises the stripe's volatile
/// count above `max_volatile`, and while the stripe has more than that, a
/// volatile holder that is not desired moves to a durable desired member
/// whatever the fill.
pub fn rebalance_moves(
    view: &View,
    key: PlacementKey,
    holders: &[NodeId],
    fill: impl Fn(&NodeId) -> Option<f64>,
    margin: f64,
    max_volatile: usize,
) -> Vec<(usize, NodeId)> {
    let desired: Vec<&NodeId> =
        view.place_capped(key, holders.len(), Weighting::Capacity, max_volatile);
    rebalance_moves_towards(
        &desired,
        holders,
        |id| view.is_volatile(id),
        fill,
        margin,
        max_volatile,
    )
}

/// [`rebalance_moves`] with the stripe's desired holders already known
/// (`desired`: what `view.place_capped(key, holders.len(),
/// Weighting::Capacity, max_volatile)` returns, and `is_volatile`:
/// [`View::is_volatile`] of that view). The rule itself, for a caller that
/// ranks many stripes against one membership and keeps their desired
/// holders between passes (the scale model): the ranking changes only with
/// membership, capacity and eligibility, not with fills.
pub fn rebalance_moves_towards(
    desired: &[&NodeId],
    holders: &[NodeId],
    is_volatile: impl Fn(&NodeId) -> bool,
    fill: impl Fn(&NodeId) -> Option<f64>,
    margin: f64,
    max_volatile: usize,
) -> Vec<(usize, NodeId)> {
    let mut free_targets: Vec<&NodeId> = desired
        .iter()
        .copied()
        .filter(|d| !holders.contains(d))
        .collect();
    let mut volatile = holders.iter().filter(|h| is_volatile(h)).count();
    let mut moves = Vec::new();
    for (i, h) in holders.iter().enumerate() {
        if desired.contains(&h) || free_targets.is_empty() {
            continue;
        }
        let from_volatile = is_volatile(h);
        let pos = if from_volatile && volatile > max_volatile {
            free_targets.iter().position(|t| !is_volatile(t))
        } else {
            let Some(from) = fill(h) else { continue };
            free_targets.iter().position(|t| {
                let allowed = from_volatile || !is_volatile(t) || volatile < max_volatile;
                allowed && fill(t).is_some_and(|to| to < from * (1.0 - margin))
            })
        };
        if let Some(pos) = pos {
            let t = free_targets.remove(pos);
            volatile = volatile - usize::from(from_volatile) + usize::from(is_volatile(t));
            moves.push((i, t.clone()));
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Member;

    fn node(i: u8) -> NodeId {
        NodeId::from_bytes(vec![0, 36, 8, 1, 18, 32, i]).unwrap()
    }

    fn view(states: &[(u8, &str, MemberState)]) -> View {
        View::new(states.iter().map(|(i, site, st)| Member {
            id: node(*i),
            site: site.to_string(),
            weight: 100,
            state: *st,
            volatile: false,
        }))
    }

    #[test]
    fn responsibility_passes_down_the_ranking() {
        let v = view(&[
            (1, "a", MemberState::Alive),
            (2, "b", MemberState::Alive),
            (3, "c", MemberState::Alive),
            (4, "d", MemberState::Alive),
        ]);
        let obj = ObjectId::of(b"x");
        let ranking = manifest_ranking(&v, &obj);
        assert_eq!(ranking.len(), 4);
        let holders = [ranking[1].clone(), ranking[2].clone()];
        assert_eq!(
            responsible(&ranking, |n| holders.contains(n)),
            Some(ranking[1])
        );
        // The responsible one dies: the next holder takes over.
        let dead = ranking[1].clone();
        let v2 = View::new(v.members().iter().cloned().map(|mut m| {
            if m.id == dead {
                m.state = MemberState::Down;
            }
            m
        }));
        let r2 = manifest_ranking(&v2, &obj);
        assert!(!r2.contains(&&dead));
        assert_eq!(responsible(&r2, |n| holders.contains(n)), Some(&holders[1]));
    }

    #[test]
    fn rebalance_moves_only_to_emptier_desired_members() {
        let v = view(&[
            (1, "a", MemberState::Alive),
            (2, "b", MemberState::Alive),
            (3, "c", MemberState::Alive),
        ]);
        let key = PlacementKey(7);
        let desired: Vec<NodeId> = v
            .place(key, 2, Weighting::Weighted)
            .into_iter()
            .cloned()
            .collect();
        let outsider = [node(1), node(2), node(3)]
            .into_iter()
            .find(|n| !desired.contains(n))
            .unwrap();
        // Holders: one desired member and the outsider.
        let holders = vec![desired[0].clone(), outsider.clone()];
        let full = |n: &NodeId| Some(if *n == outsider { 0.9 } else { 0.1 });
        let moves = rebalance_moves(&v, key, &holders, full, 0.1, 2);
        assert_eq!(moves, vec![(1, desired[1].clone())]);
        // Not worth it when the target is about as full.
        let even = |_: &NodeId| Some(0.5);
        assert!(rebalance_moves(&v, key, &holders, even, 0.1, 2).is_empty());
        // Nothing to do when the holders are the desired ones.
        assert!(rebalance_moves(&v, key, &desired, full, 0.1, 2).is_empty());
    }

    #[test]
    fn targets_avoid_holders_and_prefer_new_sites() {
        let v = view(&[
            (1, "a", MemberState::Alive),
            (2, "a", MemberState::Alive),
            (3, "b", MemberState::Alive),
            (4, "c", MemberState::Alive),
            (5, "c", MemberState::Down),
        ]);
        let key = PlacementKey(42);
        let keep = vec![node(1), node(3)];
        let t = repair_targets(&v, key, 2, &keep, 2);
        assert_eq!(t.len(), 2);
        assert!(!t.contains(&node(1)) && !t.contains(&node(3)) && !t.contains(&node(5)));
        // Site c is unused by the stripe, so node 4 comes first.
        assert_eq!(t[0], node(4));
        assert_eq!(repair_targets(&v, key, 5, &keep, 2).len(), 2);
    }
}
