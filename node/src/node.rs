//! The running node: one task owns the libp2p swarm (the event loop); the
//! rest talk to it through a bounded command channel.
//!
//! Data flow:
//! - Announcer task: every `announce_interval` it reads the store's
//!   capacity, builds the next [`Announcement`] (seq strictly increasing
//!   across restarts: it starts at the wall clock in ms), records it in the
//!   local membership and asks the event loop to publish it.
//! - Event loop: gossipsub messages become membership observations (only
//!   when the signed author is the announced node); identify feeds Kademlia;
//!   control requests are answered from tasks that send their response back
//!   as a command; members we know of but are not connected to are dialled.
//! - Shard streams are accepted outside the event loop
//!   ([`crate::shard_proto::serve_stream`]), at most
//!   [`MAX_INBOUND_STREAMS`] at once.
//!
//! - The admin API ([`crate::http`]) is served on `admin_listen`; its bound
//!   address goes to `admin.addr`.
//! - The event loop records libp2p's swarm, Kademlia, gossipsub and
//!   identify metrics ([`crate::metrics`]).
//!
//! Shutdown: SIGINT/SIGTERM (or the future given to [`run`]) stops the
//! loop, the store is flushed, `node.addr` and `admin.addr` are removed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::metrics::Recorder;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identify, ping, Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{mpsc, oneshot, Semaphore};

use dynostore_protocol::membership::{Membership, Timeouts};
use dynostore_protocol::wire::{
    Announcement, ControlRequest, ControlResponse, Load, RemoteError, StatusReport, WireMessage,
    ANNOUNCEMENT_VERSION, ANNOUNCE_TOPIC,
};
use dynostore_protocol::{MemberState, NodeId};

use crate::config::{Config, ADDR_FILE, ADMIN_ADDR_FILE, IDENTITY_FILE, S3_ADDR_FILE};
use crate::keys;
use crate::manifests::ManifestStore;
use crate::net::{self, Command, ControlBehaviour};
use crate::peers::PeerNet;
use crate::shared::Shared;
use crate::store::ShardStore;
use crate::trust::Admission;
use dynostore_protocol::trust::RevocationBytes;

/// Inbound shard streams served at once; bounds memory to this many shards.
pub const MAX_INBOUND_STREAMS: usize = 32;
/// Client operations (put, get, ...) served at once.
pub const MAX_CLIENT_STREAMS: usize = 32;
/// Client streams one peer may hold or wait with; more are closed at once.
pub const MAX_CLIENT_STREAMS_PER_PEER: usize = MAX_CLIENT_STREAMS / 2;
/// Shard streams one peer may hold or wait with; more are closed at once.
pub const MAX_INBOUND_STREAMS_PER_PEER: usize = MAX_INBOUND_STREAMS / 2;
/// Control requests one peer may have in progress here, over all its
/// connections (each connection's streams are bounded to the same number
/// by request-response, so one connection never reaches it); more are
/// answered `Unavailable` at once.
pub const MAX_CONTROL_PER_PEER: usize = 256;
/// How often each connection is pinged (its round-trip time feeds
/// site-aware reads).
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
/// Depth of the event loop's command queue.
const COMMAND_QUEUE: usize = 256;
/// How often a node with no connected peer redials its bootstrap peers.
const LONELY_REDIAL: Duration = Duration::from_secs(1);
/// Most peers dialled per announcement round.
const MAX_DIALS_PER_ROUND: usize = 16;
/// Members seen down are dialled again every this many announcement
/// rounds: a healed partition or a restarted node reconnects within a few
/// rounds instead of waiting for the next Kademlia re-bootstrap.
const DOWN_REDIAL_ROUNDS: u64 = 4;
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/dynostore/kad/1");
const IDENTIFY_PROTOCOL: &str = "/dynostore/id/1";

/// Why the node stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    S3(#[from] crate::s3::S3Error),
    #[error(transparent)]
    Admission(#[from] crate::trust::AdmissionError),
    #[error(
        "config site {config:?} differs from the site {cert:?} of this node's certificate: \
         set `site` to the certificate's"
    )]
    SiteMismatch { config: String, cert: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("libp2p set-up failed: {0}")]
    Setup(String),
    #[error("cannot write {path}: {source}")]
    AddrFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(NetworkBehaviour)]
struct NodeBehaviour {
    /// The deny-list (`ControlRequest::Deny`): checked before the others.
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    control: ControlBehaviour,
    stream: libp2p_stream::Behaviour,
    /// Round-trip times to connected members, for site-aware reads.
    ping: ping::Behaviour,
}

/// Runs the node in `dir` until `shutdown` completes or a signal arrives.
pub async fn run(
    dir: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let cfg = Config::load(dir)?;
    let key = keys::load_identity(&dir.join(IDENTITY_FILE))?;
    let psk = match &cfg.network_key {
        Some(p) => Some(keys::load_network_key(&dir.join(p))?),
        None => {
            tracing::warn!("no network_key configured: this is an OPEN network, anyone can join");
            None
        }
    };
    let store = ShardStore::open(dir, &cfg.containers).await?;
    let manifests = ManifestStore::open(&store)?;
    let names = crate::names::NameStore::open(&store)?;
    let local = net::node_id(&key.public().to_peer_id());
    let mut swarm = build_swarm(&key, psk.as_ref(), &cfg)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let membership = Membership::new(
        local.clone(),
        Timeouts {
            suspect_after_ms: cfg.suspect_after_ms,
            down_after_ms: cfg.down_after_ms,
        },
    );
    let net = PeerNet::new(
        swarm.behaviour().stream.new_control(),
        cmd_tx.clone(),
        cfg.request_timeout(),
    );
    let admission = match (&cfg.federation, &cfg.cert) {
        (Some(fed), Some(cert)) => {
            let a = Admission::load(
                &dir.join(fed),
                &dir.join(cert),
                &dir.join("revocations.cbor"),
                &local,
            )?;
            if a.own_site() != cfg.site {
                return Err(NodeError::SiteMismatch {
                    config: cfg.site.clone(),
                    cert: a.own_site().to_string(),
                });
            }
            tracing::info!(
                site = a.own_site(),
                "members are admitted by site certificate"
            );
            Some(a)
        }
        _ => {
            tracing::warn!(
                "no federation and cert configured: members are admitted without certificates"
            );
            None
        }
    };
    let mut shared = Shared::new(
        local,
        cfg.site.clone(),
        store,
        manifests,
        names,
        membership,
        net,
        cfg.repair_rate_bytes_per_sec,
        cfg.tombstone_ttl_ms,
    );
    shared.admission = admission;
    shared.memory = crate::limits::MemoryBudget::new(
        cfg.memory_budget_bytes
            .unwrap_or(crate::shared::DEFAULT_MEMORY_BUDGET),
    );
    shared.paths.site_aware = cfg.site_aware_reads;
    shared.writes = crate::shared::WritePolicy {
        default_k: cfg.default_k,
        default_m: cfg.default_m,
        default_durability: cfg.default_durability,
        model: dynostore_protocol::durability::FailureModel {
            afr: cfg.afr,
            repair_window_hours: cfg.repair_window_hours,
        },
        max_stripe_shards: cfg.max_stripe_shards,
    };
    shared.s3_secret_base = psk.as_ref().map(keys::NetworkKey::s3_secret_base);
    shared.inline_max_bytes = cfg.inline_max_bytes;
    shared.fault_ref_delay_ms = cfg.fault_ref_delay_ms;
    let shared = Arc::new(shared);
    for addr in cfg.listen_addrs() {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NodeError::Listen {
                addr,
                reason: e.to_string(),
            })?;
    }
    let bootstrap: Vec<(PeerId, Multiaddr)> = cfg.bootstrap_peers().into_iter().collect();
    for (peer, addr) in &bootstrap {
        swarm.behaviour_mut().kad.add_address(peer, addr.clone());
        if let Err(e) = swarm.dial(
            DialOpts::peer_id(*peer)
                .addresses(vec![addr.clone()])
                .build(),
        ) {
            tracing::warn!(%peer, error = %e, "cannot dial bootstrap peer");
        }
    }
    let topic = IdentTopic::new(ANNOUNCE_TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| NodeError::Setup(e.to_string()))?;

    spawn_servers(swarm.behaviour().stream.new_control(), shared.clone())?;
    let admin_listener = crate::http::bind(cfg.admin_addr()?).await?;
    let admin_path = dir.join(ADMIN_ADDR_FILE);
    let admin_addr = admin_listener
        .local_addr()
        .and_then(|a| write_atomically(&admin_path, &format!("{a}\n")).map(|()| a))
        .map_err(|source| NodeError::AddrFile {
            path: admin_path.clone(),
            source,
        })?;
    println!("admin API on http://{admin_addr}");
    let admin = tokio::spawn(crate::http::serve(
        admin_listener,
        shared.clone(),
        crate::http::AdminConfig {
            deadline: cfg.request_timeout(),
            k: cfg.default_k,
            m: cfg.default_m,
        },
    ));
    let repairer = tokio::spawn(crate::repair::run(
        shared.clone(),
        crate::repair::RepairConfig {
            interval: Duration::from_millis(cfg.repair_interval_ms),
            rate_bytes_per_sec: cfg.repair_rate_bytes_per_sec,
            enabled: cfg.repair_enabled,
            scrub_interval: Duration::from_millis(cfg.scrub_interval_ms),
            tombstone_ttl: Duration::from_millis(cfg.tombstone_ttl_ms),
        },
    ));
    let s3 = match cfg.s3_addr()? {
        Some(addr) => {
            let listener = crate::s3::bind(addr).await?;
            let bound = listener
                .local_addr()
                .map_err(|source| NodeError::AddrFile {
                    path: dir.join(S3_ADDR_FILE),
                    source,
                })?;
            write_atomically(&dir.join(S3_ADDR_FILE), &format!("{bound}\n")).map_err(|source| {
                NodeError::AddrFile {
                    path: dir.join(S3_ADDR_FILE),
                    source,
                }
            })?;
            println!("S3 on http://{bound}");
            let shared = shared.clone();
            let s3cfg = crate::s3::S3Config {
                spool_dir: dir.join("s3-spool"),
                k: cfg.default_k,
                m: cfg.default_m,
                upload_expiry: Duration::from_millis(cfg.s3_upload_expiry_ms),
                max_pieces: cfg.s3_max_pieces.min(dynostore_protocol::names::MAX_PIECES),
            };
            Some(tokio::spawn(async move {
                if let Err(e) = crate::s3::serve(listener, shared, s3cfg).await {
                    tracing::error!(error = %e, "the S3 endpoint stopped");
                }
            }))
        }
        None => None,
    };
    let sampler = tokio::spawn(crate::dashboard::sample_loop(shared.clone()));
    let collector = tokio::spawn(crate::gc::gc_loop(
        shared.clone(),
        Duration::from_millis(cfg.gc_interval_ms),
        cfg.gc_grace_ms,
    ));
    let name_sync = tokio::spawn(crate::names::sync_loop(shared.clone()));
    let reclaimer = tokio::spawn(crate::refs::reclaim_loop(
        shared.clone(),
        Duration::from_millis(cfg.reclaim_grace_ms),
        Duration::from_millis(cfg.reclaim_wait_ms),
    ));
    let announcer = tokio::spawn(announce_loop(
        shared.clone(),
        cfg.announce_interval(),
        cmd_tx.clone(),
    ));

    let mut ev = EventLoop {
        swarm,
        shared: shared.clone(),
        cmd_tx,
        cmd_rx,
        pending: HashMap::new(),
        topic,
        dir: dir.to_path_buf(),
        rebootstrap: Duration::from_millis(cfg.rebootstrap_interval_ms),
        bootstrap,
        rounds: 0,
        refused: HashSet::new(),
        pulling_revocations: Arc::new(AtomicBool::new(false)),
        control_slots: crate::limits::PeerSlots::new(MAX_CONTROL_PER_PEER),
    };
    let result = ev.run(shutdown).await;
    announcer.abort();
    sampler.abort();
    collector.abort();
    name_sync.abort();
    reclaimer.abort();
    if let Some(s3) = s3 {
        s3.abort();
        let _ = std::fs::remove_file(dir.join(S3_ADDR_FILE));
    }
    repairer.abort();
    admin.abort();
    let _ = std::fs::remove_file(dir.join(ADDR_FILE));
    let _ = std::fs::remove_file(&admin_path);
    if let Err(e) = shared.store.flush().await {
        tracing::error!(error = %e, "flushing the index at shutdown failed");
    }
    tracing::info!("node stopped");
    result
}

/// Writes `path` through a temporary file and a rename, so that readers
/// never see half of it.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path))
}

fn build_swarm(
    key: &Keypair,
    network_key: Option<&keys::NetworkKey>,
    cfg: &Config,
) -> Result<Swarm<NodeBehaviour>, NodeError> {
    let shaper = match &cfg.wan_emulation {
        Some(path) => {
            let matrix = crate::wan::Matrix::load(path).map_err(net::NetError::from)?;
            let shaper = crate::wan::Shaper::new(matrix, &cfg.site).map_err(net::NetError::from)?;
            tracing::warn!(matrix = %path.display(), site = %cfg.site, "WAN emulation on: dialed connections are delayed and paced");
            Some(std::sync::Arc::new(shaper))
        }
        None => None,
    };
    let transport = net::transport_with(key, network_key, shaper)?;
    let timeout = cfg.request_timeout();
    let interval = cfg.announce_interval();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| NodeError::Setup(e.to_string()))?
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
            kad_cfg.set_periodic_bootstrap_interval(Some(Duration::from_millis(
                cfg.rebootstrap_interval_ms,
            )));
            let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), kad_cfg);
            kad.set_mode(Some(kad::Mode::Server));
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500).min(interval))
                .validation_mode(ValidationMode::Strict)
                .max_transmit_size(Announcement::MAX_BYTES + 4096)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_cfg)?;
            Ok(NodeBehaviour {
                blocked: allow_block_list::Behaviour::default(),
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!("dynostore/{}", env!("CARGO_PKG_VERSION"))),
                ),
                kad,
                gossipsub,
                control: net::control_behaviour(timeout, true),
                stream: libp2p_stream::Behaviour::new(),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(PING_INTERVAL)
                        .with_timeout(timeout),
                ),
            })
        })
        .map_err(|e| NodeError::Setup(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

fn spawn_servers(
    mut control: libp2p_stream::Control,
    shared: Arc<Shared>,
) -> Result<(), NodeError> {
    let mut shards = control
        .accept(net::shard_protocol())
        .map_err(|e| NodeError::Setup(e.to_string()))?;
    let mut clients = control
        .accept(net::client_protocol())
        .map_err(|e| NodeError::Setup(e.to_string()))?;
    let permits = Arc::new(Semaphore::new(MAX_INBOUND_STREAMS));
    let shard_slots = crate::limits::PeerSlots::new(MAX_INBOUND_STREAMS_PER_PEER);
    let s = shared.clone();
    tokio::spawn(async move {
        // Receive and hand off at once: libp2p-stream queues one inbound
        // stream at a time and resets the next while that slot is full.
        while let Some((peer, stream)) = shards.next().await {
            let permits = permits.clone();
            let shared = s.clone();
            if !shared.is_admitted(&net::node_id(&peer)) {
                tracing::debug!(%peer, "closed a shard stream from an unadmitted peer");
                continue;
            }
            let Some(slot) = shard_slots.try_take(peer) else {
                tracing::debug!(%peer, "closed a shard stream past the peer's share");
                continue;
            };
            tokio::spawn(async move {
                let _slot = slot;
                let Ok(permit) = permits.acquire_owned().await else {
                    return;
                };
                shared.traffic.in_flight.fetch_add(1, Ordering::Relaxed);
                let r = crate::shard_proto::serve_stream(
                    stream,
                    peer,
                    shared.store.clone(),
                    shared.manifests.clone(),
                    shared.net.timeout,
                )
                .await;
                shared.traffic.in_flight.fetch_sub(1, Ordering::Relaxed);
                match r {
                    Ok(n) => {
                        shared.traffic.bytes_moved.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "shard stream failed"),
                }
                drop(permit);
            });
        }
    });
    // Client operations are long (a whole object); each holds a permit.
    let client_permits = Arc::new(Semaphore::new(MAX_CLIENT_STREAMS));
    let client_slots = crate::limits::PeerSlots::new(MAX_CLIENT_STREAMS_PER_PEER);
    tokio::spawn(async move {
        while let Some((peer, stream)) = clients.next().await {
            let permits = client_permits.clone();
            let shared = shared.clone();
            let Some(slot) = client_slots.try_take(peer) else {
                tracing::debug!(%peer, "closed a client stream past the peer's share");
                continue;
            };
            tokio::spawn(async move {
                let _slot = slot;
                let Ok(permit) = permits.acquire_owned().await else {
                    return;
                };
                crate::metrics::on_behalf_of(
                    "client",
                    crate::datapath::serve_client(stream, peer, shared),
                )
                .await;
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn announce_loop(shared: Arc<Shared>, interval: Duration, cmd_tx: mpsc::Sender<Command>) {
    let mut seq = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_bytes = 0u64;
    let mut last_client_ops = 0u64;
    loop {
        ticker.tick().await;
        seq += 1;
        let (started, in_flight) = shared.metrics.client_activity();
        let client_ops = started.saturating_sub(last_client_ops) + in_flight;
        last_client_ops = started;
        let moved = shared.traffic.bytes_moved.load(Ordering::Relaxed);
        let bytes_per_sec = (moved - last_bytes) * 1000 / interval.as_millis().max(1) as u64;
        last_bytes = moved;
        let addrs = shared
            .traffic
            .listen_addrs
            .lock()
            .map(|a| a.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let mut ann = Announcement {
            version: ANNOUNCEMENT_VERSION,
            node: shared.local.clone(),
            site: shared.site.clone(),
            addrs,
            containers: shared.store.reports().await,
            load: Load {
                requests_in_flight: shared.traffic.in_flight.load(Ordering::Relaxed),
                bytes_per_sec,
                client_ops: u32::try_from(client_ops).unwrap_or(u32::MAX),
            },
            software: env!("CARGO_PKG_VERSION").to_string(),
            seq,
            cert: shared.admission.as_ref().map(Admission::own_cert_bytes),
            revocations: shared
                .admission
                .as_ref()
                .map_or(0, |a| a.revocations.digest()),
        };
        let bytes = ann.encode();
        // The local view counts this node as every member does: capacity
        // cut to its certificate's ceiling.
        if let Some(a) = &shared.admission {
            if let Err(e) = a.admit(&mut ann, &shared.local) {
                tracing::error!(error = %e, "this node's own certificate no longer admits it");
            }
        }
        let now = shared.now_ms();
        let changes = {
            let mut m = shared.membership();
            m.observe(ann, now);
            m.tick(now)
        };
        for t in changes {
            tracing::info!(node = %t.node, from = ?t.from, to = t.to.as_str(), "member state changed");
            shared.dashboard.events.member(&t);
            if t.to == MemberState::Down {
                shared.repair.wake.notify_one();
            }
        }
        if cmd_tx.send(Command::Publish(bytes)).await.is_err() {
            return;
        }
    }
}

struct EventLoop {
    swarm: Swarm<NodeBehaviour>,
    shared: Arc<Shared>,
    cmd_tx: mpsc::Sender<Command>,
    cmd_rx: mpsc::Receiver<Command>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<ControlResponse, String>>>,
    topic: IdentTopic,
    dir: PathBuf,
    rebootstrap: Duration,
    /// The configured bootstrap peers, redialled while no peer is connected.
    bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Announcement rounds so far (for the redial of down members).
    rounds: u64,
    /// Certificate refusals already logged (bounded: cleared when large).
    refused: HashSet<(NodeId, String)>,
    /// A revocation pull is under way.
    pulling_revocations: Arc<AtomicBool>,
    /// Control requests in progress per peer.
    control_slots: crate::limits::PeerSlots,
}

impl EventLoop {
    async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NodeError> {
        tokio::pin!(shutdown);
        let mut rebootstrap = tokio::time::interval(self.rebootstrap);
        let mut lonely = tokio::time::interval(LONELY_REDIAL.min(self.rebootstrap));
        lonely.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev)?,
                Some(cmd) = self.cmd_rx.recv() => self.on_command(cmd),
                _ = rebootstrap.tick() => {
                    // NoKnownPeers just means we are alone for now.
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                _ = lonely.tick() => self.redial_bootstrap_if_alone(),
            }
        }
    }

    /// A node started before its bootstrap peers (a whole site booting at
    /// once) found nobody; without this it stayed alone until the next
    /// Kademlia re-bootstrap, a minute by default.
    fn redial_bootstrap_if_alone(&mut self) {
        if self.bootstrap.is_empty() || self.swarm.connected_peers().next().is_some() {
            return;
        }
        for (peer, addr) in &self.bootstrap {
            let opts = DialOpts::peer_id(*peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(vec![addr.clone()])
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "bootstrap peer not redialled");
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish(bytes) => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), bytes)
                {
                    tracing::debug!(error = %e, "announcement not published");
                }
                self.dial_known_members();
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("control response dropped: the requester went away");
                }
            }
        }
    }

    /// Keeps connections to members we hear of, so that gossip does not
    /// depend on one hub and shard streams open without a lookup.
    /// Down members are tried too, every [`DOWN_REDIAL_ROUNDS`] rounds
    /// (they may be back or on the far side of a healed partition); denied
    /// peers never are.
    fn dial_known_members(&mut self) {
        self.rounds += 1;
        let redial_down = self.rounds.is_multiple_of(DOWN_REDIAL_ROUNDS);
        let blocked: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .blocked
            .blocked_peers()
            .iter()
            .copied()
            .collect();
        let mut targets: Vec<(bool, PeerId, Vec<Multiaddr>)> = self
            .shared
            .membership()
            .entries()
            .filter(|(id, e)| {
                **id != self.shared.local && (redial_down || e.state != MemberState::Down)
            })
            .filter_map(|(id, e)| {
                let peer = net::peer_id(id)?;
                let addrs = e
                    .announcement
                    .addrs
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect();
                Some((e.state == MemberState::Down, peer, addrs))
            })
            .collect();
        // Live members first: they matter more than ones that may be gone.
        targets.sort_by_key(|t| t.0);
        let mut dials = 0;
        for (_, peer, addrs) in targets {
            if dials == MAX_DIALS_PER_ROUND {
                break;
            }
            if self.swarm.is_connected(&peer) || blocked.contains(&peer) {
                continue;
            }
            dials += 1;
            if let Err(e) = self
                .swarm
                .dial(DialOpts::peer_id(peer).addresses(addrs).build())
            {
                tracing::debug!(%peer, error = %e, "dial failed");
            }
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<NodeBehaviourEvent>) -> Result<(), NodeError> {
        self.shared.metrics.p2p.record(&ev);
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.clone().with(libp2p::multiaddr::Protocol::P2p(
                    *self.swarm.local_peer_id(),
                ));
                println!("listening on {full}");
                let all = {
                    let mut addrs = self
                        .shared
                        .traffic
                        .listen_addrs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    addrs.push(address);
                    addrs.clone()
                };
                self.write_addr_file(&all)?;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let mut addrs = self
                    .shared
                    .traffic
                    .listen_addrs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                addrs.retain(|a| *a != address);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::warn!(from = %send_back_addr, error = %error, "refused an incoming connection (wrong or missing network key?)");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
        Ok(())
    }

    fn write_addr_file(&self, addrs: &[Multiaddr]) -> Result<(), NodeError> {
        let peer = *self.swarm.local_peer_id();
        let text: String = addrs
            .iter()
            .map(|a| {
                format!(
                    "{}\n",
                    a.clone().with(libp2p::multiaddr::Protocol::P2p(peer))
                )
            })
            .collect();
        let path = self.dir.join(ADDR_FILE);
        write_atomically(&path, &text).map_err(|source| NodeError::AddrFile { path, source })
    }

    fn on_behaviour_event(&mut self, ev: NodeBehaviourEvent) {
        let p2p = &self.shared.metrics.p2p;
        match &ev {
            NodeBehaviourEvent::Identify(e) => p2p.record(e),
            NodeBehaviourEvent::Kad(e) => p2p.record(e),
            NodeBehaviourEvent::Gossipsub(e) => p2p.record(e),
            _ => {}
        }
        match ev {
            NodeBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if info.protocols.contains(&KAD_PROTOCOL) =>
            {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            NodeBehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }) => {
                self.on_announcement(message);
            }
            NodeBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                self.shared.paths.record_rtt(&net::node_id(&peer), rtt);
            }
            NodeBehaviourEvent::Control(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.on_control_request(peer, request, channel),
            NodeBehaviourEvent::Control(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            NodeBehaviourEvent::Control(request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(format!("request to {peer} failed: {error}")));
                }
            }
            NodeBehaviourEvent::Control(request_response::Event::InboundFailure {
                peer,
                error,
                ..
            }) => {
                tracing::debug!(%peer, %error, "inbound control request failed");
            }
            _ => {}
        }
    }

    fn on_announcement(&mut self, message: gossipsub::Message) {
        let mut ann = match Announcement::decode(&message.data) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(source = ?message.source, error = %e, "dropped a malformed announcement");
                return;
            }
        };
        // Gossipsub verified the signature of `source`; the announcement
        // must speak for that same node.
        let Some(source) = message.source else { return };
        if ann.node != net::node_id(&source) {
            tracing::warn!(%source, claimed = %ann.node, "dropped an announcement signed by another node");
            return;
        }
        if let Some(a) = &self.shared.admission {
            let node = ann.node.clone();
            if let Err(e) = a.admit(&mut ann, &node) {
                // Once per peer and reason: an unadmitted node announces every interval.
                if self.refused.len() >= 4096 {
                    self.refused.clear();
                }
                if self.refused.insert((node.clone(), e.to_string())) {
                    tracing::warn!(%node, error = %e, "refused a member's certificate");
                }
                self.shared.metrics.admission_refused();
                return;
            }
        }
        for a in &ann.addrs {
            if let Ok(addr) = a.parse::<Multiaddr>() {
                self.swarm.add_peer_address(source, addr);
            }
        }
        self.pull_revocations(&ann);
        let now = self.shared.now_ms();
        if let Some(t) = self.shared.membership().observe(ann, now) {
            tracing::info!(node = %t.node, from = ?t.from, to = t.to.as_str(), "member state changed");
            self.shared.dashboard.events.member(&t);
        }
    }

    /// Replaces the deny-list; the behaviour closes connections to newly
    /// denied peers, and `dial_known_members` reconnects to released ones
    /// on the next announcement.
    fn deny(&mut self, peers: &[NodeId]) -> ControlResponse {
        let mut wanted = HashSet::new();
        for node in peers {
            match net::peer_id(node) {
                Some(p) => {
                    wanted.insert(p);
                }
                None => {
                    return remote_error(
                        dynostore_protocol::wire::ErrorKind::BadRequest,
                        &format!("{node} is not a peer ID"),
                    )
                }
            }
        }
        let blocked = &mut self.swarm.behaviour_mut().blocked;
        let old: Vec<PeerId> = blocked.blocked_peers().iter().copied().collect();
        for p in old.iter().filter(|p| !wanted.contains(p)) {
            blocked.unblock_peer(*p);
        }
        for p in &wanted {
            blocked.block_peer(*p);
        }
        tracing::info!(denied = wanted.len(), "deny-list replaced");
        ControlResponse::Denied {
            count: wanted.len() as u32,
        }
    }

    /// An admitted member announced a different set of revocations: ask it
    /// for its list (one pull at a time; the next announcement retries).
    fn pull_revocations(&mut self, ann: &Announcement) {
        let Some(a) = &self.shared.admission else {
            return;
        };
        if ann.revocations == 0
            || ann.revocations == a.revocations.digest()
            || self.pulling_revocations.load(Ordering::Acquire)
        {
            return;
        }
        self.pulling_revocations.store(true, Ordering::Release);
        let flag = self.pulling_revocations.clone();
        let shared = self.shared.clone();
        let node = ann.node.clone();
        tokio::spawn(async move {
            let _done = ClearOnDrop(flag);
            let items = match shared.peers().revocations(&node).await {
                Ok(items) => items,
                Err(e) => {
                    tracing::debug!(node = %node.short(), error = %e, "revocations not pulled");
                    return;
                }
            };
            let Some(a) = &shared.admission else { return };
            let mut added = 0;
            for RevocationBytes(b) in items {
                match a.revoke(&b) {
                    Ok(n) => added += n,
                    Err(e) => {
                        tracing::warn!(node = %node.short(), error = %e, "a pulled revocation was refused")
                    }
                }
            }
            if added > 0 {
                tracing::info!(added, from = %node.short(), "learnt revoked tokens");
            }
        });
    }

    fn on_control_request(
        &mut self,
        peer: PeerId,
        request: ControlRequest,
        channel: ResponseChannel<ControlResponse>,
    ) {
        let node = net::node_id(&peer);
        let forbidden = |e: &dyn std::fmt::Display| {
            remote_error(dynostore_protocol::wire::ErrorKind::Forbidden, e)
        };
        // Operator requests come in an envelope with an admin token; in an
        // open network (no federation) the envelope's token is not checked.
        let (request, operator) = match request {
            ControlRequest::Operator { token, request } => match &self.shared.admission {
                Some(a) => match a.operator(&token) {
                    Ok(p) => {
                        tracing::info!(%peer, operator = %p, "operator request");
                        (*request, true)
                    }
                    Err(e) => {
                        let response = forbidden(&e);
                        self.on_command(Command::Respond { channel, response });
                        return;
                    }
                },
                None => (*request, true),
            },
            r => (r, self.shared.admission.is_none()),
        };
        let refusal: Option<String> = match &request {
            ControlRequest::Status => None,
            ControlRequest::Deny { .. } | ControlRequest::Scrub if !operator => {
                Some(crate::trust::AccessError::NotOperator.to_string())
            }
            ControlRequest::Deny { .. } | ControlRequest::Scrub => None,
            _ if !self.shared.is_admitted(&node) => {
                Some("this request is for admitted members of the federation only".into())
            }
            _ => None,
        };
        if let Some(reason) = refusal {
            tracing::debug!(%peer, %reason, "refused a control request");
            self.shared.metrics.admission_refused();
            let response = forbidden(&reason);
            self.on_command(Command::Respond { channel, response });
            return;
        }
        if let ControlRequest::Deny { peers } = request {
            let response = self.deny(&peers);
            self.on_command(Command::Respond { channel, response });
            return;
        }
        // The rest is answered by a task: bounded per peer, so that one
        // peer over many connections cannot hold an unbounded number.
        let Some(slot) = self.control_slots.try_take(peer) else {
            let response = remote_error(
                dynostore_protocol::wire::ErrorKind::Unavailable,
                &format!(
                    "more than {MAX_CONTROL_PER_PEER} control requests from this peer at once"
                ),
            );
            self.on_command(Command::Respond { channel, response });
            return;
        };
        if let ControlRequest::Status = request {
            let shared = self.shared.clone();
            let tx = self.cmd_tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let mut report = shared.status().await;
                if !operator {
                    redact(&mut report);
                }
                let response = ControlResponse::Status(report);
                let _ = tx.send(Command::Respond { channel, response }).await;
            });
            return;
        }
        let shared = self.shared.clone();
        let tx = self.cmd_tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let response = answer_control(&shared, request).await;
            tracing::trace!(%peer, "control request answered");
            let _ = tx.send(Command::Respond { channel, response }).await;
        });
    }
}

/// A status report for anyone but an operator, in a federation that
/// admits by certificate: who is a member and how full, without addresses,
/// software versions or this node's container names (which can carry
/// paths and endpoints).
fn redact(report: &mut StatusReport) {
    for c in &mut report.containers {
        c.name = String::new();
    }
    for m in &mut report.members {
        m.addrs.clear();
        m.software.clear();
    }
}

/// Clears a flag when dropped (a pull that ends in any way).
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn answer_control(shared: &Arc<Shared>, request: ControlRequest) -> ControlResponse {
    let err = |e: crate::store::StoreError| {
        let mut message = e.to_string();
        message.truncate(dynostore_protocol::wire::MAX_TEXT_LEN);
        ControlResponse::Error(RemoteError {
            kind: e.kind(),
            message,
        })
    };
    match request {
        ControlRequest::Status => ControlResponse::Status(shared.status().await),
        // Answered by the event loop, which owns the swarm.
        ControlRequest::Deny { .. } => remote_error(
            dynostore_protocol::wire::ErrorKind::BadRequest,
            &"deny is handled by the event loop",
        ),
        ControlRequest::Has { slots } => {
            let mut present = Vec::with_capacity(slots.len());
            for s in &slots {
                match shared.store.has_slot(s).await {
                    Ok(p) => present.push(p),
                    Err(e) => return err(e),
                }
            }
            ControlResponse::Has { present }
        }
        ControlRequest::Delete { slots } => {
            let mut count = 0u32;
            for s in &slots {
                match shared.store.release(s).await {
                    Ok(true) => count += 1,
                    Ok(false) => {}
                    Err(e) => return err(e),
                }
            }
            ControlResponse::Deleted { count }
        }
        ControlRequest::Verify { shards } => {
            let mut present = Vec::with_capacity(shards.len());
            for s in &shards {
                present.push(shared.store.get(s).await.is_ok());
            }
            ControlResponse::Has { present }
        }
        ControlRequest::DeleteManifest { object, generation } => match shared
            .manifests
            .remove(&object, generation, shared.tombstone_until())
            .await
        {
            Ok(existed) => ControlResponse::Deleted {
                count: u32::from(existed),
            },
            Err(e) => remote_error(e.kind(), &e),
        },
        ControlRequest::ManifestStates { objects } => {
            let now = crate::manifests::wall_ms();
            let mut states = Vec::with_capacity(objects.len());
            for o in &objects {
                match shared.manifests.state(o, now) {
                    Ok(s) => states.push(s),
                    Err(e) => return remote_error(e.kind(), &e),
                }
            }
            ControlResponse::ManifestStates { states }
        }
        ControlRequest::Scrub => {
            let (checked, corrupt) = crate::repair::scrub(shared).await;
            ControlResponse::Scrubbed { checked, corrupt }
        }
        ControlRequest::Revocations => ControlResponse::Revocations {
            items: shared
                .admission
                .as_ref()
                .map(|a| a.revocations.all())
                .unwrap_or_default(),
        },
        // Unwrapped by `on_control_request`.
        ControlRequest::Operator { .. } => remote_error(
            dynostore_protocol::wire::ErrorKind::BadRequest,
            &"nested operator request",
        ),
        ControlRequest::ListManifests { after, limit } => {
            match shared.manifests.summaries_page(after, limit) {
                Ok(objects) => ControlResponse::Manifests { objects },
                Err(e) => remote_error(e.kind(), &e),
            }
        }
        ControlRequest::PutNames { records } => match shared.names.merge(&records).await {
            Ok(count) => ControlResponse::Deleted { count },
            Err(e) => remote_error(e.kind(), &e),
        },
        ControlRequest::ListNames {
            ns,
            prefix,
            after,
            limit,
        } => match shared
            .names
            .list(&ns, &prefix, after.as_deref(), limit as usize)
        {
            Ok((records, truncated)) => ControlResponse::Names { records, truncated },
            Err(e) => remote_error(e.kind(), &e),
        },
        ControlRequest::NamesDigest { ns } => match shared.names.digest(&ns) {
            Ok((count, digest)) => ControlResponse::NamesDigest { count, digest },
            Err(e) => remote_error(e.kind(), &e),
        },
    }
}

fn remote_error(
    kind: dynostore_protocol::wire::ErrorKind,
    e: &dyn std::fmt::Display,
) -> ControlResponse {
    let mut message = e.to_string();
    message.truncate(dynostore_protocol::wire::MAX_TEXT_LEN);
    ControlResponse::Error(RemoteError { kind, message })
}
