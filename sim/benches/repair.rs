//! Figures (issue 5, durability): what the loss of a node holding about
//! 1 GiB of shards costs, measured in one run on an eight-node loopback
//! cluster of real `dynostore` node processes.
//!
//! `cargo bench -p dynostore-sim --bench repair` prints markdown tables:
//! 1. Eight `dynostore node` processes (this package's binary), each with
//!    its own directory, a `dir:` container under `TMPDIR`, its own site and
//!    one fresh network key; announce every 500 ms, suspect after 2.5 s of
//!    silence, down after 6 s, a repair round every second, and a repair
//!    budget of `--repair-rate-bytes-per-sec` per node (default here
//!    64 MiB/s; the budget counts the shard bytes a repair reads plus those
//!    it writes). The bench waits until every node lists all eight alive.
//! 2. Fill: objects of 64 MiB (k = 4, m = 2, default segment size: 1 MiB
//!    shards) put with the client library in this process, through the
//!    seven nodes that will survive, until the victim (`n7`) holds the
//!    target of shard bytes (its container's capacity minus free space,
//!    from its status).
//! 3. Baseline: the client workload without a failure: put 256 MiB as
//!    objects of 32 MiB (fresh files written beforehand, then `sync`, so
//!    that no workload pays for the fill's writeback), then get them back
//!    (into files, every byte verified against the ID), through the seven
//!    survivors with 2 operations in flight; MB/s of each.
//! 4. SIGKILL of the victim at t0. The survivors' status is polled every
//!    250 ms from then on: when the first survivor lists the victim as
//!    down (detection), and when repair starts (`repair.shards_repaired` up
//!    or `repair.queue_len` above 0 on any survivor).
//! 5. Once repair has started, the same workload again (new objects; they
//!    are placed on the seven live nodes), MB/s and the ratio to the
//!    baseline. Target: at least 0.8x for put and for get while repair
//!    runs at its configured rate.
//! 6. Full redundancy: polled cheaply (the survivors' summed `queue_len` is
//!    0 and their summed `bytes_repaired` has not moved for 3 s), then
//!    confirmed by one `stat` of every object stored before the kill
//!    (`stat` re-hashes every shard, so it is not polled); if an object is
//!    not healthy yet, polling goes on. The rebuild ends at the first poll
//!    that saw the final `bytes_repaired`.
//! 7. The same workload once more after the repair (seven nodes, nothing
//!    to repair), to show how much the machine drifted over the run.
//!
//! Figures: detection time (t0 to the victim seen down), rebuild time
//! (seen down to the last shard rebuilt) and their total; repair MB/s
//! (the survivors' summed `bytes_repaired` over the rebuild time) and the
//! repair traffic per node against the configured rate; read traffic per
//! rebuilt byte (`bytes_read / bytes_repaired`, which is k = 4 for
//! Reed-Solomon with one shard of each stripe missing); client put and get
//! MB/s during repair as ratios to the baseline; CPU use of the machine per
//! workload (the bench, the nodes and anything else on the machine share
//! its CPUs: the load average is printed at the start and the end).
//!
//! Environment:
//! - `DYNOSTORE_BENCH_VICTIM_MB`: shard MiB the victim holds before it is
//!   killed (default 1024).
//! - `DYNOSTORE_BENCH_REPAIR_RATE_MIB`: each node's repair budget in MiB/s
//!   (default 64).
//! - `DYNOSTORE_BENCH_FILL_OBJECT_MB`: fill object size in MiB (default 64).
//! - `DYNOSTORE_BENCH_WORKLOAD_MB`, `DYNOSTORE_BENCH_WORKLOAD_OBJECT_MB`:
//!   the client workload (default 256 MiB in objects of 32 MiB).
//! - `DYNOSTORE_BENCH_CONCURRENCY`: operations in flight (default 2).
//! - `DYNOSTORE_BENCH_QUOTA_MIB`: each node's container quota (default
//!   4096).
//! - `TMPDIR`: where the node directories, shards and files go (the run
//!   needs about 10 times the victim target of disk).
//!
//! Without `--bench` (as under `cargo test --benches`) it runs a smoke
//! round: a victim of 4 MiB, objects of 4 MiB, a workload of 16 MiB.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use common::cluster::{node_bin, Cluster, ClusterSpec, ContainerKind};
use common::{
    budget, cpu_delta, cpu_secs, env_number, free_disk, get_retrying, mb_per_s, met, note, pool,
    put_retrying, runtime, smoke_note, write_file, MIB,
};
use dynostore_node::client::Client;
use dynostore_node::keys::load_network_key;
use dynostore_node::objects::{Output, PutParams};
use dynostore_protocol::erasure::CodecKind;
use dynostore_protocol::wire::{ControlRequest, ControlResponse, Health, StatusReport};
use dynostore_protocol::{MemberState, ObjectId};

const VICTIM_MB_ENV: &str = "DYNOSTORE_BENCH_VICTIM_MB";
const RATE_ENV: &str = "DYNOSTORE_BENCH_REPAIR_RATE_MIB";
const FILL_OBJECT_ENV: &str = "DYNOSTORE_BENCH_FILL_OBJECT_MB";
const WORKLOAD_MB_ENV: &str = "DYNOSTORE_BENCH_WORKLOAD_MB";
const WORKLOAD_OBJECT_ENV: &str = "DYNOSTORE_BENCH_WORKLOAD_OBJECT_MB";
const CONCURRENCY_ENV: &str = "DYNOSTORE_BENCH_CONCURRENCY";
const QUOTA_ENV: &str = "DYNOSTORE_BENCH_QUOTA_MIB";

const NODES: usize = 8;
/// The node that is killed: not `n0`, which the others bootstrapped from.
const VICTIM: usize = NODES - 1;
const K: u16 = 4;
const M: u16 = 2;
/// Membership and repair timings (those of the integration tests).
const ANNOUNCE_MS: u64 = 500;
const SUSPECT_MS: u64 = 2_500;
const DOWN_MS: u64 = 6_000;
const REPAIR_INTERVAL_MS: u64 = 1_000;

/// The target: client throughput during repair over the baseline.
const RATIO_TARGET: f64 = 0.8;

/// How often the survivors' status is read once the victim is killed.
const POLL: Duration = Duration::from_millis(250);
/// `bytes_repaired` unchanged this long (three repair rounds), with no
/// stripe queued, counts as finished.
const SETTLED: Duration = Duration::from_secs(3);
/// Longest wait for repair to start after the kill.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    common::init_tracing();
    match run(std::env::args().any(|a| a == "--bench")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("repair bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- settings

#[derive(Debug, Clone)]
struct Settings {
    victim_bytes: u64,
    rate_bytes_per_sec: u64,
    fill_object_bytes: u64,
    workload_bytes: u64,
    workload_object_bytes: u64,
    concurrency: usize,
    quota_mib: u64,
    smoke: bool,
}

fn settings(bench: bool) -> Result<Settings> {
    let mib = MIB as u64;
    let (victim, fill_object, workload, workload_object, quota) = if bench {
        (
            env_number(VICTIM_MB_ENV, 1024)?,
            env_number(FILL_OBJECT_ENV, 64)?,
            env_number(WORKLOAD_MB_ENV, 256)?,
            env_number(WORKLOAD_OBJECT_ENV, 32)?,
            env_number(QUOTA_ENV, 4096)?,
        )
    } else {
        (4, 4, 16, 4, env_number(QUOTA_ENV, 256)?)
    };
    if workload_object > workload {
        bail!(
            "{WORKLOAD_OBJECT_ENV}={workload_object} is larger than {WORKLOAD_MB_ENV}={workload}"
        );
    }
    Ok(Settings {
        victim_bytes: victim * mib,
        rate_bytes_per_sec: env_number(RATE_ENV, 64)? * mib,
        fill_object_bytes: fill_object * mib,
        workload_bytes: workload / workload_object * workload_object * mib,
        workload_object_bytes: workload_object * mib,
        concurrency: usize::try_from(env_number(CONCURRENCY_ENV, 2)?)
            .context("concurrency too large")?,
        quota_mib: quota,
        smoke: !bench,
    })
}

// ---------------------------------------------------------------- status

/// Every node's status through its client (`None`: not asked, or no answer).
async fn statuses(clients: &[Client], ask: &[usize]) -> Vec<Option<StatusReport>> {
    let answers = futures::future::join_all(ask.iter().map(|&i| async move {
        match clients[i].control(ControlRequest::Status).await {
            Ok(ControlResponse::Status(r)) => Some(r),
            Ok(other) => {
                tracing::warn!(node = i, "status answered {other:?}");
                None
            }
            Err(e) => {
                tracing::warn!(node = i, error = %e, "no status");
                None
            }
        }
    }))
    .await;
    let mut all = vec![None; clients.len()];
    for (&i, a) in ask.iter().zip(answers) {
        all[i] = a;
    }
    all
}

async fn status(clients: &[Client], node: usize) -> Result<StatusReport> {
    statuses(clients, &[node])
        .await
        .swap_remove(node)
        .ok_or_else(|| anyhow!("n{node} gave no status"))
}

/// Container bytes in use (capacity minus free) of a node.
fn used_bytes(s: &StatusReport) -> u64 {
    s.containers
        .iter()
        .map(|c| c.capacity_bytes.saturating_sub(c.free_bytes))
        .sum()
}

/// The survivors' repair counters at one moment, summed.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Since the kill.
    at: Duration,
    shards_repaired: u64,
    bytes_repaired: u64,
    bytes_read: u64,
    shards_moved: u64,
    queue_len: u64,
    /// Survivors that answered, and those that list the victim as down.
    answered: usize,
    see_down: usize,
    /// `bytes_repaired` of every node (0 for the victim).
    per_node: Vec<u64>,
}

/// Reads the survivors' counters, less those they had before the kill.
async fn sample(
    clients: &[Client],
    survivors: &[usize],
    base: &[Sample],
    t0: Instant,
    victim: &str,
) -> Sample {
    let all = statuses(clients, survivors).await;
    let mut s = Sample {
        at: t0.elapsed(),
        per_node: vec![0; clients.len()],
        ..Sample::default()
    };
    for (i, st) in all.iter().enumerate() {
        let Some(st) = st else { continue };
        let r = &st.repair;
        let b = &base[i];
        s.answered += 1;
        s.shards_repaired += r.shards_repaired.saturating_sub(b.shards_repaired);
        s.bytes_repaired += r.bytes_repaired.saturating_sub(b.bytes_repaired);
        s.bytes_read += r.bytes_read.saturating_sub(b.bytes_read);
        s.shards_moved += r.shards_moved.saturating_sub(b.shards_moved);
        s.queue_len += r.queue_len;
        s.per_node[i] = r.bytes_repaired.saturating_sub(b.bytes_repaired);
        if st
            .members
            .iter()
            .any(|m| m.id.to_string() == victim && m.state == MemberState::Down)
        {
            s.see_down += 1;
        }
    }
    s
}

/// Every node's own counters, as the zero of the samples.
fn baseline_counters(all: &[Option<StatusReport>]) -> Vec<Sample> {
    all.iter()
        .map(|st| {
            st.as_ref().map_or_else(Sample::default, |st| Sample {
                shards_repaired: st.repair.shards_repaired,
                bytes_repaired: st.repair.bytes_repaired,
                bytes_read: st.repair.bytes_read,
                shards_moved: st.repair.shards_moved,
                ..Sample::default()
            })
        })
        .collect()
}

// ---------------------------------------------------------------- objects

/// Objects of one batch: their files (until put) and IDs.
#[derive(Debug)]
struct Batch {
    files: Vec<PathBuf>,
    ids: Vec<ObjectId>,
    object_bytes: u64,
}

impl Batch {
    /// Writes `n` files of `bytes` under `dir`, named `label-i`.
    fn write(dir: &Path, label: &str, n: usize, bytes: u64, seed: u64) -> Result<Arc<Batch>> {
        let mut b = Batch {
            files: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            object_bytes: bytes,
        };
        for i in 0..n {
            let p = dir.join(format!("{label}-{i}"));
            let (hex, _) = write_file(&p, bytes, seed + i as u64)?;
            b.ids.push(hex.parse().map_err(|e| anyhow!("{hex}: {e}"))?);
            b.files.push(p);
        }
        Ok(Arc::new(b))
    }

    fn bytes(&self) -> u64 {
        self.object_bytes * self.ids.len() as u64
    }

    fn remove_files(&self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
    }
}

fn params(name: Option<String>) -> PutParams {
    PutParams {
        codec: CodecKind::ReedSolomonSimd,
        k: K,
        m: M,
        segment_size: None,
        name,
        durability: None,
        reclaimable: false,
    }
}

/// Runs `op(i)` for every object of a batch of `bytes` with `concurrency`
/// in flight, within the time of moving the batch four times; returns the
/// wall time.
async fn over_batch<F, Fut>(
    n: usize,
    bytes: u64,
    concurrency: usize,
    what: &str,
    op: F,
) -> Result<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    tokio::time::timeout(budget(bytes * 4), pool(n, concurrency, op))
        .await
        .with_context(|| format!("{what} did not finish in time"))?
}

/// Puts a batch, object i through `entries[i mod len]`; returns the wall time.
async fn put_batch(
    clients: &Arc<Vec<Client>>,
    entries: &Arc<[usize]>,
    batch: &Arc<Batch>,
    concurrency: usize,
) -> Result<Duration> {
    let (clients, entries, b) = (clients.clone(), entries.clone(), batch.clone());
    let retries = Arc::new(AtomicUsize::new(0));
    over_batch(b.ids.len(), b.bytes(), concurrency, "puts", move |i| {
        let (clients, entries, b, retries) =
            (clients.clone(), entries.clone(), b.clone(), retries.clone());
        async move {
            let entry = entries[i % entries.len()];
            let name = b.files[i]
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            match put_retrying(&clients[entry], &b.files[i], &params(name), &retries).await {
                Ok(r) if r.object == b.ids[i] => Ok(()),
                Ok(r) => bail!("object {i}: the put returned ID {}", r.object),
                Err(e) => bail!("put of object {i} through n{entry}: {e}"),
            }
        }
    })
    .await
}

/// Gets a batch into files under `dir` (removed at once), object i through
/// the entry three places on from the one it was put through; returns the
/// wall time.
async fn get_batch(
    clients: &Arc<Vec<Client>>,
    entries: &Arc<[usize]>,
    batch: &Arc<Batch>,
    dir: &Path,
    concurrency: usize,
) -> Result<Duration> {
    let (clients, entries, b) = (clients.clone(), entries.clone(), batch.clone());
    let retries = Arc::new(AtomicUsize::new(0));
    let dir = dir.to_path_buf();
    over_batch(b.ids.len(), b.bytes(), concurrency, "gets", move |i| {
        let (clients, entries, b, retries) =
            (clients.clone(), entries.clone(), b.clone(), retries.clone());
        let out = dir.join(format!("got-{i}"));
        async move {
            let entry = entries[(i + 3) % entries.len()];
            let got = get_retrying(
                &clients[entry],
                b.ids[i],
                &Output::File(out.clone()),
                &retries,
            )
            .await;
            let _ = tokio::fs::remove_file(&out).await;
            match got {
                Ok((got, _)) if got == b.object_bytes => Ok(()),
                Ok((got, _)) => bail!("object {i}: got {got} bytes, put {}", b.object_bytes),
                Err(e) => bail!("get of object {i} through n{entry}: {e}"),
            }
        }
    })
    .await
}

/// The health of every object, by `stat` through the entries with
/// `concurrency` in flight; returns the objects not healthy.
async fn unhealthy(
    clients: &Arc<Vec<Client>>,
    entries: &[usize],
    ids: &[ObjectId],
    concurrency: usize,
) -> Result<Vec<(ObjectId, String)>> {
    let bad = Arc::new(Mutex::new(Vec::new()));
    let (c, e, i2, b) = (
        clients.clone(),
        Arc::new(entries.to_vec()),
        Arc::new(ids.to_vec()),
        bad.clone(),
    );
    pool(ids.len(), concurrency, move |i| {
        let (clients, entries, ids, bad) = (c.clone(), e.clone(), i2.clone(), b.clone());
        async move {
            let entry = entries[i % entries.len()];
            let health = match dynostore_node::objects::stat(&clients[entry], ids[i], None).await {
                Ok(st) if st.health == Health::Healthy => return Ok(()),
                Ok(st) => format!("{:?}", st.health),
                Err(e) => format!("error: {e}"),
            };
            bad.lock().expect("stat lock").push((ids[i], health));
            Ok(())
        }
    })
    .await?;
    let v = std::mem::take(&mut *bad.lock().expect("stat lock"));
    Ok(v)
}

// ---------------------------------------------------------------- the workload

/// One run of the client workload.
#[derive(Debug, Clone, Copy)]
struct Workload {
    put: Duration,
    get: Duration,
    bytes: u64,
    /// Share of the machine's CPU time used by the bench and the nodes
    /// during the put and the get (the rest: idle, or other processes).
    cpu_share: f64,
    /// Since the kill (None: before it).
    window: Option<(Duration, Duration)>,
}

impl Workload {
    fn put_mb_s(&self) -> f64 {
        mb_per_s(self.bytes, self.put)
    }
    fn get_mb_s(&self) -> f64 {
        mb_per_s(self.bytes, self.get)
    }
}

/// What a workload runs against.
struct Clients<'a> {
    clients: Arc<Vec<Client>>,
    survivors: Arc<[usize]>,
    work: PathBuf,
    cfg: &'a Settings,
}

impl Clients<'_> {
    /// Writes the files of a workload (not timed).
    fn batch(&self, label: &str, seed: u64) -> Result<Arc<Batch>> {
        let cfg = self.cfg;
        let n = (cfg.workload_bytes / cfg.workload_object_bytes) as usize;
        Batch::write(&self.work, label, n, cfg.workload_object_bytes, seed)
    }

    /// Puts a batch, then gets it back; `t0`: the kill, if it happened.
    async fn workload(
        &self,
        cluster: &Cluster,
        label: &str,
        batch: &Arc<Batch>,
        t0: Option<Instant>,
    ) -> Result<Workload> {
        let cfg = self.cfg;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let me = std::process::id();
        let (nodes0, self0) = (cluster.cpu(), cpu_secs(me).unwrap_or(f64::NAN));
        let start = t0.map(|t| t.elapsed());
        let put = put_batch(&self.clients, &self.survivors, batch, cfg.concurrency).await?;
        batch.remove_files();
        let get = get_batch(
            &self.clients,
            &self.survivors,
            batch,
            &self.work,
            cfg.concurrency,
        )
        .await?;
        let end = t0.map(|t| t.elapsed());
        let nodes: f64 = cpu_delta(&nodes0, &cluster.cpu())
            .iter()
            .filter(|c| c.is_finite())
            .sum();
        let own = cpu_secs(me).unwrap_or(f64::NAN) - self0;
        let w = Workload {
            put,
            get,
            bytes: batch.bytes(),
            cpu_share: (nodes + own) / ((put + get).as_secs_f64() * cpus),
            window: start.zip(end),
        };
        note(&format!(
            "{label}: put {:.0} MB/s, get {:.0} MB/s",
            w.put_mb_s(),
            w.get_mb_s()
        ));
        Ok(w)
    }
}

// ---------------------------------------------------------------- the run

/// What the repair phase measured.
#[derive(Debug)]
struct Repair {
    /// Since the kill: the first survivor lists the victim as down; the
    /// first repair activity; the last shard rebuilt.
    seen_down: Duration,
    started: Duration,
    rebuilt: Duration,
    last: Sample,
    /// Survivors that rebuilt anything.
    repairers: usize,
    stat_passes: usize,
    stat_time: Duration,
    stat_objects: usize,
    /// Bytes rebuilt while the workload ran, and before it started.
    during_workload: u64,
    before_workload: u64,
}

fn run(bench: bool) -> Result<()> {
    let cfg = settings(bench)?;
    let started = Instant::now();
    note("starting");
    let load_start = loadavg();
    let work = tempfile::Builder::new()
        .prefix("dynostore-repair-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;

    // The victim holds about 1/8 of all shard bytes; every node needs room
    // for its share, what it rebuilds and the workloads.
    let per_node = cfg.victim_bytes * 3 / 2 + 3 * cfg.workload_bytes * 3 / 2 / 7;
    if per_node > cfg.quota_mib * MIB as u64 {
        bail!(
            "{QUOTA_ENV}={} is tight for about {} MiB of shards per node",
            cfg.quota_mib,
            per_node / MIB as u64
        );
    }
    let margin = if cfg.smoke { 64 * MIB as u64 } else { 1 << 30 };
    let disk_need = NODES as u64 * per_node
        + 3 * cfg.workload_bytes
        + cfg.concurrency as u64 * cfg.fill_object_bytes
        + margin;
    let free = free_disk(work.path())?;
    if free < disk_need {
        bail!(
            "{} has {} MiB free, the bench needs about {} MiB; set TMPDIR elsewhere or lower \
             {VICTIM_MB_ENV}",
            work.path().display(),
            free / MIB as u64,
            disk_need / MIB as u64
        );
    }

    let mut cluster = Cluster::start(
        work.path(),
        &ClusterSpec {
            nodes: NODES,
            container: ContainerKind::Dir,
            quota_mib: cfg.quota_mib,
            announce_ms: ANNOUNCE_MS,
            suspect_ms: SUSPECT_MS,
            down_ms: DOWN_MS,
            init_args: vec![
                "--repair-interval-ms".into(),
                REPAIR_INTERVAL_MS.to_string(),
                "--repair-rate-bytes-per-sec".into(),
                cfg.rate_bytes_per_sec.to_string(),
            ],
        },
    )?;
    let converge = cluster.wait_converged()?;
    note(&format!(
        "cluster converged in {:.1} s",
        converge.as_secs_f64()
    ));
    let psk = load_network_key(&cluster.key).context("the network key")?;
    let rt = runtime()?;
    let mut clients = Arc::new(rt.block_on(cluster.clients(&psk))?);
    let survivors: Arc<[usize]> = (0..NODES).filter(|&i| i != VICTIM).collect();
    let victim_id = cluster.nodes[VICTIM].id.clone();

    // 1. Fill until the victim holds its target; each batch starts at the
    // next survivor, so that all of them are entry peers in turn.
    let fill_start = Instant::now();
    let mut stored: Vec<ObjectId> = Vec::new();
    let mut fill_bytes = 0u64;
    let mut round = 0u64;
    let victim_used = loop {
        let used = used_bytes(&rt.block_on(status(&clients, VICTIM))?);
        if used >= cfg.victim_bytes {
            break used;
        }
        let batch = Batch::write(
            work.path(),
            &format!("fill{round}"),
            cfg.concurrency,
            cfg.fill_object_bytes,
            0xF111_0000 + round * 64,
        )?;
        let entries: Arc<[usize]> = (0..survivors.len())
            .map(|i| survivors[(i + round as usize * cfg.concurrency) % survivors.len()])
            .collect();
        rt.block_on(put_batch(&clients, &entries, &batch, cfg.concurrency))?;
        batch.remove_files();
        stored.extend(&batch.ids);
        fill_bytes += batch.bytes();
        round += 1;
        if round.is_multiple_of(8) {
            note(&format!(
                "fill: {} MiB stored, the victim holds {} MiB of shards",
                fill_bytes / MIB as u64,
                used / MIB as u64
            ));
        }
    };
    let fill_time = fill_start.elapsed();
    note(&format!(
        "fill: {} objects, {} MiB in {:.1} s; the victim holds {} MiB of shards",
        stored.len(),
        fill_bytes / MIB as u64,
        fill_time.as_secs_f64(),
        victim_used / MIB as u64
    ));

    // 2. Baseline; the files of all three workloads are written first.
    // Fresh connections: a client connection closes after a minute idle,
    // and the client cannot dial again.
    clients = Arc::new(rt.block_on(cluster.clients(&psk))?);
    let ctx = Clients {
        clients: clients.clone(),
        survivors: survivors.clone(),
        work: work.path().to_path_buf(),
        cfg: &cfg,
    };
    let batches = [
        ctx.batch("baseline", 0xBA5E_0000)?,
        ctx.batch("during", 0xD0_0000)?,
        ctx.batch("after", 0xAF_0000)?,
    ];
    // The fill leaves gigabytes of dirty pages; the baseline must not pay
    // for their writeback while the later workloads do not.
    let t = Instant::now();
    rustix::fs::sync();
    let sync_time = t.elapsed();
    note(&format!("sync: {:.1} s", sync_time.as_secs_f64()));
    let baseline = rt.block_on(ctx.workload(&cluster, "baseline", &batches[0], None))?;
    cluster.check_running()?;
    let before = rt.block_on(statuses(&clients, &(0..NODES).collect::<Vec<_>>()));
    let victim_status = before[VICTIM]
        .as_ref()
        .ok_or_else(|| anyhow!("the victim gave no status"))?;
    let victim_used = used_bytes(victim_status);
    let victim_shards = victim_status.shards_stored;
    let total_used: u64 = before.iter().flatten().map(used_bytes).sum();
    let base = baseline_counters(&before);
    let fill_objects = stored.len();
    // Objects stored before the kill: the fill and the baseline's.
    stored.extend(&batches[0].ids);

    // 3. Kill the victim; wait for repair to start.
    let t0 = Instant::now();
    cluster.nodes[VICTIM].kill();
    note("victim killed");
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (clients, survivors, base, samples, stop, victim_id) = (
            clients.clone(),
            survivors.clone(),
            base.clone(),
            samples.clone(),
            stop.clone(),
            victim_id.clone(),
        );
        rt.spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let s = sample(&clients, &survivors, &base, t0, &victim_id).await;
                samples.lock().expect("samples lock").push(s);
            }
        })
    };
    let last_sample = || samples.lock().expect("samples lock").last().cloned();
    let repair_started = |s: &Sample| s.shards_repaired > 0 || s.queue_len > 0;
    loop {
        if last_sample().is_some_and(|s| repair_started(&s)) {
            break;
        }
        if t0.elapsed() > START_TIMEOUT {
            bail!(
                "no repair within {START_TIMEOUT:?} of the kill; last: {:?}",
                last_sample()
            );
        }
        cluster.check_running()?;
        std::thread::sleep(POLL / 2);
    }
    note(&format!(
        "repair started {:.1} s after the kill",
        t0.elapsed().as_secs_f64()
    ));

    // 4. The workload while repair runs.
    let during = rt.block_on(ctx.workload(&cluster, "during", &batches[1], Some(t0)))?;
    cluster.check_running()?;

    // 5. Wait for full redundancy: cheap polls, then one stat pass.
    let budget_left = budget(victim_used * (u64::from(K) + 1)) + Duration::from_secs(600);
    let (mut stat_passes, mut stat_time) = (0, Duration::ZERO);
    let rebuilt = loop {
        if t0.elapsed() > budget_left {
            bail!(
                "repair did not finish within {budget_left:?}; last: {:?}",
                last_sample()
            );
        }
        cluster.check_running()?;
        std::thread::sleep(POLL);
        let (settled_since, last) = {
            let v = samples.lock().expect("samples lock");
            let Some(last) = v.last().cloned() else {
                continue;
            };
            let first_final = v
                .iter()
                .rev()
                .take_while(|s| s.bytes_repaired == last.bytes_repaired)
                .last()
                .map_or(last.at, |s| s.at);
            (first_final, last)
        };
        if last.queue_len > 0 || last.bytes_repaired == 0 || last.at - settled_since < SETTLED {
            continue;
        }
        note(&format!(
            "repair settled: {} MiB rebuilt; checking every object",
            last.bytes_repaired / MIB as u64
        ));
        let t = Instant::now();
        let bad = rt.block_on(unhealthy(&clients, &survivors, &stored, cfg.concurrency))?;
        stat_time += t.elapsed();
        stat_passes += 1;
        if bad.is_empty() {
            break settled_since;
        }
        note(&format!(
            "{} objects not healthy yet, e.g. {} {}",
            bad.len(),
            bad[0].0.short(),
            bad[0].1
        ));
        std::thread::sleep(SETTLED);
    };
    stop.store(true, Ordering::Relaxed);
    rt.block_on(monitor)
        .context("the status monitor panicked")?;
    let samples = std::mem::take(&mut *samples.lock().expect("samples lock"));
    let last = samples.last().cloned().unwrap_or_default();
    let at = |t: Duration| {
        samples
            .iter()
            .take_while(|s| s.at <= t)
            .last()
            .map_or(0, |s| s.bytes_repaired)
    };
    let (w0, w1) = during.window.unwrap_or_default();
    let repair = Repair {
        seen_down: samples
            .iter()
            .find(|s| s.see_down > 0)
            .map_or(last.at, |s| s.at),
        started: samples
            .iter()
            .find(|s| repair_started(s))
            .map_or(last.at, |s| s.at),
        rebuilt,
        repairers: last.per_node.iter().filter(|&&b| b > 0).count(),
        stat_passes,
        stat_time,
        stat_objects: stored.len(),
        before_workload: at(w0),
        during_workload: at(w1) - at(w0),
        last,
    };
    note(&format!(
        "full redundancy {:.1} s after the kill",
        repair.rebuilt.as_secs_f64()
    ));

    // 6. The workload again, with nothing to repair.
    let after = rt.block_on(ctx.workload(&cluster, "after", &batches[2], None))?;
    cluster.check_running()?;

    note("stopping the nodes");
    drop(ctx);
    drop(clients);
    drop(rt);
    cluster.stop();
    let load_end = loadavg();
    report(&Report {
        cfg: &cfg,
        converge,
        fill_objects,
        fill_bytes,
        fill_time,
        sync_time,
        victim_used,
        victim_shards,
        total_used,
        baseline,
        during,
        after,
        repair: &repair,
        load: [load_start, load_end],
        total: started.elapsed(),
    });
    drop(cluster);
    note("removing the temporary directory");
    drop(work);
    note("done");
    Ok(())
}

/// The 1-minute load average.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------- the report

#[derive(Debug)]
struct Report<'a> {
    cfg: &'a Settings,
    converge: Duration,
    fill_objects: usize,
    fill_bytes: u64,
    fill_time: Duration,
    sync_time: Duration,
    victim_used: u64,
    victim_shards: u64,
    total_used: u64,
    baseline: Workload,
    during: Workload,
    after: Workload,
    repair: &'a Repair,
    load: [String; 2],
    total: Duration,
}

fn report(r: &Report<'_>) {
    let cfg = r.cfg;
    let rp = r.repair;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mib = |b: u64| b as f64 / MIB as f64;
    let rate_mib = mib(cfg.rate_bytes_per_sec);
    let rebuild = rp.rebuilt.saturating_sub(rp.seen_down);
    let repaired = rp.last.bytes_repaired;
    let read = rp.last.bytes_read;
    let repair_mb_s = mb_per_s(repaired, rebuild);
    let traffic_mb_s = mb_per_s(repaired + read, rebuild);
    let put_ratio = r.during.put_mb_s() / r.baseline.put_mb_s();
    let get_ratio = r.during.get_mb_s() / r.baseline.get_mb_s();

    println!();
    println!("## Repair after the loss of a node (issue 5)");
    println!();
    println!(
        "{NODES} `dynostore node` processes ({}), one site each, `dir:` containers of {} \
         MiB under {}; announce {ANNOUNCE_MS} ms, suspect after {SUSPECT_MS} ms, down after \
         {DOWN_MS} ms, a repair round every {REPAIR_INTERVAL_MS} ms; **repair rate {rate_mib:.0} \
         MiB/s per node** (`--repair-rate-bytes-per-sec {}`: shard bytes read plus written). \
         Objects k={K}, m={M}, reed-solomon-simd, 1 MiB shards. Converged in {:.1} s. MB = 10^6 \
         bytes, MiB = 2^20. {cpus} CPUs; load average {} at the start, {} at the end. Whole run \
         {:.0} s.{}",
        node_bin(),
        cfg.quota_mib,
        std::env::temp_dir().display(),
        cfg.rate_bytes_per_sec,
        r.converge.as_secs_f64(),
        r.load[0],
        r.load[1],
        r.total.as_secs_f64(),
        smoke_note(cfg.smoke),
    );
    println!();
    println!(
        "Fill: {} objects of {} MiB ({} MiB) through the {} survivors-to-be, {} in flight, in \
         {:.1} s ({:.0} MB/s); when it was killed (after the fill and the baseline) the victim \
         n{VICTIM} held **{:.0} MiB** in {} shards (target {} MiB), all nodes {:.0} MiB. Writing back the dirty pages before the baseline (`sync`) \
         took {:.1} s.",
        r.fill_objects,
        mib(cfg.fill_object_bytes),
        mib(r.fill_bytes),
        NODES - 1,
        cfg.concurrency,
        r.fill_time.as_secs_f64(),
        mb_per_s(r.fill_bytes, r.fill_time),
        mib(r.victim_used),
        r.victim_shards,
        mib(cfg.victim_bytes),
        mib(r.total_used),
        r.sync_time.as_secs_f64(),
    );

    println!();
    println!("### Time to full redundancy and repair traffic");
    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    println!(
        "| detection: SIGKILL to the first survivor listing the victim as down | {:.1} s |",
        rp.seen_down.as_secs_f64()
    );
    println!(
        "| first repair activity after the SIGKILL | {:.1} s |",
        rp.started.as_secs_f64()
    );
    println!(
        "| rebuild: victim seen down to the last shard rebuilt | {:.1} s |",
        rebuild.as_secs_f64()
    );
    println!(
        "| **total: SIGKILL to full redundancy** (every one of {} objects `healthy` by `stat`) \
         | **{:.1} s** |",
        rp.stat_objects,
        rp.rebuilt.as_secs_f64()
    );
    println!(
        "| rebuilt (survivors' `bytes_repaired`) / the victim's shard bytes | {:.0} MiB in {} \
         shards / {:.0} MiB |",
        mib(repaired),
        rp.last.shards_repaired,
        mib(r.victim_used)
    );
    println!("| **repair MB/s** (rebuilt bytes / rebuild time) | **{repair_mb_s:.1}** |");
    println!(
        "| **read traffic per rebuilt byte** (`bytes_read / bytes_repaired`; RS needs k = {K}) \
         | **{:.2}** |",
        read as f64 / repaired.max(1) as f64
    );
    println!(
        "| repair traffic, read + written, all survivors | {traffic_mb_s:.1} MB/s = {:.1} \
         MiB/s |",
        traffic_mb_s * 1e6 / MIB as f64
    );
    println!(
        "| survivors that rebuilt shards; repair traffic per such node vs its budget | {} ; \
         {:.1} MiB/s of {rate_mib:.0} MiB/s ({:.0}%) |",
        rp.repairers,
        traffic_mb_s * 1e6 / MIB as f64 / rp.repairers.max(1) as f64,
        100.0 * traffic_mb_s * 1e6 / MIB as f64 / rp.repairers.max(1) as f64 / rate_mib
    );
    println!(
        "| shards moved by rebalancing meanwhile | {} |",
        rp.last.shards_moved
    );
    println!(
        "| confirmation: `stat` passes over every object stored before the kill | {} pass(es), \
         {:.1} s ({:.2} s per object) |",
        rp.stat_passes,
        rp.stat_time.as_secs_f64(),
        rp.stat_time.as_secs_f64() / rp.stat_passes.max(1) as f64 / rp.stat_objects.max(1) as f64
    );

    println!();
    println!(
        "### Client throughput during repair ({} MiB put as objects of {} MiB, then got back, \
         {} in flight, through the {} survivors)",
        mib(cfg.workload_bytes),
        mib(cfg.workload_object_bytes),
        cfg.concurrency,
        NODES - 1
    );
    println!();
    println!("| workload | put MB/s | get MB/s | put ratio | get ratio | CPU use of the machine |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, w) in [
        ("baseline: 8 nodes, no failure", &r.baseline),
        ("**during repair**: 7 nodes, repair running", &r.during),
        ("after repair: 7 nodes, nothing to repair", &r.after),
    ] {
        println!(
            "| {what} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0}% |",
            w.put_mb_s(),
            w.get_mb_s(),
            w.put_mb_s() / r.baseline.put_mb_s(),
            w.get_mb_s() / r.baseline.get_mb_s(),
            100.0 * w.cpu_share
        );
    }
    let (w0, w1) = r.during.window.unwrap_or_default();
    println!();
    println!(
        "The workload during repair ran {:.1} s to {:.1} s after the SIGKILL; {:.0} MiB were \
         rebuilt before it and {:.0} MiB while it ran ({:.1} MB/s, against {repair_mb_s:.1} over \
         the whole rebuild); the last shard was rebuilt at {:.1} s, {}.",
        w0.as_secs_f64(),
        w1.as_secs_f64(),
        mib(rp.before_workload),
        mib(rp.during_workload),
        mb_per_s(rp.during_workload, w1.saturating_sub(w0)),
        rp.rebuilt.as_secs_f64(),
        if rp.rebuilt > w1 {
            "so repair ran through the whole workload"
        } else {
            "before the workload ended: repair did not cover all of it"
        }
    );

    println!();
    println!("### Verdict");
    println!();
    println!(
        "- put during repair: {:.0} MB/s = {put_ratio:.2}x of the baseline ({:.0} MB/s); target \
         >= {RATIO_TARGET}x: **{}**",
        r.during.put_mb_s(),
        r.baseline.put_mb_s(),
        met(put_ratio >= RATIO_TARGET)
    );
    println!(
        "- get during repair: {:.0} MB/s = {get_ratio:.2}x of the baseline ({:.0} MB/s); target \
         >= {RATIO_TARGET}x: **{}**",
        r.during.get_mb_s(),
        r.baseline.get_mb_s(),
        met(get_ratio >= RATIO_TARGET)
    );
}
