//! Site-aware stripe reads (`read::StripeRead` with costs): the first `k`
//! requests go to the `k` candidates that complete the stripe soonest (the
//! costliest of them, plus the decode when one is a parity shard; data
//! only at a tie), the hedge to the next cheapest, and candidates without
//! a cost only after every costed one; checked against a brute-force
//! oracle over random stripes.

use dynostore_protocol::read::{Candidate, HolderRank, ReadStep, StripeRead, PARITY_DECODE_MS};
use dynostore_protocol::NodeId;
use proptest::prelude::*;

fn node(i: u16) -> NodeId {
    let mut b = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    b.extend_from_slice(blake3::hash(&i.to_le_bytes()).as_bytes());
    NodeId::from_bytes(b).unwrap()
}

/// What fetching a candidate is expected to cost, the oracle's way.
fn effective(c: &Candidate, k: usize) -> Option<u64> {
    c.cost_ms.map(|x| {
        u64::from(x)
            + if usize::from(c.slot) >= k {
                u64::from(PARITY_DECODE_MS)
            } else {
                0
            }
    })
}

/// Every `k`-element subset of `of`.
fn subsets(of: &[u16], k: usize) -> Vec<Vec<u16>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for (i, &x) in of.iter().enumerate() {
        for mut rest in subsets(&of[i + 1..], k - 1) {
            rest.insert(0, x);
            out.push(rest);
        }
    }
    out
}

fn fetches(r: &mut StripeRead, now: u64) -> Vec<u16> {
    let mut out = Vec::new();
    while let ReadStep::Fetch { slot, .. } = r.next(now) {
        out.push(slot);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn first_k_complete_the_stripe_soonest_and_the_hedge_is_the_next(
        k in 1usize..8,
        extra in 1usize..6,
        costs in proptest::collection::vec(proptest::option::weighted(0.8, 0u32..200), 14),
    ) {
        let n = k + extra;
        let cands: Vec<Candidate> = (0..n as u16)
            .map(|slot| Candidate {
                slot,
                holder: node(slot),
                rank: HolderRank::Alive { load: 0 },
                cost_ms: costs[usize::from(slot)],
            })
            .collect();
        let mut r = StripeRead::new(k, cands.clone(), 0, 50).unwrap();
        let first = fetches(&mut r, 0);
        prop_assert_eq!(first.len(), k);
        let key = |slot: u16| effective(&cands[usize::from(slot)], k);
        let rest: Vec<u16> = (0..n as u16).filter(|s| !first.contains(s)).collect();
        let costed: Vec<u16> = (0..n as u16).filter(|&s| costs[usize::from(s)].is_some()).collect();
        if costed.len() >= k {
            // The first k complete the stripe soonest of every k costed
            // candidates (costliest fetch, plus the decode with a parity
            // shard), and hold no parity when a data-only set does as well.
            let latency = |set: &[u16]| -> u64 {
                let max = set.iter().map(|&s| u64::from(costs[usize::from(s)].unwrap())).max().unwrap();
                max + if set.iter().any(|&s| usize::from(s) >= k) { u64::from(PARITY_DECODE_MS) } else { 0 }
            };
            prop_assert!(first.iter().all(|s| costed.contains(s)), "uncosted in the first k");
            let (mut best, mut best_data) = (u64::MAX, u64::MAX);
            for set in subsets(&costed, k) {
                let l = latency(&set);
                best = best.min(l);
                if set.iter().all(|&s| usize::from(s) < k) {
                    best_data = best_data.min(l);
                }
            }
            prop_assert_eq!(latency(&first), best, "first {:?}", first);
            if best_data == best {
                prop_assert!(first.iter().all(|&s| usize::from(s) < k), "parity in {:?}", first);
            }
        } else {
            prop_assert!(costed.iter().all(|s| first.contains(s)), "a costed one left out");
            for &a in &first {
                for &b in &rest {
                    // Among uncosted ones: data before parity.
                    if key(a).is_none() && key(b).is_none() {
                        prop_assert!(
                            usize::from(a) < k || usize::from(b) >= k,
                            "parity {a} before data {b} with no costs"
                        );
                    }
                }
            }
        }
        // The hedge goes to the cheapest of the rest.
        let hedge = fetches(&mut r, 50);
        prop_assert_eq!(hedge.len(), 1);
        let h = hedge[0];
        for &b in rest.iter().filter(|&&b| b != h) {
            if let (Some(x), Some(y)) = (key(h), key(b)) {
                prop_assert!(x <= y, "hedge {h} ({x}) but {b} ({y})");
            }
            if key(h).is_none() {
                prop_assert!(key(b).is_none());
            }
        }
    }
}

/// The example of the issue: with k = 2, data shard 1 at a far site (60 ms)
/// and parity shard 2 at a near one (5 ms), the read takes the parity.
#[test]
fn near_parity_before_far_data() {
    let c = |slot: u16, cost: u32| Candidate {
        slot,
        holder: node(slot),
        rank: HolderRank::Alive { load: 0 },
        cost_ms: Some(cost),
    };
    let mut r = StripeRead::new(2, vec![c(0, 5), c(1, 60), c(2, 5), c(3, 60)], 0, 100).unwrap();
    assert_eq!(fetches(&mut r, 0), vec![0, 2]);
    // Site-blind (no costs): data first.
    let blind = |slot: u16| Candidate {
        cost_ms: None,
        ..c(slot, 0)
    };
    let mut r = StripeRead::new(2, (0..4).map(blind).collect(), 0, 100).unwrap();
    assert_eq!(fetches(&mut r, 0), vec![0, 1]);
}
