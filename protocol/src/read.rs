//! Reading one stripe: which shard to ask for next, with no IO.
//!
//! A stripe is decodable from any `k` of its `k + m` shards. The reader
//! asks for data shards first (no decoding needed when all `k` of them
//! arrive), parity only as a fallback, and holders that are alive and
//! lightly loaded before suspect or unknown ones; holders that are `Down`
//! are never asked. It keeps `k` requests in flight, replaces each one that
//! fails with the next candidate, and, when the stripe is not done
//! `hedge_after_ms` after the start, sends one extra (hedged) request so
//! that one slow holder does not stall the read.
//!
//! The caller drives it kad-style: [`StripeRead::next`] says what to do
//! now ([`ReadStep::Fetch`] a shard, [`ReadStep::Wait`] for an answer or
//! the hedge time, or stop: [`ReadStep::Done`], [`ReadStep::Failed`]), and
//! [`StripeRead::on_ok`] / [`StripeRead::on_err`] report each answer: `ok`
//! only for bytes verified against the shard's ID. It is done with `k`
//! distinct verified shards, and fails only when fewer than `k` remain
//! possible. Time is an argument.
//!
//! Site-aware reads: the caller may give each candidate an estimated cost
//! (`cost_ms`: the time to fetch the shard from its holder, from measured
//! round-trip times and transfer rates). Candidates with a cost come
//! first, cheapest first, a parity shard's cost raised by the decode it
//! forces ([`parity_decode_ms`]: the segment's bytes at
//! [`DECODE_BYTES_PER_MS`], at least [`PARITY_DECODE_MS`]): a parity shard
//! from a near site goes before a data shard from a far one when that is
//! cheaper, and a node's own parity shard does not displace a data shard a
//! neighbour on a fast link can send for less than the decode costs. The `k` first requests go to the `k` cheapest
//! candidates and the hedge to the next cheapest. Candidates without a
//! cost follow in the site-blind order: data first, then by rank.

use crate::ids::NodeId;
use crate::manifest::Manifest;
use crate::placement::{MemberState, View};

/// Extra requests sent beyond `k` once the hedge time has passed.
pub const HEDGE: usize = 1;
/// The least that using a parity shard adds to its cost: the decode it
/// forces.
pub const PARITY_DECODE_MS: u32 = 2;
/// Segment bytes reed-solomon-simd decodes per millisecond of one core
/// (perf of an entry peer's get on 2026-12-07: 0.28 CPU-s of decoding for
/// 0.17 GiB of segments, about 0.64 GB/s).
pub const DECODE_BYTES_PER_MS: u64 = 640_000;

/// What a parity shard adds to a read's cost when segments of `k` data
/// shards of `shard_size` bytes are read: the decode of the segment.
/// On loopback a 4 MiB segment costs 7 ms, more than fetching a data
/// shard from a neighbour, whose decrypt and copy cost less CPU too (the
/// decode took a fifth of an entry peer's CPU when its own parity shard
/// was read first).
pub fn parity_decode_ms(k: u16, shard_size: u32) -> u32 {
    let bytes = u64::from(k) * u64::from(shard_size);
    u32::try_from(bytes.div_ceil(DECODE_BYTES_PER_MS))
        .unwrap_or(u32::MAX)
        .max(PARITY_DECODE_MS)
}
/// A measured hedge ([`StripeRead::hedge_by_cost`]) waits this many times
/// the costliest of the first `k` requests' estimates...
pub const HEDGE_COST_FACTOR: u64 = 2;
/// ... plus this, so that a holder answering within the noise of its
/// estimate on a fast link is not hedged.
pub const HEDGE_SLACK_MS: u64 = 10;

/// Why a read cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("segment {segment} is past the manifest's {segments} segments")]
    NoSegment { segment: usize, segments: usize },
    #[error("a stripe needs k >= 1 shards")]
    ZeroK,
}

/// How promising a holder is: lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HolderRank {
    /// Alive, with this many requests in flight (from its announcement).
    Alive {
        load: u32,
    },
    Suspect,
    /// Not in the view.
    Unknown,
}

/// One shard the reader may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Position in the stripe: `< k` are data shards.
    pub slot: u16,
    pub holder: NodeId,
    pub rank: HolderRank,
    /// Estimated time to fetch it; `None`: unknown (site-blind order).
    pub cost_ms: Option<u32>,
}

impl Candidate {
    /// The key candidates are tried in (see the module header).
    fn order_key(&self, k: usize, decode_ms: u32) -> (u64, bool, HolderRank, u16) {
        let parity = usize::from(self.slot) >= k;
        let cost = match self.cost_ms {
            Some(c) => u64::from(c) + if parity { u64::from(decode_ms) } else { 0 },
            None => u64::MAX,
        };
        (cost, parity, self.rank, self.slot)
    }
}

/// Puts the candidates in the order they are tried: costed ones first,
/// the first `k` of them the set that completes the stripe soonest, then
/// the rest by [`Candidate::order_key`]; uncosted ones last (site-blind:
/// data first, then by rank).
///
/// The `k` requests run in parallel and a decode follows them, so a set
/// of shards takes its costliest fetch, plus `decode_ms` when it holds a
/// parity shard. Of the sets with a parity shard the `k` cheapest fetches
/// are the best, of those without it the `k` cheapest data shards: the
/// better of the two goes first (data at a tie). Ranking each shard by
/// its own cost plus the decode instead put a reader's own parity shard
/// (0 ms + decode) before a neighbour's data shard fetched alongside the
/// others, and decoded segments it could have read whole.
fn order(list: &mut [(Candidate, State)], k: usize, decode_ms: u32) {
    list.sort_by_key(|(c, _)| c.order_key(k, decode_ms));
    let costed = list.iter().filter(|(c, _)| c.cost_ms.is_some()).count();
    if costed < k || k == 0 {
        return;
    }
    let raw = |c: &Candidate| u64::from(c.cost_ms.unwrap_or(u32::MAX));
    let parity = |c: &Candidate| usize::from(c.slot) >= k;
    let by_raw = |a: &(Candidate, State), b: &(Candidate, State)| {
        (raw(&a.0), parity(&a.0), a.0.rank, a.0.slot).cmp(&(
            raw(&b.0),
            parity(&b.0),
            b.0.rank,
            b.0.slot,
        ))
    };
    let mut any: Vec<(Candidate, State)> = list[..costed].to_vec();
    any.sort_by(by_raw);
    let with_parity = any[..k].iter().any(|(c, _)| parity(c));
    let lat_any = raw(&any[k - 1].0) + if with_parity { u64::from(decode_ms) } else { 0 };
    let data: Vec<&(Candidate, State)> = any.iter().filter(|(c, _)| !parity(c)).collect();
    let lat_data = (data.len() >= k).then(|| raw(&data[k - 1].0));
    let first: Vec<u16> = match lat_data {
        Some(l) if l <= lat_any => data[..k].iter().map(|(c, _)| c.slot).collect(),
        _ => any[..k].iter().map(|(c, _)| c.slot).collect(),
    };
    // Stable: the chosen k to the front in cost order, the rest as they
    // were.
    list.sort_by_key(|(c, _)| match first.iter().position(|&s| s == c.slot) {
        Some(p) => (0, p),
        None => (1, 0),
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    InFlight,
    Ok,
    Failed,
}

/// What the caller should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadStep {
    /// Ask `holder` for shard `slot`; report with `on_ok` / `on_err`.
    Fetch { slot: u16, holder: NodeId },
    /// Wait for an answer, or until `until_ms` (the hedge time) if given,
    /// then call `next` again.
    Wait { until_ms: Option<u64> },
    /// `k` distinct verified shards are in: decode from these slots.
    Done { slots: Vec<u16> },
    /// Fewer than `k` shards can still arrive.
    Failed { found: usize, needed: usize },
}

/// The read of one stripe.
#[derive(Debug, Clone)]
pub struct StripeRead {
    k: usize,
    /// In the order they are tried.
    candidates: Vec<(Candidate, State)>,
    /// What a parity shard adds to its cost.
    decode_ms: u32,
    hedge_at_ms: u64,
    hedged: bool,
}

impl StripeRead {
    /// A read of `k` shards among `candidates` (any order; one per slot is
    /// kept, the first given), started at `now_ms`, hedged after
    /// `hedge_after_ms`; a parity shard costs [`PARITY_DECODE_MS`] more.
    pub fn new(
        k: usize,
        candidates: Vec<Candidate>,
        now_ms: u64,
        hedge_after_ms: u64,
    ) -> Result<Self, ReadError> {
        Self::with_decode_cost(k, candidates, PARITY_DECODE_MS, now_ms, hedge_after_ms)
    }

    /// [`StripeRead::new`] with a parity shard costing `decode_ms` more
    /// (see [`parity_decode_ms`]).
    pub fn with_decode_cost(
        k: usize,
        candidates: Vec<Candidate>,
        decode_ms: u32,
        now_ms: u64,
        hedge_after_ms: u64,
    ) -> Result<Self, ReadError> {
        if k == 0 {
            return Err(ReadError::ZeroK);
        }
        let mut list: Vec<(Candidate, State)> = Vec::with_capacity(candidates.len());
        for c in candidates {
            if !list.iter().any(|(o, _)| o.slot == c.slot) {
                list.push((c, State::Queued));
            }
        }
        order(&mut list, k, decode_ms);
        Ok(StripeRead {
            k,
            candidates: list,
            decode_ms,
            hedge_at_ms: now_ms.saturating_add(hedge_after_ms),
            hedged: false,
        })
    }

    /// The read of segment `segment` of `m`: its holders ranked from `view`
    /// (`load` gives an alive holder's requests in flight). Also returns
    /// the slots skipped because their holder is `Down`.
    pub fn for_segment(
        m: &Manifest,
        segment: usize,
        view: &View,
        load: impl Fn(&NodeId) -> u32,
        now_ms: u64,
        hedge_after_ms: u64,
    ) -> Result<(Self, Vec<(u16, NodeId)>), ReadError> {
        Self::for_segment_costed(m, segment, view, load, |_, _| None, now_ms, hedge_after_ms)
    }

    /// [`StripeRead::for_segment`], site-aware: `cost(holder, shard_bytes)`
    /// estimates the fetch of a shard from an alive holder (suspect and
    /// unknown holders get no cost).
    #[allow(clippy::too_many_arguments)]
    pub fn for_segment_costed(
        m: &Manifest,
        segment: usize,
        view: &View,
        load: impl Fn(&NodeId) -> u32,
        cost: impl Fn(&NodeId, u32) -> Option<u32>,
        now_ms: u64,
        hedge_after_ms: u64,
    ) -> Result<(Self, Vec<(u16, NodeId)>), ReadError> {
        let seg = m.segments.get(segment).ok_or(ReadError::NoSegment {
            segment,
            segments: m.segments.len(),
        })?;
        let mut candidates = Vec::new();
        let mut down = Vec::new();
        for (i, e) in seg.shards.iter().enumerate() {
            let Some(holder) = m.holder(e) else { continue };
            let slot = i as u16;
            let rank = match view.get(holder).map(|mm| mm.state) {
                Some(MemberState::Alive) => HolderRank::Alive { load: load(holder) },
                Some(MemberState::Suspect) => HolderRank::Suspect,
                Some(MemberState::Down) => {
                    down.push((slot, holder.clone()));
                    continue;
                }
                None => HolderRank::Unknown,
            };
            let cost_ms = match rank {
                HolderRank::Alive { .. } => cost(holder, seg.shard_size),
                _ => None,
            };
            candidates.push(Candidate {
                slot,
                holder: holder.clone(),
                rank,
                cost_ms,
            });
        }
        let read = StripeRead::with_decode_cost(
            usize::from(m.geometry.k),
            candidates,
            parity_decode_ms(m.geometry.k, seg.shard_size),
            now_ms,
            hedge_after_ms,
        )?;
        Ok((read, down))
    }

    /// The same read with a parity shard costing `decode_ms` more (for a
    /// caller that measures its decodes); candidates are ordered again.
    /// Only before the first [`StripeRead::next`]: once a request is out,
    /// the read is returned unchanged.
    #[must_use]
    pub fn with_decode_ms(mut self, decode_ms: u32) -> Self {
        if self.candidates.iter().any(|(_, st)| *st != State::Queued) {
            return self;
        }
        let k = self.k;
        self.decode_ms = decode_ms;
        order(&mut self.candidates, k, decode_ms);
        self
    }

    /// Moves the hedge to when the first `k` requests should all have been
    /// answered: [`HEDGE_COST_FACTOR`] times the costliest of their
    /// estimates (parity decode included) plus [`HEDGE_SLACK_MS`] after
    /// `now_ms`, when every one of them has an estimate; otherwise the
    /// hedge time given at the start stays. A read whose holders answer
    /// as measured then fetches exactly `k` shards, and one that has a
    /// straggler still hedges, later than with no delay by at most the
    /// expected fetch time plus the slack.
    #[must_use]
    pub fn hedge_by_cost(mut self, now_ms: u64) -> Self {
        let (k, decode_ms) = (self.k, self.decode_ms);
        let costs: Option<Vec<u64>> = self
            .candidates
            .iter()
            .take(k)
            .map(|(c, _)| c.cost_ms.map(|_| c.order_key(k, decode_ms).0))
            .collect();
        if let Some(costliest) = costs
            .filter(|c| c.len() == k)
            .and_then(|c| c.into_iter().max())
        {
            self.hedge_at_ms = now_ms
                .saturating_add(costliest.saturating_mul(HEDGE_COST_FACTOR))
                .saturating_add(HEDGE_SLACK_MS);
        }
        self
    }

    fn count(&self, s: State) -> usize {
        self.candidates.iter().filter(|(_, st)| *st == s).count()
    }

    /// Verified shards so far.
    pub fn found(&self) -> usize {
        self.count(State::Ok)
    }

    /// The next thing to do at `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> ReadStep {
        let ok = self.count(State::Ok);
        if ok >= self.k {
            let slots = self
                .candidates
                .iter()
                .filter(|(_, s)| *s == State::Ok)
                .map(|(c, _)| c.slot)
                .collect();
            return ReadStep::Done { slots };
        }
        let in_flight = self.count(State::InFlight);
        let queued = self.count(State::Queued);
        if ok + in_flight + queued < self.k {
            return ReadStep::Failed {
                found: ok,
                needed: self.k,
            };
        }
        if !self.hedged && now_ms >= self.hedge_at_ms {
            self.hedged = true;
        }
        let want = self.k - ok + if self.hedged { HEDGE } else { 0 };
        if in_flight < want {
            if let Some((c, st)) = self
                .candidates
                .iter_mut()
                .find(|(_, s)| *s == State::Queued)
            {
                *st = State::InFlight;
                return ReadStep::Fetch {
                    slot: c.slot,
                    holder: c.holder.clone(),
                };
            }
        }
        let until_ms = (!self.hedged && queued > 0).then_some(self.hedge_at_ms);
        ReadStep::Wait { until_ms }
    }

    fn answer(&mut self, slot: u16, to: State) {
        if let Some((_, st)) = self
            .candidates
            .iter_mut()
            .find(|(c, s)| c.slot == slot && *s == State::InFlight)
        {
            *st = to;
        }
    }

    /// Shard `slot` arrived and verified. Ignored unless it was asked for
    /// and not answered yet.
    pub fn on_ok(&mut self, slot: u16) {
        self.answer(slot, State::Ok);
    }

    /// Shard `slot` could not be had (error, timeout, bad bytes). Ignored
    /// unless it was asked for and not answered yet.
    pub fn on_err(&mut self, slot: u16) {
        self.answer(slot, State::Failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId::from_bytes(vec![0, 36, 8, 1, 18, 32, i]).unwrap()
    }

    fn cands(n: u16) -> Vec<Candidate> {
        (0..n)
            .rev()
            .map(|i| Candidate {
                slot: i,
                holder: node(i as u8),
                rank: HolderRank::Alive { load: 0 },
                cost_ms: None,
            })
            .collect()
    }

    fn fetch(r: &mut StripeRead, now: u64) -> Option<u16> {
        match r.next(now) {
            ReadStep::Fetch { slot, .. } => Some(slot),
            _ => None,
        }
    }

    #[test]
    fn data_first_then_hedge_then_parity_fallback() {
        let mut r = StripeRead::new(2, cands(4), 0, 100).unwrap();
        assert_eq!(fetch(&mut r, 0), Some(0));
        assert_eq!(fetch(&mut r, 0), Some(1));
        assert_eq!(
            r.next(0),
            ReadStep::Wait {
                until_ms: Some(100)
            }
        );
        // The hedge: one extra request once the delay passed.
        assert_eq!(fetch(&mut r, 100), Some(2));
        assert_eq!(r.next(100), ReadStep::Wait { until_ms: None });
        r.on_err(0);
        assert_eq!(fetch(&mut r, 101), Some(3));
        r.on_ok(1);
        r.on_ok(1);
        assert_eq!(r.found(), 1);
        r.on_ok(3);
        assert_eq!(r.next(102), ReadStep::Done { slots: vec![1, 3] });
    }

    #[test]
    fn a_measured_hedge_waits_for_the_costliest_of_the_first_k() {
        let costed = |costs: [Option<u32>; 4]| -> Vec<Candidate> {
            let mut c = cands(4);
            for x in &mut c {
                x.cost_ms = costs[usize::from(x.slot)];
            }
            c
        };
        // Slots 0 (5 ms) and 2 (parity: 7 + decode) go first; the hedge
        // waits twice the costlier plus the slack, then asks slot 1.
        let mut r = StripeRead::new(2, costed([Some(5), Some(30), Some(7), Some(60)]), 1000, 0)
            .unwrap()
            .hedge_by_cost(1000);
        let at = 1000 + HEDGE_COST_FACTOR * u64::from(7 + PARITY_DECODE_MS) + HEDGE_SLACK_MS;
        assert_eq!(fetch(&mut r, 1000), Some(0));
        assert_eq!(fetch(&mut r, 1000), Some(2));
        assert_eq!(r.next(1000), ReadStep::Wait { until_ms: Some(at) });
        assert_eq!(r.next(at - 1), ReadStep::Wait { until_ms: Some(at) });
        assert_eq!(fetch(&mut r, at), Some(1));
        // Answered in time: exactly k fetched.
        let mut r = StripeRead::new(2, costed([Some(5), Some(30), Some(7), Some(60)]), 0, 0)
            .unwrap()
            .hedge_by_cost(0);
        assert_eq!(fetch(&mut r, 0), Some(0));
        assert_eq!(fetch(&mut r, 0), Some(2));
        r.on_ok(0);
        r.on_ok(2);
        assert_eq!(r.next(1), ReadStep::Done { slots: vec![0, 2] });
        // One of the first k unmeasured: the given hedge time stays.
        let mut r = StripeRead::new(2, costed([Some(5), None, None, None]), 0, 0)
            .unwrap()
            .hedge_by_cost(0);
        assert_eq!(fetch(&mut r, 0), Some(0));
        assert_eq!(fetch(&mut r, 0), Some(1));
        assert_eq!(fetch(&mut r, 0), Some(2), "hedged at once");
    }

    #[test]
    fn the_decode_cost_grows_with_the_segment() {
        assert_eq!(parity_decode_ms(4, 1024), PARITY_DECODE_MS);
        assert_eq!(parity_decode_ms(4, 1 << 20), 7);
        assert_eq!(parity_decode_ms(u16::MAX, u32::MAX), 439_797_941);
        // k = 2 of 4: the reader's own parity shard (slot 2, cost 0), a
        // neighbour's data shard at 3 ms and one at 8 ms. Fetches run in
        // parallel: data only takes 8 ms, parity 3 ms plus the decode.
        let costed = || -> Vec<Candidate> {
            let mut c = cands(4);
            for x in &mut c {
                x.cost_ms = Some(match x.slot {
                    0 => 3,
                    1 => 8,
                    2 => 0,
                    _ => 50,
                });
            }
            c
        };
        let first_two = |decode: u32| -> Vec<u16> {
            let mut r = StripeRead::with_decode_cost(2, costed(), decode, 0, 1000).unwrap();
            [fetch(&mut r, 0), fetch(&mut r, 0)]
                .into_iter()
                .flatten()
                .collect()
        };
        // 4 MiB shards: a 14 ms decode, so both data shards.
        assert_eq!(first_two(parity_decode_ms(2, 4 << 20)), vec![0, 1]);
        // 1 MiB shards: a 4 ms decode, so the local parity and the near data.
        assert_eq!(first_two(parity_decode_ms(2, 1 << 20)), vec![2, 0]);
        // A tie goes to the data shards (8 = 3 + 5).
        assert_eq!(first_two(5), vec![0, 1]);
        // A measured decode cost reorders a read not started yet.
        let mut r = StripeRead::with_decode_cost(2, costed(), 100, 0, 1000)
            .unwrap()
            .with_decode_ms(1);
        assert_eq!(fetch(&mut r, 0), Some(2));
        let r2 = r.with_decode_ms(100);
        assert_eq!(r2.decode_ms, 1, "unchanged once started");
    }

    #[test]
    fn fails_only_when_k_are_out_of_reach() {
        let mut r = StripeRead::new(2, cands(3), 0, 0).unwrap();
        for _ in 0..3 {
            assert!(fetch(&mut r, 0).is_some());
        }
        r.on_err(0);
        assert_eq!(r.next(0), ReadStep::Wait { until_ms: None });
        r.on_err(2);
        assert_eq!(
            r.next(0),
            ReadStep::Failed {
                found: 0,
                needed: 2
            }
        );
        assert_eq!(
            StripeRead::new(0, cands(3), 0, 0).unwrap_err(),
            ReadError::ZeroK
        );
    }
}
