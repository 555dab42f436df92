//! Site-aware stripe reads (`read::StripeRead` with costs): the first `k`
//! requests go to the `k` cheapest candidates (a parity shard's cost
//! raised by the decode it forces), the hedge to the next cheapest, and
//! candidates without a cost only after every costed one; checked against
//! a naive oracle over random stripes.

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
    fn first_k_are_the_cheapest_and_the_hedge_is_the_next(
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
        for &a in &first {
            for &b in &rest {
                match (key(a), key(b)) {
                    // No costed candidate left behind is cheaper.
                    (Some(x), Some(y)) => prop_assert!(x <= y, "{a} ({x}) before {b} ({y})"),
                    // A candidate without a cost never goes before one with.
                    (None, Some(_)) => prop_assert!(false, "uncosted {a} before costed {b}"),
                    // Among uncosted ones: data before parity.
                    (None, None) => prop_assert!(
                        usize::from(a) < k || usize::from(b) >= k,
                        "parity {a} before data {b} with no costs"
                    ),
                    (Some(_), None) => {}
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
