//! The bulk shard protocol over raw libp2p streams, both sides.
//!
//! One request per stream (see `dynostore_protocol::wire`): a
//! [`ShardRequest`] frame, for `Put` followed by the shard bytes; then one
//! [`ShardResponse`] frame, for `Data` followed by the bytes. The server
//! verifies a `Put` against its ID before storing it (inside the store) and
//! the client verifies a `Get` before returning it, so neither side ever
//! trusts the other's bytes.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use libp2p_stream::Control;

use dynostore_protocol::manifest::{Manifest, ShardSlot};
use dynostore_protocol::wire::{ErrorKind, RemoteError, ShardRequest, ShardResponse};
use dynostore_protocol::{ObjectId, ShardId};

use crate::manifests::ManifestStore;
use crate::net::{read_body, read_frame, shard_protocol, write_frame};
use crate::store::ShardStore;

/// Failure of a shard request seen from the client side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardClientError {
    #[error("cannot open a shard stream to {peer}: {reason}")]
    Open { peer: PeerId, reason: String },
    #[error("shard stream to {peer} failed: {source}")]
    Io { peer: PeerId, source: io::Error },
    #[error("{peer} timed out after {after:?}")]
    Timeout { peer: PeerId, after: Duration },
    #[error("{peer} refused shard {shard}: {error}")]
    Remote {
        peer: PeerId,
        shard: ShardId,
        error: RemoteError,
    },
    #[error("{peer} answered shard {shard} with bytes that hash to {actual}")]
    Integrity {
        peer: PeerId,
        shard: ShardId,
        actual: ShardId,
    },
    #[error("{peer} sent an invalid manifest for {object}: {reason}")]
    BadManifest {
        peer: PeerId,
        object: ObjectId,
        reason: String,
    },
    #[error("{peer} sent an unexpected answer: {what}")]
    Protocol { peer: PeerId, what: String },
}

impl ShardClientError {
    /// A failure of the stream itself rather than an answer: worth another
    /// try. libp2p-stream 0.5.0-alpha resets inbound streams that arrive
    /// while its one-slot accept queue is full, which the client sees as a
    /// closed stream; every request here is idempotent, so it is retried.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            ShardClientError::Io { .. } | ShardClientError::Open { .. }
        )
    }

    /// The remote error kind, when the peer answered with one.
    pub fn remote_kind(&self) -> Option<ErrorKind> {
        match self {
            ShardClientError::Remote { error, .. } => Some(error.kind),
            _ => None,
        }
    }
}

async fn open(control: &mut Control, peer: PeerId) -> Result<Stream, ShardClientError> {
    control
        .open_stream(peer, shard_protocol())
        .await
        .map_err(|e| ShardClientError::Open {
            peer,
            reason: e.to_string(),
        })
}

async fn with_timeout<T>(
    peer: PeerId,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T, ShardClientError>>,
) -> Result<T, ShardClientError> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| ShardClientError::Timeout { peer, after })?
}

/// One exchange on a fresh stream: the request frame and `body`, then the
/// answer frame. The stream is returned for reading an answer's body.
async fn exchange(
    control: &mut Control,
    peer: PeerId,
    req: &ShardRequest,
    body: &[u8],
) -> Result<(Stream, ShardResponse), ShardClientError> {
    let io_err = |source| ShardClientError::Io { peer, source };
    let mut s = open(control, peer).await?;
    write_frame(&mut s, req).await.map_err(io_err)?;
    if !body.is_empty() {
        s.write_all(body).await.map_err(io_err)?;
    }
    s.flush().await.map_err(io_err)?;
    let resp = read_frame(&mut s).await.map_err(io_err)?;
    Ok((s, resp))
}

/// Reads the `len` bytes that follow an answer frame and closes the stream.
async fn answer_body(mut s: Stream, peer: PeerId, len: u32) -> Result<Vec<u8>, ShardClientError> {
    let body = read_body(&mut s, len as usize)
        .await
        .map_err(|source| ShardClientError::Io { peer, source })?;
    let _ = s.close().await;
    Ok(body)
}

/// The error for an answer that is a refusal or does not fit the request.
fn refused(peer: PeerId, shard: ShardId, resp: ShardResponse, what: &str) -> ShardClientError {
    match resp {
        ShardResponse::Error(error) => ShardClientError::Remote { peer, shard, error },
        other => ShardClientError::Protocol {
            peer,
            what: format!("{other:?} to a {what}"),
        },
    }
}

/// The manifest's object ID in the `shard` field of errors about it.
fn as_key(object: ObjectId) -> ShardId {
    ShardId::from_bytes(*object.as_bytes())
}

async fn put_shard_once(
    control: &mut Control,
    peer: PeerId,
    slot: ShardSlot,
    bytes: &[u8],
    durable: bool,
    timeout: Duration,
) -> Result<(), ShardClientError> {
    let id = slot.shard;
    with_timeout(peer, timeout, async {
        let req = ShardRequest::Put {
            shard: id,
            len: bytes.len() as u32,
            owner: slot.owner,
            durable,
        };
        let (mut s, resp) = exchange(control, peer, &req, bytes).await?;
        let _ = s.close().await;
        match resp {
            ShardResponse::Stored { shard } if shard == id => Ok(()),
            other => Err(refused(peer, id, other, "put")),
        }
    })
    .await
}

async fn get_shard_once(
    control: &mut Control,
    peer: PeerId,
    id: ShardId,
    timeout: Duration,
) -> Result<Bytes, ShardClientError> {
    with_timeout(peer, timeout, async {
        let (s, resp) = exchange(control, peer, &ShardRequest::Get { shard: id }, &[]).await?;
        match resp {
            ShardResponse::Data { shard, len } if shard == id => {
                let body = answer_body(s, peer, len).await?;
                let actual = ShardId::of(&body);
                if actual != id {
                    return Err(ShardClientError::Integrity {
                        peer,
                        shard: id,
                        actual,
                    });
                }
                Ok(Bytes::from(body))
            }
            other => Err(refused(peer, id, other, "get")),
        }
    })
    .await
}

async fn put_manifest_once(
    control: &mut Control,
    peer: PeerId,
    object: ObjectId,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), ShardClientError> {
    with_timeout(peer, timeout, async {
        let req = ShardRequest::PutManifest {
            object,
            len: bytes.len() as u32,
        };
        let (mut s, resp) = exchange(control, peer, &req, bytes).await?;
        let _ = s.close().await;
        match resp {
            ShardResponse::ManifestStored { object: o } if o == object => Ok(()),
            other => Err(refused(peer, as_key(object), other, "manifest put")),
        }
    })
    .await
}

async fn get_manifest_once(
    control: &mut Control,
    peer: PeerId,
    object: ObjectId,
    timeout: Duration,
) -> Result<Option<Manifest>, ShardClientError> {
    with_timeout(peer, timeout, async {
        let req = ShardRequest::GetManifest { object };
        let (s, resp) = exchange(control, peer, &req, &[]).await?;
        match resp {
            ShardResponse::Manifest { object: o, len } if o == object => {
                let body = answer_body(s, peer, len).await?;
                let bad = |reason: String| ShardClientError::BadManifest {
                    peer,
                    object,
                    reason,
                };
                let m = Manifest::decode(&body).map_err(|e| bad(e.to_string()))?;
                if m.object != object {
                    return Err(bad(format!("it describes {}", m.object)));
                }
                Ok(Some(m))
            }
            ShardResponse::Error(RemoteError {
                kind: ErrorKind::NotFound,
                ..
            }) => Ok(None),
            other => Err(refused(peer, as_key(object), other, "manifest get")),
        }
    })
    .await
}

/// Attempts per request when the stream fails (see `is_transient`).
const ATTEMPTS: u32 = 4;

async fn retry<T, F, Fut>(mut f: F) -> Result<T, ShardClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ShardClientError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "retrying a shard request");
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// Stores `bytes` as shard `slot.shard` on `peer`, owned by `slot.owner`;
/// returns once the peer reports the copy and the reference durable.
pub async fn put_shard(
    control: &mut Control,
    peer: PeerId,
    slot: ShardSlot,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), ShardClientError> {
    put_shard_to(control, peer, slot, bytes, false, timeout).await
}

/// [`put_shard`], saying whether the writer counts the copy as durable: a
/// peer then keeps it out of its memory containers or refuses it.
pub async fn put_shard_to(
    control: &mut Control,
    peer: PeerId,
    slot: ShardSlot,
    bytes: &[u8],
    durable: bool,
    timeout: Duration,
) -> Result<(), ShardClientError> {
    retry(|| {
        let mut c = control.clone();
        async move { put_shard_once(&mut c, peer, slot, bytes, durable, timeout).await }
    })
    .await
}

/// Fetches shard `id` from `peer` and verifies it.
pub async fn get_shard(
    control: &mut Control,
    peer: PeerId,
    id: ShardId,
    timeout: Duration,
) -> Result<Bytes, ShardClientError> {
    retry(|| {
        let mut c = control.clone();
        async move { get_shard_once(&mut c, peer, id, timeout).await }
    })
    .await
}

/// Stores a manifest replica on `peer`; returns once it is durable there.
pub async fn put_manifest(
    control: &mut Control,
    peer: PeerId,
    object: ObjectId,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), ShardClientError> {
    retry(|| {
        let mut c = control.clone();
        async move { put_manifest_once(&mut c, peer, object, bytes, timeout).await }
    })
    .await
}

/// Fetches and validates the manifest of `object` from `peer`; `None` when
/// the peer holds none.
pub async fn get_manifest(
    control: &mut Control,
    peer: PeerId,
    object: ObjectId,
    timeout: Duration,
) -> Result<Option<Manifest>, ShardClientError> {
    retry(|| {
        let mut c = control.clone();
        async move { get_manifest_once(&mut c, peer, object, timeout).await }
    })
    .await
}

fn remote(kind: ErrorKind, message: impl ToString) -> ShardResponse {
    let mut message = message.to_string();
    message.truncate(dynostore_protocol::wire::MAX_TEXT_LEN);
    ShardResponse::Error(RemoteError { kind, message })
}

/// Serves one inbound shard stream. Returns the number of shard bytes moved.
pub async fn serve_stream(
    mut s: Stream,
    peer: PeerId,
    store: ShardStore,
    manifests: ManifestStore,
    timeout: Duration,
) -> io::Result<u64> {
    let work = async {
        let req: ShardRequest = read_frame(&mut s).await?;
        let (resp, body, moved) = match req {
            ShardRequest::Put {
                shard,
                len,
                owner,
                durable,
            } => {
                let bytes = read_body(&mut s, len as usize).await?;
                let n = bytes.len() as u64;
                let slot = ShardSlot { shard, owner };
                let stored = if durable {
                    store.put_durable(slot, Bytes::from(bytes)).await
                } else {
                    store.put_for(slot, Bytes::from(bytes)).await
                };
                match stored {
                    Ok(()) => (ShardResponse::Stored { shard }, None, n),
                    Err(e) => {
                        tracing::warn!(%peer, shard = %shard.short(), error = %e, "refused shard");
                        (remote(e.kind(), &e), None, 0)
                    }
                }
            }
            ShardRequest::Get { shard } => match store.get(&shard).await {
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    (
                        ShardResponse::Data {
                            shard,
                            len: bytes.len() as u32,
                        },
                        Some(bytes),
                        n,
                    )
                }
                Err(e) => (remote(e.kind(), &e), None, 0),
            },
            ShardRequest::PutManifest { object, len } => {
                let bytes = read_body(&mut s, len as usize).await?;
                match manifests.put(object, &bytes).await {
                    Ok(()) => (ShardResponse::ManifestStored { object }, None, 0),
                    Err(e) => {
                        tracing::warn!(%peer, object = %object.short(), error = %e, "refused manifest");
                        (remote(e.kind(), &e), None, 0)
                    }
                }
            }
            ShardRequest::GetManifest { object } => match manifests.get_bytes(&object) {
                Ok(Some(bytes)) => (
                    ShardResponse::Manifest {
                        object,
                        len: bytes.len() as u32,
                    },
                    Some(Bytes::from(bytes)),
                    0,
                ),
                Ok(None) => (
                    remote(ErrorKind::NotFound, format!("no manifest for {object}")),
                    None,
                    0,
                ),
                Err(e) => (remote(e.kind(), &e), None, 0),
            },
        };
        write_frame(&mut s, &resp).await?;
        if let Some(body) = body {
            s.write_all(&body).await?;
        }
        s.flush().await?;
        s.close().await?;
        Ok(moved)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("shard stream from {peer} took longer than {timeout:?}"),
        )),
    }
}
