//! Helpers shared by the benches: a plain timing loop for the summary table
//! that each bench prints after criterion has run, and the switch that
//! decides whether to print it.
//!
//! Criterion does not print ratios between benchmarks, so after its groups
//! each bench times every case again here (a few repetitions, median) and
//! prints MB/s and the ratio to a memcpy of the same size, all measured in
//! the same run on the same machine state.

use std::time::{Duration, Instant};

/// Whether this is a measuring run.
///
/// `cargo bench` passes `--bench` to the binary; `cargo test --benches` (or
/// `--all-targets`) does not, and `-- --test` asks for a test run: criterion
/// then only checks that each routine runs once, in whatever profile the
/// binary was built with (unoptimised under `cargo test`), so the benches
/// shrink their inputs.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// Whether to time and print the summary table: when measuring, unless
/// criterion only lists or profiles, or `DYNOSTORE_BENCH_SUMMARY=0`.
pub fn summary_wanted() -> bool {
    if std::env::var_os("DYNOSTORE_BENCH_SUMMARY").is_some_and(|v| v == "0") {
        return false;
    }
    measuring() && !std::env::args().any(|a| a == "--list" || a.starts_with("--profile-time"))
}

/// Median time of one call of `f` over `reps` repetitions.
///
/// `f` is first called untimed until `warm` has passed (at least once):
/// on these VMs a freshly touched 64 MiB buffer copies up to twice slower
/// for its first few hundred milliseconds of use. Each repetition then runs
/// `f` enough times to last at least `min_rep` (at least once).
pub fn median_time(
    reps: usize,
    warm: Duration,
    min_rep: Duration,
    mut f: impl FnMut(),
) -> Duration {
    let start = Instant::now();
    let mut calls = 0u32;
    while calls == 0 || start.elapsed() < warm {
        f();
        calls += 1;
    }
    let once = (start.elapsed() / calls).max(Duration::from_nanos(1));
    let iters = (min_rep.as_nanos() / once.as_nanos()).clamp(1, 1_000_000) as u32;
    let mut times: Vec<Duration> = (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

/// Prints a markdown table; the first row is the header.
pub fn print_table(rows: &[Vec<String>]) {
    let Some(header) = rows.first() else {
        return;
    };
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let line = |r: &[String]| {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(header);
    let sep: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, w)| {
            if c == 0 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("|{}|", sep.join("|"));
    for r in &rows[1..] {
        line(r);
    }
}

/// "met" / "NOT met".
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// The 1-minute load average (Linux), to tell a quiet run from one that
/// shared the CPUs with other work.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "n/a".to_string())
}
