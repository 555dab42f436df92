//! Figure: shard put and get throughput between two nodes over
//! libp2p-stream, as a ratio to a plain TCP copy of the same bytes on
//! loopback, all measured in the same run.
//!
//! `cargo bench -p dynostore-sim --bench transfer` prints a markdown table.
//! The bench binary re-executes itself with `DYNOSTORE_BENCH_ROLE=server` to
//! act as the server side of every measurement, so that client and server
//! are two OS processes, as between two nodes. The server holds:
//! - a plain tokio TCP listener (the reference),
//! - a swarm with the node's transport and a network key (TCP + Noise with
//!   the network-key prologue + Yamux), serving a byte sink and the node's real shard server
//!   (`shard_proto::serve_stream` over a real `ShardStore`: sled index in a
//!   temporary directory plus a `mem:` container),
//! - a swarm without a network key (TCP + Noise + Yamux), serving the sink.
//!
//! Rounds are interleaved (TCP, raw streams, put, get, then again), and each
//! ratio is the median over rounds of that round's ratio, so that a noisy
//! neighbour slows a path and its reference alike.
//!
//! Environment:
//! - `DYNOSTORE_BENCH_MB`: bytes per measurement in MiB (default 256); the
//!   shard put and get move that many 1 MiB shards.
//! - `DYNOSTORE_BENCH_REPS`: rounds (default 3).
//! - `DYNOSTORE_BENCH_CONCURRENCY`: shard requests in flight (default 4).
//! - `DYNOSTORE_BENCH_INPROCESS=1`: run the server on its own thread and
//!   tokio runtime in this process instead of a child process.
//! - `TMPDIR`: where the server's sled index goes.
//!
//! Without `--bench` (as under `cargo test --benches`) it runs a 4 MiB smoke
//! round only.

mod common;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use common::{
    build_swarm, connect, drive, env_number, exit_with_parent, fill, listen, mb_per_s, median,
    pool, read_ready_line, retry_dropped, runtime, serve_sinks, start_sink_swarm, stream_copy,
    READY_TIMEOUT, SINK_MAX_BYTES, SINK_PROTOCOL,
};
use dynostore_node::container::ContainerSpec;
use dynostore_node::keys::parse_network_key;
use dynostore_node::keys::NetworkKey;
use dynostore_node::manifests::ManifestStore;
use dynostore_node::net::shard_protocol;
use dynostore_node::shard_proto::{get_shard, put_shard, serve_stream, ShardClientError};
use dynostore_node::store::ShardStore;
use dynostore_protocol::ShardId;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use libp2p_stream::Control;
use tokio::task::JoinSet;

const ROLE_ENV: &str = "DYNOSTORE_BENCH_ROLE";
const PSK_ENV: &str = "DYNOSTORE_BENCH_PSK";
const QUOTA_ENV: &str = "DYNOSTORE_BENCH_QUOTA_MIB";
const DIR_ENV: &str = "DYNOSTORE_BENCH_DIR";
const MB_ENV: &str = "DYNOSTORE_BENCH_MB";
const REPS_ENV: &str = "DYNOSTORE_BENCH_REPS";
const INPROCESS_ENV: &str = "DYNOSTORE_BENCH_INPROCESS";
const CONCURRENCY_ENV: &str = "DYNOSTORE_BENCH_CONCURRENCY";

const MIB: usize = 1 << 20;
/// Shard size, and the write size of the raw copies.
const SHARD_BYTES: usize = MIB;
/// Shard requests in flight, unless `DYNOSTORE_BENCH_CONCURRENCY` says otherwise.
const CONCURRENCY: u64 = 4;
/// Attempts per shard request when the server dropped the stream.
const MAX_ATTEMPTS: usize = 20;
/// Per shard request, as the node's default `request_timeout_ms`.
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// A server left behind exits on its own after this long.
const SERVER_MAX_LIFETIME: Duration = Duration::from_secs(3 * 3600);

fn main() -> ExitCode {
    // Warnings and errors of both sides go to stderr; RUST_LOG for more.
    common::init_tracing();
    let result = if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        server_process_main()
    } else {
        coordinator_main(std::env::args().any(|a| a == "--bench"))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transfer bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- server

/// What the client needs to reach a server; one line on the child's stdout:
/// `READY <tcp addr> <multiaddr with the network key> <multiaddr without> <index dir>`.
#[derive(Debug, Clone)]
struct Ready {
    tcp: SocketAddr,
    psk_addr: Multiaddr,
    open_addr: Multiaddr,
    dir: String,
}

impl Ready {
    fn to_line(&self) -> String {
        format!(
            "READY {} {} {} {}",
            self.tcp, self.psk_addr, self.open_addr, self.dir
        )
    }

    fn parse(line: &str) -> Result<Ready> {
        let bad = || anyhow!("the server announced {line:?}, not a READY line");
        let rest = line.trim_end().strip_prefix("READY ").ok_or_else(bad)?;
        let mut parts = rest.splitn(4, ' ');
        let mut next = || parts.next().ok_or_else(bad);
        Ok(Ready {
            tcp: next()?.parse().context("server TCP address")?,
            psk_addr: next()?.parse().context("server multiaddr (network key)")?,
            open_addr: next()?.parse().context("server multiaddr (no key)")?,
            dir: next()?.to_string(),
        })
    }
}

/// Everything the server keeps alive.
#[derive(Debug)]
struct ServerState {
    _tasks: JoinSet<()>,
}

fn server_process_main() -> Result<()> {
    let psk_text = std::env::var(PSK_ENV).with_context(|| format!("{PSK_ENV} is not set"))?;
    let psk = parse_network_key(&psk_text).map_err(|e| anyhow!("{PSK_ENV}: {e}"))?;
    let quota_mib = env_number(QUOTA_ENV, 2048)?;
    // Created and removed by the client, which outlives us.
    let dir = std::env::var_os(DIR_ENV).with_context(|| format!("{DIR_ENV} is not set"))?;
    // The client closes our stdin when it is done or gone; a server left
    // behind anyway ends after SERVER_MAX_LIFETIME.
    exit_with_parent(SERVER_MAX_LIFETIME);
    let rt = runtime()?;
    rt.block_on(async move {
        let (_state, ready) = start_server(psk, quota_mib, Path::new(&dir)).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", ready.to_line()).context("cannot write the READY line")?;
        out.flush().context("cannot write the READY line")?;
        drop(out);
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Starts every server-side listener; the shard store lives in `dir`.
async fn start_server(psk: NetworkKey, quota_mib: u64, dir: &Path) -> Result<(ServerState, Ready)> {
    let spec_text = format!("mem:{quota_mib}MiB");
    let spec: ContainerSpec = spec_text
        .parse()
        .with_context(|| format!("container spec {spec_text:?}"))?;
    let store = ShardStore::open(dir, &[spec])
        .await
        .with_context(|| format!("cannot open a shard store in {}", dir.display()))?;

    let manifests = ManifestStore::open(&store).context("cannot open the manifest store")?;

    let mut tasks = JoinSet::new();

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a TCP listener on loopback")?;
    let tcp_addr = tcp.local_addr().context("TCP listener address")?;
    tasks.spawn(async move {
        loop {
            match tcp.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(async move {
                        if let Err(e) = tcp_ref::sink(s).await {
                            tracing::warn!(error = %e, "TCP sink failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });

    // With the network key: the sink and the real shard server.
    let mut swarm = build_swarm(&Keypair::generate_ed25519(), Some(psk))?;
    let psk_addr = listen(&mut swarm).await?;
    let mut control = swarm.behaviour().new_control();
    let sinks = control
        .accept(SINK_PROTOCOL)
        .map_err(|e| anyhow!("sink protocol: {e}"))?;
    tasks.spawn(serve_sinks(sinks));
    let mut shards = control
        .accept(shard_protocol())
        .map_err(|e| anyhow!("shard protocol: {e}"))?;
    tasks.spawn(async move {
        while let Some((peer, stream)) = shards.next().await {
            let (store, manifests) = (store.clone(), manifests.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_stream(stream, peer, store, manifests, OP_TIMEOUT).await {
                    tracing::warn!(%peer, error = %e, "shard stream failed");
                }
            });
        }
    });
    tasks.spawn(drive(swarm));

    // Without a network key: the sink only.
    let open_addr = start_sink_swarm(None, &mut tasks).await?;

    let ready = Ready {
        tcp: tcp_addr,
        psk_addr,
        open_addr,
        dir: dir.display().to_string(),
    };
    Ok((ServerState { _tasks: tasks }, ready))
}

/// The plain TCP reference, with tokio's IO traits only.
mod tcp_ref {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub async fn sink(mut s: TcpStream) -> std::io::Result<()> {
        s.set_nodelay(true)?;
        let mut left = s.read_u64_le().await?;
        if left > super::SINK_MAX_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("sink of {left} bytes refused"),
            ));
        }
        let mut buf = vec![0u8; super::SHARD_BYTES];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = s.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left -= n as u64;
        }
        s.write_all(&[1]).await?;
        s.shutdown().await
    }

    /// Copies `total` bytes in writes of `chunk.len()`; the time runs from
    /// the first write (after connecting) to the server's acknowledgement.
    pub async fn copy(addr: SocketAddr, total: u64, chunk: &[u8]) -> std::io::Result<Duration> {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let start = Instant::now();
        s.write_u64_le(total).await?;
        let mut left = total;
        while left > 0 {
            let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            s.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        s.flush().await?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).await?;
        Ok(start.elapsed())
    }
}

// ---------------------------------------------------------------- server handles

/// The server side, killed (or stopped) when dropped.
#[derive(Debug)]
enum Server {
    Process {
        child: Child,
    },
    Thread {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        join: Option<std::thread::JoinHandle<()>>,
    },
}

impl Drop for Server {
    fn drop(&mut self) {
        match self {
            Server::Process { child } => {
                drop(child.stdin.take());
                let _ = child.kill();
                let _ = child.wait();
            }
            Server::Thread { stop, join } => {
                drop(stop.take());
                if let Some(j) = join.take() {
                    let _ = j.join();
                }
            }
        }
    }
}

impl Server {
    fn describe(&self) -> String {
        match self {
            Server::Process { child } => format!(
                "separate processes (client pid {}, server pid {})",
                std::process::id(),
                child.id()
            ),
            Server::Thread { .. } => {
                "ONE process: the server runs on its own thread and tokio runtime".to_string()
            }
        }
    }
}

fn spawn_server_process(psk: NetworkKey, quota_mib: u64, dir: &Path) -> Result<(Server, Ready)> {
    let exe = std::env::current_exe().context("cannot find this bench binary to re-execute")?;
    let mut child = Command::new(&exe)
        .env(ROLE_ENV, "server")
        .env(PSK_ENV, psk.to_key_file())
        .env(QUOTA_ENV, quota_mib.to_string())
        .env(DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start the server process {}", exe.display()))?;
    let stdout = child.stdout.take();
    // From here on, dropping `server` kills the child.
    let server = Server::Process { child };
    let stdout = stdout.ok_or_else(|| anyhow!("the server process has no stdout pipe"))?;
    let line = read_ready_line(stdout)?;
    let ready = Ready::parse(&line)?;
    Ok((server, ready))
}

fn spawn_server_thread(psk: NetworkKey, quota_mib: u64, dir: &Path) -> Result<(Server, Ready)> {
    let dir = dir.to_path_buf();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let join = std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match start_server(psk, quota_mib, &dir).await {
                    Ok((state, ready)) => {
                        let _ = ready_tx.send(Ok(ready));
                        let _ = stop_rx.await;
                        drop(state);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(2));
        })
        .context("cannot start the server thread")?;
    let server = Server::Thread {
        stop: Some(stop_tx),
        join: Some(join),
    };
    let ready = match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(r) => r?,
        Err(_) => bail!("the server thread was not ready within {READY_TIMEOUT:?}"),
    };
    Ok((server, ready))
}

// ---------------------------------------------------------------- client

type Shard = (ShardId, Bytes);

/// `n` distinct 1 MiB shards of set `set`, with their IDs.
fn make_shards(set: u64, n: usize) -> Arc<Vec<Shard>> {
    Arc::new(
        (0..n)
            .map(|i| {
                let mut v = vec![0u8; SHARD_BYTES];
                fill(&mut v, (set << 32) | i as u64);
                (ShardId::of(&v), Bytes::from(v))
            })
            .collect(),
    )
}

/// Whether a shard request failed because the server reset the stream
/// before serving it. libp2p-stream 0.5.0-alpha hands inbound streams to
/// `IncomingStreams` through a channel with a single slot and drops (resets)
/// any stream that arrives while the slot is taken; yamux then reports a
/// write as `WriteZero` ("connection is closed") or a read as an early EOF.
fn dropped_stream(e: &ShardClientError) -> bool {
    matches!(e, ShardClientError::Io { source, .. } if matches!(
        source.kind(),
        std::io::ErrorKind::WriteZero
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    ))
}

/// Runs `attempt` until it succeeds, retrying dropped streams (counted in
/// `retries`) up to [`MAX_ATTEMPTS`] times.
async fn with_retries<T, F, Fut>(what: String, retries: &AtomicUsize, attempt: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ShardClientError>>,
{
    retry_dropped(
        MAX_ATTEMPTS,
        Duration::ZERO,
        retries,
        dropped_stream,
        attempt,
    )
    .await
    .map_err(|(e, n)| anyhow!(e).context(format!("{what}, attempt {n}")))
}

/// Puts every shard; returns the wall time and the number of retries.
async fn put_all(
    control: &Control,
    peer: PeerId,
    shards: &Arc<Vec<Shard>>,
    concurrency: usize,
) -> Result<(Duration, usize)> {
    let retries = Arc::new(AtomicUsize::new(0));
    let (control, shards, r) = (control.clone(), shards.clone(), retries.clone());
    let d = pool(shards.len(), concurrency, move |i| {
        let (control, shards, r) = (control.clone(), shards.clone(), r.clone());
        async move {
            let (id, bytes) = &shards[i];
            with_retries(format!("put of shard {i} ({})", id.short()), &r, || {
                let mut control = control.clone();
                let slot = dynostore_protocol::manifest::ShardSlot {
                    shard: *id,
                    owner: dynostore_protocol::manifest::ShardRef {
                        object: dynostore_protocol::ObjectId::from_bytes(*id.as_bytes()),
                        generation: Default::default(),
                        segment: 0,
                        index: i as u16,
                    },
                };
                async move { put_shard(&mut control, peer, slot, bytes, OP_TIMEOUT).await }
            })
            .await
        }
    })
    .await?;
    Ok((d, retries.load(Ordering::Relaxed)))
}

/// Gets every shard back (verified by `get_shard`); returns the wall time
/// and the number of retries.
async fn get_all(
    control: &Control,
    peer: PeerId,
    shards: &Arc<Vec<Shard>>,
    concurrency: usize,
) -> Result<(Duration, usize)> {
    let retries = Arc::new(AtomicUsize::new(0));
    let (control, shards, r) = (control.clone(), shards.clone(), retries.clone());
    let d = pool(shards.len(), concurrency, move |i| {
        let (control, shards, r) = (control.clone(), shards.clone(), r.clone());
        async move {
            let (id, bytes) = &shards[i];
            let got = with_retries(format!("get of shard {i} ({})", id.short()), &r, || {
                let mut control = control.clone();
                async move { get_shard(&mut control, peer, *id, OP_TIMEOUT).await }
            })
            .await?;
            if got.len() != bytes.len() {
                bail!("shard {i} came back with {} bytes", got.len());
            }
            Ok(())
        }
    })
    .await?;
    Ok((d, retries.load(Ordering::Relaxed)))
}

/// Time allowed for one measurement of `bytes`: a minute plus 5 MB/s.
fn budget(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / 5_000_000)
}

async fn timed<F>(what: &str, bytes: u64, fut: F) -> Result<Duration>
where
    F: Future<Output = Result<Duration>>,
{
    timed_n(what, bytes, fut).await
}

/// [`timed`] for any result.
async fn timed_n<T, F>(what: &str, bytes: u64, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let limit = budget(bytes);
    tokio::time::timeout(limit, fut)
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))?
        .with_context(|| format!("{what} failed"))
}

/// One row of the table: MB/s and retried streams per round.
#[derive(Debug)]
struct Row {
    path: &'static str,
    mb_s: Vec<f64>,
    retries: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    total_bytes: u64,
    n_shards: usize,
    reps: usize,
    concurrency: usize,
    in_process: bool,
    smoke: bool,
}

fn settings(bench: bool) -> Result<Settings> {
    let (mb, reps) = if bench {
        (env_number(MB_ENV, 256)?, env_number(REPS_ENV, 3)?)
    } else {
        (4, 1)
    };
    let concurrency = env_number(CONCURRENCY_ENV, CONCURRENCY)?;
    let n_shards = usize::try_from(mb).context("DYNOSTORE_BENCH_MB is too large")?;
    Ok(Settings {
        total_bytes: mb * MIB as u64,
        n_shards,
        reps: usize::try_from(reps).context("DYNOSTORE_BENCH_REPS is too large")?,
        concurrency: usize::try_from(concurrency)
            .context("DYNOSTORE_BENCH_CONCURRENCY is too large")?,
        in_process: std::env::var(INPROCESS_ENV).is_ok_and(|v| v == "1"),
        smoke: !bench,
    })
}

fn coordinator_main(bench: bool) -> Result<()> {
    let cfg = settings(bench)?;
    let psk = NetworkKey::random();
    // Every round stores a fresh set of shards on the server.
    let quota_mib = (cfg.total_bytes / MIB as u64) * cfg.reps as u64 + 64;
    // The server's node directory; removed after the server is gone.
    let dir = tempfile::Builder::new()
        .prefix("dynostore-bench-")
        .tempdir()
        .context("cannot create a temporary directory for the server's shard index")?;
    let (server, ready) = if cfg.in_process {
        spawn_server_thread(psk.clone(), quota_mib, dir.path())?
    } else {
        spawn_server_process(psk.clone(), quota_mib, dir.path())?
    };
    let rt = runtime()?;
    let result = rt.block_on(client(cfg, psk, &ready, &server));
    drop(rt);
    drop(server);
    drop(dir);
    result
}

async fn client(cfg: Settings, psk: NetworkKey, ready: &Ready, server: &Server) -> Result<()> {
    let total = cfg.total_bytes;
    let (mut psk_control, psk_peer) = connect(Some(psk), &ready.psk_addr).await?;
    let (mut open_control, open_peer) = connect(None, &ready.open_addr).await?;
    let mut chunk = vec![0u8; SHARD_BYTES];
    fill(&mut chunk, 0xC0FFEE);

    // Warm-up, not counted: connection set-up, page faults, TCP windows.
    let warm = (32 * MIB as u64).min(total);
    timed("TCP warm-up", warm, async {
        Ok(tcp_ref::copy(ready.tcp, warm, &chunk).await?)
    })
    .await?;
    timed(
        "stream warm-up (network key)",
        warm,
        stream_copy(&mut psk_control, psk_peer, warm, &chunk),
    )
    .await?;
    timed(
        "stream warm-up (no key)",
        warm,
        stream_copy(&mut open_control, open_peer, warm, &chunk),
    )
    .await?;

    let mut rows = [
        Row {
            path: "plain tokio TCP copy, one connection, 1 MiB writes",
            mb_s: vec![],
            retries: vec![],
        },
        Row {
            path: "libp2p-stream raw stream, TCP + Noise (network-key prologue) + Yamux (the node's transport)",
            mb_s: vec![],
            retries: vec![],
        },
        Row {
            path: "libp2p-stream raw stream, TCP + Noise + Yamux (open network, no key)",
            mb_s: vec![],
            retries: vec![],
        },
        Row {
            path: "shard put (`put_shard` -> `serve_stream` -> `ShardStore::put`), network key",
            mb_s: vec![],
            retries: vec![],
        },
        Row {
            path: "shard get (`get_shard` -> `serve_stream` -> `ShardStore::get`), network key",
            mb_s: vec![],
            retries: vec![],
        },
    ];
    for rep in 0..cfg.reps {
        let shards = make_shards(rep as u64 + 1, cfg.n_shards);
        let shard_bytes = (shards.len() * SHARD_BYTES) as u64;
        let d = timed("TCP copy", total, async {
            Ok(tcp_ref::copy(ready.tcp, total, &chunk).await?)
        })
        .await?;
        rows[0].mb_s.push(mb_per_s(total, d));
        rows[0].retries.push(0);
        let d = timed(
            "stream copy (network key)",
            total,
            stream_copy(&mut psk_control, psk_peer, total, &chunk),
        )
        .await?;
        rows[1].mb_s.push(mb_per_s(total, d));
        rows[1].retries.push(0);
        let d = timed(
            "stream copy (no key)",
            total,
            stream_copy(&mut open_control, open_peer, total, &chunk),
        )
        .await?;
        rows[2].mb_s.push(mb_per_s(total, d));
        rows[2].retries.push(0);
        let (d, retries) = timed_n(
            "shard put",
            shard_bytes,
            put_all(&psk_control, psk_peer, &shards, cfg.concurrency),
        )
        .await?;
        rows[3].mb_s.push(mb_per_s(shard_bytes, d));
        rows[3].retries.push(retries);
        let (d, retries) = timed_n(
            "shard get",
            shard_bytes,
            get_all(&psk_control, psk_peer, &shards, cfg.concurrency),
        )
        .await?;
        rows[4].mb_s.push(mb_per_s(shard_bytes, d));
        rows[4].retries.push(retries);
        eprintln!(
            "round {}/{}: {}",
            rep + 1,
            cfg.reps,
            rows.iter()
                .map(|r| format!("{:.0} MB/s ({} retried)", r.mb_s[rep], r.retries[rep]))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }

    println!();
    println!("## Shard transfer between two nodes over libp2p-stream, loopback");
    println!();
    println!(
        "N = {} MiB per measurement; shard size {} MiB ({} shards); {} shard requests in flight; \
         {}; {} round(s), interleaved; MB = 10^6 bytes; {} CPUs{}",
        total / MIB as u64,
        SHARD_BYTES / MIB,
        cfg.n_shards,
        cfg.concurrency,
        server.describe(),
        cfg.reps,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg.smoke {
            " (SMOKE RUN: not run with --bench)"
        } else {
            ""
        },
    );
    println!();
    println!(
        "| path | MB/s (median) | ratio to plain TCP (median per round) | MB/s per round \
         | streams reset by the server and retried, per round |"
    );
    println!("|---|---:|---:|---|---|");
    let tcp = rows[0].mb_s.clone();
    for row in &rows {
        let ratios: Vec<f64> = row.mb_s.iter().zip(&tcp).map(|(a, b)| a / b).collect();
        println!(
            "| {} | {:.0} | {:.3} | {} | {} |",
            row.path,
            median(&row.mb_s),
            median(&ratios),
            row.mb_s
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            row.retries
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!();
    println!(
        "Shard put includes, per 1 MiB shard: a new stream, BLAKE3 verification on the server, \
         the `mem:` container write and a durable sled index flush (sled in {}) before the \
         acknowledgement. Shard get includes a new stream, BLAKE3 on the server after reading \
         the container, and BLAKE3 again on the client.",
        ready.dir
    );
    println!(
        "Expected from FIGURES.md (two processes, 256 MiB, libp2p 0.57): plain TCP about 4.6 GB/s; \
         TCP + Noise + Yamux raw stream 930 MB/s = 0.20 of plain TCP (no key); \
         request-response cbor, 1 MiB requests, 8 in flight, 550 MB/s = 0.12; \
         figures move about 10% between runs."
    );

    diagnostics(&cfg).await
}

/// Where a shard put's time goes, without the network: the same store in
/// this process.
async fn diagnostics(cfg: &Settings) -> Result<()> {
    let n = cfg.n_shards;
    let bytes = (n * SHARD_BYTES) as u64;
    let n_seq = n.min(64);
    let dir = tempfile::Builder::new()
        .prefix("dynostore-bench-local-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let spec_text = format!("mem:{}MiB", n + n_seq + 64);
    let spec: ContainerSpec = spec_text
        .parse()
        .with_context(|| format!("container spec {spec_text:?}"))?;
    let store = ShardStore::open(dir.path(), &[spec])
        .await
        .with_context(|| format!("cannot open a shard store in {}", dir.path().display()))?;
    let shards = make_shards(1000, n);
    let seq = make_shards(1001, n_seq);

    let t = Instant::now();
    for (id, b) in shards.iter() {
        std::hint::black_box(ShardId::of(b) == *id);
    }
    let blake = mb_per_s(bytes, t.elapsed());

    let put = {
        let (store, shards) = (store.clone(), shards.clone());
        timed(
            "local put",
            bytes,
            pool(n, cfg.concurrency, move |i| {
                let (store, shards) = (store.clone(), shards.clone());
                async move {
                    let (id, b) = &shards[i];
                    Ok(store.put(*id, b.clone()).await?)
                }
            }),
        )
        .await?
    };
    let put_seq = {
        let (store, seq) = (store.clone(), seq.clone());
        timed(
            "local sequential put",
            bytes,
            pool(n_seq, 1, move |i| {
                let (store, seq) = (store.clone(), seq.clone());
                async move {
                    let (id, b) = &seq[i];
                    Ok(store.put(*id, b.clone()).await?)
                }
            }),
        )
        .await?
    };
    let get = {
        let (store, shards) = (store.clone(), shards.clone());
        timed(
            "local get",
            bytes,
            pool(n, cfg.concurrency, move |i| {
                let (store, shards) = (store.clone(), shards.clone());
                async move {
                    let (id, _) = &shards[i];
                    store.get(id).await?;
                    Ok(())
                }
            }),
        )
        .await?
    };
    let commit = commit_latency(&store, dir.path()).await?;

    println!();
    println!("### Diagnostics: the same `ShardStore` in the client process, no network");
    println!();
    println!("| what | figure |");
    println!("|---|---:|");
    println!("| BLAKE3 of 1 MiB shards, one thread (`ShardId::of`) | {blake:.0} MB/s |");
    println!(
        "| `ShardStore::put`, {} concurrent | {:.0} MB/s ({:.0} us per shard) |",
        cfg.concurrency,
        mb_per_s(bytes, put),
        put.as_secs_f64() * 1e6 / n as f64 * cfg.concurrency as f64
    );
    println!(
        "| `ShardStore::put`, one at a time ({n_seq} shards) | {:.0} MB/s ({:.0} us per shard) |",
        mb_per_s((n_seq * SHARD_BYTES) as u64, put_seq),
        put_seq.as_secs_f64() * 1e6 / n_seq as f64
    );
    println!(
        "| `ShardStore::get`, {} concurrent | {:.0} MB/s |",
        cfg.concurrency,
        mb_per_s(bytes, get)
    );
    println!("| sled insert + durable flush (`ShardStore::flush`), mean of 200 | {commit:.0} us |");
    Ok(())
}

/// Mean time of one small index write made durable.
async fn commit_latency(store: &ShardStore, dir: &Path) -> Result<f64> {
    let tree = store
        .kv_tree("bench-probe")
        .with_context(|| format!("index tree in {}", dir.display()))?;
    let n = 200u32;
    let t = Instant::now();
    for i in 0..n {
        tree.insert(&i.to_le_bytes(), &[0u8; 64])?;
        tokio::time::timeout(OP_TIMEOUT, store.flush())
            .await
            .context("index flush timed out")??;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}
