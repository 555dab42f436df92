//! Shared by the node's benches (`transfer`, `cluster`, `repair`): the
//! raw-stream reference (a byte sink over libp2p-stream with the node's
//! transport), the re-executed server process's READY line, node processes
//! ([`cluster`]), object operations that retry a dropped stream, `/proc`
//! readings, test files, small runners and helpers.
//!
//! Each bench uses a subset, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod cluster;

use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use dynostore_node::client::Client;
use dynostore_node::keys::NetworkKey;
use dynostore_node::net::transport;
use dynostore_node::objects::{get_object, put_file, NoProgress, ObjectError, Output, PutParams};
use dynostore_protocol::wire::{PutReceipt, SkippedShard};
use dynostore_protocol::ObjectId;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, Swarm, SwarmBuilder};
use libp2p_stream::Control;
use tokio::task::JoinSet;

pub const MIB: usize = 1 << 20;
/// Write size of the raw copies, and the sink's read buffer.
pub const COPY_CHUNK: usize = MIB;
/// How long a re-executed server process may take to announce itself.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest sink transfer a server accepts.
pub const SINK_MAX_BYTES: u64 = 1 << 40;
/// File generation and hashing block size.
pub const IO_BLOCK: usize = 8 * MIB;
/// Attempts of one object operation whose stream the entry peer dropped,
/// and the wait before the second (the n-th waits n - 1 times as long).
pub const OBJECT_ATTEMPTS: usize = 5;
pub const OBJECT_BACKOFF: Duration = Duration::from_millis(10);

pub const SINK_PROTOCOL: StreamProtocol = StreamProtocol::new("/dynostore-bench/sink/1");

/// Logs to stderr, at `warn` unless `RUST_LOG` says otherwise.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build a tokio runtime")
}

/// A positive whole number from the environment, or `default` when unset.
pub fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => bail!("{name}: {e}"),
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={s:?}: expected a positive whole number"),
        },
    }
}

/// For a re-executed server process: exit when the parent closes our stdin
/// (it is done, or gone), and in any case after `max_lifetime`.
pub fn exit_with_parent(max_lifetime: Duration) {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    std::thread::spawn(move || {
        std::thread::sleep(max_lifetime);
        eprintln!("bench server: still running after {max_lifetime:?}; exiting");
        std::process::exit(2);
    });
}

/// Reads the first line a server process prints, within [`READY_TIMEOUT`].
pub fn read_ready_line(stdout: std::process::ChildStdout) -> Result<String> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(line)) if line.is_empty() => {
            bail!("the server process exited before it was ready (its errors are above)")
        }
        Ok(Ok(line)) => Ok(line),
        Ok(Err(e)) => bail!("cannot read the server's READY line: {e}"),
        Err(_) => bail!("the server process was not ready within {READY_TIMEOUT:?}"),
    }
}

/// Builds a swarm with the node's real transport and only `libp2p-stream`.
pub fn build_swarm(
    key: &Keypair,
    psk: Option<NetworkKey>,
) -> Result<Swarm<libp2p_stream::Behaviour>> {
    let transport = transport(key, psk.as_ref()).context("building the node transport")?;
    Ok(SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| anyhow!("swarm transport: {e}"))?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .map_err(|e| anyhow!("swarm behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build())
}

/// Polls a swarm forever, logging connection losses.
pub async fn drive(mut swarm: Swarm<libp2p_stream::Behaviour>) {
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                tracing::debug!(%peer_id, ?cause, "bench connection closed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::warn!(%error, "bench incoming connection failed");
            }
            _ => {}
        }
    }
}

/// Listens on loopback and returns the address with `/p2p/...`.
pub async fn listen(swarm: &mut Swarm<libp2p_stream::Behaviour>) -> Result<Multiaddr> {
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().context("listen address")?;
    swarm.listen_on(addr).context("cannot listen on loopback")?;
    let peer = *swarm.local_peer_id();
    tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    return Ok(address.with(Protocol::P2p(peer)));
                }
                SwarmEvent::ListenerError { error, .. } => bail!("listener failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .context("no listen address")?
}

/// A swarm with the node's transport and `psk`, listening on loopback and
/// serving [`sink`] on [`SINK_PROTOCOL`]; returns its address.
pub async fn start_sink_swarm(
    psk: Option<NetworkKey>,
    tasks: &mut JoinSet<()>,
) -> Result<Multiaddr> {
    let mut swarm = build_swarm(&Keypair::generate_ed25519(), psk)?;
    let addr = listen(&mut swarm).await?;
    let sinks = swarm
        .behaviour()
        .new_control()
        .accept(SINK_PROTOCOL)
        .map_err(|e| anyhow!("sink protocol: {e}"))?;
    tasks.spawn(serve_sinks(sinks));
    tasks.spawn(drive(swarm));
    Ok(addr)
}

pub async fn serve_sinks(mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(async move {
            if let Err(e) = sink(stream).await {
                tracing::warn!(%peer, error = %e, "stream sink failed");
            }
        });
    }
}

/// Reads an 8-byte length, then that many bytes into a discarded buffer,
/// then answers one byte.
pub async fn sink(mut s: Stream) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    s.read_exact(&mut header).await?;
    let mut left = u64::from_le_bytes(header);
    if left > SINK_MAX_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("sink of {left} bytes refused"),
        ));
    }
    let mut buf = vec![0u8; COPY_CHUNK];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = s.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    s.write_all(&[1]).await?;
    s.flush().await?;
    s.close().await
}

/// Dials `addr` and returns a stream control once connected; the swarm is
/// driven by a spawned task.
pub async fn connect(psk: Option<NetworkKey>, addr: &Multiaddr) -> Result<(Control, PeerId)> {
    let peer = match addr.iter().last() {
        Some(Protocol::P2p(p)) => p,
        _ => bail!("{addr} does not end in /p2p/..."),
    };
    let mut swarm = build_swarm(&Keypair::generate_ed25519(), psk)?;
    let control = swarm.behaviour().new_control();
    swarm
        .dial(addr.clone())
        .with_context(|| format!("cannot dial {addr}"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                    return Ok(())
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    bail!("cannot connect to {addr}: {error}")
                }
                _ => {}
            }
        }
    })
    .await
    .with_context(|| format!("no connection to {addr} within {CONNECT_TIMEOUT:?}"))??;
    tokio::spawn(drive(swarm));
    Ok((control, peer))
}

/// Copies `total` bytes over one new stream in writes of `chunk.len()`;
/// the time runs from opening the stream to the server's acknowledgement.
pub async fn stream_copy(
    control: &mut Control,
    peer: PeerId,
    total: u64,
    chunk: &[u8],
) -> Result<Duration> {
    let start = Instant::now();
    let mut s = control
        .open_stream(peer, SINK_PROTOCOL)
        .await
        .map_err(|e| anyhow!("cannot open a stream to {peer}: {e}"))?;
    s.write_all(&total.to_le_bytes()).await?;
    let mut left = total;
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.flush().await?;
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await?;
    let elapsed = start.elapsed();
    let _ = s.close().await;
    Ok(elapsed)
}

/// Fills `buf` from a xorshift generator: incompressible, distinct per seed.
/// A trailing part shorter than 8 bytes is left as it is.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
}

/// Runs `op(i)` for `i` in `0..n` on `concurrency` spawned workers; returns
/// the wall time of the whole batch. The first error aborts the rest.
pub async fn pool<F, Fut>(n: usize, concurrency: usize, op: F) -> Result<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers: JoinSet<Result<()>> = JoinSet::new();
    for _ in 0..concurrency {
        let (next, op) = (next.clone(), op.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                op(i).await?;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.context("a worker panicked")??;
    }
    Ok(start.elapsed())
}

/// A target's verdict in a report.
pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// Ends the first paragraph of a report of a run without `--bench`.
pub fn smoke_note(smoke: bool) -> &'static str {
    if smoke {
        " SMOKE RUN (not run with --bench): tiny sizes, the figures mean nothing."
    } else {
        ""
    }
}

pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// A progress line on stderr, with the time since the bench started.
pub fn note(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("[{:6.1} s] {msg}", t.as_secs_f64());
}

/// Time allowed for moving `bytes` once: two minutes plus 4 MB/s.
pub fn budget(bytes: u64) -> Duration {
    Duration::from_secs(120 + bytes / 4_000_000)
}

pub fn cpu_delta(before: &[f64], after: &[f64]) -> Vec<f64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

// ---------------------------------------------------------------- /proc

#[allow(unused_imports)] // not every bench reads both
pub use dynostore_sim::launch::{cpu_secs, vm_hwm_kib};

/// Available bytes of the filesystem holding `path`.
pub fn free_disk(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub fn mem_available() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k * 1024)
}

// ---------------------------------------------------------------- files

/// Writes `bytes` of deterministic incompressible data; returns its BLAKE3
/// and the time spent in the write calls (a page-cache write reference).
pub fn write_file(path: &Path, bytes: u64, seed: u64) -> Result<(String, Duration)> {
    let mut f = std::io::BufWriter::with_capacity(
        IO_BLOCK,
        fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; IO_BLOCK];
    let mut left = bytes;
    let mut block = 0u64;
    let mut writing = Duration::ZERO;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        fill(&mut buf[..n], (seed << 32) ^ block);
        hasher.update(&buf[..n]);
        let t = Instant::now();
        f.write_all(&buf[..n])
            .with_context(|| format!("write {}", path.display()))?;
        writing += t.elapsed();
        left -= n as u64;
        block += 1;
    }
    let t = Instant::now();
    f.flush()
        .with_context(|| format!("write {}", path.display()))?;
    writing += t.elapsed();
    Ok((hasher.finalize().to_hex().to_string(), writing))
}

pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; IO_BLOCK];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

// ---------------------------------------------------------------- object operations

/// Whether an object operation failed because its stream was dropped
/// before the entry peer served it (worth another attempt).
fn dropped(e: &ObjectError) -> bool {
    matches!(e, ObjectError::Stream(_))
}

/// Runs `op` until it succeeds, fails otherwise than `dropped` says, or ran
/// `attempts` times; counts each retry in `retries` and waits `backoff`
/// times the attempt number before it. An error carries its attempt number.
pub async fn retry_dropped<T, E, F, Fut>(
    attempts: usize,
    backoff: Duration,
    retries: &AtomicUsize,
    dropped: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, (E, usize)>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if dropped(&e) && attempt < attempts => {
                retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, attempt, "stream dropped; retrying");
                tokio::time::sleep(backoff * attempt as u32).await;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// `objects::put_file`, retried while the entry peer drops its stream.
pub async fn put_retrying(
    client: &Client,
    path: &Path,
    params: &PutParams,
    retries: &AtomicUsize,
) -> Result<PutReceipt, ObjectError> {
    retry_dropped(
        OBJECT_ATTEMPTS,
        OBJECT_BACKOFF,
        retries,
        dropped,
        || async { put_file(client, path, params, &mut NoProgress).await },
    )
    .await
    .map_err(|(e, _)| e)
}

/// `objects::get_object` (which verifies every byte against the ID),
/// retried while the entry peer drops its stream.
pub async fn get_retrying(
    client: &Client,
    object: ObjectId,
    out: &Output,
    retries: &AtomicUsize,
) -> Result<(u64, Vec<SkippedShard>), ObjectError> {
    retry_dropped(
        OBJECT_ATTEMPTS,
        OBJECT_BACKOFF,
        retries,
        dropped,
        || async { get_object(client, object, out, &mut NoProgress).await },
    )
    .await
    .map_err(|(e, _)| e)
}
