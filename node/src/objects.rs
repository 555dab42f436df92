//! Client side of the object protocol: what `dynostore put/get/stat/rm/ls`
//! do over a [`Client`] connection to an entry peer.
//!
//! Put hashes the file first (its BLAKE3 is the object ID the entry peer
//! places by), then streams it. Get writes to `FILE.partial`, hashes every
//! byte it receives, and renames to `FILE` only when the whole object
//! matches its ID, so a failed download never looks complete.

use std::io;
use std::path::{Path, PathBuf};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::Stream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use dynostore_protocol::durability::Durability;
use dynostore_protocol::erasure::{CodecKind, Geometry, MAX_SEGMENT_SIZE};
use dynostore_protocol::manifest::Metadata;
use dynostore_protocol::wire::{
    Chunk, ClientEnvelope, ClientRequest, ClientResponse, ObjectStat, PutReceipt, RemoteError,
    SkippedShard,
};
use dynostore_protocol::ObjectId;

use crate::client::Client;
use crate::net::{client_protocol, read_frame, write_frame};

/// Failures of an object operation, as the user sees them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("{path} is a directory (use put -r DIR to store a tree)")]
    IsDirectory { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    WriteFile { path: PathBuf, source: io::Error },
    #[error("bad parameters: {0}")]
    Params(String),
    #[error("{0}")]
    Remote(RemoteError),
    #[error("connection to the entry peer failed: {0}")]
    Stream(String),
    #[error("downloaded bytes hash to {actual}, not to the object ID {expected}; the output was discarded")]
    Integrity {
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error("the entry peer sent {got} bytes, the object has {expected}")]
    Length { expected: u64, got: u64 },
    #[error("unexpected answer from the entry peer: {0}")]
    Protocol(String),
}

impl From<io::Error> for ObjectError {
    fn from(e: io::Error) -> Self {
        ObjectError::Stream(e.to_string())
    }
}

/// Progress callback: called with bytes done so far.
pub trait Progress: Send {
    fn set_len(&mut self, _len: u64) {}
    fn advance(&mut self, _done: u64) {}
}

/// No progress reporting.
#[derive(Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// Parameters of a put.
#[derive(Debug, Clone)]
pub struct PutParams {
    pub codec: CodecKind,
    pub k: u16,
    pub m: u16,
    /// `None`: k MiB, so that shards are 1 MiB.
    pub segment_size: Option<u32>,
    pub name: Option<String>,
    /// An annual durability target: the entry peer chooses `k` and `m`
    /// (those above are ignored). `None` with `k = m = 0`: the entry
    /// peer's defaults (its site's default target, else its default k, m).
    pub durability: Option<Durability>,
    /// The object is stored to be named (`put --name BUCKET/KEY`): its
    /// bytes may be reclaimed once no name refers to it. A put without
    /// it is kept until `rm ID`.
    pub reclaimable: bool,
}

impl PutParams {
    pub fn geometry(&self) -> Result<Geometry, ObjectError> {
        let seg = self
            .segment_size
            .unwrap_or_else(|| (u32::from(self.k) << 20).min(MAX_SEGMENT_SIZE));
        Geometry::new(self.codec, self.k, self.m, seg)
            .map_err(|e| ObjectError::Params(e.to_string()))
    }

    /// Whether the entry peer chooses the geometry.
    fn entry_chooses(&self) -> bool {
        self.durability.is_some() || (self.k == 0 && self.m == 0)
    }

    /// The request's `(codec, k, m, segment_size)`: checked here when the
    /// client names the geometry; else `k = m = 0` and a segment size of 0
    /// (k MiB at the entry peer) unless one was given.
    fn request_geometry(&self) -> Result<(CodecKind, u16, u16, u32), ObjectError> {
        if self.entry_chooses() {
            if let Some(d) = self.durability {
                Durability::target(d.0).map_err(|e| ObjectError::Params(e.to_string()))?;
            }
            return Ok((self.codec, 0, 0, self.segment_size.unwrap_or(0)));
        }
        let g = self.geometry()?;
        Ok((g.codec, g.k, g.m, g.segment_size))
    }
}

/// Sends a request with the client's token as the stream's first frame.
async fn send_request(
    s: &mut Stream,
    client: &Client,
    request: ClientRequest,
) -> Result<(), ObjectError> {
    let env = ClientEnvelope {
        token: client.token().map(<[u8]>::to_vec),
        request,
    };
    write_frame(s, &env).await?;
    s.flush().await?;
    Ok(())
}

async fn open(client: &Client) -> Result<Stream, ObjectError> {
    client
        .streams()
        .open_stream(client.peer(), client_protocol())
        .await
        .map_err(|e| ObjectError::Stream(e.to_string()))
}

/// Attempts of a request whose stream fails before the entry peer answers.
const ATTEMPTS: u32 = 4;

/// Opens a stream, sends `request` and reads the entry peer's first
/// answer; on a new stream again while the stream fails before any answer.
/// A node takes inbound streams from libp2p-stream's queue of one, so a
/// stream that arrives while the previous one is not yet taken (a burst
/// of requests, a busy node) is reset before its request is read: nothing
/// was done, and asking again is what the operation needs. Each request
/// here can be asked twice: puts are content-addressed, the rest read or
/// remove.
async fn exchange(
    client: &Client,
    request: &ClientRequest,
) -> Result<(Stream, ClientResponse), ObjectError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tried = async {
            let mut s = open(client).await?;
            send_request(&mut s, client, request.clone()).await?;
            let first = read_frame::<ClientResponse, _>(&mut s).await?;
            Ok((s, first))
        }
        .await;
        match tried {
            Err(ObjectError::Stream(e)) if attempt < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "the stream failed before an answer; asking again");
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// BLAKE3 of a file, read in 1 MiB blocks.
pub async fn hash_file(
    path: &Path,
    progress: &mut dyn Progress,
) -> Result<(ObjectId, u64), ObjectError> {
    let read_err = |source| ObjectError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(read_err)?;
    if meta.is_dir() {
        return Err(ObjectError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    let mut f = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        progress.advance(total);
    }
    Ok((ObjectId::from_hash(hasher.finalize()), total))
}

/// Stores one file; returns the receipt once the network holds it durably.
pub async fn put_file(
    client: &Client,
    path: &Path,
    params: &PutParams,
    progress: &mut dyn Progress,
) -> Result<PutReceipt, ObjectError> {
    let (codec, k, m, segment_size) = params.request_geometry()?;
    let (object, size) = hash_file(path, &mut NoProgress).await?;
    progress.set_len(size);
    let meta = Metadata {
        name: params.name.clone(),
        content_type: None,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64),
        owner: None,
        collectable: params.reclaimable,
    };
    let req = ClientRequest::Put {
        object,
        size,
        codec,
        k,
        m,
        segment_size,
        meta,
        durability: params.durability,
    };
    let (s, first) = exchange(client, &req).await?;
    match first {
        ClientResponse::Ready => {}
        ClientResponse::Stored(r) => return Ok(r),
        ClientResponse::Error(e) => return Err(ObjectError::Remote(e)),
        other => return Err(ObjectError::Protocol(format!("{other:?}"))),
    }
    // Send the body while listening for an early answer: an entry peer
    // that gives up mid-way (a node lost, no room) says why at once instead
    // of leaving the client blocked on a full stream.
    let (mut rd, mut wr) = s.split();
    let send = send_body(&mut wr, path, size, progress);
    let recv = read_frame::<ClientResponse, _>(&mut rd);
    futures::pin_mut!(send, recv);
    let resp = match futures::future::select(send, recv).await {
        futures::future::Either::Left((Ok(()), recv)) => recv.await?,
        futures::future::Either::Left((Err(e), recv)) => {
            // The peer may have refused and closed: prefer its reason.
            match tokio::time::timeout(std::time::Duration::from_secs(2), recv).await {
                Ok(Ok(ClientResponse::Error(r))) => return Err(ObjectError::Remote(r)),
                _ => return Err(e),
            }
        }
        futures::future::Either::Right((resp, _)) => resp?,
    };
    match resp {
        ClientResponse::Stored(r) if r.object == object => Ok(r),
        ClientResponse::Error(e) => Err(ObjectError::Remote(e)),
        other => Err(ObjectError::Protocol(format!("{other:?}"))),
    }
}

async fn send_body<W: futures::AsyncWrite + Unpin>(
    wr: &mut W,
    path: &Path,
    size: u64,
    progress: &mut dyn Progress,
) -> Result<(), ObjectError> {
    let read_err = |source| ObjectError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < size {
        let want = buf.len().min((size - sent) as usize);
        let n = f.read(&mut buf[..want]).await.map_err(read_err)?;
        if n == 0 {
            return Err(ObjectError::ReadFile {
                path: path.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while being stored",
                ),
            });
        }
        wr.write_all(&buf[..n]).await?;
        sent += n as u64;
        progress.advance(sent);
    }
    wr.flush().await?;
    Ok(())
}

/// Where a get writes.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

/// Fetches an object; returns its size and the shards the entry peer had to
/// pass over (corrupt or unreachable), which the caller should report.
pub async fn get_object(
    client: &Client,
    object: ObjectId,
    output: &Output,
    progress: &mut dyn Progress,
) -> Result<(u64, Vec<SkippedShard>), ObjectError> {
    get_objects(client, &[object], output, progress).await
}

/// Fetches objects one after the other into one output (the pieces of a
/// multipart object stored as its parts), each verified against its ID;
/// a file appears only once every piece arrived. Returns the total size
/// and the skipped shards.
pub async fn get_objects(
    client: &Client,
    objects: &[ObjectId],
    output: &Output,
    progress: &mut dyn Progress,
) -> Result<(u64, Vec<SkippedShard>), ObjectError> {
    let (mut sink, partial) = open_output(output).await?;
    let result = async {
        let mut total = 0u64;
        let mut skipped = Vec::new();
        for &object in objects {
            let (mut s, size) = start_get(client, object, progress).await?;
            skipped.extend(receive(&mut s, &mut sink, object, size, progress).await?);
            total += size;
        }
        sink.flush()
            .await
            .map_err(|source| write_err(output, source))?;
        Ok((total, skipped))
    }
    .await;
    drop(sink);
    match (&result, output, partial) {
        (Ok(_), Output::File(dest), Some(tmp)) => {
            tokio::fs::rename(&tmp, dest)
                .await
                .map_err(|source| write_err(output, source))?;
        }
        (Err(_), _, Some(tmp)) => {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        _ => {}
    }
    result
}

async fn start_get(
    client: &Client,
    object: ObjectId,
    progress: &mut dyn Progress,
) -> Result<(Stream, u64), ObjectError> {
    let (s, first) = exchange(client, &ClientRequest::Get { object }).await?;
    let size = match first {
        ClientResponse::Object { size, .. } => size,
        ClientResponse::Error(e) => return Err(ObjectError::Remote(e)),
        other => return Err(ObjectError::Protocol(format!("{other:?}"))),
    };
    progress.set_len(size);
    Ok((s, size))
}

/// Fetches an object into `sink` (flushed at the end, not shut down) and
/// verifies it against its ID; returns its size and the skipped shards.
/// The sink has seen every byte by the time this fails with
/// [`ObjectError::Integrity`]: a consumer that must not act on unverified
/// bytes waits for this result (the client-side decryption does).
pub async fn get_into(
    client: &Client,
    object: ObjectId,
    sink: &mut Sink,
    progress: &mut dyn Progress,
) -> Result<(u64, Vec<SkippedShard>), ObjectError> {
    let (mut s, size) = start_get(client, object, progress).await?;
    let skipped = receive(&mut s, sink, object, size, progress).await?;
    sink.flush()
        .await
        .map_err(|source| ObjectError::WriteFile {
            path: PathBuf::from("output"),
            source,
        })?;
    Ok((size, skipped))
}

fn write_err(output: &Output, source: io::Error) -> ObjectError {
    ObjectError::WriteFile {
        path: match output {
            Output::Stdout => PathBuf::from("-"),
            Output::File(p) => p.clone(),
        },
        source,
    }
}

/// Where a get's bytes go.
pub type Sink = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

async fn open_output(output: &Output) -> Result<(Sink, Option<PathBuf>), ObjectError> {
    match output {
        Output::Stdout => Ok((Box::new(tokio::io::stdout()), None)),
        Output::File(dest) => {
            let mut name = dest
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            name.push(".partial");
            let tmp = dest.with_file_name(name);
            let f =
                tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|source| ObjectError::WriteFile {
                        path: tmp.clone(),
                        source,
                    })?;
            Ok((
                Box::new(tokio::io::BufWriter::with_capacity(1 << 20, f)),
                Some(tmp),
            ))
        }
    }
}

async fn receive(
    s: &mut Stream,
    sink: &mut Sink,
    object: ObjectId,
    size: u64,
    progress: &mut dyn Progress,
) -> Result<Vec<SkippedShard>, ObjectError> {
    let mut hasher = blake3::Hasher::new();
    let mut got = 0u64;
    let mut buf = Vec::new();
    loop {
        match read_frame::<Chunk, _>(s).await? {
            Chunk::Data { len } => {
                let len = len as u64;
                if got + len > size {
                    return Err(ObjectError::Length {
                        expected: size,
                        got: got + len,
                    });
                }
                buf.resize(len as usize, 0);
                s.read_exact(&mut buf).await?;
                hasher.update(&buf);
                sink.write_all(&buf)
                    .await
                    .map_err(|source| ObjectError::WriteFile {
                        path: PathBuf::from("output"),
                        source,
                    })?;
                got += len;
                progress.advance(got);
            }
            Chunk::End { skipped } => {
                if got != size {
                    return Err(ObjectError::Length {
                        expected: size,
                        got,
                    });
                }
                let actual = ObjectId::from_hash(hasher.finalize());
                if actual != object {
                    return Err(ObjectError::Integrity {
                        expected: object,
                        actual,
                    });
                }
                return Ok(skipped);
            }
            Chunk::Error(e) => return Err(ObjectError::Remote(e)),
        }
    }
}

/// Sends a one-shot request (stat, rm, ls) and returns the answer.
pub async fn request(client: &Client, req: ClientRequest) -> Result<ClientResponse, ObjectError> {
    let (mut s, resp) = exchange(client, &req).await?;
    let _ = s.close().await;
    match resp {
        ClientResponse::Error(e) => Err(ObjectError::Remote(e)),
        other => Ok(other),
    }
}

/// `stat` of a whole object, page by page (a node answers at most
/// [`dynostore_protocol::wire::stat_page_segments`] segments at a time,
/// fewer if `page` asks): the segments in order, the worst health and the
/// least durability of the pages.
pub async fn stat(
    client: &Client,
    object: ObjectId,
    page: Option<u32>,
) -> Result<ObjectStat, ObjectError> {
    let mut all: Option<ObjectStat> = None;
    let mut next = 0u64;
    loop {
        let req = ClientRequest::Stat {
            object,
            first_segment: next,
            max_segments: page,
        };
        let page = match request(client, req).await? {
            ClientResponse::Stat(st) => st,
            other => return Err(ObjectError::Protocol(format!("{other:?}"))),
        };
        if page.first_segment != next {
            return Err(ObjectError::Protocol(format!(
                "asked for segments from {next}, got them from {}",
                page.first_segment
            )));
        }
        let got = page.segments.len() as u64;
        let total = page.segment_count.unwrap_or(next + got);
        next += got;
        all = Some(match all {
            None => page,
            Some(mut st) => {
                st.health = st.health.max(page.health);
                st.durability_now = match (st.durability_now, page.durability_now) {
                    (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
                    (a, b) => a.or(b),
                };
                st.segments.extend(page.segments);
                st
            }
        });
        if next >= total || got == 0 {
            break;
        }
    }
    all.ok_or_else(|| ObjectError::Protocol("no stat answer".into()))
}
