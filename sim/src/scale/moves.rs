//! Report 2: data moved when 1 % of nodes join and when 1 % leave, as a
//! ratio to the ideal.
//!
//! # Ideal
//! - Join: the share the joiners should hold by capacity,
//!   `stored * C_join / (C + C_join)`: no rebalance that ends at
//!   proportional fill can move less.
//! - Leave: the bytes the leavers hold: they must all be re-created.
//!
//! # Rendezvous: the live rebalancer
//! The figure that counts is what a live federation moves: the node's own
//! rules, run over the state the fill left ([`live_rebalance`]).
//! - Join: the joiners enter empty, announcing their real (empty) space.
//!   Passes over every stored object call
//!   [`dynostore_protocol::repair::rebalance_moves`] with the node's fill
//!   margin ([`PlannerConfig::default`]) against a view weighted as the
//!   node weighs it ([`World::weighted_view`]); each move copies one shard
//!   to its new holder. As in the node, where announcements report free
//!   space every few seconds and a repairer moves at most a few dozen
//!   shards per round, the fills it compares are refreshed every `refresh`
//!   objects, not per move (the view once per pass: the rebalancer ranks
//!   by capacity, which writes do not change). Passes repeat until one
//!   moves nothing. The rebalancer has run all along in a live federation,
//!   so it first settles the imbalance the fill left (reported) and the
//!   join and the leave start from that state.
//! - Leave: the leavers vanish with their shards. Every shard they held is
//!   rebuilt where [`dynostore_protocol::repair::repair_targets`] puts it
//!   (the planner's choice), then rebalancing passes run as after a join.
//!   Moved = rebuilt + rebalanced bytes; the ideal is the leavers' bytes.
//!
//! Every pass asks each stripe's desired holders (the ranking by
//! capacity); they change only when the view's eligible members do, so
//! they are kept across passes and changes ([`Desired`]): taken from the
//! re-placement below for the initial members, then brought to each new
//! view by the exact shortcuts of the next sections (a stripe ranks over
//! the whole view only when a member it wanted left), and the rule itself
//! is the node's ([`dynostore_protocol::repair::rebalance_moves_towards`],
//! which `rebalance_moves` calls after ranking). A pass then costs a few
//! comparisons per stripe instead of a ranking over every member (at
//! 100,000 nodes that ranking hashes every member: hours of CPU over
//! 10,000,000 stripes and a dozen passes). Every `verify_every`-th stripe
//! is ranked over the whole view too, counted with the shortcut checks.
//!
//! A pass skips, exactly, an object none of whose holders is fuller than
//! the emptiest eligible node by the margin: `rebalance_moves` moves a
//! shard only to a member emptier than its holder by the margin (the model
//! has no volatile members, whose moves ignore fill).
//!
//! # Rendezvous: re-placement by the rebalancer's ranking
//! For comparison, every stored object is also re-placed with the
//! protocol's [`View::place`] by the ranking the rebalancer restores
//! (weights = capacities, `Weighting::Capacity` in the node) under the view
//! before and the view after the change, and the moved bytes are
//! `sum over objects of |after \ before| * shard_bytes` (a shard is moved
//! when its stripe gains a holder; holders that stay keep their shard).
//! That is the minimal disruption of the ranking itself: what the
//! rebalancer would move if every stripe sat on it before the change.
//!
//! Also reported: the *drift*, the fraction of stored bytes whose holder at
//! write time differs from that ranking at the end of the fill (the fill
//! correction places new shards off it); the live rebalancer leaves them
//! there while fills are even, which a rebalancer that chased the ranking
//! would not.
//!
//! ## Exact shortcuts (verified on a sample)
//! A full `place` over 10,000 nodes costs about 170 µs, and the rendezvous
//! score of a node depends only on the key, the node and its weight. Hence
//! the lemma: if `V' ⊆ V` (same weights) and `V'` contains `place(V, n)`,
//! then `place(V', n) = place(V, n)`. (The site-first picks of `V` are
//! still the first of their sites in `V'` and no other site's best node in
//! `V'` ranks higher; the fill-in picks are still the best non-site-first
//! nodes; `V'` spans as many sites as the stripe needs.) So:
//! - join: `place(before ∪ joiners, n)` over the small view of the
//!   stripe's before-holders and the joiners equals `place` over the whole
//!   grown view, because that contains the full placement (every node of it
//!   was a before-holder or is a joiner);
//! - leave: an object none of whose before-holders leaves keeps its
//!   placement; only the others are re-placed over the whole shrunk view.
//!
//! Most objects do not change on a join at all, so before building the
//! small view a conservative pre-filter computes the protocol's score
//! (`w / -ln(unit(key ^ node_hash))`, with the protocol's public `unit` and
//! `node_hash`, and the weights of the views) of the stripe's holders and
//! of the joiners: a joiner that
//! ranks below every holder cannot be picked (the holders fill the stripe
//! first), so when none outscores the weakest holder the placement is
//! unchanged, and otherwise the small view needs only the joiners that do
//! (the lemma holds for any view between the placement and the grown
//! view). The filter is off if a joiner brings a site with no eligible
//! member yet (that would add a site to spread over). Joiners are scored
//! only when their hash passes an integer bound derived from the weakest
//! holder's score and the largest joiner weight (as in the protocol's
//! prefilter), so an object costs a hash per joiner, not a logarithm.
//!
//! Every `verify_every`-th stored object is also re-placed over the whole
//! view for both cases and compared with the shortcut's result (filter
//! included); the count of mismatches is reported (and must be 0).
//!
//! # Baselines
//! Neither baseline has a placement function to consult, so "what moves"
//! needs a definition:
//! - **re-run**: the policy's own fill re-run from empty on the new node set
//!   with the same objects (and, for random, the same RNG stream), counting
//!   shards whose holder set changed: what the policy would move if its
//!   decisions were recomputed.
//! - **targeted rebalance (lower bound)**: move exactly the ideal (shards to
//!   joiners until their fill matches, or the leavers' shards); achievable
//!   only with a directory that records every shard's location, which is
//!   what both baselines need anyway to find data.

use dynostore_protocol::placement::{
    eligible_for_writes, fmix64, node_hash, unit, unit_bits_at_least, Member, PlacementKey, View,
    Weighting,
};
use dynostore_protocol::planner::PlannerConfig;
use dynostore_protocol::repair::{rebalance_moves_towards, repair_targets};
use dynostore_protocol::NodeId;
use serde::Serialize;

use super::fill::{fill, FillConfig, FillOutcome, Policy};
use super::log::EventLog;
use super::world::{node_index, par_map, place_indices, progress_bar, World, MISSING};

/// One way of counting moved bytes for a join and a leave.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoveRow {
    pub policy: Policy,
    pub method: String,
    pub join: Moved,
    pub leave: Option<Moved>,
}

/// Moved bytes against the ideal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moved {
    pub moved_bytes: u64,
    pub ideal_bytes: u64,
    pub ratio: f64,
}

impl Moved {
    fn new(moved_bytes: u64, ideal_bytes: u64) -> Moved {
        Moved {
            moved_bytes,
            ideal_bytes,
            ratio: moved_bytes as f64 / ideal_bytes.max(1) as f64,
        }
    }
}

/// Report 2.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MovesReport {
    pub joiners: usize,
    /// Joiners' capacity / the initial capacity.
    pub joiner_capacity_share: f64,
    pub leavers: usize,
    /// Leavers' capacity / the initial capacity.
    pub leaver_capacity_share: f64,
    pub rows: Vec<MoveRow>,
    /// Stored bytes whose write-time holder differs from the ranking at the
    /// end of the fill, as a fraction of the stored bytes.
    pub rendezvous_drift: f64,
    /// Objects re-placed over the whole view to check the shortcuts.
    pub shortcut_checks: u64,
    pub shortcut_mismatches: u64,
    /// The live rebalancer before any change (settling the imbalance the
    /// fill left), then after the join and after the leave, each from the
    /// settled state.
    pub live_settle: Option<LiveOutcome>,
    pub live_join: Option<LiveOutcome>,
    pub live_leave: Option<LiveOutcome>,
}

/// What the live rebalancer did after one membership change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveOutcome {
    /// Shards rebuilt (leave) and moved (both).
    pub rebuilt_shards: u64,
    pub moved_shards: u64,
    /// Passes over the objects, the last one moving nothing.
    pub passes: u32,
    /// Mean fill of the joiners after it (join only).
    pub joiner_fill: Option<f64>,
    /// Mean fill and the fullest node of the members after it.
    pub mean_fill: f64,
    pub max_fill: f64,
    /// Stripes with fewer than k + m distinct holders after it (must be 0).
    pub short_stripes: u64,
    /// Objects whose kept desired holders were checked against a full
    /// ranking of the view, and how many differed (must be 0).
    pub desired_checks: u64,
    pub desired_mismatches: u64,
}

/// How the moves phase is set up.
#[derive(Debug, Clone)]
pub struct MovesConfig {
    pub threads: usize,
    /// Progress bars on a terminal.
    pub progress: bool,
    pub verify_every: usize,
    /// For the baseline re-runs (checkpoints are ignored).
    pub fill: FillConfig,
}

/// Per-object results of the rendezvous pass, in shards.
#[derive(Debug, Clone, Default)]
struct PerObject {
    /// The placement by capacity over the initial members.
    before: Vec<u32>,
    join: u8,
    leave: u8,
    leave_ideal: u8,
    drift: u8,
    checks: u8,
    mismatches: u8,
}

/// Runs report 2 on the fills of report 1.
pub fn moves(
    world: &World,
    fills: &[FillOutcome],
    cfg: &MovesConfig,
    log: &mut EventLog,
) -> MovesReport {
    let initial: Vec<u32> = world.initial_range().collect();
    let joiners: Vec<u32> = world.joiner_range().collect();
    let mut is_leaver = vec![false; world.all_nodes.len()];
    for &l in &world.leavers {
        is_leaver[l as usize] = true;
    }
    let staying: Vec<u32> = initial
        .iter()
        .copied()
        .filter(|&i| !is_leaver[i as usize])
        .collect();
    let cap = |set: &[u32]| -> u128 { set.iter().map(|&i| u128::from(world.capacity(i))).sum() };
    let (c_initial, c_join, c_leave) = (cap(&initial), cap(&joiners), cap(&world.leavers));
    let join_share = c_join as f64 / (c_initial + c_join) as f64;

    // The baselines' re-runs are independent: run them in parallel, each
    // into a child log, absorbed in order.
    let mut grown = initial.clone();
    grown.extend(&joiners);
    let reruns: Vec<(usize, &[u32])> = fills
        .iter()
        .enumerate()
        .filter(|(_, f)| f.policy != Policy::Rendezvous)
        .flat_map(|(i, _)| [(i, grown.as_slice()), (i, staying.as_slice())])
        .collect();
    let parent: &EventLog = log;
    let rerun_outcomes = par_map(cfg.threads, reruns.len(), |j| {
        let (f, nodes) = reruns[j];
        let policy = fills[f].policy;
        let mut child = parent.child(&format!("rerun-{}-{j}", policy.name()));
        let outcome = fill(world, nodes, policy, &cfg.fill, &mut child);
        (outcome, child)
    });
    let mut rerun_outcomes: Vec<Option<FillOutcome>> = rerun_outcomes
        .into_iter()
        .enumerate()
        .map(|(j, (outcome, child))| {
            log.absorb("rerun-log", &[outcome.policy.tag(), j as u64], child);
            Some(outcome)
        })
        .collect();

    let mut rows = Vec::new();
    let (mut live_settle, mut live_join, mut live_leave) = (None, None, None);
    let mut drift = 0.0;
    let (mut checks, mut mismatches) = (0, 0);
    for (f, outcome) in fills.iter().enumerate() {
        let stored_bytes: u128 = stored_bytes(world, outcome);
        let ideal_join = (stored_bytes as f64 * join_share).round() as u64;
        match outcome.policy {
            Policy::Rendezvous => {
                let (r, desired) = rendezvous(
                    world, outcome, &initial, &joiners, &staying, &is_leaver, cfg,
                );
                log.event(
                    "moves-rendezvous",
                    &[r.join, r.leave, r.leave_ideal, r.drift, r.mismatches],
                );
                drift = r.drift as f64 / stored_bytes.max(1) as f64;
                checks = r.checks;
                mismatches = r.mismatches;
                // The rebalancer runs all the time in a live federation: it
                // has settled the fill's own imbalance before anyone joins.
                let mut settled = Holdings {
                    holders: outcome.holders.clone(),
                    used: outcome.ledger.used.clone(),
                };
                let mut desired = desired;
                let (settle, _) = live_rebalance(
                    world,
                    outcome,
                    &mut settled,
                    &mut desired,
                    &initial,
                    &[],
                    cfg,
                );
                let mut state = settled.clone();
                let (join, join_bytes) = live_rebalance(
                    world,
                    outcome,
                    &mut state,
                    &mut desired.clone(),
                    &grown,
                    &[],
                    cfg,
                );
                let leave_ideal: u64 = (0..world.objects.len())
                    .filter(|&i| outcome.stored[i])
                    .map(|i| {
                        let hs = &settled.holders[i * world.n..(i + 1) * world.n];
                        let on = hs.iter().filter(|&&h| is_leaver[h as usize]).count() as u64;
                        on * world.objects[i].shard_bytes
                    })
                    .sum();
                let mut state = settled;
                let (leave, leave_bytes) = live_rebalance(
                    world,
                    outcome,
                    &mut state,
                    &mut desired,
                    &staying,
                    &world.leavers,
                    cfg,
                );
                log.event(
                    "moves-live",
                    &[
                        join_bytes,
                        join.moved_shards,
                        u64::from(join.passes),
                        leave_bytes,
                        leave.rebuilt_shards,
                        leave.moved_shards,
                        u64::from(leave.passes),
                        join.short_stripes + leave.short_stripes,
                    ],
                );
                rows.push(MoveRow {
                    policy: Policy::Rendezvous,
                    method: format!(
                        "live rebalancer: rebalance_moves, margin {:.0}% (leave: repair_targets first)",
                        100.0 * PlannerConfig::default().rebalance_margin
                    ),
                    join: Moved::new(join_bytes, ideal_join),
                    leave: Some(Moved::new(leave_bytes, leave_ideal)),
                });
                rows.push(MoveRow {
                    policy: Policy::Rendezvous,
                    method: "re-place every object by the rebalancer's ranking (by capacity)"
                        .into(),
                    join: Moved::new(r.join, ideal_join),
                    leave: Some(Moved::new(r.leave, r.leave_ideal)),
                });
                for l in [&settle, &join, &leave] {
                    checks += l.desired_checks;
                    mismatches += l.desired_mismatches;
                }
                live_settle = Some(settle);
                live_join = Some(join);
                live_leave = Some(leave);
            }
            policy => {
                let leave_ideal = bytes_on(world, outcome, &is_leaver);
                let mine: Vec<usize> = (0..reruns.len()).filter(|&j| reruns[j].0 == f).collect();
                let (Some(after_join), Some(after_leave)) = (
                    rerun_outcomes[mine[0]].take(),
                    rerun_outcomes[mine[1]].take(),
                ) else {
                    continue;
                };
                let join = changed_bytes(world, outcome, &after_join);
                let leave = changed_bytes(world, outcome, &after_leave);
                log.event("moves-rerun", &[policy.tag(), join, leave]);
                rows.push(MoveRow {
                    policy,
                    method: "re-run the policy from empty on the new node set".into(),
                    join: Moved::new(join, ideal_join),
                    leave: Some(Moved::new(leave, leave_ideal)),
                });
                rows.push(MoveRow {
                    policy,
                    method: "targeted rebalance with a directory (lower bound: the ideal)".into(),
                    join: Moved::new(ideal_join, ideal_join),
                    leave: Some(Moved::new(leave_ideal, leave_ideal)),
                });
            }
        }
    }
    MovesReport {
        joiners: joiners.len(),
        joiner_capacity_share: c_join as f64 / c_initial as f64,
        leavers: world.leavers.len(),
        leaver_capacity_share: c_leave as f64 / c_initial as f64,
        rows,
        rendezvous_drift: drift,
        shortcut_checks: checks,
        shortcut_mismatches: mismatches,
        live_settle,
        live_join,
        live_leave,
    }
}

/// Totals of the rendezvous pass, in bytes (checks in objects).
#[derive(Debug, Default)]
struct RendezvousTotals {
    join: u64,
    leave: u64,
    leave_ideal: u64,
    drift: u64,
    checks: u64,
    mismatches: u64,
}

fn rendezvous(
    world: &World,
    outcome: &FillOutcome,
    initial: &[u32],
    joiners: &[u32],
    staying: &[u32],
    is_leaver: &[bool],
    cfg: &MovesConfig,
) -> (RendezvousTotals, Desired) {
    let n = world.n;
    let ledger = &outcome.ledger;
    // The rebalancer's ranking: by capacity (the weights at even fill),
    // for every member with room.
    let weight = |i: u32| -> u64 {
        if ledger.free(i) > 0 {
            world.capacity(i)
        } else {
            0
        }
    };
    let before_view = world.view(initial.iter().copied(), weight);
    let grown: Vec<u32> = initial.iter().chain(joiners).copied().collect();
    let join_view = world.view(grown.iter().copied(), weight);
    let leave_view = world.view(staying.iter().copied(), weight);
    let joiners_target: Vec<Member> = joiners
        .iter()
        .map(|&j| world.member(j, weight(j)))
        .collect();

    // The pre-filter (module header): node hashes and the sites that
    // already have an eligible member.
    let hashes: Vec<u64> = world.all_nodes.iter().map(|x| node_hash(&x.id)).collect();
    let score = |key: PlacementKey, i: u32, w: u64| -> f64 {
        w as f64 / -unit(key.0 ^ hashes[i as usize]).ln()
    };
    // The joiners (indices into `joiners_target`) that score at least `s`
    // for `key`. Scoring every joiner costs a logarithm each (a thousand
    // per object at 100,000 nodes), so a joiner is scored only if its hash
    // passes the bound every joiner that reaches `s` passes: `w / -ln(u)
    // >= s` needs `u >= exp(-w / s) >= exp(-w_max / s)`, lowered by a
    // relative 1e-6 against rounding as in the protocol's prefilter; the
    // result is the same as scoring all.
    let joiner_hw: Vec<(u64, u32, u64)> = joiners_target
        .iter()
        .map(|m| {
            let i = node_index(&m.id);
            (hashes[i as usize], i, m.weight)
        })
        .collect();
    let w_max = joiner_hw.iter().map(|&(_, _, w)| w).max().unwrap_or(0);
    let joiners_above = |key: PlacementKey, s: f64| -> Vec<usize> {
        let cut = score_cut(s, w_max);
        joiner_hw
            .iter()
            .enumerate()
            .filter(|&(_, &(h, i, w))| fmix64(key.0 ^ h) >> 11 >= cut && score(key, i, w) >= s)
            .map(|(j, _)| j)
            .collect()
    };
    let mut site_has_eligible = vec![false; world.sites.len()];
    for &i in initial {
        if weight(i) > 0 {
            site_has_eligible[world.site_of(i) as usize] = true;
        }
    }
    let filter_sound = joiners
        .iter()
        .all(|&j| site_has_eligible[world.site_of(j) as usize]);

    let stored: Vec<usize> = (0..world.objects.len())
        .filter(|&i| outcome.stored[i])
        .collect();
    let verify_every = cfg.verify_every.max(1);
    let bar = progress_bar(cfg.progress, stored.len(), "objects re-placed");
    let per_object = par_map(cfg.threads, stored.len(), |j| {
        bar.inc(1);
        let obj = &world.objects[stored[j]];
        let verify = j % verify_every == 0;
        let mut r = PerObject::default();
        let before = place_indices(&before_view, obj.key, n);
        let actual = outcome.holders_of(stored[j], n);
        r.drift = gained(&before, actual);

        // Re-place over the small view, unless no joiner outscores the
        // weakest holder (then nothing can change).
        let min_before = before
            .iter()
            .map(|&i| score(obj.key, i, weight(i)))
            .fold(f64::INFINITY, f64::min);
        let exact = filter_sound && before.len() == n;
        let above = if exact {
            joiners_above(obj.key, min_before)
        } else {
            Vec::new()
        };
        let may_change = !exact || !above.is_empty();
        let after = if may_change {
            // With the filter sound, the joiners that do not outscore the
            // weakest holder cannot be picked (module header), so the small
            // view needs only the others: the lemma holds for any `V'`
            // between the placement and the grown view.
            let joining: Vec<&Member> = if exact {
                above.iter().map(|&j| &joiners_target[j]).collect()
            } else {
                joiners_target.iter().collect()
            };
            let small = View::new(
                before
                    .iter()
                    .map(|&i| world.member(i, weight(i)))
                    .chain(joining.into_iter().cloned()),
            );
            place_indices(&small, obj.key, n)
        } else {
            before.clone()
        };
        r.join = gained(&after, &before);
        r.before = before.clone();
        if verify {
            r.checks += 1;
            let full = place_indices(&join_view, obj.key, n);
            r.mismatches += u8::from(full != after);
        }

        let leaving = before.iter().filter(|&&i| is_leaver[i as usize]).count() as u8;
        r.leave_ideal = leaving;
        if leaving > 0 || verify {
            let after = place_indices(&leave_view, obj.key, n);
            r.leave = gained(&after, &before);
            if leaving == 0 {
                r.mismatches += u8::from(after != before);
            }
        }
        r
    });

    bar.finish_and_clear();
    let mut t = RendezvousTotals::default();
    let mut desired = Desired {
        eligible: vec![false; world.all_nodes.len()],
        holders: vec![MISSING; world.objects.len() * n],
    };
    for &i in initial {
        desired.eligible[i as usize] = weight(i) > 0;
    }
    for (j, r) in per_object.iter().enumerate() {
        let o = stored[j];
        desired.holders[o * n..o * n + r.before.len()].copy_from_slice(&r.before);
        let shard = world.objects[o].shard_bytes;
        t.join += u64::from(r.join) * shard;
        t.leave += u64::from(r.leave) * shard;
        t.leave_ideal += u64::from(r.leave_ideal) * shard;
        t.drift += u64::from(r.drift) * shard;
        t.checks += u64::from(r.checks);
        t.mismatches += u64::from(r.mismatches);
    }
    (t, desired)
}

/// Where every shard is and each node's used bytes.
#[derive(Debug, Clone)]
struct Holdings {
    holders: Vec<u32>,
    used: Vec<u64>,
}

/// Most passes of the live rebalancer (each one moves less than the last;
/// the cap only bounds a run that would not settle, and shows in `passes`).
const MAX_PASSES: u32 = 20;

/// The live rebalancer (module header) on the rendezvous fill's holdings,
/// with `members` the nodes after the change and `gone` the nodes that
/// left with their shards. Returns what it did and the bytes it wrote to
/// new holders (rebuilt plus moved).
fn live_rebalance(
    world: &World,
    outcome: &FillOutcome,
    state: &mut Holdings,
    desired: &mut Desired,
    members: &[u32],
    gone: &[u32],
    cfg: &MovesConfig,
) -> (LiveOutcome, u64) {
    let n = world.n;
    let m = world.m;
    let margin = PlannerConfig::default().rebalance_margin;
    let Holdings { holders, used } = state;
    let mut is_gone = vec![false; world.all_nodes.len()];
    for &g in gone {
        is_gone[g as usize] = true;
        used[g as usize] = 0;
    }
    let mut is_member = vec![false; world.all_nodes.len()];
    for &i in members {
        is_member[i as usize] = true;
    }
    let stored: Vec<usize> = (0..world.objects.len())
        .filter(|&i| outcome.stored[i])
        .collect();
    let ids = |hs: &[u32]| -> Vec<NodeId> {
        hs.iter()
            .map(|&h| world.all_nodes[h as usize].id.clone())
            .collect()
    };
    let refresh = cfg.fill.refresh.max(1);
    let mut written: u64 = 0;
    let mut out = LiveOutcome {
        rebuilt_shards: 0,
        moved_shards: 0,
        passes: 0,
        joiner_fill: None,
        mean_fill: 0.0,
        max_fill: 0.0,
        short_stripes: 0,
        desired_checks: 0,
        desired_mismatches: 0,
    };

    // Leave: rebuild what the leavers held, where the planner puts it.
    if !gone.is_empty() {
        let mut view = world.weighted_view(members.iter().copied(), |i| used[i as usize]);
        let bar = progress_bar(cfg.progress, stored.len(), "objects checked for repair");
        for (c, chunk) in stored.chunks(refresh).enumerate() {
            bar.inc(chunk.len() as u64);
            if c > 0 {
                world.reweigh(&mut view, |i| used[i as usize]);
            }
            let view = &view;
            let snapshot: &[u32] = holders;
            let targets = par_map(cfg.threads, chunk.len(), |j| {
                let o = chunk[j];
                let hs = &snapshot[o * n..(o + 1) * n];
                if !hs.iter().any(|&h| is_gone[h as usize]) {
                    return Vec::new();
                }
                let keep: Vec<u32> = hs
                    .iter()
                    .copied()
                    .filter(|&h| !is_gone[h as usize])
                    .collect();
                let t = repair_targets(view, world.objects[o].key, n - keep.len(), &ids(&keep), m);
                t.iter().map(node_index).collect::<Vec<u32>>()
            });
            for (j, t) in targets.into_iter().enumerate() {
                let o = chunk[j];
                let shard = world.objects[o].shard_bytes;
                let mut t = t.into_iter();
                for slot in &mut holders[o * n..(o + 1) * n] {
                    if !is_gone[*slot as usize] {
                        continue;
                    }
                    *slot = match t.next() {
                        Some(to) if used[to as usize] + shard <= world.capacity(to) => {
                            used[to as usize] += shard;
                            written += shard;
                            out.rebuilt_shards += 1;
                            to
                        }
                        _ => MISSING,
                    };
                }
                // A target without room refuses the shard and the next
                // round plans again once its fill is known: here, with the
                // members that have room for it (rare: a large shard).
                let missing = holders[o * n..(o + 1) * n]
                    .iter()
                    .filter(|&&h| h == MISSING)
                    .count();
                if missing > 0 {
                    let keep: Vec<u32> = holders[o * n..(o + 1) * n]
                        .iter()
                        .copied()
                        .filter(|&h| h != MISSING)
                        .collect();
                    let roomy = members
                        .iter()
                        .copied()
                        .filter(|&i| used[i as usize] + shard <= world.capacity(i));
                    let view = world.weighted_view(roomy, |i| used[i as usize]);
                    let t = repair_targets(&view, world.objects[o].key, missing, &ids(&keep), m);
                    let mut t = t.iter().map(node_index);
                    for slot in &mut holders[o * n..(o + 1) * n] {
                        if *slot != MISSING {
                            continue;
                        }
                        if let Some(to) = t.next() {
                            used[to as usize] += shard;
                            written += shard;
                            out.rebuilt_shards += 1;
                            *slot = to;
                        }
                    }
                }
            }
        }
        bar.finish_and_clear();
    }

    // Rebalancing passes until one moves nothing.
    let mut view = world.weighted_view(members.iter().copied(), |i| used[i as usize]);
    loop {
        out.passes += 1;
        let mut moved_this_pass = 0u64;
        // The rebalancer ranks by capacity, which no write changes: one
        // view per pass (a member that filled up since still looks
        // eligible, as in a node between announcements, and refuses the
        // shard). The fills it compares are refreshed every chunk.
        if out.passes > 1 {
            world.reweigh(&mut view, |i| used[i as usize]);
        }
        let view = &view;
        // The stripes' desired holders change only with the view's
        // eligible members (the ranking is by capacity).
        let (c, x) = desired.update(world, view, &stored, cfg);
        out.desired_checks += c;
        out.desired_mismatches += x;
        let desired: &Desired = desired;
        let bar = progress_bar(
            cfg.progress,
            stored.len(),
            &format!("objects checked for rebalancing (pass {})", out.passes),
        );
        for chunk in stored.chunks(refresh) {
            bar.inc(chunk.len() as u64);
            let fill: Vec<f64> = (0..world.all_nodes.len() as u32)
                .map(|i| used[i as usize] as f64 / world.capacity(i) as f64)
                .collect();
            // Emptiest eligible member: no holder fuller than it by the
            // margin means no move for that stripe (exact skip).
            let emptiest = members
                .iter()
                .filter(|&&i| used[i as usize] < world.capacity(i))
                .map(|&i| fill[i as usize])
                .fold(f64::INFINITY, f64::min);
            let snapshot: &[u32] = holders;
            let found = par_map(cfg.threads, chunk.len(), |j| {
                let o = chunk[j];
                let hs = &snapshot[o * n..(o + 1) * n];
                if hs.contains(&MISSING)
                    || !hs
                        .iter()
                        .any(|&h| emptiest < fill[h as usize] * (1.0 - margin))
                {
                    return Vec::new();
                }
                let fill_of = |id: &NodeId| {
                    let i = node_index(id) as usize;
                    is_member.get(i).copied().unwrap_or(false).then(|| fill[i])
                };
                let want = ids(desired.of(o, n));
                let want: Vec<&NodeId> = want.iter().collect();
                let is_volatile = |id: &NodeId| view.is_volatile(id);
                rebalance_moves_towards(&want, &ids(hs), is_volatile, fill_of, margin, m)
                    .into_iter()
                    .map(|(slot, to)| (slot, node_index(&to)))
                    .collect::<Vec<(usize, u32)>>()
            });
            for (j, moves) in found.into_iter().enumerate() {
                let o = chunk[j];
                let shard = world.objects[o].shard_bytes;
                for (slot, to) in moves {
                    // The new holder refuses a shard it has no room for.
                    if used[to as usize] + shard > world.capacity(to) {
                        continue;
                    }
                    let from = holders[o * n + slot];
                    used[from as usize] -= shard;
                    used[to as usize] += shard;
                    holders[o * n + slot] = to;
                    written += shard;
                    moved_this_pass += 1;
                }
            }
        }
        bar.finish_and_clear();
        out.moved_shards += moved_this_pass;
        if moved_this_pass == 0 || out.passes >= MAX_PASSES {
            break;
        }
    }

    let fill_of = |i: u32| used[i as usize] as f64 / world.capacity(i) as f64;
    let used_sum: u128 = members.iter().map(|&i| u128::from(used[i as usize])).sum();
    let cap_sum: u128 = members.iter().map(|&i| u128::from(world.capacity(i))).sum();
    out.mean_fill = used_sum as f64 / cap_sum.max(1) as f64;
    out.max_fill = members.iter().map(|&i| fill_of(i)).fold(0.0, f64::max);
    let joiners: Vec<u32> = members
        .iter()
        .copied()
        .filter(|&i| i as usize >= world.initial)
        .collect();
    if !joiners.is_empty() {
        let u: u128 = joiners.iter().map(|&i| u128::from(used[i as usize])).sum();
        let c: u128 = joiners.iter().map(|&i| u128::from(world.capacity(i))).sum();
        out.joiner_fill = Some(u as f64 / c.max(1) as f64);
    }
    out.short_stripes = stored
        .iter()
        .filter(|&&o| {
            let hs = &holders[o * n..(o + 1) * n];
            let mut d: Vec<u32> = hs.iter().copied().filter(|&h| h != MISSING).collect();
            d.sort_unstable();
            d.dedup();
            d.len() < n || d.iter().any(|&h| !is_member[h as usize])
        })
        .count() as u64;
    (out, written)
}

/// The desired holders of every stored object: its placement by capacity
/// ([`Weighting::Capacity`], what the rebalancer restores) over a view
/// whose eligible members are `eligible`. The ranking depends on the
/// members, their capacities and which are eligible, not on fills, so the
/// rebalancing passes keep it and [`Desired::update`] brings it to a new
/// view exactly (the lemma of the module header), ranking over the whole
/// view only the stripes a removed member was desired for.
#[derive(Debug, Clone)]
struct Desired {
    /// Per node index: eligible in the view the holders were ranked on.
    eligible: Vec<bool>,
    /// `n` per object (in ranking order, `MISSING`-padded when fewer were
    /// eligible; all `MISSING` for an object not stored).
    holders: Vec<u32>,
}

impl Desired {
    fn of(&self, o: usize, n: usize) -> &[u32] {
        let hs = &self.holders[o * n..(o + 1) * n];
        let len = hs.iter().position(|&h| h == MISSING).unwrap_or(n);
        &hs[..len]
    }

    /// Brings the desired holders to `view` (a [`World::weighted_view`]).
    /// With `R` the members no longer eligible and `A` the newly eligible
    /// ones: a stripe none of whose desired holders is in `R` keeps them
    /// over the view without `R` (the lemma: that view is a subset of the
    /// old one and contains the placement), and then gains from `A` only
    /// what a placement over its desired holders and the members of `A`
    /// that outscore the weakest of them picks (the join shortcut, with
    /// its soundness condition: every member of `A` is at a site that
    /// already has an eligible member). Every other stripe, and every one
    /// when the condition fails, is ranked over the whole view. Every
    /// `verify_every`-th stored object is ranked over the whole view as
    /// well and compared: returns (checked, mismatched).
    fn update(
        &mut self,
        world: &World,
        view: &View,
        stored: &[usize],
        cfg: &MovesConfig,
    ) -> (u64, u64) {
        let n = world.n;
        let mut eligible = vec![false; world.all_nodes.len()];
        for mem in view.members() {
            if eligible_for_writes(mem) {
                eligible[node_index(&mem.id) as usize] = true;
            }
        }
        if eligible == self.eligible {
            return (0, 0);
        }
        let removed: Vec<bool> = (0..eligible.len())
            .map(|i| self.eligible[i] && !eligible[i])
            .collect();
        let added: Vec<u32> = (0..eligible.len() as u32)
            .filter(|&i| eligible[i as usize] && !self.eligible[i as usize])
            .collect();
        let mut site_kept = vec![false; world.sites.len()];
        for i in 0..eligible.len() as u32 {
            if eligible[i as usize] && self.eligible[i as usize] {
                site_kept[world.site_of(i) as usize] = true;
            }
        }
        let sound = added.iter().all(|&a| site_kept[world.site_of(a) as usize]);
        let hashes: Vec<u64> = world.all_nodes.iter().map(|x| node_hash(&x.id)).collect();
        let score = |key: PlacementKey, i: u32| -> f64 {
            world.capacity(i) as f64 / -unit(key.0 ^ hashes[i as usize]).ln()
        };
        let w_max = added.iter().map(|&a| world.capacity(a)).max().unwrap_or(0);
        // The members of `A` that score at least `s`: the hash bound of
        // the join shortcut first, a logarithm only for those that pass it.
        let added_above = |key: PlacementKey, s: f64| -> Vec<u32> {
            let cut = score_cut(s, w_max);
            added
                .iter()
                .copied()
                .filter(|&a| fmix64(key.0 ^ hashes[a as usize]) >> 11 >= cut && score(key, a) >= s)
                .collect()
        };
        let full = |key: PlacementKey| -> Vec<u32> {
            view.place_capped(key, n, Weighting::Capacity, world.m)
                .into_iter()
                .map(node_index)
                .collect()
        };
        let verify_every = cfg.verify_every.max(1);
        let bar = progress_bar(cfg.progress, stored.len(), "desired holders re-ranked");
        let (mut checks, mut mismatches) = (0u64, 0u64);
        const BLOCK: usize = 1 << 16;
        for (b, block) in stored.chunks(BLOCK).enumerate() {
            let this: &Desired = self;
            let found = par_map(cfg.threads, block.len(), |j| {
                let o = block[j];
                let key = world.objects[o].key;
                let old = this.of(o, n);
                let new = if old.len() < n || !sound || old.iter().any(|&h| removed[h as usize]) {
                    full(key)
                } else if added.is_empty() {
                    old.to_vec()
                } else {
                    let weakest = old
                        .iter()
                        .map(|&i| score(key, i))
                        .fold(f64::INFINITY, f64::min);
                    let above = added_above(key, weakest);
                    if above.is_empty() {
                        old.to_vec()
                    } else {
                        let small =
                            world.view(old.iter().chain(&above).copied(), |i| world.capacity(i));
                        place_indices(&small, key, n)
                    }
                };
                let check = (b * BLOCK + j)
                    .is_multiple_of(verify_every)
                    .then(|| full(key) == new);
                (new, check)
            });
            bar.inc(block.len() as u64);
            for (j, (new, check)) in found.into_iter().enumerate() {
                let o = block[j];
                let slot = &mut self.holders[o * n..(o + 1) * n];
                slot.fill(MISSING);
                slot[..new.len()].copy_from_slice(&new);
                if let Some(same) = check {
                    checks += 1;
                    mismatches += u64::from(!same);
                }
            }
        }
        bar.finish_and_clear();
        self.eligible = eligible;
        (checks, mismatches)
    }
}

/// The hash bound of the join shortcut: a member of weight at most
/// `w_max` can score at least `s` only if the top 53 bits of
/// `fmix64(key ^ node_hash)` are at least this (`w / -ln(u) >= s` needs
/// `u >= exp(-w_max / s)`, lowered by a relative 1e-6 against rounding as
/// in the protocol's prefilter); 0 (everyone passes) for a score that is
/// not positive and finite.
fn score_cut(s: f64, w_max: u64) -> u64 {
    if s.is_finite() && s > 0.0 {
        unit_bits_at_least((-(w_max as f64) / s).exp() * (1.0 - 1e-6))
    } else {
        0
    }
}

/// How many of `after`'s nodes are not in `before`.
fn gained(after: &[u32], before: &[u32]) -> u8 {
    after.iter().filter(|x| !before.contains(x)).count() as u8
}

fn stored_bytes(world: &World, outcome: &FillOutcome) -> u128 {
    world
        .objects
        .iter()
        .zip(&outcome.stored)
        .filter(|(_, &s)| s)
        .map(|(o, _)| u128::from(o.shard_bytes) * world.n as u128)
        .sum()
}

/// Bytes `outcome` stored on the nodes marked in `on`.
fn bytes_on(world: &World, outcome: &FillOutcome, on: &[bool]) -> u64 {
    let n = world.n;
    (0..world.objects.len())
        .filter(|&i| outcome.stored[i])
        .map(|i| {
            let hits = outcome
                .holders_of(i, n)
                .iter()
                .filter(|&&h| on[h as usize])
                .count() as u64;
            hits * world.objects[i].shard_bytes
        })
        .sum()
}

/// Bytes of the shards whose stripe gained a holder from `before` to
/// `after`, over objects both stored.
fn changed_bytes(world: &World, before: &FillOutcome, after: &FillOutcome) -> u64 {
    let n = world.n;
    (0..world.objects.len())
        .filter(|&i| before.stored[i] && after.stored[i])
        .map(|i| {
            u64::from(gained(after.holders_of(i, n), before.holders_of(i, n)))
                * world.objects[i].shard_bytes
        })
        .sum()
}
