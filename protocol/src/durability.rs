//! Reliability targets: choosing `k` and `m` for a durability goal, in
//! closed form.
//!
//! A user asks for "this object survives a year with probability 0.999999"
//! instead of picking `k` and `m`. The entry peer knows how many members
//! there are, how many sites they span and the annual failure rate its
//! configuration assumes for a node; [`choose`] returns the `(k, m)` with
//! the least storage overhead `(k + m) / k` that meets the target, under a
//! ceiling on `k + m`. This is the question D-Rex (the companion work of
//! the DynoStore paper) answers by exhaustive search over simulated
//! placements; here the durability of a stripe is a formula, so the choice
//! is a scan over at most `ceiling²/2` pairs with no simulation.
//!
//! # The formula
//! With `afr` the probability that a node fails within a year (its data
//! lost), the failure rate is `λ = -ln(1 - afr)` per year. A lost shard is
//! rebuilt within the repair window `w` (detection plus rebuild), so the
//! probability that a given holder fails within one window is
//!
//! ```text
//! p = 1 - exp(-λ · w / Y)            (Y = 8766 h, one year)
//! ```
//!
//! A stripe of `n = k + m` shards on `n` distinct nodes is lost when more
//! than `m` of its holders fail within the same window:
//!
//! ```text
//! P_w = Σ_{j = m+1..n} C(n, j) · p^j · (1 - p)^(n - j)
//! ```
//!
//! and, treating the `Y / w` windows of a year as independent, the annual
//! durability of the stripe is
//!
//! ```text
//! D(k, m) = (1 - P_w)^(Y / w)
//! ```
//!
//! computed as `exp((Y / w) · ln(1 - P_w))` so that durabilities like
//! `1 - 1e-15` keep their precision ([`StripeDurability::annual_loss`]).
//! An object of several segments has one stripe per segment on mostly the
//! same holders; the formula is per stripe, as the target is.
//!
//! # Sites
//! Placement puts the first shard of each site before it reuses a site
//! ([`crate::placement::View::place`]), but the shards beyond one per site
//! follow the ranking, so in the worst case `n - s + 1` shards of a stripe
//! share one of `s` sites. A stripe survives the loss of any whole site
//! when that worst case is at most `m`, i.e. when `k < s` (or `n <= s`,
//! one shard per site). With two or more sites [`choose`] requires it:
//! the paper's point is surviving a site, and the formula above knows only
//! independent node failures.
//!
//! # What it does not model
//! Correlated failures other than a whole site (a rack, a bad disk batch),
//! the time a repair waits for a member with room, latent sector errors
//! found only by a scrub, and holders with different failure rates (the
//! entry peer uses one rate, the highest it knows, which errs on the safe
//! side).
//!
//! # Default failure rate
//! [`DEFAULT_AFR`] is 4%: Schroeder and Gibson, "Disk failures in the real
//! world: what does an MTTF of 1,000,000 hours mean to you?" (FAST 2007)
//! report annual replacement rates of typically 2-4% (up to 13% on some
//! systems) for disks in the field, far above datasheet rates; Backblaze's
//! drive stats report 1-2% per drive per year, and a node has several
//! drives and more parts that fail. The upper end of the typical range is
//! the default; a site with better figures sets its own.

use serde::{Deserialize, Serialize};

/// Hours in a (Julian) year.
pub const HOURS_PER_YEAR: f64 = 8766.0;
/// Default annual failure rate of a node (see the module header).
pub const DEFAULT_AFR: f64 = 0.04;
/// Default repair window: a lost shard is rebuilt within a day.
pub const DEFAULT_REPAIR_WINDOW_HOURS: f64 = 24.0;
/// Default ceiling on `k + m`.
pub const DEFAULT_MAX_SHARDS: u16 = 20;

/// Why no `(k, m)` can be chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DurabilityError {
    #[error("durability target must be in (0, 1), got {0}")]
    BadTarget(f64),
    #[error("annual failure rate must be in (0, 1), got {0}")]
    BadAfr(f64),
    #[error("repair window must be positive hours, got {0}")]
    BadWindow(f64),
    #[error("a stripe needs at least 2 shards (k >= 1, m >= 1); the ceiling is {max_shards} and there are {members} members")]
    TooFewMembers { members: usize, max_shards: u16 },
    #[error("no k + m <= {ceiling} reaches annual durability {target} with afr {afr} and a {window_hours} h repair window over {members} members in {sites} sites (best: k={best_k} m={best_m} at {best})")]
    Unreachable {
        target: f64,
        afr: f64,
        window_hours: f64,
        members: usize,
        sites: usize,
        ceiling: usize,
        best_k: u16,
        best_m: u16,
        best: f64,
    },
}

/// An annual durability (a probability in `[0, 1]`) as carried in wire
/// types and manifests: compared by its bits, so the types that hold it
/// stay `Eq`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Durability(pub f64);

impl PartialEq for Durability {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Durability {}

impl Durability {
    /// A target as the user gives it: strictly between 0 and 1.
    pub fn target(v: f64) -> Result<Self, DurabilityError> {
        if v > 0.0 && v < 1.0 {
            Ok(Durability(v))
        } else {
            Err(DurabilityError::BadTarget(v))
        }
    }
}

impl std::fmt::Display for Durability {
    /// `0.999999 (6.0 nines)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loss = 1.0 - self.0;
        if loss <= 0.0 {
            write!(f, "1 (>15 nines)")
        } else {
            write!(f, "{} ({:.1} nines)", self.0, -loss.log10())
        }
    }
}

/// The durability the holders of an object give now: the least over its
/// segments of [`current_durability`], with `live[i]` the shards of
/// segment `i` on live holders. An object with no segments is as durable
/// as a fresh stripe.
pub fn object_durability(k: u16, m: u16, live: &[u32], model: &FailureModel) -> StripeDurability {
    live.iter()
        .map(|&l| current_durability(k, l, model))
        .min_by(|a, b| a.ln_durability.total_cmp(&b.ln_durability))
        .unwrap_or_else(|| stripe_durability(k, m, model))
}

/// The failure assumptions: per node, and how fast repair is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FailureModel {
    /// Probability that a node fails within a year.
    pub afr: f64,
    /// Time from a failure until its shards are rebuilt elsewhere.
    pub repair_window_hours: f64,
}

impl Default for FailureModel {
    fn default() -> Self {
        FailureModel {
            afr: DEFAULT_AFR,
            repair_window_hours: DEFAULT_REPAIR_WINDOW_HOURS,
        }
    }
}

impl FailureModel {
    fn check(&self) -> Result<(), DurabilityError> {
        if !(self.afr > 0.0 && self.afr < 1.0) {
            return Err(DurabilityError::BadAfr(self.afr));
        }
        if !(self.repair_window_hours > 0.0 && self.repair_window_hours.is_finite()) {
            return Err(DurabilityError::BadWindow(self.repair_window_hours));
        }
        Ok(())
    }

    /// `p`: the probability that one node fails within one repair window.
    pub fn window_failure(&self) -> f64 {
        let lambda = -(-self.afr).ln_1p();
        -(-lambda * self.repair_window_hours / HOURS_PER_YEAR).exp_m1()
    }
}

/// The durability of one stripe by the formula.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StripeDurability {
    /// `ln D`: the natural log of the annual durability (<= 0).
    pub ln_durability: f64,
}

impl StripeDurability {
    /// `D`, the probability the stripe survives a year.
    pub fn annual(&self) -> f64 {
        self.ln_durability.exp()
    }

    /// `1 - D`, precise when `D` is close to 1.
    pub fn annual_loss(&self) -> f64 {
        -self.ln_durability.exp_m1()
    }

    /// The number of nines of `D` (`-log10(1 - D)`), capped at 99.
    pub fn nines(&self) -> f64 {
        let loss = self.annual_loss();
        if loss <= 0.0 {
            99.0
        } else {
            (-loss.log10()).min(99.0)
        }
    }

    /// Whether `D >= target`.
    pub fn meets(&self, target: f64) -> bool {
        // ln D >= ln target, both near 0: compare via ln_1p of the loss.
        self.ln_durability >= (-(1.0 - target)).ln_1p()
    }
}

/// `ln C(n, j)`, exact enough for `n <= 256`.
fn ln_choose(n: u32, j: u32) -> f64 {
    let j = j.min(n - j);
    (0..j)
        .map(|i| f64::from(n - i).ln() - f64::from(i + 1).ln())
        .sum()
}

/// `P_w`: the probability that more than `tolerated` of `n` holders fail
/// within one window, each with probability `p`.
fn window_loss(n: u32, tolerated: u32, p: f64) -> f64 {
    if tolerated >= n {
        return 0.0;
    }
    let (lp, lq) = (p.ln(), (-p).ln_1p());
    // Terms fall fast for small p: sum from the largest (j = tolerated + 1).
    (tolerated + 1..=n)
        .map(|j| (ln_choose(n, j) + f64::from(j) * lp + f64::from(n - j) * lq).exp())
        .sum::<f64>()
        .min(1.0)
}

/// The annual durability of a stripe that is lost when more than
/// `tolerated` of its `n` holders fail within one repair window.
pub fn tolerance_durability(n: u32, tolerated: u32, model: &FailureModel) -> StripeDurability {
    let p = model.window_failure();
    let pw = window_loss(n, tolerated, p);
    let windows = HOURS_PER_YEAR / model.repair_window_hours;
    StripeDurability {
        ln_durability: windows * (-pw).ln_1p(),
    }
}

/// `D(k, m)`: the durability of a stripe of `k + m` shards on distinct nodes.
pub fn stripe_durability(k: u16, m: u16, model: &FailureModel) -> StripeDurability {
    tolerance_durability(u32::from(k) + u32::from(m), u32::from(m), model)
}

/// The durability a stripe has now: `live` of its shards on live holders,
/// `k` needed. Fewer than `k` gives 0 (`ln D = -inf`); exactly `k` gives
/// the durability of a stripe that tolerates no further loss.
pub fn current_durability(k: u16, live: u32, model: &FailureModel) -> StripeDurability {
    if live < u32::from(k) {
        return StripeDurability {
            ln_durability: f64::NEG_INFINITY,
        };
    }
    tolerance_durability(live, live - u32::from(k), model)
}

/// What the entry peer knows when it chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// Members that can take shards (distinct nodes).
    pub members: usize,
    /// Distinct sites among them.
    pub sites: usize,
}

/// A chosen geometry and what it gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub k: u16,
    pub m: u16,
    pub durability: StripeDurability,
}

impl Choice {
    /// `(k + m) / k`.
    pub fn overhead(&self) -> f64 {
        overhead(self.k, self.m)
    }
}

/// `(k + m) / k`.
pub fn overhead(k: u16, m: u16) -> f64 {
    (f64::from(k) + f64::from(m)) / f64::from(k)
}

/// Whether `(k1, m1)` stores less than `(k2, m2)`: `(k1+m1)/k1 <
/// (k2+m2)/k2`, compared exactly in integers.
pub fn cheaper(k1: u16, m1: u16, k2: u16, m2: u16) -> bool {
    let (k1, m1, k2, m2) = (u64::from(k1), u64::from(m1), u64::from(k2), u64::from(m2));
    (k1 + m1) * k2 < (k2 + m2) * k1
}

/// Whether a stripe of `(k, m)` survives the loss of any one of `sites`
/// sites under site spreading (see the module header).
pub fn survives_site_loss(k: u16, m: u16, sites: usize) -> bool {
    let n = usize::from(k) + usize::from(m);
    sites < 2 || n <= sites || usize::from(k) < sites
}

/// Whether `(k, m)` is allowed at all for this membership and ceiling.
pub fn admissible(k: u16, m: u16, at: Membership, max_shards: u16) -> bool {
    let n = usize::from(k) + usize::from(m);
    k >= 1
        && m >= 1
        && n <= usize::from(max_shards)
        && n <= at.members
        && survives_site_loss(k, m, at.sites)
}

/// The cheapest admissible `(k, m)` whose annual durability meets `target`;
/// among equally cheap ones the one with the fewest shards.
///
/// For each `k` the least `m` that meets the target is the cheapest for
/// that `k` (overhead grows with `m`, and so does durability: a stripe of
/// `n + 1` shards losing more than `m + 1` implies its first `n` lost more
/// than `m`), so one pass over `k` with an increasing `m` finds it.
pub fn choose(
    target: f64,
    at: Membership,
    model: &FailureModel,
    max_shards: u16,
) -> Result<Choice, DurabilityError> {
    if !(target > 0.0 && target < 1.0) {
        return Err(DurabilityError::BadTarget(target));
    }
    model.check()?;
    let ceiling = usize::from(max_shards).min(at.members);
    if ceiling < 2 {
        return Err(DurabilityError::TooFewMembers {
            members: at.members,
            max_shards,
        });
    }
    let ceiling = ceiling as u16;
    let mut best: Option<Choice> = None;
    // The most durable admissible stripe, for the error.
    let mut strongest: Option<Choice> = None;
    for k in 1..ceiling {
        for m in 1..=ceiling - k {
            if !admissible(k, m, at, max_shards) {
                continue;
            }
            let d = stripe_durability(k, m, model);
            let c = Choice {
                k,
                m,
                durability: d,
            };
            if strongest.is_none_or(|s| d.ln_durability > s.durability.ln_durability) {
                strongest = Some(c);
            }
            if d.meets(target) {
                let better = match best {
                    None => true,
                    Some(b) => {
                        cheaper(k, m, b.k, b.m) || (!cheaper(b.k, b.m, k, m) && k + m < b.k + b.m)
                    }
                };
                if better {
                    best = Some(c);
                }
                // A larger m for this k only costs more.
                break;
            }
        }
    }
    match best {
        Some(c) => Ok(c),
        None => {
            let s = strongest.unwrap_or(Choice {
                k: 1,
                m: 1,
                durability: stripe_durability(1, 1, model),
            });
            Err(DurabilityError::Unreachable {
                target,
                afr: model.afr,
                window_hours: model.repair_window_hours,
                members: at.members,
                sites: at.sites,
                ceiling: usize::from(ceiling),
                best_k: s.k,
                best_m: s.m,
                best: s.durability.annual(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_failure_of_a_year_is_the_afr() {
        let m = FailureModel {
            afr: 0.05,
            repair_window_hours: HOURS_PER_YEAR,
        };
        assert!((m.window_failure() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn replication_durability_matches_the_direct_formula() {
        // k=1, m=2: lost when all three fail in one window, so the annual
        // loss is windows * p^3 to first order (the rest is ~1e-10 of it).
        let model = FailureModel::default();
        let p = model.window_failure();
        let expected = HOURS_PER_YEAR / 24.0 * p.powi(3);
        let d = stripe_durability(1, 2, &model);
        let rel = (d.annual_loss() - expected).abs() / expected;
        assert!(rel < 1e-6, "{} vs {expected}", d.annual_loss());
        assert!(d.annual_loss() > 0.0);
    }

    #[test]
    fn a_stricter_target_costs_more() {
        let model = FailureModel::default();
        let at = Membership {
            members: 40,
            sites: 8,
        };
        let low = choose(0.999, at, &model, 20).unwrap();
        let high = choose(0.999_999_999_99, at, &model, 20).unwrap();
        assert!(high.overhead() >= low.overhead());
        assert!(high.durability.meets(0.999_999_999_99));
        assert!(high.k < 8, "site loss must be survivable: k={}", high.k);
    }

    #[test]
    fn unreachable_targets_say_so() {
        let model = FailureModel {
            afr: 0.5,
            repair_window_hours: 2000.0,
        };
        let at = Membership {
            members: 3,
            sites: 1,
        };
        let e = choose(0.999_999_999, at, &model, 20).unwrap_err();
        assert!(matches!(e, DurabilityError::Unreachable { .. }), "{e}");
    }
}
