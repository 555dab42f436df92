//! The reliability-target choice (`durability::choose`) against a naive
//! oracle: for any membership, failure rate, repair window, target and
//! ceiling, the chosen `(k, m)` meets the target by the module header's
//! formula, and an exhaustive search over every admissible `(k, m)` under
//! the ceiling finds none that is cheaper and meets it.

use dynostore_protocol::durability::{
    admissible, choose, current_durability, stripe_durability, DurabilityError, FailureModel,
    Membership, HOURS_PER_YEAR,
};
use proptest::prelude::*;

/// The formula written out with no log-space shortcut: usable where the
/// loss is not below f64's resolution near 1.
fn naive_durability(k: u16, m: u16, afr: f64, window_hours: f64) -> f64 {
    let n = u32::from(k) + u32::from(m);
    let lambda = -(1.0 - afr).ln();
    let p = 1.0 - (-lambda * window_hours / HOURS_PER_YEAR).exp();
    let mut pw = 0.0;
    for j in u32::from(m) + 1..=n {
        let mut c = 1.0;
        for i in 0..j {
            c = c * f64::from(n - i) / f64::from(i + 1);
        }
        pw += c * p.powi(j as i32) * (1.0 - p).powi((n - j) as i32);
    }
    (1.0 - pw).powf(HOURS_PER_YEAR / window_hours)
}

/// Every admissible `(k, m)` that meets the target, by exhaustive search.
fn meeting(target: f64, at: Membership, model: &FailureModel, max_shards: u16) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for k in 1..=max_shards {
        for m in 1..=max_shards {
            if admissible(k, m, at, max_shards) && stripe_durability(k, m, model).meets(target) {
                out.push((k, m));
            }
        }
    }
    out
}

fn targets() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.99),
        Just(0.9999),
        Just(0.999_999),
        Just(0.999_999_999),
        Just(0.999_999_999_99),
        (1u32..14).prop_map(|nines| 1.0 - 10f64.powi(-(nines as i32))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn choice_meets_the_target_and_nothing_cheaper_does(
        members in 2usize..60,
        sites in 1usize..10,
        afr in 0.001f64..0.3,
        window_hours in 1.0f64..24.0 * 30.0,
        target in targets(),
        max_shards in 2u16..24,
    ) {
        let at = Membership { members, sites: sites.min(members) };
        let model = FailureModel { afr, repair_window_hours: window_hours };
        let oracle = meeting(target, at, &model, max_shards);
        match choose(target, at, &model, max_shards) {
            Ok(c) => {
                prop_assert!(admissible(c.k, c.m, at, max_shards));
                prop_assert!(stripe_durability(c.k, c.m, &model).meets(target));
                prop_assert!(c.durability.meets(target));
                for &(k, m) in &oracle {
                    // No cheaper (k, m) meets the target.
                    prop_assert!(
                        (u32::from(k) + u32::from(m)) * u32::from(c.k)
                            >= (u32::from(c.k) + u32::from(c.m)) * u32::from(k),
                        "({k},{m}) is cheaper than the chosen ({},{})", c.k, c.m
                    );
                }
            }
            Err(DurabilityError::Unreachable { .. }) | Err(DurabilityError::TooFewMembers { .. }) => {
                prop_assert!(oracle.is_empty(), "the oracle found {:?}", oracle);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn formula_matches_the_naive_sum(
        k in 1u16..12,
        m in 1u16..6,
        afr in 0.01f64..0.5,
        window_hours in 24.0f64..24.0 * 60.0,
    ) {
        let model = FailureModel { afr, repair_window_hours: window_hours };
        let fast = stripe_durability(k, m, &model).annual();
        let naive = naive_durability(k, m, afr, window_hours);
        prop_assert!((fast - naive).abs() <= 1e-9 + 1e-6 * (1.0 - naive).abs(),
            "k={k} m={m}: {fast} vs {naive}");
    }

    #[test]
    fn more_parity_never_hurts(k in 1u16..16, m in 1u16..8, afr in 0.001f64..0.5) {
        let model = FailureModel { afr, repair_window_hours: 48.0 };
        let a = stripe_durability(k, m, &model);
        let b = stripe_durability(k, m + 1, &model);
        prop_assert!(b.ln_durability >= a.ln_durability);
        // A stripe with all shards live is as durable as a fresh one; losing
        // one shard makes it less durable; below k it is gone.
        let n = u32::from(k) + u32::from(m);
        prop_assert_eq!(current_durability(k, n, &model), a);
        prop_assert!(current_durability(k, n - 1, &model).ln_durability <= a.ln_durability);
        prop_assert_eq!(current_durability(k, u32::from(k) - 1, &model).annual(), 0.0);
    }
}

/// A table of memberships like the paper's: the choice for 0.999999 with
/// the default failure model, pinned so a change of formula shows.
#[test]
fn typical_memberships() {
    let model = FailureModel::default();
    // Four sites of three nodes: k < 4 for site loss.
    let c = choose(
        0.999_999,
        Membership {
            members: 12,
            sites: 4,
        },
        &model,
        20,
    )
    .unwrap();
    assert!(c.k < 4 && c.k + c.m <= 12, "{c:?}");
    assert!(c.durability.nines() >= 6.0, "{c:?}");
    // One site: no site rule, wider stripes are allowed and cheaper.
    let one = choose(
        0.999_999,
        Membership {
            members: 12,
            sites: 1,
        },
        &model,
        20,
    )
    .unwrap();
    assert!(one.overhead() <= c.overhead(), "{one:?} vs {c:?}");
}
