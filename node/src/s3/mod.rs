//! The S3 gateway: every node with `s3_listen` set serves the S3 API
//! (`s3s` over hyper 1) as an entry peer, like the CLI's.
//!
//! - [`auth`]: S3 keys from user tokens (SigV4 via s3s's `S3Auth`), and
//!   each request authorized by the token (`S3Access`).
//! - [`ops`]: the operations, over [`crate::names`] (buckets, keys,
//!   uploads) and the data path.
//! - here: the listener, with the admin API's kind of limits, and the
//!   spool a streamed body goes through.
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections (more are closed on
//! accept), request heads of [`MAX_HEAD_BYTES`] within [`HEAD_TIMEOUT`],
//! each body chunk within [`BODY_IDLE`], a connection at most
//! [`CONNECTION_LIFETIME`], objects of at most [`MAX_OBJECT_BYTES`] in one
//! PutObject (S3's own limit; larger ones are multipart).

pub mod auth;
pub mod ops;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use md5::Digest;
use s3s::dto::StreamingBlob;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{s3_error, S3Result};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use dynostore_protocol::ObjectId;

use crate::datapath::{DataError, PutSource};
use crate::shared::Shared;

/// Connections served at once; further ones are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest request head.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Time a client has to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A body that sends nothing for this long is cut.
pub const BODY_IDLE: Duration = Duration::from_secs(60);
/// A reader that takes nothing for this long is cut.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest life of one connection (a 5 GiB part at 2 MB/s fits).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// Largest single PutObject or part (S3's limit).
pub const MAX_OBJECT_BYTES: u64 = 5 << 30;

/// Why the S3 gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    #[error("cannot listen for S3 on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the S3 spool directory {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the gateway needs besides [`Shared`].
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Where streamed bodies are spooled (in the node's directory).
    pub spool_dir: PathBuf,
    /// The geometry of objects written through S3.
    pub k: u16,
    pub m: u16,
    /// Multipart uploads untouched for this long are aborted.
    pub upload_expiry: Duration,
    /// Completed uploads of at most this many parts are named as their
    /// parts; larger ones are stored whole (at most `names::MAX_PIECES`).
    pub max_pieces: usize,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, S3Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| S3Error::Bind { addr, source })
}

/// Serves S3 on `listener` until the task is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    cfg: S3Config,
) -> Result<(), S3Error> {
    std::fs::create_dir_all(&cfg.spool_dir).map_err(|source| S3Error::Spool {
        path: cfg.spool_dir.clone(),
        source,
    })?;
    let keys = auth::Keys::new(shared.clone());
    let gateway = ops::Gateway::new(shared.clone(), keys.clone(), cfg.clone());
    tokio::spawn(ops::expire_uploads_loop(gateway.clone()));
    let mut builder = s3s::service::S3ServiceBuilder::new(gateway);
    builder.set_auth(keys.clone());
    builder.set_access(keys);
    let service = builder.build();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "S3: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%from, "S3: too many connections; closing one");
            continue;
        };
        let service = service.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::http::Request<hyper::body::Incoming>| {
                let body_may_be_unread = has_body(&req);
                let service = service.clone();
                async move {
                    let mut resp = crate::metrics::on_behalf_of(
                        "s3",
                        hyper::service::Service::call(&service, req),
                    )
                    .await?;
                    tag_request_id(&mut resp);
                    if body_may_be_unread && !resp.status().is_success() {
                        // An error can be answered before the body is read (a
                        // client that sent `Expect: 100-continue` then never
                        // sends it); bytes left on the connection would be
                        // read as the next request, so the connection ends.
                        resp.headers_mut().insert(
                            hyper::http::header::CONNECTION,
                            hyper::http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, s3s::HttpError>(resp)
                }
            });
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%from, error = %e, "S3 connection failed"),
                Err(_) => tracing::debug!(%from, "S3 connection closed at its lifetime"),
            }
            drop(permit);
        });
    }
}

/// Requests answered by this process so far (the request IDs' counter).
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Gives a response its request ID: the `x-amz-request-id` header, and in
/// an error's XML body the `RequestId` element clients log and quote in
/// support requests. IDs are unique per process run (the start time in
/// milliseconds, then a counter), which is what an operator needs to find
/// the request in this node's log.
fn tag_request_id(resp: &mut hyper::http::Response<s3s::Body>) {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    });
    let n = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{start:012X}{n:08X}");
    if let Ok(v) = hyper::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    if resp.status().is_success() {
        return;
    }
    let Some(body) = resp.body().bytes() else {
        return;
    };
    if let Some(tagged) = with_request_id(&body, &id) {
        let len = tagged.len();
        *resp.body_mut() = s3s::Body::from(tagged);
        if resp
            .headers()
            .contains_key(hyper::http::header::CONTENT_LENGTH)
        {
            resp.headers_mut()
                .insert(hyper::http::header::CONTENT_LENGTH, len.into());
        }
    }
}

/// An S3 error body with `<RequestId>id</RequestId>` added before
/// `</Error>`; `None` when it is not one or already has an ID.
fn with_request_id(body: &[u8], id: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    if text.contains("<RequestId>") {
        return None;
    }
    let at = text.rfind("</Error>")?;
    Some(format!("{}<RequestId>{id}</RequestId>{}", &text[..at], &text[at..]).into_bytes())
}

/// Whether a request carries a body (a non-zero length, or a chunked one).
fn has_body<B>(req: &hyper::http::Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(hyper::http::header::TRANSFER_ENCODING)
        || h.get(hyper::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// MD5 of a file in hex: the ETag S3 clients expect of a single-part
/// object (the CLI's `put --name BUCKET/KEY`).
pub fn md5_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A body spooled to an unnamed temporary file: its length, BLAKE3 (the
/// object ID) and MD5 (the ETag, unless the spool was made without one),
/// learnt while it streamed in.
#[derive(Debug)]
pub(crate) struct Spooled {
    pub file: tokio::fs::File,
    pub size: u64,
    pub object: ObjectId,
    pub md5: Option<[u8; 16]>,
}

impl Spooled {
    pub fn etag(&self) -> S3Result<String> {
        self.md5
            .as_ref()
            .map(|m| hex(m))
            .ok_or_else(|| s3_error!(InternalError, "a spool without an MD5 has no ETag"))
    }
}

/// Accumulates bytes into a spool file with both hashes.
pub(crate) struct Spool {
    file: tokio::fs::File,
    size: u64,
    blake: blake3::Hasher,
    md5: Option<md5::Md5>,
    limit: u64,
}

impl Spool {
    /// A spool that learns the body's MD5 (the ETag of a single-part
    /// object) as well as its BLAKE3.
    pub async fn new(dir: &std::path::Path, limit: u64) -> S3Result<Spool> {
        Self::make(dir, limit, true).await
    }

    /// A spool that learns only the BLAKE3: a completed upload's ETag is
    /// made of its parts' MD5s, so hashing its bytes with MD5 again would
    /// be a pass for nothing.
    pub async fn without_md5(dir: &std::path::Path, limit: u64) -> S3Result<Spool> {
        Self::make(dir, limit, false).await
    }

    async fn make(dir: &std::path::Path, limit: u64, md5: bool) -> S3Result<Spool> {
        let dir = dir.to_path_buf();
        let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
            .await
            .map_err(|e| s3_error!(InternalError, "{e}"))?
            .map_err(|e| s3_error!(InternalError, "cannot create a spool file: {e}"))?;
        Ok(Spool {
            file: tokio::fs::File::from_std(file),
            size: 0,
            blake: blake3::Hasher::new(),
            md5: md5.then(md5::Md5::new),
            limit,
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> S3Result<()> {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            return Err(s3_error!(
                EntityTooLarge,
                "the object is larger than {} bytes",
                self.limit
            ));
        }
        self.blake.update(bytes);
        if let Some(m) = &mut self.md5 {
            m.update(bytes);
        }
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| s3_error!(InternalError, "spool write: {e}"))
    }

    pub async fn finish(mut self) -> S3Result<Spooled> {
        self.file
            .flush()
            .await
            .map_err(|e| s3_error!(InternalError, "spool flush: {e}"))?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| s3_error!(InternalError, "spool seek: {e}"))?;
        let md5 = self.md5.map(|m| {
            let mut out = [0u8; 16];
            out.copy_from_slice(&m.finalize());
            out
        });
        Ok(Spooled {
            file: self.file,
            size: self.size,
            object: ObjectId::from_hash(self.blake.finalize()),
            md5,
        })
    }
}

/// Spools a request body, each chunk within [`BODY_IDLE`].
pub(crate) async fn spool_body(
    dir: &std::path::Path,
    mut body: StreamingBlob,
    limit: u64,
) -> S3Result<Spooled> {
    let mut spool = Spool::new(dir, limit).await?;
    loop {
        let next = tokio::time::timeout(BODY_IDLE, body.next())
            .await
            .map_err(|_| s3_error!(RequestTimeout, "no body bytes for {BODY_IDLE:?}"))?;
        match next {
            None => break,
            Some(Ok(bytes)) => spool.write(&bytes).await?,
            Some(Err(e)) => return Err(s3_error!(IncompleteBody, "{e}")),
        }
    }
    spool.finish().await
}

impl PutSource for Spooled {
    async fn ready(&mut self) -> Result<(), DataError> {
        Ok(())
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        self.file.read_exact(buf).await?;
        Ok(())
    }
}

/// A response body fed by a task through a small bounded channel.
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    remaining: u64,
}

impl ChannelBody {
    pub fn blob(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>, len: u64) -> StreamingBlob {
        StreamingBlob::new(ChannelBody { rx, remaining: len })
    }
}

impl futures::Stream for ChannelBody {
    type Item = Result<Bytes, s3s::StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.remaining = self.remaining.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl ByteStream for ChannelBody {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(usize::try_from(self.remaining).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_gets_its_request_id_once() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code></Error>";
        let tagged = with_request_id(body, "ABC").unwrap();
        assert_eq!(
            String::from_utf8(tagged.clone()).unwrap(),
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><RequestId>ABC</RequestId></Error>"
        );
        assert_eq!(with_request_id(&tagged, "DEF"), None);
        assert_eq!(with_request_id(b"not xml \xff", "A"), None);
        assert_eq!(with_request_id(b"<ListBucketResult/>", "A"), None);
    }

    #[test]
    fn every_response_gets_an_id_and_error_bodies_carry_it() {
        let mut resp = hyper::http::Response::new(s3s::Body::from(
            "<Error><Code>NoSuchKey</Code></Error>".to_string(),
        ));
        *resp.status_mut() = hyper::http::StatusCode::NOT_FOUND;
        resp.headers_mut()
            .insert(hyper::http::header::CONTENT_LENGTH, 37.into());
        tag_request_id(&mut resp);
        let id = resp.headers()["x-amz-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(id.len(), 20);
        let body = resp.body().bytes().unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains(&format!("<RequestId>{id}</RequestId>")),
            "{text}"
        );
        assert_eq!(
            resp.headers()[hyper::http::header::CONTENT_LENGTH],
            body.len().to_string()
        );
        let mut ok = hyper::http::Response::new(s3s::Body::from("x".to_string()));
        tag_request_id(&mut ok);
        let other = ok.headers()["x-amz-request-id"].to_str().unwrap();
        assert_ne!(other, id, "IDs differ per request");
        assert_eq!(ok.body().bytes().unwrap(), "x");
    }
}
