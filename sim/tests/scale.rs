//! Properties of `dynostore-sim scale` on small scenarios: determinism, the
//! protocol's proportionality seen through the simulator's own placement
//! path, the baselines' sanity, and minimal data movement.

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

use clap::Parser;
use dynostore_sim::scale::fill::{fill, FillConfig, Policy};
use dynostore_sim::scale::log::EventLog;
use dynostore_sim::scale::world::{World, WorldSpec};
use dynostore_sim::scale::{simulate, Args, Report};

#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    args: Args,
}

fn args(extra: &[&str]) -> Args {
    let mut argv = vec!["scale", "--quiet"];
    argv.extend_from_slice(extra);
    Flags::parse_from(argv).args
}

/// A scenario small enough for a debug build.
const TINY: &[&str] = &[
    "--nodes",
    "200",
    "--sites",
    "8",
    "--objects",
    "2000",
    "--k",
    "4",
    "--m",
    "2",
    "--join-fraction",
    "0.05",
    "--leave-fraction",
    "0.05",
    "--verify-every",
    "10",
];

fn run(a: &Args) -> Report {
    simulate(a, &mut EventLog::new())
}

#[test]
fn same_seed_same_results_and_log_hash() {
    let a = args(TINY);
    let (r1, r2) = (run(&a), run(&a));
    assert_eq!(r1.event_log, r2.event_log);
    assert_eq!(r1, r2);
    assert!(r1.event_log.events > 2000);
}

#[test]
fn different_seed_changes_log_hash() {
    let mut a = args(TINY);
    let r1 = run(&a);
    a.seed += 1;
    let r2 = run(&a);
    assert_ne!(r1.event_log.blake3, r2.event_log.blake3);
}

#[test]
fn thread_count_does_not_change_results() {
    let mut a = args(TINY);
    a.threads = 1;
    let r1 = run(&a);
    a.threads = 3;
    let r2 = run(&a);
    assert_eq!(r1, r2);
}

#[test]
fn cli_prints_the_same_output_twice_and_the_seed_first() {
    let exe = env!("CARGO_BIN_EXE_dynostore-sim");
    let go = |json: bool| {
        let mut c = Command::new(exe);
        c.arg("scale")
            .arg("--quiet")
            .args(TINY)
            .args(["--seed", "9"]);
        if json {
            c.arg("--json");
        }
        let out = c.output().expect("run dynostore-sim");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    };
    let (a, b) = (go(false), go(false));
    assert_eq!(a, b);
    assert!(a.starts_with("seed: 9\n"), "{a}");
    assert!(a.contains("event log:"));
    let j: serde_json::Value = serde_json::from_str(&go(true)).expect("one JSON object");
    assert_eq!(j["seed"], 9);
    assert_eq!(j["params"]["nodes"], 200);
    assert!(j["event_log"]["blake3"]
        .as_str()
        .is_some_and(|h| h.len() == 64));
}

#[test]
fn bad_flags_are_clear_errors_not_panics() {
    let exe = env!("CARGO_BIN_EXE_dynostore-sim");
    for (flags, needle) in [
        (&["--fill", "1.5"][..], "--fill"),
        (&["--afr", "-0.1"][..], "--afr"),
        (&["--nodes", "5"][..], "k + m"),
        (&["--k", "0"][..], "--k"),
        (&["--years", "abc"][..], "--years"),
    ] {
        let out = Command::new(exe)
            .arg("scale")
            .args(flags)
            .output()
            .expect("run dynostore-sim");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
        assert!(!err.contains("panicked"), "{flags:?}: {err}");
    }
}

#[test]
fn first_choice_shares_follow_weights_through_the_sim() {
    // The protocol test's scenario: 16 nodes weighted 1:2:4:8, four of
    // each, over 4 sites, 100,000 keys; here placed by the simulator's fill
    // with one stripe of one shard per object and room to spare, so each
    // object lands on its first choice under capacity weights (the nodes
    // stay nearly empty, at even fill, so the fill correction is 1).
    let keys = 100_000;
    let mut world = World::generate(&WorldSpec {
        seed: 3,
        nodes: 16,
        sites: 4,
        site_skew: 0.0,
        objects: keys,
        k: 1,
        m: 0,
        fill: 0.5,
        capacity_ratio: 1.0,
        size_median_bytes: 1e6,
        size_sigma: 0.0,
        join_fraction: 0.0,
        leave_fraction: 0.0,
    });
    for (i, node) in world.all_nodes.iter_mut().enumerate() {
        node.site = (i % 4) as u32;
        node.capacity_bytes = (1u64 << (i / 4)) << 50;
    }
    let initial: Vec<u32> = world.initial_range().collect();
    let cfg = FillConfig {
        seed: 3,
        refresh: keys,
        threads: 2,
        checkpoints: Vec::new(),
        progress: false,
        label: "test",
    };
    let out = fill(
        &world,
        &initial,
        Policy::Rendezvous,
        &cfg,
        &mut EventLog::new(),
    );
    assert_eq!(out.refused_objects, 0);
    assert_eq!(out.redirected_shards, 0);
    let mut picks: HashMap<u32, u64> = HashMap::new();
    for &h in &out.holders {
        *picks.entry(h).or_default() += 1;
    }
    let total: u64 = world.all_nodes.iter().map(|x| x.capacity_bytes >> 50).sum();
    for (i, node) in world.all_nodes.iter().enumerate() {
        let expected = keys as f64 * (node.capacity_bytes >> 50) as f64 / total as f64;
        let got = picks.get(&(i as u32)).copied().unwrap_or(0) as f64;
        let rel = (got - expected).abs() / expected;
        assert!(
            rel < 0.05,
            "node {i}: {got} picks, expected {expected:.0} ({:.1}% off)",
            rel * 100.0
        );
    }
}

/// One medium scenario shared by the baseline and movement checks: 1,000
/// nodes over 12 sites, 1 % join and leave.
fn medium() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| {
        run(&args(&[
            "--nodes",
            "1000",
            "--sites",
            "12",
            "--objects",
            "12000",
            "--k",
            "4",
            "--m",
            "2",
            "--size-sigma",
            "0.25",
            "--verify-every",
            "50",
            "--years",
            "1",
        ]))
    })
}

#[test]
fn utility_factor_fills_more_evenly_than_random() {
    let r = medium();
    let last = |p: Policy| {
        let f = r.fill.iter().find(|f| f.policy == p).expect("policy ran");
        f.checkpoints.last().expect("a checkpoint").spread.clone()
    };
    let (uf, rnd, rv) = (
        last(Policy::UtilityFactor),
        last(Policy::Random),
        last(Policy::Rendezvous),
    );
    assert!(uf.std_dev < rnd.std_dev, "{uf:?} vs {rnd:?}");
    assert!(rv.std_dev < rnd.std_dev, "{rv:?} vs {rnd:?}");
    for f in &r.fill {
        assert_eq!(f.checkpoints.len(), 4, "20/40/60/80 %");
    }
}

#[test]
fn rendezvous_moves_about_the_ideal_on_join_and_leave() {
    let mv = &medium().moves;
    assert_eq!(mv.joiners, 10);
    assert_eq!(mv.leavers, 10);
    // The live rebalancer (the node's rebalance_moves and repair_targets).
    let live = &mv.rows[0];
    assert_eq!(live.policy, Policy::Rendezvous);
    assert!(
        live.join.ratio <= 1.2 && live.join.ratio >= 0.5,
        "live join moved {:.3}x the ideal",
        live.join.ratio
    );
    let leave = live.leave.as_ref().expect("leave measured");
    assert!(
        leave.ratio >= 1.0 - 1e-9 && leave.ratio <= 1.2,
        "live leave {:.6}x",
        leave.ratio
    );
    for l in [&mv.live_join, &mv.live_leave] {
        let l = l.as_ref().expect("live rebalancer ran");
        assert_eq!(l.short_stripes, 0, "{l:?}");
        assert!(l.passes < 20, "the rebalancer did not settle: {l:?}");
    }
    // Re-placement by the rebalancer's ranking: about the ideal on a join,
    // exactly it on a leave.
    let replace = &mv.rows[1];
    assert!(
        replace.join.ratio <= 1.2 && replace.join.ratio >= 0.8,
        "join moved {:.3}x the ideal",
        replace.join.ratio
    );
    let leave = replace.leave.as_ref().expect("leave measured");
    assert!(
        (leave.ratio - 1.0).abs() < 1e-9,
        "leave {:.6}x",
        leave.ratio
    );
    assert!(mv.shortcut_checks > 0);
    assert_eq!(mv.shortcut_mismatches, 0);
    // Re-running a baseline moves far more than the ideal.
    let rerun = mv
        .rows
        .iter()
        .find(|r| r.policy == Policy::UtilityFactor)
        .expect("utility-factor row");
    assert!(rerun.join.ratio > 5.0, "{rerun:?}");
}
