//! Erasure-coding, hashing and memcpy throughput.
//!
//! Objects are encoded the way the node does it: cut into segments of
//! `segment_size = k * 1 MiB` (so full segments have 1 MiB shards) and each
//! segment encoded with one reused [`Encoder`]. Decoding loses the first `m`
//! DATA shards of every segment, so the codec really reconstructs.
//! Throughput is bytes of original data per second.
//!
//! After criterion, a summary table of MB/s and the ratio to a memcpy of the
//! same size, all timed in this same run, is printed (see `common`).
//!
//! reed-solomon-novelpoly is about 100x slower than reed-solomon-simd, so it
//! runs with criterion's minimum of 10 samples in flat sampling mode.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use dynostore_protocol::erasure::{self, CodecKind, Encoder, Geometry};

const MIB: usize = 1 << 20;
const GEOMETRIES: [(u16, u16); 2] = [(4, 2), (10, 4)];
const SIZES: [usize; 2] = [MIB, 64 * MIB];
/// Object sizes at which novelpoly is benchmarked (64 MiB costs about a
/// minute in all for both geometries and both operations).
const NOVELPOLY_SIZES: [usize; 2] = [MIB, 64 * MIB];

/// Object sizes for `codec`; only 1 MiB when criterion merely tests that
/// the routines run (e.g. `cargo test --all-targets`, unoptimised).
fn sizes(codec: Option<CodecKind>) -> &'static [usize] {
    if !common::measuring() {
        return &SIZES[..1];
    }
    match codec {
        Some(CodecKind::ReedSolomonNovelpoly) => &NOVELPOLY_SIZES,
        _ => &SIZES,
    }
}

fn size_label(size: usize) -> String {
    format!("{}MiB", size / MIB)
}

/// Deterministic, incompressible-looking bytes (xorshift64*).
fn test_data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn geometry(codec: CodecKind, k: u16, m: u16) -> Geometry {
    Geometry::new(codec, k, m, u32::from(k) * MIB as u32).expect("valid geometry")
}

/// Encodes a whole object segment by segment, as the node does.
fn encode_object(enc: &mut Encoder, data: &[u8]) {
    let seg = enc.geometry().segment_size as usize;
    for segment in data.chunks(seg) {
        let shards = enc.encode(segment).expect("encode");
        black_box(&shards);
    }
}

/// The shards of every segment of an object, owned.
struct EncodedObject {
    geometry: Geometry,
    size: usize,
    /// `segments[s][i]`: shard `i` of segment `s`.
    segments: Vec<Vec<Vec<u8>>>,
}

impl EncodedObject {
    fn new(geometry: Geometry, data: &[u8]) -> Self {
        let mut enc = Encoder::new(geometry).expect("encoder");
        let segments = data
            .chunks(geometry.segment_size as usize)
            .map(|s| {
                let e = enc.encode(s).expect("encode");
                assert_eq!(e.len(), geometry.n(), "{geometry:?}: shard count");
                e.to_vecs()
            })
            .collect();
        EncodedObject {
            geometry,
            size: data.len(),
            segments,
        }
    }

    /// Per segment, the shards handed to the decoder: the first `m` data
    /// shards are missing.
    fn with_data_lost(&self) -> Vec<Vec<Option<&[u8]>>> {
        let m = usize::from(self.geometry.m);
        self.segments
            .iter()
            .map(|shards| {
                shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i >= m).then_some(s.as_slice()))
                    .collect()
            })
            .collect()
    }

    fn decode_object(&self, inputs: &[Vec<Option<&[u8]>>]) {
        for (idx, shards) in inputs.iter().enumerate() {
            let len = self.geometry.segment_len(self.size as u64, idx as u64);
            let segment = erasure::decode(self.geometry, len, shards).expect("decode");
            black_box(&segment);
        }
    }

    /// Decodes everything once and compares with the original.
    fn verify(&self, data: &[u8]) {
        let inputs = self.with_data_lost();
        let mut out = Vec::with_capacity(self.size);
        for (idx, shards) in inputs.iter().enumerate() {
            let len = self.geometry.segment_len(self.size as u64, idx as u64);
            out.extend_from_slice(&erasure::decode(self.geometry, len, shards).expect("decode"));
        }
        assert!(out == data, "{:?}: decoded object differs", self.geometry);
    }
}

fn novelpoly_config(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

fn bench_references(c: &mut Criterion) {
    for &size in sizes(None) {
        let src = test_data(size);
        let mut dst = vec![0u8; size];
        let mut group = c.benchmark_group("reference");
        group.throughput(Throughput::Bytes(size as u64));
        if size > 8 * MIB {
            group.sample_size(20);
        }
        group.bench_function(BenchmarkId::new("memcpy", size_label(size)), |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
        group.bench_function(BenchmarkId::new("blake3", size_label(size)), |b| {
            b.iter(|| black_box(blake3::hash(black_box(&src))))
        });
        group.finish();
    }
}

fn bench_codec(c: &mut Criterion, codec: CodecKind) {
    let novelpoly = codec == CodecKind::ReedSolomonNovelpoly;
    for &size in sizes(Some(codec)) {
        let data = test_data(size);
        for (k, m) in GEOMETRIES {
            let g = geometry(codec, k, m);
            let id = BenchmarkId::new(format!("{k}+{m}"), size_label(size));

            let mut group = c.benchmark_group(format!("encode/{}", codec.name()));
            group.throughput(Throughput::Bytes(size as u64));
            if novelpoly {
                novelpoly_config(&mut group);
            } else if size > 8 * MIB {
                group.sample_size(20).sampling_mode(SamplingMode::Flat);
            }
            let mut enc = Encoder::new(g).expect("encoder");
            group.bench_function(id.clone(), |b| b.iter(|| encode_object(&mut enc, &data)));
            group.finish();

            let encoded = EncodedObject::new(g, &data);
            encoded.verify(&data);
            let inputs = encoded.with_data_lost();
            let mut group = c.benchmark_group(format!("decode-m-data-lost/{}", codec.name()));
            group.throughput(Throughput::Bytes(size as u64));
            if novelpoly {
                novelpoly_config(&mut group);
            } else if size > 8 * MIB {
                group.sample_size(20).sampling_mode(SamplingMode::Flat);
            }
            group.bench_function(id, |b| b.iter(|| encoded.decode_object(&inputs)));
            group.finish();
        }
    }
}

/// reed-solomon-simd called directly for 4+2 with the same shard sizes as
/// the `Encoder` rows: one encoder and one decoder reused for every
/// segment, no copy of the outputs. The gap to the `Encoder`/`decode` rows
/// is the cost of the crate's wrapper.
mod direct {
    use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

    pub const K: usize = 4;
    pub const M: usize = 2;

    pub struct Direct {
        shard: usize,
        enc: ReedSolomonEncoder,
        dec: ReedSolomonDecoder,
        recovery: Vec<Vec<Vec<u8>>>,
    }

    impl Direct {
        /// `data.len()` must be a multiple of `K * shard`.
        pub fn new(data: &[u8], shard: usize) -> Self {
            assert_eq!(data.len() % (K * shard), 0);
            let mut enc = ReedSolomonEncoder::new(K, M, shard).expect("encoder");
            let dec = ReedSolomonDecoder::new(K, M, shard).expect("decoder");
            let recovery = data
                .chunks(K * shard)
                .map(|seg| {
                    for s in seg.chunks(shard) {
                        enc.add_original_shard(s).expect("add");
                    }
                    let r = enc.encode().expect("encode");
                    r.recovery_iter().map(<[u8]>::to_vec).collect()
                })
                .collect();
            Direct {
                shard,
                enc,
                dec,
                recovery,
            }
        }

        pub fn encode(&mut self, data: &[u8]) {
            for seg in data.chunks(K * self.shard) {
                for s in seg.chunks(self.shard) {
                    self.enc.add_original_shard(s).expect("add");
                }
                let r = self.enc.encode().expect("encode");
                std::hint::black_box(r.recovery(0));
            }
        }

        /// Loses data shards 0 and 1 of every segment.
        pub fn decode(&mut self, data: &[u8]) {
            for (seg, rec) in data.chunks(K * self.shard).zip(&self.recovery) {
                for (i, s) in seg.chunks(self.shard).enumerate().skip(M) {
                    self.dec.add_original_shard(i, s).expect("add");
                }
                for (i, r) in rec.iter().enumerate() {
                    self.dec.add_recovery_shard(i, r).expect("add");
                }
                let r = self.dec.decode().expect("decode");
                std::hint::black_box(r.restored_original(0));
            }
        }
    }
}

/// Decimal megabytes per second.
fn mb_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

struct Row {
    case: String,
    size: usize,
    time: Duration,
}

fn time_memcpy(size: usize, label: &str) -> Row {
    let src = test_data(size);
    let mut dst = vec![0u8; size];
    Row {
        case: format!("memcpy (copy_from_slice), {label}"),
        size,
        time: common::median_time(9, WARM, FAST, || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }),
    }
}

const WARM: Duration = Duration::from_millis(300);
const FAST: Duration = Duration::from_millis(30);

fn summary() {
    use common::{median_time, print_table, verdict};

    let load_start = common::load_average();
    let mut rows: Vec<Row> = Vec::new();
    for size in SIZES {
        rows.push(time_memcpy(size, "start"));
        let src = test_data(size);
        rows.push(Row {
            case: "blake3::hash".into(),
            size,
            time: median_time(9, WARM, FAST, || {
                black_box(blake3::hash(black_box(&src)));
            }),
        });
    }
    for codec in CodecKind::ALL {
        let novelpoly = codec == CodecKind::ReedSolomonNovelpoly;
        let reps = if novelpoly { 3 } else { 7 };
        for &size in sizes(Some(codec)) {
            let data = test_data(size);
            for (k, m) in GEOMETRIES {
                let g = geometry(codec, k, m);
                let mut enc = Encoder::new(g).expect("encoder");
                rows.push(Row {
                    case: format!("encode {} {k}+{m}", codec.name()),
                    size,
                    time: median_time(reps, WARM, FAST, || encode_object(&mut enc, &data)),
                });
                let encoded = EncodedObject::new(g, &data);
                let inputs = encoded.with_data_lost();
                rows.push(Row {
                    case: format!("decode {} {k}+{m}, {m} data shards lost", codec.name()),
                    size,
                    time: median_time(reps, WARM, FAST, || encoded.decode_object(&inputs)),
                });
            }
        }
    }
    {
        // The target case: a large object cut into 1 MiB stripes
        // (4 shards of 256 KiB), whose working set stays in cache.
        let data = test_data(64 * MIB);
        let g = Geometry::new(CodecKind::ReedSolomonSimd, 4, 2, MIB as u32).expect("geometry");
        let mut enc = Encoder::new(g).expect("encoder");
        rows.push(Row {
            case: "encode reed-solomon-simd 4+2, 1 MiB stripes (256 KiB shards)".into(),
            size: 64 * MIB,
            time: median_time(7, WARM, FAST, || encode_object(&mut enc, &data)),
        });
    }
    for size in SIZES {
        let data = test_data(size);
        let shard = size.min(direct::K * MIB) / direct::K;
        let mut d = direct::Direct::new(&data, shard);
        rows.push(Row {
            case: format!(
                "encode reed_solomon_simd direct 4+2, {} KiB shards (reused, no copies)",
                shard >> 10
            ),
            size,
            time: median_time(7, WARM, FAST, || d.encode(&data)),
        });
        rows.push(Row {
            case: format!(
                "decode reed_solomon_simd direct 4+2, {} KiB shards, 2 data lost (reused)",
                shard >> 10
            ),
            size,
            time: median_time(7, WARM, FAST, || d.decode(&data)),
        });
    }
    for size in SIZES {
        rows.push(time_memcpy(size, "end"));
    }

    // The faster of the two memcpy timings of each size is the reference,
    // which errs on the side of lower ratios.
    let memcpy_of = |size: usize| {
        rows.iter()
            .filter(|r| r.case.starts_with("memcpy") && r.size == size)
            .map(|r| r.time)
            .min()
            .expect("memcpy measured for every size")
    };
    let mut table = vec![vec![
        "case".to_string(),
        "object".to_string(),
        "time".to_string(),
        "MB/s".to_string(),
        "x memcpy".to_string(),
    ]];
    for r in &rows {
        table.push(vec![
            r.case.clone(),
            size_label(r.size),
            format!("{:.3} ms", r.time.as_secs_f64() * 1e3),
            format!("{:.0}", mb_per_s(r.size, r.time)),
            format!(
                "{:.3}",
                memcpy_of(r.size).as_secs_f64() / r.time.as_secs_f64()
            ),
        ]);
    }
    println!();
    println!(
        "## Codec summary (this run; MB = 10^6 bytes; segment_size = k MiB; median of \
         repetitions; x memcpy = against the faster memcpy of the same size)"
    );
    println!();
    print_table(&table);
    println!();
    println!(
        "Load average at the start / end of the summary: {load_start} / {} on {} CPUs \
         (another process competing for the CPUs skews these figures).",
        common::load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let find = |prefix: &str, size: usize| {
        rows.iter()
            .find(|r| r.case.starts_with(prefix) && r.size == size)
            .map(|r| r.time)
    };
    println!();
    println!("## Targets");
    println!();
    let simd = CodecKind::ReedSolomonSimd.name();
    for (prefix, size, note) in [
        (
            "4+2, 1 MiB stripes",
            64 * MIB,
            "64 MiB object in 1 MiB stripes",
        ),
        (
            "4+2",
            64 * MIB,
            "64 MiB object: 16 segments of 4 MiB, 1 MiB shards",
        ),
        (
            "4+2",
            MIB,
            "1 MiB object: one short segment, 256 KiB shards, in-cache memcpy",
        ),
    ] {
        if let Some(t) = find(&format!("encode {simd} {prefix}"), size) {
            let ratio = memcpy_of(size).as_secs_f64() / t.as_secs_f64();
            println!(
                "- encode {simd} 4+2 >= 0.5x memcpy ({note}): {ratio:.3}x -> {}",
                verdict(ratio >= 0.5)
            );
        }
    }
    for size in SIZES {
        for (k, m) in GEOMETRIES {
            if let Some(t) = find(&format!("decode {simd} {k}+{m}"), size) {
                let mbs = mb_per_s(size, t);
                println!(
                    "- decode {simd} {k}+{m}, {m} data shards lost, {} >= 1000 MB/s: {mbs:.0} MB/s -> {}",
                    size_label(size),
                    verdict(mbs >= 1000.0)
                );
            }
        }
    }
    println!();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .without_plots()
        .configure_from_args();
    bench_references(&mut c);
    bench_codec(&mut c, CodecKind::ReedSolomonSimd);
    bench_codec(&mut c, CodecKind::ReedSolomonNovelpoly);
    c.final_summary();
    if common::summary_wanted() {
        summary();
    }
}
