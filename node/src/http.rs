//! The HTTP admin API, on hyper 1 (the stack the S3 gateway will share:
//! `s3s` is a hyper-1 service).
//!
//! Routes (all `GET`; anything else on them is 405, any other path 404):
//! - `/metrics`: every metric in the OpenMetrics text format ([`crate::metrics`]).
//! - `/health`: 200 `ok` when the node can serve reads and writes, 503 and
//!   the reason otherwise: fewer than `default_k + default_m` members alive
//!   with free space, or too few durable ones for such a stripe, or the
//!   node shutting down.
//! - `/v1/status`: what `dynostore status --json` prints.
//! - `/v1/objects`: what `dynostore ls --json` prints.
//! - `/v1/objects/{id}`: what `dynostore stat --json ID` prints; a bad ID
//!   is 400, an unknown one 404. Errors of `/v1` routes are JSON
//!   (`{"error": ..., "kind": ...}`).
//! - `/v1/objects/{id}/data`: the object's bytes, streamed through the
//!   data path's `get` (every shard verified, the whole checked against
//!   its ID at the end). A read that fails after the head was sent
//!   aborts the connection, so the client sees a short body (its length
//!   is declared), never a complete wrong one; a client that goes away
//!   stops the read at its next segment.
//! - `/v1/durability`, `/v1/traffic`, `/v1/events?after=SEQ`: the web
//!   dashboard's counts, samples and events ([`crate::dashboard`]).
//! - `/`, `/dashboard.css`, `/dashboard.js`: the web dashboard, compiled
//!   into the binary.
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections (more are closed at
//! once), request heads of at most [`MAX_HEAD_BYTES`] read within
//! [`HEAD_TIMEOUT`], no request body (a declared one over
//! [`MAX_BODY_BYTES`] is 413; bodies are never read), every answer within
//! the node's request timeout (else 503; for a download: its head), a
//! download's client takes each segment within [`SEND_TIMEOUT`], and a
//! connection lives at most [`CONNECTION_LIFETIME`].
//!
//! The listener is loopback only ([`crate::config::Config::admin_addr`]):
//! there is no authentication until admin tokens exist.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use dynostore_protocol::manifest::Metadata;
use dynostore_protocol::placement::stripe_fits;
use dynostore_protocol::wire::{ErrorKind, SkippedShard};
use dynostore_protocol::ObjectId;

use crate::dashboard;
use crate::datapath::{self, DataError, ObjectSink};
use crate::metrics::Op;
use crate::metrics::{kind_label, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use crate::shared::Shared;

/// Connections served at once; further ones are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body declared; admin requests carry none.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Time a client has to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one (keep-alive) connection.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);
/// A download's client must take each segment within this.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Segments of a download buffered between the read and the client.
const DOWNLOAD_BUFFER: usize = 2;

/// Every answer's body: whole, or streamed (a download).
type AnyBody = BoxBody<Bytes, std::io::Error>;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("cannot listen for the admin API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the admin API needs besides [`Shared`].
#[derive(Debug, Clone, Copy)]
pub struct AdminConfig {
    /// Every request is answered within this (else 503).
    pub deadline: Duration,
    /// The geometry `/health` judges writes by.
    pub k: u16,
    pub m: u16,
}

/// Binds the admin listener (before the node announces itself, so that a
/// taken port fails the start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves the admin API on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, cfg: AdminConfig) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, typically: wait rather than spin.
                tracing::warn!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%from, "admin API: too many connections; closing one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req, cfg).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(tcp), svc);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%from, error = %e, "admin API connection failed"),
                Err(_) => tracing::debug!(%from, "admin API connection closed at its lifetime"),
            }
            drop(permit);
        });
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Metrics,
    Health,
    Status,
    Objects,
    Object(&'a str),
    ObjectData(&'a str),
    Durability,
    Traffic,
    Events,
    Page,
    Style,
    Script,
    NotFound,
}

impl Route<'_> {
    fn of(path: &str) -> Route<'_> {
        match path {
            "/metrics" => Route::Metrics,
            "/health" => Route::Health,
            "/v1/status" => Route::Status,
            "/v1/objects" => Route::Objects,
            "/v1/durability" => Route::Durability,
            "/v1/traffic" => Route::Traffic,
            "/v1/events" => Route::Events,
            "/" => Route::Page,
            "/dashboard.css" => Route::Style,
            "/dashboard.js" => Route::Script,
            _ => match path.strip_prefix("/v1/objects/") {
                Some(id) if !id.is_empty() && !id.contains('/') => Route::Object(id),
                Some(rest) => match rest.strip_suffix("/data") {
                    Some(id) if !id.is_empty() && !id.contains('/') => Route::ObjectData(id),
                    _ => Route::NotFound,
                },
                None => Route::NotFound,
            },
        }
    }

    /// The metrics label (bounded: no IDs).
    fn label(&self) -> &'static str {
        match self {
            Route::Metrics => "metrics",
            Route::Health => "health",
            Route::Status => "status",
            Route::Objects => "objects",
            Route::Object(_) => "object",
            Route::ObjectData(_) => "object-data",
            Route::Durability => "durability",
            Route::Traffic => "traffic",
            Route::Events => "events",
            Route::Page | Route::Style | Route::Script => "dashboard",
            Route::NotFound => "not-found",
        }
    }
}

async fn handle(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    cfg: AdminConfig,
) -> Response<AnyBody> {
    let route = Route::of(req.uri().path());
    let query = req.uri().query().unwrap_or("");
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .max(req.body().size_hint().lower());
    let resp = if route == Route::NotFound {
        text(
            StatusCode::NOT_FOUND,
            "no such path; try /, /health, /metrics, /v1/status, /v1/objects\n",
        )
    } else if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        r
    } else if declared > MAX_BODY_BYTES {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "admin requests carry no body\n",
        )
    } else {
        match tokio::time::timeout(cfg.deadline, respond(shared, &route, query, cfg)).await {
            Ok(r) => r,
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no answer within {:?}\n", cfg.deadline),
            ),
        }
    };
    shared
        .metrics
        .admin_request(route.label(), resp.status().as_u16());
    resp
}

async fn respond(
    shared: &Arc<Shared>,
    route: &Route<'_>,
    query: &str,
    cfg: AdminConfig,
) -> Response<AnyBody> {
    match route {
        Route::Metrics => match shared.metrics.encode(shared).await {
            Ok(body) => {
                let mut r = Response::new(whole(Bytes::from(body)));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                r
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode the metrics: {e}\n"),
            ),
        },
        Route::Health => match health(shared, cfg) {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{reason}\n")),
        },
        Route::Status => json(
            StatusCode::OK,
            &crate::json::status_json(&shared.status().await),
        ),
        Route::Objects => match datapath::list_objects(
            shared,
            None,
            dynostore_protocol::wire::MAX_LISTED_OBJECTS as u32,
        )
        .await
        {
            Ok((objects, _)) => json(StatusCode::OK, &crate::json::list_json(&objects)),
            Err(e) => data_error(&e),
        },
        Route::Object(id) => match parse_id(id) {
            Ok(object) => match datapath::stat_object(shared, object, &datapath::open_gate).await {
                Ok(st) => json(StatusCode::OK, &crate::json::stat_json(&st)),
                Err(e) => data_error(&e),
            },
            Err(r) => r,
        },
        Route::ObjectData(id) => match parse_id(id) {
            Ok(object) => download(shared, object).await,
            Err(r) => r,
        },
        Route::Durability => match shared.dashboard.durability(shared).await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => error_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
                &format!("cannot read the manifests: {e}"),
            ),
        },
        Route::Traffic => json(StatusCode::OK, &dashboard::traffic_json(shared)),
        Route::Events => {
            let after = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("after="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            json(StatusCode::OK, &dashboard::events_json(shared, after))
        }
        Route::Page => asset(dashboard::INDEX_HTML, "text/html; charset=utf-8"),
        Route::Style => asset(dashboard::STYLE_CSS, "text/css; charset=utf-8"),
        Route::Script => asset(dashboard::SCRIPT_JS, "text/javascript; charset=utf-8"),
        Route::NotFound => text(StatusCode::NOT_FOUND, "no such path\n"),
    }
}

/// Whether this node can serve reads and writes of the default geometry.
fn health(shared: &Shared, cfg: AdminConfig) -> Result<(), String> {
    if shared.is_closed() {
        return Err("the node is shutting down".into());
    }
    let view = shared.membership().view();
    let n = usize::from(cfg.k) + usize::from(cfg.m);
    let eligible = view.eligible_count();
    if eligible < n {
        return Err(format!(
            "{eligible} members are alive with free space; a {}+{} stripe needs {n}",
            cfg.k, cfg.m
        ));
    }
    stripe_fits(&view, n, usize::from(cfg.m)).map_err(|e| e.to_string())
}

/// An object ID from a path, or the 400 answer.
#[allow(clippy::result_large_err)]
fn parse_id(id: &str) -> Result<ObjectId, Response<AnyBody>> {
    id.parse::<ObjectId>().map_err(|e| {
        let mut shown: String = id.chars().take(80).collect();
        if shown.len() < id.len() {
            shown.push_str("...");
        }
        error_json(
            StatusCode::BAD_REQUEST,
            ErrorKind::BadRequest,
            &format!("{shown:?} is not an object ID (64 hex digits): {e}"),
        )
    })
}

/// What a download's read sends the HTTP side: the head once, then the
/// body's chunks (an error aborts the body).
struct BodySink {
    head: Option<oneshot::Sender<(u64, Metadata)>>,
    body: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl ObjectSink for BodySink {
    async fn begin(&mut self, size: u64, meta: &Metadata) -> Result<(), DataError> {
        match self.head.take() {
            Some(tx) => tx.send((size, meta.clone())).map_err(|_| gone()),
            None => Ok(()),
        }
    }

    async fn data(&mut self, bytes: Vec<u8>) -> Result<(), DataError> {
        match tokio::time::timeout(SEND_TIMEOUT, self.body.send(Ok(Bytes::from(bytes)))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(DataError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the download client took no data for {SEND_TIMEOUT:?}"),
            ))),
        }
    }

    async fn fail(&mut self, e: &DataError) -> Result<(), DataError> {
        // An error frame aborts the response: the client sees a body
        // shorter than its declared length.
        let err = std::io::Error::other(e.to_string());
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.body.send(Err(err))).await;
        Ok(())
    }

    async fn end(&mut self, _skipped: Vec<SkippedShard>) -> Result<(), DataError> {
        Ok(())
    }
}

fn gone() -> DataError {
    DataError::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the download client went away",
    ))
}

/// A download: the data path's `get` runs in its own task (counted as a
/// get) and feeds the body through a small bounded channel; this answers
/// once the object is found (or not).
async fn download(shared: &Arc<Shared>, object: ObjectId) -> Response<AnyBody> {
    let (head_tx, head_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel(DOWNLOAD_BUFFER);
    let (err_tx, err_rx) = oneshot::channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut sink = BodySink {
            head: Some(head_tx),
            body: body_tx,
        };
        let timer = shared.metrics.op(Op::Get);
        let r = datapath::get(&shared, &mut sink, object, &datapath::open_gate).await;
        timer.finish(r.as_ref().err().map(DataError::kind));
        if let Err(e) = r {
            tracing::debug!(object = %object.short(), error = %e, "download failed");
            if sink.head.is_some() {
                let _ = err_tx.send(e);
            }
        }
    });
    let (size, meta) = match head_rx.await {
        Ok(h) => h,
        Err(_) => {
            return match err_rx.await {
                Ok(e) => data_error(&e),
                Err(_) => error_json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Internal,
                    "the read ended without an answer",
                ),
            }
        }
    };
    let mut r = Response::new(BodyExt::boxed(ChannelBody { rx: body_rx, size }));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(size));
    let name = download_name(meta.name.as_deref(), &object);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    r
}

/// A file name safe in a header: the object's name without its path and
/// with only plain characters, or its ID.
fn download_name(name: Option<&str>, object: &ObjectId) -> String {
    let base = name
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        .take(120)
        .collect();
    if clean.is_empty() || clean.chars().all(|c| c == '.') {
        object.to_string()
    } else {
        clean
    }
}

/// A body fed by a download's read; its declared length is the object's.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    size: u64,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.size)
    }
}

fn whole(b: Bytes) -> AnyBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn asset(body: &'static str, content_type: &'static str) -> Response<AnyBody> {
    let mut r = Response::new(whole(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn data_error(e: &DataError) -> Response<AnyBody> {
    let kind = e.kind();
    let status = match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotEnoughNodes | ErrorKind::Unavailable | ErrorKind::Full => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorKind::Integrity | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_json(status, kind, &e.to_string())
}

fn error_json(status: StatusCode, kind: ErrorKind, message: &str) -> Response<AnyBody> {
    json(
        status,
        &serde_json::json!({"error": message, "kind": kind_label(kind)}),
    )
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<AnyBody> {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(whole(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: &str) -> Response<AnyBody> {
    let mut r = Response::new(whole(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/metrics"), Route::Metrics);
        assert_eq!(Route::of("/health"), Route::Health);
        assert_eq!(Route::of("/v1/status"), Route::Status);
        assert_eq!(Route::of("/v1/objects"), Route::Objects);
        assert_eq!(Route::of("/v1/objects/ab"), Route::Object("ab"));
        assert_eq!(Route::of("/v1/objects/ab/data"), Route::ObjectData("ab"));
        assert_eq!(Route::of("/v1/durability"), Route::Durability);
        assert_eq!(Route::of("/v1/traffic"), Route::Traffic);
        assert_eq!(Route::of("/v1/events"), Route::Events);
        assert_eq!(Route::of("/"), Route::Page);
        assert_eq!(Route::of("/dashboard.js"), Route::Script);
        assert_eq!(Route::of("/dashboard.css"), Route::Style);
        for p in [
            "/index.html",
            "/v1/objects//data",
            "/v1/objects/a/b/data",
            "/v1/objects/a/datas",
            "/v1/objects/",
            "/v1/objects/a/b",
            "/metrics/",
            "/v2/status",
            "",
        ] {
            assert_eq!(Route::of(p), Route::NotFound, "{p}");
        }
    }

    #[test]
    fn download_names_are_plain() {
        let id: ObjectId = ObjectId::of(b"x");
        assert_eq!(download_name(Some("scan.dcm"), &id), "scan.dcm");
        assert_eq!(download_name(Some("a/b/c d\"e.bin"), &id), "cde.bin");
        assert_eq!(download_name(Some("..\\..\\x"), &id), "x");
        assert_eq!(download_name(Some(".."), &id), id.to_string());
        assert_eq!(download_name(None, &id), id.to_string());
    }
}
