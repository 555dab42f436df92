//! Figure (issue 4): the data path through a six-node loopback cluster of
//! real `dynostore` node processes, against a raw libp2p stream measured in
//! the same run.
//!
//! `cargo bench -p dynostore-sim --bench cluster` prints markdown tables:
//! 1. A cluster of six `dynostore node` processes (this package's binary),
//!    each with its own directory, a `dir:` container (or `mem:`), its own
//!    site and one fresh network key; announce every 500 ms. The bench
//!    waits until every node's `status --json` lists all six as alive.
//! 2. Put of a 1 GiB file (k = 4, m = 2, default segment size) with the
//!    `dynostore put` CLI through one node, and get with `dynostore get`
//!    through another; the got file's BLAKE3 must equal the ID. The CLI
//!    runs under GNU time (`/usr/bin/time`, when present) for its peak RSS.
//! 3. 1,000 objects of 64 KiB put and then got with the client library in
//!    this process: one `Client` connection per node, objects spread over
//!    the six entry peers, a fixed number of operations in flight.
//! 4. The same as 2 with a 2 GiB file, then the peak RSS (`VmHWM`, read
//!    just before each node is stopped) of every process, against 300 MiB.
//! 5. The reference: 1 GiB copied over one raw `libp2p-stream` stream with
//!    the node's transport (TCP + Noise with the network-key prologue +
//!    Yamux) to a sink in a second process (this binary re-executed with
//!    `DYNOSTORE_BENCH_ROLE=sink`), before the put, between put and get and
//!    after the get; put and get are given as ratios to the median.
//!    Targets: put >= 0.3x and get >= 0.4x of it.
//! 6. Where the time goes: CPU seconds of every process per phase (from
//!    `/proc/PID/stat` and GNU time), CPU seconds per GiB, crossings (CPU
//!    seconds per GiB of all processes over the raw stream's, sender and
//!    sink, median of the three runs: issue 15's machine-independent
//!    figure), and the MB/s a
//!    phase would reach if it had every CPU and never waited; and the MB/s
//!    of writing the input file (fresh page-cache pages), which a `dir:`
//!    container and a get into a file pay too.
//!
//! 7. With `DYNOSTORE_BENCH_GARAGE` set (the path of a Garage 2.5.0
//!    binary, see `scripts/garage.sh`), once the cluster has stopped:
//!    `scripts/bench/side_by_side.py` runs three Garage nodes and six
//!    DynoStore nodes (this binary, S3 on its first node) one after the
//!    other under the same boto3 client, with this run's file size and
//!    small objects; then issue 15's table is printed with the three
//!    columns side by side (DynoStore, the raw stream, Garage), the
//!    ratios, and whether each target is met.
//!
//! Environment:
//! - `DYNOSTORE_BENCH_GARAGE`: a Garage binary: adds step 7.
//! - `DYNOSTORE_BENCH_PYTHON`: the Python with boto3 for step 7 (default
//!   `/opt/dynostore-s3-venv/bin/python`, from `scripts/s3-clients.sh`).
//! - `DYNOSTORE_BENCH_FILE_MB`: the throughput file, MiB (default 1024);
//!   the reference copies as many bytes.
//! - `DYNOSTORE_BENCH_BIG_MB`: the memory-target file, MiB (default 2048;
//!   0 skips it).
//! - `DYNOSTORE_BENCH_OBJECTS`, `DYNOSTORE_BENCH_OBJECT_KIB`: small objects
//!   (default 1000 of 64 KiB).
//! - `DYNOSTORE_BENCH_CONCURRENCY`: small-object operations in flight
//!   (default 8; 1 = sequential).
//! - `DYNOSTORE_BENCH_CONTAINER`: `dir` (default) or `mem`.
//! - `DYNOSTORE_BENCH_QUOTA_MIB`: each node's container quota (default 4096).
//! - `TMPDIR`: where the node directories, shards and files go.
//!
//! Without `--bench` (as under `cargo test --benches`) it runs a smoke
//! round: 8 MiB and 16 MiB files and 24 small objects.

mod common;

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use common::cluster::{node_bin, Cluster, ClusterSpec, ContainerKind};
use common::{
    budget, connect, cpu_delta, cpu_secs, env_number, exit_with_parent, fill, free_disk,
    get_retrying, hash_file, mb_per_s, median, mem_available, met, note, pool, put_retrying,
    read_ready_line, runtime, smoke_note, start_sink_swarm, stream_copy, vm_hwm_kib, write_file,
    COPY_CHUNK, MIB,
};
use dynostore_node::keys::{load_network_key, parse_network_key, NetworkKey};
use dynostore_node::objects::{Output, PutParams};
use dynostore_protocol::erasure::CodecKind;
use dynostore_protocol::ObjectId;
use libp2p::{Multiaddr, PeerId};
use libp2p_stream::Control;
use tokio::task::JoinSet;

const ROLE_ENV: &str = "DYNOSTORE_BENCH_ROLE";
const PSK_ENV: &str = "DYNOSTORE_BENCH_PSK";
const FILE_MB_ENV: &str = "DYNOSTORE_BENCH_FILE_MB";
const BIG_MB_ENV: &str = "DYNOSTORE_BENCH_BIG_MB";
const OBJECTS_ENV: &str = "DYNOSTORE_BENCH_OBJECTS";
const OBJECT_KIB_ENV: &str = "DYNOSTORE_BENCH_OBJECT_KIB";
const CONCURRENCY_ENV: &str = "DYNOSTORE_BENCH_CONCURRENCY";
const CONTAINER_ENV: &str = "DYNOSTORE_BENCH_CONTAINER";
const QUOTA_ENV: &str = "DYNOSTORE_BENCH_QUOTA_MIB";
const GARAGE_ENV: &str = "DYNOSTORE_BENCH_GARAGE";
const PYTHON_ENV: &str = "DYNOSTORE_BENCH_PYTHON";
const DEFAULT_PYTHON: &str = "/opt/dynostore-s3-venv/bin/python";

const GNU_TIME: &str = "/usr/bin/time";

const NODES: usize = 6;
const K: u16 = 4;
const M: u16 = 2;
/// Membership timings: fast announcements, and silence thresholds loose
/// enough that a node starved of CPU by a transfer is not declared suspect.
const ANNOUNCE_MS: u64 = 500;
const SUSPECT_MS: u64 = 5_000;
const DOWN_MS: u64 = 20_000;

/// The issue's targets.
const PUT_TARGET: f64 = 0.3;
const GET_TARGET: f64 = 0.4;
const RSS_LIMIT_MIB: f64 = 300.0;

/// Reference copies per run: before the put, between put and get, after the get.
const REF_RUNS: usize = 3;
const SERVER_MAX_LIFETIME: Duration = Duration::from_secs(3600);

fn main() -> ExitCode {
    common::init_tracing();
    let result = if std::env::var(ROLE_ENV).as_deref() == Ok("sink") {
        sink_process_main()
    } else {
        coordinator_main(std::env::args().any(|a| a == "--bench"))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- settings

#[derive(Debug, Clone)]
struct Settings {
    file_bytes: u64,
    big_bytes: u64,
    objects: usize,
    object_bytes: usize,
    concurrency: usize,
    container: ContainerKind,
    quota_mib: u64,
    smoke: bool,
}

/// Like [`env_number`], but 0 is allowed.
fn env_number_or_zero(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(s) if s.trim() == "0" => Ok(0),
        _ => env_number(name, default),
    }
}

fn settings(bench: bool) -> Result<Settings> {
    let (file_mb, big_mb, objects, quota) = if bench {
        (
            env_number(FILE_MB_ENV, 1024)?,
            env_number_or_zero(BIG_MB_ENV, 2048)?,
            env_number(OBJECTS_ENV, 1000)?,
            env_number(QUOTA_ENV, 4096)?,
        )
    } else {
        (8, 16, 24, env_number(QUOTA_ENV, 256)?)
    };
    let container = match std::env::var(CONTAINER_ENV).as_deref() {
        Err(_) | Ok("dir") => ContainerKind::Dir,
        Ok("mem") => ContainerKind::Mem,
        Ok(other) => bail!("{CONTAINER_ENV}={other:?}: expected dir or mem"),
    };
    Ok(Settings {
        file_bytes: file_mb * MIB as u64,
        big_bytes: big_mb * MIB as u64,
        objects: usize::try_from(objects).context("too many objects")?,
        object_bytes: usize::try_from(env_number(OBJECT_KIB_ENV, 64)? * 1024)
            .context("object size too large")?,
        concurrency: usize::try_from(env_number(CONCURRENCY_ENV, 8)?)
            .context("concurrency too large")?,
        container,
        quota_mib: quota,
        smoke: !bench,
    })
}

// ---------------------------------------------------------------- the reference sink process

/// The re-executed sink: one swarm with the node's transport and the
/// network key from `DYNOSTORE_BENCH_PSK`; prints `READY <multiaddr>`.
fn sink_process_main() -> Result<()> {
    let psk_text = std::env::var(PSK_ENV).with_context(|| format!("{PSK_ENV} is not set"))?;
    let psk = parse_network_key(&psk_text).map_err(|e| anyhow!("{PSK_ENV}: {e}"))?;
    exit_with_parent(SERVER_MAX_LIFETIME);
    let rt = runtime()?;
    rt.block_on(async move {
        let mut tasks = JoinSet::new();
        let addr = start_sink_swarm(Some(psk), &mut tasks).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {addr}").context("cannot write the READY line")?;
        out.flush().context("cannot write the READY line")?;
        drop(out);
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// The sink process, killed when dropped.
#[derive(Debug)]
struct SinkProcess {
    child: Child,
    addr: Multiaddr,
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_sink(psk: &NetworkKey) -> Result<SinkProcess> {
    let exe = std::env::current_exe().context("cannot find this bench binary to re-execute")?;
    let mut child = Command::new(&exe)
        .env(ROLE_ENV, "sink")
        .env(PSK_ENV, psk.to_key_file())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start the sink process {}", exe.display()))?;
    let stdout = child.stdout.take();
    let mut sink = SinkProcess {
        child,
        addr: Multiaddr::empty(),
    };
    let stdout = stdout.ok_or_else(|| anyhow!("the sink process has no stdout pipe"))?;
    let line = read_ready_line(stdout)?;
    sink.addr = line
        .trim_end()
        .strip_prefix("READY ")
        .ok_or_else(|| anyhow!("the sink announced {line:?}, not a READY line"))?
        .parse()
        .context("the sink's multiaddr")?;
    Ok(sink)
}

/// A connection to the sink and the bytes it copies.
struct Reference {
    control: Control,
    peer: PeerId,
    chunk: Vec<u8>,
    bytes: u64,
    sink_pid: u32,
    runs: Vec<RefRun>,
}

/// One counted reference copy.
#[derive(Debug, Clone, Copy)]
struct RefRun {
    mb_s: f64,
    /// CPU seconds of the sending (bench) process and of the sink process.
    cpu_sender: f64,
    cpu_sink: f64,
}

impl Reference {
    async fn connect(psk: &NetworkKey, sink: &SinkProcess, bytes: u64) -> Result<Reference> {
        let (control, peer) = connect(Some(psk.clone()), &sink.addr).await?;
        let mut chunk = vec![0u8; COPY_CHUNK];
        fill(&mut chunk, 0xC0FFEE);
        let mut r = Reference {
            control,
            peer,
            chunk,
            bytes,
            sink_pid: sink.child.id(),
            runs: Vec::new(),
        };
        // Warm-up, not counted: connection set-up, page faults, windows.
        let warm = (32 * MIB as u64).min(bytes);
        r.copy(warm).await?;
        Ok(r)
    }

    async fn copy(&mut self, bytes: u64) -> Result<Duration> {
        let limit = budget(bytes);
        tokio::time::timeout(
            limit,
            stream_copy(&mut self.control, self.peer, bytes, &self.chunk),
        )
        .await
        .with_context(|| format!("raw stream copy did not finish within {limit:?}"))?
        .context("raw stream copy failed")
    }

    /// One counted run.
    async fn run(&mut self) -> Result<()> {
        let me = std::process::id();
        let (s0, k0) = (cpu_secs(me), cpu_secs(self.sink_pid));
        let d = self.copy(self.bytes).await?;
        let (s1, k1) = (cpu_secs(me), cpu_secs(self.sink_pid));
        let run = RefRun {
            mb_s: mb_per_s(self.bytes, d),
            cpu_sender: s1.zip(s0).map_or(f64::NAN, |(a, b)| a - b),
            cpu_sink: k1.zip(k0).map_or(f64::NAN, |(a, b)| a - b),
        };
        note(&format!("reference: raw stream {:.0} MB/s", run.mb_s));
        self.runs.push(run);
        Ok(())
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------- CLI processes

/// A finished CLI command. Peak RSS comes from GNU time's `%M` (the
/// kernel's `ru_maxrss` at exit) when `/usr/bin/time` works, else from
/// `VmHWM` polled every 5 ms while the process runs.
#[derive(Debug)]
struct Measured {
    elapsed: Duration,
    stdout: String,
    peak_kib: Option<u64>,
    cpu: Option<f64>,
}

/// A CLI process, killed (with its process group, under GNU time) when dropped.
#[derive(Debug)]
struct CliGuard {
    child: Child,
    group: bool,
}

impl Drop for CliGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if self.group {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", self.child.id())])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn gnu_time_works() -> bool {
    Command::new(GNU_TIME)
        .args(["-f", "%M", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `dynostore ARGS` with the network key, measuring wall time, peak
/// RSS and CPU time; fails on a non-zero exit or after `limit`.
fn run_cli(
    key: &Path,
    work: &Path,
    label: &str,
    args: &[&str],
    limit: Duration,
    use_time: bool,
) -> Result<Measured> {
    let out_path = work.join(format!("{label}.stdout"));
    let err_path = work.join(format!("{label}.stderr"));
    let time_path = work.join(format!("{label}.time"));
    let mut cmd = if use_time {
        use std::os::unix::process::CommandExt as _;
        let mut c = Command::new(GNU_TIME);
        c.args(["-f", "%M %U %S", "-o"])
            .arg(&time_path)
            .arg(node_bin())
            .args(args)
            // Its own group, so that a timeout kills GNU time and the CLI.
            .process_group(0);
        c
    } else {
        let mut c = Command::new(node_bin());
        c.args(args);
        c
    };
    cmd.env("DYNOSTORE_NETWORK_KEY", key)
        .env_remove("DYNOSTORE_PEER")
        .stdin(Stdio::null())
        .stdout(Stdio::from(fs::File::create(&out_path)?))
        .stderr(Stdio::from(fs::File::create(&err_path)?));
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run dynostore {}", args.join(" ")))?;
    let mut guard = CliGuard {
        child,
        group: use_time,
    };
    let pid = guard.child.id();
    let (mut peak, mut cpu) = (None::<u64>, None::<f64>);
    let status = loop {
        if let Some(s) = guard.child.try_wait().context("waiting for the CLI")? {
            break s;
        }
        if !use_time {
            if let Some(h) = vm_hwm_kib(pid) {
                peak = Some(peak.map_or(h, |p| p.max(h)));
            }
            cpu = cpu_secs(pid).or(cpu);
        }
        if start.elapsed() > limit {
            bail!(
                "dynostore {} did not finish within {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "dynostore {} failed ({status}): {}",
            args.join(" "),
            stderr.trim()
        );
    }
    if use_time {
        let text = fs::read_to_string(&time_path).context("GNU time's output")?;
        let last = text.lines().last().unwrap_or_default();
        let f: Vec<&str> = last.split_whitespace().collect();
        peak = f.first().and_then(|v| v.parse().ok());
        cpu = match (
            f.get(1).and_then(|v| v.parse::<f64>().ok()),
            f.get(2).and_then(|v| v.parse::<f64>().ok()),
        ) {
            (Some(u), Some(s)) => Some(u + s),
            _ => None,
        };
    }
    Ok(Measured {
        elapsed,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        peak_kib: peak,
        cpu,
    })
}

// ---------------------------------------------------------------- large objects

/// One large put or get through the CLI.
#[derive(Debug)]
struct LargeOp {
    what: String,
    bytes: u64,
    entry: String,
    measured: Measured,
    /// CPU seconds of each node during the operation.
    node_cpu: Vec<f64>,
}

impl LargeOp {
    fn mb_s(&self) -> f64 {
        mb_per_s(self.bytes, self.measured.elapsed)
    }
}

/// A large put and get, and how fast the input file was written.
#[derive(Debug)]
struct LargeRound {
    put: LargeOp,
    get: LargeOp,
    /// MB/s of the write calls that wrote the input file: what writing
    /// fresh file pages costs on this machine (the get writes as many).
    file_write_mb_s: f64,
}

/// Puts a file of `bytes` through node `put_at` and gets it back through
/// node `get_at`, verifying the got bytes; `between` runs after the put,
/// `after` after the get (reference copies).
#[allow(clippy::too_many_arguments)]
fn large_round(
    cluster: &mut Cluster,
    work: &Path,
    label: &str,
    bytes: u64,
    put_at: usize,
    get_at: usize,
    use_time: bool,
    mut between: impl FnMut() -> Result<()>,
) -> Result<LargeRound> {
    let input = work.join(format!("{label}.in"));
    let output = work.join(format!("{label}.out"));
    note(&format!(
        "{label}: writing a {} MiB file",
        bytes / MIB as u64
    ));
    let (expected, writing) = write_file(&input, bytes, 0xB16_F11E ^ bytes)?;
    let limit = budget(bytes);

    let put_entry = cluster.nodes[put_at].addr.clone();
    let before = cluster.cpu();
    let put = run_cli(
        &cluster.key,
        work,
        &format!("{label}-put"),
        &[
            "put",
            "--json",
            "--k",
            &K.to_string(),
            "--m",
            &M.to_string(),
            "--peer",
            &put_entry,
            input.to_str().context("non-UTF-8 temporary path")?,
        ],
        limit,
        use_time,
    )?;
    let put_cpu = cpu_delta(&before, &cluster.cpu());
    cluster.check_running()?;
    let receipt: serde_json::Value = serde_json::from_str(put.stdout.trim())
        .with_context(|| format!("put --json printed {:?}", put.stdout))?;
    let id = receipt["id"]
        .as_str()
        .ok_or_else(|| anyhow!("put --json printed no id: {receipt}"))?
        .to_string();
    if id != expected {
        bail!("{label}: the put returned ID {id}, the file's BLAKE3 is {expected}");
    }
    note(&format!(
        "{label}: put {:.0} MB/s through {}",
        mb_per_s(bytes, put.elapsed),
        cluster.nodes[put_at].name
    ));
    between()?;

    let get_entry = cluster.nodes[get_at].addr.clone();
    let before = cluster.cpu();
    let got = run_cli(
        &cluster.key,
        work,
        &format!("{label}-get"),
        &[
            "get",
            &id,
            "--peer",
            &get_entry,
            "-o",
            output.to_str().context("non-UTF-8 temporary path")?,
        ],
        limit,
        use_time,
    )?;
    let get_cpu = cpu_delta(&before, &cluster.cpu());
    cluster.check_running()?;
    let actual = hash_file(&output)?;
    if actual != id {
        bail!("{label}: the got file hashes to {actual}, not to its ID {id}");
    }
    note(&format!(
        "{label}: get {:.0} MB/s through {}; BLAKE3 verified",
        mb_per_s(bytes, got.elapsed),
        cluster.nodes[get_at].name
    ));
    let _ = fs::remove_file(&input);
    let _ = fs::remove_file(&output);
    Ok(LargeRound {
        file_write_mb_s: mb_per_s(bytes, writing),
        put: LargeOp {
            what: format!("put {} MiB (`dynostore put`)", bytes / MIB as u64),
            bytes,
            entry: cluster.nodes[put_at].name.clone(),
            measured: put,
            node_cpu: put_cpu,
        },
        get: LargeOp {
            what: format!("get {} MiB (`dynostore get -o FILE`)", bytes / MIB as u64),
            bytes,
            entry: cluster.nodes[get_at].name.clone(),
            measured: got,
            node_cpu: get_cpu,
        },
    })
}

// ---------------------------------------------------------------- small objects

#[derive(Debug)]
struct SmallOps {
    what: &'static str,
    wall: Duration,
    latencies: Vec<Duration>,
    retries: usize,
    node_cpu: Vec<f64>,
    client_cpu: f64,
}

impl SmallOps {
    fn percentile_ms(&self, q: f64) -> f64 {
        let mut v = self.latencies.clone();
        v.sort();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1].as_secs_f64() * 1e3
    }
}

async fn small_objects(
    cluster: &Cluster,
    psk: &NetworkKey,
    dir: &Path,
    cfg: &Settings,
) -> Result<(SmallOps, SmallOps)> {
    let n = cfg.objects;
    let mut paths = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut data = vec![0u8; cfg.object_bytes];
    for i in 0..n {
        fill(&mut data, 0x5_3A11 + i as u64);
        let p = dir.join(format!("obj-{i}"));
        fs::write(&p, &data).with_context(|| format!("write {}", p.display()))?;
        paths.push(p);
        ids.push(ObjectId::from_hash(blake3::hash(&data)));
    }
    let clients = Arc::new(cluster.clients(psk).await?);
    let paths = Arc::new(paths);
    let ids = Arc::new(ids);
    let size = cfg.object_bytes as u64;

    // Put: object i through node i mod 6.
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let retries = Arc::new(AtomicUsize::new(0));
    let (cpu0, self0) = (cluster.cpu(), cpu_secs(std::process::id()).unwrap_or(0.0));
    let wall = {
        let (clients, paths, ids, lat, retries) = (
            clients.clone(),
            paths.clone(),
            ids.clone(),
            lat.clone(),
            retries.clone(),
        );
        pool(n, cfg.concurrency, move |i| {
            let (clients, paths, ids, lat, retries) = (
                clients.clone(),
                paths.clone(),
                ids.clone(),
                lat.clone(),
                retries.clone(),
            );
            async move {
                let params = PutParams {
                    codec: CodecKind::ReedSolomonSimd,
                    k: K,
                    m: M,
                    segment_size: None,
                    name: Some(format!("small-{i}")),
                    durability: None,
                    reclaimable: false,
                };
                let client = &clients[i % NODES];
                let start = Instant::now();
                match put_retrying(client, &paths[i], &params, &retries).await {
                    Ok(r) if r.object == ids[i] => {}
                    Ok(r) => bail!("object {i}: the put returned ID {}", r.object),
                    Err(e) => bail!("put of object {i} through n{}: {e}", i % NODES),
                }
                lat.lock().expect("latency lock").push(start.elapsed());
                Ok(())
            }
        })
    };
    let wall = tokio::time::timeout(budget(size * n as u64 * 4), wall)
        .await
        .context("small-object puts did not finish in time")??;
    let put = SmallOps {
        what: "put",
        wall,
        latencies: std::mem::take(&mut *lat.lock().expect("latency lock")),
        retries: retries.swap(0, Ordering::Relaxed),
        node_cpu: cpu_delta(&cpu0, &cluster.cpu()),
        client_cpu: cpu_secs(std::process::id()).unwrap_or(0.0) - self0,
    };
    note(&format!(
        "small objects: put {:.0} ops/s",
        n as f64 / put.wall.as_secs_f64()
    ));

    // Get: object i through node (i + 3) mod 6, never the one it was put through.
    let (cpu0, self0) = (cluster.cpu(), cpu_secs(std::process::id()).unwrap_or(0.0));
    let wall = {
        let (clients, ids, lat, retries) =
            (clients.clone(), ids.clone(), lat.clone(), retries.clone());
        let dir = dir.to_path_buf();
        pool(n, cfg.concurrency, move |i| {
            let (clients, ids, lat, retries) =
                (clients.clone(), ids.clone(), lat.clone(), retries.clone());
            let out = Output::File(dir.join(format!("got-{i}")));
            async move {
                let entry = (i + NODES / 2) % NODES;
                let client = &clients[entry];
                let start = Instant::now();
                match get_retrying(client, ids[i], &out, &retries).await {
                    Ok((got, _)) if got == size => {}
                    Ok((got, _)) => bail!("object {i}: got {got} bytes, put {size}"),
                    Err(e) => bail!("get of object {i} through n{entry}: {e}"),
                }
                lat.lock().expect("latency lock").push(start.elapsed());
                Ok(())
            }
        })
    };
    let wall = tokio::time::timeout(budget(size * n as u64 * 4), wall)
        .await
        .context("small-object gets did not finish in time")??;
    let get = SmallOps {
        what: "get",
        wall,
        latencies: std::mem::take(&mut *lat.lock().expect("latency lock")),
        retries: retries.load(Ordering::Relaxed),
        node_cpu: cpu_delta(&cpu0, &cluster.cpu()),
        client_cpu: cpu_secs(std::process::id()).unwrap_or(0.0) - self0,
    };
    note(&format!(
        "small objects: get {:.0} ops/s",
        n as f64 / get.wall.as_secs_f64()
    ));
    Ok((put, get))
}

// ---------------------------------------------------------------- the run

fn coordinator_main(bench: bool) -> Result<()> {
    let cfg = settings(bench)?;
    let started = Instant::now();
    note("starting");
    let use_time = gnu_time_works();
    let work = tempfile::Builder::new()
        .prefix("dynostore-cluster-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;

    // Room for every shard (1.5x of each object), the input and output of
    // the largest file at once, and a margin.
    let shard_bytes =
        (cfg.file_bytes + cfg.big_bytes + (cfg.objects * cfg.object_bytes) as u64) * 3 / 2;
    let local_bytes =
        2 * cfg.file_bytes.max(cfg.big_bytes) + 2 * (cfg.objects * cfg.object_bytes) as u64;
    let margin = if cfg.smoke { 64 * MIB as u64 } else { 1 << 30 };
    let free = free_disk(work.path())?;
    let disk_need = local_bytes
        + margin
        + if cfg.container == ContainerKind::Dir {
            shard_bytes
        } else {
            0
        };
    if free < disk_need {
        bail!(
            "{} has {} MiB free, the bench needs about {} MiB; set TMPDIR elsewhere or lower \
             {FILE_MB_ENV} / {BIG_MB_ENV}",
            work.path().display(),
            free / MIB as u64,
            disk_need / MIB as u64
        );
    }
    if cfg.container == ContainerKind::Mem {
        if let Some(avail) = mem_available() {
            if avail < shard_bytes + margin {
                bail!(
                    "mem: containers need about {} MiB of memory, {} MiB are available",
                    (shard_bytes + margin) / MIB as u64,
                    avail / MIB as u64
                );
            }
        }
    }
    let per_node = shard_bytes / NODES as u64;
    if per_node * 2 > cfg.quota_mib * MIB as u64 {
        bail!(
            "{QUOTA_ENV}={} is tight for about {} MiB of shards per node",
            cfg.quota_mib,
            per_node / MIB as u64
        );
    }

    let rt = runtime()?;
    // Network key first: the nodes, the in-process clients and the
    // reference all use it.
    let mut cluster = Cluster::start(
        work.path(),
        &ClusterSpec {
            nodes: NODES,
            container: cfg.container,
            quota_mib: cfg.quota_mib,
            announce_ms: ANNOUNCE_MS,
            suspect_ms: SUSPECT_MS,
            down_ms: DOWN_MS,
            init_args: Vec::new(),
        },
    )?;
    let psk = load_network_key(&cluster.key).context("the network key")?;
    let sink = spawn_sink(&psk)?;
    let mut reference = rt.block_on(Reference::connect(&psk, &sink, cfg.file_bytes))?;
    let converge = cluster.wait_converged()?;
    note(&format!(
        "cluster converged in {:.1} s",
        converge.as_secs_f64()
    ));

    // 1. Throughput file, with the reference before, between and after.
    rt.block_on(reference.run())?;
    let first = large_round(
        &mut cluster,
        work.path(),
        "file",
        cfg.file_bytes,
        0,
        3,
        use_time,
        || rt.block_on(reference.run()),
    )?;
    rt.block_on(reference.run())?;
    debug_assert_eq!(reference.runs.len(), REF_RUNS);

    // 2. Small objects through the client library in this process.
    let small_dir = work.path().join("small");
    fs::create_dir_all(&small_dir).context("small-object directory")?;
    let (small_put, small_get) = rt.block_on(small_objects(&cluster, &psk, &small_dir, &cfg))?;
    let _ = fs::remove_dir_all(&small_dir);
    cluster.check_running()?;

    // 3. The memory target: a big file through two other entry peers.
    let big = if cfg.big_bytes > 0 {
        Some(large_round(
            &mut cluster,
            work.path(),
            "big",
            cfg.big_bytes,
            1,
            4,
            use_time,
            || Ok(()),
        )?)
    } else {
        None
    };

    // 4. Peak RSS of every process, then stop.
    let bench_hwm = vm_hwm_kib(std::process::id());
    let sink_hwm = vm_hwm_kib(sink.child.id());
    note("stopping the nodes");
    cluster.stop();
    let refs = std::mem::take(&mut reference.runs);
    drop(reference);
    drop(sink);
    drop(rt);
    note("stopped");
    // After the cluster, so that the two systems do not share the machine
    // with it; the run's figures are then read side by side.
    let s3 = if bench { side_by_side(&cfg)? } else { None };

    report(&Report {
        cfg: &cfg,
        converge,
        use_time,
        refs: &refs,
        first: &first,
        small: [&small_put, &small_get],
        big: big.as_ref(),
        cluster: &cluster,
        bench_hwm,
        sink_hwm,
        total: started.elapsed(),
        s3: s3.as_ref(),
    });
    drop(cluster);
    note("removing the temporary directory");
    drop(work);
    note("done");
    Ok(())
}

// ---------------------------------------------------------------- the report

#[derive(Debug)]
struct Report<'a> {
    cfg: &'a Settings,
    converge: Duration,
    use_time: bool,
    refs: &'a [RefRun],
    first: &'a LargeRound,
    small: [&'a SmallOps; 2],
    big: Option<&'a LargeRound>,
    cluster: &'a Cluster,
    bench_hwm: Option<u64>,
    sink_hwm: Option<u64>,
    total: Duration,
    s3: Option<&'a SideBySide>,
}

/// Garage and DynoStore through S3 in this run: each system's figures by
/// phase ("big put", "big get", "64K put", "64K get"), as
/// `side_by_side.py --json` prints them.
#[derive(Debug)]
struct SideBySide {
    garage: Vec<serde_json::Value>,
    dynostore: Vec<serde_json::Value>,
}

impl SideBySide {
    fn figure(&self, garage: bool, phase: &str, name: &str) -> f64 {
        let phases = if garage {
            &self.garage
        } else {
            &self.dynostore
        };
        phases
            .iter()
            .find(|p| p["phase"] == phase)
            .and_then(|p| p[name].as_f64())
            .unwrap_or(f64::NAN)
    }
}

/// Step 7: `side_by_side.py` with this run's sizes, when
/// `DYNOSTORE_BENCH_GARAGE` names a Garage binary.
fn side_by_side(cfg: &Settings) -> Result<Option<SideBySide>> {
    let Ok(garage) = std::env::var(GARAGE_ENV) else {
        return Ok(None);
    };
    let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| DEFAULT_PYTHON.to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench/side_by_side.py");
    note("Garage and DynoStore through S3 (scripts/bench/side_by_side.py, about 5 minutes)");
    let out = Command::new(&python)
        .arg(&script)
        .args(["--dynostore", node_bin(), "--garage", &garage, "--json"])
        .args(["--big-mib", &(cfg.file_bytes / MIB as u64).to_string()])
        .args(["--small", &cfg.objects.to_string()])
        .args(["--small-kib", &(cfg.object_bytes / 1024).to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {python} {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("side_by_side.py's JSON")?;
    let phases = |name: &str| -> Result<Vec<serde_json::Value>> {
        v["results"][name]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("side_by_side.py printed no results for {name}"))
    };
    Ok(Some(SideBySide {
        garage: phases("garage")?,
        dynostore: phases("dynostore")?,
    }))
}

/// Issue 15's table: this run's DynoStore (CLI and in-process client for
/// the crossings and CPU per object, S3 for the comparison), the raw
/// stream and Garage, side by side.
fn issue15_table(r: &Report<'_>, s3: &SideBySide, crossing: f64) {
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let crossings = |op: &LargeOp| {
        let all = op.measured.cpu.unwrap_or(f64::NAN) + op.node_cpu.iter().sum::<f64>();
        all / gib(op.bytes) / crossing
    };
    let per_object_ms =
        |s: &SmallOps| s.node_cpu.iter().sum::<f64>() * 1000.0 / s.latencies.len().max(1) as f64;
    let f = |garage: bool, phase: &str, name: &str| s3.figure(garage, phase, name);
    let ratio = |phase: &str, name: &str| f(false, phase, name) / f(true, phase, name);
    println!();
    println!(
        "### Issue 15's targets in one run: DynoStore, the raw stream ({crossing:.2} CPU-s/GiB \
         = one crossing) and Garage (three nodes, replication 3)"
    );
    println!();
    println!("| figure | DynoStore | raw stream | Garage | DynoStore / Garage | target | met |");
    println!("|---|---:|---:|---:|---:|---|---|");
    let row = |what: &str,
               ours: String,
               raw: &str,
               theirs: String,
               ratio: String,
               target: &str,
               ok: Option<bool>| {
        println!(
            "| {what} | {ours} | {raw} | {theirs} | {ratio} | {target} | {} |",
            ok.map_or("-", met)
        );
    };
    let put = crossings(&r.first.put);
    let get = crossings(&r.first.get);
    let s3_cross = |garage: bool, phase: &str| f(garage, phase, "all_cpu_s_per_gib") / crossing;
    row(
        "1 GiB put (CLI), crossings",
        format!("{put:.2}"),
        "1.00",
        "-".into(),
        "-".into(),
        "<= 3",
        Some(put <= 3.0),
    );
    row(
        "1 GiB get (CLI), crossings",
        format!("{get:.2}"),
        "1.00",
        "-".into(),
        "-".into(),
        "<= 2.5",
        Some(get <= 2.5),
    );
    for (phase, what) in [("big put", "1 GiB put"), ("big get", "1 GiB get")] {
        row(
            &format!("{what} through S3, crossings (client included)"),
            format!("{:.2}", s3_cross(false, phase)),
            "1.00",
            format!("{:.2}", s3_cross(true, phase)),
            format!("{:.2}", s3_cross(false, phase) / s3_cross(true, phase)),
            "-",
            None,
        );
    }
    let small_put = per_object_ms(r.small[0]);
    let small_get = per_object_ms(r.small[1]);
    row(
        "64 KiB put, CPU ms per object, all node processes (client library)",
        format!("{small_put:.2}"),
        "-",
        "-".into(),
        "-".into(),
        "<= 5",
        Some(small_put <= 5.0),
    );
    row(
        "64 KiB get, CPU ms per object, all node processes (client library)",
        format!("{small_get:.2}"),
        "-",
        "-".into(),
        "-".into(),
        "<= 2",
        Some(small_get <= 2.0),
    );
    let targets: [(&str, &str, &str, &str, f64, bool); 12] = [
        (
            "1 GiB put through S3, MB/s",
            "big put",
            "mb_s",
            ">= 2.5x Garage",
            2.5,
            true,
        ),
        (
            "1 GiB put through S3, server CPU-s/GiB",
            "big put",
            "server_cpu_s_per_gib",
            "-",
            0.0,
            true,
        ),
        (
            "1 GiB get through S3, MB/s",
            "big get",
            "mb_s",
            ">= 0.8x Garage",
            0.8,
            true,
        ),
        (
            "1 GiB get through S3, server CPU-s/GiB",
            "big get",
            "server_cpu_s_per_gib",
            "-",
            0.0,
            true,
        ),
        (
            "64 KiB put through S3, ops/s",
            "64K put",
            "ops_s",
            ">= 2x Garage",
            2.0,
            true,
        ),
        (
            "64 KiB put through S3, server CPU ms/object",
            "64K put",
            "server_cpu_ms_per_op",
            "-",
            0.0,
            true,
        ),
        (
            "64 KiB put through S3, client CPU ms/object",
            "64K put",
            "client_cpu_ms_per_op",
            "-",
            0.0,
            true,
        ),
        (
            "64 KiB put through S3, p99 ms",
            "64K put",
            "p99_ms",
            "<= Garage's",
            1.0,
            false,
        ),
        (
            "64 KiB get through S3, ops/s",
            "64K get",
            "ops_s",
            ">= 1.5x Garage",
            1.5,
            true,
        ),
        (
            "64 KiB get through S3, server CPU ms/object",
            "64K get",
            "server_cpu_ms_per_op",
            "-",
            0.0,
            true,
        ),
        (
            "64 KiB get through S3, client CPU ms/object",
            "64K get",
            "client_cpu_ms_per_op",
            "-",
            0.0,
            true,
        ),
        (
            "64 KiB get through S3, p99 ms",
            "64K get",
            "p99_ms",
            "<= Garage's",
            1.0,
            false,
        ),
    ];
    for (what, phase, name, target, bound, at_least) in targets {
        let x = ratio(phase, name);
        let ok = (bound > 0.0).then_some(if at_least { x >= bound } else { x <= bound });
        row(
            what,
            format!("{:.2}", f(false, phase, name)),
            "-",
            format!("{:.2}", f(true, phase, name)),
            format!("{x:.2}"),
            target,
            ok,
        );
    }
    println!();
    println!(
        "The CLI rows are steps 2 and 3 of this run; the S3 rows come from \
         `scripts/bench/side_by_side.py` run after the cluster stopped, one system at a time, \
         the same boto3 client (16 threads for small objects) against both. A boto3 client \
         spends about 1 ms of CPU per small operation in one Python process, which bounds \
         small-object ops/s on both sides (its rows above)."
    );
}

fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".to_string(), |k| format!("{:.0}", mib(k)))
}

fn under_limit(kib: Option<u64>) -> &'static str {
    match kib {
        Some(k) if mib(k) < RSS_LIMIT_MIB => "PASS",
        Some(_) => "FAIL",
        None => "unknown",
    }
}

fn fmt_secs(s: Option<f64>) -> String {
    s.map_or_else(|| "?".to_string(), |c| format!("{c:.2}"))
}

fn report(r: &Report<'_>) {
    let cfg = r.cfg;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ref_mb_s: Vec<f64> = r.refs.iter().map(|x| x.mb_s).collect();
    let reference = median(&ref_mb_s);
    let names: Vec<&str> = r.cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    // One crossing: the CPU seconds per GiB of the raw stream, sender and
    // sink together (the median of the three runs).
    let ref_cpu: Vec<f64> = r
        .refs
        .iter()
        .map(|x| (x.cpu_sender + x.cpu_sink) / gib(cfg.file_bytes))
        .collect();
    let crossing = median(&ref_cpu);
    let rss_method = if r.use_time {
        "GNU time %M, the kernel's ru_maxrss"
    } else {
        "VmHWM polled every 5 ms"
    };
    let mut rounds = vec![r.first];
    rounds.extend(r.big);

    println!();
    println!("## Data path through a six-node loopback cluster (issue 4)");
    println!();
    println!(
        "{NODES} `dynostore node` processes ({}), one site each, `{}` containers of {} \
         MiB under {}; announce {ANNOUNCE_MS} ms; converged (every node's `status --json` lists \
         all six alive) in {:.1} s. Objects k={K}, m={M}, codec reed-solomon-simd, default \
         segment size ({K} MiB, so 1 MiB shards). MB = 10^6 bytes, MiB = 2^20. {cpus} CPUs. \
         Whole run {:.0} s.{}",
        node_bin(),
        match cfg.container {
            ContainerKind::Dir => "dir:",
            ContainerKind::Mem => "mem:",
        },
        cfg.quota_mib,
        std::env::temp_dir().display(),
        r.converge.as_secs_f64(),
        r.total.as_secs_f64(),
        smoke_note(cfg.smoke),
    );

    println!();
    println!(
        "### Reference: {} MiB over one raw libp2p stream (the node's transport: TCP + Noise \
         with the network-key prologue + Yamux), bench process to a sink process",
        cfg.file_bytes / MIB as u64
    );
    println!();
    println!("| when | MB/s | CPU s, sender + sink | CPU s per GiB |");
    println!("|---|---:|---:|---:|");
    for (when, x) in ["before the put", "between put and get", "after the get"]
        .iter()
        .zip(r.refs)
    {
        let cpu = x.cpu_sender + x.cpu_sink;
        println!(
            "| {when} | {:.0} | {:.2} + {:.2} | {:.2} |",
            x.mb_s,
            x.cpu_sender,
            x.cpu_sink,
            cpu / gib(cfg.file_bytes)
        );
    }
    println!(
        "| **median: the reference below** | **{reference:.0}** | | **{crossing:.2}: one \
         crossing** |"
    );
    println!();
    for round in &rounds {
        println!(
            "Writing the {} MiB input file (write calls only, fresh page-cache pages): {:.0} MB/s.",
            round.put.bytes / MIB as u64,
            round.file_write_mb_s
        );
    }

    println!();
    println!(
        "### Large objects through the CLI (a separate client process; wall time from spawn to \
         exit, including hashing the file before a put and writing the file on a get)"
    );
    println!();
    println!(
        "| operation | entry node | wall s | MB/s | ratio to the raw stream | target | \
         client peak RSS MiB | client CPU s |"
    );
    println!("|---|---|---:|---:|---:|---|---:|---:|");
    let mut large: Vec<(&LargeOp, Option<f64>)> = Vec::new();
    for (i, round) in rounds.iter().enumerate() {
        let first = i == 0;
        large.push((&round.put, first.then_some(PUT_TARGET)));
        large.push((&round.get, first.then_some(GET_TARGET)));
    }
    for (op, target) in &large {
        let ratio = op.mb_s() / reference;
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.3} | {} | {} | {} |",
            op.what,
            op.entry,
            op.measured.elapsed.as_secs_f64(),
            op.mb_s(),
            ratio,
            target.map_or_else(
                || "-".to_string(),
                |t| format!(">= {t}x: {}", met(ratio >= t))
            ),
            fmt_mib(op.measured.peak_kib),
            fmt_secs(op.measured.cpu),
        );
    }
    println!();
    println!(
        "Every got file's BLAKE3 equals its put ID (checked by the bench after each get, besides \
         the CLI's own check). The get goes through a different node than the put. Client peak \
         RSS: {rss_method}."
    );

    println!();
    println!(
        "### Small objects through the client library in the bench process ({} objects of {} KiB)",
        cfg.objects,
        cfg.object_bytes / 1024
    );
    println!();
    println!(
        "One `Client` connection per node; object i is put through node i mod {NODES} and got \
         through node (i + {}) mod {NODES}; {} operations in flight ({}). A put is \
         `objects::put_file` (hash the file, stream it, wait for the receipt); a get is \
         `objects::get_object` into a file (verified against the ID). An operation's latency \
         includes any retry of a stream the entry peer dropped.",
        NODES / 2,
        cfg.concurrency,
        if cfg.concurrency == 1 {
            "sequential"
        } else {
            "a pool of workers"
        }
    );
    println!();
    println!(
        "| operation | in flight | wall s | ops/s | MB/s | p50 ms | p99 ms | max ms | retried |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in r.small {
        let n = s.latencies.len();
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            s.what,
            cfg.concurrency,
            s.wall.as_secs_f64(),
            n as f64 / s.wall.as_secs_f64(),
            mb_per_s((n * cfg.object_bytes) as u64, s.wall),
            s.percentile_ms(0.50),
            s.percentile_ms(0.99),
            s.percentile_ms(1.0),
            s.retries
        );
    }

    println!();
    println!(
        "### Where the time goes: CPU seconds (user + system) per phase, by process ({cpus} CPUs \
         give at most {cpus} CPU-seconds per wall second; the rest of the machine's time went to \
         other processes or to waiting)"
    );
    println!();
    println!(
        "| phase | wall s | client | {} | all | share of the machine | CPU s per GiB | \
         crossings (CPU per GiB / the raw stream's) | CPU-bound ceiling MB/s (ratio to the raw \
         stream) |",
        names.join(" | ")
    );
    println!(
        "|---|---:|---:|{}---:|---:|---:|---:|---:|",
        "---:|".repeat(names.len())
    );
    let mut phases: Vec<(String, f64, f64, &[f64], u64)> = Vec::new();
    for (op, _) in &large {
        phases.push((
            format!("{} via {}", op.what, op.entry),
            op.measured.elapsed.as_secs_f64(),
            op.measured.cpu.unwrap_or(f64::NAN),
            &op.node_cpu,
            op.bytes,
        ));
    }
    for s in r.small {
        phases.push((
            format!(
                "{} small objects {} ({} in flight)",
                cfg.objects, s.what, cfg.concurrency
            ),
            s.wall.as_secs_f64(),
            s.client_cpu,
            &s.node_cpu,
            (s.latencies.len() * cfg.object_bytes) as u64,
        ));
    }
    for (what, wall, client, nodes, bytes) in &phases {
        let all = client + nodes.iter().sum::<f64>();
        let ceiling = *bytes as f64 / 1e6 / (all / cpus as f64);
        println!(
            "| {what} | {wall:.2} | {client:.2} | {} | {all:.2} | {:.0}% | {:.1} | {:.2} | {:.0} \
             ({:.2}) |",
            nodes
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(" | "),
            100.0 * all / (wall * cpus as f64),
            all / gib(*bytes),
            all / gib(*bytes) / crossing,
            ceiling,
            ceiling / reference,
        );
    }
    println!();
    println!(
        "CPU-bound ceiling: the MB/s the phase would reach if its processes had all {cpus} CPUs \
         and never waited. The small-object client column is the whole bench process (its \
         runtime and the reference's idle connection included)."
    );

    println!();
    println!(
        "### Peak resident memory of every process (target: each under {RSS_LIMIT_MIB:.0} MiB \
         while putting and getting a {} MiB file)",
        cfg.big_bytes / MIB as u64
    );
    println!();
    println!(
        "| process | role | peak RSS MiB | CPU s over the run | under {RSS_LIMIT_MIB:.0} MiB |"
    );
    println!("|---|---|---:|---:|---|");
    let mut counted: Vec<(String, Option<u64>)> = Vec::new();
    for n in &r.cluster.nodes {
        println!(
            "| {} | node; VmHWM read just before it was stopped, so over the whole run | {} | {} \
             | {} |",
            n.name,
            fmt_mib(n.final_hwm_kib),
            fmt_secs(n.final_cpu),
            under_limit(n.final_hwm_kib)
        );
        counted.push((n.name.clone(), n.final_hwm_kib));
    }
    for (op, _) in &large {
        let label = format!("`dynostore` CLI, {}", op.what);
        println!(
            "| {label} | client ({rss_method}) | {} | {} | {} |",
            fmt_mib(op.measured.peak_kib),
            fmt_secs(op.measured.cpu),
            under_limit(op.measured.peak_kib)
        );
        counted.push((label, op.measured.peak_kib));
    }
    println!(
        "| bench process | in-process client of the small objects; reference sender | {} | - \
         | {} |",
        fmt_mib(r.bench_hwm),
        under_limit(r.bench_hwm)
    );
    println!(
        "| reference sink process | raw-stream sink | {} | - | {} |",
        fmt_mib(r.sink_hwm),
        under_limit(r.sink_hwm)
    );
    if cfg.container == ContainerKind::Mem {
        println!();
        println!("With `mem:` containers a node's RSS includes the shards it stores.");
    }

    println!();
    println!("### Verdict");
    println!();
    let (put, get) = (&r.first.put, &r.first.get);
    let put_ratio = put.mb_s() / reference;
    let get_ratio = get.mb_s() / reference;
    println!(
        "- put {} MiB: {:.0} MB/s = {:.3}x of the raw stream ({reference:.0} MB/s); target >= \
         {PUT_TARGET}x: **{}**",
        put.bytes / MIB as u64,
        put.mb_s(),
        put_ratio,
        met(put_ratio >= PUT_TARGET)
    );
    println!(
        "- get {} MiB: {:.0} MB/s = {:.3}x of the raw stream; target >= {GET_TARGET}x: **{}**",
        get.bytes / MIB as u64,
        get.mb_s(),
        get_ratio,
        met(get_ratio >= GET_TARGET)
    );
    if r.big.is_some() {
        let over: Vec<String> = counted
            .iter()
            .filter(|(_, k)| under_limit(*k) != "PASS")
            .map(|(n, k)| format!("{n} ({} MiB)", fmt_mib(*k)))
            .collect();
        println!(
            "- peak RSS of every node and CLI process through the {} MiB put and get: **{}**{}",
            cfg.big_bytes / MIB as u64,
            if over.is_empty() { "PASS" } else { "FAIL" },
            if over.is_empty() {
                String::new()
            } else {
                format!(
                    " (over {RSS_LIMIT_MIB:.0} MiB or unknown: {})",
                    over.join(", ")
                )
            }
        );
    } else {
        println!("- peak RSS: not judged ({BIG_MB_ENV}=0 skipped the big file)");
    }
    if let Some(s3) = r.s3 {
        issue15_table(r, s3, crossing);
    }
}
