//! The cluster simulation's CI scenario (issue 6): six real nodes, two
//! killed during a mixed workload, one disk corrupted, and the first victim
//! restarted after the repair, fixed seed. It
//! must pass every check; with repair disabled on every node the same run
//! must fail its redundancy check (and only that one), which shows the
//! check can fail.

use std::time::Duration;

use dynostore_sim::cluster::scenario::{Scenario, CI};
use dynostore_sim::cluster::{run_scenario, RunOptions};

use crate::harness::bin;

fn options() -> RunOptions {
    RunOptions {
        bin: bin(),
        work_dir: None,
        progress: false,
        dashboard: false,
    }
}

#[test]
fn the_ci_scenario_passes_and_fails_without_repair() {
    let scenario = Scenario::parse(CI).unwrap();
    let report = run_scenario(&scenario, &options()).unwrap();
    println!("{}", report.table());
    assert!(report.passed, "the CI scenario failed:\n{}", report.table());
    assert!(report.objects_acknowledged >= scenario.objects * 9 / 10);
    assert_eq!(report.faults.len(), 4);
    for f in &report.faults {
        assert!(f.time_to_full_redundancy_s.is_some(), "{f:?}");
    }

    let mut off = scenario.clone();
    off.repair = false;
    // Repair takes seconds here; without it, waiting longer changes nothing.
    off.redundancy_deadline_secs = Duration::from_secs(20).as_secs();
    let report = run_scenario(&off, &options()).unwrap();
    println!("{}", report.table());
    assert!(!report.passed, "without repair the run must fail");
    let failed = report.failed_checks();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].starts_with("full redundancy"), "{failed:?}");
    assert_eq!(report.objects_lost, 0, "two losses with m = 2 lose nothing");
}

/// The randomised fault search (issue 10) for a few seeds: seed 1 draws
/// five even partitions of eight nodes with writes on both sides, seed 3
/// kills, restarts and corruption on six. Every check must pass; with
/// repair off, seed 3 must fail its redundancy check (its corrupted
/// shards are never rebuilt), which shows the search can fail.
#[test]
fn the_fault_search_passes_its_ci_seeds_and_fails_without_repair() {
    use dynostore_sim::cluster::search::{run_search, SearchOptions};
    let mut so = SearchOptions {
        first: 1,
        seeds: 1,
        steps: 40,
        keep_going: true,
        repair: true,
    };
    for first in [1, 3] {
        so.first = first;
        let report = run_search(&so, &options(), &mut |_| {}, &mut |_| {}).unwrap();
        let r = &report.runs[0];
        println!("{}", serde_json::to_string_pretty(r).unwrap());
        assert!(r.passed, "seed {first} failed: {r:#?}");
        assert!(r.present > 0 && r.faults > 5, "{r:#?}");
    }
    so.repair = false;
    let report = run_search(&so, &options(), &mut |_| {}, &mut |_| {}).unwrap();
    let r = &report.runs[0];
    assert_eq!(report.failed_seeds, vec![3]);
    let failed: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        failed.iter().any(|n| n.starts_with("full redundancy")),
        "{failed:?}"
    );
}
