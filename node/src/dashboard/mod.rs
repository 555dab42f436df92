//! The web dashboard's server side: what the page at `/` shows besides
//! `/v1/status` and `/v1/objects`, kept cheaply in the node.
//!
//! - [`Events`]: a bounded ring of recent events (member down, back or
//!   joined, repair started and done (once per repair round that
//!   rebuilds), corruption found by scrub, puts refused), fed where those
//!   things happen (`node.rs`, `repair.rs`, `datapath.rs`) and served as
//!   `/v1/events`.
//! - [`TrafficLog`]: a ring of per-second samples (put and get bytes and
//!   operations, repair bytes and shards), taken by [`sample_loop`] from
//!   counters the data path already keeps (nothing is counted per byte
//!   for the dashboard), served as `/v1/traffic`.
//! - Durability ([`Dashboard::durability`], `/v1/durability`): every
//!   manifest replica this node holds, classified per stripe from what the
//!   node already knows: the membership state of each holder (a `Down`
//!   holder's copy counts as missing) and the copies the last repair round
//!   found absent ([`Dashboard::record_presence`], kept only for the
//!   manifest version it was checked against). No shard is read or
//!   re-hashed and no member is asked, so a poll costs one scan of the
//!   local manifest index; the result is cached for [`DURABILITY_TTL`].
//! - The page itself: `index.html`, `dashboard.css` and `dashboard.js`,
//!   compiled into the binary (no CDN, no build step).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dynostore_protocol::manifest::{Manifest, ManifestVersion};
use dynostore_protocol::membership::Transition;
use dynostore_protocol::planner::Presence;
use dynostore_protocol::{MemberState, NodeId, ObjectId};

use crate::manifests::wall_ms;
use crate::shared::Shared;

/// The page, its style and its script.
pub(crate) const INDEX_HTML: &str = include_str!("index.html");
pub(crate) const STYLE_CSS: &str = include_str!("dashboard.css");
pub(crate) const SCRIPT_JS: &str = include_str!("dashboard.js");

/// Events kept (the oldest goes first).
pub const MAX_EVENTS: usize = 256;
/// Longest event text kept.
const MAX_EVENT_TEXT: usize = 300;
/// Traffic samples kept: five minutes of one-second samples.
pub const MAX_SAMPLES: usize = 300;
/// One traffic sample per this.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The repair rate is measured over this many of the latest samples.
const RATE_WINDOW_SAMPLES: usize = 60;
/// A durability count is reused for this long (the page polls every 2 s).
pub const DURABILITY_TTL: Duration = Duration::from_millis(1500);
/// Objects whose absent copies are remembered at most (beyond it, new
/// findings are dropped: the counts then rely on holder states alone).
const MAX_PRESENCE_ENTRIES: usize = 100_000;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    MemberJoined,
    MemberSuspect,
    MemberDown,
    MemberBack,
    RepairStarted,
    RepairDone,
    Corruption,
    PutRefused,
}

impl EventKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::MemberJoined => "member-joined",
            EventKind::MemberSuspect => "member-suspect",
            EventKind::MemberDown => "member-down",
            EventKind::MemberBack => "member-back",
            EventKind::RepairStarted => "repair-started",
            EventKind::RepairDone => "repair-done",
            EventKind::Corruption => "corruption",
            EventKind::PutRefused => "put-refused",
        }
    }
}

/// One recent event.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// Increases by one per event since the node started.
    pub(crate) seq: u64,
    /// Wall clock, milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    pub(crate) kind: EventKind,
    /// The member or object concerned, if any (full ID).
    pub(crate) subject: Option<String>,
    pub(crate) text: String,
}

/// The bounded ring of recent events.
#[derive(Debug, Default)]
pub(crate) struct Events {
    ring: Mutex<VecDeque<Event>>,
    seq: AtomicU64,
}

impl Events {
    pub(crate) fn push(&self, kind: EventKind, subject: Option<String>, text: impl Into<String>) {
        let mut text: String = text.into();
        if text.len() > MAX_EVENT_TEXT {
            let mut cut = MAX_EVENT_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms: wall_ms(),
            kind,
            subject,
            text,
        };
        let mut ring = lock(&self.ring);
        if ring.len() == MAX_EVENTS {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// A change of a member's state, as the membership reported it.
    pub(crate) fn member(&self, t: &Transition) {
        let (kind, what) = match (t.from, t.to) {
            (None, _) => (EventKind::MemberJoined, "joined"),
            (_, MemberState::Down) => (EventKind::MemberDown, "is down"),
            (_, MemberState::Suspect) => (EventKind::MemberSuspect, "is suspect"),
            (Some(_), MemberState::Alive) => (EventKind::MemberBack, "is back"),
        };
        self.push(
            kind,
            Some(t.node.to_string()),
            format!("member {} {what}", t.node.short()),
        );
    }

    /// Events after `after` (a sequence number), oldest first.
    pub(crate) fn since(&self, after: u64) -> Vec<Event> {
        lock(&self.ring)
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }
}

/// Totals the sampler turns into per-second deltas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) put_bytes: u64,
    pub(crate) get_bytes: u64,
    pub(crate) put_ops: u64,
    pub(crate) get_ops: u64,
    pub(crate) repair_bytes: u64,
    pub(crate) repair_shards: u64,
}

impl Totals {
    fn minus(self, before: Totals) -> Totals {
        Totals {
            put_bytes: self.put_bytes.saturating_sub(before.put_bytes),
            get_bytes: self.get_bytes.saturating_sub(before.get_bytes),
            put_ops: self.put_ops.saturating_sub(before.put_ops),
            get_ops: self.get_ops.saturating_sub(before.get_ops),
            repair_bytes: self.repair_bytes.saturating_sub(before.repair_bytes),
            repair_shards: self.repair_shards.saturating_sub(before.repair_shards),
        }
    }
}

/// What happened during one sample interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Wall clock at the end of the interval, ms since the Unix epoch.
    pub(crate) at_ms: u64,
    /// Length of the interval (the sampler may run late).
    pub(crate) interval_ms: u64,
    pub(crate) delta: Totals,
}

/// The ring of traffic samples.
#[derive(Debug, Default)]
pub(crate) struct TrafficLog {
    ring: Mutex<VecDeque<Sample>>,
}

impl TrafficLog {
    pub(crate) fn push(&self, s: Sample) {
        let mut ring = lock(&self.ring);
        if ring.len() == MAX_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    pub(crate) fn samples(&self) -> Vec<Sample> {
        lock(&self.ring).iter().copied().collect()
    }

    /// Repair shards and bytes per second over the latest samples.
    fn repair_rate(&self) -> (f64, f64) {
        let ring = lock(&self.ring);
        let (mut shards, mut bytes, mut ms) = (0u64, 0u64, 0u64);
        for s in ring.iter().rev().take(RATE_WINDOW_SAMPLES) {
            shards += s.delta.repair_shards;
            bytes += s.delta.repair_bytes;
            ms += s.interval_ms;
        }
        if ms == 0 {
            return (0.0, 0.0);
        }
        let secs = ms as f64 / 1000.0;
        (shards as f64 / secs, bytes as f64 / secs)
    }
}

/// How one object (its worst stripe) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Class {
    /// Every stripe has all k + m copies.
    Healthy,
    /// Some stripe misses copies but can lose more than one more.
    Degraded,
    /// Some stripe has exactly k copies: one more loss makes it unreadable.
    AtRisk,
    /// Some stripe has fewer than k copies.
    Lost,
}

/// The class of a stripe with `available` of its `n` copies, `k` needed.
pub(crate) fn stripe_class(available: usize, k: usize, n: usize) -> Class {
    if available >= n {
        Class::Healthy
    } else if available > k {
        Class::Degraded
    } else if available == k {
        Class::AtRisk
    } else {
        Class::Lost
    }
}

/// Counts over the manifest replicas held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) objects: u64,
    pub(crate) healthy: u64,
    pub(crate) degraded: u64,
    pub(crate) at_risk: u64,
    pub(crate) lost: u64,
    /// Stripes short of k + m.
    pub(crate) stripes_short: u64,
    /// Copies missing in stripes that can still be rebuilt.
    pub(crate) missing_shards: u64,
    pub(crate) missing_bytes: u64,
}

/// Absent copies found by a repair round: (segment, position) per object,
/// for the manifest version that was checked.
type AbsentSlots = HashMap<ObjectId, (ManifestVersion, Vec<(usize, usize)>)>;

/// Classifies `manifests`: a copy is missing when its holder is not a
/// member or is `Down` in `states`, or when `absent` lists it for that
/// very manifest version. Everything else counts as present (as the
/// planner does: a silent holder that is not `Down` keeps its copies).
pub(crate) fn count(
    manifests: &[Manifest],
    state: impl Fn(&NodeId) -> Option<MemberState>,
    absent: &AbsentSlots,
) -> Counts {
    let mut c = Counts::default();
    for m in manifests {
        let k = usize::from(m.geometry.k);
        let n = m.geometry.n();
        let gone: Vec<bool> = m
            .holders
            .iter()
            .map(|h| state(h).is_none_or(|s| s == MemberState::Down))
            .collect();
        let known_absent = absent
            .get(&m.object)
            .filter(|(v, _)| *v == m.version())
            .map(|(_, slots)| slots.as_slice())
            .unwrap_or(&[]);
        let mut worst = Class::Healthy;
        for (s, seg) in m.segments.iter().enumerate() {
            let missing = seg
                .shards
                .iter()
                .enumerate()
                .filter(|(i, e)| {
                    gone.get(e.holder as usize).copied().unwrap_or(true)
                        || known_absent.contains(&(s, *i))
                })
                .count();
            let class = stripe_class(seg.shards.len().saturating_sub(missing), k, n);
            if missing > 0 {
                c.stripes_short += 1;
                if class != Class::Lost {
                    c.missing_shards += missing as u64;
                    c.missing_bytes += missing as u64 * u64::from(seg.shard_size);
                }
            }
            worst = worst.max(class);
        }
        c.objects += 1;
        match worst {
            Class::Healthy => c.healthy += 1,
            Class::Degraded => c.degraded += 1,
            Class::AtRisk => c.at_risk += 1,
            Class::Lost => c.lost += 1,
        }
    }
    c
}

/// The dashboard's state in [`Shared`].
#[derive(Debug, Default)]
pub(crate) struct Dashboard {
    pub(crate) events: Events,
    pub(crate) traffic: TrafficLog,
    absent: Mutex<AbsentSlots>,
    cache: tokio::sync::Mutex<Option<(Instant, serde_json::Value)>>,
}

impl Dashboard {
    /// Remembers which copies of `m` the holders just said they lack
    /// (the repair round's `Has` answers); forgets the object when none.
    pub(crate) fn record_presence(&self, m: &Manifest, presence: &[Vec<Presence>]) {
        let slots: Vec<(usize, usize)> = presence
            .iter()
            .enumerate()
            .flat_map(|(s, seg)| {
                seg.iter()
                    .enumerate()
                    .filter(|(_, p)| **p == Presence::Absent)
                    .map(move |(i, _)| (s, i))
            })
            .collect();
        let mut absent = lock(&self.absent);
        if slots.is_empty() {
            absent.remove(&m.object);
        } else if absent.len() < MAX_PRESENCE_ENTRIES || absent.contains_key(&m.object) {
            absent.insert(m.object, (m.version(), slots));
        }
    }

    /// The JSON of `/v1/durability` (cached for [`DURABILITY_TTL`]).
    pub(crate) async fn durability(&self, shared: &Shared) -> Result<serde_json::Value, String> {
        let mut cache = self.cache.lock().await;
        if let Some((at, v)) = cache.as_ref() {
            if at.elapsed() < DURABILITY_TTL {
                return Ok(v.clone());
            }
        }
        let manifests = shared.manifests.all().map_err(|e| e.to_string())?;
        let states: HashMap<NodeId, MemberState> = shared
            .membership()
            .entries()
            .map(|(id, e)| (id.clone(), e.state))
            .collect();
        let local = shared.local.clone();
        let counts = {
            let mut absent = lock(&self.absent);
            let held: HashMap<ObjectId, ManifestVersion> =
                manifests.iter().map(|m| (m.object, m.version())).collect();
            absent.retain(|o, (v, _)| held.get(o) == Some(v));
            count(
                &manifests,
                |h| {
                    if *h == local {
                        Some(MemberState::Alive)
                    } else {
                        states.get(h).copied()
                    }
                },
                &absent,
            )
        };
        let mut report = Default::default();
        shared.repair_stats(|s| report = s.clone());
        let report: dynostore_protocol::wire::RepairReport = report;
        let (shards_per_sec, bytes_per_sec) = self.traffic.repair_rate();
        let eta = (counts.missing_bytes == 0)
            .then_some(0.0)
            .or_else(|| (bytes_per_sec > 0.0).then(|| counts.missing_bytes as f64 / bytes_per_sec));
        let v = serde_json::json!({
            "scope": "objects whose manifest this node holds a replica of",
            "objects": counts.objects,
            "healthy": counts.healthy,
            "degraded": counts.degraded,
            "at_risk": counts.at_risk,
            "lost": counts.lost,
            "stripes_short": counts.stripes_short,
            "missing_shards": counts.missing_shards,
            "missing_bytes": counts.missing_bytes,
            "repair": {
                "queue_stripes": report.queue_len,
                "shards_per_sec": shards_per_sec,
                "bytes_per_sec": bytes_per_sec,
                "eta_seconds": eta,
                "shards_repaired": report.shards_repaired,
                "bytes_repaired": report.bytes_repaired,
                "rounds": report.rounds,
            },
        });
        *cache = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

/// The JSON of `/v1/traffic`.
pub(crate) fn traffic_json(shared: &Shared) -> serde_json::Value {
    let samples: Vec<serde_json::Value> = shared
        .dashboard
        .traffic
        .samples()
        .iter()
        .map(|s| {
            serde_json::json!({
                "t": s.at_ms,
                "ms": s.interval_ms,
                "put_bytes": s.delta.put_bytes,
                "get_bytes": s.delta.get_bytes,
                "put_ops": s.delta.put_ops,
                "get_ops": s.delta.get_ops,
                "repair_bytes": s.delta.repair_bytes,
                "repair_shards": s.delta.repair_shards,
            })
        })
        .collect();
    serde_json::json!({
        "interval_ms": SAMPLE_INTERVAL.as_millis() as u64,
        "samples": samples,
    })
}

/// The JSON of `/v1/events` (events after `after`, oldest first).
pub(crate) fn events_json(shared: &Shared, after: u64) -> serde_json::Value {
    let events: Vec<serde_json::Value> = shared
        .dashboard
        .events
        .since(after)
        .iter()
        .map(|e| {
            serde_json::json!({
                "seq": e.seq,
                "t": e.at_ms,
                "kind": e.kind.as_str(),
                "subject": e.subject,
                "text": e.text,
            })
        })
        .collect();
    serde_json::json!({
        "now": wall_ms(),
        "events": events,
    })
}

/// Takes a traffic sample every [`SAMPLE_INTERVAL`] until the node stops.
pub(crate) async fn sample_loop(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = totals(&shared);
    let mut last_at = Instant::now();
    loop {
        ticker.tick().await;
        if shared.is_closed() {
            return;
        }
        let now = totals(&shared);
        let at = Instant::now();
        shared.dashboard.traffic.push(Sample {
            at_ms: wall_ms(),
            interval_ms: at.duration_since(last_at).as_millis() as u64,
            delta: now.minus(last),
        });
        last = now;
        last_at = at;
    }
}

fn totals(shared: &Shared) -> Totals {
    let mut t = shared.metrics.dashboard_totals();
    shared.repair_stats(|s| {
        t.repair_bytes = s.bytes_repaired;
        t.repair_shards = s.shards_repaired;
    });
    t
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a single push or insert: a poisoned lock still holds
    // a consistent value.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynostore_protocol::erasure::{CodecKind, Geometry};
    use dynostore_protocol::manifest::Metadata;
    use dynostore_protocol::ShardId;

    fn node(i: u8) -> NodeId {
        NodeId::from_bytes(vec![0, 36, 8, 1, 18, 32, i]).unwrap()
    }

    /// A 2+2 manifest of two segments over holders 0..4 (segment 1 rotated).
    fn manifest(seed: u8, nodes: &[NodeId]) -> Manifest {
        let g = Geometry::new(CodecKind::ReedSolomonSimd, 2, 2, 1024).unwrap();
        let object = ObjectId::from_hash(blake3::hash(&[seed]));
        let mut m = Manifest::new(object, 2048, g, Metadata::default());
        for s in 0..2usize {
            let shards: Vec<(ShardId, NodeId)> = (0..4usize)
                .map(|i| {
                    (
                        ShardId::of(&[seed, s as u8, i as u8]),
                        nodes[(i + s) % 4].clone(),
                    )
                })
                .collect();
            m.push_segment(1024, 512, &shards);
        }
        m
    }

    #[test]
    fn classes_follow_k_and_n() {
        assert_eq!(stripe_class(4, 2, 4), Class::Healthy);
        assert_eq!(stripe_class(3, 2, 4), Class::Degraded);
        assert_eq!(stripe_class(2, 2, 4), Class::AtRisk);
        assert_eq!(stripe_class(1, 2, 4), Class::Lost);
        // m = 1: one loss already leaves exactly k.
        assert_eq!(stripe_class(2, 2, 3), Class::AtRisk);
    }

    #[test]
    fn counts_from_holder_states_and_absent_copies() {
        let nodes: Vec<NodeId> = (1..=4).map(node).collect();
        let ms: Vec<Manifest> = (0..3).map(|i| manifest(i, &nodes)).collect();
        let all_alive = |_: &NodeId| Some(MemberState::Alive);
        let none = AbsentSlots::new();
        let c = count(&ms, all_alive, &none);
        assert_eq!((c.objects, c.healthy, c.stripes_short), (3, 3, 0));

        // One holder down: every stripe misses one copy.
        let down0 = |n: &NodeId| {
            Some(if *n == nodes[0] {
                MemberState::Down
            } else {
                MemberState::Suspect
            })
        };
        let c = count(&ms, down0, &none);
        assert_eq!((c.healthy, c.degraded, c.stripes_short), (0, 3, 6));
        assert_eq!((c.missing_shards, c.missing_bytes), (6, 6 * 512));

        // Plus an absent copy in segment 1 of object 0, for its version:
        // that stripe has k left.
        let mut absent = AbsentSlots::new();
        absent.insert(ms[0].object, (ms[0].version(), vec![(1, 1)]));
        let c = count(&ms, down0, &absent);
        assert_eq!((c.degraded, c.at_risk), (2, 1));
        // Recorded against another version, it does not count.
        let mut other = ms[0].clone();
        other.revision += 1;
        absent.insert(ms[0].object, (other.version(), vec![(1, 1)]));
        assert_eq!(count(&ms, down0, &absent).at_risk, 0);

        // Two holders gone (one unknown to the view): k left everywhere;
        // three gone: lost, and its copies are not counted as to repair.
        let two = |n: &NodeId| {
            (*n != nodes[1])
                .then_some(MemberState::Alive)
                .filter(|_| *n != nodes[0])
        };
        let c = count(&ms, two, &none);
        assert_eq!(c.at_risk, 3);
        let three = |n: &NodeId| (*n == nodes[3]).then_some(MemberState::Alive);
        let c = count(&ms, three, &none);
        assert_eq!((c.lost, c.missing_shards), (3, 0));
    }

    #[test]
    fn rings_are_bounded() {
        let e = Events::default();
        for i in 0..(MAX_EVENTS + 10) {
            e.push(EventKind::PutRefused, None, format!("{i}"));
        }
        let all = e.since(0);
        assert_eq!(all.len(), MAX_EVENTS);
        assert_eq!(all[0].text, "10");
        assert_eq!(e.since(all[MAX_EVENTS - 2].seq).len(), 1);
        e.push(EventKind::Corruption, None, "é".repeat(MAX_EVENT_TEXT));
        assert!(e.since(0).last().unwrap().text.len() <= MAX_EVENT_TEXT + 3);

        let t = TrafficLog::default();
        for i in 0..(MAX_SAMPLES as u64 + 5) {
            t.push(Sample {
                at_ms: i,
                interval_ms: 1000,
                delta: Totals {
                    repair_bytes: 100,
                    repair_shards: 1,
                    ..Totals::default()
                },
            });
        }
        assert_eq!(t.samples().len(), MAX_SAMPLES);
        assert_eq!(t.samples()[0].at_ms, 5);
        assert_eq!(t.repair_rate(), (1.0, 100.0));
    }
}
