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
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections (more are closed at
//! once), request heads of at most [`MAX_HEAD_BYTES`] read within
//! [`HEAD_TIMEOUT`], no request body (a declared one over
//! [`MAX_BODY_BYTES`] is 413; bodies are never read), every answer within
//! the node's request timeout (else 503), and a connection lives at most
//! [`CONNECTION_LIFETIME`].
//!
//! The listener is loopback only ([`crate::config::Config::admin_addr`]):
//! there is no authentication until admin tokens exist.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use dynostore_protocol::placement::stripe_fits;
use dynostore_protocol::wire::ErrorKind;
use dynostore_protocol::ObjectId;

use crate::datapath::{self, DataError};
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
    NotFound,
}

impl Route<'_> {
    fn of(path: &str) -> Route<'_> {
        match path {
            "/metrics" => Route::Metrics,
            "/health" => Route::Health,
            "/v1/status" => Route::Status,
            "/v1/objects" => Route::Objects,
            _ => match path.strip_prefix("/v1/objects/") {
                Some(id) if !id.is_empty() && !id.contains('/') => Route::Object(id),
                _ => Route::NotFound,
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
            Route::NotFound => "not-found",
        }
    }
}

async fn handle(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    cfg: AdminConfig,
) -> Response<Full<Bytes>> {
    let route = Route::of(req.uri().path());
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
            "no such path; try /health, /metrics, /v1/status, /v1/objects\n",
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
        match tokio::time::timeout(cfg.deadline, respond(shared, &route, cfg)).await {
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
    cfg: AdminConfig,
) -> Response<Full<Bytes>> {
    match route {
        Route::Metrics => match shared.metrics.encode(shared).await {
            Ok(body) => {
                let mut r = Response::new(Full::new(Bytes::from(body)));
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
        Route::Objects => match datapath::list_objects(shared).await {
            Ok(objects) => json(StatusCode::OK, &crate::json::list_json(&objects)),
            Err(e) => data_error(&e),
        },
        Route::Object(id) => match id.parse::<ObjectId>() {
            Ok(object) => match datapath::stat_object(shared, object).await {
                Ok(st) => json(StatusCode::OK, &crate::json::stat_json(&st)),
                Err(e) => data_error(&e),
            },
            Err(e) => {
                let mut shown: String = id.chars().take(80).collect();
                if shown.len() < id.len() {
                    shown.push_str("...");
                }
                error_json(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::BadRequest,
                    &format!("{shown:?} is not an object ID (64 hex digits): {e}"),
                )
            }
        },
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

fn data_error(e: &DataError) -> Response<Full<Bytes>> {
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

fn error_json(status: StatusCode, kind: ErrorKind, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": message, "kind": kind_label(kind)}),
    )
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = v.to_string();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
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
        for p in [
            "/",
            "/v1/objects/",
            "/v1/objects/a/b",
            "/metrics/",
            "/v2/status",
            "",
        ] {
            assert_eq!(Route::of(p), Route::NotFound, "{p}");
        }
    }
}
