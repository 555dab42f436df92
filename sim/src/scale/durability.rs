//! Report 3: objects lost (and made unavailable) over simulated years.
//!
//! An event-driven simulation over the holdings each policy left at the end
//! of its fill, with one failure schedule for all three policies (common
//! random numbers: the same nodes fail at the same times, the same sites go
//! dark), so that differences come from placement alone.
//!
//! # Model
//! - **Node failures.** Every node fails as a Poisson process with rate
//!   `λ = -ln(1 - afr)` per year (so `afr` is the probability of failing
//!   within a year). A failure destroys the node's shards; the node is
//!   replaced at once by an empty one with the same site and capacity, which
//!   can fail again later.
//! - **Repair.** `delay` after a failure, each shard it destroyed is rebuilt
//!   if its stripe then has at least `k` reachable shards (on live nodes at
//!   sites that are up); otherwise the repair waits and is retried whenever
//!   a site comes back or another repair runs. A stripe that has more than
//!   `m` shards destroyed at once is lost. These decisions are not the
//!   model's: they come from [`planner::plan_stripe`], the rule the node's
//!   `plan_object` applies to each segment, with a destroyed shard
//!   `Missing`, one on a dark site `Unreachable` and the others `Readable`.
//! - **Site outages.** Each site goes dark as a Poisson process with rate
//!   `site_outage_rate` per site-year for `site_outage_hours`: its shards
//!   are unreachable (not destroyed), it receives no repairs, and a stripe
//!   with fewer than `k` reachable shards is *unavailable* until the site
//!   returns. Placement matters here: site spreading puts at most one shard
//!   of a stripe in a site while there are at least `k + m` sites.
//! - **Where repairs go**, per policy:
//!   - rendezvous: a node drawn with probability proportional to its
//!     placement weight (`placement::fill_weight`, against the reference
//!     fill at the start of the run) among the nodes of sites that are up
//!     and hold no shard of the stripe (any up site if there is none).
//!     That is close to the distribution of
//!     the replacement [`View::place`] picks when one holder is removed
//!     (first choice proportional to weight, site-first). It is sampled
//!     with the simulation's RNG instead of computed per repair because a
//!     `place` over 10,000 nodes costs about 170 µs and a run makes millions
//!     of repairs; node identities do not matter for loss, because every
//!     node fails at the same rate.
//!   - utility-factor: the least utilised node that is up and not in the
//!     stripe (no site rule, as in its fill).
//!   - random: a uniformly drawn node that is up and not in the stripe.
//!
//!   A destination needs room for the shard.
//!
//! # Outputs
//! Objects lost and unavailable (at least once) per million stored objects,
//! shards destroyed and rebuilt, deferred repairs, and the number of
//! stripes that ever had `j` shards missing at once for `j = 1..=m+1`
//! (the tail shows how close the run came to losses when there are none).
//! Beside them, the first-order estimate for node failures alone:
//!
//! ```text
//! lost per million ≈ 1e6 * T * n * λ * C(n - 1, m) * (1 - e^(-λ d))^m
//! ```
//!
//! (a first failure in a stripe of `n = k + m` shards at rate `n λ`, then
//! `m` of the other `n - 1` holders failing within the repair delay `d`).
//!
//! [`View::place`]: dynostore_protocol::placement::View::place
//! [`planner::plan_stripe`]: dynostore_protocol::planner::plan_stripe

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use dynostore_protocol::placement::{fill_weight, reference_fill, Space};
use dynostore_protocol::planner::{plan_stripe, ShardState, StripePlan};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::fill::{utilisation_of, FillOutcome, Policy};
use super::log::EventLog;
use super::world::{exponential, par_map, stream, World, MISSING};

const MS_PER_HOUR: f64 = 3_600_000.0;
const HOURS_PER_YEAR: f64 = 365.25 * 24.0;

/// One durability setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DurabilityConfig {
    pub label: String,
    pub afr: f64,
    pub repair_delay_hours: f64,
    pub years: f64,
    pub site_outage_rate: f64,
    pub site_outage_hours: f64,
}

/// One setting's results for every policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DurabilitySetting {
    pub config: DurabilityConfig,
    pub node_failures: u64,
    pub site_outages: u64,
    /// The first-order estimate above, for node failures alone.
    pub first_order_lost_per_million: f64,
    pub results: Vec<DurabilityResult>,
}

/// One policy under one setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DurabilityResult {
    pub policy: Policy,
    pub stored_objects: u64,
    pub shards_destroyed: u64,
    pub shards_repaired: u64,
    /// Repair attempts postponed (fewer than k reachable, or no room).
    pub repairs_deferred: u64,
    pub objects_unavailable: u64,
    pub objects_lost: u64,
    pub unavailable_per_million: f64,
    pub lost_per_million: f64,
    /// `reached_missing[j - 1]`: stripes that had at least `j` shards
    /// destroyed at once, `j = 1..=m+1`.
    pub reached_missing: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Fail(u32),
    SiteDown(u32),
    SiteUp(u32),
    Repair(u32),
}

/// The failure schedule shared by all policies: `(time_ms, event)`.
fn schedule(world: &World, cfg: &DurabilityConfig, seed: u64) -> Vec<(u64, Ev)> {
    let mut rng = stream(seed, &format!("durability/{}", cfg.label));
    let horizon_h = cfg.years * HOURS_PER_YEAR;
    let node_rate_per_h = -(1.0 - cfg.afr).ln() / HOURS_PER_YEAR;
    let site_rate_per_h = cfg.site_outage_rate / HOURS_PER_YEAR;
    let mut ev = Vec::new();
    // A rate of 0 (afr 0) means no failures, not an endless loop.
    let nodes = if node_rate_per_h > 0.0 {
        world.initial_range()
    } else {
        0..0
    };
    for node in nodes {
        let mut t = 0.0;
        loop {
            t += exponential(&mut rng, node_rate_per_h);
            if t >= horizon_h {
                break;
            }
            ev.push(((t * MS_PER_HOUR) as u64, Ev::Fail(node)));
        }
    }
    if site_rate_per_h > 0.0 && cfg.site_outage_hours > 0.0 {
        for site in 0..world.sites.len() as u32 {
            let mut t = 0.0;
            loop {
                t += exponential(&mut rng, site_rate_per_h);
                if t >= horizon_h {
                    break;
                }
                ev.push(((t * MS_PER_HOUR) as u64, Ev::SiteDown(site)));
                t += cfg.site_outage_hours;
                ev.push(((t * MS_PER_HOUR) as u64, Ev::SiteUp(site)));
            }
        }
    }
    ev.sort_unstable();
    ev
}

/// Runs every setting for every fill outcome. The runs are independent and
/// go in parallel, each into a child log, absorbed in (setting, policy)
/// order.
pub fn durability(
    world: &World,
    fills: &[FillOutcome],
    settings: &[DurabilityConfig],
    seed: u64,
    threads: usize,
    log: &mut EventLog,
) -> Vec<DurabilitySetting> {
    let schedules: Vec<Vec<(u64, Ev)>> =
        settings.iter().map(|c| schedule(world, c, seed)).collect();
    let jobs: Vec<(usize, usize)> = (0..settings.len())
        .flat_map(|s| (0..fills.len()).map(move |f| (s, f)))
        .collect();
    let parent: &EventLog = log;
    let ran = par_map(threads, jobs.len(), |j| {
        let (s, f) = jobs[j];
        let (cfg, fill) = (&settings[s], &fills[f]);
        let mut child = parent.child(&format!("durability-{}-{}", cfg.label, fill.policy.name()));
        let chooser = Chooser::new(world, fill, seed, &cfg.label);
        let result = Sim::new(world, fill, chooser, s as u64).run(&schedules[s], cfg, &mut child);
        (result, child)
    });
    let mut out: Vec<DurabilitySetting> = settings
        .iter()
        .zip(&schedules)
        .map(|(cfg, events)| DurabilitySetting {
            config: cfg.clone(),
            node_failures: events
                .iter()
                .filter(|(_, e)| matches!(e, Ev::Fail(_)))
                .count() as u64,
            site_outages: events
                .iter()
                .filter(|(_, e)| matches!(e, Ev::SiteDown(_)))
                .count() as u64,
            first_order_lost_per_million: first_order(world.n, world.m, cfg),
            results: Vec::new(),
        })
        .collect();
    for ((s, _), (result, child)) in jobs.into_iter().zip(ran) {
        log.absorb("durability-log", &[s as u64, result.policy.tag()], child);
        out[s].results.push(result);
    }
    out
}

/// The first-order estimate of lost objects per million (module header).
pub fn first_order(n: usize, m: usize, cfg: &DurabilityConfig) -> f64 {
    let lambda = -(1.0 - cfg.afr).ln();
    let d_years = cfg.repair_delay_hours / HOURS_PER_YEAR;
    let p = 1.0 - (-lambda * d_years).exp();
    1e6 * cfg.years * n as f64 * lambda * binomial(n - 1, m) * p.powi(m as i32)
}

fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Read-only facts a chooser consults.
struct Ctx<'a> {
    site_of: &'a [u32],
    site_up: &'a [bool],
    used: &'a [u64],
    capacity: &'a [u64],
}

impl Ctx<'_> {
    fn usable(&self, node: u32, bytes: u64, stripe: &[u32]) -> bool {
        let i = node as usize;
        self.site_up[self.site_of[i] as usize]
            && self.capacity[i] - self.used[i] >= bytes
            && !stripe.contains(&node)
    }
}

/// The protocol's placement weight of a node with `used` of `capacity`.
fn weight_of(capacity: u64, used: u64, reference: f64) -> u64 {
    fill_weight(
        Space {
            capacity_bytes: capacity,
            free_bytes: capacity.saturating_sub(used),
        },
        reference,
    )
}

/// Picks the destination of a rebuilt shard.
#[derive(Debug)]
enum Chooser {
    Rendezvous {
        /// Per site: its nodes and a Fenwick tree of their placement
        /// weights (`fill_weight` against `reference`, the fill at the start).
        site_nodes: Vec<Vec<u32>>,
        slot_in_site: Vec<u32>,
        trees: Vec<Fenwick>,
        reference: f64,
        rng: ChaCha8Rng,
    },
    Utility {
        by_utilisation: BTreeSet<(u64, u32)>,
        key: Vec<u64>,
    },
    Random {
        nodes: u32,
        rng: ChaCha8Rng,
    },
}

impl Chooser {
    fn new(world: &World, fill: &FillOutcome, seed: u64, label: &str) -> Chooser {
        let rng = stream(seed, &format!("repair/{label}/{}", fill.policy.name()));
        let initial = world.initial as u32;
        let ledger = &fill.ledger;
        match fill.policy {
            Policy::Rendezvous => {
                let mut site_nodes = vec![Vec::new(); world.sites.len()];
                let mut slot_in_site = vec![0; world.initial];
                for i in 0..initial {
                    let s = world.site_of(i) as usize;
                    slot_in_site[i as usize] = site_nodes[s].len() as u32;
                    site_nodes[s].push(i);
                }
                let reference = reference_fill((0..initial).map(|i| Space {
                    capacity_bytes: world.capacity(i),
                    free_bytes: ledger.free(i),
                }));
                let trees = site_nodes
                    .iter()
                    .map(|nodes| {
                        Fenwick::from_values(nodes.iter().map(|&i| {
                            weight_of(world.capacity(i), ledger.used[i as usize], reference)
                        }))
                    })
                    .collect();
                Chooser::Rendezvous {
                    site_nodes,
                    slot_in_site,
                    trees,
                    reference,
                    rng,
                }
            }
            Policy::UtilityFactor => {
                let key: Vec<u64> = (0..initial)
                    .map(|i| utilisation_of(ledger.used[i as usize], world.capacity(i)))
                    .collect();
                let by_utilisation = (0..initial).map(|i| (key[i as usize], i)).collect();
                Chooser::Utility {
                    by_utilisation,
                    key,
                }
            }
            Policy::Random => Chooser::Random {
                nodes: initial,
                rng,
            },
        }
    }

    /// `node`'s used bytes changed (already written into `ctx.used`).
    fn update(&mut self, node: u32, old_used: u64, ctx: &Ctx) {
        let i = node as usize;
        match self {
            Chooser::Rendezvous {
                slot_in_site,
                trees,
                reference,
                ..
            } => {
                let cap = ctx.capacity[i];
                let delta = weight_of(cap, ctx.used[i], *reference) as i128
                    - weight_of(cap, old_used, *reference) as i128;
                trees[ctx.site_of[i] as usize].add(slot_in_site[i] as usize, delta);
            }
            Chooser::Utility {
                by_utilisation,
                key,
            } => {
                by_utilisation.remove(&(key[i], node));
                key[i] = utilisation_of(ctx.used[i], ctx.capacity[i]);
                by_utilisation.insert((key[i], node));
            }
            Chooser::Random { .. } => {}
        }
    }

    fn choose(&mut self, stripe: &[u32], bytes: u64, ctx: &Ctx) -> Option<u32> {
        match self {
            Chooser::Rendezvous {
                site_nodes,
                trees,
                rng,
                ..
            } => {
                let mut used_site = vec![false; trees.len()];
                for &h in stripe.iter().filter(|&&h| h != MISSING) {
                    used_site[ctx.site_of[h as usize] as usize] = true;
                }
                for spread in [true, false] {
                    let sites: Vec<usize> = (0..trees.len())
                        .filter(|&s| ctx.site_up[s] && !(spread && used_site[s]))
                        .collect();
                    let total: u64 = sites.iter().map(|&s| trees[s].total()).sum();
                    if total == 0 {
                        continue;
                    }
                    for _ in 0..64 {
                        let mut r = rng.gen_range(0..total);
                        let mut pick = None;
                        for &s in &sites {
                            let t = trees[s].total();
                            if r < t {
                                pick = Some(site_nodes[s][trees[s].find(r)]);
                                break;
                            }
                            r -= t;
                        }
                        if let Some(c) = pick.filter(|&c| ctx.usable(c, bytes, stripe)) {
                            return Some(c);
                        }
                    }
                }
                None
            }
            Chooser::Utility { by_utilisation, .. } => by_utilisation
                .iter()
                .map(|&(_, i)| i)
                .find(|&i| ctx.usable(i, bytes, stripe)),
            Chooser::Random { nodes, rng } => (0..10_000)
                .map(|_| rng.gen_range(0..*nodes))
                .find(|&c| ctx.usable(c, bytes, stripe)),
        }
    }
}

/// A Fenwick (binary indexed) tree of non-negative `u64` values.
#[derive(Debug, Clone)]
pub struct Fenwick {
    tree: Vec<u64>,
}

impl Fenwick {
    pub fn from_values(values: impl Iterator<Item = u64>) -> Fenwick {
        let mut tree = vec![0u64];
        tree.extend(values);
        for i in 1..tree.len() {
            let parent = i + (i & i.wrapping_neg());
            if parent < tree.len() {
                tree[parent] += tree[i];
            }
        }
        Fenwick { tree }
    }

    /// Adds `delta` to value `idx` (0-based); the value stays non-negative.
    pub fn add(&mut self, idx: usize, delta: i128) {
        let mut i = idx + 1;
        while i < self.tree.len() {
            self.tree[i] = (self.tree[i] as i128 + delta) as u64;
            i += i & i.wrapping_neg();
        }
    }

    pub fn total(&self) -> u64 {
        let mut i = self.tree.len() - 1;
        let mut s = 0;
        while i > 0 {
            s += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        s
    }

    /// The index whose cumulative range contains `r` (`r < total`).
    pub fn find(&self, mut r: u64) -> usize {
        let len = self.tree.len() - 1;
        let mut pos = 0;
        let mut step = len.next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= len && self.tree[next] <= r {
                pos = next;
                r -= self.tree[next];
            }
            step >>= 1;
        }
        pos.min(len.saturating_sub(1))
    }
}

/// A [`Ctx`] borrowing only the fields it names, so that the chooser can be
/// borrowed mutably beside it.
macro_rules! ctx {
    ($sim:expr) => {
        Ctx {
            site_of: &$sim.site_of,
            site_up: &$sim.site_up,
            used: &$sim.used,
            capacity: &$sim.capacity,
        }
    };
}

struct Sim<'a> {
    world: &'a World,
    policy: Policy,
    tag: u64,
    holders: Vec<u32>,
    stored: &'a [bool],
    missing: Vec<u8>,
    max_missing: Vec<u8>,
    lost: Vec<bool>,
    unavailable: Vec<bool>,
    node_stripes: Vec<Vec<u32>>,
    site_of: Vec<u32>,
    site_nodes: Vec<Vec<u32>>,
    site_up: Vec<bool>,
    used: Vec<u64>,
    capacity: Vec<u64>,
    chooser: Chooser,
    blocked: Vec<(u32, u8)>,
    result: DurabilityResult,
}

impl<'a> Sim<'a> {
    fn new(world: &'a World, fill: &'a FillOutcome, chooser: Chooser, setting_tag: u64) -> Self {
        let n = world.n;
        let objects = world.objects.len();
        let initial = world.initial;
        let mut node_stripes = vec![Vec::new(); initial];
        for (s, hs) in fill.holders.chunks(n).enumerate() {
            if fill.stored[s] {
                for &h in hs {
                    node_stripes[h as usize].push(s as u32);
                }
            }
        }
        let site_of: Vec<u32> = (0..initial as u32).map(|i| world.site_of(i)).collect();
        let mut site_nodes = vec![Vec::new(); world.sites.len()];
        for (i, &s) in site_of.iter().enumerate() {
            site_nodes[s as usize].push(i as u32);
        }
        let stored_objects = fill.stored.iter().filter(|&&s| s).count() as u64;
        Sim {
            world,
            policy: fill.policy,
            tag: setting_tag,
            holders: fill.holders.clone(),
            stored: &fill.stored,
            missing: vec![0; objects],
            max_missing: vec![0; objects],
            lost: vec![false; objects],
            unavailable: vec![false; objects],
            node_stripes,
            site_of,
            site_nodes,
            site_up: vec![true; world.sites.len()],
            used: fill.ledger.used[..initial].to_vec(),
            capacity: fill.ledger.capacity[..initial].to_vec(),
            chooser,
            blocked: Vec::new(),
            result: DurabilityResult {
                policy: fill.policy,
                stored_objects,
                shards_destroyed: 0,
                shards_repaired: 0,
                repairs_deferred: 0,
                objects_unavailable: 0,
                objects_lost: 0,
                unavailable_per_million: 0.0,
                lost_per_million: 0.0,
                reached_missing: vec![0; world.m + 1],
            },
        }
    }

    fn run(
        mut self,
        schedule: &[(u64, Ev)],
        cfg: &DurabilityConfig,
        log: &mut EventLog,
    ) -> DurabilityResult {
        let delay_ms = (cfg.repair_delay_hours * MS_PER_HOUR) as u64;
        // Static events in schedule order, then repairs as they are due;
        // the sequence number breaks ties deterministically.
        let mut heap: BinaryHeap<Reverse<(u64, u64, Ev)>> = schedule
            .iter()
            .enumerate()
            .map(|(seq, &(t, e))| Reverse((t, seq as u64, e)))
            .collect();
        let mut seq = schedule.len() as u64;
        let mut pending: Vec<Vec<(u32, u8)>> = Vec::new();
        let horizon_ms = (cfg.years * HOURS_PER_YEAR * MS_PER_HOUR) as u64;
        while let Some(Reverse((t, _, ev))) = heap.pop() {
            if t >= horizon_ms {
                break;
            }
            match ev {
                Ev::Fail(x) => {
                    let list = self.fail(t, x, log);
                    heap.push(Reverse((
                        t + delay_ms,
                        seq,
                        Ev::Repair(pending.len() as u32),
                    )));
                    seq += 1;
                    pending.push(list);
                }
                Ev::Repair(f) => {
                    let list = std::mem::take(&mut pending[f as usize]);
                    for (s, slot) in list {
                        self.repair(t, s, slot, log);
                    }
                    self.retry_blocked(t, log);
                }
                Ev::SiteDown(site) => {
                    self.site_up[site as usize] = false;
                    log.event(
                        "site-down",
                        &[self.tag, self.policy.tag(), t, u64::from(site)],
                    );
                    for &node in &self.site_nodes[site as usize] {
                        for &s in &self.node_stripes[node as usize] {
                            check_unavailable(
                                self.world,
                                &self.holders,
                                &self.site_of,
                                &self.site_up,
                                &mut self.unavailable,
                                &mut self.result,
                                s,
                            );
                        }
                    }
                }
                Ev::SiteUp(site) => {
                    self.site_up[site as usize] = true;
                    log.event(
                        "site-up",
                        &[self.tag, self.policy.tag(), t, u64::from(site)],
                    );
                    self.retry_blocked(t, log);
                }
            }
        }
        let r = &mut self.result;
        for &mm in &self.max_missing {
            for j in 1..=mm.min(self.world.m as u8 + 1) {
                r.reached_missing[j as usize - 1] += 1;
            }
        }
        let per_million = |x: u64| x as f64 * 1e6 / r.stored_objects.max(1) as f64;
        r.lost_per_million = per_million(r.objects_lost);
        r.unavailable_per_million = per_million(r.objects_unavailable);
        log.event(
            "durability",
            &[
                self.tag,
                self.policy.tag(),
                r.shards_destroyed,
                r.shards_repaired,
                r.repairs_deferred,
                r.objects_unavailable,
                r.objects_lost,
            ],
        );
        self.result
    }

    /// Node `x` fails at `t`: returns the shards to rebuild.
    fn fail(&mut self, t: u64, x: u32, log: &mut EventLog) -> Vec<(u32, u8)> {
        let n = self.world.n;
        let stripes = std::mem::take(&mut self.node_stripes[x as usize]);
        log.event(
            "fail",
            &[
                self.tag,
                self.policy.tag(),
                t,
                u64::from(x),
                stripes.len() as u64,
            ],
        );
        let mut rebuild = Vec::with_capacity(stripes.len());
        for s in stripes {
            let si = s as usize;
            if self.lost[si] || !self.stored[si] {
                continue;
            }
            let hs = &mut self.holders[si * n..(si + 1) * n];
            let Some(slot) = hs.iter().position(|&h| h == x) else {
                continue;
            };
            hs[slot] = MISSING;
            self.result.shards_destroyed += 1;
            self.missing[si] += 1;
            self.max_missing[si] = self.max_missing[si].max(self.missing[si]);
            let stripe = &self.holders[si * n..(si + 1) * n];
            let plan = plan_stripe(self.world.k, states(stripe, &self.site_of, &self.site_up));
            if let StripePlan::Lost { .. } = plan {
                self.lost[si] = true;
                self.result.objects_lost += 1;
                log.event("lost", &[self.tag, self.policy.tag(), t, u64::from(s)]);
            } else {
                rebuild.push((s, slot as u8));
                check_unavailable(
                    self.world,
                    &self.holders,
                    &self.site_of,
                    &self.site_up,
                    &mut self.unavailable,
                    &mut self.result,
                    s,
                );
            }
        }
        let old = self.used[x as usize];
        self.used[x as usize] = 0;
        self.chooser.update(x, old, &ctx!(self));
        rebuild
    }

    fn repair(&mut self, t: u64, s: u32, slot: u8, log: &mut EventLog) {
        let n = self.world.n;
        let si = s as usize;
        if self.lost[si] {
            return;
        }
        let stripe = &self.holders[si * n..(si + 1) * n];
        let bytes = self.world.objects[si].shard_bytes;
        let dest = match plan_stripe(self.world.k, states(stripe, &self.site_of, &self.site_up)) {
            StripePlan::Rebuild { .. } => self.chooser.choose(stripe, bytes, &ctx!(self)),
            // Fewer than k reachable: retried when a site returns.
            StripePlan::Unreadable { .. } => None,
            // Lost ones were marked by `fail`; a whole one has nothing to do.
            StripePlan::Lost { .. } | StripePlan::Whole { .. } => return,
        };
        let Some(d) = dest else {
            self.result.repairs_deferred += 1;
            self.blocked.push((s, slot));
            return;
        };
        self.holders[si * n + slot as usize] = d;
        self.missing[si] -= 1;
        self.node_stripes[d as usize].push(s);
        let old = self.used[d as usize];
        self.used[d as usize] += bytes;
        self.chooser.update(d, old, &ctx!(self));
        self.result.shards_repaired += 1;
        log.event(
            "repair",
            &[self.tag, self.policy.tag(), t, u64::from(s), u64::from(d)],
        );
    }

    fn retry_blocked(&mut self, t: u64, log: &mut EventLog) {
        if self.blocked.is_empty() {
            return;
        }
        let blocked = std::mem::take(&mut self.blocked);
        let deferred = self.result.repairs_deferred;
        for (s, slot) in blocked {
            self.repair(t, s, slot, log);
        }
        // A retry that is deferred again is not a new deferral.
        self.result.repairs_deferred = deferred;
    }
}

/// A stripe's positions as [`plan_stripe`] sees them: a destroyed shard is
/// missing, one on a dark site is unreachable (not lost).
fn states<'s>(
    stripe: &'s [u32],
    site_of: &'s [u32],
    site_up: &'s [bool],
) -> impl Iterator<Item = ShardState> + 's {
    stripe.iter().map(|&h| {
        if h == MISSING {
            ShardState::Missing
        } else if site_up[site_of[h as usize] as usize] {
            ShardState::Readable
        } else {
            ShardState::Unreachable
        }
    })
}

fn check_unavailable(
    world: &World,
    holders: &[u32],
    site_of: &[u32],
    site_up: &[bool],
    unavailable: &mut [bool],
    result: &mut DurabilityResult,
    s: u32,
) {
    let n = world.n;
    let si = s as usize;
    if unavailable[si] {
        return;
    }
    // The read's rule (`read::StripeRead`): fewer than k readable fails.
    let readable = states(&holders[si * n..(si + 1) * n], site_of, site_up)
        .filter(|s| *s == ShardState::Readable)
        .count();
    if readable < world.k {
        unavailable[si] = true;
        result.objects_unavailable += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenwick_totals_and_search() {
        let mut f = Fenwick::from_values([3u64, 0, 5, 2].into_iter());
        assert_eq!(f.total(), 10);
        assert_eq!(f.find(0), 0);
        assert_eq!(f.find(2), 0);
        assert_eq!(f.find(3), 2);
        assert_eq!(f.find(7), 2);
        assert_eq!(f.find(8), 3);
        f.add(1, 4);
        f.add(2, -5);
        assert_eq!(f.total(), 9);
        assert_eq!(f.find(3), 1);
        assert_eq!(f.find(7), 3);
    }

    #[test]
    fn zero_rates_schedule_nothing() {
        let world = World::generate(&crate::scale::world::WorldSpec {
            seed: 1,
            nodes: 20,
            sites: 3,
            site_skew: 0.0,
            objects: 10,
            k: 2,
            m: 1,
            fill: 0.5,
            capacity_ratio: 10.0,
            size_median_bytes: 1e6,
            size_sigma: 0.5,
            join_fraction: 0.0,
            leave_fraction: 0.0,
        });
        let cfg = DurabilityConfig {
            label: "zero".into(),
            afr: 0.0,
            repair_delay_hours: 24.0,
            years: 5.0,
            site_outage_rate: 0.0,
            site_outage_hours: 72.0,
        };
        assert!(schedule(&world, &cfg, 1).is_empty());
    }

    #[test]
    fn a_dark_site_makes_shards_unreachable_not_missing() {
        let site_of = [0, 1, 1];
        let site_up = [true, false];
        let stripe = [0, MISSING, 1, 2];
        let got: Vec<ShardState> = states(&stripe, &site_of, &site_up).collect();
        use ShardState::*;
        assert_eq!(got, [Readable, Missing, Unreachable, Unreachable]);
        // Three held, one readable: a 2-of-4 stripe waits, it is not lost.
        assert_eq!(
            plan_stripe(2, got),
            StripePlan::Unreadable {
                missing: 1,
                readable: 1
            }
        );
    }

    #[test]
    fn first_order_matches_hand_computation() {
        let cfg = DurabilityConfig {
            label: "t".into(),
            afr: 0.2,
            repair_delay_hours: 168.0,
            years: 5.0,
            site_outage_rate: 0.0,
            site_outage_hours: 0.0,
        };
        let lambda = -(0.8f64).ln();
        let p = 1.0 - (-lambda * 168.0 / HOURS_PER_YEAR).exp();
        let want = 1e6 * 5.0 * 14.0 * lambda * 715.0 * p.powi(4);
        assert!((first_order(14, 4, &cfg) - want).abs() < 1e-9);
        assert_eq!(binomial(13, 4), 715.0);
    }
}
