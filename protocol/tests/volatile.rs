//! Volatile members (issue 10): no stripe relies on more than `m` shards
//! held in memory. Placement, repair targets and rebalancing each keep the
//! cap whenever the view allows it, and a placement the view cannot give
//! is an error, never a short or over-volatile stripe.

use std::collections::HashSet;

use dynostore_protocol::placement::{
    place_stripe, stripe_fits, unit, Member, MemberState, PlacementError, PlacementKey, View,
    Weighting,
};
use dynostore_protocol::repair::{rebalance_moves, repair_targets};
use dynostore_protocol::wire::{Announcement, ContainerReport, Load, ANNOUNCEMENT_VERSION};
use dynostore_protocol::NodeId;
use proptest::prelude::*;

fn node(i: u32) -> NodeId {
    let mut b = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    b.extend_from_slice(blake3::hash(&i.to_le_bytes()).as_bytes());
    NodeId::from_bytes(b).unwrap()
}

fn arb_members() -> impl Strategy<Value = Vec<Member>> {
    proptest::collection::vec(
        (0u32..300, 0u8..5, 0u64..1_000_000, 0u8..10, any::<bool>()),
        1..60,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(i, s, w, st, volatile)| Member {
                id: node(i),
                site: format!("site-{s}"),
                weight: w,
                state: match st {
                    0 => MemberState::Suspect,
                    1 => MemberState::Down,
                    _ => MemberState::Alive,
                },
                volatile,
            })
            .collect()
    })
}

fn volatile_count(view: &View, ids: &[NodeId]) -> usize {
    ids.iter().filter(|id| view.is_volatile(id)).count()
}

/// The literal capped placement: full sort, first of each site unless the
/// cap forbids it, then fill in ranking order, volatile ones only under
/// the cap.
fn naive_capped(members: &[Member], key: PlacementKey, n: usize, cap: usize) -> Vec<NodeId> {
    let mut scored: Vec<(f64, &Member)> = members
        .iter()
        .filter(|m| m.state == MemberState::Alive && m.weight > 0)
        .map(|m| {
            let h = blake3::hash(m.id.as_bytes());
            let h = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap());
            (m.weight as f64 / -(unit(key.0 ^ h).ln()), m)
        })
        .collect();
    scored.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.id.cmp(&b.1.id)));
    let all_sites: HashSet<&str> = scored.iter().map(|(_, m)| m.site.as_str()).collect();
    let want_sites = n.min(all_sites.len());
    let mut chosen: Vec<&Member> = Vec::new();
    let mut sites = HashSet::new();
    let mut volatile = 0;
    for (_, m) in &scored {
        if chosen.len() == n || sites.len() == want_sites {
            break;
        }
        if sites.contains(m.site.as_str()) || (m.volatile && volatile >= cap) {
            continue;
        }
        volatile += usize::from(m.volatile);
        sites.insert(m.site.as_str());
        chosen.push(m);
    }
    for (_, m) in &scored {
        if chosen.len() == n {
            break;
        }
        if chosen.iter().any(|c| c.id == m.id) || (m.volatile && volatile >= cap) {
            continue;
        }
        volatile += usize::from(m.volatile);
        chosen.push(m);
    }
    scored
        .iter()
        .filter(|(_, m)| chosen.iter().any(|c| c.id == m.id))
        .map(|(_, m)| m.id.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A stripe never has more than `m` volatile holders; it has its `n`
    /// distinct holders whenever the eligible members allow it, and is an
    /// error otherwise.
    #[test]
    fn stripes_hold_at_most_m_volatile_shards(members in arb_members(), k in any::<u64>(), data in 1usize..8, m in 0usize..5) {
        let view = View::new(members);
        let n = data + m;
        let (durable, volatile) = view.eligible_split();
        let feasible = durable + volatile.min(m) >= n;
        prop_assert_eq!(stripe_fits(&view, n, m).is_ok(), feasible);
        match place_stripe(&view, PlacementKey(k), n, m) {
            Ok(picks) => {
                prop_assert!(feasible);
                prop_assert_eq!(picks.len(), n);
                let distinct: HashSet<&NodeId> = picks.iter().collect();
                prop_assert_eq!(distinct.len(), n);
                prop_assert!(volatile_count(&view, &picks) <= m);
                for p in &picks {
                    let mem = view.get(p).unwrap();
                    prop_assert!(mem.state == MemberState::Alive && mem.weight > 0);
                }
            }
            Err(PlacementError::NotEnoughDurable { needed, max_volatile, .. }) => {
                prop_assert!(!feasible);
                prop_assert_eq!((needed, max_volatile), (n, m));
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    /// The capped placement is the literal one, and equals the uncapped
    /// placement whenever that already respects the cap.
    #[test]
    fn capped_placement_agrees_with_the_oracle(members in arb_members(), k in any::<u64>(), n in 1usize..12, cap in 0usize..6) {
        let view = View::new(members);
        let got: Vec<NodeId> = view
            .place_capped(PlacementKey(k), n, Weighting::Weighted, cap)
            .into_iter()
            .cloned()
            .collect();
        prop_assert_eq!(&got, &naive_capped(view.members(), PlacementKey(k), n, cap));
        let free: Vec<NodeId> = view.place(PlacementKey(k), n, Weighting::Weighted).into_iter().cloned().collect();
        if volatile_count(&view, &free) <= cap {
            prop_assert_eq!(got, free);
        }
    }

    /// Rebuilt shards never take a stripe above `m` volatile holders, and
    /// fill every missing position when enough durable members exist.
    #[test]
    fn repair_targets_keep_the_cap(members in arb_members(), k in any::<u64>(), keep_n in 0usize..6, missing in 1usize..4, m in 0usize..4) {
        let view = View::new(members);
        let alive: Vec<NodeId> = view.members().iter().filter(|x| x.state == MemberState::Alive).map(|x| x.id.clone()).collect();
        let keep: Vec<NodeId> = alive.iter().take(keep_n).cloned().collect();
        let kept_volatile = volatile_count(&view, &keep);
        let targets = repair_targets(&view, PlacementKey(k), missing, &keep, m);
        prop_assert!(targets.len() <= missing);
        prop_assert!(targets.iter().all(|t| !keep.contains(t)));
        let after = volatile_count(&view, &targets) + kept_volatile;
        prop_assert!(after <= m.max(kept_volatile));
        if kept_volatile > m {
            prop_assert_eq!(volatile_count(&view, &targets), 0);
        }
        // Enough durable candidates: every missing shard gets a target.
        let durable_free = view
            .members()
            .iter()
            .filter(|x| x.state == MemberState::Alive && x.weight > 0 && !x.volatile && !keep.contains(&x.id))
            .count();
        if durable_free >= missing {
            prop_assert_eq!(targets.len(), missing);
        }
    }

    /// Rebalancing never raises a stripe's volatile count above `m`, and
    /// lowers it when it is above `m` and a durable desired member is free.
    #[test]
    fn rebalance_keeps_or_restores_the_cap(members in arb_members(), k in any::<u64>(), n in 2usize..7, m in 0usize..3, fills in proptest::collection::vec(0u8..=100, 60)) {
        let view = View::new(members);
        let alive: Vec<NodeId> = view.members().iter().filter(|x| x.state == MemberState::Alive).map(|x| x.id.clone()).collect();
        prop_assume!(alive.len() >= n);
        // Holders: the n most volatile-heavy alive members, to start over the cap often.
        let mut holders: Vec<NodeId> = alive.clone();
        holders.sort_by_key(|h| !view.is_volatile(h));
        holders.truncate(n);
        let fill = |id: &NodeId| {
            let i = view.members().iter().position(|x| x.id == *id)?;
            Some(f64::from(fills[i % fills.len()]) / 100.0)
        };
        let before = volatile_count(&view, &holders);
        let moves = rebalance_moves(&view, PlacementKey(k), &holders, fill, 0.1, m);
        let mut after = holders.clone();
        for (i, t) in &moves {
            prop_assert!(!holders.contains(t));
            after[*i] = t.clone();
        }
        let distinct: HashSet<&NodeId> = after.iter().collect();
        prop_assert_eq!(distinct.len(), n);
        let now = volatile_count(&view, &after);
        prop_assert!(now <= m.max(before));
        if before > m {
            prop_assert!(now <= before);
        }
    }
}

fn container(kind: &str, capacity: u64, free: u64) -> ContainerReport {
    ContainerReport {
        name: format!("{kind}-{capacity}"),
        kind: kind.into(),
        capacity_bytes: capacity,
        free_bytes: free,
    }
}

fn announcement(containers: Vec<ContainerReport>) -> Announcement {
    Announcement {
        version: ANNOUNCEMENT_VERSION,
        node: node(1),
        site: "s".into(),
        addrs: vec![],
        containers,
        load: Load::default(),
        software: "t".into(),
        seq: 1,
        cert: None,
        revocations: 0,
    }
}

#[test]
fn announcements_say_which_members_are_volatile() {
    // Memory only: volatile, weighted by all its free space.
    let a = announcement(vec![container("memory", 100, 100)]);
    assert!(a.is_volatile());
    assert_eq!(a.placement_free_bytes(), 100);
    // A directory or a bucket: durable.
    for kind in ["fs", "s3", "webdav", "sftp"] {
        assert!(!announcement(vec![container(kind, 100, 40)]).is_volatile());
    }
    // Mixed with an empty memory container: durable, weighted by the
    // durable free space only (where its new shards go).
    let a = announcement(vec![container("fs", 100, 40), container("memory", 50, 50)]);
    assert!(!a.is_volatile());
    assert_eq!(a.placement_free_bytes(), 40);
    assert_eq!(a.placement_space().capacity_bytes, 100);
    // Mixed with anything in memory: volatile.
    let a = announcement(vec![container("fs", 100, 40), container("memory", 50, 49)]);
    assert!(a.is_volatile());
    assert_eq!(a.placement_free_bytes(), 89);
    assert_eq!(a.placement_space().capacity_bytes, 150);
    // A kind this build does not know counts as volatile.
    assert!(announcement(vec![container("tape?", 100, 100)]).is_volatile());
    // No container with capacity: volatile (and weight 0 anyway).
    assert!(announcement(vec![container("fs", 0, 0)]).is_volatile());
}

#[test]
fn a_short_view_is_an_error_that_says_why() {
    let members: Vec<Member> = (0..6)
        .map(|i| Member {
            id: node(i),
            site: format!("site-{}", i % 3),
            weight: 1000,
            state: MemberState::Alive,
            volatile: i >= 2,
        })
        .collect();
    let view = View::new(members);
    // 2 durable + 4 volatile: 2+2 fits (two of each), 3+2 does not.
    let picks = place_stripe(&view, PlacementKey(9), 4, 2).unwrap();
    assert_eq!(volatile_count(&view, &picks), 2);
    let err = place_stripe(&view, PlacementKey(9), 5, 2).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("needs 3 durable") && text.contains("2 durable and 4 memory-backed"),
        "{text}"
    );
}
