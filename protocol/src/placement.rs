//! Placement: weighted rendezvous hashing over a membership view.
//!
//! Any node computes where the shards of a segment go from the key and its
//! own view of the membership; no coordinator is asked. Two nodes with the
//! same view compute the same placement, whatever order they learnt the
//! members in ([`View::new`] sorts them by node ID).
//!
//! # Formula
//! For a key `x` (a 64-bit [`PlacementKey`] derived from the object ID and
//! segment index) and an eligible member `j` with weight `w_j` (from its
//! capacity and fill, see "Weights" below) the score is
//!
//! ```text
//! u_j     = (fmix64(x XOR h_j) >> 11 + 0.5) / 2^53      uniform in (0, 1)
//! score_j = w_j / -ln(u_j)
//! ```
//!
//! where `h_j` is the first 8 bytes of BLAKE3 of the node ID (computed once
//! per view) and `fmix64` is a bijective 64-bit finaliser. `-ln(u)/w` is an
//! exponential variable of rate `w`, so the member with the highest score
//! (the smallest exponential) is member `j` with probability exactly
//! `w_j / sum(w)`: first-choice shares are proportional to weights. Ties,
//! which have probability 2^-53, are broken by node ID.
//!
//! # Properties (tested in `tests/placement.rs` against a naive oracle)
//! - Proportionality: first-choice shares follow weights.
//! - Minimal disruption: removing a member changes the top-n set only for
//!   keys whose top-n contained it; adding one moves about its fair share of
//!   keys and no more, because the scores of the others do not change.
//! - Order independence: the ranking depends on the set of members only.
//! - Distinctness: a placement never names one node twice.
//! - Site spreading ([`View::place`]): the first pick of each site, in
//!   ranking order, is taken before any site is used twice, so a stripe of
//!   `n` shards over at least `n` sites lands on `n` distinct sites.
//!
//! # Weights: capacity with a bounded correction from gossiped fill
//! A member's weight is not its free bytes but ([`fill_weight`])
//!
//! ```text
//! F   = sum(c_j - r_j) / sum(c_j)     over Alive members with c_j > 0
//! f_j = 1 - r_j / c_j
//! w_j = 0                                                   if r_j = 0
//!     = max(1, c_j * clamp(exp(-G * (f_j - F)), 1/L, B))    otherwise
//! ```
//!
//! where `c_j` and `r_j` are the capacity and free bytes of the containers
//! new shards go to (as announced), `F` the reference fill of the view
//! ([`reference_fill`]), `G` = [`FILL_GAIN`], `B` = [`MAX_BOOST`] and
//! `L` = [`MAX_DAMPING`]. Properties (tested in `tests/weights.rs` against a
//! literal oracle, and in the scale model):
//! - At even fill (`f_j = F`) the weight is the capacity, so shares follow
//!   capacity and a membership change moves about the fair share, as with
//!   any fixed weights.
//! - A member fuller than the view receives exponentially fewer new shards
//!   (halved for every `ln 2 / G`, 0.35 percentage points, above `F`), an
//!   emptier one more: a node's deviation from `F` decays as new data is
//!   written instead of performing a random walk. Free-space weights
//!   (`w = r`) correct with a gain of only `1 / (1 - F)`, too weak to stop
//!   small nodes, whose few large shards are noisy, from filling up.
//! - Bounded: `c_j / L <= w_j <= B * c_j`. An empty joiner is rated at most
//!   `B` times its capacity, so that rebalancing towards it is limited by
//!   the rebalancer's fill margin, not by a weight that grows without bound
//!   as the others fill.
//! - Monotone: for one capacity and one `F`, more free bytes never lower the
//!   weight. Zero only when nothing is free.
//! - Sized ([`View::place_sized`], what the writer uses): for a shard of
//!   `s` bytes, `f_j` is taken as it would be with the shard stored,
//!   `f_j + s / c_j` (never raising the weight), and a member with fewer
//!   than `s` free bytes is passed over. A large shard then goes to a
//!   member it leaves near `F`, not to a small one it would push far above
//!   (shard sizes vary by orders of magnitude; a few large ones decided the
//!   fullest node). A pure function of (key, view, size); the manifest
//!   records where the shards went, so no one recomputes it.
//! - Rebalancing does not chase these weights: it restores the ranking by
//!   capacity alone ([`Weighting::Capacity`], the weights at even fill),
//!   which changes with membership but not with every write, and moves a
//!   shard only where fills differ by a margin
//!   (`crate::repair::rebalance_moves`). A shard written off that ranking
//!   by the correction stays where it is while fills are even.
//! - A pure function of the view: every node computes the same weights from
//!   the same announcements. Nodes whose views differ (gossip lag) may place
//!   a stripe differently; that changes balance, never safety, as readers
//!   and repair find shards through the manifest's holder table.
//!
//! Only `Alive` members with a weight above zero receive new shards;
//! `Suspect` and `Down` members are skipped, which is what makes a suspect
//! node drain of new writes.
//!
//! # Volatile members
//! A member whose shards may sit in memory (`mem:` containers, see
//! [`Member::volatile`]) loses them when it restarts. A stripe of `k + m`
//! shards survives the loss of any `m`, so a rolling restart of `m + 1`
//! such members would lose every stripe that relied on more than `m` of
//! them. [`View::place_capped`] and [`place_stripe`] take at most
//! `max_volatile` volatile members (the stripe's `m`): in ranking order,
//! a volatile candidate is skipped once the cap is reached, so the result
//! is the uncapped placement whenever that already respects the cap, and
//! has `n` members whenever `durable + min(volatile, cap) >= n` eligible
//! members exist. [`place_stripe`] turns a short result into an error.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, ObjectId};

/// Gain of the fill correction: a member `1 / G` (fill fraction) above the
/// view's reference fill has its weight divided by `e` ([`fill_weight`]).
pub const FILL_GAIN: f64 = 200.0;
/// Most a member's weight is raised above its capacity (an empty joiner in
/// a full view).
pub const MAX_BOOST: f64 = 4.0;
/// Most a member's weight is lowered below its capacity (a member far
/// fuller than the view).
pub const MAX_DAMPING: f64 = 1.0e6;

/// The space a member offers to placement: the capacity and free bytes of
/// the containers its new shards go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Space {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

impl Space {
    /// Used fraction in `[0, 1]`; 1 for no capacity.
    pub fn fill(&self) -> f64 {
        if self.capacity_bytes == 0 {
            return 1.0;
        }
        let free = self.free_bytes.min(self.capacity_bytes);
        1.0 - free as f64 / self.capacity_bytes as f64
    }
}

/// The reference fill `F` of a set of members: used bytes over capacity,
/// summed over those with a capacity (0 when none has one). Callers pass
/// the `Alive` members, so that a silent member's stale announcement does
/// not shift everyone's weights.
pub fn reference_fill(spaces: impl IntoIterator<Item = Space>) -> f64 {
    let (mut used, mut capacity) = (0u128, 0u128);
    for s in spaces {
        let free = s.free_bytes.min(s.capacity_bytes);
        used += u128::from(s.capacity_bytes - free);
        capacity += u128::from(s.capacity_bytes);
    }
    if capacity == 0 {
        return 0.0;
    }
    used as f64 / capacity as f64
}

/// A member's placement weight from its space and the view's reference
/// fill (formula in the module header).
pub fn fill_weight(space: Space, reference_fill: f64) -> u64 {
    if space.free_bytes == 0 || space.capacity_bytes == 0 {
        return 0;
    }
    let factor = (-FILL_GAIN * (space.fill() - reference_fill)).exp();
    let factor = if factor.is_nan() {
        1.0
    } else {
        factor.clamp(1.0 / MAX_DAMPING, MAX_BOOST)
    };
    // `as` saturates, so a huge capacity cannot wrap.
    ((space.capacity_bytes as f64 * factor).round() as u64).max(1)
}

/// The weights of a set of members, in input order: [`fill_weight`] with
/// the [`reference_fill`] of those for which `counts` is true (the `Alive`
/// ones).
pub fn fill_weights(spaces: &[(Space, bool)]) -> Vec<u64> {
    let reference = reference_fill(spaces.iter().filter(|(_, c)| *c).map(|(s, _)| *s));
    spaces
        .iter()
        .map(|(s, _)| fill_weight(*s, reference))
        .collect()
}

/// Why a stripe cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    #[error("a stripe of {needed} shards may put at most {max_volatile} on memory-backed members, so it needs {} durable ones; {durable} durable and {volatile} memory-backed members can take shards now", needed.saturating_sub(*max_volatile))]
    NotEnoughDurable {
        needed: usize,
        max_volatile: usize,
        durable: usize,
        volatile: usize,
    },
}

/// A member's liveness as seen by one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Announcing on time: eligible for new shards.
    Alive,
    /// Missed announcements: keeps its shards, receives no new ones.
    Suspect,
    /// Past the grace period: its shards are treated as lost and repaired.
    Down,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// One member of the view: the input placement needs, nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub site: String,
    /// Placement weight (0 = accepts nothing): [`fill_weight`] of its
    /// space in a live view, any non-negative figure in tests.
    pub weight: u64,
    pub state: MemberState,
    /// Its shards may be held in memory and are lost when it restarts (see
    /// the module header). Absent in older encodings: durable.
    #[serde(default)]
    pub volatile: bool,
}

/// What a ranking is weighted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// By each member's weight ([`fill_weight`]): for new shards.
    Weighted,
    /// By each member's weight at even fill, its capacity (in a
    /// [`View::weighted`] view): the placement the rebalancer restores,
    /// which changes with membership and capacity but not with every write.
    Capacity,
    /// Every eligible member alike: for manifest replicas, whose holders
    /// must stay findable while free space changes.
    Uniform,
}

/// A 64-bit placement key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlacementKey(pub u64);

impl PlacementKey {
    fn derive(domain: &[u8], object: &ObjectId, idx: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(domain);
        h.update(object.as_bytes());
        h.update(&idx.to_le_bytes());
        let b = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&b.as_bytes()[..8]);
        PlacementKey(u64::from_le_bytes(first))
    }

    /// Key for the shards of segment `segment_idx` of an object.
    pub fn for_segment(object: &ObjectId, segment_idx: u64) -> Self {
        Self::derive(b"dynostore/placement/segment/1", object, segment_idx)
    }

    /// Key for an object's manifest replicas.
    pub fn for_manifest(object: &ObjectId) -> Self {
        Self::derive(b"dynostore/placement/manifest/1", object, 0)
    }

    /// Key for the name records of a namespace (an S3 bucket, or a
    /// reserved namespace; see [`crate::names`]).
    pub fn for_names(namespace: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"dynostore/placement/names/1");
        h.update(namespace.as_bytes());
        let b = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&b.as_bytes()[..8]);
        PlacementKey(u64::from_le_bytes(first))
    }
}

/// A membership view prepared for placement queries.
#[derive(Debug, Clone)]
pub struct View {
    members: Vec<Member>,
    node_hash: Vec<u64>,
    site: Vec<u32>,
    eligible_sites: usize,
    /// Per member, its weight at even fill ([`Weighting::Capacity`]): its
    /// capacity in a [`View::weighted`] view, its weight otherwise.
    capacity: Vec<u64>,
    /// The prefilters of large views (see [`View::place_capped`]), for
    /// [`Weighting::Weighted`] and [`Weighting::Capacity`].
    prefilter: Option<Prefilter>,
    prefilter_capacity: Option<Prefilter>,
    /// Per member, its free bytes, and the reference fill, in a
    /// [`View::weighted`] view: what [`View::place_sized`] needs.
    free: Option<(Vec<u64>, f64)>,
}

/// Views with more eligible members than this get a [`Prefilter`].
const PREFILTER_MIN_MEMBERS: usize = 512;
/// Members expected to pass the prefilter per key.
const PREFILTER_PASSERS: f64 = 256.0;
/// Largest head of the ranking the prefilter serves. The count of members
/// reaching `theta` is about Poisson with mean [`PREFILTER_PASSERS`]
/// (standard deviation 16), so a head of 224 (the `4 * 4n` a writer asks
/// for when a stripe of 14 needs a longer list) is served about 97 % of
/// the time; a miss costs one more scan and gives the same result.
const PREFILTER_MAX_WINDOW: usize = 224;

/// A score threshold `theta` and, per member, the least `u` for which its
/// score can reach `theta`, lowered by a relative 1e-6 so that rounding
/// never drops a member that reaches it: `w / -ln(u) >= theta` needs
/// `u >= exp(-w / theta)`. That bound is kept as an integer on the hash
/// bits ([`unit_bits_at_least`]): `unit(x) >= cut` exactly when
/// `fmix64(x) >> 11 >= cut_bits`, so a member costs a hash and an integer
/// compare instead of a logarithm, and only the passers are scored.
#[derive(Debug, Clone)]
struct Prefilter {
    theta: f64,
    cut_bits: Vec<u64>,
}

impl Prefilter {
    fn new(members: &[Member], weights: &[u64]) -> Option<Prefilter> {
        let eligible = members
            .iter()
            .zip(weights)
            .filter(|(m, _)| eligible_for_writes(m));
        if eligible.clone().count() <= PREFILTER_MIN_MEMBERS {
            return None;
        }
        let total: f64 = eligible.map(|(_, &w)| w as f64).sum();
        let theta = total / PREFILTER_PASSERS;
        if !(theta.is_finite() && theta > 0.0) {
            return None;
        }
        let cut_bits = weights
            .iter()
            .map(|&w| unit_bits_at_least((-(w as f64) / theta).exp() * (1.0 - 1e-6)))
            .collect();
        Some(Prefilter { theta, cut_bits })
    }

    /// The members whose hash passes for `key` (eligibility not checked),
    /// in index order: one hash and one integer compare per member, eight
    /// at a time without a branch (a loop the compiler can vectorise),
    /// then a walk over the few set bits.
    fn passers(&self, key: PlacementKey, node_hash: &[u64]) -> Vec<usize> {
        const LANES: usize = 8;
        let mut out = Vec::with_capacity(2 * PREFILTER_PASSERS as usize);
        let (hashes, hash_rest) = node_hash.as_chunks::<LANES>();
        let (cuts, cut_rest) = self.cut_bits.as_chunks::<LANES>();
        for (c, (h, cut)) in hashes.iter().zip(cuts).enumerate() {
            let mut mask = 0u32;
            for lane in 0..LANES {
                mask |= u32::from(fmix64(key.0 ^ h[lane]) >> 11 >= cut[lane]) << lane;
            }
            while mask != 0 {
                out.push(c * LANES + mask.trailing_zeros() as usize);
                mask &= mask - 1;
            }
        }
        let base = node_hash.len() - hash_rest.len();
        for (j, (&h, &cut)) in hash_rest.iter().zip(cut_rest).enumerate() {
            if fmix64(key.0 ^ h) >> 11 >= cut {
                out.push(base + j);
            }
        }
        out
    }
}

impl View {
    /// Builds a view. Members are sorted by node ID; of duplicate IDs the
    /// one that sorts first by (state, weight descending, site, volatile
    /// first) is kept, so the result does not depend on input order.
    pub fn new(members: impl IntoIterator<Item = Member>) -> Self {
        let mut members: Vec<Member> = members.into_iter().collect();
        members.sort_by(|a, b| {
            a.id.cmp(&b.id)
                .then(a.state.cmp(&b.state))
                .then(b.weight.cmp(&a.weight))
                .then(a.site.cmp(&b.site))
                .then(b.volatile.cmp(&a.volatile))
        });
        members.dedup_by(|b, a| a.id == b.id);
        let node_hash = members.iter().map(|m| node_hash(&m.id)).collect();
        let mut sites: Vec<&str> = members.iter().map(|m| m.site.as_str()).collect();
        sites.sort_unstable();
        sites.dedup();
        let site: Vec<u32> = members
            .iter()
            .map(|m| sites.binary_search(&m.site.as_str()).unwrap_or(0) as u32)
            .collect();
        let mut eligible: Vec<u32> = members
            .iter()
            .zip(&site)
            .filter(|(m, _)| eligible_for_writes(m))
            .map(|(_, s)| *s)
            .collect();
        eligible.sort_unstable();
        eligible.dedup();
        let weights: Vec<u64> = members.iter().map(|m| m.weight).collect();
        let prefilter = Prefilter::new(&members, &weights);
        View {
            members,
            node_hash,
            site,
            eligible_sites: eligible.len(),
            capacity: weights,
            prefilter: prefilter.clone(),
            prefilter_capacity: prefilter,
            free: None,
        }
    }

    /// A view of members given with their [`Space`] instead of a weight:
    /// each weighted by [`fill_weight`] against the [`reference_fill`] of
    /// the `Alive` ones. What the node builds from announcements and the
    /// scale model from its ledger.
    pub fn weighted(members: impl IntoIterator<Item = (Member, Space)>) -> Self {
        let members: Vec<(Member, Space)> = members.into_iter().collect();
        let spaces: Vec<(Space, bool)> = members
            .iter()
            .map(|(m, s)| (*s, m.state == MemberState::Alive))
            .collect();
        let reference = reference_fill(spaces.iter().filter(|(_, c)| *c).map(|(s, _)| *s));
        let weights = fill_weights(&spaces);
        // Of duplicate IDs, the largest space (whatever the order).
        let mut space: BTreeMap<NodeId, (u64, u64)> = BTreeMap::new();
        for (m, s) in &members {
            let c = space.entry(m.id.clone()).or_default();
            *c = (*c).max((s.capacity_bytes, s.free_bytes.min(s.capacity_bytes)));
        }
        let mut view = View::new(
            members
                .into_iter()
                .zip(weights)
                .map(|((m, _), weight)| Member { weight, ..m }),
        );
        let of = |m: &Member| space.get(&m.id).copied().unwrap_or((0, 0));
        view.capacity = view.members.iter().map(|m| of(m).0).collect();
        view.free = Some((view.members.iter().map(|m| of(m).1).collect(), reference));
        view.prefilter_capacity = Prefilter::new(&view.members, &view.capacity);
        view
    }

    /// Gives every member a new [`Space`] (`space` is asked once per
    /// member, in ID order) and recomputes what depends on it: the result
    /// equals [`View::weighted`] over the same members (same IDs, sites,
    /// states and volatility, no duplicate IDs) with these spaces, for a
    /// fraction of the cost: IDs are neither sorted nor hashed again. What
    /// a caller that refreshes a large view's fills often (the scale
    /// model) uses instead of building a new one.
    pub fn reweigh(&mut self, space: impl Fn(&Member) -> Space) {
        let spaces: Vec<Space> = self.members.iter().map(space).collect();
        let reference = reference_fill(
            self.members
                .iter()
                .zip(&spaces)
                .filter(|(m, _)| m.state == MemberState::Alive)
                .map(|(_, s)| *s),
        );
        let was_eligible: Vec<bool> = self.members.iter().map(eligible_for_writes).collect();
        for (m, s) in self.members.iter_mut().zip(&spaces) {
            m.weight = fill_weight(*s, reference);
        }
        let capacity: Vec<u64> = spaces.iter().map(|s| s.capacity_bytes).collect();
        let free: Vec<u64> = spaces
            .iter()
            .map(|s| s.free_bytes.min(s.capacity_bytes))
            .collect();
        let mut site_open =
            vec![false; self.site.iter().map(|&s| s as usize + 1).max().unwrap_or(0)];
        for (m, &s) in self.members.iter().zip(&self.site) {
            if eligible_for_writes(m) {
                site_open[s as usize] = true;
            }
        }
        self.eligible_sites = site_open.iter().filter(|&&o| o).count();
        let weights: Vec<u64> = self.members.iter().map(|m| m.weight).collect();
        self.prefilter = Prefilter::new(&self.members, &weights);
        // The capacity prefilter depends on the capacities and on which
        // members are eligible only: rebuilt when one of them changed.
        let same_eligible = self
            .members
            .iter()
            .zip(&was_eligible)
            .all(|(m, &e)| eligible_for_writes(m) == e);
        if !(same_eligible && capacity == self.capacity && self.free.is_some()) {
            self.prefilter_capacity = Prefilter::new(&self.members, &capacity);
        }
        self.capacity = capacity;
        self.free = Some((free, reference));
    }

    /// Member `i`'s weight for a shard of `shard_bytes`: its
    /// [`fill_weight`] as it would be with the shard stored (0 without room
    /// for it), never above its weight. Its weight when the view has no
    /// spaces or the size is 0.
    fn sized_weight(&self, i: usize, shard_bytes: u64) -> f64 {
        let w = self.members[i].weight;
        let Some((free, reference)) = &self.free else {
            return w as f64;
        };
        if shard_bytes == 0 || w == 0 {
            return w as f64;
        }
        let (cap, free) = (self.capacity[i], free[i]);
        if cap == 0 || shard_bytes > free {
            return 0.0;
        }
        let fill = 1.0 - (free - shard_bytes) as f64 / cap as f64;
        let factor = (-FILL_GAIN * (fill - reference)).exp();
        let factor = if factor.is_nan() {
            1.0
        } else {
            factor.clamp(1.0 / MAX_DAMPING, MAX_BOOST)
        };
        (cap as f64 * factor).min(w as f64)
    }

    fn prefilter(&self, weighting: Weighting) -> Option<&Prefilter> {
        match weighting {
            Weighting::Weighted => self.prefilter.as_ref(),
            Weighting::Capacity => self.prefilter_capacity.as_ref(),
            Weighting::Uniform => None,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        self.index_of(id).map(|i| &self.members[i])
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.members.binary_search_by(|m| m.id.cmp(id)).ok()
    }

    /// Members that can take new shards now.
    pub fn eligible_count(&self) -> usize {
        self.members
            .iter()
            .filter(|m| eligible_for_writes(m))
            .count()
    }

    /// Members that can take new shards now: (durable, volatile).
    pub fn eligible_split(&self) -> (usize, usize) {
        self.members
            .iter()
            .filter(|m| eligible_for_writes(m))
            .fold(
                (0, 0),
                |(d, v), m| {
                    if m.volatile {
                        (d, v + 1)
                    } else {
                        (d + 1, v)
                    }
                },
            )
    }

    /// Whether `id` is a volatile member; unknown members count as
    /// volatile (nothing is known of their containers).
    pub fn is_volatile(&self, id: &NodeId) -> bool {
        self.get(id).is_none_or(|m| m.volatile)
    }

    /// Score of member `i` for `key`.
    fn score(&self, key: PlacementKey, i: usize, weighting: Weighting) -> f64 {
        let w = match weighting {
            Weighting::Weighted => self.members[i].weight as f64,
            Weighting::Capacity => self.capacity[i] as f64,
            Weighting::Uniform => 1.0,
        };
        w / -unit(key.0 ^ self.node_hash[i]).ln()
    }

    /// Every member that passes `filter`, best first.
    pub fn ranking(
        &self,
        key: PlacementKey,
        weighting: Weighting,
        filter: impl Fn(&Member) -> bool,
    ) -> Vec<&NodeId> {
        let mut scored: Vec<(f64, usize)> = (0..self.members.len())
            .filter(|&i| filter(&self.members[i]))
            .map(|i| (self.score(key, i, weighting), i))
            .collect();
        scored.sort_unstable_by(by_score);
        scored
            .into_iter()
            .map(|(_, i)| &self.members[i].id)
            .collect()
    }

    /// The first `len` of [`View::ranking`] (all of it when shorter),
    /// found without sorting every member when the view is large.
    pub fn ranking_head(
        &self,
        key: PlacementKey,
        weighting: Weighting,
        filter: impl Fn(&Member) -> bool,
        len: usize,
    ) -> Vec<&NodeId> {
        if len == 0 {
            return Vec::new();
        }
        if let Some(pre) = self.prefilter(weighting) {
            if len <= PREFILTER_MAX_WINDOW {
                let mut head: Vec<(f64, usize)> = pre
                    .passers(key, &self.node_hash)
                    .into_iter()
                    .filter(|&i| filter(&self.members[i]))
                    .map(|i| (self.score(key, i, weighting), i))
                    .filter(|&(s, _)| s >= pre.theta)
                    .collect();
                if head.len() >= len {
                    head.select_nth_unstable_by(len - 1, by_score);
                    head.truncate(len);
                    head.sort_unstable_by(by_score);
                    return head.into_iter().map(|(_, i)| &self.members[i].id).collect();
                }
            }
        }
        let mut scored: Vec<(f64, usize)> = (0..self.members.len())
            .filter(|&i| filter(&self.members[i]))
            .map(|i| (self.score(key, i, weighting), i))
            .collect();
        if scored.len() > len {
            scored.select_nth_unstable_by(len - 1, by_score);
            scored.truncate(len);
        }
        scored.sort_unstable_by(by_score);
        scored
            .into_iter()
            .map(|(_, i)| &self.members[i].id)
            .collect()
    }

    /// The `n` distinct nodes that receive the shards for `key`: alive
    /// members with free space, one per site (in ranking order) before any
    /// site is reused. Fewer than `n` when fewer are eligible.
    pub fn place(&self, key: PlacementKey, n: usize, weighting: Weighting) -> Vec<&NodeId> {
        self.place_capped(key, n, weighting, usize::MAX)
    }

    /// [`View::place`] with at most `max_volatile` volatile members: a
    /// volatile candidate is passed over once that many are taken. Fewer
    /// than `n` when fewer eligible members fit the cap.
    pub fn place_capped(
        &self,
        key: PlacementKey,
        n: usize,
        weighting: Weighting,
        max_volatile: usize,
    ) -> Vec<&NodeId> {
        self.place_inner(key, n, weighting, max_volatile, 0)
    }

    /// [`View::place_capped`] by [`Weighting::Weighted`] for shards of
    /// `shard_bytes`: each member weighed as it would be with the shard
    /// stored, so that a large shard does not push a small member far
    /// above the others, and members without room for it are passed over.
    /// The same as [`View::place_capped`] for a size of 0 or a view built
    /// by [`View::new`].
    pub fn place_sized(
        &self,
        key: PlacementKey,
        n: usize,
        max_volatile: usize,
        shard_bytes: u64,
    ) -> Vec<&NodeId> {
        self.place_inner(key, n, Weighting::Weighted, max_volatile, shard_bytes)
    }

    fn place_inner(
        &self,
        key: PlacementKey,
        n: usize,
        weighting: Weighting,
        max_volatile: usize,
        shard_bytes: u64,
    ) -> Vec<&NodeId> {
        if n == 0 {
            return Vec::new();
        }
        let sized = weighting == Weighting::Weighted && shard_bytes > 0 && self.free.is_some();
        // Scores for this shard size; a member without room scores 0 and
        // is dropped.
        let score = |i: usize| -> f64 {
            if sized {
                self.sized_weight(i, shard_bytes) / -unit(key.0 ^ self.node_hash[i]).ln()
            } else {
                self.score(key, i, weighting)
            }
        };
        let want_sites = n.min(self.eligible_sites);
        // Most keys need only the head of the ranking: partition the best
        // `window` first and fall back to a full sort when the head does not
        // give `n` picks over enough distinct sites.
        let window = (4 * n).max(32);
        // In a large weighted view, the head is found among the members
        // that pass the prefilter: when at least `window` of them reach
        // `theta`, everyone else scores below `theta` and is not in it.
        if let Some(pre) = self.prefilter(weighting) {
            if window <= PREFILTER_MAX_WINDOW {
                // A sized score is never above the unsized one, so the
                // prefilter (built from the weights) still passes a
                // superset of the members that reach `theta`.
                let mut head: Vec<(f64, usize)> = pre
                    .passers(key, &self.node_hash)
                    .into_iter()
                    .filter(|&i| eligible_for_writes(&self.members[i]))
                    .map(|i| (score(i), i))
                    .filter(|&(s, _)| s >= pre.theta)
                    .collect();
                if head.len() >= window {
                    head.select_nth_unstable_by(window - 1, by_score);
                    head.truncate(window);
                    head.sort_unstable_by(by_score);
                    let (picks, complete) = self.spread(&head, n, want_sites, max_volatile);
                    if complete {
                        return picks;
                    }
                }
            }
        }
        let mut scored: Vec<(f64, usize)> = (0..self.members.len())
            .filter(|&i| eligible_for_writes(&self.members[i]))
            .map(|i| (score(i), i))
            .filter(|&(s, _)| s > 0.0)
            .collect();
        if scored.is_empty() {
            return Vec::new();
        }
        if scored.len() > window {
            scored.select_nth_unstable_by(window - 1, by_score);
            scored[..window].sort_unstable_by(by_score);
            let (picks, complete) = self.spread(&scored[..window], n, want_sites, max_volatile);
            if complete {
                return picks;
            }
        }
        scored.sort_unstable_by(by_score);
        self.spread(&scored, n, want_sites, max_volatile).0
    }

    /// Site spreading over a sorted candidate list: first-of-site picks, then
    /// fill in ranking order, never more than `max_volatile` volatile
    /// members. Complete when it found `n` picks over `want_sites` sites.
    fn spread(
        &self,
        sorted: &[(f64, usize)],
        n: usize,
        want_sites: usize,
        max_volatile: usize,
    ) -> (Vec<&NodeId>, bool) {
        let mut picked = vec![false; sorted.len()];
        let mut used_sites: Vec<u32> = Vec::with_capacity(want_sites);
        let mut count = 0;
        let mut volatile = 0;
        let fits = |i: usize, volatile: &mut usize| {
            if !self.members[i].volatile {
                return true;
            }
            if *volatile >= max_volatile {
                return false;
            }
            *volatile += 1;
            true
        };
        for (pos, &(_, i)) in sorted.iter().enumerate() {
            if count == n || used_sites.len() == want_sites {
                break;
            }
            let s = self.site[i];
            if !used_sites.contains(&s) && fits(i, &mut volatile) {
                used_sites.push(s);
                picked[pos] = true;
                count += 1;
            }
        }
        let sites_ok = used_sites.len() >= want_sites;
        for (pos, &(_, i)) in sorted.iter().enumerate() {
            if count == n {
                break;
            }
            if !picked[pos] && fits(i, &mut volatile) {
                picked[pos] = true;
                count += 1;
            }
        }
        // Output in ranking order.
        let picks = sorted
            .iter()
            .zip(&picked)
            .filter(|(_, p)| **p)
            .map(|(&(_, i), _)| &self.members[i].id)
            .collect();
        (picks, sites_ok && count == n)
    }
}

/// The `n` holders of a new stripe: [`View::place_capped`] by weight with
/// at most `max_volatile` (the stripe's `m`) volatile members, or an error
/// when the eligible members cannot give that.
pub fn place_stripe(
    view: &View,
    key: PlacementKey,
    n: usize,
    max_volatile: usize,
) -> Result<Vec<NodeId>, PlacementError> {
    place_stripe_sized(view, key, n, max_volatile, 0)
}

/// [`place_stripe`] for shards of `shard_bytes` ([`View::place_sized`]).
pub fn place_stripe_sized(
    view: &View,
    key: PlacementKey,
    n: usize,
    max_volatile: usize,
    shard_bytes: u64,
) -> Result<Vec<NodeId>, PlacementError> {
    let picks = view.place_sized(key, n, max_volatile, shard_bytes);
    if picks.len() < n {
        return Err(not_enough_durable(view, n, max_volatile));
    }
    Ok(picks.into_iter().cloned().collect())
}

fn not_enough_durable(view: &View, n: usize, max_volatile: usize) -> PlacementError {
    let (durable, volatile) = view.eligible_split();
    PlacementError::NotEnoughDurable {
        needed: n,
        max_volatile,
        durable,
        volatile,
    }
}

/// Whether a stripe of `n` shards with at most `max_volatile` on volatile
/// members fits the eligible members of `view` at all.
pub fn stripe_fits(view: &View, n: usize, max_volatile: usize) -> Result<(), PlacementError> {
    let (durable, volatile) = view.eligible_split();
    if durable + volatile.min(max_volatile) >= n {
        return Ok(());
    }
    Err(not_enough_durable(view, n, max_volatile))
}

/// Alive with a weight above zero (some free space).
pub fn eligible_for_writes(m: &Member) -> bool {
    m.state == MemberState::Alive && m.weight > 0
}

fn by_score(a: &(f64, usize), b: &(f64, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// First 8 bytes of BLAKE3 of the node ID.
pub fn node_hash(id: &NodeId) -> u64 {
    let h = blake3::hash(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// MurmurHash3's 64-bit finaliser: a bijection with full avalanche.
pub fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Maps 64 bits to a uniform value in the open interval (0, 1).
pub fn unit(x: u64) -> f64 {
    unit_of_bits(fmix64(x) >> 11)
}

/// `unit` from the 53 hash bits it keeps: `(v + 0.5) / 2^53`, monotone
/// (never decreasing) in `v`.
fn unit_of_bits(v: u64) -> f64 {
    (v as f64 + 0.5) / (1u64 << 53) as f64
}

/// The least `v` in `[0, 2^53]` with `unit_of_bits(v) >= cut` (`2^53`,
/// above every 53-bit value, when none reaches it): `unit(x) >= cut`
/// exactly when `fmix64(x) >> 11 >= unit_bits_at_least(cut)`, because
/// `unit_of_bits` is monotone. The estimate is off by rounding only, so
/// the walks below take a step or two.
pub fn unit_bits_at_least(cut: f64) -> u64 {
    const TOP: u64 = 1 << 53;
    if cut.is_nan() {
        return TOP;
    }
    let estimate = (cut * TOP as f64 - 0.5).ceil();
    let mut v = if estimate <= 0.0 {
        0
    } else if estimate >= TOP as f64 {
        TOP
    } else {
        estimate as u64
    };
    while v > 0 && unit_of_bits(v - 1) >= cut {
        v -= 1;
    }
    while v < TOP && unit_of_bits(v) < cut {
        v += 1;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_cut_decides_as_unit_does() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x = fmix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
            x
        };
        for _ in 0..20_000 {
            // Cuts drawn as units of other hashes (ties included), as
            // rounded values near them, and at the extremes.
            let u = unit(next());
            for cut in [
                u,
                u * (1.0 - 1e-6),
                u * (1.0 + 1e-16),
                0.0,
                1e-300,
                1.0,
                2.0,
            ] {
                let bits = unit_bits_at_least(cut);
                assert!(bits <= 1 << 53);
                assert!(bits == 1 << 53 || unit_of_bits(bits) >= cut, "{cut}");
                assert!(bits == 0 || unit_of_bits(bits - 1) < cut, "{cut}");
                for y in [next(), next()] {
                    assert_eq!(unit(y) >= cut, fmix64(y) >> 11 >= bits, "{cut} {y}");
                }
            }
            // The hash bits right at the cut.
            let v = fmix64(next()) >> 11;
            let cut = unit_of_bits(v);
            assert!(unit_bits_at_least(cut) <= v);
        }
        assert_eq!(unit_bits_at_least(f64::NAN), 1 << 53);
    }

    #[test]
    fn unit_is_open_interval() {
        for x in [0u64, 1, u64::MAX, 1 << 63] {
            let u = unit(x);
            assert!(u > 0.0 && u < 1.0, "{u}");
        }
    }
}
