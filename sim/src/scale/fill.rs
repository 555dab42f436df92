//! Report 1: how evenly each policy fills heterogeneous nodes.
//!
//! Objects are offered one by one, in one order for every policy, until the
//! offered bytes (parity included) reach the target fill of the total
//! capacity. A policy chooses `k + m` distinct nodes per object; a node can
//! take a shard only if its free bytes are at least the shard size. The
//! policies:
//!
//! - **rendezvous**: the protocol's [`View::place`] over a view weighted
//!   as the node weighs its members ([`View::weighted`]: capacity with a
//!   bounded correction from fill, see `dynostore_protocol::placement`),
//!   from each node's used bytes. [`View::new`] costs O(n log n) and
//!   hashes every node ID, so the view is rebuilt every `refresh` objects,
//!   not per object: within a window every node keeps the weight it had at
//!   the window's start. The first choices of a window are computed in
//!   parallel (they depend only on the view) and applied in object order.
//!   If a first choice has no room left (it filled up within the window),
//!   the shard goes to the next node with room in the longer list
//!   `place(key, 4n)`, then in the full [`View::ranking`]: a *redirect*.
//! - **utility-factor** (the DynoStore paper's greedy baseline): every shard
//!   goes to the node with the least relative utilisation `used / capacity`
//!   at that moment (ties by node index), distinct nodes per stripe, no site
//!   rule. Exact state, no refresh. A node without room is skipped.
//! - **random**: nodes drawn uniformly (distinct per stripe, no site rule);
//!   a node without room is re-drawn (a redirect).
//!
//! Two things shape the rendezvous spread besides weights. Placement is a
//! hash, so a node's count of shards has sampling noise, relative size
//! about `1 / sqrt(shards on the node)`, which free-space weights damp but
//! do not remove. And site spreading takes one shard per site before any
//! site gets a second, so a site's share of shards follows how often it is
//! among the best `k + m` sites, not its capacity: nodes in sites with less
//! capacity than average fill faster, and a site with more than
//! `1 / (k + m)` of the capacity can never be filled in proportion. (Run
//! with `--sites 1` to see the spread without it.)
//!
//! An object that cannot get `k + m` nodes with room is *refused* and
//! stores nothing. At each checkpoint (the first object at which the
//! offered bytes reach 20, 40, 60, 80 % of the capacity, and the target)
//! the spread of the per-node fill fractions `f_i = used_i / capacity_i` is
//! recorded: mean, population standard deviation, min, p1, p50, p99, max,
//! max/min and p99/p1 (nearest-rank quantiles).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use dynostore_protocol::placement::{eligible_for_writes, View, Weighting};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::log::{ppm, EventLog};
use super::world::{
    node_index, par_map, place_indices, progress_bar, stream, Object, World, MISSING,
};

/// The three placement policies compared throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    Rendezvous,
    UtilityFactor,
    Random,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Rendezvous, Policy::UtilityFactor, Policy::Random];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Rendezvous => "rendezvous",
            Policy::UtilityFactor => "utility-factor",
            Policy::Random => "random",
        }
    }

    pub fn tag(self) -> u64 {
        self as u64
    }
}

/// How a fill run is set up.
#[derive(Debug, Clone)]
pub struct FillConfig {
    pub seed: u64,
    /// Objects per rendezvous view refresh.
    pub refresh: usize,
    pub threads: usize,
    /// Fill fractions at which to record the spread.
    pub checkpoints: Vec<f64>,
    /// Print each checkpoint's spread on stderr as it is reached (long
    /// runs show what they measured so far).
    pub progress: bool,
    /// Names the random policy's RNG stream, so that re-runs on other node
    /// sets use the same stream.
    pub label: &'static str,
}

/// Per-node bytes.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub capacity: Vec<u64>,
    pub used: Vec<u64>,
}

impl Ledger {
    pub fn free(&self, i: u32) -> u64 {
        self.capacity[i as usize] - self.used[i as usize]
    }

    pub fn has_room(&self, i: u32, bytes: u64) -> bool {
        self.free(i) >= bytes
    }
}

/// The spread of fill fractions over a set of nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub std_dev: f64,
    pub min: f64,
    pub p1: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// `None` when the least-filled node is empty.
    pub max_over_min: Option<f64>,
    pub p99_over_p1: Option<f64>,
}

impl Spread {
    pub fn of(fractions: &[f64]) -> Spread {
        let mut v = fractions.to_vec();
        v.sort_unstable_by(f64::total_cmp);
        let len = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / len;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / len;
        let q = |p: f64| -> f64 {
            if v.is_empty() {
                0.0
            } else {
                v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
            }
        };
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let (min, p1, p99, max) = (q(0.0), q(0.01), q(0.99), q(1.0));
        Spread {
            mean,
            std_dev: var.sqrt(),
            min,
            p1,
            p50: q(0.5),
            p99,
            max,
            max_over_min: ratio(max, min),
            p99_over_p1: ratio(p99, p1),
        }
    }
}

/// The state at one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checkpoint {
    /// The offered-bytes fraction this checkpoint was set at.
    pub target: f64,
    pub objects_offered: u64,
    /// Stored bytes / capacity.
    pub fill: f64,
    pub spread: Spread,
    pub redirected_shards: u64,
    pub refused_objects: u64,
}

/// What a fill run leaves behind.
#[derive(Debug, Clone)]
pub struct FillOutcome {
    pub policy: Policy,
    /// `n` holders per object, in the order the policy chose them;
    /// [`MISSING`] for a refused object.
    pub holders: Vec<u32>,
    pub stored: Vec<bool>,
    pub ledger: Ledger,
    pub checkpoints: Vec<Checkpoint>,
    pub redirected_shards: u64,
    pub refused_objects: u64,
}

impl FillOutcome {
    pub fn holders_of(&self, obj: usize, n: usize) -> &[u32] {
        &self.holders[obj * n..(obj + 1) * n]
    }
}

/// Chooses the nodes of one object.
trait Placer {
    /// Called before the objects `start..start + window.len()` are placed.
    fn begin_window(&mut self, _ledger: &Ledger, _window: &[Object]) {}
    /// Fills `out` with up to `n` distinct nodes with room for the shard of
    /// object `pos` of the window; returns how many shards were redirected.
    /// The caller stores the object only if `out` ends up with `n` nodes.
    fn choose(&mut self, pos: usize, obj: &Object, ledger: &Ledger, out: &mut Vec<u32>) -> u64;
}

/// Places `world.objects` on the nodes `active` (indices into
/// `world.all_nodes`) with `policy`, from empty.
pub fn fill(
    world: &World,
    active: &[u32],
    policy: Policy,
    cfg: &FillConfig,
    log: &mut EventLog,
) -> FillOutcome {
    let n = world.n;
    let ledger = Ledger {
        capacity: world.all_nodes.iter().map(|x| x.capacity_bytes).collect(),
        used: vec![0; world.all_nodes.len()],
    };
    match policy {
        Policy::Rendezvous => {
            let placer = RendezvousPlacer {
                world,
                active,
                threads: cfg.threads,
                view: None,
                first: Vec::new(),
            };
            drive(world, active, policy, cfg, ledger, placer, log)
        }
        Policy::UtilityFactor => {
            let heap = active
                .iter()
                .map(|&i| Reverse((utilisation(&ledger, i), i)))
                .collect();
            let placer = UtilityPlacer {
                n,
                heap,
                popped: Vec::new(),
            };
            drive(world, active, policy, cfg, ledger, placer, log)
        }
        Policy::Random => {
            let placer = RandomPlacer {
                n,
                active,
                rng: stream(cfg.seed, cfg.label),
            };
            drive(world, active, policy, cfg, ledger, placer, log)
        }
    }
}

fn drive(
    world: &World,
    active: &[u32],
    policy: Policy,
    cfg: &FillConfig,
    mut ledger: Ledger,
    mut placer: impl Placer,
    log: &mut EventLog,
) -> FillOutcome {
    let n = world.n;
    let objects = &world.objects;
    let capacity: u128 = active
        .iter()
        .map(|&i| u128::from(ledger.capacity[i as usize]))
        .sum();
    let mut out = FillOutcome {
        policy,
        holders: vec![MISSING; objects.len() * n],
        stored: vec![false; objects.len()],
        ledger: Ledger {
            capacity: Vec::new(),
            used: Vec::new(),
        },
        checkpoints: Vec::new(),
        redirected_shards: 0,
        refused_objects: 0,
    };
    let mut offered: u128 = 0;
    let mut stored_bytes: u128 = 0;
    let mut next_cp = 0;
    let mut chosen = Vec::with_capacity(n);
    let refresh = cfg.refresh.max(1);
    let bar = progress_bar(
        cfg.progress,
        objects.len(),
        &format!("objects placed ({})", policy.name()),
    );
    for start in (0..objects.len()).step_by(refresh) {
        let end = (start + refresh).min(objects.len());
        bar.set_position(start as u64);
        placer.begin_window(&ledger, &objects[start..end]);
        for (i, obj) in objects.iter().enumerate().take(end).skip(start) {
            chosen.clear();
            let redirected = placer.choose(i - start, obj, &ledger, &mut chosen);
            out.redirected_shards += redirected;
            let stripe_bytes = u128::from(obj.shard_bytes) * n as u128;
            if chosen.len() == n {
                for &h in &chosen {
                    ledger.used[h as usize] += obj.shard_bytes;
                }
                out.holders[i * n..(i + 1) * n].copy_from_slice(&chosen);
                out.stored[i] = true;
                stored_bytes += stripe_bytes;
                log.event_with_nodes("place", &[policy.tag(), i as u64, redirected], &chosen);
            } else {
                out.refused_objects += 1;
                log.event("refuse", &[policy.tag(), i as u64]);
            }
            offered += stripe_bytes;
            while next_cp < cfg.checkpoints.len()
                && offered as f64 >= cfg.checkpoints[next_cp] * capacity as f64
            {
                let cp = checkpoint(
                    cfg.checkpoints[next_cp],
                    i + 1,
                    &ledger,
                    active,
                    stored_bytes,
                    capacity,
                    &out,
                );
                record(log, policy, &cp);
                if cfg.progress {
                    bar.suspend(|| {
                        eprintln!(
                            "          {} at {:.0}%: std {:.2}%, max {:.1}%, refused {}",
                            policy.name(),
                            100.0 * cp.target,
                            100.0 * cp.spread.std_dev,
                            100.0 * cp.spread.max,
                            cp.refused_objects
                        )
                    });
                }
                out.checkpoints.push(cp);
                next_cp += 1;
            }
        }
    }
    bar.finish_and_clear();
    // Targets the offered bytes never reached (rounding): record at the end.
    while next_cp < cfg.checkpoints.len() {
        let cp = checkpoint(
            cfg.checkpoints[next_cp],
            objects.len(),
            &ledger,
            active,
            stored_bytes,
            capacity,
            &out,
        );
        record(log, policy, &cp);
        out.checkpoints.push(cp);
        next_cp += 1;
    }
    out.ledger = ledger;
    out
}

fn checkpoint(
    target: f64,
    offered_objects: usize,
    ledger: &Ledger,
    active: &[u32],
    stored_bytes: u128,
    capacity: u128,
    so_far: &FillOutcome,
) -> Checkpoint {
    let fractions: Vec<f64> = active
        .iter()
        .map(|&i| ledger.used[i as usize] as f64 / ledger.capacity[i as usize] as f64)
        .collect();
    Checkpoint {
        target,
        objects_offered: offered_objects as u64,
        fill: stored_bytes as f64 / capacity as f64,
        spread: Spread::of(&fractions),
        redirected_shards: so_far.redirected_shards,
        refused_objects: so_far.refused_objects,
    }
}

fn record(log: &mut EventLog, policy: Policy, cp: &Checkpoint) {
    let s = &cp.spread;
    log.event(
        "checkpoint",
        &[
            policy.tag(),
            ppm(cp.target),
            cp.objects_offered,
            ppm(cp.fill),
            ppm(s.min),
            ppm(s.p1),
            ppm(s.p99),
            ppm(s.max),
            ppm(s.std_dev),
            cp.redirected_shards,
            cp.refused_objects,
        ],
    );
}

/// `used / capacity` as a fixed-point integer, for exact ordering.
fn utilisation(ledger: &Ledger, i: u32) -> u64 {
    utilisation_of(ledger.used[i as usize], ledger.capacity[i as usize])
}

pub fn utilisation_of(used: u64, capacity: u64) -> u64 {
    ((u128::from(used) << 32) / u128::from(capacity.max(1))) as u64
}

struct RendezvousPlacer<'a> {
    world: &'a World,
    active: &'a [u32],
    threads: usize,
    view: Option<View>,
    /// First choices of the current window, `n` per object, padded with
    /// [`MISSING`].
    first: Vec<u32>,
}

impl Placer for RendezvousPlacer<'_> {
    fn begin_window(&mut self, ledger: &Ledger, window: &[Object]) {
        let n = self.world.n;
        // The first window builds the view; later ones refresh its
        // weights in place (the same view, without sorting and hashing
        // every node ID again).
        let view = match self.view.take() {
            Some(mut view) => {
                self.world.reweigh(&mut view, |i| ledger.used[i as usize]);
                view
            }
            None => self
                .world
                .weighted_view(self.active.iter().copied(), |i| ledger.used[i as usize]),
        };
        let firsts = par_map(self.threads, window.len(), |j| {
            let mut v: Vec<u32> = view
                .place_sized(window[j].key, n, usize::MAX, window[j].shard_bytes)
                .into_iter()
                .map(node_index)
                .collect();
            v.resize(n, MISSING);
            v
        });
        self.first = firsts.concat();
        self.view = Some(view);
    }

    fn choose(&mut self, pos: usize, obj: &Object, ledger: &Ledger, out: &mut Vec<u32>) -> u64 {
        let n = self.world.n;
        let first = &self.first[pos * n..(pos + 1) * n];
        out.extend(
            first
                .iter()
                .copied()
                .filter(|&h| h != MISSING && ledger.has_room(h, obj.shard_bytes)),
        );
        if out.len() == n {
            return 0;
        }
        let short = (n - out.len()) as u64;
        let Some(view) = self.view.as_ref() else {
            return short;
        };
        let longer = place_indices(view, obj.key, (4 * n).min(view.len()));
        take_with_room(out, n, longer.into_iter(), ledger, obj.shard_bytes);
        if out.len() < n {
            let all = view
                .ranking(obj.key, Weighting::Weighted, eligible_for_writes)
                .into_iter()
                .map(node_index);
            take_with_room(out, n, all, ledger, obj.shard_bytes);
        }
        short
    }
}

fn take_with_room(
    out: &mut Vec<u32>,
    n: usize,
    candidates: impl Iterator<Item = u32>,
    ledger: &Ledger,
    bytes: u64,
) {
    for c in candidates {
        if out.len() == n {
            break;
        }
        if ledger.has_room(c, bytes) && !out.contains(&c) {
            out.push(c);
        }
    }
}

struct UtilityPlacer {
    n: usize,
    /// Least utilised first; ties by node index.
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    popped: Vec<(u64, u32)>,
}

impl Placer for UtilityPlacer {
    fn choose(&mut self, _pos: usize, obj: &Object, ledger: &Ledger, out: &mut Vec<u32>) -> u64 {
        self.popped.clear();
        while out.len() < self.n {
            let Some(Reverse((u, i))) = self.heap.pop() else {
                break;
            };
            self.popped.push((u, i));
            if ledger.has_room(i, obj.shard_bytes) {
                out.push(i);
            }
        }
        let stored = out.len() == self.n;
        for &(u, i) in &self.popped {
            let u = if stored && out.contains(&i) {
                let used = ledger.used[i as usize] + obj.shard_bytes;
                utilisation_of(used, ledger.capacity[i as usize])
            } else {
                u
            };
            self.heap.push(Reverse((u, i)));
        }
        // Skipping a full node is not a redirect: the policy never chose it.
        0
    }
}

struct RandomPlacer<'a> {
    n: usize,
    active: &'a [u32],
    rng: ChaCha8Rng,
}

impl Placer for RandomPlacer<'_> {
    fn choose(&mut self, _pos: usize, obj: &Object, ledger: &Ledger, out: &mut Vec<u32>) -> u64 {
        if self.active.is_empty() {
            return 0;
        }
        let mut redirected = 0;
        // Enough tries that a refusal means the network is really full
        // for this shard, not bad luck.
        let mut tries = 1000 * self.n + 10 * self.active.len();
        while out.len() < self.n && tries > 0 {
            // One shard: draw until a node with room that the stripe does
            // not use yet; it was redirected if any draw was full.
            let mut missed = false;
            while tries > 0 {
                tries -= 1;
                let c = self.active[self.rng.gen_range(0..self.active.len())];
                if out.contains(&c) {
                    continue;
                }
                if ledger.has_room(c, obj.shard_bytes) {
                    out.push(c);
                    break;
                }
                missed = true;
            }
            redirected += u64::from(missed);
        }
        redirected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_known_values() {
        let s = Spread::of(&[0.5, 0.25, 1.0, 0.25]);
        assert_eq!(s.min, 0.25);
        assert_eq!(s.max, 1.0);
        assert_eq!(s.mean, 0.5);
        assert_eq!(s.max_over_min, Some(4.0));
        assert!((s.std_dev - (0.09375f64).sqrt()).abs() < 1e-12);
        assert_eq!(Spread::of(&[0.0, 1.0]).max_over_min, None);
    }

    #[test]
    fn utilisation_orders_by_fraction() {
        assert!(utilisation_of(1, 10) < utilisation_of(2, 10));
        assert!(utilisation_of(10, 100) < utilisation_of(2, 10));
        assert_eq!(utilisation_of(5, 10), utilisation_of(50, 100));
    }
}
