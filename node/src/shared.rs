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

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;

use dynostore_protocol::membership::Membership;
use dynostore_protocol::wire::{MemberReport, RepairReport, StatusReport};
use dynostore_protocol::NodeId;

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
    pub(crate) dashboard: Dashboard,
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
    pub(crate) rate: RateLimit,
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
            scrub_lock: tokio::sync::Mutex::new(()),
            last_scrub_ms: AtomicU64::new(0),
            stats: Mutex::new(RepairReport::default()),
        }
    }

    pub(crate) fn stats(&self, f: impl FnOnce(&mut RepairReport)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A token bucket over bytes: `take` waits until the budget allows.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        RateLimit {
            rate: bytes_per_sec.max(1) as f64,
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    pub(crate) async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        local: NodeId,
        site: String,
        store: ShardStore,
        manifests: ManifestStore,
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
            membership: Mutex::new(membership),
            start: Instant::now(),
            net,
            traffic: Traffic::default(),
            repair: RepairState::new(repair_rate_bytes_per_sec),
            tombstone_ttl_ms,
            metrics: Metrics::new(),
            admission: None,
            inline_max_bytes: crate::config::DEFAULT_INLINE_MAX,
            dashboard: Dashboard::default(),
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
        }
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
                }
            })
            .collect();
        StatusReport {
            node: self.local.clone(),
            containers,
            shards_stored: self.store.shard_count(),
            members,
            repair: self.repair_report(),
        }
    }
}
