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
