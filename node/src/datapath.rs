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
use futures::stream::FuturesOrdered;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};

use dynostore_protocol::durability::{self, Durability};
use dynostore_protocol::erasure::{Encoder, Geometry, MAX_SEGMENT_SIZE};
use dynostore_protocol::manifest::{
    Generation, Manifest, ManifestVersion, Metadata, ShardRef, ShardSlot,
};
use dynostore_protocol::placement::{
    eligible_for_writes, place_stripe_sized, stripe_fits, PlacementError, PlacementKey, View,
    Weighting,
};
use dynostore_protocol::planner::{put_generation, tombstone_askees, Presence};
use dynostore_protocol::repair::{self, manifest_replicas};
use dynostore_protocol::token::Op as TokenOp;
use dynostore_protocol::wire::{
    Chunk, ClientEnvelope, ClientRequest, ClientResponse, ErrorKind, Health, ObjectStat,
    ObjectSummary, PutReceipt, RemoteError, SegmentStat, ShardStat, SkippedShard,
    MAX_LISTED_OBJECTS,
};
use dynostore_protocol::{MemberState, NodeId, ObjectId, ShardId};

use crate::limits::IdleStream;
use crate::metrics::Op;
use crate::net::{read_frame, write_frame};
use crate::shared::Shared;
use crate::stripes::{read_segment, slot_presence, StripeError};

/// Segments encoded and in flight at once, on put and on get.
pub const SEGMENTS_IN_FLIGHT: usize = 4;
/// How far down the manifest ranking a reader looks (covers m up to 15,
/// plus slack for members that joined since the write).
const MANIFEST_SEARCH: usize = 20;

/// Why a data-path operation failed; `kind` travels to the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
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
    #[error(transparent)]
    Stripe(#[from] StripeError),
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
            DataError::Forbidden(_) => ErrorKind::Forbidden,
            DataError::NotEnoughNodes { .. } | DataError::Durability(_) => {
                ErrorKind::NotEnoughNodes
            }
            DataError::UnknownObject(_) => ErrorKind::NotFound,
            DataError::Integrity { .. } => ErrorKind::Integrity,
            DataError::Stripe(StripeError::Unreadable { .. })
            | DataError::Placement { .. }
            | DataError::ManifestReplicas { .. } => ErrorKind::Unavailable,
            DataError::Stripe(_) | DataError::Io(_) | DataError::Internal(_) => ErrorKind::Internal,
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

/// A client's stream: every read and write must progress within the
/// node's request timeout.
type ClientStream = IdleStream<Stream>;

/// How long a client has to send its request after opening a stream.
pub const CLIENT_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The memory a put holds for one segment: its bytes, the parity the
/// encoder writes and the copies handed to the shard streams (measured:
/// a 64 MiB segment at k=1 m=5 took the entry peer's peak RSS to 1.1 GB
/// with only one segment in flight, about `len + 2 * parity`).
pub fn put_segment_cost(g: &Geometry, len: u64) -> u64 {
    let shard = len.div_ceil(u64::from(g.k));
    len + 2 * shard * u64::from(g.m) + shard
}

/// The memory a get holds for one segment: the shards fetched (up to
/// every one of the stripe when hedges and fallbacks fire), the decoded
/// bytes and the chunk being sent (measured: 4 segments of 64 MiB at k=1
/// m=5 in flight took a peak of 1.5 GB, about `(n + 2) * shard` each).
pub fn get_segment_cost(g: &Geometry, len: u64) -> u64 {
    let shard = len.div_ceil(u64::from(g.k));
    (g.n() as u64 + 2) * shard
}

/// Checks a request against the object's manifest before any work on it:
/// the client protocol's token check, or [`open_gate`].
pub(crate) type Gate<'a> = &'a (dyn Fn(&Manifest) -> Result<(), DataError> + Send + Sync);

/// Lets every request through (the admin API, which checks its callers
/// itself; an open network).
pub(crate) fn open_gate(_: &Manifest) -> Result<(), DataError> {
    Ok(())
}

/// Who a client request acts for: anyone in an open network (no
/// federation), else the verified user token.
enum Access<'a> {
    Open,
    User {
        admission: &'a crate::trust::Admission,
        token: Box<dynostore_protocol::token::Token>,
    },
}

impl Access<'_> {
    /// Whether the request may do `op` on `m` (by its name, or as its owner).
    fn check(&self, op: TokenOp, m: &Manifest) -> Result<(), DataError> {
        match self {
            Access::Open => Ok(()),
            Access::User { admission, token } => admission
                .authorize(
                    token,
                    op,
                    m.meta.name.as_deref().unwrap_or(""),
                    m.meta.owner.as_deref(),
                )
                .map(|_| ())
                .map_err(|e| DataError::Forbidden(e.to_string())),
        }
    }

    /// Whether the request may do `op` on the name `resource`.
    fn allows(&self, op: TokenOp, resource: &str) -> Result<(), DataError> {
        match self {
            Access::Open => Ok(()),
            Access::User { admission, token } => admission
                .authorize(token, op, resource, None)
                .map(|_| ())
                .map_err(|e| DataError::Forbidden(e.to_string())),
        }
    }

    /// Whether a listing shows `o` to this request.
    fn shows(&self, o: &ObjectSummary) -> bool {
        match self {
            Access::Open => true,
            Access::User { admission, token } => admission
                .authorize(
                    token,
                    TokenOp::Ls,
                    o.name.as_deref().unwrap_or(""),
                    o.owner.as_deref(),
                )
                .is_ok(),
        }
    }
}

/// Serves one client stream.
pub(crate) async fn serve_client(s: Stream, client: PeerId, shared: Arc<Shared>) {
    let mut s = IdleStream::new(s, shared.net.timeout);
    let first = tokio::time::timeout(CLIENT_HEADER_TIMEOUT, read_frame(&mut s)).await;
    let ClientEnvelope { token, request } = match first {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "bad client request");
            return;
        }
        Err(_) => {
            tracing::debug!(%client, "no client request within {CLIENT_HEADER_TIMEOUT:?}");
            return;
        }
    };
    // A revocation needs no token: its site's signature is its authority
    // (and a user whose token was revoked must not be needed to spread it).
    let access = match request {
        ClientRequest::Revoke { .. } => Ok(Access::Open),
        _ => authenticate(&shared, token.as_deref()),
    };
    let result = match access {
        Ok(access) => answer(&shared, &mut s, &access, request).await,
        Err(e) => Err(e),
    };
    let resp = match result {
        // The answer was streamed.
        Ok(None) => {
            let _ = s.close().await;
            return;
        }
        Ok(Some(r)) => r,
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

/// The request's access: open without a federation, else its token,
/// decoded and signature-checked before any work.
fn authenticate<'a>(shared: &'a Shared, token: Option<&[u8]>) -> Result<Access<'a>, DataError> {
    match &shared.admission {
        None => Ok(Access::Open),
        Some(admission) => match admission.user_token(token) {
            Ok(token) => Ok(Access::User {
                admission,
                token: Box::new(token),
            }),
            Err(e) => {
                shared.metrics.admission_refused();
                Err(DataError::Forbidden(e.to_string()))
            }
        },
    }
}

/// Answers one request; `None` when the answer was streamed.
async fn answer(
    shared: &Arc<Shared>,
    s: &mut ClientStream,
    access: &Access<'_>,
    request: ClientRequest,
) -> Result<Option<ClientResponse>, DataError> {
    Ok(Some(match request {
        ClientRequest::Put {
            object,
            size,
            codec,
            k,
            m,
            segment_size,
            mut meta,
            durability,
        } => {
            let timer = shared.metrics.op(Op::Put);
            // The owner is whoever the verified token speaks for, never
            // what the client wrote.
            meta.owner = None;
            let r = match access {
                Access::Open => Ok(()),
                Access::User { admission, token } => admission
                    .authorize(
                        token,
                        TokenOp::Put,
                        meta.name.as_deref().unwrap_or(""),
                        None,
                    )
                    .map(|p| meta.owner = Some(p.to_string()))
                    .map_err(|e| DataError::Forbidden(e.to_string())),
            };
            let r = match r
                .and_then(|()| entry_geometry(shared, codec, k, m, segment_size, durability))
            {
                Ok((g, target)) => put(
                    shared,
                    &mut StreamSource(s),
                    Put {
                        object,
                        size,
                        g,
                        meta,
                        target,
                        fresh: false,
                    },
                )
                .await
                .map(ClientResponse::Stored),
                Err(e) => Err(e),
            };
            timer.finish(r.as_ref().err().map(DataError::kind));
            if let Err(e) = &r {
                shared.dashboard.events.push(
                    crate::dashboard::EventKind::PutRefused,
                    Some(object.to_string()),
                    format!("put of {} refused: {e}", object.short()),
                );
            }
            r?
        }
        ClientRequest::Get { object } => {
            let timer = shared.metrics.op(Op::Get);
            let gate = |m: &Manifest| access.check(TokenOp::Get, m);
            let r = get(shared, &mut StreamSink(s), object, &gate).await;
            timer.finish(r.as_ref().err().map(DataError::kind));
            r?;
            return Ok(None);
        }
        ClientRequest::Stat {
            object,
            first_segment,
            max_segments,
        } => {
            let gate = |m: &Manifest| access.check(TokenOp::Get, m);
            let page = (first_segment, max_segments.map(|m| m as usize));
            ClientResponse::Stat(stat_page(shared, object, &gate, page).await?)
        }
        ClientRequest::Remove { object } => {
            let timer = shared.metrics.op(Op::Remove);
            let gate = |m: &Manifest| access.check(TokenOp::Rm, m);
            let r = remove(shared, object, &gate).await;
            timer.finish(r.as_ref().err().map(DataError::kind));
            r?
        }
        ClientRequest::List { after, limit } => {
            let (mut objects, next) = list_objects(shared, after, limit).await?;
            objects.retain(|o| access.shows(o));
            ClientResponse::List { objects, next }
        }
        ClientRequest::S3Keys { token } => crate::s3::auth::register(shared, &token)
            .await
            .map(|(access_key, secret)| ClientResponse::S3Keys { access_key, secret })
            .map_err(DataError::BadRequest)?,
        ClientRequest::Name {
            bucket,
            key,
            object,
            size,
            etag,
            content_type,
        } => {
            access.allows(TokenOp::Put, &format!("{bucket}/{key}"))?;
            crate::s3::ops::name_object(shared, &bucket, &key, object, size, etag, content_type)
                .await
                .map(|()| ClientResponse::Named)?
        }
        ClientRequest::Unname { bucket, key } => {
            access.allows(TokenOp::Rm, &format!("{bucket}/{key}"))?;
            crate::s3::ops::unname_object(shared, &bucket, &key)
                .await
                .map(|()| ClientResponse::Unnamed)?
        }
        ClientRequest::Resolve { bucket, key } => {
            access.allows(TokenOp::Get, &format!("{bucket}/{key}"))?;
            crate::s3::ops::resolve(shared, &bucket, &key).await?
        }
        ClientRequest::ListNames {
            bucket,
            prefix,
            after,
        } => {
            access.allows(TokenOp::Ls, &format!("{bucket}/{prefix}"))?;
            crate::s3::ops::list_names(shared, &bucket, &prefix, after)
                .await
                .map(|(names, truncated)| ClientResponse::Names { names, truncated })?
        }
        ClientRequest::Revoke { revocation } => match &shared.admission {
            None => {
                return Err(DataError::BadRequest(
                    "this network has no federation, so no tokens to revoke".into(),
                ))
            }
            Some(a) => {
                let added = a
                    .revoke(&revocation)
                    .map_err(|e| DataError::Forbidden(e.to_string()))?;
                tracing::info!(added, "a site revoked tokens");
                ClientResponse::Revoked {
                    added: added as u32,
                }
            }
        },
    }))
}

/// The geometry of a put: the one the client named, or (for a durability
/// target, or `k = m = 0` with this site's default target) the cheapest
/// one [`durability::choose`] finds for the members that can take shards
/// now, or (`k = m = 0` and no default target) the configured defaults. A
/// `segment_size` of 0 means `k` MiB. Returns the target written for.
fn entry_geometry(
    shared: &Shared,
    codec: dynostore_protocol::CodecKind,
    k: u16,
    m: u16,
    segment_size: u32,
    durability: Option<Durability>,
) -> Result<(Geometry, Option<Durability>), DataError> {
    let policy = &shared.writes;
    let target = match durability {
        Some(t) => Some(t),
        None if k == 0 && m == 0 => policy.default_durability.map(Durability),
        None => None,
    };
    let (k, m) = match target {
        Some(t) => {
            let view = shared.membership().view();
            let eligible: Vec<_> = view
                .members()
                .iter()
                .filter(|m| eligible_for_writes(m))
                .collect();
            let mut sites: Vec<&str> = eligible.iter().map(|m| m.site.as_str()).collect();
            sites.sort_unstable();
            sites.dedup();
            let at = durability::Membership {
                members: eligible.len(),
                sites: sites.len(),
            };
            let c = durability::choose(t.0, at, &policy.model, policy.max_stripe_shards)
                .map_err(|e| DataError::BadRequest(e.to_string()))?;
            tracing::info!(
                target = t.0,
                k = c.k,
                m = c.m,
                members = at.members,
                sites = at.sites,
                nines = c.durability.nines(),
                "geometry chosen for a durability target"
            );
            (c.k, c.m)
        }
        None if k == 0 && m == 0 => (policy.default_k, policy.default_m),
        None => (k, m),
    };
    let segment_size = if segment_size == 0 {
        (u32::from(k) << 20).min(MAX_SEGMENT_SIZE)
    } else {
        segment_size
    };
    let g = Geometry::new(codec, k, m, segment_size)
        .map_err(|e| DataError::BadRequest(e.to_string()))?;
    Ok((g, target))
}

/// `stat` of one object, counted in the metrics: for the client protocol
/// and the admin API alike.
pub(crate) async fn stat_object(
    shared: &Arc<Shared>,
    object: ObjectId,
    gate: Gate<'_>,
) -> Result<ObjectStat, DataError> {
    stat_page(shared, object, gate, (0, Some(usize::MAX))).await
}

/// `stat` of segments `page.0..` (at most `page.1`, capped by
/// [`stat_page_segments`] unless `usize::MAX`: the admin API's answer has
/// no frame to fit), counted in the metrics.
async fn stat_page(
    shared: &Arc<Shared>,
    object: ObjectId,
    gate: Gate<'_>,
    page: (u64, Option<usize>),
) -> Result<ObjectStat, DataError> {
    let timer = shared.metrics.op(Op::Stat);
    let r = stat(shared, object, gate, page).await;
    timer.finish(r.as_ref().err().map(DataError::kind));
    r
}

/// The objects the network holds, counted in the metrics: for the client
/// protocol and the admin API alike.
pub(crate) async fn list_objects(
    shared: &Arc<Shared>,
    after: Option<ObjectId>,
    limit: u32,
) -> Result<(Vec<ObjectSummary>, Option<ObjectId>), DataError> {
    let timer = shared.metrics.op(Op::List);
    let r = list(shared, after, limit).await;
    timer.finish(r.as_ref().err().map(DataError::kind));
    r
}

/// Where [`put`] reads an object from: the client protocol's stream
/// ([`StreamSource`]) or a file the S3 gateway spooled.
pub(crate) trait PutSource {
    /// The put was accepted: the bytes may come.
    async fn ready(&mut self) -> Result<(), DataError>;
    /// Fills `buf` with the next bytes of the object.
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), DataError>;
}

/// The client protocol's put: `Ready`, then the bytes on the stream.
struct StreamSource<'a>(&'a mut ClientStream);

impl PutSource for StreamSource<'_> {
    async fn ready(&mut self) -> Result<(), DataError> {
        write_frame(self.0, &ClientResponse::Ready).await?;
        self.0.flush().await?;
        Ok(())
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        self.0.read_exact(buf).await?;
        Ok(())
    }
}

/// A put on behalf of the S3 gateway (or any in-process caller), counted
/// in the metrics like a client's.
pub(crate) async fn put_object(
    shared: &Arc<Shared>,
    source: &mut impl PutSource,
    object: ObjectId,
    size: u64,
    g: Geometry,
    meta: Metadata,
    fresh: bool,
) -> Result<PutReceipt, DataError> {
    let timer = shared.metrics.op(Op::Put);
    let args = Put {
        object,
        size,
        g,
        meta,
        target: None,
        fresh,
    };
    let r = put(shared, source, args).await;
    timer.finish(r.as_ref().err().map(DataError::kind));
    r
}

/// Where each shard of a written segment went, in shard order.
type Holders = Vec<(ShardSlot, NodeId)>;
/// Every copy a put stored, for clean-up.
type Written = Vec<(ShardSlot, NodeId)>;

/// What a put stores.
struct Put {
    object: ObjectId,
    size: u64,
    g: Geometry,
    meta: Metadata,
    /// The durability asked for, when the entry peer chose the geometry.
    target: Option<Durability>,
    /// The caller needs a generation of its own (see [`store`]).
    fresh: bool,
}

/// Stores an object. A put not asked to be collectable (acknowledged by
/// ID) also pins it (`refs::pin`) before the acknowledgement, whichever
/// way [`store`] succeeds.
#[tracing::instrument(skip_all, fields(object = %args.object.short(), size = args.size))]
async fn put(
    shared: &Arc<Shared>,
    s: &mut impl PutSource,
    args: Put,
) -> Result<PutReceipt, DataError> {
    let (object, pinned) = (args.object, !args.meta.collectable);
    let receipt = store(shared, s, args).await?;
    if pinned {
        crate::refs::pin(shared, object).await.map_err(|e| {
            DataError::Internal(format!("the object is stored but not pinned: {e}"))
        })?;
    }
    Ok(receipt)
}

async fn store(
    shared: &Arc<Shared>,
    s: &mut impl PutSource,
    args: Put,
) -> Result<PutReceipt, DataError> {
    let Put {
        object,
        size,
        g,
        meta,
        target,
        fresh,
    } = args;
    let cost = put_segment_cost(&g, u64::from(g.segment_size));
    if !shared.memory.fits(cost) {
        return Err(DataError::BadRequest(format!(
            "a segment of {} MiB with k={} m={} needs {} MiB of buffers, more than this node's \
             memory budget of {} MiB: use smaller segments",
            g.segment_size >> 20,
            g.k,
            g.m,
            cost.div_ceil(1 << 20),
            shared.memory.bytes() >> 20
        )));
    }
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
    let mut meta = meta;
    let (existing, seen) = existing_and_seen(shared, &view, object, manifest_replicas(&g)).await;
    if let Some(existing) = &existing {
        // An acknowledgement by ID rests on a generation that is not
        // collectable; one written over it (a damaged object re-uploaded
        // through S3) must not become collectable either.
        meta.collectable &= existing.meta.collectable;
        // An object that is whole stays as it is (with its own geometry
        // and name, which the receipt reports). One that is not is written
        // again as a new generation: the user re-uploading a damaged
        // object repairs it, and the old generation's copies are released
        // once the new manifest replaces it.
        // A put that must not rest on a collectable generation (a put by
        // ID) writes a new one of its own over such a generation.
        // `fresh`: the caller needs a generation of its own (the one it
        // found is being reclaimed).
        let adoptable = !fresh && (meta.collectable || !existing.meta.collectable);
        if adoptable && object_health(shared, &view, existing).await == Health::Healthy {
            return Ok(receipt(existing, 0, true));
        }
        if fresh {
            tracing::info!(generation = %existing.generation, "the stored generation is being reclaimed: writing a new one");
        } else if adoptable {
            tracing::info!(generation = %existing.generation, "the stored object is not whole: writing it again");
        } else {
            tracing::debug!(generation = %existing.generation, "the stored generation is collectable: writing one that is not");
        }
    }
    let inline = shared.inline_max_bytes > 0 && size <= shared.inline_max_bytes;
    // No stripe may rely on more than m shards held in memory (an inline
    // object has no stripe: its manifest replicas are in the index).
    if !inline {
        stripe_fits(&view, n, usize::from(g.m))?;
    }
    // Above every generation of the object anyone near its ranking knows,
    // held or removed: a tombstone removes its generation and every older
    // one, so an upload after `rm` must not be older than it, whatever the
    // clocks say.
    let generation = put_generation(
        crate::manifests::wall_ms(),
        seen.into_iter()
            .chain(existing.as_ref().map(|m| m.generation)),
        rand::random(),
    );
    s.ready().await?;
    if inline {
        return put_inline(shared, s, &view, object, size, g, meta, generation, target).await;
    }

    let mut written: Written = Vec::new();
    let result = put_segments(shared, s, &view, object, generation, size, g, &mut written).await;
    let manifest = match result {
        Ok(segments) => {
            let mut m = Manifest::new(object, size, g, meta);
            m.generation = generation;
            m.durability_target = target;
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

/// A small object: its bytes go into the manifest, stored on the object's
/// m + 1 manifest replicas like any manifest (each acknowledges after its
/// index flush), so the put is acknowledged only when the object is
/// durable on as many nodes as a stripe needs to survive m losses.
#[allow(clippy::too_many_arguments)]
async fn put_inline(
    shared: &Arc<Shared>,
    s: &mut impl PutSource,
    view: &View,
    object: ObjectId,
    size: u64,
    g: Geometry,
    meta: Metadata,
    generation: Generation,
    target: Option<Durability>,
) -> Result<PutReceipt, DataError> {
    let len = usize::try_from(size).map_err(|e| DataError::BadRequest(e.to_string()))?;
    let mut bytes = vec![0u8; len];
    s.read_exact(&mut bytes).await?;
    shared.metrics.received(size);
    let actual = ObjectId::of(&bytes);
    if actual != object {
        return Err(DataError::Integrity {
            expected: object,
            actual,
        });
    }
    let mut m = Manifest::new_inline(object, g, meta, bytes);
    m.generation = generation;
    m.durability_target = target;
    let replicas = store_manifest(shared, view, &m).await?;
    Ok(receipt(&m, replicas, false))
}

/// What a put needs to know of `object` before writing, from one round of
/// `ManifestStates` to every member a tombstone may be on (which includes
/// the top `depth` manifest replicas, and this node): the newest manifest
/// held (fetched from a member that holds it, newest first), and every
/// generation seen, held or removed, by the members that answer (a put
/// does not wait for silent ones; its generation is a wall-clock time as
/// well).
///
/// A put of a new object used to look for its manifest on the top replicas
/// one after the other and then ask the same members for its generations:
/// three round trips and three requests more per small put, answering
/// nothing the states had not.
async fn existing_and_seen(
    shared: &Arc<Shared>,
    view: &View,
    object: ObjectId,
    depth: usize,
) -> (Option<Manifest>, Vec<Generation>) {
    let peers = shared.peers();
    let mut asked = tombstone_askees(view, &shared.local, &object);
    for n in manifest_ranking(view, &object).into_iter().take(depth) {
        if n != shared.local && !asked.contains(&n) {
            asked.push(n);
        }
    }
    asked.push(shared.local.clone());
    let states = futures::future::join_all(
        asked
            .iter()
            .map(|n| peers.manifest_states(n, std::slice::from_ref(&object))),
    )
    .await;
    let mut seen = Vec::new();
    let mut held: Vec<(ManifestVersion, NodeId)> = Vec::new();
    for (node, st) in asked.into_iter().zip(states) {
        let Some(st) = st.ok().and_then(|v| v.into_iter().next()) else {
            continue;
        };
        seen.extend(st.removed);
        if let Some(v) = st.held {
            seen.push(v.generation);
            held.push((v, node));
        }
    }
    held.sort();
    let mut existing = None;
    for (_, node) in held.into_iter().rev() {
        match peers.manifest(&node, object).await {
            Ok(Some(m)) => {
                existing = Some(m);
                break;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "manifest lookup failed"),
        }
    }
    (existing, seen)
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
        generation: Some(m.generation),
    }
}

/// Reads, encodes and writes every segment; returns each segment's holders
/// in order. `written` collects every shard stored, for clean-up.
#[allow(clippy::too_many_arguments)]
async fn put_segments(
    shared: &Arc<Shared>,
    s: &mut impl PutSource,
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
            // Reserved before the bytes are read, released when the
            // segment is stored (the reservation moves into its task).
            let cost = put_segment_cost(&g, len as u64);
            let reserved = match shared.memory.try_reserve(cost) {
                Some(r) => r,
                None => {
                    // The codec's work buffers are counted in the segment's
                    // reservation; a put that waits for its next one gives
                    // them back first, so that waiting puts hold nothing
                    // outside the budget (three waiting k=1 m=5 puts of
                    // 8 MiB segments held ~90 MiB beyond a 96 MiB budget).
                    encoder.release_buffers();
                    shared.memory.reserve(cost).await
                }
            };
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await?;
            shared.metrics.received(len as u64);
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
                let r = write_segment(&shared, &view, key, owner, shards, usize::from(g.m)).await;
                drop(reserved);
                r
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
    let shard_bytes = shards.first().map_or(0, |b| b.len() as u64);
    let targets: Vec<NodeId> = match place_stripe_sized(view, key, n, max_volatile, shard_bytes) {
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
            .map(|((node, bytes), id)| shared.peers().place_shard(view, node, *id, bytes.clone())),
    )
    .await;
    let mut holders: Vec<Option<NodeId>> = vec![None; n];
    let mut failed = Vec::new();
    for (i, r) in first.into_iter().enumerate() {
        match r {
            Ok(()) => holders[i] = Some(targets[i].clone()),
            Err(e) => failed.push((i, 1usize, e.to_string())),
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
            match shared
                .peers()
                .place_shard(view, &node, ids[i], shards[i].clone())
                .await
            {
                Ok(()) => {
                    holders[i] = Some(node);
                    break;
                }
                Err(e) => last = e.to_string(),
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

/// Releases the copies a failed put stored (its own references only: a
/// copy that another object or an earlier upload owns stays). A holder
/// that cannot be reached gets a pending release.
async fn cleanup(shared: &Shared, written: &[(ShardSlot, NodeId)]) {
    let mut by_node: BTreeMap<NodeId, Vec<ShardSlot>> = BTreeMap::new();
    for (id, node) in written {
        by_node.entry(node.clone()).or_default().push(*id);
    }
    let peers = shared.peers();
    for (node, slots) in by_node {
        peers.release_or_keep(&node, &slots).await;
    }
}

/// Nodes that should hold an object's manifest, best first
/// ([`repair::manifest_ranking`], owned).
fn manifest_ranking(view: &View, object: &ObjectId) -> Vec<NodeId> {
    repair::manifest_ranking(view, object)
        .into_iter()
        .cloned()
        .collect()
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
                .map(|node| shared.peers().put_manifest(node, m.object, &bytes)),
        )
        .await;
        for r in results {
            match r {
                Ok(()) => stored += 1,
                Err(e) => last = e.to_string(),
            }
        }
    }
    Ok(stored)
}

/// The manifest of `object`: from this node if it holds a replica, else
/// from the first `depth` nodes of the manifest ranking, in order; then
/// the newest of the top `r` replicas.
pub(crate) async fn find_manifest(
    shared: &Arc<Shared>,
    view: &View,
    object: ObjectId,
    depth: usize,
) -> Option<Manifest> {
    find_manifest_for(shared, view, object, depth, Freshness::Newest).await
}

/// Which replica of a manifest a lookup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// The newest of the top `r` (placement after a repair, generations
    /// for references and collection, owners for the gate).
    Newest,
    /// Any valid replica when the object is inline: its bytes are checked
    /// against the object ID, and versions differ only in bookkeeping the
    /// reader does not use. A striped object still gets the newest.
    AnyInline,
}

async fn find_manifest_for(
    shared: &Arc<Shared>,
    view: &View,
    object: ObjectId,
    depth: usize,
    freshness: Freshness,
) -> Option<Manifest> {
    let ranking = manifest_ranking(view, &object);
    let peers = shared.peers();
    let fetch = |node: &NodeId| {
        let node = node.clone();
        async move {
            peers.manifest(&node, object).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "manifest lookup failed");
                None
            })
        }
    };
    let mut found = fetch(&shared.local).await;
    let mut asked = Vec::new();
    if found.is_none() {
        for node in ranking.iter().take(depth) {
            if *node == shared.local {
                continue;
            }
            asked.push(node.clone());
            if let Some(m) = fetch(node).await {
                found = Some(m);
                break;
            }
        }
    }
    let mut best = found?;
    if freshness == Freshness::AnyInline && best.is_inline() {
        return Some(best);
    }
    // Replicas can lag behind a repair: read the top r and keep the newest.
    let r = manifest_replicas(&best.geometry);
    let others: Vec<NodeId> = ranking
        .into_iter()
        .take(r)
        .filter(|n| *n != shared.local && !asked.contains(n))
        .collect();
    // Ask their versions first and fetch only a newer manifest: an inline
    // object's manifest carries its bytes, which the reader needs once.
    let states = futures::future::join_all(
        others
            .iter()
            .map(|n| peers.manifest_states(n, std::slice::from_ref(&object))),
    )
    .await;
    let mut newer: Vec<(ManifestVersion, NodeId)> = others
        .into_iter()
        .zip(states)
        .filter_map(|(n, st)| {
            let held = st.ok()?.first()?.held?;
            Some((held, n))
        })
        .collect();
    newer.sort();
    let best_v = best.version();
    for (held, node) in newer.into_iter().rev() {
        if held <= best_v {
            break;
        }
        if let Some(m) = fetch(&node).await {
            if m.version() > best_v {
                best = m;
                break;
            }
        }
    }
    Some(best)
}

pub(crate) async fn require_manifest(
    shared: &Arc<Shared>,
    object: ObjectId,
) -> Result<Manifest, DataError> {
    let view = shared.membership().view();
    find_manifest(shared, &view, object, MANIFEST_SEARCH)
        .await
        .ok_or(DataError::UnknownObject(object))
}

/// [`require_manifest`] for a reader that takes its metadata from
/// elsewhere (the S3 gateway: a name record): an inline object's first
/// replica found is returned without asking the others' versions, which
/// is two of a small get's control requests.
pub(crate) async fn read_manifest(
    shared: &Arc<Shared>,
    object: ObjectId,
) -> Result<Manifest, DataError> {
    let view = shared.membership().view();
    find_manifest_for(shared, &view, object, MANIFEST_SEARCH, Freshness::AnyInline)
        .await
        .ok_or(DataError::UnknownObject(object))
}

/// Where [`get`] sends an object: the client protocol's stream
/// ([`StreamSink`]) or the admin API's download body.
pub(crate) trait ObjectSink {
    /// The object was found: its size and metadata, before any byte.
    async fn begin(&mut self, size: u64, meta: &Metadata) -> Result<(), DataError>;
    /// The next bytes, each shard of them verified.
    async fn data(&mut self, bytes: Vec<u8>) -> Result<(), DataError>;
    /// The read failed after `begin` (also when the whole object does not
    /// hash to its ID); [`get`] returns `e` after this.
    async fn fail(&mut self, e: &DataError) -> Result<(), DataError>;
    /// Every byte was sent and the object hashed to its ID.
    async fn end(&mut self, skipped: Vec<SkippedShard>) -> Result<(), DataError>;
    /// Whether the reader behind this sink hashes every byte against the
    /// object ID itself, so that [`get`] need not: the client protocol's
    /// reader always does (`objects::receive` refuses an object that does
    /// not hash to its ID). The S3 gateway and the admin API serve clients
    /// that do not, and keep the check here.
    fn reader_verifies(&self) -> bool {
        false
    }
}

/// The client protocol's answer to a get: an `Object` frame, `Data`
/// chunks, then `End` or `Error`.
struct StreamSink<'a>(&'a mut ClientStream);

impl ObjectSink for StreamSink<'_> {
    fn reader_verifies(&self) -> bool {
        true
    }

    async fn begin(&mut self, size: u64, meta: &Metadata) -> Result<(), DataError> {
        let meta = meta.clone();
        write_frame(self.0, &ClientResponse::Object { size, meta }).await?;
        Ok(())
    }

    async fn data(&mut self, bytes: Vec<u8>) -> Result<(), DataError> {
        write_frame(
            self.0,
            &Chunk::Data {
                len: bytes.len() as u32,
            },
        )
        .await?;
        self.0.write_all(&bytes).await?;
        Ok(())
    }

    async fn fail(&mut self, e: &DataError) -> Result<(), DataError> {
        write_frame(self.0, &Chunk::Error(e.remote())).await?;
        self.0.flush().await?;
        Ok(())
    }

    async fn end(&mut self, mut skipped: Vec<SkippedShard>) -> Result<(), DataError> {
        skipped.truncate(4096);
        write_frame(self.0, &Chunk::End { skipped }).await?;
        self.0.flush().await?;
        Ok(())
    }
}

/// Reads `object` segment by segment (each verified shard by shard, then
/// the whole against its ID, unless the sink's reader checks the whole
/// itself: [`ObjectSink::reader_verifies`]) into `sink`. For the client
/// protocol, the S3 gateway and the admin API's download alike.
#[tracing::instrument(skip_all, fields(object = %object.short()))]
pub(crate) async fn get(
    shared: &Arc<Shared>,
    sink: &mut impl ObjectSink,
    object: ObjectId,
    gate: Gate<'_>,
) -> Result<(), DataError> {
    let manifest = require_manifest(shared, object).await?;
    get_found(shared, sink, Arc::new(manifest), gate).await
}

/// [`get`] of an object whose manifest the caller found already (S3 finds
/// it before answering, so that a missing object is an error, not a short
/// body): a second lookup would cost a small object's get a third of its
/// control requests.
pub(crate) async fn get_found(
    shared: &Arc<Shared>,
    sink: &mut impl ObjectSink,
    manifest: Arc<Manifest>,
    gate: Gate<'_>,
) -> Result<(), DataError> {
    let object = manifest.object;
    gate(&manifest)?;
    sink.begin(manifest.size, &manifest.meta).await?;
    if let Some(bytes) = &manifest.inline {
        return get_inline(shared, sink, object, bytes).await;
    }
    // A second BLAKE3 pass over the object when the reader makes its own
    // (the shards are verified here either way): about 5 % of an entry
    // peer's CPU on a get.
    let mut hasher = (!sink.reader_verifies()).then(Hasher::new);
    let mut skipped = Vec::new();
    let mut in_flight = FuturesOrdered::new();
    let mut next = 0usize;
    let total = manifest.segments.len();
    loop {
        while next < total && in_flight.len() < SEGMENTS_IN_FLIGHT {
            let shared = shared.clone();
            let manifest = manifest.clone();
            let idx = next;
            let len = manifest.geometry.segment_len(manifest.size, idx as u64);
            let cost = get_segment_cost(&manifest.geometry, len);
            // Only this loop releases this get's reservations (once their
            // segments are sent on), so it waits for bytes only while it
            // holds none; otherwise it sends what it has first. Waiting
            // while holding deadlocked a get whose next segment did not fit
            // beside its first, and concurrent gets that each held one.
            let reserved = if in_flight.is_empty() {
                shared.memory.reserve(cost).await
            } else if let Some(r) = shared.memory.try_reserve(cost) {
                r
            } else {
                break;
            };
            // A task, so that fetching goes on while the client is written to.
            // The reservation is held until the segment is sent on.
            let task = tokio::spawn(async move {
                read_segment(&shared, &manifest, idx)
                    .await
                    .map_err(DataError::from)
                    .map(|r| (r, reserved))
            });
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
            Ok(((bytes, mut skip), reserved)) => {
                if let Some(h) = hasher.as_mut() {
                    h.update(&bytes);
                }
                skipped.append(&mut skip);
                let len = bytes.len() as u64;
                sink.data(bytes).await?;
                drop(reserved);
                shared.metrics.sent(len);
            }
            Err(e) => {
                sink.fail(&e).await?;
                return Err(e);
            }
        }
    }
    if let Some(h) = hasher {
        require_id(sink, object, ObjectId::from_hash(h.finalize())).await?;
    }
    for sk in &skipped {
        tracing::warn!(segment = sk.segment, shard = %sk.shard.short(), holder = %sk.holder.short(), reason = %sk.reason, "shard skipped on read");
    }
    sink.end(skipped).await
}

/// Fails the read, telling the sink first, when its bytes hashed to
/// `actual` instead of `object`.
async fn require_id(
    sink: &mut impl ObjectSink,
    object: ObjectId,
    actual: ObjectId,
) -> Result<(), DataError> {
    if actual == object {
        return Ok(());
    }
    let e = DataError::Integrity {
        expected: object,
        actual,
    };
    sink.fail(&e).await?;
    Err(e)
}

/// The read of an inline object: its bytes, checked against the ID again
/// (the manifest's decoding checked them once already).
async fn get_inline(
    shared: &Shared,
    sink: &mut impl ObjectSink,
    object: ObjectId,
    bytes: &[u8],
) -> Result<(), DataError> {
    require_id(sink, object, ObjectId::of(bytes)).await?;
    if !bytes.is_empty() {
        sink.data(bytes.to_vec()).await?;
    }
    shared.metrics.sent(bytes.len() as u64);
    sink.end(Vec::new()).await
}

/// Where an inline object is: the members among its top `m + 1` manifest
/// replicas that hold this version (each answer comes from a manifest the
/// replica decoded, which re-checks the bytes against the ID), and its
/// health: all of them, healthy; fewer, degraded (still readable; repair
/// pushes the missing replicas).
async fn inline_replicas(shared: &Shared, view: &View, m: &Manifest) -> (Vec<NodeId>, Health) {
    let want = m.version();
    let r = manifest_replicas(&m.geometry);
    let top: Vec<NodeId> = manifest_ranking(view, &m.object)
        .into_iter()
        .take(r)
        .collect();
    let peers = shared.peers();
    let states = futures::future::join_all(
        top.iter()
            .map(|n| peers.manifest_states(n, std::slice::from_ref(&m.object))),
    )
    .await;
    let good: Vec<NodeId> = top
        .into_iter()
        .zip(states)
        .filter(|(_, s)| {
            s.as_ref()
                .ok()
                .and_then(|v| v.first())
                .and_then(|st| st.held)
                .is_some_and(|v| v >= want)
        })
        .map(|(n, _)| n)
        .collect();
    let health = if good.len() >= r {
        Health::Healthy
    } else {
        Health::Degraded
    };
    (good, health)
}

/// The part of a stat answer the manifest alone gives (no segments).
fn stat_of(m: &Manifest, health: Health) -> ObjectStat {
    ObjectStat {
        object: m.object,
        size: m.size,
        codec: m.geometry.codec,
        k: m.geometry.k,
        m: m.geometry.m,
        segment_size: m.geometry.segment_size,
        meta: m.meta.clone(),
        health,
        segments: Vec::new(),
        durability_target: m.durability_target,
        durability_now: None,
        inline_replicas: Vec::new(),
        first_segment: 0,
        segment_count: None,
    }
}

async fn stat(
    shared: &Arc<Shared>,
    object: ObjectId,
    gate: Gate<'_>,
    page: (u64, Option<usize>),
) -> Result<ObjectStat, DataError> {
    let m = require_manifest(shared, object).await?;
    gate(&m)?;
    let total = m.segments.len();
    let first = usize::try_from(page.0).unwrap_or(usize::MAX).min(total);
    let cap = match page.1 {
        Some(usize::MAX) => usize::MAX,
        asked => asked
            .unwrap_or(usize::MAX)
            .min(dynostore_protocol::wire::stat_page_segments(m.geometry.n())),
    };
    let wanted = &m.segments[first..first.saturating_add(cap).min(total)];
    if m.is_inline() {
        let view = shared.membership().view();
        let (replicas, health) = inline_replicas(shared, &view, &m).await;
        return Ok(ObjectStat {
            inline_replicas: replicas,
            segment_count: Some(0),
            ..stat_of(&m, health)
        });
    }
    // Ask each holder once to re-hash all of its shards of this object.
    let mut by_holder: BTreeMap<u32, Vec<ShardId>> = BTreeMap::new();
    for seg in wanted {
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
    let mut live: Vec<u32> = Vec::with_capacity(wanted.len());
    let segments: Vec<SegmentStat> = wanted
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
            let distinct: HashSet<&NodeId> =
                shards.iter().filter(|s| s.ok).map(|s| &s.holder).collect();
            live.push(distinct.len() as u32);
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
        segments,
        durability_now: Some(Durability(
            durability::object_durability(m.geometry.k, m.geometry.m, &live, &shared.writes.model)
                .annual(),
        )),
        first_segment: first as u64,
        segment_count: Some(total as u64),
        ..stat_of(&m, health)
    })
}

/// The shards among `shards` that `node` holds intact.
async fn verify_on(shared: &Shared, node: &NodeId, shards: Vec<ShardId>) -> HashSet<ShardId> {
    match shared.peers().verify(node, &shards).await {
        Ok(ok) => shards
            .into_iter()
            .zip(ok)
            .filter(|(_, ok)| *ok)
            .map(|(s, _)| s)
            .collect(),
        Err(e) => {
            tracing::debug!(node = %node.short(), error = %e, "verify failed");
            HashSet::new()
        }
    }
}

async fn remove(
    shared: &Arc<Shared>,
    object: ObjectId,
    gate: Gate<'_>,
) -> Result<ClientResponse, DataError> {
    let m = require_manifest(shared, object).await?;
    gate(&m)?;
    Ok(remove_manifest(shared, &m).await)
}

/// Removes `generation` of `object` if it is the one stored and it is
/// collectable (written by the S3 gateway, see `refs`); returns whether it
/// did. A later generation (a put by ID that found this one collectable,
/// or a re-upload) is untouched: the tombstone names this generation.
pub(crate) async fn remove_collectable(
    shared: &Arc<Shared>,
    object: ObjectId,
    generation: Generation,
) -> Result<bool, DataError> {
    let m = require_manifest(shared, object).await?;
    if m.generation != generation || !m.meta.collectable {
        return Ok(false);
    }
    remove_manifest(shared, &m).await;
    Ok(true)
}

/// Releases `m`'s shard copies and spreads the tombstone of its generation.
async fn remove_manifest(shared: &Arc<Shared>, m: &Manifest) -> ClientResponse {
    let object = m.object;
    let peers = shared.peers();
    let shards = peers.release_manifest(m).await;
    // Manifest replicas may sit anywhere the ranking pointed over time: ask
    // every live member. Each keeps a tombstone, from which members that
    // are down now learn of the removal when they return.
    let members: Vec<NodeId> = shared
        .membership()
        .entries()
        .filter(|(_, e)| e.state != MemberState::Down)
        .map(|(id, _)| id.clone())
        .collect();
    let generation = m.generation;
    let removed = futures::future::join_all(
        members
            .iter()
            .map(|node| peers.remove_manifest(node, object, generation)),
    )
    .await;
    let mut manifests = 0u32;
    for r in removed {
        match r {
            Ok(true) => manifests += 1,
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "tombstone not stored on a member"),
        }
    }
    ClientResponse::Removed { shards, manifests }
}

/// One page of the objects the network holds: the union of every live
/// member's page after `after`. A member's page is complete only up to its
/// last entry when it is full, so the merged page stops at the smallest
/// such last entry; `next` is where the following page starts.
async fn list(
    shared: &Arc<Shared>,
    after: Option<ObjectId>,
    limit: u32,
) -> Result<(Vec<ObjectSummary>, Option<ObjectId>), DataError> {
    let limit = limit.clamp(1, MAX_LISTED_OBJECTS as u32);
    let members: Vec<NodeId> = shared
        .membership()
        .entries()
        .filter(|(id, e)| **id == shared.local || e.state == MemberState::Alive)
        .map(|(id, _)| id.clone())
        .collect();
    let peers = shared.peers();
    let answers = futures::future::join_all(
        members
            .iter()
            .map(|node| peers.list_manifests(node, after, limit)),
    )
    .await;
    let mut all: BTreeMap<ObjectId, ObjectSummary> = BTreeMap::new();
    // The smallest last entry of a full page: nothing past it is known.
    let mut known_to: Option<ObjectId> = None;
    for (node, a) in members.iter().zip(answers) {
        match a {
            Ok(objects) => {
                if objects.len() >= limit as usize {
                    if let Some(last) = objects.last() {
                        known_to = Some(known_to.map_or(last.object, |k| k.min(last.object)));
                    }
                }
                for o in objects {
                    all.entry(o.object).or_insert(o);
                }
            }
            Err(e) if *node == shared.local => {
                return Err(DataError::Internal(format!("local manifests: {e}")))
            }
            Err(e) => tracing::debug!(error = %e, "a member did not list its manifests"),
        }
    }
    let page: Vec<ObjectSummary> = all
        .into_values()
        .filter(|o| known_to.is_none_or(|k| o.object <= k))
        .take(limit as usize)
        .collect();
    let more = known_to.is_some() || page.len() >= limit as usize;
    let next = if more {
        page.last().map(|o| o.object)
    } else {
        None
    };
    Ok((page, next))
}

/// The health of `m` from [`slot_presence`], holders that do not answer
/// counted as missing.
async fn object_health(shared: &Shared, view: &View, m: &Manifest) -> Health {
    if m.is_inline() {
        return inline_replicas(shared, view, m).await.1;
    }
    let k = usize::from(m.geometry.k);
    let n = m.geometry.n();
    slot_presence(shared, view, m)
        .await
        .iter()
        .map(|seg| {
            let good = seg.iter().filter(|p| **p == Presence::Present).count();
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
