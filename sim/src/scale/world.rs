//! The scale model's inputs: sites, nodes, joiners, leavers and objects,
//! all drawn from the seed, plus the small helpers every phase shares.
//!
//! # Randomness
//! Every purpose has its own ChaCha8 stream, keyed by BLAKE3 in derive-key
//! mode from the seed and a label ([`stream`]). Streams never share state,
//! so adding a draw in one phase cannot shift the numbers of another, and
//! every policy sees the same nodes, objects and failures.
//!
//! # Nodes
//! - Site: drawn with probability proportional to `1 / (s + 1)^skew` for
//!   site `s` (`skew = 0`: uniform).
//! - Capacity: log-uniform over `[1, ratio]` units, then every capacity is
//!   multiplied by one scale factor chosen so that the objects, parity
//!   included, fill exactly `fill` of the total. Every policy depends on
//!   byte ratios only, so the absolute scale is irrelevant; what shapes the
//!   results is the capacity ratio and the number of shards per node,
//!   `objects * (k + m) / nodes`.
//! - ID: shaped like an ed25519 libp2p `PeerId` (6-byte prefix, 32 bytes):
//!   28 bytes of BLAKE3 of (seed, index), then the index as 4 little-endian
//!   bytes, so that the node index is read back from the ID in O(1)
//!   ([`node_index`]). Placement hashes the whole ID, so the visible index
//!   does not bias it.
//!
//! # Objects
//! Each object is one stripe of `k + m` shards of `ceil(size / k)` bytes
//! (the real system cuts objects into segments with one stripe each; one
//! stripe per object keeps a million objects cheap). Sizes are log-normal:
//! `size = median * exp(sigma * Z)`, `Z` standard normal (Box-Muller),
//! clamped to `[64 KiB, 1000 * median]`. The placement key is
//! [`PlacementKey::for_segment`] of the object ID (BLAKE3 of seed, index)
//! and segment 0, exactly as the node computes it.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use dynostore_protocol::placement::{Member, MemberState, PlacementKey, Space, View, Weighting};
use dynostore_protocol::{NodeId, ObjectId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Marks an empty holder slot (a refused object, or a lost shard).
pub const MISSING: u32 = u32::MAX;

/// Prefix of an ed25519 `PeerId`: identity multihash, length 36, protobuf
/// key type ed25519, length 32.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// A virtual node.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub site: u32,
    pub capacity_bytes: u64,
}

/// One object: one stripe of `k + m` equal shards.
#[derive(Debug, Clone, Copy)]
pub struct Object {
    pub key: PlacementKey,
    pub shard_bytes: u64,
}

/// What [`World::generate`] needs.
#[derive(Debug, Clone)]
pub struct WorldSpec {
    pub seed: u64,
    pub nodes: usize,
    pub sites: usize,
    pub site_skew: f64,
    pub objects: usize,
    pub k: usize,
    pub m: usize,
    pub fill: f64,
    pub capacity_ratio: f64,
    pub size_median_bytes: f64,
    pub size_sigma: f64,
    pub join_fraction: f64,
    pub leave_fraction: f64,
}

/// Everything the phases run on. Node indices `0..nodes.len()` are the
/// initial members; the joiners follow at `nodes.len()..`.
#[derive(Debug, Clone)]
pub struct World {
    pub sites: Vec<String>,
    /// Initial members, then the joiners.
    pub all_nodes: Vec<Node>,
    pub initial: usize,
    /// Indices of the initial members that leave in the leave scenario.
    pub leavers: Vec<u32>,
    pub objects: Vec<Object>,
    /// Shards per stripe, `k + m`.
    pub n: usize,
    pub k: usize,
    pub m: usize,
    /// Bytes per capacity unit: the scale factor described above.
    pub bytes_per_unit: f64,
}

impl World {
    pub fn generate(spec: &WorldSpec) -> World {
        let n = spec.k + spec.m;
        let sites: Vec<String> = (0..spec.sites).map(|s| format!("site-{s:02}")).collect();
        let site_cdf = cumulative(
            &(0..spec.sites)
                .map(|s| 1.0 / ((s + 1) as f64).powf(spec.site_skew))
                .collect::<Vec<_>>(),
        );

        let mut rng = stream(spec.seed, "objects");
        let lo = 64.0 * 1024.0;
        let hi = (1000.0 * spec.size_median_bytes).max(lo);
        let objects: Vec<Object> = (0..spec.objects)
            .map(|i| {
                let z = standard_normal(&mut rng);
                let size = (spec.size_median_bytes * (spec.size_sigma * z).exp()).clamp(lo, hi);
                let size = size as u64;
                Object {
                    key: PlacementKey::for_segment(&object_id(spec.seed, i as u64), 0),
                    shard_bytes: size.div_ceil(spec.k as u64),
                }
            })
            .collect();
        let stored_bytes: f64 = objects
            .iter()
            .map(|o| (o.shard_bytes * n as u64) as f64)
            .sum();

        // Capacity units first, then one scale for all.
        let draw = |rng: &mut ChaCha8Rng| -> (u32, f64) {
            let site = pick(&site_cdf, rng.gen::<f64>()) as u32;
            let units = spec.capacity_ratio.powf(rng.gen::<f64>());
            (site, units)
        };
        let mut rng = stream(spec.seed, "nodes");
        let initial: Vec<(u32, f64)> = (0..spec.nodes).map(|_| draw(&mut rng)).collect();
        let joiners = count_of(spec.join_fraction, spec.nodes);
        let mut rng = stream(spec.seed, "joiners");
        let joining: Vec<(u32, f64)> = (0..joiners).map(|_| draw(&mut rng)).collect();

        let units: f64 = initial.iter().map(|(_, u)| u).sum();
        let bytes_per_unit = stored_bytes / spec.fill / units;
        let all_nodes = initial
            .iter()
            .chain(&joining)
            .enumerate()
            .map(|(i, &(site, u))| Node {
                id: node_id(spec.seed, i as u32),
                site,
                capacity_bytes: ((u * bytes_per_unit).round() as u64).max(1),
            })
            .collect();

        // Leavers: a partial Fisher-Yates shuffle of the initial members.
        let leaving = count_of(spec.leave_fraction, spec.nodes);
        let mut rng = stream(spec.seed, "leavers");
        let mut idx: Vec<u32> = (0..spec.nodes as u32).collect();
        for i in 0..leaving {
            let j = rng.gen_range(i..idx.len());
            idx.swap(i, j);
        }
        let mut leavers = idx[..leaving].to_vec();
        leavers.sort_unstable();

        World {
            sites,
            all_nodes,
            initial: spec.nodes,
            leavers,
            objects,
            n,
            k: spec.k,
            m: spec.m,
            bytes_per_unit,
        }
    }

    /// Indices of the initial members.
    pub fn initial_range(&self) -> Range<u32> {
        0..self.initial as u32
    }

    /// Indices of the joiners.
    pub fn joiner_range(&self) -> Range<u32> {
        self.initial as u32..self.all_nodes.len() as u32
    }

    /// The protocol member for node `i` with the given weight (free bytes).
    pub fn member(&self, i: u32, weight: u64) -> Member {
        let node = &self.all_nodes[i as usize];
        Member {
            id: node.id.clone(),
            site: self.sites[node.site as usize].clone(),
            weight,
            state: MemberState::Alive,
            volatile: false,
        }
    }

    /// A protocol view of `nodes`, each weighted by `weight(i)`.
    pub fn view(&self, nodes: impl IntoIterator<Item = u32>, weight: impl Fn(u32) -> u64) -> View {
        View::new(nodes.into_iter().map(|i| self.member(i, weight(i))))
    }

    /// The protocol view of `nodes` weighted as the node weighs its
    /// members ([`View::weighted`]: capacity with the fill correction),
    /// from each node's used bytes.
    pub fn weighted_view(
        &self,
        nodes: impl IntoIterator<Item = u32>,
        used: impl Fn(u32) -> u64,
    ) -> View {
        View::weighted(nodes.into_iter().map(|i| {
            let capacity_bytes = self.capacity(i);
            let space = Space {
                capacity_bytes,
                free_bytes: capacity_bytes.saturating_sub(used(i)),
            };
            (self.member(i, 0), space)
        }))
    }

    /// Refreshes a view from [`World::weighted_view`] to the used bytes
    /// `used`: the same view [`World::weighted_view`] would build over its
    /// members ([`View::reweigh`]), without sorting and hashing every ID
    /// again.
    pub fn reweigh(&self, view: &mut View, used: impl Fn(u32) -> u64) {
        view.reweigh(|m| {
            let i = node_index(&m.id);
            let capacity_bytes = self.capacity(i);
            Space {
                capacity_bytes,
                free_bytes: capacity_bytes.saturating_sub(used(i)),
            }
        });
    }

    pub fn capacity(&self, i: u32) -> u64 {
        self.all_nodes[i as usize].capacity_bytes
    }

    pub fn site_of(&self, i: u32) -> u32 {
        self.all_nodes[i as usize].site
    }
}

/// The node indices the protocol places `key`'s `n` shards on, in ranking
/// order (fewer than `n` when fewer members are eligible).
pub fn place_indices(view: &View, key: PlacementKey, n: usize) -> Vec<u32> {
    view.place(key, n, Weighting::Weighted)
        .into_iter()
        .map(node_index)
        .collect()
}

/// The node index carried in the last four bytes of a simulated node ID.
pub fn node_index(id: &NodeId) -> u32 {
    let b = id.as_bytes();
    let mut tail = [0u8; 4];
    tail.copy_from_slice(&b[b.len() - 4..]);
    u32::from_le_bytes(tail)
}

/// The simulated node ID of node `i` under `seed`.
pub fn node_id(seed: u64, i: u32) -> NodeId {
    let mut h = blake3::Hasher::new_derive_key("dynostore-sim scale node-id v1");
    h.update(&seed.to_le_bytes());
    h.update(&i.to_le_bytes());
    let mut bytes = PEER_ID_PREFIX.to_vec();
    bytes.extend_from_slice(&h.finalize().as_bytes()[..28]);
    bytes.extend_from_slice(&i.to_le_bytes());
    // 38 bytes: within NodeId's limit.
    NodeId::from_bytes(bytes).unwrap_or_else(|_| unreachable!("38-byte node ID is valid"))
}

/// The simulated object ID of object `i` under `seed`.
pub fn object_id(seed: u64, i: u64) -> ObjectId {
    let mut h = blake3::Hasher::new_derive_key("dynostore-sim scale object-id v1");
    h.update(&seed.to_le_bytes());
    h.update(&i.to_le_bytes());
    ObjectId::from_hash(h.finalize())
}

/// The RNG stream for `label` under `seed`.
pub fn stream(seed: u64, label: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new_derive_key("dynostore-sim scale rng v1");
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// A standard normal draw (Box-Muller, one of the pair).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    // gen::<f64>() is in [0, 1); 1 - u is in (0, 1] so ln is finite.
    let u1 = 1.0 - rng.gen::<f64>();
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An exponential draw with the given rate; infinite for a rate of 0.
pub fn exponential(rng: &mut impl Rng, rate: f64) -> f64 {
    if rate <= 0.0 {
        return f64::INFINITY;
    }
    // 1 - u is in (0, 1], so the result is finite and >= 0.
    -(1.0 - rng.gen::<f64>()).ln() / rate
}

/// `round(fraction * of)`, at least 1 when `fraction > 0`: how many nodes
/// join or leave.
pub fn count_of(fraction: f64, of: usize) -> usize {
    if fraction <= 0.0 {
        0
    } else {
        ((fraction * of as f64).round() as usize).clamp(1, of)
    }
}

fn cumulative(weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// Index of the first cumulative value above `u`.
fn pick(cdf: &[f64], u: f64) -> usize {
    cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
}

/// A progress bar on stderr for a long phase, counting `len` items
/// (objects); hidden unless `show` and stderr is a terminal, so piped
/// output and `--json` / `--quiet` runs stay quiet. Nothing it shows goes
/// into the report.
pub fn progress_bar(show: bool, len: usize, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "          {elapsed_precise} [{bar:30}] {human_pos}/{human_len} {msg} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Maps `f` over `0..len` on `threads` threads and returns the results in
/// index order: the result never depends on the thread count or on which
/// thread computed what. Threads claim small chunks of indices as they go,
/// so a thread slowed by other load on the machine does not hold up the
/// rest.
pub fn par_map<T: Send>(threads: usize, len: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, len.max(1));
    if threads == 1 {
        return (0..len).map(f).collect();
    }
    let chunk = (len / (threads * 16)).clamp(1, 1024);
    let chunks = len.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let (f, next) = (&f, &next);
    let mut parts: Vec<(usize, Vec<T>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let c = next.fetch_add(1, Ordering::Relaxed);
                        if c >= chunks {
                            break mine;
                        }
                        let range = c * chunk..((c + 1) * chunk).min(len);
                        mine.push((c, range.map(f).collect::<Vec<T>>()));
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(chunks);
        for h in handles {
            match h.join() {
                Ok(part) => all.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    parts.sort_unstable_by_key(|(c, _)| *c);
    let mut out = Vec::with_capacity(len);
    for (_, part) in parts {
        out.extend(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_index_round_trips() {
        for i in [0u32, 1, 9999, u32::MAX - 1] {
            assert_eq!(node_index(&node_id(7, i)), i);
        }
    }

    #[test]
    fn par_map_keeps_order() {
        let one = par_map(1, 1001, |i| i * 3);
        let two = par_map(2, 1001, |i| i * 3);
        assert_eq!(one, two);
        assert_eq!(par_map(3, 100_003, |i| i), (0..100_003).collect::<Vec<_>>());
        assert_eq!(par_map(2, 6, |i| i), vec![0, 1, 2, 3, 4, 5]);
        assert!(par_map(2, 0, |i| i).is_empty());
    }

    #[test]
    fn pick_covers_every_index() {
        let cdf = cumulative(&[1.0, 1.0, 2.0]);
        assert_eq!(pick(&cdf, 0.0), 0);
        assert_eq!(pick(&cdf, 0.3), 1);
        assert_eq!(pick(&cdf, 0.99), 2);
        assert_eq!(pick(&cdf, 1.0), 2);
    }
}
