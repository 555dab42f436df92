//! The fill-corrected placement weights (`placement::fill_weight`,
//! `View::weighted`) against a literal oracle, their stated properties, and
//! what they are for: a network filled through them stays even where
//! free-space weights let small nodes fill up.

use dynostore_protocol::placement::{
    fill_weight, fill_weights, reference_fill, Member, MemberState, PlacementKey, Space, View,
    Weighting, FILL_GAIN, MAX_BOOST, MAX_DAMPING,
};
use dynostore_protocol::{NodeId, ObjectId};
use proptest::prelude::*;

fn node(i: u32) -> NodeId {
    let mut b = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    b.extend_from_slice(blake3::hash(&i.to_le_bytes()).as_bytes());
    NodeId::from_bytes(b).unwrap()
}

fn space(capacity_bytes: u64, free_bytes: u64) -> Space {
    Space {
        capacity_bytes,
        free_bytes,
    }
}

/// The oracle: the module header's formula, written out with no shortcut.
fn naive_weights(spaces: &[(Space, bool)]) -> Vec<u64> {
    let mut used = 0f64;
    let mut cap = 0f64;
    for (s, alive) in spaces {
        if *alive {
            let free = s.free_bytes.min(s.capacity_bytes);
            used += (s.capacity_bytes - free) as f64;
            cap += s.capacity_bytes as f64;
        }
    }
    let f_ref = if cap > 0.0 { used / cap } else { 0.0 };
    spaces
        .iter()
        .map(|(s, _)| {
            if s.free_bytes == 0 || s.capacity_bytes == 0 {
                return 0;
            }
            let f = 1.0 - s.free_bytes.min(s.capacity_bytes) as f64 / s.capacity_bytes as f64;
            let factor = (-FILL_GAIN * (f - f_ref))
                .exp()
                .clamp(1.0 / MAX_DAMPING, MAX_BOOST);
            ((s.capacity_bytes as f64 * factor).round() as u64).max(1)
        })
        .collect()
}

fn arb_spaces() -> impl Strategy<Value = Vec<(Space, bool)>> {
    proptest::collection::vec((1u64..1 << 40, 0u32..=1000, any::<bool>(), 0u8..8), 1..60).prop_map(
        |v| {
            v.into_iter()
                .map(|(cap, permille, alive, zero)| {
                    // Some members are full, some have no capacity at all.
                    let cap = if zero == 0 { 0 } else { cap };
                    let free = (cap as u128 * u128::from(permille) / 1000) as u64;
                    (space(cap, free), alive)
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn agrees_with_the_oracle(spaces in arb_spaces()) {
        // The oracle sums in f64, the code in u128: allow one unit of
        // rounding in the last place of the weight.
        let got = fill_weights(&spaces);
        let want = naive_weights(&spaces);
        for (g, w) in got.iter().zip(&want) {
            let tol = (*w as f64 * 1e-9).max(1.0);
            prop_assert!((*g as f64 - *w as f64).abs() <= tol, "{g} vs {w}");
        }
    }

    #[test]
    fn bounded_and_zero_only_when_full(cap in 1u64..1 << 50, permille in 0u64..=1000, f_ref in 0.0f64..1.0) {
        let free = cap / 1000 * permille + if permille == 1000 { cap % 1000 } else { 0 };
        let w = fill_weight(space(cap, free), f_ref);
        if free == 0 {
            prop_assert_eq!(w, 0);
        } else {
            prop_assert!(w >= 1);
            prop_assert!(w as f64 <= cap as f64 * MAX_BOOST + 1.0, "{w} for capacity {cap}");
            prop_assert!(w as f64 >= (cap as f64 / MAX_DAMPING).floor(), "{w} for capacity {cap}");
        }
    }

    #[test]
    fn more_free_space_never_weighs_less(cap in 1u64..1 << 50, a in 0u64..=1000, b in 0u64..=1000, f_ref in 0.0f64..1.0) {
        let (lo, hi) = (a.min(b), a.max(b));
        let w_lo = fill_weight(space(cap, cap / 1000 * lo), f_ref);
        let w_hi = fill_weight(space(cap, cap / 1000 * hi), f_ref);
        prop_assert!(w_hi >= w_lo, "{w_hi} < {w_lo}");
    }

    #[test]
    fn even_fill_weighs_capacity(caps in proptest::collection::vec(1000u64..1 << 40, 1..50), permille in 1u64..1000) {
        // Every member at the same fill: weights are the capacities (up to
        // the rounding of the free bytes), so shares follow capacity.
        let spaces: Vec<(Space, bool)> = caps
            .iter()
            .map(|&c| (space(c, c / 1000 * permille), true))
            .collect();
        let w = fill_weights(&spaces);
        for (c, w) in caps.iter().zip(&w) {
            let rel = (*w as f64 - *c as f64).abs() / *c as f64;
            // A free-byte rounding of at most 1000 bytes in `c / 1000`
            // shifts the fill by 1000 / c at most.
            prop_assert!(rel <= (FILL_GAIN * 2000.0 / *c as f64).exp_m1() + 1e-9, "{w} for {c}");
        }
    }

    #[test]
    fn order_does_not_matter(spaces in arb_spaces(), seed in any::<u64>()) {
        let w = fill_weights(&spaces);
        let mut idx: Vec<usize> = (0..spaces.len()).collect();
        let mut x = seed | 1;
        for i in (1..idx.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            idx.swap(i, (x >> 33) as usize % (i + 1));
        }
        let shuffled: Vec<(Space, bool)> = idx.iter().map(|&i| spaces[i]).collect();
        let ws = fill_weights(&shuffled);
        for (j, &i) in idx.iter().enumerate() {
            prop_assert_eq!(ws[j], w[i]);
        }
    }
}

#[test]
fn reference_fill_counts_used_over_capacity() {
    assert_eq!(reference_fill([]), 0.0);
    assert_eq!(reference_fill([space(0, 0)]), 0.0);
    let f = reference_fill([space(100, 50), space(300, 250)]);
    assert!((f - 0.25).abs() < 1e-12, "{f}");
}

#[test]
fn silent_members_do_not_shift_the_reference() {
    // A suspect member's stale figures are left out of the reference fill.
    let spaces = [
        (space(100, 50), true),
        (space(100, 50), true),
        (space(100, 100), false),
    ];
    let w = fill_weights(&spaces);
    assert_eq!(&w[..2], &[100, 100]);
    assert_eq!(w[2], (100.0 * MAX_BOOST) as u64);
}

#[test]
fn weighted_view_uses_the_weights() {
    let members = (0..3).map(|i| {
        let m = Member {
            id: node(i),
            site: format!("s{i}"),
            weight: 0,
            state: MemberState::Alive,
            volatile: false,
        };
        // 50 %, 30 % and 100 % used.
        let free = [50, 70, 0][i as usize];
        (m, space(100, free))
    });
    let v = View::weighted(members);
    let spaces = [
        (space(100, 50), true),
        (space(100, 70), true),
        (space(100, 0), true),
    ];
    let want = fill_weights(&spaces);
    for i in 0..3 {
        assert_eq!(v.get(&node(i)).unwrap().weight, want[i as usize]);
    }
    // The full member takes nothing.
    assert_eq!(v.eligible_count(), 2);
}

/// Fills a network of unequal nodes from empty, rebuilding the view every
/// `refresh` objects with `weigh`, and returns the fill fractions.
fn fill_network(weigh: impl Fn(&[u64], &[u64]) -> View, objects: u64, refresh: u64) -> Vec<f64> {
    let nodes = 120u32;
    let n = 6;
    // Capacities 1,000 to 64,000 bytes over 12 sites, shards of 10 to 80.
    let cap: Vec<u64> = (0..nodes)
        .map(|i| 1000 * (1 + u64::from(i * 37 % 64)))
        .collect();
    let mut used = vec![0u64; nodes as usize];
    let mut view = weigh(&cap, &used);
    for o in 0..objects {
        if o % refresh == 0 {
            view = weigh(&cap, &used);
        }
        let key = PlacementKey::for_segment(&ObjectId::of(&o.to_le_bytes()), 0);
        let shard = 10 * (1 + o % 8);
        for id in view.place(key, n, Weighting::Weighted) {
            let i = (0..nodes).find(|&i| node(i) == *id).unwrap() as usize;
            if used[i] + shard <= cap[i] {
                used[i] += shard;
            }
        }
    }
    used.iter()
        .zip(&cap)
        .map(|(&u, &c)| u as f64 / c as f64)
        .collect()
}

fn members<'a>(cap: &'a [u64], used: &'a [u64]) -> impl Iterator<Item = (Member, Space)> + 'a {
    cap.iter().zip(used).enumerate().map(|(i, (&c, &u))| {
        let m = Member {
            id: node(i as u32),
            site: format!("site-{}", i % 12),
            weight: c - u,
            state: MemberState::Alive,
            volatile: false,
        };
        (m, space(c, c - u))
    })
}

#[test]
fn fill_weights_keep_the_fullest_node_near_the_mean() {
    // About 70 % of the capacity offered: with free-space weights (the
    // previous rule) the fullest node is far above the mean; with the fill
    // correction it stays within a few points.
    let total: u64 = (0..120u64).map(|i| 1000 * (1 + (i * 37 % 64))).sum();
    let objects = total * 7 / 10 / (6 * 45);
    let spread = |f: &[f64]| {
        let mean = f.iter().sum::<f64>() / f.len() as f64;
        let max = f.iter().cloned().fold(0.0, f64::max);
        (mean, max)
    };
    let by_free = fill_network(|c, u| View::new(members(c, u).map(|(m, _)| m)), objects, 20);
    let by_fill = fill_network(|c, u| View::weighted(members(c, u)), objects, 20);
    let (mean_free, max_free) = spread(&by_free);
    let (mean_fill, max_fill) = spread(&by_fill);
    println!(
        "free-space weights: mean {mean_free:.3} max {max_free:.3}; fill weights: mean {mean_fill:.3} max {max_fill:.3}"
    );
    assert!(
        max_fill - mean_fill < 0.05,
        "fill weights: fullest {max_fill:.3} at mean {mean_fill:.3}"
    );
    assert!(
        max_fill - mean_fill < (max_free - mean_free) / 2.0,
        "fill weights ({max_fill:.3}) no better than free space ({max_free:.3})"
    );
}

fn big_weighted_view(len: u32) -> (View, Vec<Member>) {
    // Capacities over two orders of magnitude, fills 0 to 99 %.
    let members: Vec<(Member, Space)> = (0..len)
        .map(|i| {
            let h = blake3::hash(&i.to_be_bytes());
            let b = h.as_bytes();
            let cap = 1_000_000 * (1 + u64::from(b[0]) % 100);
            let free = cap / 100 * (1 + u64::from(b[1]) % 100);
            let m = Member {
                id: node(i),
                site: format!("site-{}", b[2] % 20),
                weight: 0,
                state: if b[3].is_multiple_of(17) {
                    MemberState::Suspect
                } else {
                    MemberState::Alive
                },
                volatile: false,
            };
            (m, space(cap, free))
        })
        .collect();
    // The same members weighted by capacity alone, for the oracle.
    let by_capacity: Vec<Member> = members
        .iter()
        .map(|(m, s)| Member {
            weight: s.capacity_bytes,
            ..m.clone()
        })
        .collect();
    (View::weighted(members), by_capacity)
}

#[test]
fn capacity_ranking_is_the_ranking_at_even_fill() {
    // 1,000 members: large enough for the prefilters of both weightings.
    let (view, by_capacity) = big_weighted_view(1000);
    let oracle = View::new(by_capacity);
    for k in 0..300u64 {
        let key = PlacementKey::for_segment(&ObjectId::of(&k.to_le_bytes()), 0);
        for n in [6, 14] {
            // Eligibility is the live weight's (full members take nothing),
            // the order the capacity's.
            let got = view.place(key, n, Weighting::Capacity);
            let want: Vec<&NodeId> = oracle
                .ranking(key, Weighting::Weighted, |m| {
                    view.get(&m.id)
                        .is_some_and(|v| v.weight > 0 && v.state == MemberState::Alive)
                })
                .into_iter()
                .collect();
            // Spreading aside, every pick is in the head of that ranking
            // and the first pick is its first.
            assert_eq!(got[0], want[0], "key {k}");
            assert!(got.iter().all(|g| want[..4 * n].contains(g)), "key {k}");
        }
        // The head of a ranking is the prefix of the full one.
        for w in [Weighting::Weighted, Weighting::Capacity] {
            let all = view.ranking(key, w, |m| m.state == MemberState::Alive && m.weight > 0);
            let head = view.ranking_head(
                key,
                w,
                |m| m.state == MemberState::Alive && m.weight > 0,
                40,
            );
            assert_eq!(head, all[..40].to_vec(), "key {k}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn rebalancing_only_moves_towards_the_capacity_placement(
        len in 8u32..40,
        seed in any::<u64>(),
        fills in proptest::collection::vec(0.0f64..1.0, 40),
        pick in proptest::collection::vec(any::<u32>(), 6),
    ) {
        use dynostore_protocol::repair::rebalance_moves;
        let (view, _) = big_weighted_view(len);
        let key = PlacementKey(seed);
        let eligible: Vec<NodeId> = view
            .members()
            .iter()
            .filter(|m| m.state == MemberState::Alive && m.weight > 0)
            .map(|m| m.id.clone())
            .collect();
        prop_assume!(eligible.len() >= 6);
        // Six distinct holders drawn from the members.
        let mut holders: Vec<NodeId> = Vec::new();
        for p in &pick {
            let mut i = *p as usize % view.len();
            while holders.contains(&view.members()[i].id) {
                i = (i + 1) % view.len();
            }
            holders.push(view.members()[i].id.clone());
        }
        let fill = |id: &NodeId| {
            view.members().iter().position(|m| m.id == *id).map(|i| fills[i % fills.len()])
        };
        let desired: Vec<&NodeId> = view.place(key, 6, Weighting::Capacity);
        let moves = rebalance_moves(&view, key, &holders, fill, 0.1, 2);
        let mut targets = Vec::new();
        for (i, to) in &moves {
            // From a holder off the placement to a member on it, emptier
            // by the margin, never twice to one member.
            prop_assert!(!desired.contains(&&holders[*i]));
            prop_assert!(desired.contains(&to));
            prop_assert!(!holders.contains(to));
            prop_assert!(fill(to).unwrap() < fill(&holders[*i]).unwrap() * 0.9);
            prop_assert!(!targets.contains(to));
            targets.push(to.clone());
        }
        // Applying them and asking again with the same fills: nothing more,
        // as a moved shard now sits on the placement.
        for (i, to) in &moves {
            holders[*i] = to.clone();
        }
        let again = rebalance_moves(&view, key, &holders, fill, 0.1, 2);
        for (i, _) in &again {
            prop_assert!(!moves.iter().any(|(j, _)| j == i), "slot {i} moved twice");
        }
    }
}

/// The oracle of `place_sized`: every eligible member scored with its
/// weight as it would be with the shard stored, full sort, site spreading
/// in two literal passes.
fn naive_sized(
    members: &[(Member, Space)],
    view: &View,
    key: PlacementKey,
    n: usize,
    shard: u64,
) -> Vec<NodeId> {
    let alive: Vec<(Space, bool)> = members
        .iter()
        .map(|(m, s)| (*s, m.state == MemberState::Alive))
        .collect();
    let f_ref = reference_fill(alive.iter().filter(|(_, a)| *a).map(|(s, _)| *s));
    let mut scored: Vec<(f64, &Member)> = members
        .iter()
        .filter_map(|(m, s)| {
            let w = view.get(&m.id)?.weight;
            if m.state != MemberState::Alive || w == 0 || shard > s.free_bytes {
                return None;
            }
            let f = 1.0 - (s.free_bytes - shard) as f64 / s.capacity_bytes as f64;
            let sized = (s.capacity_bytes as f64
                * (-FILL_GAIN * (f - f_ref))
                    .exp()
                    .clamp(1.0 / MAX_DAMPING, MAX_BOOST))
            .min(w as f64);
            let h = blake3::hash(m.id.as_bytes());
            let h = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap());
            let u = dynostore_protocol::placement::unit(key.0 ^ h);
            Some((sized / -u.ln(), m))
        })
        .filter(|(s, _)| *s > 0.0)
        .collect();
    scored.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.id.cmp(&b.1.id)));
    let mut chosen: Vec<&Member> = Vec::new();
    let mut sites = std::collections::HashSet::new();
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
    scored
        .iter()
        .filter(|(_, m)| chosen.iter().any(|c| c.id == m.id))
        .map(|(_, m)| m.id.clone())
        .collect()
}

#[test]
fn sized_placement_agrees_with_its_oracle_and_needs_room() {
    for len in [40u32, 1000] {
        let members: Vec<(Member, Space)> = (0..len)
            .map(|i| {
                let b = *blake3::hash(&(i + 7).to_le_bytes()).as_bytes();
                let cap = 1_000_000 * (1 + u64::from(b[0]) % 100);
                let free = cap / 100 * (1 + u64::from(b[1]) % 40);
                let m = Member {
                    id: node(i),
                    site: format!("site-{}", b[2] % 20),
                    weight: 0,
                    state: MemberState::Alive,
                    volatile: false,
                };
                (m, space(cap, free))
            })
            .collect();
        let view = View::weighted(members.clone());
        for k in 0..200u64 {
            let key = PlacementKey::for_segment(&ObjectId::of(&k.to_le_bytes()), 1);
            // Size 0 is the unsized placement.
            assert_eq!(
                view.place_sized(key, 6, usize::MAX, 0),
                view.place(key, 6, Weighting::Weighted)
            );
            for shard in [1_000u64, 300_000, 5_000_000] {
                let got: Vec<NodeId> = view
                    .place_sized(key, 6, usize::MAX, shard)
                    .into_iter()
                    .cloned()
                    .collect();
                assert_eq!(
                    got,
                    naive_sized(&members, &view, key, 6, shard),
                    "key {k} shard {shard}"
                );
                for id in &got {
                    let (_, s) = members.iter().find(|(m, _)| m.id == *id).unwrap();
                    assert!(s.free_bytes >= shard, "a member without room was chosen");
                }
            }
        }
    }
}

/// 1,000 members (above the prefilter's threshold), a few of them
/// suspect, down or volatile, with free space drawn from `salt` (nothing
/// else depends on it): about one in 16 is full.
fn reweigh_members(salt: u32) -> Vec<(Member, Space)> {
    (0..1000u32)
        .map(|i| {
            let b = *blake3::hash(&i.to_le_bytes()).as_bytes();
            let c = *blake3::hash(&[i.to_le_bytes(), salt.to_le_bytes()].concat()).as_bytes();
            let cap = 1_000_000 * (1 + u64::from(b[0]) % 100);
            let free = match c[0] % 16 {
                0 => 0,
                _ => cap / 1000 * u64::from(c[1]) * 4,
            };
            let m = Member {
                id: node(i),
                site: format!("site-{}", b[2] % 20),
                weight: 0,
                state: match b[3] % 32 {
                    0 => MemberState::Suspect,
                    1 => MemberState::Down,
                    _ => MemberState::Alive,
                },
                volatile: b[4].is_multiple_of(50),
            };
            (m, space(cap, free.min(cap)))
        })
        .collect()
}

#[test]
fn reweigh_gives_the_view_weighted_builds() {
    let before = reweigh_members(1);
    let after = reweigh_members(2);
    let mut reweighed = View::weighted(before.clone());
    let spaces: std::collections::HashMap<NodeId, Space> =
        after.iter().map(|(m, s)| (m.id.clone(), *s)).collect();
    reweighed.reweigh(|m| spaces[&m.id]);
    let fresh = View::weighted(after);
    assert_eq!(reweighed.members(), fresh.members());
    assert_eq!(reweighed.eligible_split(), fresh.eligible_split());
    let mut differs_from_before = 0;
    let old = View::weighted(before);
    for k in 0..300u64 {
        let key = PlacementKey::for_segment(&ObjectId::of(&k.to_le_bytes()), 0);
        for w in [Weighting::Weighted, Weighting::Capacity, Weighting::Uniform] {
            assert_eq!(
                reweighed.place(key, 14, w),
                fresh.place(key, 14, w),
                "{k} {w:?}"
            );
            assert_eq!(
                reweighed.ranking_head(key, w, |_| true, 40),
                fresh.ranking_head(key, w, |_| true, 40)
            );
        }
        for shard in [0u64, 10_000, 3_000_000] {
            let got = reweighed.place_sized(key, 14, 4, shard);
            assert_eq!(got, fresh.place_sized(key, 14, 4, shard), "{k} {shard}");
            differs_from_before += usize::from(got != old.place_sized(key, 14, 4, shard));
        }
    }
    // The new spaces change placements, so equality above is not vacuous.
    assert!(differs_from_before > 100, "{differs_from_before}");
}
