//! The data path of an entry peer: put, get, stat, remove and list of
//! erasure-coded objects on behalf of a client.
//!
//! Put: the client names the object's BLAKE3 up front (it hashed the file),
//! so placement keys are known before the first byte arrives. The entry
//! peer checks that enough nodes are alive, answers `Ready`, then reads the
//! object one segment at a time, encodes it, and writes the `k + m` shards
//! of each segment in parallel to the nodes `View::place` names (distinct
//! nodes, distinct sites first). A target that fails is replaced by the next
//! one in the ranking. At most [`SEGMENTS_IN_FLIGHT`] segments are in the
//! air, which bounds memory whatever the object size. At most `m` shards of
//! a stripe go to volatile (memory-backed) members, and each shard put on a
//! durable member is marked durable so that member keeps it out of memory;
//! a put the live members cannot place that way is refused before `Ready`
//! ([`DataError::Durability`]). When every shard is
//! durable and the streamed bytes hash to the announced ID, the manifest is
//! stored on its replicas (a uniform-weight ranking of the object ID); only
//! then is the put acknowledged. On any failure the shards written so far
//! are deleted and no manifest is written, so no manifest ever points at
//! missing shards.
//!
//! Get: the manifest is found on its replicas; each segment's shards are
//! fetched from their holders, data shards first (no decoding needed) and
//! live, lightly loaded holders first, with one hedged extra request; the
//! first `k` that verify are decoded. Segments are pipelined in order and
//! streamed as chunks; the whole object is re-hashed and checked against
//! its ID before the final `End`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use blake3::Hasher;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};

use dynostore_protocol::erasure::{self, Encoder, Geometry};
use dynostore_protocol::manifest::{Generation, Manifest, Metadata, ShardRef, ShardSlot};
use dynostore_protocol::placement::{
    eligible_for_writes, place_stripe, stripe_fits, PlacementError, PlacementKey, View, Weighting,
};
use dynostore_protocol::wire::{
    Chunk, ClientRequest, ClientResponse, ControlRequest, ControlResponse, ErrorKind, Health,
    ObjectStat, ObjectSummary, PutReceipt, RemoteError, SegmentStat, ShardStat, SkippedShard,
};
use dynostore_protocol::{MemberState, NodeId, ObjectId, ShardId};

use crate::net::{peer_id, read_frame, write_frame};
use crate::node::Shared;
use crate::shard_proto;

/// Segments encoded and in flight at once, on put and on get.
pub const SEGMENTS_IN_FLIGHT: usize = 4;
/// Extra shard requests sent beyond `k` when reading a segment.
const HEDGE: usize = 1;
/// How far down the manifest ranking a reader looks (covers m up to 15,
/// plus slack for members that joined since the write).
const MANIFEST_SEARCH: usize = 20;

/// Why a data-path operation failed; `kind` travels to the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("{0}")]
    BadRequest(String),
    #[error("not enough nodes: a {k}+{m} stripe needs {needed} distinct live nodes with free space, {alive} are available")]
    NotEnoughNodes {
        k: u16,
        m: u16,
        needed: usize,
        alive: usize,
    },
    #[error("{0}")]
    Durability(#[from] PlacementError),
    #[error("no manifest for object {0} on any reachable replica (unknown ID?)")]
    UnknownObject(ObjectId),
    #[error(
        "segment {segment}: could not store shard {shard_idx} on any node ({tried} tried): {last}"
    )]
    Placement {
        segment: u64,
        shard_idx: usize,
        tried: usize,
        last: String,
    },
    #[error("segment {segment}: found {found} of the {needed} shards needed; {details}")]
    Unreadable {
        segment: u64,
        found: usize,
        needed: usize,
        details: String,
    },
    #[error("the object's bytes hash to {actual}, not to its ID {expected}")]
    Integrity {
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error("manifest stored on {stored} of the {needed} replicas required: {last}")]
    ManifestReplicas {
        stored: usize,
        needed: usize,
        last: String,
    },
    #[error("client stream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl DataError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DataError::BadRequest(_) => ErrorKind::BadRequest,
            DataError::NotEnoughNodes { .. } | DataError::Durability(_) => {
                ErrorKind::NotEnoughNodes
            }
            DataError::UnknownObject(_) => ErrorKind::NotFound,
            DataError::Integrity { .. } => ErrorKind::Integrity,
            DataError::Unreadable { .. }
            | DataError::Placement { .. }
            | DataError::ManifestReplicas { .. } => ErrorKind::Unavailable,
            DataError::Io(_) | DataError::Internal(_) => ErrorKind::Internal,
        }
    }

    fn remote(&self) -> RemoteError {
        let mut message = self.to_string();
        message.truncate(dynostore_protocol::wire::MAX_TEXT_LEN);
        RemoteError {
            kind: self.kind(),
            message,
        }
    }
}

/// Serves one client stream.
pub(crate) async fn serve_client(mut s: Stream, client: PeerId, shared: Arc<Shared>) {
    let req: ClientRequest = match read_frame(&mut s).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%client, error = %e, "bad client request");
            return;
        }
    };
    let result = match req {
        ClientRequest::Put {
            object,
            size,
            codec,
            k,
            m,
            segment_size,
            meta,
        } => match Geometry::new(codec, k, m, segment_size) {
            Ok(g) => put(&shared, &mut s, object, size, g, meta)
                .await
                .map(ClientResponse::Stored),
            Err(e) => Err(DataError::BadRequest(e.to_string())),
        },
        ClientRequest::Get { object } => match get(&shared, &mut s, object).await {
            // The answer was streamed.
            Ok(()) => {
                let _ = s.close().await;
                return;
            }
            Err(e) => Err(e),
        },
        ClientRequest::Stat { object } => stat(&shared, object).await.map(ClientResponse::Stat),
        ClientRequest::Remove { object } => remove(&shared, object).await,
        ClientRequest::List => list(&shared)
            .await
            .map(|objects| ClientResponse::List { objects }),
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%client, error = %e, "client request failed");
            ClientResponse::Error(e.remote())
        }
    };
    if write_frame(&mut s, &resp).await.is_ok() {
        let _ = s.flush().await;
    }
    let _ = s.close().await;
}

/// Where each shard of a written segment went, in shard order.
type Holders = Vec<(ShardSlot, NodeId)>;
/// Every copy a put stored, for clean-up.
type Written = Vec<(ShardSlot, NodeId)>;

#[tracing::instrument(skip_all, fields(object = %object.short(), size))]
async fn put(
    shared: &Arc<Shared>,
    s: &mut Stream,
    object: ObjectId,
    size: u64,
    g: Geometry,
    meta: Metadata,
) -> Result<PutReceipt, DataError> {
    let view = shared.membership().view();
    let n = g.n();
    let alive = view.eligible_count();
    if alive < n {
        return Err(DataError::NotEnoughNodes {
            k: g.k,
            m: g.m,
            needed: n,
            alive,
        });
    }
    let existing = find_manifest(shared, &view, object, manifest_replicas(&g)).await;
    if let Some(existing) = &existing {
        // An object that is whole stays as it is (with its own geometry
        // and name, which the receipt reports). One that is not is written
        // again as a new generation: the user re-uploading a damaged
        // object repairs it, and the old generation's copies are released
        // once the new manifest replaces it.
        if object_health(shared, existing).await == Health::Healthy {
            return Ok(receipt(existing, 0, true));
        }
        tracing::info!(generation = %existing.generation, "the stored object is not whole: writing it again");
    }
    // No stripe may rely on more than m shards held in memory.
    stripe_fits(&view, n, usize::from(g.m))?;
    let generation = Generation::next(
        crate::manifests::wall_ms(),
        existing.as_ref().map(|m| m.generation),
        rand::random(),
    );
    write_frame(s, &ClientResponse::Ready).await?;
    s.flush().await?;

    let mut written: Written = Vec::new();
    let result = put_segments(shared, s, &view, object, generation, size, g, &mut written).await;
    let manifest = match result {
        Ok(segments) => {
            let mut m = Manifest::new(object, size, g, meta);
            m.generation = generation;
            for (idx, holders) in segments.into_iter().enumerate() {
                let len = g.segment_len(size, idx as u64);
                let shards: Vec<(ShardId, NodeId)> =
                    holders.into_iter().map(|(s, n)| (s.shard, n)).collect();
                m.push_segment(len, g.shard_size(len) as u32, &shards);
            }
            m
        }
        Err(e) => {
            cleanup(shared, &written).await;
            return Err(e);
        }
    };
    match store_manifest(shared, &view, &manifest).await {
        Ok(replicas) => Ok(receipt(&manifest, replicas, false)),
        Err(e) => {
            cleanup(shared, &written).await;
            Err(e)
        }
    }
}

fn receipt(m: &Manifest, replicas: usize, existed: bool) -> PutReceipt {
    PutReceipt {
        object: m.object,
        size: m.size,
        k: m.geometry.k,
        m: m.geometry.m,
        segments: m.segments.len() as u64,
        manifest_replicas: replicas as u32,
        existed,
    }
}

/// Reads, encodes and writes every segment; returns each segment's holders
/// in order. `written` collects every shard stored, for clean-up.
#[allow(clippy::too_many_arguments)]
async fn put_segments(
    shared: &Arc<Shared>,
    s: &mut Stream,
    view: &View,
    object: ObjectId,
    generation: Generation,
    size: u64,
    g: Geometry,
    written: &mut Written,
) -> Result<Vec<Holders>, DataError> {
    let mut encoder = Encoder::new(g).map_err(|e| DataError::BadRequest(e.to_string()))?;
    let mut hasher = Hasher::new();
    // Segment writes run as tasks, so that shards keep flowing while the
    // next segment is read from the client.
    let mut in_flight = FuturesOrdered::new();
    let mut done: Vec<Holders> = Vec::new();
    let segments = g.segment_count(size);
    let result: Result<(), DataError> = async {
        for idx in 0..segments {
            let len = g.segment_len(size, idx) as usize;
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await?;
            hasher.update(&buf);
            let seg = Bytes::from(buf);
            let encoded = encoder
                .encode(&seg)
                .map_err(|e| DataError::Internal(e.to_string()))?;
            let shards: Vec<Bytes> = encoded
                .iter()
                .map(|sh| {
                    let inside = sh.as_ptr() >= seg.as_ptr()
                        && sh.as_ptr() < seg.as_ptr().wrapping_add(seg.len());
                    if inside {
                        seg.slice_ref(sh)
                    } else {
                        Bytes::copy_from_slice(sh)
                    }
                })
                .collect();
            drop(encoded);
            let shared = shared.clone();
            let view = view.clone();
            in_flight.push_back(tokio::spawn(async move {
                let key = PlacementKey::for_segment(&object, idx);
                let owner = ShardRef {
                    object,
                    generation,
                    segment: idx,
                    index: 0,
                };
                write_segment(&shared, &view, key, owner, shards, usize::from(g.m)).await
            }));
            if in_flight.len() >= SEGMENTS_IN_FLIGHT {
                collect_one(&mut in_flight, &mut done, written).await?;
            }
        }
        while !in_flight.is_empty() {
            collect_one(&mut in_flight, &mut done, written).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // Let the writes still running finish, so that every shard they
        // store is known and removed with the rest.
        while let Some(joined) = in_flight.next().await {
            if let Ok((holders, _)) = joined {
                written.extend(holders);
            }
        }
        return Err(e);
    }
    let actual = ObjectId::from_hash(hasher.finalize());
    if actual != object {
        return Err(DataError::Integrity {
            expected: object,
            actual,
        });
    }
    Ok(done)
}

type SegmentWrite = (Holders, Result<(), DataError>);

async fn collect_one(
    in_flight: &mut FuturesOrdered<tokio::task::JoinHandle<SegmentWrite>>,
    done: &mut Vec<Holders>,
    written: &mut Written,
) -> Result<(), DataError> {
    if let Some(joined) = in_flight.next().await {
        let (holders, result) =
            joined.map_err(|e| DataError::Internal(format!("a segment write failed: {e}")))?;
        written.extend(holders.iter().cloned());
        result?;
        done.push(holders);
    }
    Ok(())
}

/// Writes the `k + m` shards of one segment to distinct nodes, at most
/// `max_volatile` of them volatile, owned by `owner` (whose `index` is set
/// per shard). Returns the shards stored (all of them on success, for
/// clean-up otherwise).
async fn write_segment(
    shared: &Arc<Shared>,
    view: &View,
    key: PlacementKey,
    owner: ShardRef,
    shards: Vec<Bytes>,
    max_volatile: usize,
) -> SegmentWrite {
    let segment = owner.segment;
    let n = shards.len();
    let targets: Vec<NodeId> = match place_stripe(view, key, n, max_volatile) {
        Ok(t) => t,
        Err(e) => return (Vec::new(), Err(e.into())),
    };
    let mut spare: Vec<NodeId> = view
        .ranking(key, Weighting::Weighted, eligible_for_writes)
        .into_iter()
        .filter(|id| !targets.contains(id))
        .cloned()
        .collect();
    spare.reverse(); // pop() yields the best remaining
    let ids: Vec<ShardSlot> = shards
        .iter()
        .enumerate()
        .map(|(i, b)| ShardSlot {
            shard: ShardId::of(b),
            owner: ShardRef {
                index: i as u16,
                ..owner
            },
        })
        .collect();
    let first = futures::future::join_all(
        targets
            .iter()
            .zip(&shards)
            .zip(&ids)
            .map(|((node, bytes), id)| put_one(shared, view, node, *id, bytes.clone())),
    )
    .await;
    let mut holders: Vec<Option<NodeId>> = vec![None; n];
    let mut failed = Vec::new();
    for (i, r) in first.into_iter().enumerate() {
        match r {
            Ok(()) => holders[i] = Some(targets[i].clone()),
            Err(e) => failed.push((i, 1usize, e)),
        }
    }
    let mut error = None;
    for (i, mut tried, mut last) in failed {
        loop {
            // A replacement keeps the stripe within its volatile cap.
            let volatile = holders
                .iter()
                .flatten()
                .filter(|h| view.is_volatile(h))
                .count();
            let next = std::iter::from_fn(|| spare.pop())
                .find(|s| volatile < max_volatile || !view.is_volatile(s));
            let Some(node) = next else {
                error = Some(DataError::Placement {
                    segment,
                    shard_idx: i,
                    tried,
                    last,
                });
                break;
            };
            tried += 1;
            match put_one(shared, view, &node, ids[i], shards[i].clone()).await {
                Ok(()) => {
                    holders[i] = Some(node);
                    break;
                }
                Err(e) => last = e,
            }
        }
        if error.is_some() {
            break;
        }
    }
    let stored: Holders = holders
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.clone().map(|h| (ids[i], h)))
        .collect();
    match error {
        Some(e) => (stored, Err(e)),
        None => (stored, Ok(())),
    }
}

/// Stores one copy on `node`. A node `view` counts as durable must not
/// keep the copy in memory (it refuses instead).
pub(crate) async fn put_one(
    shared: &Shared,
    view: &View,
    node: &NodeId,
    id: ShardSlot,
    bytes: Bytes,
) -> Result<(), String> {
    let durable = !view.is_volatile(node);
    if *node == shared.local {
        let stored = if durable {
            shared.store.put_durable(id, bytes).await
        } else {
            shared.store.put_for(id, bytes).await
        };
        return stored.map_err(|e| e.to_string());
    }
    let peer = peer_id(node).ok_or_else(|| format!("{node} is not a peer ID"))?;
    let mut control = shared.streams.clone();
    shard_proto::put_shard_to(&mut control, peer, id, &bytes, durable, shared.timeout)
        .await
        .map_err(|e| e.to_string())
}

/// Releases the copies a failed put stored (its own references only: a
/// copy that another object or an earlier upload owns stays). A holder
/// that cannot be reached gets a pending release.
async fn cleanup(shared: &Arc<Shared>, written: &[(ShardSlot, NodeId)]) {
    let mut by_node: BTreeMap<NodeId, Vec<ShardSlot>> = BTreeMap::new();
    for (id, node) in written {
        by_node.entry(node.clone()).or_default().push(*id);
    }
    for (node, slots) in by_node {
        let n = slots.len();
        if let Err(e) = delete_shards(shared, &node, slots.clone()).await {
            tracing::warn!(node = %node.short(), shards = n, error = %e, "could not release the shards of a failed put; kept for later");
            if let Err(e) = shared.manifests.pending().add(&node, &slots).await {
                tracing::warn!(error = %e, "cannot record pending releases");
            }
        }
    }
}

/// Releases these references on `node`; returns how many copies went.
pub(crate) async fn delete_shards(
    shared: &Shared,
    node: &NodeId,
    slots: Vec<ShardSlot>,
) -> Result<u32, String> {
    let mut deleted = 0;
    for chunk in slots.chunks(dynostore_protocol::wire::MAX_SLOTS_PER_REQUEST) {
        if *node == shared.local {
            for s in chunk {
                if shared.store.release(s).await.map_err(|e| e.to_string())? {
                    deleted += 1;
                }
            }
            continue;
        }
        match control(
            shared,
            node,
            ControlRequest::Delete {
                slots: chunk.to_vec(),
            },
        )
        .await?
        {
            ControlResponse::Deleted { count } => deleted += count,
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
    Ok(deleted)
}

pub(crate) async fn control(
    shared: &Shared,
    node: &NodeId,
    req: ControlRequest,
) -> Result<ControlResponse, String> {
    let peer = peer_id(node).ok_or_else(|| format!("{node} is not a peer ID"))?;
    match shared.request(peer, req).await? {
        ControlResponse::Error(e) => Err(e.to_string()),
        other => Ok(other),
    }
}

/// Nodes that should hold an object's manifest, best first.
fn manifest_ranking(view: &View, object: &ObjectId) -> Vec<NodeId> {
    view.ranking(
        PlacementKey::for_manifest(object),
        Weighting::Uniform,
        |m| m.state == MemberState::Alive,
    )
    .into_iter()
    .cloned()
    .collect()
}

/// Number of manifest replicas for a geometry: m + 1, so that the manifest
/// survives as many losses as the data does.
fn manifest_replicas(g: &Geometry) -> usize {
    usize::from(g.m) + 1
}

async fn store_manifest(
    shared: &Arc<Shared>,
    view: &View,
    m: &Manifest,
) -> Result<usize, DataError> {
    let bytes = m.encode();
    let ranking = manifest_ranking(view, &m.object);
    let needed = manifest_replicas(&m.geometry).min(ranking.len());
    let mut stored = 0;
    let mut last = String::from("no candidate");
    let mut candidates = ranking.into_iter();
    while stored < needed {
        let batch: Vec<NodeId> = candidates.by_ref().take(needed - stored).collect();
        if batch.is_empty() {
            return Err(DataError::ManifestReplicas {
                stored,
                needed,
                last,
            });
        }
        let results = futures::future::join_all(
            batch
                .iter()
                .map(|node| put_manifest_one(shared, node, m.object, &bytes)),
        )
        .await;
        for r in results {
            match r {
                Ok(()) => stored += 1,
                Err(e) => last = e,
            }
        }
    }
    Ok(stored)
}

pub(crate) async fn put_manifest_one(
    shared: &Shared,
    node: &NodeId,
    object: ObjectId,
    bytes: &[u8],
) -> Result<(), String> {
    if *node == shared.local {
        return shared
            .manifests
            .put(object, bytes)
            .await
            .map_err(|e| e.to_string());
    }
    let peer = peer_id(node).ok_or_else(|| format!("{node} is not a peer ID"))?;
    let mut control = shared.streams.clone();
    shard_proto::put_manifest(&mut control, peer, object, bytes, shared.timeout)
        .await
        .map_err(|e| e.to_string())
}

/// The manifest of `object`: from this node if it holds a replica, else
/// from the first `depth` nodes of the manifest ranking, in order.
pub(crate) async fn find_manifest(
    shared: &Arc<Shared>,
    view: &View,
    object: ObjectId,
    depth: usize,
) -> Option<Manifest> {
    let ranking = manifest_ranking(view, &object);
    let mut found = shared.manifests.get(&object).ok().flatten();
    let mut asked = Vec::new();
    if found.is_none() {
        for node in ranking.iter().take(depth) {
            if *node == shared.local {
                continue;
            }
            asked.push(node.clone());
            if let Some(m) = remote_manifest(shared, node, object).await {
                found = Some(m);
                break;
            }
        }
    }
    let mut best = found?;
    // Replicas can lag behind a repair: read the top r and keep the newest.
    let r = manifest_replicas(&best.geometry);
    let others: Vec<NodeId> = ranking
        .into_iter()
        .take(r)
        .filter(|n| *n != shared.local && !asked.contains(n))
        .collect();
    let copies =
        futures::future::join_all(others.iter().map(|n| remote_manifest(shared, n, object))).await;
    for m in copies.into_iter().flatten() {
        if m.version() > best.version() {
            best = m;
        }
    }
    Some(best)
}

pub(crate) async fn remote_manifest(
    shared: &Shared,
    node: &NodeId,
    object: ObjectId,
) -> Option<Manifest> {
    let peer = peer_id(node)?;
    let mut control = shared.streams.clone();
    match shard_proto::get_manifest(&mut control, peer, object, shared.timeout).await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(node = %node.short(), error = %e, "manifest lookup failed");
            None
        }
    }
}

async fn require_manifest(shared: &Arc<Shared>, object: ObjectId) -> Result<Manifest, DataError> {
    let view = shared.membership().view();
    find_manifest(shared, &view, object, MANIFEST_SEARCH)
        .await
        .ok_or(DataError::UnknownObject(object))
}

#[tracing::instrument(skip_all, fields(object = %object.short()))]
async fn get(shared: &Arc<Shared>, s: &mut Stream, object: ObjectId) -> Result<(), DataError> {
    let manifest = Arc::new(require_manifest(shared, object).await?);
    write_frame(
        s,
        &ClientResponse::Object {
            size: manifest.size,
            meta: manifest.meta.clone(),
        },
    )
    .await?;
    let mut hasher = Hasher::new();
    let mut skipped = Vec::new();
    let mut in_flight = FuturesOrdered::new();
    let mut next = 0usize;
    let total = manifest.segments.len();
    loop {
        while next < total && in_flight.len() < SEGMENTS_IN_FLIGHT {
            let shared = shared.clone();
            let manifest = manifest.clone();
            let idx = next;
            // A task, so that fetching goes on while the client is written to.
            let task = tokio::spawn(async move { read_segment(&shared, &manifest, idx).await });
            in_flight.push_back(async move {
                task.await.unwrap_or_else(|e| {
                    Err(DataError::Internal(format!("a segment read failed: {e}")))
                })
            });
            next += 1;
        }
        let Some(result) = in_flight.next().await else {
            break;
        };
        match result {
            Ok((bytes, mut skip)) => {
                hasher.update(&bytes);
                skipped.append(&mut skip);
                write_frame(
                    s,
                    &Chunk::Data {
                        len: bytes.len() as u32,
                    },
                )
                .await?;
                s.write_all(&bytes).await?;
            }
            Err(e) => {
                write_frame(s, &Chunk::Error(e.remote())).await?;
                s.flush().await?;
                return Err(e);
            }
        }
    }
    let actual = ObjectId::from_hash(hasher.finalize());
    if actual != object {
        let e = DataError::Integrity {
            expected: object,
            actual,
        };
        write_frame(s, &Chunk::Error(e.remote())).await?;
        s.flush().await?;
        return Err(e);
    }
    for sk in &skipped {
        tracing::warn!(segment = sk.segment, shard = %sk.shard.short(), holder = %sk.holder.short(), reason = %sk.reason, "shard skipped on read");
    }
    skipped.truncate(4096);
    write_frame(s, &Chunk::End { skipped }).await?;
    s.flush().await?;
    Ok(())
}

/// Fetches any `k` verified shards of segment `idx` and decodes it.
pub(crate) async fn read_segment(
    shared: &Arc<Shared>,
    m: &Manifest,
    idx: usize,
) -> Result<(Vec<u8>, Vec<SkippedShard>), DataError> {
    let g = m.geometry;
    let k = usize::from(g.k);
    let seg = &m.segments[idx];
    let mut skipped = Vec::new();
    // Candidates: data shards first, then parity; live and lightly loaded
    // holders first within each.
    let mut candidates: Vec<(usize, NodeId, (u8, u32))> = Vec::new();
    {
        let members = shared.membership();
        for (i, e) in seg.shards.iter().enumerate() {
            let Some(holder) = m.holder(e) else { continue };
            let rank = match members.get(holder) {
                Some(entry) => match entry.state {
                    MemberState::Alive => (0, entry.announcement.load.requests_in_flight),
                    MemberState::Suspect => (1, u32::MAX),
                    MemberState::Down => {
                        skipped.push(SkippedShard {
                            segment: idx as u64,
                            shard: e.id,
                            holder: holder.clone(),
                            reason: "holder is down".into(),
                        });
                        continue;
                    }
                },
                None => (2, u32::MAX),
            };
            candidates.push((i, holder.clone(), rank));
        }
    }
    candidates.sort_by_key(|(i, _, rank)| (*i >= k, *rank, *i));
    let mut queue = candidates.into_iter();
    let mut pending = FuturesUnordered::new();
    let launch = |pending: &mut FuturesUnordered<_>, (i, holder, _): (usize, NodeId, (u8, u32))| {
        let shared = shared.clone();
        let id = seg.shards[i].id;
        pending.push(async move {
            let r = get_one(&shared, &holder, id).await;
            (i, holder, id, r)
        });
    };
    for c in queue.by_ref().take(k + HEDGE) {
        launch(&mut pending, c);
    }
    let mut got: Vec<Option<Bytes>> = vec![None; g.n()];
    let mut found = 0;
    while let Some((i, holder, id, r)) = pending.next().await {
        match r {
            Ok(bytes) => {
                got[i] = Some(bytes);
                found += 1;
                if found == k {
                    break;
                }
            }
            Err(reason) => {
                skipped.push(SkippedShard {
                    segment: idx as u64,
                    shard: id,
                    holder,
                    reason,
                });
                if let Some(c) = queue.next() {
                    launch(&mut pending, c);
                }
            }
        }
    }
    drop(pending);
    if found < k {
        let details = skipped
            .iter()
            .map(|s| {
                format!(
                    "shard {} on {}: {}",
                    s.shard.short(),
                    s.holder.short(),
                    s.reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(DataError::Unreadable {
            segment: idx as u64,
            found,
            needed: k,
            details,
        });
    }
    let view: Vec<Option<&[u8]>> = got.iter().map(|b| b.as_deref()).collect();
    let bytes =
        erasure::decode(g, seg.len, &view).map_err(|e| DataError::Internal(e.to_string()))?;
    Ok((bytes, skipped))
}

pub(crate) async fn get_one(shared: &Shared, node: &NodeId, id: ShardId) -> Result<Bytes, String> {
    if *node == shared.local {
        return shared.store.get(&id).await.map_err(|e| e.to_string());
    }
    let peer = peer_id(node).ok_or_else(|| format!("{node} is not a peer ID"))?;
    let mut control = shared.streams.clone();
    shard_proto::get_shard(&mut control, peer, id, shared.timeout)
        .await
        .map_err(|e| e.to_string())
}

async fn stat(shared: &Arc<Shared>, object: ObjectId) -> Result<ObjectStat, DataError> {
    let m = require_manifest(shared, object).await?;
    // Ask each holder once to re-hash all of its shards of this object.
    let mut by_holder: BTreeMap<u32, Vec<ShardId>> = BTreeMap::new();
    for seg in &m.segments {
        for e in &seg.shards {
            by_holder.entry(e.holder).or_default().push(e.id);
        }
    }
    let down: HashSet<NodeId> = {
        let members = shared.membership();
        m.holders
            .iter()
            .filter(|h| members.get(h).is_none_or(|e| e.state == MemberState::Down))
            .cloned()
            .collect()
    };
    let checks = futures::future::join_all(by_holder.into_iter().map(|(h, shards)| {
        let holder = m.holders[h as usize].clone();
        let skip = down.contains(&holder);
        async move {
            if skip {
                return (h, HashSet::new());
            }
            (h, verify_on(shared, &holder, shards).await)
        }
    }))
    .await;
    let ok: BTreeMap<u32, HashSet<ShardId>> = checks.into_iter().collect();
    let k = usize::from(m.geometry.k);
    let n = m.geometry.n();
    let mut health = Health::Healthy;
    let segments = m
        .segments
        .iter()
        .map(|seg| {
            let shards: Vec<ShardStat> = seg
                .shards
                .iter()
                .map(|e| ShardStat {
                    id: e.id,
                    holder: m.holders[e.holder as usize].clone(),
                    ok: ok.get(&e.holder).is_some_and(|set| set.contains(&e.id)),
                })
                .collect();
            let good = shards.iter().filter(|s| s.ok).count();
            health = health.max(if good >= n {
                Health::Healthy
            } else if good >= k {
                Health::Degraded
            } else {
                Health::Lost
            });
            SegmentStat {
                len: seg.len,
                shards,
            }
        })
        .collect();
    Ok(ObjectStat {
        object,
        size: m.size,
        codec: m.geometry.codec,
        k: m.geometry.k,
        m: m.geometry.m,
        segment_size: m.geometry.segment_size,
        meta: m.meta.clone(),
        health,
        segments,
    })
}

/// The shards among `shards` that `node` holds intact.
async fn verify_on(shared: &Shared, node: &NodeId, shards: Vec<ShardId>) -> HashSet<ShardId> {
    let mut ok = HashSet::new();
    for chunk in shards.chunks(dynostore_protocol::wire::MAX_SHARDS_PER_REQUEST) {
        if *node == shared.local {
            for s in chunk {
                if shared.store.get(s).await.is_ok() {
                    ok.insert(*s);
                }
            }
            continue;
        }
        match control(
            shared,
            node,
            ControlRequest::Verify {
                shards: chunk.to_vec(),
            },
        )
        .await
        {
            Ok(ControlResponse::Has { present }) => {
                ok.extend(
                    chunk
                        .iter()
                        .zip(present)
                        .filter(|(_, p)| *p)
                        .map(|(s, _)| *s),
                );
            }
            Ok(other) => tracing::warn!(node = %node.short(), "unexpected verify answer {other:?}"),
            Err(e) => tracing::debug!(node = %node.short(), error = %e, "verify failed"),
        }
    }
    ok
}

async fn remove(shared: &Arc<Shared>, object: ObjectId) -> Result<ClientResponse, DataError> {
    let m = require_manifest(shared, object).await?;
    let shards = crate::repair::remove_shards(shared, &m).await;
    // Manifest replicas may sit anywhere the ranking pointed over time: ask
    // every live member. Each keeps a tombstone, from which members that
    // are down now learn of the removal when they return.
    let members: Vec<NodeId> = shared
        .membership()
        .entries()
        .filter(|(_, e)| e.state != MemberState::Down)
        .map(|(id, _)| id.clone())
        .collect();
    let mut manifests = 0u32;
    let generation = m.generation;
    for node in members {
        if node == shared.local {
            if shared
                .manifests
                .remove(&object, generation, shared.tombstone_until())
                .await
                .unwrap_or(false)
            {
                manifests += 1;
            }
            continue;
        }
        if let Ok(ControlResponse::Deleted { count }) = control(
            shared,
            &node,
            ControlRequest::DeleteManifest { object, generation },
        )
        .await
        {
            manifests += count;
        }
    }
    Ok(ClientResponse::Removed { shards, manifests })
}

async fn list(shared: &Arc<Shared>) -> Result<Vec<ObjectSummary>, DataError> {
    let mut all: BTreeMap<ObjectId, ObjectSummary> = BTreeMap::new();
    for o in shared
        .manifests
        .summaries()
        .map_err(|e| DataError::Internal(e.to_string()))?
    {
        all.insert(o.object, o);
    }
    let members: Vec<NodeId> = shared
        .membership()
        .entries()
        .filter(|(id, e)| **id != shared.local && e.state == MemberState::Alive)
        .map(|(id, _)| id.clone())
        .collect();
    let answers = futures::future::join_all(
        members
            .iter()
            .map(|node| control(shared, node, ControlRequest::ListManifests)),
    )
    .await;
    for a in answers {
        match a {
            Ok(ControlResponse::Manifests { objects }) => {
                for o in objects {
                    all.entry(o.object).or_insert(o);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "a member did not list its manifests"),
        }
    }
    Ok(all.into_values().collect())
}

/// Which copies of `m` are present, per segment and shard position, by a
/// cheap `Has` on every holder (no re-hash). A `Down` or unknown holder
/// holds nothing; a holder that does not answer counts as `unreachable`.
pub(crate) async fn slot_presence(
    shared: &Shared,
    m: &Manifest,
    unreachable: bool,
) -> Vec<Vec<bool>> {
    let mut by_holder: BTreeMap<u32, Vec<(usize, usize, ShardSlot)>> = BTreeMap::new();
    for (s, seg) in m.segments.iter().enumerate() {
        for (i, e) in seg.shards.iter().enumerate() {
            let slot = ShardSlot {
                shard: e.id,
                owner: m.shard_ref(s as u64, i as u16),
            };
            by_holder.entry(e.holder).or_default().push((s, i, slot));
        }
    }
    let mut out: Vec<Vec<bool>> = m
        .segments
        .iter()
        .map(|seg| vec![false; seg.shards.len()])
        .collect();
    let answers = futures::future::join_all(by_holder.into_iter().map(|(h, slots)| async move {
        let node = m.holders[h as usize].clone();
        let state = shared.membership().get(&node).map(|e| e.state);
        let mut flags = Vec::with_capacity(slots.len());
        if node == shared.local {
            for (_, _, slot) in &slots {
                flags.push(shared.store.has_slot(slot).await.unwrap_or(false));
            }
        } else if state == Some(MemberState::Down) || state.is_none() {
            flags.resize(slots.len(), false);
        } else {
            for chunk in slots.chunks(dynostore_protocol::wire::MAX_SLOTS_PER_REQUEST) {
                let req = ControlRequest::Has {
                    slots: chunk.iter().map(|(_, _, s)| *s).collect(),
                };
                match control(shared, &node, req).await {
                    Ok(ControlResponse::Has { present }) if present.len() == chunk.len() => {
                        flags.extend(present)
                    }
                    _ => flags.extend(std::iter::repeat_n(unreachable, chunk.len())),
                }
            }
        }
        (slots, flags)
    }))
    .await;
    for (slots, flags) in answers {
        for ((s, i, _), ok) in slots.into_iter().zip(flags) {
            out[s][i] = ok;
        }
    }
    out
}

/// The health of `m` from [`slot_presence`], holders that do not answer
/// counted as missing.
async fn object_health(shared: &Shared, m: &Manifest) -> Health {
    let k = usize::from(m.geometry.k);
    let n = m.geometry.n();
    slot_presence(shared, m, false)
        .await
        .iter()
        .map(|seg| {
            let good = seg.iter().filter(|p| **p).count();
            if good >= n {
                Health::Healthy
            } else if good >= k {
                Health::Degraded
            } else {
                Health::Lost
            }
        })
        .max()
        .unwrap_or(Health::Healthy)
}
