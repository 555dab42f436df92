//! The cluster run's report: a table for people, `--json` for programs.

use serde::Serialize;

/// Put or get figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpStats {
    pub ok: usize,
    pub failed: usize,
    pub bytes: u64,
    /// Bytes of successful operations over their summed durations.
    pub mb_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl OpStats {
    /// From (bytes, milliseconds) of each successful operation.
    pub fn from_samples(samples: &[(u64, f64)], failed: usize) -> OpStats {
        let bytes: u64 = samples.iter().map(|s| s.0).sum();
        let secs: f64 = samples.iter().map(|s| s.1).sum::<f64>() / 1000.0;
        let mut ms: Vec<f64> = samples.iter().map(|s| s.1).collect();
        ms.sort_by(f64::total_cmp);
        OpStats {
            ok: samples.len(),
            failed,
            bytes,
            mb_per_s: if secs > 0.0 {
                bytes as f64 / 1e6 / secs
            } else {
                0.0
            },
            p50_ms: percentile(&ms, 0.50),
            p99_ms: percentile(&ms, 0.99),
        }
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A node's fill at the end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFill {
    pub node: usize,
    pub site: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub fill: f64,
}

/// The spread of fill fractions over the nodes that are up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FillSpread {
    pub min: f64,
    pub max: f64,
    /// max / min (infinite when some node is empty).
    pub max_over_min: f64,
    pub nodes: Vec<NodeFill>,
}

/// One applied fault and how long full redundancy took to come back.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub after: usize,
    pub action: String,
    pub nodes: Vec<usize>,
    /// Seconds since the run started.
    pub at_s: f64,
    /// Seconds from the fault until every acknowledged object was healthy
    /// again, by repair or by the faulty nodes' return, whichever came
    /// first; a later fault before that shares the same moment (`None`: it
    /// never was before the deadline).
    pub time_to_full_redundancy_s: Option<f64>,
    pub detail: String,
}

/// One check: passed or not, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub nodes: usize,
    pub k: u16,
    pub m: u16,
    pub workload: String,
    pub repair: bool,
    pub objects_planned: usize,
    pub objects_acknowledged: usize,
    pub put: OpStats,
    pub get: OpStats,
    /// Acknowledged objects that could not be read back byte-identical.
    pub objects_lost: usize,
    pub fill: FillSpread,
    pub faults: Vec<FaultReport>,
    /// The first errors seen, for the reader.
    pub errors: Vec<String>,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub elapsed_s: f64,
}

impl Report {
    /// The names of the checks that failed.
    pub fn failed_checks(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} | seed {} | {} nodes | k={} m={} | workload {} | repair {}",
            self.scenario,
            self.seed,
            self.nodes,
            self.k,
            self.m,
            self.workload,
            if self.repair { "on" } else { "OFF" }
        );
        let _ = writeln!(
            s,
            "objects: {} planned, {} acknowledged, {} lost | {:.1} s",
            self.objects_planned, self.objects_acknowledged, self.objects_lost, self.elapsed_s
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| op  | ok | failed | MB | MB/s | p50 ms | p99 ms |\n|-----|----|--------|----|------|--------|--------|"
        );
        for (name, o) in [("put", &self.put), ("get", &self.get)] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                o.ok,
                o.failed,
                o.bytes as f64 / 1e6,
                o.mb_per_s,
                o.p50_ms,
                o.p99_ms
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "fill fractions of the nodes up: min {:.4} max {:.4} max/min {:.2}",
            self.fill.min, self.fill.max, self.fill.max_over_min
        );
        for n in &self.fill.nodes {
            let _ = writeln!(
                s,
                "  n{} {:<12} {:>8.1} / {:>8.1} MB  {:.4}",
                n.node,
                n.site,
                n.used_bytes as f64 / 1e6,
                n.capacity_bytes as f64 / 1e6,
                n.fill
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| after put | fault | nodes | at s | full redundancy after s | detail |\n|-----------|-------|-------|------|--------------------------|--------|"
        );
        for f in &self.faults {
            let t = f
                .time_to_full_redundancy_s
                .map_or_else(|| "never".to_string(), |t| format!("{t:.1}"));
            let _ = writeln!(
                s,
                "| {} | {} | {:?} | {:.1} | {t} | {} |",
                f.after, f.action, f.nodes, f.at_s, f.detail
            );
        }
        let _ = writeln!(s);
        for c in &self.checks {
            let _ = writeln!(
                s,
                "[{}] {}: {}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "error seen: {e}");
        }
        let _ = writeln!(
            s,
            "{}",
            if self.passed {
                "RESULT: every check passed"
            } else {
                "RESULT: a check FAILED"
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        let s = OpStats::from_samples(&[(2_000_000, 1000.0), (2_000_000, 1000.0)], 1);
        assert_eq!(s.mb_per_s, 2.0);
        assert_eq!((s.ok, s.failed), (2, 1));
    }
}
