//! `dynostore-sim cluster`: real `dynostore` node processes on loopback,
//! a seeded workload, a fault schedule, and checks.
//!
//! - [`scenario`]: the TOML schema and its validation.
//! - [`workload`]: object sizes and bytes from the seed.
//! - [`procs`]: node processes (init, start, kill, restart).
//! - [`run`](run_scenario): the run itself; a watcher task polls `stat`
//!   of every acknowledged object after each fault until all are healthy.
//! - [`report`]: the table and the JSON report.
//! - [`search`]: `--search`, the randomised fault search: schedules and
//!   workloads drawn from seeds, run one seed after another.
//!
//! Partitions use each node's deny-list (`dynostore deny`,
//! `ControlRequest::Deny`), not network namespaces: it needs no privileges
//! and cuts exactly the node-to-node connections, while the simulated
//! client (an ephemeral peer) keeps reaching the majority side.

pub mod procs;
pub mod report;
pub mod scenario;
pub mod search;
pub mod workload;

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use libp2p::Multiaddr;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;

use dynostore_node::client::Client;
use dynostore_node::container::s3s::{S3sServer, ACCESS_KEY, SECRET_KEY};
use dynostore_node::keys::{self, NetworkKey};
use dynostore_node::objects::{self, NoProgress, Output, PutParams};
use dynostore_protocol::erasure::CodecKind;
use dynostore_protocol::wire::{ControlRequest, ControlResponse, Health, StatusReport};
use dynostore_protocol::{MemberState, NodeId, ObjectId};

use procs::{InitContext, NodeProc};
use report::{Check, FaultReport, FillSpread, NodeFill, OpStats, Report};
use scenario::{Action, Scenario, Workload};

/// How long to wait for a view to converge after start, restart or heal.
const CONVERGE_LIMIT: Duration = Duration::from_secs(90);
/// How often the watcher polls object health.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// Errors kept for the report.
const MAX_ERRORS: usize = 12;
/// How long a node may take to shut down after SIGTERM (`--dashboard`).
const NODE_STOP_LIMIT: Duration = Duration::from_secs(15);

/// Ctrl-C or SIGTERM.
async fn wait_for_stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot listen for SIGTERM ({e}); Ctrl-C still stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `dynostore-sim cluster` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `default`, `ci`, or a scenario file (TOML; see sim/scenarios/).
    #[arg(long, default_value = "default")]
    pub scenario: String,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the scenario's workload.
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// Override the number of objects.
    #[arg(long)]
    pub objects: Option<usize>,
    /// Override the object size scale (1.0 = real sizes).
    #[arg(long)]
    pub size_scale: Option<f64>,
    /// Start every node with automatic repair off (the redundancy check
    /// must then fail: this shows that it can).
    #[arg(long)]
    pub no_repair: bool,
    /// Override the time allowed to return to full redundancy.
    #[arg(long)]
    pub redundancy_deadline_secs: Option<u64>,
    /// The `dynostore` binary (default: beside this one).
    #[arg(long, env = "DYNOSTORE_BIN")]
    pub bin: Option<PathBuf>,
    /// Where node directories go (default: a temporary directory, removed).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the report as JSON (and no progress).
    #[arg(long)]
    pub json: bool,
    /// Randomised fault search instead of a scenario: each seed draws a
    /// cluster, a workload and a fault schedule (`--seed` is the first).
    #[arg(long)]
    pub search: bool,
    /// With `--search`: how many seeds to run, one after another.
    #[arg(long, default_value_t = 1, requires = "search")]
    pub seeds: usize,
    /// With `--search`: steps (operations and faults) per seed.
    #[arg(long, default_value_t = 40, requires = "search")]
    pub steps: usize,
    /// With `--search`: go on after a failing seed.
    #[arg(long, requires = "search")]
    pub keep_going: bool,
    /// After the workload and checks, keep the cluster up, print each
    /// node's web dashboard URL, and wait for Ctrl-C (then stop the
    /// nodes cleanly).
    #[arg(long, conflicts_with = "search")]
    pub dashboard: bool,
}

/// How to run a scenario (beyond the scenario itself).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub bin: PathBuf,
    pub work_dir: Option<PathBuf>,
    /// Show an indicatif bar (only on a terminal).
    pub progress: bool,
    /// Keep the cluster up after the checks until Ctrl-C (`--dashboard`).
    pub dashboard: bool,
}

impl Args {
    /// The scenario named or given, with the flags' overrides applied.
    pub fn scenario(&self) -> Result<Scenario> {
        let mut s = match self.scenario.as_str() {
            "default" => Scenario::parse(scenario::DEFAULT)?,
            "ci" => Scenario::parse(scenario::CI)?,
            path => Scenario::load(Path::new(path))?,
        };
        if let Some(v) = self.seed {
            s.seed = v;
        }
        if let Some(v) = self.workload {
            s.workload = v;
        }
        if let Some(v) = self.objects {
            s.objects = v;
            s.faults.retain(|f| f.after <= v);
        }
        if let Some(v) = self.size_scale {
            s.size_scale = v;
        }
        if let Some(v) = self.redundancy_deadline_secs {
            s.redundancy_deadline_secs = v;
        }
        if self.no_repair {
            s.repair = false;
        }
        s.validate()?;
        Ok(s)
    }

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
                "no dynostore binary at {}: build it (cargo build --release -p dynostore-node) or pass --bin",
                b.display()
            )
        }
    }
}

/// The subcommand: runs, prints, and fails when a check fails.
pub fn run(args: &Args) -> Result<()> {
    if args.search {
        return run_search(args);
    }
    let s = args.scenario()?;
    let opts = RunOptions {
        bin: args.bin()?,
        work_dir: args.work_dir.clone(),
        progress: !args.json,
        dashboard: args.dashboard,
    };
    if !args.json {
        eprintln!(
            "scenario {}: seed {}, {} nodes, k={} m={}, {:?} workload of {} objects (size scale {}), {} faults, repair {}",
            s.name,
            s.seed,
            s.node_plans().len(),
            s.k,
            s.m,
            s.workload,
            s.objects,
            s.size_scale,
            s.faults.len(),
            if s.repair { "on" } else { "off" }
        );
    }
    let print = |report: &Report| -> Result<()> {
        if args.json {
            println!("{}", serde_json::to_string_pretty(report)?);
        } else {
            print!("{}", report.table());
        }
        Ok(())
    };
    let report = if args.dashboard {
        // The report is printed before the cluster is left up.
        let mut printed = Ok(());
        let r = run_scenario_then(&s, &opts, |r| printed = print(r))?;
        printed?;
        r
    } else {
        let r = run_scenario(&s, &opts)?;
        print(&r)?;
        r
    };
    if report.passed {
        Ok(())
    } else {
        bail!("checks failed: {}", report.failed_checks().join(", "))
    }
}

/// `--search`: seeds one after another; the seed is printed before each
/// run and the first failing seed at the end.
fn run_search(args: &Args) -> Result<()> {
    let first = args.seed.unwrap_or(1);
    let opts = RunOptions {
        bin: args.bin()?,
        work_dir: args.work_dir.clone(),
        progress: !args.json,
        dashboard: false,
    };
    let quiet = args.json;
    let mut n = 0;
    let mut each = |r: &search::SeedReport| {
        n += 1;
        if quiet {
            return;
        }
        eprintln!(
            "seed {}: {} in {:.0} s ({} nodes, k={} m={}; {} steps, {} faults; {} puts acknowledged, {} failed, {} rm; {} present, {} removed, {} undetermined)",
            r.seed,
            if r.passed { "passed" } else { "FAILED" },
            r.elapsed_s,
            r.nodes,
            r.k,
            r.m,
            r.steps,
            r.faults,
            r.puts_acked,
            r.puts_failed,
            r.rms_acked,
            r.present,
            r.removed,
            r.unknown
        );
        eprintln!("  slowest: {} ({:.1} s)", r.slowest_step, r.slowest_step_s);
        for c in r.checks.iter().filter(|c| !c.passed) {
            eprintln!("  failed: {}: {}", c.name, c.detail);
        }
        if !r.passed {
            for e in &r.errors {
                eprintln!("  {e}");
            }
        }
    };
    if !quiet {
        eprintln!(
            "fault search: {} seeds from {first}, {} steps each",
            args.seeds, args.steps
        );
    }
    let so = search::SearchOptions {
        first,
        seeds: args.seeds,
        steps: args.steps,
        keep_going: args.keep_going,
        repair: !args.no_repair,
    };
    let report = search::run_search(
        &so,
        &opts,
        &mut |p| {
            if !quiet {
                let kinds = |f: fn(&search::Step) -> bool| p.steps.iter().filter(|s| f(s)).count();
                eprintln!(
                    "seed {}: {} nodes over {} sites, k={} m={}; {} objects, {} kills, {} partitions, {} corruptions",
                    p.seed,
                    p.nodes,
                    p.sites,
                    p.k,
                    p.m,
                    p.objects.len(),
                    kinds(|s| matches!(s, search::Step::Kill { .. })),
                    kinds(|s| matches!(s, search::Step::Partition { .. })),
                    kinds(|s| matches!(s, search::Step::Corrupt { .. })),
                );
            }
        },
        &mut each,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    match report.failed_seeds.first() {
        None => {
            if !quiet {
                eprintln!("{} seeds, all passed", report.seeds_run);
            }
            Ok(())
        }
        Some(seed) => bail!(
            "seed {seed} failed (of {} run; failing: {:?}); reproduce with: dynostore-sim cluster --search --seed {seed} --steps {}",
            report.seeds_run,
            report.failed_seeds,
            args.steps
        ),
    }
}

/// Runs one scenario to its report. Errors are for a run that could not
/// happen (a node that does not start, a bad binary); a run that happened
/// and failed its checks is an `Ok` report with `passed == false`.
pub fn run_scenario(s: &Scenario, opts: &RunOptions) -> Result<Report> {
    run_scenario_then(s, opts, |_| {})
}

/// [`run_scenario`], calling `done` with the report as soon as the checks
/// are over; with `opts.dashboard` the cluster then stays up until Ctrl-C.
pub fn run_scenario_then(
    s: &Scenario,
    opts: &RunOptions,
    done: impl FnOnce(&Report),
) -> Result<Report> {
    let tmp;
    let root = match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut run = Run::start(s, opts, &root).await?;
        let result = run.execute().await;
        if let Ok(report) = &result {
            done(report);
            if opts.dashboard {
                run.keep_up_for_dashboard().await;
            }
        }
        run.stop();
        result
    })
}

/// One acknowledged object.
#[derive(Debug, Clone, Copy)]
struct Acked {
    index: usize,
    id: ObjectId,
    size: u64,
}

/// What the main loop and the health watcher share.
#[derive(Debug, Default)]
struct Watch {
    acked: Vec<Acked>,
    /// Bumped by every fault: results of a pass begun before it are void.
    epoch: u64,
    healthy: HashSet<ObjectId>,
    /// Faults not yet followed by full redundancy: (index in the report, when).
    pending: Vec<(usize, Instant)>,
    /// Per fault (index in the report), the time until full redundancy.
    resolved: HashMap<usize, Duration>,
    /// Where the watcher asks (a node on the majority side that is up).
    entry: Option<Multiaddr>,
    stop: bool,
}

struct Run<'a> {
    s: &'a Scenario,
    opts: &'a RunOptions,
    root: PathBuf,
    key: NetworkKey,
    nodes: Vec<NodeProc>,
    _s3: Option<S3sServer>,
    clients: HashMap<usize, Client>,
    minority: HashSet<usize>,
    started: Instant,
    watch: Arc<Mutex<Watch>>,
    /// Signalled by the watcher whenever pending faults are resolved.
    resolved: Arc<Notify>,
    errors: Vec<String>,
    faults: Vec<FaultReport>,
}

fn bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} objects {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

impl<'a> Run<'a> {
    async fn start(s: &'a Scenario, opts: &'a RunOptions, root: &Path) -> Result<Run<'a>> {
        let key_path = root.join("network.key");
        let key = keys::create_network_key(&key_path)
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        let s3 = if s.uses_s3() {
            Some(start_s3s(s.node_plans().len())?)
        } else {
            None
        };
        let s3_spec = |i: usize, quota: &str| -> Result<String> {
            let srv = s3.as_ref().ok_or_else(|| anyhow!("no s3s-fs server"))?;
            Ok(format!(
                "s3:{}/node{i}:{quota}?access_key={ACCESS_KEY}&secret_key={SECRET_KEY}",
                srv.endpoint()
            ))
        };
        let mut nodes: Vec<NodeProc> = Vec::new();
        for (i, plan) in s.node_plans().iter().enumerate() {
            let first = nodes.first().map(|n| n.addr.clone());
            let cx = InitContext {
                bin: &opts.bin,
                root,
                key: &key_path,
                timing: &s.timing,
                repair: s.repair,
                bootstrap: first.as_ref(),
                s3: &s3_spec,
            };
            let mut node = NodeProc::init(i, plan, &cx)?;
            node.start()?;
            nodes.push(node);
        }
        let mut run = Run {
            s,
            opts,
            root: root.to_path_buf(),
            key,
            nodes,
            _s3: s3,
            clients: HashMap::new(),
            minority: HashSet::new(),
            started: Instant::now(),
            watch: Arc::new(Mutex::new(Watch::default())),
            resolved: Arc::new(Notify::new()),
            errors: Vec::new(),
            faults: Vec::new(),
        };
        let all: Vec<usize> = (0..run.nodes.len()).collect();
        run.wait_converged(&all).await?;
        run.started = Instant::now();
        Ok(run)
    }

    fn stop(&mut self) {
        self.clients.clear();
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// `--dashboard`: prints each running node's dashboard URL, waits for
    /// Ctrl-C (or SIGTERM), then stops every node with SIGTERM.
    async fn keep_up_for_dashboard(&mut self) {
        self.clients.clear();
        let mut lines = String::from("\nthe cluster stays up; each node's dashboard:\n");
        for n in &self.nodes {
            if !n.is_running() {
                continue;
            }
            match n.admin_addr() {
                Some(a) => {
                    lines.push_str(&format!("  node {} ({}): http://{a}/\n", n.index, n.site))
                }
                None => lines.push_str(&format!(
                    "  node {} ({}): no admin.addr yet\n",
                    n.index, n.site
                )),
            }
        }
        lines.push_str(&format!(
            "node directories and logs: {}\npress Ctrl-C to stop the nodes\n",
            self.root.display()
        ));
        // On stderr: stdout may be a --json report that a pipe reads.
        eprint!("{lines}");
        wait_for_stop_signal().await;
        eprintln!("stopping the nodes...");
        for n in &mut self.nodes {
            if n.is_running() && !n.terminate(NODE_STOP_LIMIT) {
                eprintln!(
                    "node {} did not stop within {NODE_STOP_LIMIT:?}: killed",
                    n.index
                );
            }
        }
    }

    fn note_error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    /// Nodes that are running and on the client's side of any partition.
    fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running() && !self.minority.contains(i))
            .collect()
    }

    async fn client(&mut self, i: usize) -> Result<&Client> {
        if !self.clients.contains_key(&i) {
            let c = Client::connect(
                self.nodes[i].addr.clone(),
                Some(&self.key),
                Duration::from_secs(10),
            )
            .await
            .with_context(|| format!("connect to node {i}"))?;
            self.clients.insert(i, c);
        }
        self.clients
            .get(&i)
            .ok_or_else(|| anyhow!("no client for node {i}"))
    }

    async fn status(&mut self, i: usize) -> Result<StatusReport> {
        let c = self.client(i).await?;
        match c.control(ControlRequest::Status).await {
            Ok(ControlResponse::Status(r)) => Ok(r),
            Ok(other) => bail!("node {i} answered status with {other:?}"),
            Err(e) => {
                self.clients.remove(&i);
                Err(anyhow!("status of node {i}: {e}"))
            }
        }
    }

    /// Waits until every node in `who` sees every node in `who` alive.
    async fn wait_converged(&mut self, who: &[usize]) -> Result<Duration> {
        self.wait_views(who, "saw each other alive", |_, _, state| {
            state == Some(MemberState::Alive)
        })
        .await
    }

    /// Waits until `ok(i, j, state)` holds for every pair of nodes of `who`:
    /// node `i` sees node `j` in `state` (`None`: not a member it knows).
    async fn wait_views(
        &mut self,
        who: &[usize],
        what: &str,
        ok: impl Fn(usize, usize, Option<MemberState>) -> bool,
    ) -> Result<Duration> {
        let t0 = Instant::now();
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .map(|n| n.id.parse::<NodeId>())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("bad node ID: {e}"))?;
        let mut last = String::new();
        while t0.elapsed() < CONVERGE_LIMIT {
            let mut all = true;
            for &i in who {
                match self.status(i).await {
                    Ok(r) => {
                        for &j in who {
                            let state = r.members.iter().find(|m| m.id == ids[j]).map(|m| m.state);
                            if !ok(i, j, state) {
                                all = false;
                                last = format!("node {i} sees node {j} as {state:?}");
                            }
                        }
                    }
                    Err(e) => {
                        all = false;
                        last = e.to_string();
                    }
                }
            }
            if all {
                return Ok(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("nodes {who:?} never {what} within {CONVERGE_LIMIT:?}; last: {last}")
    }

    async fn execute(&mut self) -> Result<Report> {
        let s = self.s;
        let plan = workload::plan(s.seed, s.workload, s.objects, s.size_scale);
        let params = PutParams {
            codec: CodecKind::ReedSolomonSimd,
            k: s.k,
            m: s.m,
            segment_size: s.segment_size,
            name: None,
            durability: None,
            reclaimable: false,
        };
        let data_dir = self.root.join("data");
        std::fs::create_dir_all(&data_dir)?;
        self.set_watch_entry();
        let watcher = tokio::spawn(watch_health(
            self.watch.clone(),
            self.resolved.clone(),
            self.key.clone(),
        ));
        let pb = bar(self.opts.progress, plan.len() as u64);
        let (mut puts, mut gets) = (Vec::new(), Vec::new());
        let (mut put_failed, mut get_failed) = (0, 0);
        let mut by_index: HashMap<usize, Acked> = HashMap::new();
        let width = usize::from(s.k + s.m);
        let mut puts_refused_with_enough_nodes = 0;
        for obj in &plan {
            for fi in 0..s.faults.len() {
                if s.faults[fi].after == obj.index {
                    pb.set_message(format!("fault: {:?}", s.faults[fi].action));
                    self.apply_fault(fi).await?;
                }
            }
            pb.set_message(String::new());
            let up = self.up();
            if up.is_empty() {
                bail!("no node is up to take requests");
            }
            // Put through one node ...
            let entry = up[obj.index % up.len()];
            let path = data_dir.join(format!("obj{}.bin", obj.index));
            let want = workload::write_object(s.seed, obj, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let t = Instant::now();
            let res = match self.client(entry).await {
                Ok(c) => objects::put_file(c, &path, &params, &mut NoProgress)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("{e:#}")),
            };
            let _ = std::fs::remove_file(&path);
            match res {
                Ok(r) if r.object.as_bytes() == want.as_bytes() => {
                    puts.push((obj.size, t.elapsed().as_secs_f64() * 1e3));
                    let a = Acked {
                        index: obj.index,
                        id: r.object,
                        size: obj.size,
                    };
                    by_index.insert(obj.index, a);
                    lock(&self.watch).acked.push(a);
                }
                Ok(r) => {
                    put_failed += 1;
                    self.note_error(format!(
                        "put {}: acknowledged as {}, its BLAKE3 is {want}",
                        obj.index, r.object
                    ));
                }
                Err(e) => {
                    put_failed += 1;
                    self.clients.remove(&entry);
                    if up.len() >= width {
                        puts_refused_with_enough_nodes += 1;
                    }
                    self.note_error(format!("put {} via node {entry}: {e}", obj.index));
                }
            }
            // ... and now and then read an earlier one through another.
            if let Some(j) = workload::read_after(s.seed, obj.index, s.read_fraction) {
                if let Some(a) = by_index.get(&j).copied() {
                    let reader = up[(obj.index + 1) % up.len()];
                    let t = Instant::now();
                    match self.read_back(reader, a).await {
                        Ok(()) => gets.push((a.size, t.elapsed().as_secs_f64() * 1e3)),
                        Err(e) => {
                            get_failed += 1;
                            self.note_error(format!("get {} via node {reader}: {e:#}", a.index));
                        }
                    }
                }
            }
            pb.inc(1);
        }
        for fi in 0..s.faults.len() {
            if s.faults[fi].after == s.objects {
                self.apply_fault(fi).await?;
            }
        }
        pb.set_message("waiting for full redundancy");
        self.settle().await;
        lock(&self.watch).stop = true;
        let _ = watcher.await;
        pb.set_message("reading every object back");
        let acked = lock(&self.watch).acked.clone();
        let mut lost = 0;
        for (n, a) in acked.iter().enumerate() {
            let up = self.up();
            let reader = up[n % up.len()];
            if let Err(e) = self.read_back(reader, *a).await {
                lost += 1;
                self.note_error(format!("final get {} via node {reader}: {e:#}", a.index));
            }
        }
        pb.finish_and_clear();
        let fill = self.fill().await;

        let resolved = lock(&self.watch).resolved.clone();
        for (i, f) in self.faults.iter_mut().enumerate() {
            f.time_to_full_redundancy_s = resolved.get(&i).map(Duration::as_secs_f64);
        }
        let mut checks = Vec::new();
        checks.push(Check {
            name: "every acknowledged object reads back byte-identical".into(),
            passed: lost == 0 && !acked.is_empty(),
            detail: format!(
                "{} of {} read back; {lost} failed",
                acked.len() - lost,
                acked.len()
            ),
        });
        checks.push(Check {
            name: "no read failed while at most m holders of a stripe were down".into(),
            passed: get_failed == 0,
            detail: format!(
                "{} reads during the run, {get_failed} failed",
                gets.len() + get_failed
            ),
        });
        checks.push(Check {
            name: "every put succeeded while at least k + m nodes were up".into(),
            passed: puts_refused_with_enough_nodes == 0,
            detail: format!("{puts_refused_with_enough_nodes} refused"),
        });
        let never = self
            .faults
            .iter()
            .filter(|f| f.time_to_full_redundancy_s.is_none())
            .count();
        checks.push(Check {
            name: format!(
                "full redundancy within {} s of the last fault",
                s.redundancy_deadline_secs
            ),
            passed: never == 0,
            detail: match never {
                0 => "every object is healthy (k + m verified shards on live nodes)".into(),
                n => format!("{n} faults were never followed by full redundancy"),
            },
        });
        let passed = checks.iter().all(|c| c.passed);
        Ok(Report {
            scenario: s.name.clone(),
            seed: s.seed,
            nodes: self.nodes.len(),
            k: s.k,
            m: s.m,
            workload: format!("{:?}", s.workload).to_lowercase(),
            repair: s.repair,
            objects_planned: s.objects,
            objects_acknowledged: acked.len(),
            put: OpStats::from_samples(&puts, put_failed),
            get: OpStats::from_samples(&gets, get_failed),
            objects_lost: lost,
            fill,
            faults: std::mem::take(&mut self.faults),
            errors: std::mem::take(&mut self.errors),
            checks,
            passed,
            elapsed_s: self.started.elapsed().as_secs_f64(),
        })
    }

    /// Waits until no fault awaits full redundancy, for at most the
    /// scenario's deadline.
    /// Waits until every fault so far is resolved (all objects healthy
    /// since), or the redundancy deadline. Returns whether they were.
    async fn settle(&self) -> bool {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.s.redundancy_deadline_secs);
        loop {
            let resolved = self.resolved.notified();
            tokio::pin!(resolved);
            resolved.as_mut().enable();
            if lock(&self.watch).pending.is_empty() {
                return true;
            }
            tokio::select! {
                () = resolved => {}
                () = tokio::time::sleep_until(deadline) => {
                    return lock(&self.watch).pending.is_empty();
                }
            }
        }
    }

    /// Whether every fault so far is resolved.
    pub(crate) fn settled(&self) -> bool {
        lock(&self.watch).pending.is_empty()
    }

    /// Gets `a` through node `reader` into a file and checks its BLAKE3.
    async fn read_back(&mut self, reader: usize, a: Acked) -> Result<()> {
        let out = self.root.join("data").join("get.bin");
        let c = self.client(reader).await?;
        let res = objects::get_object(c, a.id, &Output::File(out.clone()), &mut NoProgress).await;
        if let Err(e) = res {
            self.clients.remove(&reader);
            bail!("{e}");
        }
        // Re-hash what landed on disk, in blocks: a raster can be 1 GB.
        let hashed = objects::hash_file(&out, &mut NoProgress).await;
        let _ = tokio::fs::remove_file(&out).await;
        let (got, len) = hashed?;
        if got != a.id || len != a.size {
            bail!("read back {len} bytes hashing to {got}");
        }
        Ok(())
    }

    fn set_watch_entry(&self) {
        let entry = self.up().first().map(|&i| self.nodes[i].addr.clone());
        lock(&self.watch).entry = entry;
    }

    async fn apply_fault(&mut self, fi: usize) -> Result<()> {
        let f = self.s.faults[fi].clone();
        self.apply(&f, fi as u64).await
    }

    /// Applies one fault and records it in the report; `salt` varies the
    /// choice of shards a corruption flips.
    async fn apply(&mut self, f: &scenario::Fault, salt: u64) -> Result<()> {
        if f.action == Action::Settle {
            let _ = self.settle().await;
            return Ok(());
        }
        let mut detail = String::new();
        // The clock starts now, and any health pass in flight is void.
        // Pending faults are keyed by their place in the report.
        let at = Instant::now();
        let at_s = self.started.elapsed().as_secs_f64();
        let report_index = self.faults.len();
        {
            let mut w = lock(&self.watch);
            w.epoch += 1;
            w.healthy.clear();
            w.pending.push((report_index, at));
        }
        match f.action {
            Action::Kill => {
                for &x in &f.nodes {
                    self.clients.remove(&x);
                    self.nodes[x].kill();
                }
            }
            Action::Restart => {
                for &x in &f.nodes {
                    self.nodes[x].start()?;
                }
                let up = self.up();
                let took = self.wait_converged(&up).await?;
                detail = format!("rejoined in {:.1} s", took.as_secs_f64());
            }
            Action::Partition => {
                let side: HashSet<usize> = f.nodes.iter().copied().collect();
                for i in 0..self.nodes.len() {
                    if !self.nodes[i].is_running() {
                        continue;
                    }
                    let others: Vec<NodeId> = (0..self.nodes.len())
                        .filter(|j| side.contains(j) != side.contains(&i))
                        .map(|j| self.nodes[j].id.parse())
                        .collect::<Result<_, _>>()
                        .map_err(|e| anyhow!("bad node ID: {e}"))?;
                    self.deny(i, others).await?;
                }
                self.minority = side;
                for &x in &f.nodes {
                    self.clients.remove(&x);
                }
            }
            Action::Heal => {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].is_running() {
                        self.deny(i, Vec::new()).await?;
                    }
                }
                self.minority.clear();
                let up = self.up();
                let took = self.wait_converged(&up).await?;
                detail = format!("views whole again in {:.1} s", took.as_secs_f64());
            }
            Action::Settle => {}
            Action::Corrupt => {
                let mut rng = ChaCha8Rng::seed_from_u64(self.s.seed ^ (salt + 1) << 32);
                let mut done = 0;
                for &x in &f.nodes {
                    let mut files = self.nodes[x].shard_files();
                    for _ in 0..f.shards.unwrap_or(0).min(files.len()) {
                        let p = files.swap_remove(rng.gen_range(0..files.len()));
                        let mut b = std::fs::read(&p)?;
                        if b.is_empty() {
                            continue;
                        }
                        let at = rng.gen_range(0..b.len());
                        b[at] ^= 0x5a;
                        std::fs::write(&p, b)?;
                        done += 1;
                    }
                }
                detail = format!("{done} shard files corrupted");
            }
        }
        self.set_watch_entry();
        {
            // Passes that overlapped the action saw a half-applied fault.
            let mut w = lock(&self.watch);
            w.epoch += 1;
            w.healthy.clear();
        }
        self.faults.push(FaultReport {
            after: f.after,
            action: format!("{:?}", f.action).to_lowercase(),
            nodes: f.nodes.clone(),
            at_s,
            time_to_full_redundancy_s: None,
            detail,
        });
        Ok(())
    }

    async fn deny(&mut self, i: usize, peers: Vec<NodeId>) -> Result<()> {
        let c = self.client(i).await?;
        match c.control(ControlRequest::Deny { peers }).await {
            Ok(ControlResponse::Denied { .. }) => Ok(()),
            Ok(other) => bail!("node {i} answered deny with {other:?}"),
            Err(e) => bail!("deny on node {i}: {e}"),
        }
    }

    /// Every running node's own fill (used / capacity over its containers).
    async fn fill(&mut self) -> FillSpread {
        let mut nodes = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                continue;
            }
            let Ok(r) = self.status(i).await else {
                continue;
            };
            let capacity: u64 = r.containers.iter().map(|c| c.capacity_bytes).sum();
            let free: u64 = r.containers.iter().map(|c| c.free_bytes).sum();
            let used = capacity.saturating_sub(free);
            nodes.push(NodeFill {
                node: i,
                site: self.nodes[i].site.clone(),
                capacity_bytes: capacity,
                used_bytes: used,
                fill: if capacity > 0 {
                    used as f64 / capacity as f64
                } else {
                    0.0
                },
            });
        }
        let min = nodes.iter().map(|n| n.fill).fold(f64::INFINITY, f64::min);
        let max = nodes.iter().map(|n| n.fill).fold(0.0, f64::max);
        FillSpread {
            min: if nodes.is_empty() { 0.0 } else { min },
            max,
            max_over_min: if min > 0.0 { max / min } else { f64::INFINITY },
            nodes,
        }
    }
}

fn lock(w: &Mutex<Watch>) -> std::sync::MutexGuard<'_, Watch> {
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The health watcher: after each fault, `stat`s every acknowledged object
/// not yet seen healthy since that fault, until all are; then the pending
/// faults get their time to full redundancy.
async fn watch_health(watch: Arc<Mutex<Watch>>, resolved: Arc<Notify>, key: NetworkKey) {
    let mut client: Option<(Multiaddr, Client)> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let (epoch, todo, entry) = {
            let w = lock(&watch);
            if w.stop {
                return;
            }
            if w.pending.is_empty() {
                continue;
            }
            let todo: Vec<ObjectId> = w
                .acked
                .iter()
                .map(|a| a.id)
                .filter(|id| !w.healthy.contains(id))
                .collect();
            (w.epoch, todo, w.entry.clone())
        };
        let Some(entry) = entry else { continue };
        if client.as_ref().is_none_or(|(a, _)| a != &entry) {
            client = Client::connect(entry.clone(), Some(&key), Duration::from_secs(10))
                .await
                .ok()
                .map(|c| (entry.clone(), c));
        }
        let Some((_, c)) = &client else { continue };
        let mut healthy = Vec::new();
        let mut broken = false;
        for id in todo {
            if lock(&watch).epoch != epoch {
                break;
            }
            match objects::stat(c, id, None).await {
                Ok(st) if st.health == Health::Healthy => healthy.push(id),
                Ok(_) => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            client = None;
        }
        let now = Instant::now();
        let mut w = lock(&watch);
        if w.epoch != epoch {
            continue;
        }
        w.healthy.extend(healthy);
        let all = w.acked.iter().all(|a| w.healthy.contains(&a.id));
        if all {
            for (fi, t) in std::mem::take(&mut w.pending) {
                w.resolved.insert(fi, now - t);
            }
            resolved.notify_waiters();
        }
    }
}

/// Starts a local `s3s-fs` with one bucket per node, after checking it is
/// installed (the testkit helper would panic instead).
fn start_s3s(nodes: usize) -> Result<S3sServer> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("s3s-fs").is_file()))
        .unwrap_or(false);
    if !on_path {
        bail!("the scenario has s3: containers but s3s-fs is not on PATH; install it with bash scripts/s3s-fs.sh");
    }
    let buckets: Vec<String> = (0..nodes).map(|i| format!("node{i}")).collect();
    let refs: Vec<&str> = buckets.iter().map(String::as_str).collect();
    Ok(S3sServer::start(&refs))
}
