//! What the node's tasks share, split by concern.
//!
//! The event loop ([`crate::node`]) builds one [`Shared`] and hands it to
//! the entry peer ([`crate::datapath`]), the repairer ([`crate::repair`]),
//! the shard server ([`crate::shard_proto`]) and the announcer. Its parts:
//! the node's identity and stores, the membership view, [`PeerNet`] (the
//! network half of [`Peers`]), [`Traffic`] (what announcements report) and
//! [`RepairState`] (the repairer's wake-up, rate limit and counters) and
//! [`Metrics`] (what `/metrics` reports). No
//! module reaches into another's part: operations on members go through
//! [`Shared::peers`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;

use dynostore_protocol::membership::Membership;
use dynostore_protocol::wire::{MemberReport, RepairReport, StatusReport};
use dynostore_protocol::{MemberState, NodeId};

use crate::dashboard::Dashboard;
use crate::manifests::ManifestStore;
use crate::metrics::Metrics;
use crate::peers::{PeerNet, Peers};
use crate::store::ShardStore;

/// State shared by the event loop and the node's tasks.
pub(crate) struct Shared {
    pub(crate) local: NodeId,
    pub(crate) site: String,
    pub(crate) store: ShardStore,
    pub(crate) manifests: ManifestStore,
    /// Name records held here ([`crate::names`]).
    pub(crate) names: crate::names::NameStore,
    /// The key S3 secrets are derived from (from the network key; `None`
    /// without one: no S3 keys).
    pub(crate) s3_secret_base: Option<[u8; 32]>,
    membership: Mutex<Membership>,
    pub(crate) start: Instant,
    pub(crate) net: PeerNet,
    pub(crate) traffic: Traffic,
    pub(crate) repair: RepairState,
    pub(crate) tombstone_ttl_ms: u64,
    pub(crate) metrics: Metrics,
    /// Admission by certificate; `None` in a federation without one.
    pub(crate) admission: Option<crate::trust::Admission>,
    /// Objects of at most this many bytes are written inline in their
    /// manifest (config `inline_max_bytes`; 0 = never).
    pub(crate) inline_max_bytes: u64,
    /// Fault injection (tests only): a name write waits this long between
    /// storing its object and writing its reference (`refs`).
    pub(crate) fault_ref_delay_ms: u64,
    pub(crate) dashboard: Dashboard,
    /// The byte budget of put and get buffers ([`crate::limits`]).
    pub(crate) memory: crate::limits::MemoryBudget,
    /// How the entry peer picks a geometry for a put that does not name one.
    pub(crate) writes: WritePolicy,
    /// Measured paths to members, for site-aware reads.
    pub(crate) paths: Paths,
}

/// Round-trip times (libp2p ping) and transfer rates (shard fetches) to
/// members, and the shard bytes reads took from each site.
#[derive(Debug)]
pub(crate) struct Paths {
    /// Off: reads ignore costs (site-blind, data shards first).
    pub(crate) site_aware: bool,
    table: Mutex<HashMap<NodeId, PathStats>>,
    read_by_site: Mutex<BTreeMap<String, u64>>,
    /// Smoothed milliseconds per segment byte of this node's decodes.
    decode_ms_per_byte: Mutex<Option<f64>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PathStats {
    /// Smoothed round-trip time.
    rtt_ms: Option<f64>,
    /// Smoothed milliseconds per byte of a shard fetch beyond one RTT.
    ms_per_byte: Option<f64>,
    /// When `ms_per_byte` last had a sample.
    rate_at: Option<Instant>,
}

/// A transfer rate older than this is no longer used for the member
/// ([`Paths::cost_ms`]). A read asks the cheapest holders, so a holder
/// measured slow once (a fetch that also dialled it, or one during a load
/// spike) was never asked again and kept its bad figure for good: on a
/// six-node loopback cluster two holders stayed at 36 ms per 1 MiB shard
/// against 4 to 13 ms for the others, and the entry peer decoded from its
/// own parity shard instead. Forgetting re-measures each holder at most
/// once per this period; a far holder costs one slow shard per period,
/// fetched in parallel with the others and covered by the hedge.
const RATE_TTL: Duration = Duration::from_secs(5);

fn fresh(at: Option<Instant>, now: Instant) -> bool {
    at.is_some_and(|at| now.saturating_duration_since(at) < RATE_TTL)
}

/// Weight of a new sample in the smoothed figures.
const EWMA: f64 = 0.3;

fn smooth(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| o + EWMA * (new - o))
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            site_aware: true,
            table: Mutex::new(HashMap::new()),
            read_by_site: Mutex::new(BTreeMap::new()),
            decode_ms_per_byte: Mutex::new(None),
        }
    }
}

impl Paths {
    pub(crate) fn record_rtt(&self, node: &NodeId, rtt: Duration) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let e = t.entry(node.clone()).or_default();
        e.rtt_ms = Some(smooth(e.rtt_ms, rtt.as_secs_f64() * 1e3));
    }

    /// A verified shard of `bytes` came from `node` (at `site`) in `elapsed`.
    pub(crate) fn record_fetch(&self, node: &NodeId, site: &str, bytes: usize, elapsed: Duration) {
        self.record_fetch_at(node, site, bytes, elapsed, Instant::now());
    }

    fn record_fetch_at(
        &self,
        node: &NodeId,
        site: &str,
        bytes: usize,
        elapsed: Duration,
        now: Instant,
    ) {
        {
            let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            let e = t.entry(node.clone()).or_default();
            if bytes >= 4096 {
                let beyond = (elapsed.as_secs_f64() * 1e3 - e.rtt_ms.unwrap_or(0.0)).max(0.0);
                let old = e.ms_per_byte.filter(|_| fresh(e.rate_at, now));
                e.ms_per_byte = Some(smooth(old, beyond / bytes as f64));
                e.rate_at = Some(now);
            }
        }
        let mut r = self
            .read_by_site
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *r.entry(site.to_string()).or_default() += bytes as u64;
    }

    /// A decode of `segment_bytes` took `elapsed` here.
    pub(crate) fn record_decode(&self, segment_bytes: usize, elapsed: Duration) {
        if segment_bytes < 4096 {
            return;
        }
        let mut d = self
            .decode_ms_per_byte
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *d = Some(smooth(
            *d,
            elapsed.as_secs_f64() * 1e3 / segment_bytes as f64,
        ));
    }

    /// What decoding a segment of `k` shards of `shard_size` bytes is
    /// expected to take here: measured like the fetches it is weighed
    /// against (a loaded machine slows both), and until the first decode
    /// [`dynostore_protocol::read::parity_decode_ms`]'s estimate.
    pub(crate) fn decode_ms(&self, k: u16, shard_size: u32) -> u32 {
        let measured = *self
            .decode_ms_per_byte
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match measured {
            Some(per_byte) => {
                let ms = per_byte * f64::from(k) * f64::from(shard_size);
                (ms.ceil().min(f64::from(u32::MAX)) as u32)
                    .max(dynostore_protocol::read::PARITY_DECODE_MS)
            }
            None => dynostore_protocol::read::parity_decode_ms(k, shard_size),
        }
    }

    pub(crate) fn rtt_ms(&self, node: &NodeId) -> Option<u32> {
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.get(node).and_then(|e| e.rtt_ms).map(|r| r.round() as u32)
    }

    /// The estimated time to fetch `bytes` from `node`: its RTT plus the
    /// transfer at its measured rate; `None` when reads are site-blind or
    /// no path to anyone is measured yet.
    ///
    /// A member with no measured path (no connection yet, so no ping) is
    /// assumed typical: the median RTT and rate of the measured ones.
    /// Without that it sorted after every measured candidate, so a read
    /// never asked it, never connected and never measured it: on a
    /// six-node loopback cluster an entry peer decoded every segment from
    /// its own parity shard while two holders of data shards sat idle.
    pub(crate) fn cost_ms(&self, node: &NodeId, bytes: u32) -> Option<u32> {
        self.cost_ms_at(node, bytes, Instant::now())
    }

    fn cost_ms_at(&self, node: &NodeId, bytes: u32, now: Instant) -> Option<u32> {
        if !self.site_aware {
            return None;
        }
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let known = t.get(node).copied().unwrap_or_default();
        let median = |f: &dyn Fn(&PathStats) -> Option<f64>| -> Option<f64> {
            let mut v: Vec<f64> = t.values().filter_map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let rate = |e: &PathStats| e.ms_per_byte.filter(|_| fresh(e.rate_at, now));
        let rtt = known.rtt_ms.or_else(|| median(&|e| e.rtt_ms))?;
        let per_byte = rate(&known).or_else(|| median(&rate)).unwrap_or(0.0);
        let transfer = per_byte * f64::from(bytes);
        Some((rtt + transfer).round().min(f64::from(u32::MAX)) as u32)
    }

    pub(crate) fn read_by_site(&self) -> BTreeMap<String, u64> {
        self.read_by_site
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The entry peer's defaults for puts (config `default_k`, `default_m`,
/// `default_durability` and the durability failure model).
#[derive(Debug, Clone)]
pub(crate) struct WritePolicy {
    pub(crate) default_k: u16,
    pub(crate) default_m: u16,
    pub(crate) default_durability: Option<f64>,
    pub(crate) model: dynostore_protocol::durability::FailureModel,
    pub(crate) max_stripe_shards: u16,
}

impl Default for WritePolicy {
    fn default() -> Self {
        WritePolicy {
            default_k: crate::config::DEFAULT_K,
            default_m: crate::config::DEFAULT_M,
            default_durability: None,
            model: Default::default(),
            max_stripe_shards: dynostore_protocol::durability::DEFAULT_MAX_SHARDS,
        }
    }
}

/// What this node's announcements report about its traffic and addresses.
#[derive(Default)]
pub(crate) struct Traffic {
    pub(crate) listen_addrs: Mutex<Vec<Multiaddr>>,
    /// Shard streams being served.
    pub(crate) in_flight: AtomicU32,
    /// Bytes served over shard streams since start.
    pub(crate) bytes_moved: AtomicU64,
}

/// The repairer's state that other tasks touch.
pub(crate) struct RepairState {
    /// Wakes the repair loop before its next tick (a member went down).
    pub(crate) wake: tokio::sync::Notify,
    /// The fixed budget: an upper bound on repair traffic, which the
    /// scheduler ([`Shared::repair_take`]) cuts while clients are busy.
    pub(crate) rate: RateLimit,
    /// Client operations started, as last seen by the scheduler.
    clients_seen: AtomicU64,
    pub(crate) scrub_lock: tokio::sync::Mutex<()>,
    /// `now_ms` of the last finished scrub plus one (0: never).
    pub(crate) last_scrub_ms: AtomicU64,
    stats: Mutex<RepairReport>,
}

impl RepairState {
    pub(crate) fn new(rate_bytes_per_sec: u64) -> Self {
        RepairState {
            wake: tokio::sync::Notify::new(),
            rate: RateLimit::new(rate_bytes_per_sec),
            clients_seen: AtomicU64::new(0),
            scrub_lock: tokio::sync::Mutex::new(()),
            last_scrub_ms: AtomicU64::new(0),
            stats: Mutex::new(RepairReport::default()),
        }
    }

    pub(crate) fn stats(&self, f: impl FnOnce(&mut RepairReport)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Share of the repair budget repair keeps while clients are busy (its
/// reservation, in mClock's terms): repair never stops, and clients get
/// the rest.
pub(crate) const REPAIR_RESERVED_SHARE: f64 = 0.1;

/// A token bucket over bytes: `take` waits until the budget allows.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimit {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        RateLimit {
            rate: bytes_per_sec.max(1) as f64,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for `bytes` at `share` (0 < share <= 1) of the rate: the
    /// bucket's slot for these bytes is `1 / share` times as long.
    pub(crate) async fn take_share(&self, bytes: u64, share: f64) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + slot(bytes, self.rate, share);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// The default byte budget of a node's put and get buffers (config
/// `memory_budget`).
pub const DEFAULT_MEMORY_BUDGET: u64 = 512 << 20;

/// How long `bytes` occupy a bucket of `rate` bytes per second at `share`
/// of it (clamped to 1 %..100 %: never above the budget, never stopped).
fn slot(bytes: u64, rate: f64, share: f64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / (rate * share.clamp(0.01, 1.0)))
}

/// Whether repair must yield: a client operation is in flight here or
/// started since the last look (`started != seen`), or a member announced
/// client operations over its last interval.
pub(crate) fn clients_busy(
    started: u64,
    seen: u64,
    in_flight: u64,
    announced: impl IntoIterator<Item = u32>,
) -> bool {
    in_flight > 0 || started != seen || announced.into_iter().any(|n| n > 0)
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        local: NodeId,
        site: String,
        store: ShardStore,
        manifests: ManifestStore,
        names: crate::names::NameStore,
        membership: Membership,
        net: PeerNet,
        repair_rate_bytes_per_sec: u64,
        tombstone_ttl_ms: u64,
    ) -> Self {
        Shared {
            local,
            site,
            store,
            manifests,
            names,
            s3_secret_base: None,
            membership: Mutex::new(membership),
            start: Instant::now(),
            net,
            traffic: Traffic::default(),
            repair: RepairState::new(repair_rate_bytes_per_sec),
            tombstone_ttl_ms,
            metrics: Metrics::new(),
            admission: None,
            inline_max_bytes: crate::config::DEFAULT_INLINE_MAX,
            fault_ref_delay_ms: 0,
            dashboard: Dashboard::default(),
            memory: crate::limits::MemoryBudget::new(DEFAULT_MEMORY_BUDGET),
            writes: WritePolicy::default(),
            paths: Paths::default(),
        }
    }

    /// Whether `peer` may make node-only requests: any peer without
    /// admission by certificate, else only admitted ones.
    pub(crate) fn is_admitted(&self, peer: &NodeId) -> bool {
        self.admission.as_ref().is_none_or(|a| a.is_admitted(peer))
    }

    /// Shard and manifest operations on any member.
    pub(crate) fn peers(&self) -> Peers<'_> {
        Peers {
            local: &self.local,
            store: &self.store,
            manifests: &self.manifests,
            net: &self.net,
            tombstone_ttl_ms: self.tombstone_ttl_ms,
            metrics: &self.metrics,
            names: &self.names,
        }
    }

    /// The repair scheduler: waits until repair may move `bytes`. Client
    /// work comes first: while any member serves clients (measured here,
    /// and from every alive member's last announcement), repair runs at
    /// its reserved share of the budget; otherwise at the whole budget,
    /// which stays the upper bound.
    pub(crate) async fn repair_take(&self, bytes: u64) {
        let (started, in_flight) = self.metrics.client_activity();
        let seen = self.repair.clients_seen.swap(started, Ordering::Relaxed);
        let busy = {
            let members = self.membership();
            let announced: Vec<u32> = members
                .entries()
                .filter(|(id, e)| **id != self.local && e.state == MemberState::Alive)
                .map(|(_, e)| e.announcement.load.client_ops)
                .collect();
            clients_busy(started, seen, in_flight, announced)
        };
        let share = if busy { REPAIR_RESERVED_SHARE } else { 1.0 };
        self.repair_stats(|s| {
            if busy {
                s.yielded += 1;
            }
        });
        self.repair.rate.take_share(bytes, share).await;
    }

    pub(crate) fn repair_stats(&self, f: impl FnOnce(&mut RepairReport)) {
        self.repair.stats(f);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.net.is_closed()
    }

    /// Wall-clock expiry for a tombstone made now.
    pub(crate) fn tombstone_until(&self) -> u64 {
        crate::manifests::wall_ms().saturating_add(self.tombstone_ttl_ms)
    }

    fn repair_report(&self) -> RepairReport {
        let mut r = RepairReport::default();
        self.repair.stats(|s| r = s.clone());
        r.pending_deletes = self.manifests.pending().count();
        let last = self.repair.last_scrub_ms.load(Ordering::Relaxed);
        r.last_scrub_ms_ago = (last > 0).then(|| self.now_ms().saturating_sub(last - 1));
        r
    }

    /// Milliseconds since this node started (the membership's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn membership(&self) -> MutexGuard<'_, Membership> {
        // A poisoned lock means a panic elsewhere already; the view itself
        // is still consistent (every update is a single insert or field set).
        self.membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) async fn status(&self) -> StatusReport {
        let containers = self.store.reports().await;
        let now = self.now_ms();
        let members = self
            .membership()
            .entries()
            .map(|(id, e)| {
                let a = &e.announcement;
                MemberReport {
                    id: id.clone(),
                    site: a.site.clone(),
                    state: e.state,
                    capacity_bytes: a.capacity_bytes(),
                    free_bytes: a.free_bytes(),
                    addrs: a.addrs.clone(),
                    load: a.load,
                    software: a.software.clone(),
                    last_seen_ms: if *id == self.local {
                        0
                    } else {
                        now.saturating_sub(e.last_seen_ms)
                    },
                    seq: a.seq,
                    volatile: a.is_volatile(),
                    rtt_ms: self.paths.rtt_ms(id),
                }
            })
            .collect();
        StatusReport {
            node: self.local.clone(),
            containers,
            shards_stored: self.store.shard_count(),
            members,
            repair: self.repair_report(),
            read_bytes_by_site: self.paths.read_by_site(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmeasured_member_costs_the_median_of_the_measured_ones() {
        let node = |i: u8| NodeId::from_bytes(vec![0, 36, 8, 1, 18, 32, i]).unwrap();
        let paths = Paths::default();
        assert_eq!(paths.cost_ms(&node(9), 1000), None, "nothing measured");
        for (i, rtt) in [(1, 2), (2, 40), (3, 4)] {
            paths.record_rtt(&node(i), Duration::from_millis(rtt));
        }
        assert_eq!(paths.cost_ms(&node(2), 0), Some(40), "its own RTT");
        assert_eq!(paths.cost_ms(&node(9), 0), Some(4), "the median RTT");
        // A measured rate is used for the member that has it, and the
        // median rate for the others.
        paths.record_fetch(&node(1), "a", 10_000, Duration::from_millis(12));
        assert_eq!(paths.cost_ms(&node(1), 10_000), Some(12));
        assert_eq!(paths.cost_ms(&node(9), 10_000), Some(14));
        // A rate not refreshed for RATE_TTL is forgotten: the member costs
        // the median of the fresh ones again, and a new sample starts over.
        let now = Instant::now();
        paths.record_fetch_at(&node(2), "b", 10_000, Duration::from_millis(400), now);
        paths.record_fetch_at(&node(3), "c", 10_000, Duration::from_millis(24), now);
        assert_eq!(paths.cost_ms_at(&node(2), 10_000, now), Some(400));
        let later = now + RATE_TTL + Duration::from_secs(1);
        paths.record_fetch_at(&node(3), "c", 10_000, Duration::from_millis(24), later);
        assert_eq!(paths.cost_ms_at(&node(2), 10_000, later), Some(40 + 20));
        paths.record_fetch_at(&node(2), "b", 10_000, Duration::from_millis(50), later);
        assert_eq!(paths.cost_ms_at(&node(2), 10_000, later), Some(50));
        let blind = Paths {
            site_aware: false,
            ..Paths::default()
        };
        blind.record_rtt(&node(1), Duration::from_millis(2));
        assert_eq!(blind.cost_ms(&node(1), 0), None);
    }

    #[test]
    fn the_decode_cost_is_measured_once_a_decode_ran() {
        let paths = Paths::default();
        let est = dynostore_protocol::read::parity_decode_ms(4, 1 << 20);
        assert_eq!(paths.decode_ms(4, 1 << 20), est, "the estimate at first");
        // 4 MiB decoded in 40 ms (a loaded machine): 10 ms per MiB.
        paths.record_decode(4 << 20, Duration::from_millis(40));
        assert_eq!(paths.decode_ms(4, 1 << 20), 40);
        assert_eq!(paths.decode_ms(4, 1024), 2, "never below the floor");
    }

    #[test]
    fn repair_yields_to_any_client_work() {
        assert!(!clients_busy(5, 5, 0, [0, 0]));
        assert!(clients_busy(5, 5, 1, [0, 0]), "one in flight here");
        assert!(clients_busy(6, 5, 0, []), "one started since the last look");
        assert!(
            clients_busy(5, 5, 0, [0, 3]),
            "a member announced client work"
        );
    }

    #[test]
    fn the_reserved_share_stretches_repair_and_the_budget_bounds_it() {
        let mib = 1u64 << 20;
        assert_eq!(slot(mib, mib as f64, 1.0), Duration::from_secs(1));
        assert_eq!(
            slot(mib, mib as f64, REPAIR_RESERVED_SHARE),
            Duration::from_secs(10)
        );
        // Never faster than the budget, never stopped.
        assert_eq!(slot(mib, mib as f64, 5.0), Duration::from_secs(1));
        assert_eq!(slot(mib, mib as f64, 0.0), Duration::from_secs(100));
    }
}
