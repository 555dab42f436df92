//! Properties of weighted rendezvous placement, checked against a naive
//! oracle that scores every member, sorts them all and spreads over sites in
//! the most literal way.

use std::collections::{HashMap, HashSet};

use dynostore_protocol::placement::{unit, Member, MemberState, PlacementKey, View, Weighting};
use dynostore_protocol::{NodeId, ObjectId};
use proptest::prelude::*;

fn node(i: u32) -> NodeId {
    // Shaped like an ed25519 PeerId: identity multihash prefix + 32 bytes.
    let mut b = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    b.extend_from_slice(blake3::hash(&i.to_le_bytes()).as_bytes());
    NodeId::from_bytes(b).unwrap()
}

fn member(i: u32, site: &str, weight: u64) -> Member {
    Member {
        id: node(i),
        site: site.to_string(),
        weight,
        state: MemberState::Alive,
        volatile: false,
    }
}

fn key(i: u64) -> PlacementKey {
    PlacementKey::for_segment(&ObjectId::of(&i.to_le_bytes()), i % 7)
}

/// The oracle: literal formula, full sort, two passes.
fn naive_place(members: &[Member], key: PlacementKey, n: usize, uniform: bool) -> Vec<NodeId> {
    let mut scored: Vec<(f64, &Member)> = members
        .iter()
        .filter(|m| m.state == MemberState::Alive && m.weight > 0)
        .map(|m| {
            let h = blake3::hash(m.id.as_bytes());
            let h = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap());
            let w = if uniform { 1.0 } else { m.weight as f64 };
            (w / -(unit(key.0 ^ h).ln()), m)
        })
        .collect();
    scored.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.id.cmp(&b.1.id)));
    let mut chosen: Vec<&Member> = Vec::new();
    let mut sites = HashSet::new();
    for (_, m) in &scored {
        if chosen.len() < n && sites.insert(m.site.clone()) {
            chosen.push(m);
        }
    }
    for (_, m) in &scored {
        if chosen.len() < n && !chosen.iter().any(|c| c.id == m.id) {
            chosen.push(m);
        }
    }
    // Ranking order.
    scored
        .iter()
        .filter(|(_, m)| chosen.iter().any(|c| c.id == m.id))
        .map(|(_, m)| m.id.clone())
        .collect()
}

fn ids(v: Vec<&NodeId>) -> Vec<NodeId> {
    v.into_iter().cloned().collect()
}

#[test]
fn first_choice_shares_follow_weights() {
    // 16 nodes weighted 1:2:4:8, four of each, 100,000 keys.
    let members: Vec<Member> = (0..16)
        .map(|i| member(i, &format!("site-{}", i % 4), 1 << (i / 4)))
        .collect();
    let total: u64 = members.iter().map(|m| m.weight).sum();
    let view = View::new(members.clone());
    let keys = 100_000u64;
    let mut picks: HashMap<NodeId, u64> = HashMap::new();
    for k in 0..keys {
        let first = view.place(key(k), 1, Weighting::Weighted)[0].clone();
        *picks.entry(first).or_default() += 1;
    }
    for m in &members {
        let expected = keys as f64 * m.weight as f64 / total as f64;
        let got = picks.get(&m.id).copied().unwrap_or(0) as f64;
        let rel = (got - expected).abs() / expected;
        assert!(
            rel < 0.05,
            "node {} weight {}: {got} picks, expected {expected:.0} ({:.1}% off)",
            m.id.short(),
            m.weight,
            rel * 100.0
        );
    }
}

#[test]
fn removing_a_node_moves_only_its_keys() {
    let members: Vec<Member> = (0..20)
        .map(|i| member(i, &format!("site-{}", i % 5), 100 + 37 * u64::from(i)))
        .collect();
    let full = View::new(members.clone());
    let gone = node(7);
    let reduced = View::new(members.iter().filter(|m| m.id != gone).cloned());
    let n = 6;
    let mut moved = 0;
    for k in 0..20_000 {
        let before = ids(full.place(key(k), n, Weighting::Weighted));
        let after = ids(reduced.place(key(k), n, Weighting::Weighted));
        if before.contains(&gone) {
            moved += 1;
            // Exactly the lost member is replaced.
            let kept: Vec<_> = before.iter().filter(|x| **x != gone).collect();
            assert!(kept.iter().all(|x| after.contains(x)), "key {k}");
        } else {
            assert_eq!(
                before, after,
                "key {k} changed although it did not use the node"
            );
        }
    }
    assert!(moved > 0);
}

#[test]
fn adding_a_node_moves_about_its_fair_share() {
    let n = 6;
    let keys = 20_000u64;
    let members: Vec<Member> = (0..20)
        .map(|i| member(i, &format!("site-{}", i % 4), 1000))
        .collect();
    let before = View::new(members.clone());
    let mut grown = members.clone();
    grown.push(member(20, "site-1", 1000));
    let after = View::new(grown);
    let mut changed = 0u64;
    for k in 0..keys {
        let a = ids(before.place(key(k), n, Weighting::Weighted));
        let b = ids(after.place(key(k), n, Weighting::Weighted));
        let a_set: HashSet<_> = a.iter().collect();
        let b_set: HashSet<_> = b.iter().collect();
        if a_set != b_set {
            changed += 1;
            // Every change is the new node displacing exactly one member.
            assert!(b.contains(&node(20)));
            assert_eq!(a_set.difference(&b_set).count(), 1);
        }
    }
    let ideal = keys as f64 * n as f64 / 21.0;
    let ratio = changed as f64 / ideal;
    assert!(
        ratio <= 1.2,
        "moved {changed} keys, {ratio:.2}x the ideal {ideal:.0}"
    );
    assert!(ratio >= 0.5, "new node received almost nothing: {changed}");
}

#[test]
fn sites_are_spread_and_nodes_distinct() {
    // 4 sites of very unequal weight: the heavy site must not take two
    // shards while another site has none.
    let mut members: Vec<Member> = (0..12).map(|i| member(i, "heavy", 1_000_000)).collect();
    members.extend((12..15).map(|i| member(i, &format!("light-{i}"), 1)));
    let view = View::new(members.clone());
    for k in 0..2000 {
        let picks = view.place(key(k), 6, Weighting::Weighted);
        let distinct: HashSet<_> = picks.iter().collect();
        assert_eq!(distinct.len(), 6);
        let sites: HashSet<_> = picks
            .iter()
            .map(|id| view.get(id).unwrap().site.clone())
            .collect();
        assert_eq!(sites.len(), 4, "key {k}: all four sites must be used");
    }
    // With at least n sites, n distinct sites.
    let spread: Vec<Member> = (0..30)
        .map(|i| member(i, &format!("s{}", i % 8), 10 + u64::from(i)))
        .collect();
    let view = View::new(spread);
    for k in 0..2000 {
        let picks = view.place(key(k), 6, Weighting::Weighted);
        let sites: HashSet<_> = picks
            .iter()
            .map(|id| view.get(id).unwrap().site.clone())
            .collect();
        assert_eq!(sites.len(), 6);
    }
}

#[test]
fn only_alive_members_with_room_are_chosen() {
    let mut members: Vec<Member> = (0..10).map(|i| member(i, "a", 100)).collect();
    members[1].state = MemberState::Suspect;
    members[2].state = MemberState::Down;
    members[3].weight = 0;
    let view = View::new(members.clone());
    assert_eq!(view.eligible_count(), 7);
    for k in 0..500 {
        let picks = view.place(key(k), 10, Weighting::Weighted);
        assert_eq!(picks.len(), 7);
        for bad in [1, 2, 3] {
            assert!(!picks.contains(&&node(bad)));
        }
    }
    assert!(View::new(Vec::new())
        .place(key(1), 3, Weighting::Weighted)
        .is_empty());
}

#[test]
fn duplicate_members_resolve_independently_of_order() {
    let a = member(1, "x", 10);
    let mut b = a.clone();
    b.weight = 99;
    let v1 = View::new(vec![a.clone(), b.clone(), member(2, "y", 5)]);
    let v2 = View::new(vec![member(2, "y", 5), b, a]);
    assert_eq!(v1.members(), v2.members());
    assert_eq!(v1.len(), 2);
}

fn arb_members() -> impl Strategy<Value = Vec<Member>> {
    proptest::collection::vec((0u32..500, 0u8..6, 0u64..1_000_000, 0u8..10), 1..80).prop_map(|v| {
        v.into_iter()
            .map(|(i, s, w, st)| Member {
                id: node(i),
                site: format!("site-{s}"),
                weight: w,
                state: match st {
                    0 => MemberState::Suspect,
                    1 => MemberState::Down,
                    _ => MemberState::Alive,
                },
                volatile: false,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn agrees_with_naive_oracle(members in arb_members(), k in any::<u64>(), n in 1usize..20, uniform in any::<bool>()) {
        let view = View::new(members);
        // The oracle runs over the deduplicated member list of the view.
        let w = if uniform { Weighting::Uniform } else { Weighting::Weighted };
        let got = ids(view.place(PlacementKey(k), n, w));
        let want = naive_place(view.members(), PlacementKey(k), n, uniform);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn member_order_does_not_matter(members in arb_members(), k in any::<u64>(), seed in any::<u64>()) {
        let view = View::new(members.clone());
        let mut shuffled = members;
        let len = shuffled.len();
        let mut x = seed | 1;
        for i in (1..len).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (x >> 33) as usize % (i + 1));
        }
        let other = View::new(shuffled);
        prop_assert_eq!(view.place(PlacementKey(k), 6, Weighting::Weighted), other.place(PlacementKey(k), 6, Weighting::Weighted));
        prop_assert_eq!(
            view.ranking(PlacementKey(k), Weighting::Uniform, |_| true),
            other.ranking(PlacementKey(k), Weighting::Uniform, |_| true)
        );
    }
}

#[test]
fn large_views_use_the_fast_path_and_agree() {
    // 1,000 nodes over 20 sites: exercises the partial-sort window.
    let members: Vec<Member> = (0..1000)
        .map(|i| member(i, &format!("site-{}", i % 20), 1 + u64::from(i % 100) * 10))
        .collect();
    let view = View::new(members);
    for k in 0..300 {
        for n in [6, 14] {
            let got = ids(view.place(key(k), n, Weighting::Weighted));
            assert_eq!(got, naive_place(view.members(), key(k), n, false));
        }
    }
}
