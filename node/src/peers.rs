//! One layer for shard and manifest operations on members, this node or a
//! remote one.
//!
//! The entry peer ([`crate::datapath`]) and the repairer
//! ([`crate::repair`]) are siblings over this layer: they decide which
//! member to ask for what; [`Peers`] asks it, through the local store when
//! the member is this node and through the shard protocol or the control
//! protocol otherwise, and answers with one typed [`PeerError`]. The "this
//! node or a remote one" branch is written here once per operation.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use dynostore_protocol::manifest::{Generation, Manifest, ShardSlot};
use dynostore_protocol::names::NameRecord;
use dynostore_protocol::placement::View;
use dynostore_protocol::planner::Presence;
use dynostore_protocol::wire::{
    ControlRequest, ControlResponse, ErrorKind, ManifestState, ObjectSummary, RemoteError,
    MAX_SHARDS_PER_REQUEST, MAX_SLOTS_PER_REQUEST,
};
use dynostore_protocol::{NodeId, ObjectId, ShardId};

use crate::manifests::{wall_ms, ManifestStore, ManifestStoreError};
use crate::metrics::{kind_label, Metrics};
use crate::names::{NameError, NameStore};
use crate::net::{peer_id, Command};
use crate::shard_proto::{self, ShardClientError};
use crate::store::{ShardStore, StoreError};

/// Why an operation on a member failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("{0} is not a peer ID")]
    NotAPeer(NodeId),
    #[error(transparent)]
    Shard(Box<ShardClientError>),
    #[error("control request to {node} failed: {reason}")]
    Unreachable { node: String, reason: String },
    #[error("{node} refused: {error}")]
    Refused { node: String, error: RemoteError },
    #[error("{node} sent an unexpected answer: {what}")]
    Unexpected { node: String, what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifests(#[from] ManifestStoreError),
    #[error(transparent)]
    Names(#[from] Box<NameError>),
}

impl From<ShardClientError> for PeerError {
    fn from(e: ShardClientError) -> Self {
        PeerError::Shard(Box::new(e))
    }
}

impl PeerError {
    /// The kind of the failure, as a remote peer or client is told.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PeerError::NotAPeer(_) => ErrorKind::BadRequest,
            PeerError::Shard(e) => e.remote_kind().unwrap_or(ErrorKind::Unavailable),
            PeerError::Unreachable { .. } | PeerError::Unexpected { .. } => ErrorKind::Unavailable,
            PeerError::Refused { error, .. } => error.kind,
            PeerError::Store(e) => e.kind(),
            PeerError::Manifests(e) => e.kind(),
            PeerError::Names(e) => e.kind(),
        }
    }

    /// A bounded label for the metrics: what kind of failure this was.
    pub fn reason(&self) -> &'static str {
        match self {
            PeerError::NotAPeer(_) => "not-a-peer",
            PeerError::Shard(e) => match e.remote_kind() {
                Some(kind) => kind_label(kind),
                None if matches!(*e.as_ref(), ShardClientError::Timeout { .. }) => "timeout",
                None => "stream",
            },
            PeerError::Unreachable { .. } => "unreachable",
            PeerError::Refused { error, .. } => kind_label(error.kind),
            PeerError::Unexpected { .. } => "unexpected",
            PeerError::Store(_) | PeerError::Manifests(_) | PeerError::Names(_) => "local",
        }
    }
}

/// The network half of the layer: shard streams and control requests
/// (which go through the event loop, owner of the swarm).
pub(crate) struct PeerNet {
    streams: libp2p_stream::Control,
    cmd_tx: mpsc::Sender<Command>,
    pub(crate) timeout: Duration,
}

impl PeerNet {
    pub(crate) fn new(
        streams: libp2p_stream::Control,
        cmd_tx: mpsc::Sender<Command>,
        timeout: Duration,
    ) -> Self {
        PeerNet {
            streams,
            cmd_tx,
            timeout,
        }
    }

    /// Whether the event loop stopped.
    pub(crate) fn is_closed(&self) -> bool {
        self.cmd_tx.is_closed()
    }

    fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// One control request to `node`, answered within the request timeout
    /// of the control behaviour. A `ControlResponse::Error` is a
    /// [`PeerError::Refused`].
    async fn control(
        &self,
        node: &NodeId,
        request: ControlRequest,
    ) -> Result<ControlResponse, PeerError> {
        let peer = peer(node)?;
        let (reply, rx) = oneshot::channel();
        let closed = || PeerError::Unreachable {
            node: node.short(),
            reason: "the node is shutting down".into(),
        };
        self.cmd_tx
            .send(Command::Request {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        match rx.await.map_err(|_| closed())? {
            Ok(ControlResponse::Error(error)) => Err(PeerError::Refused {
                node: node.short(),
                error,
            }),
            Ok(other) => Ok(other),
            Err(reason) => Err(PeerError::Unreachable {
                node: node.short(),
                reason,
            }),
        }
    }
}

fn peer(node: &NodeId) -> Result<PeerId, PeerError> {
    peer_id(node).ok_or_else(|| PeerError::NotAPeer(node.clone()))
}

fn unexpected(node: &NodeId, answer: &ControlResponse) -> PeerError {
    let mut what = format!("{answer:?}");
    what.truncate(200);
    PeerError::Unexpected {
        node: node.short(),
        what,
    }
}

/// Shard and manifest operations on any member. Cheap to make
/// ([`crate::shared::Shared::peers`]): it borrows the node's parts.
#[derive(Clone, Copy)]
pub(crate) struct Peers<'a> {
    pub(crate) local: &'a NodeId,
    pub(crate) store: &'a ShardStore,
    pub(crate) manifests: &'a ManifestStore,
    pub(crate) net: &'a PeerNet,
    /// Expiry given to tombstones this node writes, from now.
    pub(crate) tombstone_ttl_ms: u64,
    /// Failed requests to other members are counted here.
    pub(crate) metrics: &'a Metrics,
    pub(crate) names: &'a NameStore,
}

impl Peers<'_> {
    fn is_local(self, node: &NodeId) -> bool {
        node == self.local
    }

    /// Counts a request to another member under `op`, and its failure.
    fn count<T>(self, op: &'static str, r: Result<T, PeerError>) -> Result<T, PeerError> {
        self.metrics.peer_request(op);
        if let Err(e) = &r {
            self.metrics.peer_failure(op, e.reason());
        }
        r
    }

    /// One control request to `node` (remote), failures counted under `op`.
    async fn control(
        self,
        op: &'static str,
        node: &NodeId,
        request: ControlRequest,
    ) -> Result<ControlResponse, PeerError> {
        let r = self.net.control(node, request).await;
        self.count(op, r)
    }

    /// Stores one copy on `node` with its slot's reference. `durable`: the
    /// member must not keep it in memory (it refuses instead).
    pub(crate) async fn put_shard(
        self,
        node: &NodeId,
        slot: ShardSlot,
        bytes: Bytes,
        durable: bool,
    ) -> Result<(), PeerError> {
        if self.is_local(node) {
            if durable {
                self.store.put_durable(slot, bytes).await?;
            } else {
                self.store.put_for(slot, bytes).await?;
            }
            return Ok(());
        }
        let mut streams = self.net.streams();
        let r = shard_proto::put_shard_to(
            &mut streams,
            peer(node)?,
            slot,
            &bytes,
            durable,
            self.net.timeout,
        )
        .await;
        self.count("put_shard", r.map_err(PeerError::from))
    }

    /// Stores one copy on `node`, durably unless `view` counts the member
    /// as volatile (memory-backed).
    pub(crate) async fn place_shard(
        self,
        view: &View,
        node: &NodeId,
        slot: ShardSlot,
        bytes: Bytes,
    ) -> Result<(), PeerError> {
        self.put_shard(node, slot, bytes, !view.is_volatile(node))
            .await
    }

    /// One copy from `node`, verified against its ID.
    pub(crate) async fn get_shard(self, node: &NodeId, id: ShardId) -> Result<Bytes, PeerError> {
        if self.is_local(node) {
            return Ok(self.store.get(&id).await?);
        }
        let mut streams = self.net.streams();
        let r = shard_proto::get_shard(&mut streams, peer(node)?, id, self.net.timeout).await;
        self.count("get_shard", r.map_err(PeerError::from))
    }

    /// Releases these references on `node`; returns how many copies went
    /// (a copy goes when its last reference does).
    pub(crate) async fn release(
        self,
        node: &NodeId,
        slots: &[ShardSlot],
    ) -> Result<u32, PeerError> {
        let mut deleted = 0;
        for chunk in slots.chunks(MAX_SLOTS_PER_REQUEST) {
            if self.is_local(node) {
                for s in chunk {
                    if self.store.release(s).await? {
                        deleted += 1;
                    }
                }
                continue;
            }
            let req = ControlRequest::Delete {
                slots: chunk.to_vec(),
            };
            match self.control("release", node, req).await? {
                ControlResponse::Deleted { count } => deleted += count,
                other => return Err(unexpected(node, &other)),
            }
        }
        Ok(deleted)
    }

    /// Releases these references on `node`, or, when it cannot be reached,
    /// records them as pending releases for its return. Returns how many
    /// copies went now.
    pub(crate) async fn release_or_keep(self, node: &NodeId, slots: &[ShardSlot]) -> u32 {
        match self.release(node, slots).await {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(node = %node.short(), releases = slots.len(), error = %e, "holder unreachable: releases kept for its return");
                if let Err(e) = self.manifests.pending().add(node, slots).await {
                    tracing::warn!(error = %e, "cannot record pending releases");
                }
                0
            }
        }
    }

    /// Releases every copy `m` places, each on its holder (pending for the
    /// holders that cannot be reached). Returns how many copies went now.
    pub(crate) async fn release_manifest(self, m: &Manifest) -> u32 {
        let mut by_holder: BTreeMap<NodeId, Vec<ShardSlot>> = BTreeMap::new();
        for (node, slot) in m.slots() {
            by_holder.entry(node.clone()).or_default().push(slot);
        }
        let mut deleted = 0;
        for (node, slots) in by_holder {
            deleted += self.release_or_keep(&node, &slots).await;
        }
        deleted
    }

    /// Which of `slots` `node` stores with their references (`Has`: no
    /// re-hash). A batch that goes unanswered is `NoAnswer`.
    pub(crate) async fn presence(self, node: &NodeId, slots: &[ShardSlot]) -> Vec<Presence> {
        let mut out = Vec::with_capacity(slots.len());
        let flag = |p: bool| {
            if p {
                Presence::Present
            } else {
                Presence::Absent
            }
        };
        for chunk in slots.chunks(MAX_SLOTS_PER_REQUEST) {
            if self.is_local(node) {
                for s in chunk {
                    out.push(match self.store.has_slot(s).await {
                        Ok(p) => flag(p),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check a local copy");
                            Presence::NoAnswer
                        }
                    });
                }
                continue;
            }
            let req = ControlRequest::Has {
                slots: chunk.to_vec(),
            };
            match self.control("has", node, req).await {
                Ok(ControlResponse::Has { present }) if present.len() == chunk.len() => {
                    out.extend(present.into_iter().map(flag));
                }
                Ok(other) => {
                    tracing::debug!(error = %unexpected(node, &other), "presence unknown");
                    out.extend(std::iter::repeat_n(Presence::NoAnswer, chunk.len()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "presence unknown");
                    out.extend(std::iter::repeat_n(Presence::NoAnswer, chunk.len()));
                }
            }
        }
        out
    }

    /// Which of `shards` `node` holds and re-hashes correctly (`Verify`).
    pub(crate) async fn verify(
        self,
        node: &NodeId,
        shards: &[ShardId],
    ) -> Result<Vec<bool>, PeerError> {
        let mut out = Vec::with_capacity(shards.len());
        for chunk in shards.chunks(MAX_SHARDS_PER_REQUEST) {
            if self.is_local(node) {
                for s in chunk {
                    out.push(self.store.get(s).await.is_ok());
                }
                continue;
            }
            let req = ControlRequest::Verify {
                shards: chunk.to_vec(),
            };
            match self.control("verify", node, req).await? {
                ControlResponse::Has { present } if present.len() == chunk.len() => {
                    out.extend(present)
                }
                other => return Err(unexpected(node, &other)),
            }
        }
        Ok(out)
    }

    /// What `node` knows of each of `objects`' manifests, in order.
    pub(crate) async fn manifest_states(
        self,
        node: &NodeId,
        objects: &[ObjectId],
    ) -> Result<Vec<ManifestState>, PeerError> {
        let mut got = Vec::with_capacity(objects.len());
        if self.is_local(node) {
            let now = wall_ms();
            for o in objects {
                got.push(self.manifests.state(o, now)?);
            }
            return Ok(got);
        }
        for chunk in objects.chunks(MAX_SHARDS_PER_REQUEST) {
            let req = ControlRequest::ManifestStates {
                objects: chunk.to_vec(),
            };
            match self.control("manifest_states", node, req).await? {
                ControlResponse::ManifestStates { states } if states.len() == chunk.len() => {
                    got.extend(states)
                }
                other => return Err(unexpected(node, &other)),
            }
        }
        Ok(got)
    }

    /// The replica of `object`'s manifest `node` holds, if any.
    pub(crate) async fn manifest(
        self,
        node: &NodeId,
        object: ObjectId,
    ) -> Result<Option<Manifest>, PeerError> {
        if self.is_local(node) {
            return Ok(self.manifests.get(&object)?);
        }
        let mut streams = self.net.streams();
        let r =
            shard_proto::get_manifest(&mut streams, peer(node)?, object, self.net.timeout).await;
        self.count("get_manifest", r.map_err(PeerError::from))
    }

    /// Stores a manifest replica on `node` (refused there when it is not
    /// newer than the one held, or its generation is removed).
    pub(crate) async fn put_manifest(
        self,
        node: &NodeId,
        object: ObjectId,
        bytes: &[u8],
    ) -> Result<(), PeerError> {
        if self.is_local(node) {
            return Ok(self.manifests.put(object, bytes).await?);
        }
        let mut streams = self.net.streams();
        let r =
            shard_proto::put_manifest(&mut streams, peer(node)?, object, bytes, self.net.timeout)
                .await;
        self.count("put_manifest", r.map_err(PeerError::from))
    }

    /// Removes `generation` of `object` on `node`: a tombstone there, and
    /// its replica if it is of that generation or an older one. Returns
    /// whether a replica went.
    pub(crate) async fn remove_manifest(
        self,
        node: &NodeId,
        object: ObjectId,
        generation: Generation,
    ) -> Result<bool, PeerError> {
        if self.is_local(node) {
            let until = wall_ms().saturating_add(self.tombstone_ttl_ms);
            return Ok(self.manifests.remove(&object, generation, until).await?);
        }
        let req = ControlRequest::DeleteManifest { object, generation };
        match self.control("remove_manifest", node, req).await? {
            ControlResponse::Deleted { count } => Ok(count > 0),
            other => Err(unexpected(node, &other)),
        }
    }

    /// The objects whose manifest replica `node` holds: at most `limit`
    /// after `after`, in object order.
    pub(crate) async fn list_manifests(
        self,
        node: &NodeId,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<ObjectSummary>, PeerError> {
        if self.is_local(node) {
            return Ok(self.manifests.summaries_page(after, limit)?);
        }
        match self
            .control(
                "list_manifests",
                node,
                ControlRequest::ListManifests { after, limit },
            )
            .await?
        {
            ControlResponse::Manifests { objects } => Ok(objects),
            other => Err(unexpected(node, &other)),
        }
    }

    /// The revocations `node` knows.
    pub(crate) async fn revocations(
        self,
        node: &NodeId,
    ) -> Result<Vec<dynostore_protocol::trust::RevocationBytes>, PeerError> {
        match self
            .control("revocations", node, ControlRequest::Revocations)
            .await?
        {
            ControlResponse::Revocations { items } => Ok(items),
            other => Err(unexpected(node, &other)),
        }
    }
    /// Merges name records on `node`; returns how many changed there.
    pub(crate) async fn put_names(
        self,
        node: &NodeId,
        records: &[NameRecord],
    ) -> Result<u32, PeerError> {
        if self.is_local(node) {
            return self
                .names
                .merge(records)
                .await
                .map_err(|e| Box::new(e).into());
        }
        let req = ControlRequest::PutNames {
            records: records.to_vec(),
        };
        match self.control("put_names", node, req).await? {
            ControlResponse::Deleted { count } => Ok(count),
            other => Err(unexpected(node, &other)),
        }
    }

    /// One page of `ns`'s records on `node` (see [`NameStore::list`]).
    pub(crate) async fn list_names(
        self,
        node: &NodeId,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<NameRecord>, bool), PeerError> {
        if self.is_local(node) {
            return self
                .names
                .list(ns, prefix, after, limit as usize)
                .map_err(|e| Box::new(e).into());
        }
        let req = ControlRequest::ListNames {
            ns: ns.to_string(),
            prefix: prefix.to_string(),
            after: after.map(str::to_string),
            limit,
        };
        match self.control("list_names", node, req).await? {
            ControlResponse::Names { records, truncated } => Ok((records, truncated)),
            other => Err(unexpected(node, &other)),
        }
    }

    /// Count and digest of `ns`'s records on `node`.
    pub(crate) async fn names_digest(
        self,
        node: &NodeId,
        ns: &str,
    ) -> Result<(u64, [u8; 32]), PeerError> {
        if self.is_local(node) {
            return self.names.digest(ns).map_err(|e| Box::new(e).into());
        }
        let req = ControlRequest::NamesDigest { ns: ns.to_string() };
        match self.control("names_digest", node, req).await? {
            ControlResponse::NamesDigest { count, digest } => Ok((count, digest)),
            other => Err(unexpected(node, &other)),
        }
    }
}
