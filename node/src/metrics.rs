//! The node's Prometheus metrics: one [`Metrics`] in [`crate::shared::Shared`],
//! one registry, served as text by the admin API (`GET /metrics`).
//!
//! Three kinds of values:
//! - **Counted where they happen**: data-path operations (by op and
//!   outcome), client bytes, latencies ([`OpTimer`]), failed requests to
//!   other members (by op and reason), scrub runs and corrupt shards,
//!   admin requests.
//! - **Computed at scrape time** ([`Metrics::encode`]) from what the node
//!   already keeps: members by state and site (the membership view),
//!   containers' capacity and free space, shards and bytes stored, and the
//!   repairer's counters (`RepairReport`, the numbers `status` prints), so
//!   that nothing is counted twice.
//! - **libp2p's own**: swarm, Kademlia, gossipsub and identify metrics
//!   from `libp2p-metrics`, under the `libp2p_` prefix of the same registry
//!   (recorded by the event loop).
//!
//! Label values are bounded: operation names, error kinds, failure reasons,
//! container names and sites (few, configured), member states. No peer IDs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use dynostore_protocol::wire::ErrorKind;

use crate::shared::Shared;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A data-path operation of the entry peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Put,
    Get,
    Stat,
    Remove,
    List,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Stat => "stat",
            Op::Remove => "rm",
            Op::List => "list",
        }
    }
}

/// The label of an error kind (as the wire spells it).
pub(crate) fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not-found",
        ErrorKind::NotEnoughNodes => "not-enough-nodes",
        ErrorKind::Integrity => "integrity",
        ErrorKind::Full => "full",
        ErrorKind::BadRequest => "bad-request",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
        ErrorKind::Forbidden => "forbidden",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// What a request to another member was sent for: `cause` is `s3` or
/// `client` when the task of a user's request sent it, `internal` for
/// everything else (repair, scrub, collection, anti-entropy, and tasks a
/// user's request spawned off).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    cause: &'static str,
}

tokio::task_local! {
    static CAUSE: &'static str;
}

/// Runs `fut` with the requests to other members it sends counted under
/// `cause` (see [`RequestLabels`]).
pub(crate) async fn on_behalf_of<F: std::future::Future>(cause: &'static str, fut: F) -> F::Output {
    CAUSE.scope(cause, fut).await
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    op: &'static str,
    /// `ok`, `cancelled`, or the error kind.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    state: &'static str,
    site: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    container: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    op: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    status: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric family of the node, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    /// libp2p's swarm, Kademlia, gossipsub and identify metrics.
    pub(crate) p2p: libp2p::metrics::Metrics,
    /// One scrape at a time: scrape-time values are cleared and set.
    scrape: tokio::sync::Mutex<()>,

    operations: Family<OutcomeLabels, Counter>,
    duration: HistogramFamily<OpLabels>,
    received_bytes: Counter,
    sent_bytes: Counter,
    in_flight: Family<KindLabels, Gauge>,
    peer_failures: Family<FailureLabels, Counter>,
    peer_requests: Family<RequestLabels, Counter>,
    scrub_runs: Counter,
    scrub_corrupt: Counter,
    admin_requests: Family<RouteLabels, Counter>,
    admission_refused: Counter,
    reclaim: Family<KindLabels, Counter>,
    /// Puts and gets finished (any outcome), for the dashboard's traffic
    /// samples (summing a family would need its labels).
    puts_done: AtomicU64,
    gets_done: AtomicU64,
    /// Puts and gets started, and in flight, for the repair scheduler
    /// (stat, ls and rm move no object bytes and do not count).
    client_ops_started: AtomicU64,
    data_ops_in_flight: AtomicU64,

    // Scrape-time values.
    members: Family<MemberLabels, Gauge>,
    container_capacity: Family<ContainerLabels, Gauge>,
    container_free: Family<ContainerLabels, Gauge>,
    shards_stored: Gauge,
    stored_bytes: Gauge,
    shard_stream_bytes: Counter,
    index_flush_requests: Counter,
    index_flushes: Counter,
    repair_queue: Gauge,
    pending_releases: Gauge,
    repaired_shards: Counter,
    repaired_bytes: Counter,
    repair_read_bytes: Counter,
    rebalance_moves: Counter,
    lost_stripes: Counter,
    repair_rounds: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let p2p = libp2p::metrics::Metrics::new(&mut registry);
        let m = Metrics {
            p2p,
            scrape: tokio::sync::Mutex::new(()),
            operations: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            in_flight: Family::default(),
            peer_failures: Family::default(),
            peer_requests: Family::default(),
            scrub_runs: Counter::default(),
            scrub_corrupt: Counter::default(),
            admin_requests: Family::default(),
            admission_refused: Counter::default(),
            reclaim: Family::default(),
            puts_done: AtomicU64::new(0),
            gets_done: AtomicU64::new(0),
            client_ops_started: AtomicU64::new(0),
            data_ops_in_flight: AtomicU64::new(0),
            members: Family::default(),
            container_capacity: Family::default(),
            container_free: Family::default(),
            shards_stored: Gauge::default(),
            stored_bytes: Gauge::default(),
            shard_stream_bytes: Counter::default(),
            index_flush_requests: Counter::default(),
            index_flushes: Counter::default(),
            repair_queue: Gauge::default(),
            pending_releases: Gauge::default(),
            repaired_shards: Counter::default(),
            repaired_bytes: Counter::default(),
            repair_read_bytes: Counter::default(),
            rebalance_moves: Counter::default(),
            lost_stripes: Counter::default(),
            repair_rounds: Counter::default(),
            registry: Registry::default(),
        };
        // Shown as 0 before the first operation rather than missing.
        m.in_flight
            .get_or_create(&KindLabels { kind: "client" })
            .set(0);
        m.register(registry)
    }

    fn register(mut self, mut r: Registry) -> Self {
        let d = r.sub_registry_with_prefix("dynostore");
        d.register(
            "operations",
            "Data-path operations served as entry peer, by op and outcome (ok, cancelled or the error kind)",
            self.operations.clone(),
        );
        d.register_with_unit(
            "operation_duration",
            "Latency of data-path operations as entry peer",
            Unit::Seconds,
            self.duration.clone(),
        );
        d.register_with_unit(
            "client_received",
            "Object bytes received from clients (puts)",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        d.register_with_unit(
            "client_sent",
            "Object bytes sent to clients (gets)",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        d.register(
            "requests_in_flight",
            "Requests being served: client operations and inbound shard streams",
            self.in_flight.clone(),
        );
        d.register(
            "admission_refused",
            "Announcements dropped because their certificate did not admit the node",
            self.admission_refused.clone(),
        );
        d.register(
            "name_reclaim",
            "Steps of reclaiming objects no name refers to: condemned, removed, withdrawn (a reference came back), refused (a writer met a condemnation and gave up)",
            self.reclaim.clone(),
        );
        d.register(
            "peer_request_failures",
            "Failed shard-stream and control requests to other members, by op and reason",
            self.peer_failures.clone(),
        );
        d.register(
            "peer_requests",
            "Shard-stream and control requests sent to other members, by op and by cause (s3 or client: a user's request; internal: background work)",
            self.peer_requests.clone(),
        );
        d.register(
            "index_flush_requests",
            "Index flushes waited for by acknowledged writes (shards, manifests, releases)",
            self.index_flush_requests.clone(),
        );
        d.register(
            "index_flushes",
            "Index flushes run: concurrent requests share one (group commit)",
            self.index_flushes.clone(),
        );
        d.register(
            "scrub_runs",
            "Scrubs finished (every local shard re-hashed)",
            self.scrub_runs.clone(),
        );
        d.register(
            "scrub_corrupt_shards",
            "Corrupt shard copies found (and deleted) by scrubs",
            self.scrub_corrupt.clone(),
        );
        d.register(
            "admin_requests",
            "Admin API requests by route and HTTP status",
            self.admin_requests.clone(),
        );
        d.register(
            "members",
            "Members in this node's view, by state and site",
            self.members.clone(),
        );
        d.register_with_unit(
            "container_capacity",
            "Capacity of each local data container",
            Unit::Bytes,
            self.container_capacity.clone(),
        );
        d.register_with_unit(
            "container_free",
            "Free space of each local data container",
            Unit::Bytes,
            self.container_free.clone(),
        );
        d.register(
            "shards_stored",
            "Shard copies this node stores",
            self.shards_stored.clone(),
        );
        d.register_with_unit(
            "stored",
            "Bytes used in this node's containers",
            Unit::Bytes,
            self.stored_bytes.clone(),
        );
        d.register_with_unit(
            "shard_stream_served",
            "Bytes served over inbound shard streams",
            Unit::Bytes,
            self.shard_stream_bytes.clone(),
        );
        d.register(
            "repair_queue_stripes",
            "Stripes short of k + m found in the last repair round and not yet repaired",
            self.repair_queue.clone(),
        );
        d.register(
            "pending_releases",
            "Shard releases waiting for their holder or for a confirmed manifest",
            self.pending_releases.clone(),
        );
        d.register(
            "repair_rebuilt_shards",
            "Shards rebuilt by repair",
            self.repaired_shards.clone(),
        );
        d.register_with_unit(
            "repair_rebuilt",
            "Bytes of shards rebuilt by repair",
            Unit::Bytes,
            self.repaired_bytes.clone(),
        );
        d.register_with_unit(
            "repair_read",
            "Shard bytes read to rebuild stripes",
            Unit::Bytes,
            self.repair_read_bytes.clone(),
        );
        d.register(
            "rebalance_moved_shards",
            "Shards moved to emptier members by rebalancing",
            self.rebalance_moves.clone(),
        );
        d.register(
            "repair_lost_stripes",
            "Stripes found with fewer than k shards (unrecoverable)",
            self.lost_stripes.clone(),
        );
        d.register(
            "repair_rounds",
            "Repair rounds completed",
            self.repair_rounds.clone(),
        );
        self.registry = r;
        self
    }

    /// Starts timing one data-path operation; counts it in flight until
    /// [`OpTimer::finish`] or drop (a dropped timer counts `cancelled`).
    pub(crate) fn op(&self, op: Op) -> OpTimer<'_> {
        if matches!(op, Op::Put | Op::Get) {
            self.client_ops_started.fetch_add(1, Ordering::Relaxed);
            self.data_ops_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        self.in_flight
            .get_or_create(&KindLabels { kind: "client" })
            .inc();
        OpTimer {
            metrics: self,
            op,
            start: Instant::now(),
            done: false,
        }
    }

    /// Puts and gets started since the node started, and in flight now.
    pub(crate) fn client_activity(&self) -> (u64, u64) {
        (
            self.client_ops_started.load(Ordering::Relaxed),
            self.data_ops_in_flight.load(Ordering::Relaxed),
        )
    }

    fn op_done(&self, op: Op, outcome: &'static str, elapsed: Duration) {
        match op {
            Op::Put => self.puts_done.fetch_add(1, Ordering::Relaxed),
            Op::Get => self.gets_done.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        self.operations
            .get_or_create(&OutcomeLabels {
                op: op.as_str(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&OpLabels { op: op.as_str() })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn received(&self, bytes: u64) {
        self.received_bytes.inc_by(bytes);
    }

    pub(crate) fn sent(&self, bytes: u64) {
        self.sent_bytes.inc_by(bytes);
    }

    /// Client bytes and finished puts and gets since start, for the
    /// dashboard's traffic samples (repair fields left at 0).
    pub(crate) fn dashboard_totals(&self) -> crate::dashboard::Totals {
        crate::dashboard::Totals {
            put_bytes: self.received_bytes.get(),
            get_bytes: self.sent_bytes.get(),
            put_ops: self.puts_done.load(Ordering::Relaxed),
            get_ops: self.gets_done.load(Ordering::Relaxed),
            ..Default::default()
        }
    }

    /// A request to another member failed.
    pub(crate) fn peer_failure(&self, op: &'static str, reason: &'static str) {
        self.peer_failures
            .get_or_create(&FailureLabels { op, reason })
            .inc();
    }

    /// A request to another member was answered or failed.
    pub(crate) fn peer_request(&self, op: &'static str) {
        let cause = CAUSE.try_with(|c| *c).unwrap_or("internal");
        self.peer_requests
            .get_or_create(&RequestLabels { op, cause })
            .inc();
    }

    /// One step of reclaiming an unnamed object (see `refs`).
    pub(crate) fn reclaim(&self, kind: &'static str) {
        self.reclaim.get_or_create(&KindLabels { kind }).inc();
    }

    pub(crate) fn admission_refused(&self) {
        self.admission_refused.inc();
    }

    pub(crate) fn scrubbed(&self, corrupt: u64) {
        self.scrub_runs.inc();
        self.scrub_corrupt.inc_by(corrupt);
    }

    pub(crate) fn admin_request(&self, route: &'static str, status: u16) {
        self.admin_requests
            .get_or_create(&RouteLabels { route, status })
            .inc();
    }

    /// Sets the scrape-time values from `shared` and encodes every metric
    /// in the OpenMetrics text format.
    pub(crate) async fn encode(&self, shared: &Shared) -> Result<String, std::fmt::Error> {
        let _one = self.scrape.lock().await;
        self.refresh(shared).await;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    async fn refresh(&self, shared: &Shared) {
        let mut members: BTreeMap<(&'static str, String), i64> = BTreeMap::new();
        for (_, e) in shared.membership().entries() {
            *members
                .entry((e.state.as_str(), e.announcement.site.clone()))
                .or_default() += 1;
        }
        self.members.clear();
        for ((state, site), n) in members {
            self.members
                .get_or_create(&MemberLabels { state, site })
                .set(n);
        }
        self.container_capacity.clear();
        self.container_free.clear();
        for c in shared.store.reports().await {
            let labels = ContainerLabels {
                container: c.name,
                kind: c.kind,
            };
            self.container_capacity
                .get_or_create(&labels)
                .set(gauge(c.capacity_bytes));
            self.container_free
                .get_or_create(&labels)
                .set(gauge(c.free_bytes));
        }
        let totals = shared.store.totals().await;
        self.shards_stored.set(gauge(totals.n_shards));
        self.stored_bytes.set(gauge(totals.used_bytes));
        self.in_flight
            .get_or_create(&KindLabels {
                kind: "shard_stream",
            })
            .set(i64::from(shared.traffic.in_flight.load(Ordering::Relaxed)));
        raise(
            &self.shard_stream_bytes,
            shared.traffic.bytes_moved.load(Ordering::Relaxed),
        );
        let commits = shared.store.commit_stats();
        raise(&self.index_flush_requests, commits.requests);
        raise(&self.index_flushes, commits.flushes);
        let mut r = Default::default();
        shared.repair_stats(|s| r = s.clone());
        let r: dynostore_protocol::wire::RepairReport = r;
        self.repair_queue.set(gauge(r.queue_len));
        self.pending_releases
            .set(gauge(shared.manifests.pending().count()));
        raise(&self.repaired_shards, r.shards_repaired);
        raise(&self.repaired_bytes, r.bytes_repaired);
        raise(&self.repair_read_bytes, r.bytes_read);
        raise(&self.rebalance_moves, r.shards_moved);
        raise(&self.lost_stripes, r.stripes_lost);
        raise(&self.repair_rounds, r.rounds);
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Brings a counter up to a total kept elsewhere (it never goes down).
fn raise(c: &Counter, total: u64) {
    c.inc_by(total.saturating_sub(c.get()));
}

/// One data-path operation being timed (see [`Metrics::op`]).
#[derive(Debug)]
pub(crate) struct OpTimer<'a> {
    metrics: &'a Metrics,
    op: Op,
    start: Instant,
    done: bool,
}

impl OpTimer<'_> {
    /// Counts the operation with its outcome (`None`: success).
    pub(crate) fn finish(mut self, error: Option<ErrorKind>) {
        self.done = true;
        let outcome = error.map_or("ok", kind_label);
        self.metrics.op_done(self.op, outcome, self.start.elapsed());
    }
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        if matches!(self.op, Op::Put | Op::Get) {
            self.metrics
                .data_ops_in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics
            .in_flight
            .get_or_create(&KindLabels { kind: "client" })
            .dec();
        if !self.done {
            self.metrics
                .op_done(self.op, "cancelled", self.start.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `m`'s text encoding holds each of `want`.
    fn assert_encodes(m: &Metrics, want: &[&str]) {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for w in want {
            assert!(out.contains(w), "{w} missing from:\n{out}");
        }
    }

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::new();
        m.op(Op::Put).finish(None);
        m.op(Op::Get).finish(Some(ErrorKind::NotFound));
        drop(m.op(Op::Stat));
        m.received(10);
        m.peer_failure("get_shard", "unreachable");
        assert_encodes(
            &m,
            &[
                "dynostore_operations_total{op=\"put\",outcome=\"ok\"} 1",
                "dynostore_operations_total{op=\"get\",outcome=\"not-found\"} 1",
                "dynostore_operations_total{op=\"stat\",outcome=\"cancelled\"} 1",
                "dynostore_client_received_bytes_total 10",
                "dynostore_operation_duration_seconds_bucket{",
                "dynostore_peer_request_failures_total{op=\"get_shard\",reason=\"unreachable\"} 1",
                "dynostore_requests_in_flight{kind=\"client\"} 0",
                "# EOF",
            ],
        );
    }

    #[tokio::test]
    async fn a_peer_request_counts_under_the_cause_of_the_task_that_sent_it() {
        let m = std::sync::Arc::new(Metrics::new());
        on_behalf_of("s3", async {
            m.peer_request("list_names");
            m.peer_request("list_names");
            // A task spawned off a user's request is background work.
            let m2 = m.clone();
            tokio::spawn(async move { m2.peer_request("put_names") })
                .await
                .unwrap();
        })
        .await;
        on_behalf_of("client", async { m.peer_request("get_shard") }).await;
        m.peer_request("list_names");
        assert_encodes(
            &m,
            &[
                "dynostore_peer_requests_total{op=\"list_names\",cause=\"s3\"} 2",
                "dynostore_peer_requests_total{op=\"put_names\",cause=\"internal\"} 1",
                "dynostore_peer_requests_total{op=\"get_shard\",cause=\"client\"} 1",
                "dynostore_peer_requests_total{op=\"list_names\",cause=\"internal\"} 1",
            ],
        );
    }
}
