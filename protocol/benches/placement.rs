//! Placement over a view of 1,000 nodes: `View::place` per key for a 4+2
//! stripe (6 nodes) and a 10+4 stripe (14 nodes), and `View::new`.
//!
//! Node IDs are 38 bytes shaped like ed25519 peer IDs, derived from BLAKE3
//! of the index; weights (free bytes) spread over two orders of magnitude;
//! 20 sites. After criterion a summary of the time per key, timed in this
//! same run, is printed (see `common`). Target: under 50 µs per key.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use dynostore_protocol::ids::{NodeId, ObjectId};
use dynostore_protocol::placement::{Member, MemberState, PlacementKey, View, Weighting};

const NODES: usize = 1000;
const SITES: usize = 20;
const KEYS: usize = 4096;
const TARGET_US: f64 = 50.0;

fn hash_u64(domain: &str, i: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(domain.as_bytes());
    h.update(&(i as u64).to_le_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| {
            // identity multihash of a protobuf ed25519 public key: 6 + 32 bytes.
            let mut id = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
            id.extend_from_slice(blake3::hash(&(i as u64).to_le_bytes()).as_bytes());
            // 10 GB to 1 TB, log-uniform.
            let u = (hash_u64("weight", i) >> 11) as f64 / (1u64 << 53) as f64;
            let weight = (10e9 * 10f64.powf(2.0 * u)) as u64;
            Member {
                id: NodeId::from_bytes(id).expect("38-byte node ID"),
                site: format!("site-{:02}", hash_u64("site", i) % SITES as u64),
                weight,
                state: MemberState::Alive,
                volatile: false,
            }
        })
        .collect()
}

fn keys() -> Vec<PlacementKey> {
    (0..KEYS)
        .map(|i| PlacementKey::for_segment(&ObjectId::of(&(i as u64).to_le_bytes()), 0))
        .collect()
}

/// Sanity checks on the view the benches use, so a broken setup does not
/// produce meaningless numbers.
fn check(view: &View, keys: &[PlacementKey]) {
    assert_eq!(view.len(), NODES);
    for &key in &keys[..64] {
        for n in [6, 14] {
            let picks = view.place(key, n, Weighting::Weighted);
            assert_eq!(picks.len(), n);
            let mut sites: Vec<&str> = picks
                .iter()
                .map(|id| view.get(id).expect("member").site.as_str())
                .collect();
            sites.sort_unstable();
            sites.dedup();
            assert_eq!(
                sites.len(),
                n,
                "a stripe of {n} over {SITES} sites uses distinct sites"
            );
        }
    }
}

fn bench_place(c: &mut Criterion, view: &View, keys: &[PlacementKey]) {
    let mut group = c.benchmark_group("placement");
    group.throughput(Throughput::Elements(1));
    for n in [6usize, 14] {
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new("place-weighted-1000-nodes", n), |b| {
            b.iter(|| {
                next = (next + 1) % keys.len();
                black_box(
                    view.place(black_box(keys[next]), n, Weighting::Weighted)
                        .len(),
                )
            })
        });
    }
    let all = members(NODES);
    group.bench_function("view-new-1000-nodes", |b| {
        b.iter_batched(
            || all.clone(),
            |m| black_box(View::new(m)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn summary(view: &View, keys: &[PlacementKey]) {
    use common::{median_time, print_table, verdict};

    let per_call = |t: Duration, calls: usize| t.as_secs_f64() * 1e6 / calls as f64;
    let mut table = vec![vec![
        "case".to_string(),
        "µs per call".to_string(),
        "calls/s".to_string(),
    ]];
    let load_start = common::load_average();
    let mut verdicts = Vec::new();
    for n in [6usize, 14] {
        // One timed call places all KEYS keys.
        let t = median_time(
            7,
            Duration::from_millis(200),
            Duration::from_millis(50),
            || {
                for &key in keys {
                    black_box(view.place(black_box(key), n, Weighting::Weighted).len());
                }
            },
        );
        let us = per_call(t, keys.len());
        table.push(vec![
            format!("View::place(key, {n}, Weighted), {NODES} nodes, {SITES} sites"),
            format!("{us:.2}"),
            format!("{:.0}", 1e6 / us),
        ]);
        verdicts.push(format!(
            "- place {n} of {NODES} < {TARGET_US} µs per key: {us:.2} µs -> {}",
            verdict(us < TARGET_US)
        ));
    }
    let all = members(NODES);
    let t = median_time(
        7,
        Duration::from_millis(200),
        Duration::from_millis(50),
        || {
            black_box(View::new(black_box(all.clone())));
        },
    );
    let t_clone = median_time(
        7,
        Duration::from_millis(200),
        Duration::from_millis(50),
        || {
            black_box(all.clone());
        },
    );
    let us = per_call(t, 1);
    let us_clone = per_call(t_clone, 1);
    table.push(vec![
        format!("View::new({NODES} members) incl. cloning and dropping"),
        format!("{us:.1}"),
        format!("{:.0}", 1e6 / us),
    ]);
    table.push(vec![
        format!("  of which cloning and dropping {NODES} members"),
        format!("{us_clone:.1}"),
        format!("{:.0}", 1e6 / us_clone),
    ]);
    println!();
    println!("## Placement summary (this run; median of repetitions over {KEYS} keys)");
    println!();
    print_table(&table);
    println!();
    println!(
        "Load average at the start / end of the summary: {load_start} / {} on {} CPUs.",
        common::load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("## Targets");
    println!();
    for v in verdicts {
        println!("{v}");
    }
    println!();
}

fn main() {
    let view = View::new(members(NODES));
    let keys = keys();
    check(&view, &keys);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
        .configure_from_args();
    bench_place(&mut c, &view, &keys);
    c.final_summary();
    if common::summary_wanted() {
        summary(&view, &keys);
    }
}
