//! `dynostore-sim scale`: the protocol's placement code over thousands of
//! virtual nodes, with no network, beside two baselines on the same inputs.
//!
//! # Data flow
//! 1. [`world`]: sites, nodes (heterogeneous capacities), 1 % joiners,
//!    1 % leavers and the objects, all drawn from the seed.
//! 2. [`fill`] (report 1): each policy fills the network from empty to the
//!    target fill; the spread of per-node fill fractions at checkpoints.
//!    The rendezvous policy is `dynostore_protocol::placement::View::place`
//!    over the node's weights (capacity with a bounded fill correction,
//!    `View::weighted`); the baselines are the DynoStore paper's
//!    utility factor (greedy, least `used / capacity`) and uniform random.
//! 3. [`moves`] (report 2): bytes moved when the joiners join and when the
//!    leavers leave, against the ideal; for rendezvous by the node's own
//!    rebalancer and repair targets (`protocol::repair`).
//! 4. [`durability`] (report 3): node failures, repairs and site outages
//!    over simulated years, event-driven, for the configured rates and for
//!    a harsher setting (so the figure is informative when nothing is lost).
//!
//! Every decision goes into the [`log::EventLog`], whose BLAKE3 hash is
//! printed last. The run is a pure function of the parameters: the same seed
//! prints the same output, whatever `--threads` (parallel work is merged in
//! index order). Progress and timings go to stderr, never to stdout.

pub mod durability;
pub mod fill;
pub mod log;
pub mod moves;
pub mod world;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use self::durability::{durability, DurabilityConfig, DurabilitySetting};
use self::fill::{fill, Checkpoint, FillConfig, FillOutcome, Policy};
use self::log::EventLog;
use self::moves::{moves, MovesConfig, MovesReport};
use self::world::{World, WorldSpec};

/// Flags of `dynostore-sim scale`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Args {
    /// Seed of every random draw: the same seed prints the same results.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Virtual nodes in the network.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub nodes: u32,
    /// Sites (failure domains) the nodes are spread over.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub sites: u32,
    /// Skew of nodes per site: site s gets nodes in proportion to
    /// 1/(s+1)^skew (0 = uniform).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub site_skew: f64,
    /// Objects to place (each one stripe of k+m shards).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub objects: u32,
    /// Data shards per stripe.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub k: u32,
    /// Parity shards per stripe.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=126))]
    pub m: u32,
    /// Fraction of the total capacity the objects fill (parity included).
    #[arg(long, default_value_t = 0.8, value_parser = fill_fraction, allow_negative_numbers = true)]
    pub fill: f64,
    /// Largest / smallest node capacity (capacities are log-uniform).
    #[arg(long, default_value_t = 100.0, value_parser = at_least_one, allow_negative_numbers = true)]
    pub capacity_ratio: f64,
    /// Median object size in MB (10^6 bytes); sizes are log-normal.
    #[arg(long, default_value_t = 256.0, value_parser = positive, allow_negative_numbers = true)]
    pub size_median_mb: f64,
    /// Sigma of ln(object size).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub size_sigma: f64,
    /// Objects placed between two rebuilds of the rendezvous view.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub refresh_every: u32,
    /// Fraction of nodes that join in report 2.
    #[arg(long, default_value_t = 0.01, value_parser = small_fraction, allow_negative_numbers = true)]
    pub join_fraction: f64,
    /// Fraction of nodes that leave in report 2.
    #[arg(long, default_value_t = 0.01, value_parser = small_fraction, allow_negative_numbers = true)]
    pub leave_fraction: f64,
    /// Check the exact shortcuts of report 2 on every N-th object.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub verify_every: u32,
    /// Annual failure rate of a node (probability of failing within a year).
    #[arg(long, default_value_t = 0.05, value_parser = probability, allow_negative_numbers = true)]
    pub afr: f64,
    /// Hours from a node failure to the repair of its shards.
    #[arg(long, default_value_t = 24.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub repair_delay_hours: f64,
    /// Simulated years of failures.
    #[arg(long, default_value_t = 5.0, value_parser = years, allow_negative_numbers = true)]
    pub years: f64,
    /// Outages per site per year (0 = none).
    #[arg(long, default_value_t = 0.05, value_parser = non_negative, allow_negative_numbers = true)]
    pub site_outage_rate: f64,
    /// Length of a site outage in hours.
    #[arg(long, default_value_t = 72.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub site_outage_hours: f64,
    /// Annual failure rate of the harsher durability setting.
    #[arg(long, default_value_t = 0.2, value_parser = probability, allow_negative_numbers = true)]
    pub harsh_afr: f64,
    /// Repair delay of the harsher durability setting, in hours.
    #[arg(long, default_value_t = 168.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub harsh_repair_delay_hours: f64,
    /// Worker threads (results do not depend on it).
    #[serde(skip)]
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Print one JSON object instead of tables.
    #[serde(skip)]
    #[arg(long)]
    pub json: bool,
    /// Also write the event log as text, one event per line.
    #[serde(skip)]
    #[arg(long, value_name = "PATH")]
    pub event_log: Option<PathBuf>,
    /// No progress on stderr.
    #[serde(skip)]
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// Checks what the per-flag parsers cannot: combinations.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.k + self.m;
        if self.nodes < n {
            return Err(format!(
                "--nodes {} is fewer than k + m = {n}: a stripe needs {n} distinct nodes",
                self.nodes
            ));
        }
        let staying =
            self.nodes as usize - world::count_of(self.leave_fraction, self.nodes as usize);
        if staying < n as usize {
            return Err(format!(
                "--leave-fraction {} leaves fewer than k + m = {n} nodes",
                self.leave_fraction
            ));
        }
        Ok(())
    }

    fn world_spec(&self) -> WorldSpec {
        WorldSpec {
            seed: self.seed,
            nodes: self.nodes as usize,
            sites: self.sites as usize,
            site_skew: self.site_skew,
            objects: self.objects as usize,
            k: self.k as usize,
            m: self.m as usize,
            fill: self.fill,
            capacity_ratio: self.capacity_ratio,
            size_median_bytes: self.size_median_mb * 1e6,
            size_sigma: self.size_sigma,
            join_fraction: self.join_fraction,
            leave_fraction: self.leave_fraction,
        }
    }

    fn durability_settings(&self) -> [DurabilityConfig; 2] {
        let base = DurabilityConfig {
            label: "configured".into(),
            afr: self.afr,
            repair_delay_hours: self.repair_delay_hours,
            years: self.years,
            site_outage_rate: self.site_outage_rate,
            site_outage_hours: self.site_outage_hours,
        };
        let harsh = DurabilityConfig {
            label: "harsher".into(),
            afr: self.harsh_afr,
            repair_delay_hours: self.harsh_repair_delay_hours,
            ..base.clone()
        };
        [base, harsh]
    }
}

fn parse_f64(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("`{s}` is not a finite number"))
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x >= 0.0 {
        Ok(x)
    } else {
        Err(format!("{x} is negative"))
    }
}

fn positive(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x > 0.0 {
        Ok(x)
    } else {
        Err(format!("{x} must be above 0"))
    }
}

fn at_least_one(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x >= 1.0 {
        Ok(x)
    } else {
        Err(format!("{x} must be at least 1"))
    }
}

fn fill_fraction(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x > 0.0 && x <= 0.99 {
        Ok(x)
    } else {
        Err(format!("{x} must be in (0, 0.99]"))
    }
}

fn small_fraction(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if (0.0..=0.5).contains(&x) {
        Ok(x)
    } else {
        Err(format!("{x} must be in [0, 0.5]"))
    }
}

fn probability(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if (0.0..1.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!("{x} must be in [0, 1)"))
    }
}

fn years(s: &str) -> Result<f64, String> {
    let x = parse_f64(s)?;
    if x > 0.0 && x <= 1000.0 {
        Ok(x)
    } else {
        Err(format!("{x} must be in (0, 1000]"))
    }
}

/// Derived facts about the generated inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub shards_per_stripe: usize,
    pub object_bytes_mean: f64,
    pub object_bytes_p50: u64,
    pub object_bytes_p99: u64,
    pub stored_bytes: u128,
    pub capacity_bytes: u128,
    pub node_capacity_min_bytes: u64,
    pub node_capacity_max_bytes: u64,
    pub shards_per_node_mean: f64,
    pub nodes_per_site_min: u64,
    pub nodes_per_site_max: u64,
    pub joiners: usize,
    pub leavers: usize,
}

/// One policy's fill report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillReport {
    pub policy: Policy,
    pub checkpoints: Vec<Checkpoint>,
    pub redirected_shards: u64,
    pub refused_objects: u64,
}

/// The event log's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogSummary {
    pub events: u64,
    pub blake3: String,
}

/// Everything a run prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub seed: u64,
    pub params: Args,
    pub model: Model,
    pub fill: Vec<FillReport>,
    pub moves: MovesReport,
    pub durability: Vec<DurabilitySetting>,
    pub event_log: LogSummary,
}

impl PartialEq for Args {
    fn eq(&self, other: &Self) -> bool {
        // Compare what is printed: the serialized parameters.
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

/// Runs the subcommand: prints the report on stdout.
pub fn run(args: &Args) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let mut log = match &args.event_log {
        Some(path) => EventLog::with_text(path)
            .with_context(|| format!("cannot create event log {}", path.display()))?,
        None => EventLog::new(),
    };
    let started = Instant::now();
    let report = simulate(args, &mut log);
    log.finish().context("cannot write the event log")?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write the report")?,
    }
    if !args.quiet {
        eprintln!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The whole run, as a pure function of `args` (the log records it).
pub fn simulate(args: &Args, log: &mut EventLog) -> Report {
    let started = Instant::now();
    let progress = |what: &str| {
        if !args.quiet {
            eprintln!("[{:7.1} s] {what}", started.elapsed().as_secs_f64());
        }
    };
    let threads = args.threads as usize;
    progress("generating the world");
    let world = World::generate(&args.world_spec());
    let initial: Vec<u32> = world.initial_range().collect();

    let mut checkpoints: Vec<f64> = [0.2, 0.4, 0.6, 0.8]
        .into_iter()
        .filter(|&c| c < args.fill - 1e-9)
        .collect();
    checkpoints.push(args.fill);
    let fill_cfg = FillConfig {
        seed: args.seed,
        refresh: args.refresh_every as usize,
        threads,
        checkpoints,
        progress: !args.quiet && !args.json,
        label: "random-policy",
    };
    let fills: Vec<FillOutcome> = Policy::ALL
        .iter()
        .map(|&p| {
            progress(&format!("report 1: filling with {}", p.name()));
            fill(&world, &initial, p, &fill_cfg, log)
        })
        .collect();

    progress("report 2: data moved on join and leave");
    let moves_cfg = MovesConfig {
        threads,
        progress: !args.quiet && !args.json,
        verify_every: args.verify_every as usize,
        fill: FillConfig {
            checkpoints: Vec::new(),
            progress: false,
            ..fill_cfg.clone()
        },
    };
    let moved = moves(&world, &fills, &moves_cfg, log);

    progress("report 3: durability, configured and harsher settings");
    let durability = durability(
        &world,
        &fills,
        &args.durability_settings(),
        args.seed,
        threads,
        log,
    );
    progress("done");

    Report {
        seed: args.seed,
        params: args.clone(),
        model: model(&world),
        fill: fills
            .iter()
            .map(|f| FillReport {
                policy: f.policy,
                checkpoints: f.checkpoints.clone(),
                redirected_shards: f.redirected_shards,
                refused_objects: f.refused_objects,
            })
            .collect(),
        moves: moved,
        durability,
        event_log: LogSummary {
            events: log.events(),
            blake3: log.hash_hex(),
        },
    }
}

fn model(world: &World) -> Model {
    let k = world.k as u64;
    let mut sizes: Vec<u64> = world.objects.iter().map(|o| o.shard_bytes * k).collect();
    sizes.sort_unstable();
    let q = |p: f64| sizes[((p * (sizes.len() - 1) as f64).round() as usize).min(sizes.len() - 1)];
    let initial = &world.all_nodes[..world.initial];
    let mut per_site = vec![0u64; world.sites.len()];
    for node in initial {
        per_site[node.site as usize] += 1;
    }
    Model {
        shards_per_stripe: world.n,
        object_bytes_mean: sizes.iter().map(|&s| s as f64).sum::<f64>() / sizes.len() as f64,
        object_bytes_p50: q(0.5),
        object_bytes_p99: q(0.99),
        stored_bytes: world
            .objects
            .iter()
            .map(|o| u128::from(o.shard_bytes) * world.n as u128)
            .sum(),
        capacity_bytes: initial.iter().map(|x| u128::from(x.capacity_bytes)).sum(),
        node_capacity_min_bytes: initial.iter().map(|x| x.capacity_bytes).min().unwrap_or(0),
        node_capacity_max_bytes: initial.iter().map(|x| x.capacity_bytes).max().unwrap_or(0),
        shards_per_node_mean: (world.objects.len() * world.n) as f64 / world.initial as f64,
        nodes_per_site_min: per_site.iter().copied().min().unwrap_or(0),
        nodes_per_site_max: per_site.iter().copied().max().unwrap_or(0),
        joiners: world.all_nodes.len() - world.initial,
        leavers: world.leavers.len(),
    }
}

/// Bytes in decimal units.
fn bytes(b: f64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut x = b;
    let mut u = 0;
    while x >= 1000.0 && u < UNITS.len() - 1 {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{x:.0} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// An integer with thousands separators.
fn grouped(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// A non-negative number that may be tiny: scientific notation below 0.01.
fn small(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x < 0.01 {
        format!("{x:.2e}")
    } else {
        format!("{x:.3}")
    }
}

fn ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "inf".to_string(), |r| format!("{r:.2}"))
}

/// The report as text tables.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let p = &r.params;
    let md = &r.model;
    // Writing into a String cannot fail.
    let _ = render_into(&mut o, r, p, md);
    o
}

fn render_into(o: &mut String, r: &Report, p: &Args, md: &Model) -> std::fmt::Result {
    writeln!(o, "seed: {}", r.seed)?;
    writeln!(o, "dynostore-sim scale")?;
    writeln!(
        o,
        "parameters: nodes {} sites {} site-skew {} objects {} k {} m {} fill {} capacity-ratio {} \
         size-median-mb {} size-sigma {} refresh-every {} join-fraction {} leave-fraction {} \
         verify-every {} afr {} repair-delay-hours {} years {} site-outage-rate {} \
         site-outage-hours {} harsh-afr {} harsh-repair-delay-hours {}",
        p.nodes,
        p.sites,
        p.site_skew,
        p.objects,
        p.k,
        p.m,
        p.fill,
        p.capacity_ratio,
        p.size_median_mb,
        p.size_sigma,
        p.refresh_every,
        p.join_fraction,
        p.leave_fraction,
        p.verify_every,
        p.afr,
        p.repair_delay_hours,
        p.years,
        p.site_outage_rate,
        p.site_outage_hours,
        p.harsh_afr,
        p.harsh_repair_delay_hours
    )?;
    writeln!(o)?;
    writeln!(o, "model")?;
    writeln!(
        o,
        "  objects: each is ONE stripe of k+m = {} shards of ceil(size/k) bytes (no segmenting); \
         sizes log-normal, median {}, mean {}, p99 {}",
        md.shards_per_stripe,
        bytes(md.object_bytes_p50 as f64),
        bytes(md.object_bytes_mean),
        bytes(md.object_bytes_p99 as f64)
    )?;
    writeln!(
        o,
        "  capacities: log-uniform over a {}x range, scaled so the objects fill {}: {} .. {} per node, \
         {} in all for {} stored (parity included); {:.0} shards per node on average",
        p.capacity_ratio,
        pct(p.fill),
        bytes(md.node_capacity_min_bytes as f64),
        bytes(md.node_capacity_max_bytes as f64),
        bytes(md.capacity_bytes as f64),
        bytes(md.stored_bytes as f64),
        md.shards_per_node_mean
    )?;
    writeln!(
        o,
        "  sites: {}, {} .. {} nodes each; the rendezvous view is rebuilt every {} objects \
         (weights = capacity x fill correction at the rebuild)",
        p.sites, md.nodes_per_site_min, md.nodes_per_site_max, p.refresh_every
    )?;
    writeln!(o)?;

    writeln!(
        o,
        "1. Fill spread: per-node fill fraction used/capacity when the offered bytes reach each \
         target share of the capacity"
    )?;
    writeln!(
        o,
        "   redirected = shards whose first choice had no room; refused = objects that could not \
         get k+m nodes with room"
    )?;
    writeln!(
        o,
        "{:<15}{:>7}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>9}{:>8}{:>12}{:>9}",
        "policy",
        "target",
        "fill",
        "mean",
        "std",
        "min",
        "p1",
        "p50",
        "p99",
        "max",
        "max/min",
        "p99/p1",
        "redirected",
        "refused"
    )?;
    for f in &r.fill {
        for c in &f.checkpoints {
            let s = &c.spread;
            writeln!(
                o,
                "{:<15}{:>7}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>9}{:>8}{:>12}{:>9}",
                f.policy.name(),
                format!("{:.0}%", 100.0 * c.target),
                pct(c.fill),
                pct(s.mean),
                format!("{:.2}%", 100.0 * s.std_dev),
                pct(s.min),
                pct(s.p1),
                pct(s.p50),
                pct(s.p99),
                pct(s.max),
                ratio(s.max_over_min),
                ratio(s.p99_over_p1),
                grouped(c.redirected_shards),
                grouped(c.refused_objects)
            )?;
        }
    }
    writeln!(o)?;

    let mv = &r.moves;
    writeln!(
        o,
        "2. Data moved: {} nodes join ({} of the capacity), or {} nodes leave ({} of it); \
         ratio = moved / ideal",
        mv.joiners,
        pct(mv.joiner_capacity_share),
        mv.leavers,
        pct(mv.leaver_capacity_share)
    )?;
    writeln!(
        o,
        "   ideal: join = stored bytes x the joiners' share of the new capacity; leave = the bytes \
         the leavers held"
    )?;
    writeln!(
        o,
        "{:<15}{:>12}{:>11}{:>8}{:>13}{:>11}{:>8}  how",
        "policy", "join moved", "ideal", "ratio", "leave moved", "ideal", "ratio"
    )?;
    for row in &mv.rows {
        let (lm, li, lr) = match &row.leave {
            Some(l) => (
                bytes(l.moved_bytes as f64),
                bytes(l.ideal_bytes as f64),
                format!("{:.3}", l.ratio),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        writeln!(
            o,
            "{:<15}{:>12}{:>11}{:>8}{:>13}{:>11}{:>8}  {}",
            row.policy.name(),
            bytes(row.join.moved_bytes as f64),
            bytes(row.join.ideal_bytes as f64),
            format!("{:.3}", row.join.ratio),
            lm,
            li,
            lr,
            row.method
        )?;
    }
    writeln!(
        o,
        "   rendezvous drift: {} of the stored bytes are not where the ranking by capacity would \
         put them (the fill correction places new shards off it)",
        pct(mv.rendezvous_drift)
    )?;
    writeln!(
        o,
        "   exact shortcuts checked against full re-placement on {} objects: {} mismatches",
        grouped(mv.shortcut_checks),
        mv.shortcut_mismatches
    )?;
    for (what, live) in [
        ("fill (before any change)", &mv.live_settle),
        ("join", &mv.live_join),
        ("leave", &mv.live_leave),
    ] {
        let Some(l) = live else { continue };
        let joiners = l
            .joiner_fill
            .map_or_else(String::new, |f| format!(", joiners at {}", pct(f)));
        writeln!(
            o,
            "   live rebalancer after the {what}: {} shards rebuilt, {} moved in {} passes; \
             mean fill {}, fullest {}{joiners}; stripes short of k+m distinct members: {}",
            grouped(l.rebuilt_shards),
            grouped(l.moved_shards),
            l.passes,
            pct(l.mean_fill),
            pct(l.max_fill),
            grouped(l.short_stripes)
        )?;
    }
    writeln!(o)?;

    writeln!(
        o,
        "3. Durability over {} years: node failures (exponential; a failed node is replaced at once \
         by an empty one), repair after the delay if >= k shards are reachable, site outages \
         (shards unreachable, not lost)",
        p.years
    )?;
    writeln!(
        o,
        "   lost = more than m shards of a stripe destroyed at once; unavailable = fewer than k \
         reachable at some moment; per million stored objects"
    )?;
    for d in &r.durability {
        let c = &d.config;
        writeln!(
            o,
            "  {}: AFR {}/yr, repair after {} h, site outages {}/site-year for {} h -> {} node \
             failures, {} site outages; first-order estimate (node failures only): {} lost/M",
            c.label,
            pct(c.afr),
            c.repair_delay_hours,
            c.site_outage_rate,
            c.site_outage_hours,
            grouped(d.node_failures),
            d.site_outages,
            small(d.first_order_lost_per_million)
        )?;
        writeln!(
            o,
            "  {:<15}{:>8}{:>10}{:>9}{:>10}{:>12}{:>12}{:>10}  stripes that had 1..{} shards \
             destroyed at once",
            "policy",
            "lost",
            "lost/M",
            "unavail",
            "unavail/M",
            "destroyed",
            "repaired",
            "deferred",
            p.m + 1
        )?;
        for x in &d.results {
            let reached: Vec<String> = x.reached_missing.iter().map(|&v| grouped(v)).collect();
            writeln!(
                o,
                "  {:<15}{:>8}{:>10.3}{:>9}{:>10.1}{:>12}{:>12}{:>10}  {}",
                x.policy.name(),
                grouped(x.objects_lost),
                x.lost_per_million,
                grouped(x.objects_unavailable),
                x.unavailable_per_million,
                grouped(x.shards_destroyed),
                grouped(x.shards_repaired),
                grouped(x.repairs_deferred),
                reached.join(" / ")
            )?;
        }
    }
    writeln!(o)?;
    writeln!(
        o,
        "event log: {} events, blake3 {}",
        grouped(r.event_log.events),
        r.event_log.blake3
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_helpers() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(bytes(999.0), "999 B");
        assert_eq!(bytes(1.5e12), "1.5 TB");
        assert_eq!(ratio(None), "inf");
        assert_eq!(small(0.0), "0");
        assert_eq!(small(0.000123), "1.23e-4");
        assert_eq!(small(3.7041), "3.704");
    }

    #[test]
    fn flag_parsers_reject_bad_values() {
        assert!(fill_fraction("0").is_err());
        assert!(fill_fraction("1").is_err());
        assert!(fill_fraction("0.8").is_ok());
        assert!(probability("1").is_err());
        assert!(non_negative("-1").is_err());
        assert!(non_negative("NaN").is_err());
        assert!(positive("inf").is_err());
        assert!(at_least_one("0.5").is_err());
        assert!(years("0").is_err());
        assert!(small_fraction("0.6").is_err());
    }
}
