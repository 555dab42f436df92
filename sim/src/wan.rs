//! `dynostore-sim wan`: the paper's comparison over emulated sites.
//!
//! Four sites on their own loopback addresses, 5 to 60 ms and 100 Mbit/s to
//! 1 Gbit/s apart ([`MATRIX`], shaped by `dynostore_node::wan`), two nodes
//! each, and one client per site (in this process, shaped from its site,
//! connected to a node of its own site: its nearest entry peer). The same
//! workload (`medical`: many files of 0.5-20 MB; `satellite`: a few rasters
//! of 100 MB-1 GB, scaled down by `--size-scale` so that a run takes
//! minutes) is written and read by every client against three systems:
//!
//! - **dynostore**: puts for an annual durability target (the entry peer
//!   picks k and m), site-aware reads;
//! - **central**: one `s3s-fs` server at the `hpc-centre` site (the paper's
//!   cloud-hosted store), reached by every client through a TCP proxy that
//!   shapes the client site's link to that site;
//! - **replication**: three copies on three sites, our own nodes with k=1
//!   m=2 (Garage is not used here).
//!
//! Object `i` is written by the client of site `i mod 4`; then every client
//! reads every object. Reported per system and client site: put and get
//! latency (p50, p99), get throughput, and the ratio of get p50 to the
//! central store's. Then fault tolerance: with repair off, 1, 2 and 3 of a
//! system's servers are killed (cumulatively, drawn from the seed among the
//! nodes that are not a client's entry peer; the central store has one
//! server, so its first kill is that one: the worst case, and the only one
//! for a one-server system); then the killed nodes restart and the whole
//! `hpc-centre` site (where the central store runs) goes dark alone. After
//! each step the `hospital-a` client reads every object: the fraction that
//! read back whole is reported.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use dynostore_node::client::Client;
use dynostore_node::container::s3s::S3sServer;
use dynostore_node::container::{self, ContainerSpec, DataContainer};
use dynostore_node::keys::{self, NetworkKey};
use dynostore_node::objects::{self, NoProgress, Output, PutParams};
use dynostore_node::wan::{Matrix, Shaper};
use dynostore_protocol::durability::Durability;
use dynostore_protocol::erasure::CodecKind;
use dynostore_protocol::wire::{ControlRequest, ControlResponse};
use dynostore_protocol::{ObjectId, ShardId};

use crate::cluster::procs::{InitContext, NodeProc};
use crate::cluster::scenario::{NodePlan, Timing, Workload};
use crate::cluster::workload;

/// The emulated sites: (name, loopback address).
pub const SITES: [(&str, &str); 4] = [
    ("hospital-a", "127.0.0.21"),
    ("observatory", "127.0.0.22"),
    ("hpc-centre", "127.0.0.23"),
    ("hospital-b", "127.0.0.24"),
];
/// Where the central store runs, and the site that goes dark.
pub const CENTRAL_SITE: usize = 2;
/// The client whose reads measure fault tolerance.
pub const READER_SITE: usize = 0;

/// The matrix: one-way delay and bandwidth per site pair.
pub const MATRIX: &str = r#"
client_site = "hospital-a"
[[site]]
name = "hospital-a"
ips = ["127.0.0.21"]
[[site]]
name = "observatory"
ips = ["127.0.0.22"]
[[site]]
name = "hpc-centre"
ips = ["127.0.0.23"]
[[site]]
name = "hospital-b"
ips = ["127.0.0.24"]
[[link]]
between = ["hospital-a", "hospital-b"]
one_way_delay_ms = 5
bandwidth_mbit = 1000
[[link]]
between = ["hospital-a", "hpc-centre"]
one_way_delay_ms = 20
bandwidth_mbit = 500
[[link]]
between = ["hospital-a", "observatory"]
one_way_delay_ms = 60
bandwidth_mbit = 100
[[link]]
between = ["hospital-b", "hpc-centre"]
one_way_delay_ms = 15
bandwidth_mbit = 500
[[link]]
between = ["hospital-b", "observatory"]
one_way_delay_ms = 45
bandwidth_mbit = 100
[[link]]
between = ["hpc-centre", "observatory"]
one_way_delay_ms = 30
bandwidth_mbit = 200
"#;

/// The durability DynoStore's puts ask for.
pub const TARGET: f64 = 0.999_999;
const NODES_PER_SITE: usize = 2;
const CONNECT: Duration = Duration::from_secs(20);
const CONVERGE_LIMIT: Duration = Duration::from_secs(120);
const OP_LIMIT: Duration = Duration::from_secs(300);
const BUCKET: &str = "central";

/// `dynostore-sim wan` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// medical (many 0.5-20 MB files) or satellite (a few 100 MB-1 GB rasters).
    #[arg(long, value_enum, default_value = "medical")]
    pub workload: Workload,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Objects (default: 16 medical, 4 satellite).
    #[arg(long)]
    pub objects: Option<usize>,
    /// Multiplies every object size (default: 0.25 medical, 0.02 satellite,
    /// so that a run takes minutes on two cores).
    #[arg(long)]
    pub size_scale: Option<f64>,
    /// The `dynostore` binary (default: beside this one).
    #[arg(long, env = "DYNOSTORE_BIN")]
    pub bin: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Skip the fault-tolerance phase.
    #[arg(long)]
    pub no_faults: bool,
    /// Write a PNG of get latency per client site (bars: p50, whiskers:
    /// p99; blue DynoStore, orange central, green replication; one group
    /// per site in the order hospital-a, observatory, hpc-centre,
    /// hospital-b; grid lines every 100 ms).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Latencies of one kind of operation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpFigures {
    pub count: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Bytes over the sum of latencies.
    pub mb_per_s: f64,
}

/// One system seen from one client site.
#[derive(Debug, Clone, Serialize)]
pub struct SiteFigures {
    pub system: String,
    pub site: String,
    pub put: OpFigures,
    pub get: OpFigures,
    /// Get p50 over the central store's at this site.
    pub get_p50_vs_central: Option<f64>,
}

/// Fraction of reads that succeeded after a fault step.
#[derive(Debug, Clone, Serialize)]
pub struct FaultStep {
    pub step: String,
    /// system -> fraction of the objects read back whole.
    pub read_ok: BTreeMap<String, f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct WanReport {
    pub workload: String,
    pub seed: u64,
    pub objects: usize,
    pub bytes: u64,
    pub size_scale: f64,
    pub dynostore_k: u16,
    pub dynostore_m: u16,
    pub sites: Vec<SiteFigures>,
    /// DynoStore's shard bytes read per holder site, summed over the entry
    /// peers (each client's reads).
    pub dynostore_read_bytes_by_site: BTreeMap<String, u64>,
    pub faults: Vec<FaultStep>,
}

/// The three systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    DynoStore,
    Central,
    Replication,
}

impl System {
    const ALL: [System; 3] = [System::DynoStore, System::Central, System::Replication];

    fn name(self) -> &'static str {
        match self {
            System::DynoStore => "dynostore",
            System::Central => "central",
            System::Replication => "replication",
        }
    }
}

impl Args {
    fn bin(&self) -> Result<PathBuf> {
        if let Some(b) = &self.bin {
            return Ok(b.clone());
        }
        let me = std::env::current_exe().context("cannot find this executable")?;
        let b = me.with_file_name("dynostore");
        if b.is_file() {
            Ok(b)
        } else {
            bail!(
                "no dynostore binary at {}: build it or pass --bin",
                b.display()
            )
        }
    }
}

/// Runs the comparison and returns its report (nothing printed but the
/// progress lines on stderr, unless `args.json`).
pub fn compare(args: &Args) -> Result<WanReport> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run_async(args))
}

/// Runs the comparison and prints the report.
pub fn run(args: &Args) -> Result<()> {
    let report = compare(args)?;
    if let Some(p) = &args.plot {
        plot(&report, p).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Get latency per client site, one bar per system (see `--plot`).
fn plot(r: &WanReport, path: &Path) -> std::io::Result<()> {
    let groups: Vec<crate::png_plot::Group> = SITES
        .iter()
        .map(|(site, _)| {
            System::ALL
                .iter()
                .map(|sys| {
                    r.sites
                        .iter()
                        .find(|s| s.site == *site && s.system == sys.name())
                        .map_or((0.0, 0.0), |s| (s.get.p50_ms, s.get.p99_ms))
                })
                .collect()
        })
        .collect();
    crate::png_plot::bar_chart(path, &groups, 100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn figures(samples: &[(Duration, u64)], failed: usize) -> OpFigures {
    let mut ms: Vec<f64> = samples.iter().map(|(d, _)| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let secs: f64 = samples.iter().map(|(d, _)| d.as_secs_f64()).sum();
    let bytes: u64 = samples.iter().map(|(_, b)| b).sum();
    OpFigures {
        count: samples.len(),
        failed,
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        mb_per_s: if secs > 0.0 {
            bytes as f64 / 1e6 / secs
        } else {
            0.0
        },
    }
}

/// A TCP proxy in front of the central store for a client at `site`: the
/// connections it makes to the store are shaped as the client site's link
/// to the central site.
async fn start_proxy(shaper: Arc<Shaper>, target_port: u16) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    let central: libp2p::Multiaddr = format!("/ip4/{}/tcp/{target_port}", SITES[CENTRAL_SITE].1)
        .parse()
        .context("central address")?;
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let shaper = shaper.clone();
            let central = central.clone();
            tokio::spawn(async move {
                let Ok(out) =
                    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, target_port)).await
                else {
                    return;
                };
                let mut shaped = shaper.wrap(out, &central);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut shaped).await;
            });
        }
    });
    Ok(port)
}

/// What a run holds on to.
struct Bench {
    nodes: Vec<NodeProc>,
    /// Per client site: the DynoStore client (to its site's first node).
    clients: Vec<Client>,
    /// Per client site: the central store through its proxy.
    central: Vec<Arc<dyn DataContainer>>,
    server: Option<S3sServer>,
}

async fn connect(
    addr: &libp2p::Multiaddr,
    key: &NetworkKey,
    shaper: &Arc<Shaper>,
) -> Result<Client> {
    Ok(Client::connect_shaped(addr.clone(), Some(key), CONNECT, Some(shaper.clone())).await?)
}

async fn status(c: &Client) -> Result<dynostore_protocol::wire::StatusReport> {
    match c.control(ControlRequest::Status).await? {
        ControlResponse::Status(s) => Ok(s),
        other => bail!("unexpected answer to status: {other:?}"),
    }
}

async fn run_async(args: &Args) -> Result<WanReport> {
    let (objects, scale) = match args.workload {
        Workload::Satellite => (args.objects.unwrap_or(4), args.size_scale.unwrap_or(0.02)),
        _ => (args.objects.unwrap_or(16), args.size_scale.unwrap_or(0.25)),
    };
    let quiet = args.json;
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    let root = tempfile::tempdir()?;
    let matrix_path = root.path().join("wan.toml");
    std::fs::write(&matrix_path, MATRIX)?;
    let matrix = Matrix::load(&matrix_path)?;
    let key_path = root.path().join("network.key");
    let key = NetworkKey::random();
    keys::write_network_key(&key_path, &key)?;
    say(format!(
        "wan: seed {}, {:?} workload of {objects} objects at size scale {scale}; {} sites x {NODES_PER_SITE} nodes",
        args.seed,
        args.workload,
        SITES.len()
    ));

    // The nodes: repair off, so that the fault phase measures tolerance.
    let bin = args.bin()?;
    let timing = Timing {
        announce_ms: 500,
        suspect_ms: 2500,
        down_ms: 6000,
        repair_ms: 1000,
        scrub_ms: 3_600_000,
        reclaim_ms: None,
    };
    let no_s3 = |_: usize, _: &str| -> Result<String> { bail!("no S3 containers here") };
    let mut nodes: Vec<NodeProc> = Vec::new();
    for (s, (site, ip)) in SITES.iter().enumerate() {
        for j in 0..NODES_PER_SITE {
            let index = s * NODES_PER_SITE + j;
            let boot = nodes.first().map(|n| n.addr.clone());
            let cx = InitContext {
                bin: &bin,
                root: root.path(),
                key: &key_path,
                timing: &timing,
                repair: false,
                bootstrap: boot.as_ref(),
                s3: &no_s3,
            };
            let plan = NodePlan {
                site: site.to_string(),
                containers: vec!["dir:2GiB".into()],
            };
            let extra = vec![
                "--wan-emulation".to_string(),
                matrix_path.display().to_string(),
            ];
            let mut n = NodeProc::init_at(index, &plan, &cx, ip, &extra)?;
            n.start()?;
            nodes.push(n);
        }
    }
    let shapers: Vec<Arc<Shaper>> = SITES
        .iter()
        .map(|(site, _)| Shaper::new(matrix.clone(), site).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let mut clients = Vec::new();
    for s in 0..SITES.len() {
        clients.push(connect(&nodes[s * NODES_PER_SITE].addr, &key, &shapers[s]).await?);
    }
    // Every node sees every other alive, and the RTTs are measured.
    let t0 = Instant::now();
    loop {
        let st = status(&clients[0]).await?;
        let alive = st
            .members
            .iter()
            .filter(|m| m.state == dynostore_protocol::MemberState::Alive)
            .count();
        let measured = st.members.iter().filter(|m| m.rtt_ms.is_some()).count();
        if alive == nodes.len() && measured + 1 >= nodes.len() {
            break;
        }
        if t0.elapsed() > CONVERGE_LIMIT {
            bail!("the cluster did not converge: {alive} alive, {measured} RTTs measured");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say(format!("cluster up in {:.1} s", t0.elapsed().as_secs_f64()));

    // The central store and one shaped proxy per client site.
    let server = if which("s3s-fs") {
        Some(S3sServer::start(&[BUCKET]))
    } else {
        say("s3s-fs is not installed (scripts/s3s-fs.sh): no central store".into());
        None
    };
    let mut central = Vec::new();
    if let Some(srv) = &server {
        let port: u16 = srv
            .endpoint()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("s3s-fs port")?;
        for sh in &shapers {
            let proxy = start_proxy(sh.clone(), port).await?;
            let spec = match srv.spec(BUCKET, "", 64 << 30) {
                ContainerSpec::S3(mut s) => {
                    s.endpoint = format!("http://127.0.0.1:{proxy}");
                    ContainerSpec::S3(s)
                }
                other => other,
            };
            central.push(container::open(&spec).await?);
        }
    }
    let mut bench = Bench {
        nodes,
        clients,
        central,
        server,
    };

    // The workload's files.
    let plan = workload::plan(args.seed, args.workload, objects, scale);
    let data = root.path().join("data");
    std::fs::create_dir_all(&data)?;
    let mut files = Vec::new();
    for obj in &plan {
        let p = data.join(format!("obj{}", obj.index));
        let h = workload::write_object(args.seed, obj, &p)?;
        files.push((p, ObjectId::from_hash(h), obj.size));
    }
    let bytes: u64 = plan.iter().map(|o| o.size).sum();

    let mut samples: BTreeMap<(System, usize, bool), Vec<(Duration, u64)>> = BTreeMap::new();
    let mut failures: BTreeMap<(System, usize, bool), usize> = BTreeMap::new();
    let mut geometry = (0, 0);
    let mut by_site = BTreeMap::new();
    let out = root.path().join("out");
    std::fs::create_dir_all(&out)?;
    for system in System::ALL {
        if system == System::Central && bench.central.is_empty() {
            continue;
        }
        say(format!("{}: puts", system.name()));
        for (i, (path, id, size)) in files.iter().enumerate() {
            let site = i % SITES.len();
            let t = Instant::now();
            let r = put(&bench, system, site, path, *id).await;
            let key = (system, site, true);
            match r {
                Ok(g) => {
                    if system == System::DynoStore {
                        geometry = g;
                    }
                    samples.entry(key).or_default().push((t.elapsed(), *size));
                }
                Err(e) => {
                    say(format!(
                        "  put of object {i} from {} failed: {e:#}",
                        SITES[site].0
                    ));
                    *failures.entry(key).or_default() += 1;
                }
            }
        }
        say(format!("{}: gets from every site", system.name()));
        for (site, (site_name, _)) in SITES.iter().enumerate() {
            for (path, id, size) in &files {
                let t = Instant::now();
                let r = get(&bench, system, site, *id, &out, path).await;
                let key = (system, site, false);
                match r {
                    Ok(()) => samples.entry(key).or_default().push((t.elapsed(), *size)),
                    Err(e) => {
                        say(format!("  get from {site_name} failed: {e:#}"));
                        *failures.entry(key).or_default() += 1;
                    }
                }
            }
        }
        if system == System::DynoStore {
            // The entry peers' counts now hold DynoStore's reads only (the
            // replication runs on the same nodes later).
            for c in &bench.clients {
                for (site, b) in status(c).await?.read_bytes_by_site {
                    *by_site.entry(site).or_insert(0) += b;
                }
            }
        }
    }

    let mut sites = Vec::new();
    for system in System::ALL {
        for (site, (name, _)) in SITES.iter().enumerate() {
            let f = |put: bool| {
                figures(
                    samples
                        .get(&(system, site, put))
                        .map_or(&[][..], Vec::as_slice),
                    failures.get(&(system, site, put)).copied().unwrap_or(0),
                )
            };
            let (put, get) = (f(true), f(false));
            if put.count + put.failed == 0 {
                continue;
            }
            sites.push(SiteFigures {
                system: system.name().into(),
                site: name.to_string(),
                put,
                get,
                get_p50_vs_central: None,
            });
        }
    }
    let central_p50: BTreeMap<String, f64> = sites
        .iter()
        .filter(|s| s.system == "central")
        .map(|s| (s.site.clone(), s.get.p50_ms))
        .collect();
    for s in &mut sites {
        if let Some(c) = central_p50.get(&s.site).filter(|c| **c > 0.0) {
            s.get_p50_vs_central = Some(s.get.p50_ms / c);
        }
    }

    let faults = if args.no_faults {
        Vec::new()
    } else {
        fault_phase(&mut bench, args.seed, &files, &out, &say).await?
    };
    Ok(WanReport {
        workload: format!("{:?}", args.workload).to_lowercase(),
        seed: args.seed,
        objects,
        bytes,
        size_scale: scale,
        dynostore_k: geometry.0,
        dynostore_m: geometry.1,
        sites,
        dynostore_read_bytes_by_site: by_site,
        faults,
    })
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// The object's key in the central store.
fn central_key(id: ObjectId) -> ShardId {
    ShardId::of(id.as_bytes())
}

async fn put(
    bench: &Bench,
    system: System,
    site: usize,
    path: &Path,
    id: ObjectId,
) -> Result<(u16, u16)> {
    let params = |k: u16, m: u16, durability: Option<Durability>| PutParams {
        codec: CodecKind::ReedSolomonSimd,
        k,
        m,
        segment_size: None,
        name: None,
        durability,
        reclaimable: false,
    };
    let fut = async {
        match system {
            System::DynoStore => {
                let r = objects::put_file(
                    &bench.clients[site],
                    path,
                    &params(0, 0, Some(Durability(TARGET))),
                    &mut NoProgress,
                )
                .await?;
                Ok((r.k, r.m))
            }
            System::Replication => {
                let r = objects::put_file(
                    &bench.clients[site],
                    path,
                    &params(1, 2, None),
                    &mut NoProgress,
                )
                .await?;
                Ok((r.k, r.m))
            }
            System::Central => {
                let bytes = Bytes::from(tokio::fs::read(path).await?);
                bench.central[site].put(&central_key(id), bytes).await?;
                Ok((1, 0))
            }
        }
    };
    tokio::time::timeout(OP_LIMIT, fut)
        .await
        .context("put timed out")?
}

async fn get(
    bench: &Bench,
    system: System,
    site: usize,
    id: ObjectId,
    out: &Path,
    original: &Path,
) -> Result<()> {
    let fut = async {
        let got: Vec<u8> = match system {
            System::DynoStore | System::Replication => {
                let dest = out.join(format!("{}.{site}", id.short()));
                objects::get_object(
                    &bench.clients[site],
                    id,
                    &Output::File(dest.clone()),
                    &mut NoProgress,
                )
                .await?;
                tokio::fs::read(&dest).await?
            }
            System::Central => bench.central[site].get(&central_key(id)).await?.to_vec(),
        };
        // The central store is not content-addressed: check the bytes here
        // (the others check them against the ID as they stream).
        if system == System::Central && ObjectId::of(&got) != id {
            bail!("the central store returned other bytes for {id}");
        }
        let _ = original;
        Ok(())
    };
    tokio::time::timeout(OP_LIMIT, fut)
        .await
        .context("get timed out")?
}

async fn read_fraction(
    bench: &Bench,
    system: System,
    files: &[(PathBuf, ObjectId, u64)],
    out: &Path,
) -> f64 {
    if system == System::Central && bench.server.is_none() {
        return 0.0;
    }
    let mut ok = 0;
    for (path, id, _) in files {
        if get(bench, system, READER_SITE, *id, out, path)
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    ok as f64 / files.len().max(1) as f64
}

async fn fault_phase(
    bench: &mut Bench,
    seed: u64,
    files: &[(PathBuf, ObjectId, u64)],
    out: &Path,
    say: &dyn Fn(String),
) -> Result<Vec<FaultStep>> {
    // Victims: nodes that are no client's entry peer, in a seeded order.
    let mut victims: Vec<usize> = (0..bench.nodes.len())
        .filter(|i| i % NODES_PER_SITE != 0)
        .collect();
    victims.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut steps = Vec::new();
    let has_central = bench.server.is_some();
    for n in 1..=3.min(victims.len()) {
        let v = victims[n - 1];
        bench.nodes[v].kill();
        if n == 1 {
            // The central store's one server.
            bench.server = None;
        }
        say(format!("fault: {n} node(s) killed (last: node {v})"));
        let mut read_ok = BTreeMap::new();
        for system in System::ALL {
            if system == System::Central && !has_central {
                continue;
            }
            read_ok.insert(
                system.name().to_string(),
                read_fraction(bench, system, files, out).await,
            );
        }
        steps.push(FaultStep {
            step: format!("{n} node(s) down"),
            read_ok,
        });
    }
    // The killed nodes come back (their disks kept), then the whole
    // central site goes dark, alone.
    for &v in victims.iter().take(3) {
        bench.nodes[v].start()?;
    }
    let t0 = Instant::now();
    loop {
        let st = status(&bench.clients[READER_SITE]).await?;
        let alive = st
            .members
            .iter()
            .filter(|m| m.state == dynostore_protocol::MemberState::Alive)
            .count();
        if alive == bench.nodes.len() {
            break;
        }
        if t0.elapsed() > CONVERGE_LIMIT {
            bail!("the restarted nodes did not rejoin: {alive} alive");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 0..bench.nodes.len() {
        if i / NODES_PER_SITE == CENTRAL_SITE {
            bench.nodes[i].kill();
        }
    }
    say(format!(
        "fault: the killed nodes back, then site {} down",
        SITES[CENTRAL_SITE].0
    ));
    let mut read_ok = BTreeMap::new();
    for system in System::ALL {
        if system == System::Central && !has_central {
            continue;
        }
        read_ok.insert(
            system.name().to_string(),
            read_fraction(bench, system, files, out).await,
        );
    }
    steps.push(FaultStep {
        step: format!("site {} down (alone)", SITES[CENTRAL_SITE].0),
        read_ok,
    });
    Ok(steps)
}

/// The report as text tables.
pub fn table(r: &WanReport) -> String {
    let mut t = format!(
        "wan comparison: {} workload, {} objects, {:.1} MB total (size scale {}), seed {}; dynostore k={} m={} for {TARGET}\n",
        r.workload,
        r.objects,
        r.bytes as f64 / 1e6,
        r.size_scale,
        r.seed,
        r.dynostore_k,
        r.dynostore_m
    );
    t += "\n| system | client site | put p50 ms | put p99 ms | get p50 ms | get p99 ms | get MB/s | get p50 / central | failed |\n|---|---|---|---|---|---|---|---|---|\n";
    for s in &r.sites {
        t += &format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {} | {} |\n",
            s.system,
            s.site,
            s.put.p50_ms,
            s.put.p99_ms,
            s.get.p50_ms,
            s.get.p99_ms,
            s.get.mb_per_s,
            s.get_p50_vs_central
                .map_or("-".to_string(), |x| format!("{x:.2}")),
            s.put.failed + s.get.failed
        );
    }
    t += "\nDynoStore shard bytes read per holder site (all clients):\n";
    for (site, b) in &r.dynostore_read_bytes_by_site {
        t += &format!("  {site}: {:.1} MB\n", *b as f64 / 1e6);
    }
    if !r.faults.is_empty() {
        t += "\n| fault (cumulative) | dynostore | central | replication |\n|---|---|---|---|\n";
        for f in &r.faults {
            let g = |s: &str| {
                f.read_ok
                    .get(s)
                    .map_or("-".to_string(), |x| format!("{:.0} %", x * 100.0))
            };
            t += &format!(
                "| {} | {} | {} | {} |\n",
                f.step,
                g("dynostore"),
                g("central"),
                g("replication")
            );
        }
    }
    t
}
