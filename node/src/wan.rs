//! WAN emulation: one-way delay, bandwidth and loss between sites, in the
//! transport, for tests and scenarios only.
//!
//! This machine's kernel has no `netem` delay, so a local cluster has no
//! latency at all. With `wan_emulation = "matrix.toml"` in a node's config
//! (or `DYNOSTORE_WAN_EMULATION=matrix.toml` for a client), every TCP
//! connection the process *dials* to an address of a site in the matrix is
//! wrapped by a shaper, below Noise and Yamux, that delays the bytes of each
//! direction by that direction's one-way delay and paces them through a
//! token bucket of the site pair's bandwidth. Each site gets its own
//! loopback address (`127.0.0.X`; all of `127/8` is loopback), which is how
//! a remote address names its site.
//!
//! # How
//! The dialer sees the remote address, and knows its own site (the node's
//! `site`, or the matrix's `client_site` / `DYNOSTORE_WAN_SITE` for a
//! client), so it shapes both directions of the connections it dials; the
//! listener end is left alone (its peer's source address is `127.0.0.1`
//! whatever its site, and shaping at both ends would count the delay
//! twice). The caller gets one end of an in-memory duplex pipe; per
//! direction, one task reads chunks (at most [`CHUNK_BYTES`]) from the
//! source, reserves their transmission time in the direction's token
//! bucket, stamps them with `done + delay`, and queues them on a bounded
//! channel (at most [`CHUNKS_IN_FLIGHT`], 8 MiB, which covers the
//! bandwidth-delay product of 1 Gbit/s over a 60 ms one-way delay; a
//! longer fatter link is capped below its bandwidth); a second task writes each chunk out
//! when its stamp is reached. Chunks keep their order, so a late chunk
//! holds back the ones behind it, as in TCP. One bucket per directed site
//! pair is shared by all connections of the process. With probability
//! `loss` per chunk, a chunk is held back an extra retransmission timeout
//! (`max(200 ms, 2 × one-way delay)`, TCP's minimum RTO): loss shows up as
//! the stall it causes, not as missing bytes.
//!
//! # What it does not model
//! TCP's congestion control (slow start, the window's growth with the
//! RTT; a real long fat pipe fills more slowly than this one), queueing and
//! competing traffic in the network, jitter, reordering, and a bandwidth
//! shared by the connections of different processes (each process has its
//! own buckets, so two nodes of a site sending to a third site get the
//! pair's bandwidth each). Connection set-up costs one RTT per handshake
//! message like any data. QUIC is not shaped, so a shaped transport is TCP
//! only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The environment variable a client reads the matrix path from.
pub const WAN_ENV: &str = "DYNOSTORE_WAN_EMULATION";
/// The environment variable that overrides a client's site.
pub const WAN_SITE_ENV: &str = "DYNOSTORE_WAN_SITE";
/// Largest chunk a shaper moves at once.
pub const CHUNK_BYTES: usize = 64 << 10;
/// Chunks queued per direction of a connection (8 MiB of 64 KiB chunks).
pub const CHUNKS_IN_FLIGHT: usize = 128;
/// Bytes of the in-memory pipe between the caller and the shaper.
const PIPE_BYTES: usize = 256 << 10;
/// TCP's minimum retransmission timeout: the stall of one lost chunk.
const MIN_RTO: Duration = Duration::from_millis(200);
/// Largest matrix file read.
const MAX_MATRIX_BYTES: u64 = 1 << 20;

/// Problems with a WAN matrix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WanError {
    #[error("cannot read the WAN matrix {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("WAN matrix {path} is larger than {MAX_MATRIX_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("WAN matrix {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("WAN matrix: {0}")]
    Invalid(String),
}

/// A matrix file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    /// The site of a client that dials nodes (the CLI, the sim's clients).
    #[serde(default)]
    pub client_site: Option<String>,
    #[serde(rename = "site")]
    pub sites: Vec<SiteSpec>,
    #[serde(rename = "link", default)]
    pub links: Vec<LinkSpec>,
}

/// One site and the loopback addresses its nodes listen on.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// A link between two sites (both directions alike; a site with itself for
/// its LAN). Pairs with no link are not shaped.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub between: [String; 2],
    pub one_way_delay_ms: f64,
    /// Absent: not limited.
    #[serde(default)]
    pub bandwidth_mbit: Option<f64>,
    /// Probability that a chunk stalls for a retransmission timeout.
    #[serde(default)]
    pub loss: f64,
}

impl Matrix {
    /// Reads and checks a matrix file.
    pub fn load(path: &Path) -> Result<Self, WanError> {
        let read = |source| WanError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_MATRIX_BYTES {
            return Err(WanError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let m: Matrix = toml::from_str(&text).map_err(|e| WanError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        m.check()?;
        Ok(m)
    }

    /// Every link names known sites and has sane figures; no address is in
    /// two sites.
    pub fn check(&self) -> Result<(), WanError> {
        let mut seen: HashMap<IpAddr, &str> = HashMap::new();
        for s in &self.sites {
            for ip in &s.ips {
                if let Some(other) = seen.insert(*ip, &s.name) {
                    return Err(WanError::Invalid(format!(
                        "{ip} is in sites {other} and {}",
                        s.name
                    )));
                }
            }
        }
        let known = |n: &str| self.sites.iter().any(|s| s.name == n);
        for l in &self.links {
            for n in &l.between {
                if !known(n) {
                    return Err(WanError::Invalid(format!("link names unknown site {n:?}")));
                }
            }
            if !(l.one_way_delay_ms >= 0.0 && l.one_way_delay_ms < 60_000.0) {
                return Err(WanError::Invalid(format!(
                    "one_way_delay_ms {} is not in [0, 60000)",
                    l.one_way_delay_ms
                )));
            }
            if l.bandwidth_mbit
                .is_some_and(|b| !(b > 0.0 && b.is_finite()))
            {
                return Err(WanError::Invalid("bandwidth_mbit must be positive".into()));
            }
            if !(0.0..1.0).contains(&l.loss) {
                return Err(WanError::Invalid(format!(
                    "loss {} is not in [0, 1)",
                    l.loss
                )));
            }
        }
        if let Some(c) = &self.client_site {
            if !known(c) {
                return Err(WanError::Invalid(format!(
                    "client_site {c:?} is not a site"
                )));
            }
        }
        Ok(())
    }

    /// The site an address belongs to.
    pub fn site_of(&self, ip: IpAddr) -> Option<&str> {
        self.sites
            .iter()
            .find(|s| s.ips.contains(&ip))
            .map(|s| s.name.as_str())
    }

    /// The link between two sites, if the matrix shapes it.
    pub fn link(&self, a: &str, b: &str) -> Option<&LinkSpec> {
        self.links.iter().find(|l| {
            (l.between[0] == a && l.between[1] == b) || (l.between[0] == b && l.between[1] == a)
        })
    }
}

/// Transmission-time reservations of one direction of a site pair.
#[derive(Debug)]
struct Bucket {
    bytes_per_sec: f64,
    next_free: Mutex<Instant>,
}

impl Bucket {
    /// When `len` bytes queued now have been sent.
    fn reserve(&self, len: usize) -> Instant {
        let mut next = self
            .next_free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(len as f64 / self.bytes_per_sec);
        *next
    }
}

/// One direction of a shaped connection.
#[derive(Debug, Clone)]
struct Direction {
    delay: Duration,
    bucket: Option<Arc<Bucket>>,
    loss: f64,
}

impl Direction {
    /// When a chunk of `len` bytes read now may be delivered.
    fn release(&self, len: usize) -> Instant {
        let sent = match &self.bucket {
            Some(b) => b.reserve(len),
            None => Instant::now(),
        };
        let mut at = sent + self.delay;
        if self.loss > 0.0 && rand::random::<f64>() < self.loss {
            at += MIN_RTO.max(self.delay * 2);
        }
        at
    }
}

/// The shaper of one process: its site, the matrix, the buckets.
#[derive(Debug)]
pub struct Shaper {
    local_site: String,
    matrix: Matrix,
    buckets: Mutex<HashMap<(String, String), Arc<Bucket>>>,
}

impl Shaper {
    /// A shaper for a process at `local_site`.
    pub fn new(matrix: Matrix, local_site: &str) -> Result<Self, WanError> {
        matrix.check()?;
        if !matrix.sites.iter().any(|s| s.name == local_site) {
            return Err(WanError::Invalid(format!(
                "this process's site {local_site:?} is not in the matrix"
            )));
        }
        Ok(Shaper {
            local_site: local_site.to_string(),
            matrix,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The client's shaper from [`WAN_ENV`] (and [`WAN_SITE_ENV`], else the
    /// matrix's `client_site`); `None` when the variable is unset.
    pub fn from_env() -> Result<Option<Arc<Self>>, WanError> {
        let Some(path) = std::env::var_os(WAN_ENV).filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let matrix = Matrix::load(Path::new(&path))?;
        let site = match std::env::var(WAN_SITE_ENV) {
            Ok(s) if !s.is_empty() => s,
            _ => matrix.client_site.clone().ok_or_else(|| {
                WanError::Invalid(format!("no client_site and no {WAN_SITE_ENV}"))
            })?,
        };
        Ok(Some(Arc::new(Shaper::new(matrix, &site)?)))
    }

    /// This process's site.
    pub fn local_site(&self) -> &str {
        &self.local_site
    }

    /// The matrix.
    pub fn matrix(&self) -> &Matrix {
        &self.matrix
    }

    fn bucket(&self, from: &str, to: &str, bytes_per_sec: f64) -> Arc<Bucket> {
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        b.entry((from.to_string(), to.to_string()))
            .or_insert_with(|| {
                Arc::new(Bucket {
                    bytes_per_sec,
                    next_free: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }

    /// The (outbound, inbound) shaping of a connection to `remote`, or
    /// `None` when the matrix does not shape it.
    fn directions(&self, remote: IpAddr) -> Option<(Direction, Direction)> {
        let there = self.matrix.site_of(remote)?;
        let link = self.matrix.link(&self.local_site, there)?;
        let rate = link.bandwidth_mbit.map(|m| m * 1e6 / 8.0);
        let delay = Duration::from_secs_f64(link.one_way_delay_ms / 1000.0);
        let dir = |from: &str, to: &str| Direction {
            delay,
            bucket: rate.map(|r| self.bucket(from, to, r)),
            loss: link.loss,
        };
        Some((dir(&self.local_site, there), dir(there, &self.local_site)))
    }

    /// Wraps a dialed connection to `addr`: shaped if the matrix says so.
    pub fn wrap<S>(&self, stream: S, addr: &Multiaddr) -> Either<S>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let Some((out, inb)) = ip_of(addr).and_then(|ip| self.directions(ip)) else {
            return Either::Plain(stream);
        };
        let (user, inner) = tokio::io::duplex(PIPE_BYTES);
        let (sock_r, sock_w) = tokio::io::split(stream);
        let (pipe_r, pipe_w) = tokio::io::split(inner);
        tokio::spawn(pump(pipe_r, sock_w, out));
        tokio::spawn(pump(sock_r, pipe_w, inb));
        Either::Shaped(Shaped(user))
    }
}

/// The IP address of a multiaddr, if it starts with one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Moves bytes from `src` to `dst`, each chunk released at its stamp.
async fn pump<R, W>(mut src: R, mut dst: W, dir: Direction)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(CHUNKS_IN_FLIGHT);
    let reader = async move {
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
            match src.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let at = dir.release(n);
                    if tx.send((at, buf.freeze())).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once the queue is drained.
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if dst.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = dst.shutdown().await;
    };
    // The writer ends on a write error, and then the reader's send fails.
    futures::join!(reader, writer);
}

/// A connection, shaped or not: the transport's output type.
#[derive(Debug)]
pub enum Either<S> {
    Plain(S),
    Shaped(Shaped),
}

/// The caller's end of a shaped connection.
#[derive(Debug)]
pub struct Shaped(DuplexStream);

impl<S: AsyncRead + Unpin> AsyncRead for Either<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Either::Shaped(Shaped(s)) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Either<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Either::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Either::Shaped(Shaped(s)) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => Pin::new(s).poll_flush(cx),
            Either::Shaped(Shaped(s)) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Either::Shaped(Shaped(s)) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A futures-io view of a tokio stream (libp2p's upgrades speak futures-io).
#[derive(Debug)]
pub struct Compat<S>(pub S);

impl<S: AsyncRead + Unpin> futures::AsyncRead for Compat<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut self.get_mut().0).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> futures::AsyncWrite for Compat<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix() -> Matrix {
        toml::from_str(
            r#"
            client_site = "a"
            [[site]]
            name = "a"
            ips = ["127.0.0.11"]
            [[site]]
            name = "b"
            ips = ["127.0.0.12"]
            [[link]]
            between = ["a", "b"]
            one_way_delay_ms = 40
            bandwidth_mbit = 80
            "#,
        )
        .unwrap()
    }

    /// A round trip over a shaped connection takes two one-way delays, and
    /// a bulk transfer is paced by the bandwidth; an unshaped one is not.
    #[tokio::test]
    async fn delay_and_bandwidth_apply_to_dialed_connections() {
        let shaper = Shaper::new(matrix(), "a").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.12:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let sock = tokio::net::TcpStream::connect(("127.0.0.12", port))
            .await
            .unwrap();
        let addr: Multiaddr = format!("/ip4/127.0.0.12/tcp/{port}").parse().unwrap();
        let mut s = shaper.wrap(sock, &addr);
        assert!(matches!(s, Either::Shaped(_)));
        let t0 = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        let rtt = t0.elapsed();
        assert_eq!(&b, b"ping");
        assert!(rtt >= Duration::from_millis(80), "rtt {rtt:?}");
        // 1 MB at 80 Mbit/s is 100 ms each way, on top of the delays.
        let data = vec![7u8; 1_000_000];
        let t0 = Instant::now();
        let (mut r, mut w) = tokio::io::split(s);
        let send = async {
            w.write_all(&data).await.unwrap();
            w
        };
        let recv = async {
            let mut got = vec![0u8; data.len()];
            r.read_exact(&mut got).await.unwrap();
            got
        };
        let (w, got) = tokio::join!(send, recv);
        assert_eq!(got, data);
        let bulk = t0.elapsed();
        assert!(bulk >= Duration::from_millis(150), "bulk {bulk:?}");
        drop((r, w));
        echo.await.unwrap();

        // Same site, or an address outside the matrix: not shaped.
        let other: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let (x, _y) = tokio::io::duplex(16);
        assert!(matches!(shaper.wrap(x, &other), Either::Plain(_)));
    }

    #[test]
    fn matrix_errors_are_named() {
        let mut m = matrix();
        m.links[0].between[1] = "c".into();
        assert!(m.check().unwrap_err().to_string().contains("unknown site"));
        let mut m = matrix();
        m.sites[1].ips.push("127.0.0.11".parse().unwrap());
        assert!(m.check().is_err());
        assert!(Shaper::new(matrix(), "z").is_err());
    }
}
