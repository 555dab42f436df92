//! `dynostore-sim cluster --search`: a randomised fault search.
//!
//! Each seed draws a whole run: the cluster (six to eight nodes over two to
//! four sites, a geometry), the objects (random bytes, objects that share
//! zero-filled segments, a file and its appended version), and a schedule
//! of steps mixing the workload (put, two puts of one object at once, `rm`,
//! re-put after `rm`, get) with faults (kill, restart, minority and even
//! partitions held until each side sees the other down, healing, shard
//! corruption, pauses until full redundancy). The schedule depends on the
//! seed alone, not on what the run answers, so a seed reproduces its run.
//!
//! The faults respect the network's promise: at any moment at most `m`
//! nodes are unavailable (killed, cut off on the minority side, or holding
//! corrupted shards not yet repaired); an even partition happens only with
//! every node up and nothing corrupted. Within that promise, after the
//! schedule the run heals, restarts every node and checks:
//! - every object whose last acknowledged operation was a put reads back
//!   byte-identical, and every replica of its manifest holds one version;
//! - every object whose last acknowledged operation was an `rm` is gone;
//! - full redundancy returns within the deadline;
//! - no get of a present object failed outside an even partition.
//!
//! The client model is sequential: steps run one after another (only the
//! double put overlaps two requests), so "last" is well defined. Two cases
//! are left undetermined on purpose: a put or `rm` that failed (it may have
//! done part of its work), and an object that operations reached from both
//! sides of one even partition (the two sides cannot know of each other;
//! either outcome is allowed, and if it reads, its bytes are checked by its
//! BLAKE3 as always).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use dynostore_node::client::Client;
use dynostore_node::objects::{self, NoProgress, ObjectError, PutParams};
use dynostore_protocol::erasure::CodecKind;
use dynostore_protocol::wire::{
    ClientRequest, ClientResponse, ControlRequest, ControlResponse, ErrorKind, PutReceipt,
};
use dynostore_protocol::{MemberState, ObjectId};

use super::report::Check;
use super::scenario::{Action, Fault, NodeGroup, Scenario, Timing, Workload};
use super::{bar, lock, Acked, Run, RunOptions};

/// Bytes per shard of the search's objects: small, so a seed runs in a
/// minute or two, with several segments per object.
const SHARD: u32 = 16 << 10;
/// Time allowed for full redundancy after the schedule.
const DEADLINE: Duration = Duration::from_secs(150);
/// Time allowed, after full redundancy, for lagging manifest replicas to
/// take the newest version (repair rounds refresh them).
const MANIFESTS_CONVERGE: Duration = Duration::from_secs(30);
/// Names per seed (`search/k0` ..), and their share of the steps.
const NAME_KEYS: u32 = 5;
const NAME_STEPS_PER_100: usize = 25;
/// The nodes' reclaim grace and wait.
const RECLAIM_MS: u64 = 1000;
/// The bucket of the search's names.
const BUCKET: &str = "search";
/// The same with repair off, where only the nodes' return could help.
const NO_REPAIR_DEADLINE: Duration = Duration::from_secs(20);

/// What one object's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// `segments` whole segments and `tail` bytes, random.
    Random { segments: u32, tail: u32 },
    /// `zeros` zero-filled segments (identical shards, shared by every such
    /// object), then `tail` random bytes.
    Zeros { zeros: u32, tail: u32 },
    /// The whole segments of object `base`, then `segments` more and `tail`
    /// bytes, random: a file and its appended version share segments.
    Extends {
        base: usize,
        segments: u32,
        tail: u32,
    },
}

/// One step of a drawn schedule. Node choices for requests are numbers
/// reduced modulo the nodes that are up when the step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    Put {
        object: usize,
        via: u32,
    },
    /// Two puts of one object through two nodes at once.
    PutTwice {
        object: usize,
        via: [u32; 2],
    },
    Rm {
        object: usize,
        via: u32,
    },
    Get {
        object: usize,
        via: u32,
    },
    Kill {
        nodes: Vec<usize>,
    },
    Restart {
        nodes: Vec<usize>,
    },
    /// `side` is cut off; `even` when it is half the cluster (requests
    /// then go to both sides), else it is a minority of at most `m`.
    Partition {
        side: Vec<usize>,
        even: bool,
    },
    Heal,
    Corrupt {
        node: usize,
        shards: usize,
    },
    /// Wait until every present object is healthy again.
    Settle,
    /// Store `object` to be named (`put --name`) and name it `key`.
    Name {
        key: u32,
        object: usize,
        via: u32,
    },
    /// Delete the name `key` (`rm BUCKET/KEY`): its object is reclaimed
    /// once no name refers to it, unless it was also put by ID.
    Unname {
        key: u32,
        via: u32,
    },
}

/// Everything a seed decides.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub seed: u64,
    pub nodes: usize,
    pub sites: usize,
    pub k: u16,
    pub m: u16,
    pub objects: Vec<Content>,
    pub steps: Vec<Step>,
    /// Automatic repair on the nodes (off only to show a check can fail).
    pub repair: bool,
    /// Time allowed for full redundancy after the faults.
    pub deadline_secs: u64,
}

/// The availability state the planner keeps so that faults never exceed
/// what the geometry promises to survive.
#[derive(Debug, Default)]
struct FaultState {
    killed: HashSet<usize>,
    /// Cut-off side and whether it is an even split.
    partition: Option<(HashSet<usize>, bool)>,
    /// Nodes with corrupted shards not yet followed by a settle.
    corrupted: HashSet<usize>,
}

impl FaultState {
    fn unavailable(&self) -> usize {
        let mut u: HashSet<usize> = self.killed.union(&self.corrupted).copied().collect();
        if let Some((side, false)) = &self.partition {
            u.extend(side.iter().copied());
        }
        u.len()
    }
    fn even(&self) -> bool {
        matches!(self.partition, Some((_, true)))
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, from: &[T]) -> Option<T> {
    (!from.is_empty()).then(|| from[rng.gen_range(0..from.len())])
}

impl Plan {
    /// Draws the cluster, the objects and `steps` steps from `seed`.
    pub fn draw(seed: u64, steps: usize) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Eight nodes half the time: even partitions need them.
        let nodes = if rng.gen_bool(0.5) {
            8
        } else {
            rng.gen_range(6..=7usize)
        };
        let sites = rng.gen_range(2..=4usize);
        // Geometries an even split of eight can still write on both sides.
        let (k, m) = match rng.gen_range(0..4) {
            0 => (2, 1),
            1 => (3, 2),
            _ => (2, 2),
        };
        let n = usize::from(k + m);
        let mut objects: Vec<Content> = Vec::new();
        let mut plan = Plan {
            seed,
            nodes,
            sites,
            k,
            m,
            objects: Vec::new(),
            steps: Vec::new(),
            repair: true,
            deadline_secs: DEADLINE.as_secs(),
        };
        let mut st = FaultState::default();
        let mut put: Vec<usize> = Vec::new();
        let mut removed: Vec<usize> = Vec::new();
        let new_object = |rng: &mut ChaCha8Rng, objects: &mut Vec<Content>| -> usize {
            let tail = if rng.gen_bool(0.3) {
                0
            } else {
                rng.gen_range(1..SHARD * u32::from(k))
            };
            let whole: Vec<usize> = objects
                .iter()
                .enumerate()
                .filter(|(_, c)| !matches!(c, Content::Zeros { .. }))
                .map(|(i, _)| i)
                .collect();
            let c = match rng.gen_range(0..10) {
                0..=1 => Content::Zeros {
                    zeros: rng.gen_range(1..=2),
                    tail: tail.max(1),
                },
                2..=3 if !whole.is_empty() => Content::Extends {
                    base: pick(rng, &whole).unwrap_or(0),
                    segments: rng.gen_range(0..=2),
                    tail: tail.max(1),
                },
                _ => Content::Random {
                    segments: rng.gen_range(0..=3),
                    tail: if tail == 0 { SHARD } else { tail },
                },
            };
            objects.push(c);
            objects.len() - 1
        };
        let mut attempts = 0;
        while plan.steps.len() < steps && attempts < steps * 20 {
            attempts += 1;
            let all: Vec<usize> = (0..nodes).collect();
            let running: Vec<usize> = all
                .iter()
                .copied()
                .filter(|i| !st.killed.contains(i))
                .collect();
            let budget = usize::from(m).saturating_sub(st.unavailable());
            // About half the steps are faults, among those possible now.
            let step = if rng.gen_bool(0.55) {
                match rng.gen_range(0..100) {
                    0..=39 => Some(Step::Put {
                        object: new_object(&mut rng, &mut objects),
                        via: rng.next_u32(),
                    }),
                    40..=51 => Some(Step::PutTwice {
                        object: new_object(&mut rng, &mut objects),
                        via: [rng.next_u32(), rng.next_u32()],
                    }),
                    52..=69 => pick(&mut rng, &put).map(|o| Step::Rm {
                        object: o,
                        via: rng.next_u32(),
                    }),
                    70..=84 => pick(&mut rng, &removed).map(|o| Step::Put {
                        object: o,
                        via: rng.next_u32(),
                    }),
                    _ => pick(&mut rng, &put).map(|o| Step::Get {
                        object: o,
                        via: rng.next_u32(),
                    }),
                }
            } else {
                let even_ok = st.partition.is_none()
                    && st.killed.is_empty()
                    && st.corrupted.is_empty()
                    && nodes % 2 == 0
                    && nodes / 2 >= n;
                let mut kinds: Vec<u8> = Vec::new();
                if budget > 0 && !st.even() {
                    kinds.extend([0, 0, 5]); // kill (twice as likely), corrupt
                }
                if !st.killed.is_empty() && st.partition.is_none() {
                    kinds.extend([1, 1]); // restart
                }
                if st.partition.is_none() && budget > 0 {
                    kinds.push(2); // minority partition
                }
                if even_ok {
                    kinds.push(3); // even partition
                }
                if st.partition.is_some() {
                    kinds.push(4); // heal
                }
                if !st.even() && st.partition.is_none() && nodes - st.killed.len() >= n {
                    kinds.push(6); // settle (only where k + m nodes are up)
                }
                match pick(&mut rng, &kinds) {
                    Some(0) => pick(&mut rng, &running).map(|x| Step::Kill { nodes: vec![x] }),
                    Some(1) => {
                        let mut back: Vec<usize> = st.killed.iter().copied().collect();
                        back.sort_unstable();
                        if rng.gen_bool(0.5) {
                            back.truncate(1);
                        }
                        Some(Step::Restart { nodes: back })
                    }
                    Some(k @ (2 | 3)) => {
                        let mut order: Vec<usize> =
                            if k == 3 { all.clone() } else { running.clone() };
                        for i in (1..order.len()).rev() {
                            order.swap(i, rng.gen_range(0..=i));
                        }
                        let size = if k == 3 {
                            nodes / 2
                        } else {
                            rng.gen_range(1..=budget)
                        };
                        order.truncate(size);
                        order.sort_unstable();
                        Some(Step::Partition {
                            side: order,
                            even: k == 3,
                        })
                    }
                    Some(4) => Some(Step::Heal),
                    Some(5) => pick(&mut rng, &running).map(|node| Step::Corrupt {
                        node,
                        shards: rng.gen_range(1..=3),
                    }),
                    Some(_) => Some(Step::Settle),
                    None => None,
                }
            };
            let Some(step) = step else { continue };
            match &step {
                Step::Put { object, .. } | Step::PutTwice { object, .. } => {
                    removed.retain(|o| o != object);
                    if !put.contains(object) {
                        put.push(*object);
                    }
                }
                Step::Rm { object, .. } => {
                    put.retain(|o| o != object);
                    if !removed.contains(object) {
                        removed.push(*object);
                    }
                }
                Step::Kill { nodes } => st.killed.extend(nodes.iter().copied()),
                Step::Restart { nodes } => nodes.iter().for_each(|x| {
                    st.killed.remove(x);
                }),
                Step::Partition { side, even } => {
                    st.partition = Some((side.iter().copied().collect(), *even));
                }
                Step::Heal => st.partition = None,
                Step::Corrupt { node, .. } => {
                    st.corrupted.insert(*node);
                }
                Step::Settle => st.corrupted.clear(),
                Step::Get { .. } | Step::Name { .. } | Step::Unname { .. } => {}
            }
            plan.steps.push(step);
        }
        plan.objects = objects;
        plan.draw_names(steps);
        plan
    }

    /// Adds name steps at random places, from a stream of their own (so
    /// the other steps, and the fault budget they keep, are as before):
    /// names of objects the schedule also puts by ID, and of their own.
    fn draw_names(&mut self, steps: usize) {
        if self.objects.is_empty() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(0x6e61_6d65);
        for _ in 0..steps * NAME_STEPS_PER_100 / 100 {
            let key = rng.gen_range(0..NAME_KEYS);
            let via = rng.next_u32();
            let step = if rng.gen_bool(0.6) {
                // Half the names are of objects of their own, never put by
                // ID: those the collector may take once unnamed.
                let object = if rng.gen_bool(0.5) {
                    self.objects.push(Content::Random {
                        segments: rng.gen_range(0..=2),
                        tail: rng.gen_range(1..=SHARD * u32::from(self.k)),
                    });
                    self.objects.len() - 1
                } else {
                    rng.gen_range(0..self.objects.len())
                };
                Step::Name { key, object, via }
            } else {
                Step::Unname { key, via }
            };
            let at = rng.gen_range(0..=self.steps.len());
            self.steps.insert(at, step);
        }
    }

    fn segment_size(&self) -> u32 {
        SHARD * u32::from(self.k)
    }

    /// The cluster as a scenario (no scripted faults: the steps are them).
    pub fn scenario(&self) -> Scenario {
        let nodes = (0..self.nodes)
            .map(|i| NodeGroup {
                count: 1,
                site: format!("site-{}", i % self.sites),
                containers: vec!["dir:64MiB".into()],
            })
            .collect();
        Scenario {
            name: format!("search-{}", self.seed),
            seed: self.seed,
            k: self.k,
            m: self.m,
            segment_size: Some(self.segment_size()),
            workload: Workload::Medical,
            objects: 0,
            size_scale: 1.0,
            read_fraction: 0.0,
            redundancy_deadline_secs: self.deadline_secs,
            repair: self.repair,
            timing: Timing {
                announce_ms: 300,
                suspect_ms: 1500,
                down_ms: 3000,
                repair_ms: 1000,
                scrub_ms: 3000,
                // Names' objects are reclaimed within seconds, so that the
                // collector runs among the faults.
                reclaim_ms: Some(RECLAIM_MS),
            },
            nodes,
            faults: Vec::new(),
        }
    }

    /// Object `i`'s length, without making its bytes.
    pub fn len(&self, i: usize) -> u64 {
        let seg = u64::from(self.segment_size());
        match self.objects[i] {
            Content::Random { segments, tail } => u64::from(segments) * seg + u64::from(tail),
            Content::Zeros { zeros, tail } => u64::from(zeros) * seg + u64::from(tail),
            Content::Extends {
                base,
                segments,
                tail,
            } => self.len(base) / seg * seg + u64::from(segments) * seg + u64::from(tail),
        }
    }

    /// Object `i`'s bytes.
    pub fn bytes(&self, i: usize) -> Vec<u8> {
        let seg = self.segment_size() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(0x5eed_0000 + i as u64);
        let random = |rng: &mut ChaCha8Rng, n: usize| {
            let mut b = vec![0u8; n];
            rng.fill_bytes(&mut b);
            b
        };
        match self.objects[i] {
            Content::Random { segments, tail } => {
                random(&mut rng, segments as usize * seg + tail as usize)
            }
            Content::Zeros { zeros, tail } => {
                let mut b = vec![0u8; zeros as usize * seg];
                b.extend(random(&mut rng, tail as usize));
                b
            }
            Content::Extends {
                base,
                segments,
                tail,
            } => {
                let mut b = self.bytes(base);
                b.truncate(b.len() / seg * seg);
                b.extend(random(&mut rng, segments as usize * seg + tail as usize));
                b
            }
        }
    }
}

/// What the client may expect of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The last acknowledged operation was a put.
    Present,
    /// The last acknowledged operation was an `rm`.
    Removed,
    /// Failed operations or both sides of a partition: either outcome.
    Unknown,
}

/// One seed's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub seed: u64,
    pub nodes: usize,
    pub k: u16,
    pub m: u16,
    pub steps: usize,
    pub puts_acked: usize,
    pub puts_failed: usize,
    pub rms_acked: usize,
    pub faults: usize,
    pub present: usize,
    pub removed: usize,
    pub unknown: usize,
    pub checks: Vec<Check>,
    pub errors: Vec<String>,
    pub passed: bool,
    pub elapsed_s: f64,
    pub slowest_step: String,
    pub slowest_step_s: f64,
}

/// Every seed's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub first_seed: u64,
    pub seeds_run: usize,
    pub failed_seeds: Vec<u64>,
    pub runs: Vec<SeedReport>,
}

/// Which seeds a search runs, and how.
#[derive(Debug, Clone, Copy)]
pub struct SearchOptions {
    pub first: u64,
    pub seeds: usize,
    /// Steps per seed.
    pub steps: usize,
    /// Go on after a failing seed.
    pub keep_going: bool,
    /// Automatic repair on the nodes.
    pub repair: bool,
}

/// Runs the seeds; stops at the first failure unless `keep_going`.
/// `before` sees each plan before it runs, `after` its report.
pub fn run_search(
    so: &SearchOptions,
    opts: &RunOptions,
    before: &mut dyn FnMut(&Plan),
    after: &mut dyn FnMut(&SeedReport),
) -> Result<SearchReport> {
    let (first, steps, repair) = (so.first, so.steps, so.repair);
    let mut report = SearchReport {
        first_seed: first,
        seeds_run: 0,
        failed_seeds: Vec::new(),
        runs: Vec::new(),
    };
    for seed in first..first.saturating_add(so.seeds as u64) {
        let mut plan = Plan::draw(seed, steps);
        plan.repair = repair;
        if !repair {
            // Waiting longer for a repair that never comes shows nothing.
            plan.deadline_secs = NO_REPAIR_DEADLINE.as_secs();
        }
        before(&plan);
        let r = run_plan(&plan, opts)?;
        after(&r);
        report.seeds_run += 1;
        let failed = !r.passed;
        report.runs.push(r);
        if failed {
            report.failed_seeds.push(seed);
            if !so.keep_going {
                break;
            }
        }
    }
    Ok(report)
}

/// Runs one drawn plan on a fresh cluster.
pub fn run_plan(plan: &Plan, opts: &RunOptions) -> Result<SeedReport> {
    let tmp;
    let root = match &opts.work_dir {
        Some(d) => {
            let d = d.join(format!("seed-{}", plan.seed));
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let scenario = plan.scenario();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut run = Run::start(&scenario, opts, &root).await?;
        let mut s = Search::new(plan, &root);
        let result = s.execute(&mut run).await;
        run.stop();
        result
    })
}

/// What the client may expect of one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameExpect {
    /// The last acknowledged operation named this object.
    Names(usize),
    /// The last acknowledged operation deleted the name.
    Deleted,
    /// A failed operation, both sides of a partition, or an `rm` by ID of
    /// the object named.
    Unknown,
}

struct Search<'p> {
    plan: &'p Plan,
    names: HashMap<u32, NameExpect>,
    /// Objects a put by ID was tried for, and objects ever named.
    by_id: HashSet<usize>,
    named: HashSet<usize>,
    data: std::path::PathBuf,
    params: PutParams,
    ids: Vec<Option<ObjectId>>,
    expect: Vec<Option<Expect>>,
    /// During an even partition: which sides reached each object.
    touched: HashMap<usize, HashSet<bool>>,
    /// The cut-off side of the current partition, if even.
    even_side: Option<HashSet<usize>>,
    errors: Vec<String>,
    puts_acked: usize,
    puts_failed: usize,
    rms_acked: usize,
    faults: usize,
    bad_gets: usize,
    gets: usize,
}

impl<'p> Search<'p> {
    fn new(plan: &'p Plan, root: &Path) -> Search<'p> {
        Search {
            plan,
            names: HashMap::new(),
            by_id: HashSet::new(),
            named: HashSet::new(),
            data: root.join("data"),
            params: PutParams {
                codec: CodecKind::ReedSolomonSimd,
                k: plan.k,
                m: plan.m,
                segment_size: Some(plan.segment_size()),
                name: None,
                durability: None,
                reclaimable: false,
            },
            ids: vec![None; plan.objects.len()],
            expect: vec![None; plan.objects.len()],
            touched: HashMap::new(),
            even_side: None,
            errors: Vec::new(),
            puts_acked: 0,
            puts_failed: 0,
            rms_acked: 0,
            faults: 0,
            bad_gets: 0,
            gets: 0,
        }
    }

    fn note(&mut self, step: usize, e: String) {
        if self.errors.len() < 20 {
            self.errors.push(format!("step {step}: {e}"));
        }
    }

    fn touch(&mut self, object: usize, entry: usize) {
        if let Some(side) = &self.even_side {
            let s = side.contains(&entry);
            self.touched.entry(object).or_default().insert(s);
        }
    }

    /// The health watcher follows the objects expected present.
    fn sync_watch(&self, run: &Run<'_>) {
        let acked: Vec<Acked> = self
            .expect
            .iter()
            .enumerate()
            .filter(|(_, e)| **e == Some(Expect::Present))
            .filter_map(|(i, _)| {
                self.ids[i].map(|id| Acked {
                    index: i,
                    id,
                    size: 0,
                })
            })
            .collect();
        lock(&run.watch).acked = acked;
    }

    async fn put(&mut self, run: &mut Run<'_>, object: usize, entry: usize) -> Result<bool> {
        let path = self.data.join(format!("obj{object}-{entry}.bin"));
        let bytes = self.plan.bytes(object);
        tokio::fs::write(&path, &bytes).await?;
        let want = ObjectId::from_hash(blake3::hash(&bytes));
        self.ids[object] = Some(want);
        let res = match run.client(entry).await {
            Ok(c) => objects::put_file(c, &path, &self.params, &mut NoProgress)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        let _ = tokio::fs::remove_file(&path).await;
        match res {
            Ok(r) if r.object == want => Ok(true),
            Ok(r) => bail!(
                "put {object} acknowledged as {}, its BLAKE3 is {want}",
                r.object
            ),
            Err(e) => {
                run.clients.remove(&entry);
                Err(anyhow!("put {object} via node {entry}: {e}"))
            }
        }
    }

    /// `put --name search/kKEY`: the object stored to be named, then named.
    async fn name(
        &mut self,
        run: &mut Run<'_>,
        key: u32,
        object: usize,
        entry: usize,
    ) -> Result<()> {
        let path = self.data.join(format!("named{object}-{entry}.bin"));
        let bytes = self.plan.bytes(object);
        tokio::fs::write(&path, &bytes).await?;
        let want = ObjectId::from_hash(blake3::hash(&bytes));
        self.ids[object] = Some(want);
        let params = PutParams {
            reclaimable: true,
            ..self.params.clone()
        };
        let c = run.client(entry).await?;
        let r = objects::put_file(c, &path, &params, &mut NoProgress).await;
        let _ = tokio::fs::remove_file(&path).await;
        let r = r.map_err(|e| anyhow!("put: {e}"))?;
        if r.object != want {
            bail!("put acknowledged as {}, its BLAKE3 is {want}", r.object);
        }
        let req = ClientRequest::Name {
            bucket: BUCKET.into(),
            key: format!("k{key}"),
            object: want,
            size: r.size,
            etag: String::new(),
            content_type: None,
        };
        match objects::request(c, req).await {
            Ok(ClientResponse::Named) => Ok(()),
            other => bail!("name: {other:?}"),
        }
    }

    fn after_put(&mut self, i: usize, object: usize, ok: Result<bool>) {
        match ok {
            Ok(_) => {
                self.puts_acked += 1;
                self.expect[object] = Some(Expect::Present);
            }
            Err(e) => {
                self.puts_failed += 1;
                // A failed put never harms a stored object; anything else
                // may be half done.
                if self.expect[object] != Some(Expect::Present) {
                    self.expect[object] = Some(Expect::Unknown);
                }
                self.note(i, format!("{e:#}"));
            }
        }
    }

    async fn step(&mut self, run: &mut Run<'_>, i: usize, step: &Step) -> Result<()> {
        // Every running node on the client's side; both sides of an even
        // partition (its side is not marked as the minority).
        let entries = run.up();
        let via = |v: u32| entries.get(v as usize % entries.len().max(1)).copied();
        match step {
            Step::Put { object, via: v } => {
                let Some(e) = via(*v) else { return Ok(()) };
                self.by_id.insert(*object);
                self.touch(*object, e);
                let r = self.put(run, *object, e).await;
                self.after_put(i, *object, r);
            }
            Step::PutTwice {
                object,
                via: [a, b],
            } => {
                let (Some(ea), Some(eb)) = (via(*a), via(*b)) else {
                    return Ok(());
                };
                self.by_id.insert(*object);
                self.touch(*object, ea);
                self.touch(*object, eb);
                let path = self.data.join(format!("obj{object}.bin"));
                let bytes = self.plan.bytes(*object);
                tokio::fs::write(&path, &bytes).await?;
                let want = ObjectId::from_hash(blake3::hash(&bytes));
                self.ids[*object] = Some(want);
                // Two clients (two connections), one request each.
                let connect = |e: usize| {
                    Client::connect(run.nodes[e].addr.clone(), Some(&run.key), CLIENT_LIMIT)
                };
                let (ca, cb) = tokio::join!(connect(ea), connect(eb));
                let (ra, rb) = match (ca, cb) {
                    (Ok(ca), Ok(cb)) => {
                        let p = &self.params;
                        let (mut qa, mut qb) = (NoProgress, NoProgress);
                        let (ra, rb) = tokio::join!(
                            objects::put_file(&ca, &path, p, &mut qa),
                            objects::put_file(&cb, &path, p, &mut qb)
                        );
                        (ra.map_err(|e| e.to_string()), rb.map_err(|e| e.to_string()))
                    }
                    (a, b) => (
                        Err(format!("connect to {ea}: {:?}", a.err())),
                        Err(format!("connect to {eb}: {:?}", b.err())),
                    ),
                };
                let _ = tokio::fs::remove_file(&path).await;
                let ok = |r: &Result<PutReceipt, String>| matches!(r, Ok(x) if x.object == want);
                if ok(&ra) || ok(&rb) {
                    self.after_put(i, *object, Ok(true));
                } else {
                    self.after_put(
                        i,
                        *object,
                        Err(anyhow!("both puts failed: {ra:?} / {rb:?}")),
                    );
                }
                for (r, e) in [(&ra, ea), (&rb, eb)] {
                    if let Err(msg) = r {
                        self.note(
                            i,
                            format!("one of two puts of {object} via {e} failed: {msg}"),
                        );
                    }
                }
            }
            Step::Rm { object, via: v } => {
                let Some(e) = via(*v) else { return Ok(()) };
                let Some(id) = self.ids[*object] else {
                    return Ok(());
                };
                self.touch(*object, e);
                let res = match run.client(e).await {
                    Ok(c) => objects::request(c, ClientRequest::Remove { object: id }).await,
                    Err(err) => Err(ObjectError::Protocol(format!("{err:#}"))),
                };
                match res {
                    Ok(ClientResponse::Removed { .. }) => {
                        self.rms_acked += 1;
                        self.expect[*object] = Some(Expect::Removed);
                        // An `rm` by ID takes the bytes from under names.
                        for n in self.names.values_mut() {
                            if *n == NameExpect::Names(*object) {
                                *n = NameExpect::Unknown;
                            }
                        }
                    }
                    Err(ObjectError::Remote(r)) if r.kind == ErrorKind::NotFound => {
                        // Nothing was done. A present object must be found.
                        if self.expect[*object] == Some(Expect::Present) && self.even_side.is_none()
                        {
                            self.bad_gets += 1;
                            self.note(i, format!("rm {object} via {e}: not found, but present"));
                        }
                    }
                    other => {
                        run.clients.remove(&e);
                        self.expect[*object] = Some(Expect::Unknown);
                        self.note(i, format!("rm {object} via {e}: {other:?}"));
                    }
                }
            }
            Step::Get { object, via: v } => {
                let Some(e) = via(*v) else { return Ok(()) };
                let (Some(id), Some(Expect::Present)) = (self.ids[*object], self.expect[*object])
                else {
                    return Ok(());
                };
                let size = self.plan.len(*object);
                self.gets += 1;
                let a = Acked {
                    index: *object,
                    id,
                    size,
                };
                if let Err(err) = run.read_back(e, a).await {
                    if self.even_side.is_none() {
                        self.bad_gets += 1;
                    }
                    self.note(i, format!("get {object} via {e}: {err:#}"));
                }
            }
            Step::Name {
                key,
                object,
                via: v,
            } => {
                let Some(e) = via(*v) else { return Ok(()) };
                self.named.insert(*object);
                // The object exists again, whatever an earlier `rm` did.
                if self.expect[*object] == Some(Expect::Removed) {
                    self.expect[*object] = Some(Expect::Unknown);
                }
                let r = self.name(run, *key, *object, e).await;
                let after = match r {
                    Ok(()) if self.even_side.is_none() => NameExpect::Names(*object),
                    Ok(()) => NameExpect::Unknown,
                    Err(err) => {
                        run.clients.remove(&e);
                        self.note(i, format!("name k{key} = {object} via {e}: {err:#}"));
                        NameExpect::Unknown
                    }
                };
                self.names.insert(*key, after);
            }
            Step::Unname { key, via: v } => {
                let Some(e) = via(*v) else { return Ok(()) };
                let req = ClientRequest::Unname {
                    bucket: BUCKET.into(),
                    key: format!("k{key}"),
                };
                let res = match run.client(e).await {
                    Ok(c) => objects::request(c, req).await,
                    Err(err) => Err(ObjectError::Protocol(format!("{err:#}"))),
                };
                let after = match res {
                    Ok(ClientResponse::Unnamed) if self.even_side.is_none() => NameExpect::Deleted,
                    Ok(ClientResponse::Unnamed) => NameExpect::Unknown,
                    other => {
                        run.clients.remove(&e);
                        self.note(i, format!("unname k{key} via {e}: {other:?}"));
                        NameExpect::Unknown
                    }
                };
                self.names.insert(*key, after);
            }
            Step::Kill { nodes } => self.fault(run, Action::Kill, nodes.clone(), None).await?,
            Step::Restart { nodes } => {
                self.fault(run, Action::Restart, nodes.clone(), None)
                    .await?;
            }
            Step::Partition { side, even } => {
                self.fault(run, Action::Partition, side.clone(), None)
                    .await?;
                let side_set: HashSet<usize> = side.iter().copied().collect();
                // Held past `down_after`: each side sees the other down.
                let took = wait_split(run, &side_set).await?;
                if let Some(f) = run.faults.last_mut() {
                    f.detail = format!("sides saw each other down in {:.1} s", took.as_secs_f64());
                }
                if *even {
                    run.minority.clear();
                    self.even_side = Some(side_set);
                    self.touched.clear();
                }
            }
            Step::Heal => {
                if self.even_side.take().is_some() {
                    for (o, sides) in std::mem::take(&mut self.touched) {
                        if sides.len() > 1 {
                            self.expect[o] = Some(Expect::Unknown);
                        }
                    }
                }
                self.fault(run, Action::Heal, Vec::new(), None).await?;
            }
            Step::Corrupt { node, shards } => {
                self.fault(run, Action::Corrupt, vec![*node], Some(*shards))
                    .await?;
            }
            Step::Settle => {
                self.sync_watch(run);
                self.fault(run, Action::Settle, Vec::new(), None).await?;
                // The schedule counts on a settle: the faults after it
                // assume every stripe whole again. Say so here rather
                // than as a loss several faults later.
                // Without repair nothing returns redundancy: the final
                // check reports that, which is what `--no-repair` shows.
                if self.plan.repair && !run.settled() {
                    bail!(
                        "step {i}: full redundancy did not return within {} s of a settle (the faults so far are within m)",
                        self.plan.deadline_secs
                    );
                }
            }
        }
        self.sync_watch(run);
        Ok(())
    }

    async fn fault(
        &mut self,
        run: &mut Run<'_>,
        action: Action,
        nodes: Vec<usize>,
        shards: Option<usize>,
    ) -> Result<()> {
        self.faults += 1;
        let f = Fault {
            after: self.puts_acked + self.puts_failed,
            action,
            nodes,
            shards,
        };
        self.sync_watch(run);
        run.apply(&f, self.faults as u64).await
    }

    async fn execute(&mut self, run: &mut Run<'_>) -> Result<SeedReport> {
        let t0 = Instant::now();
        std::fs::create_dir_all(&self.data)?;
        run.set_watch_entry();
        let watcher = tokio::spawn(super::watch_health(
            run.watch.clone(),
            run.resolved.clone(),
            run.key.clone(),
        ));
        let pb = bar(run.opts.progress, self.plan.steps.len() as u64);
        let mut slowest = (0.0, String::new());
        for (i, step) in self.plan.steps.iter().enumerate() {
            pb.set_message(format!("{step:?}"));
            let t = Instant::now();
            self.step(run, i, step).await?;
            let took = t.elapsed().as_secs_f64();
            if took > slowest.0 {
                slowest = (took, format!("step {i}: {step:?}"));
            }
            pb.inc(1);
        }
        // The end of the faults: everyone back and connected.
        pb.set_message("healing and restarting every node");
        if !run.minority.is_empty() || self.even_side.is_some() {
            self.step(run, usize::MAX, &Step::Heal).await?;
        }
        let down: Vec<usize> = (0..run.nodes.len())
            .filter(|i| !run.nodes[*i].is_running())
            .collect();
        if !down.is_empty() {
            self.step(run, usize::MAX, &Step::Restart { nodes: down })
                .await?;
        }
        // A last fault marker starts the redundancy clock afresh.
        pb.set_message("waiting for full redundancy");
        self.sync_watch(run);
        {
            let mut w = lock(&run.watch);
            w.epoch += 1;
            w.healthy.clear();
            w.pending.push((usize::MAX, Instant::now()));
        }
        run.settle().await;
        let unresolved = lock(&run.watch).pending.len();
        lock(&run.watch).stop = true;
        let _ = watcher.await;

        pb.set_message("checking every object");
        let mut checks = Vec::new();
        let (mut lost, mut present, mut gone, mut lingering, mut unknown) = (0, 0, 0, 0, 0);
        // Present objects whose replicas must come to one version.
        let mut converging: Vec<(usize, ObjectId)> = Vec::new();
        let all: Vec<usize> = (0..run.nodes.len()).collect();
        for o in 0..self.plan.objects.len() {
            let (Some(id), Some(exp)) = (self.ids[o], self.expect[o]) else {
                continue;
            };
            let reader = all[o % all.len()];
            match exp {
                Expect::Present => {
                    present += 1;
                    let size = self.plan.len(o);
                    let a = Acked { index: o, id, size };
                    if let Err(e) = run.read_back(reader, a).await {
                        lost += 1;
                        self.note(usize::MAX, format!("final get {o} via {reader}: {e:#}"));
                    }
                    converging.push((o, id));
                }
                Expect::Removed => {
                    gone += 1;
                    let c = run.client(reader).await?;
                    match objects::stat(c, id, None).await {
                        Err(ObjectError::Remote(r)) if r.kind == ErrorKind::NotFound => {}
                        other => {
                            lingering += 1;
                            self.note(
                                usize::MAX,
                                format!("removed object {o} via {reader}: {other:?}"),
                            );
                        }
                    }
                }
                Expect::Unknown => unknown += 1,
            }
        }
        // Names: every collector gets a round or two with everyone back
        // (grace, wait, and its interval), then every name whose last
        // acknowledged operation named an object must still resolve to it
        // and read back; a reclaim that took a named object fails here.
        pb.set_message("checking every name");
        tokio::time::sleep(Duration::from_millis(RECLAIM_MS * 5)).await;
        let (mut names_present, mut names_lost, mut names_deleted) = (0, 0, 0);
        let mut keys: Vec<(u32, NameExpect)> = self.names.iter().map(|(k, v)| (*k, *v)).collect();
        keys.sort_unstable_by_key(|(k, _)| *k);
        for (key, exp) in keys {
            let reader = all[key as usize % all.len()];
            match exp {
                NameExpect::Names(o) => {
                    names_present += 1;
                    let Some(id) = self.ids[o] else { continue };
                    let req = ClientRequest::Resolve {
                        bucket: BUCKET.into(),
                        key: format!("k{key}"),
                    };
                    let c = run.client(reader).await?;
                    let resolved = match objects::request(c, req).await {
                        Ok(ClientResponse::Resolved { object, .. }) => Ok(object),
                        other => Err(format!("{other:?}")),
                    };
                    let a = Acked {
                        index: o,
                        id,
                        size: self.plan.len(o),
                    };
                    let problem = match resolved {
                        Ok(x) if x != id => Some(format!("resolves to {x}, not {id}")),
                        Ok(_) => run
                            .read_back(reader, a)
                            .await
                            .err()
                            .map(|e| format!("{e:#}")),
                        Err(e) => Some(e),
                    };
                    if let Some(p) = problem {
                        names_lost += 1;
                        self.note(
                            usize::MAX,
                            format!("name k{key} (object {o}) via {reader}: {p}"),
                        );
                    }
                }
                NameExpect::Deleted => names_deleted += 1,
                NameExpect::Unknown => {}
            }
        }
        // Objects only ever named, none of whose names can still point at
        // them: reclaimed unless a failure leaked a reference (allowed).
        let mut unnamed = 0;
        let mut reclaimed = 0;
        for &o in &self.named {
            let named_now = self
                .names
                .values()
                .any(|n| matches!(n, NameExpect::Names(x) if *x == o) || *n == NameExpect::Unknown);
            let (Some(id), false, false) = (self.ids[o], named_now, self.by_id.contains(&o)) else {
                continue;
            };
            unnamed += 1;
            let c = run.client(all[o % all.len()]).await?;
            if let Err(ObjectError::Remote(r)) = objects::stat(c, id, None).await {
                if r.kind == ErrorKind::NotFound {
                    reclaimed += 1;
                }
            }
        }
        checks.push(Check {
            name: "every name reads back the object it was last given".into(),
            passed: names_lost == 0,
            detail: format!(
                "{} of {names_present} read back; {names_deleted} deleted; \
                 {reclaimed} of {unnamed} objects no name can refer to reclaimed",
                names_present - names_lost
            ),
        });

        // Replicas that lag are refreshed by later repair rounds: give
        // them a bounded time after the faults, then count what is split.
        pb.set_message("waiting for one manifest version per object");
        let t = Instant::now();
        let mut split = Vec::new();
        loop {
            split.clear();
            for &(o, id) in &converging {
                match manifest_versions(run, id).await {
                    Ok(n) if n <= 1 => {}
                    Ok(n) => split.push(format!("object {o}: {n} manifest versions")),
                    Err(e) => split.push(format!("object {o}: {e:#}")),
                }
            }
            if split.is_empty() || t.elapsed() > MANIFESTS_CONVERGE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let converge_s = t.elapsed().as_secs_f64();
        for e in &split {
            self.note(usize::MAX, e.clone());
        }
        let split = split.len();
        pb.finish_and_clear();
        checks.push(Check {
            name: "every present object reads back byte-identical".into(),
            passed: lost == 0,
            detail: format!("{} of {present} read back", present - lost),
        });
        checks.push(Check {
            name: format!(
                "every replica of a present object holds one manifest version within {} s",
                MANIFESTS_CONVERGE.as_secs()
            ),
            passed: split == 0,
            detail: format!("{split} objects with diverging replicas after {converge_s:.1} s"),
        });
        checks.push(Check {
            name: "every removed object is gone".into(),
            passed: lingering == 0,
            detail: format!("{lingering} of {gone} still found"),
        });
        checks.push(Check {
            name: format!(
                "full redundancy within {} s after the faults",
                self.plan.deadline_secs
            ),
            passed: unresolved == 0,
            detail: if unresolved == 0 {
                "every present object healthy".into()
            } else {
                "some present object never became healthy".into()
            },
        });
        checks.push(Check {
            name: "no get or rm of a present object failed outside an even partition".into(),
            passed: self.bad_gets == 0,
            detail: format!("{} of {} failed", self.bad_gets, self.gets),
        });
        let passed = checks.iter().all(|c| c.passed);
        Ok(SeedReport {
            seed: self.plan.seed,
            nodes: self.plan.nodes,
            k: self.plan.k,
            m: self.plan.m,
            steps: self.plan.steps.len(),
            puts_acked: self.puts_acked,
            puts_failed: self.puts_failed,
            rms_acked: self.rms_acked,
            faults: self.faults,
            present,
            removed: gone,
            unknown,
            checks,
            errors: std::mem::take(&mut self.errors),
            passed,
            elapsed_s: t0.elapsed().as_secs_f64(),
            slowest_step: slowest.1,
            slowest_step_s: slowest.0,
        })
    }
}

const CLIENT_LIMIT: Duration = Duration::from_secs(10);

/// Waits until every running node of `side` sees every running node off
/// it as down, and the other way round.
async fn wait_split(run: &mut Run<'_>, side: &HashSet<usize>) -> Result<Duration> {
    let running: Vec<usize> = (0..run.nodes.len())
        .filter(|i| run.nodes[*i].is_running())
        .collect();
    run.wait_views(&running, "saw each other down", |i, j, state| {
        side.contains(&i) == side.contains(&j) || matches!(state, Some(MemberState::Down) | None)
    })
    .await
}

/// How many distinct manifest versions of `object` the nodes hold.
async fn manifest_versions(run: &mut Run<'_>, object: ObjectId) -> Result<usize> {
    let mut versions = HashSet::new();
    for i in 0..run.nodes.len() {
        let c = run.client(i).await?;
        let req = ControlRequest::ManifestStates {
            objects: vec![object],
        };
        match c.control(req).await {
            Ok(ControlResponse::ManifestStates { states }) => {
                for s in states {
                    if let Some(v) = s.held {
                        versions.insert(v);
                    }
                }
            }
            Ok(other) => bail!("node {i} answered manifest states with {other:?}"),
            Err(e) => bail!("manifest states of node {i}: {e}"),
        }
    }
    Ok(versions.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_one_plan() {
        let a = Plan::draw(3, 60);
        let b = Plan::draw(3, 60);
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.objects, b.objects);
        assert_ne!(Plan::draw(4, 60).steps, a.steps);
    }

    #[test]
    fn faults_stay_within_m_and_objects_share_segments() {
        let mut shared = 0;
        for seed in 0..200 {
            let p = Plan::draw(seed, 60);
            let mut st = FaultState::default();
            for step in &p.steps {
                match step {
                    Step::Kill { nodes } => st.killed.extend(nodes),
                    Step::Restart { nodes } => nodes.iter().for_each(|x| {
                        st.killed.remove(x);
                    }),
                    Step::Partition { side, even } => {
                        assert!(st.partition.is_none());
                        if *even {
                            assert!(st.killed.is_empty() && st.corrupted.is_empty());
                            assert_eq!(side.len() * 2, p.nodes);
                        }
                        st.partition = Some((side.iter().copied().collect(), *even));
                    }
                    Step::Heal => st.partition = None,
                    Step::Corrupt { node, .. } => {
                        assert!(!st.even());
                        st.corrupted.insert(*node);
                    }
                    Step::Settle => st.corrupted.clear(),
                    _ => {}
                }
                assert!(
                    st.unavailable() <= usize::from(p.m),
                    "seed {seed}: {step:?}"
                );
            }
            let seg = p.segment_size() as usize;
            for (i, c) in p.objects.iter().enumerate() {
                let b = p.bytes(i);
                if let Content::Extends { base, .. } = c {
                    let base = p.bytes(*base);
                    let whole = base.len() / seg * seg;
                    assert_eq!(&b[..whole], &base[..whole]);
                    shared += usize::from(whole > 0);
                }
                if let Content::Zeros { zeros, .. } = c {
                    assert!(b[..*zeros as usize * seg].iter().all(|&x| x == 0));
                    shared += 1;
                }
                assert!(!b.is_empty());
                assert_eq!(b.len() as u64, p.len(i));
            }
        }
        assert!(shared > 100, "{shared}");
    }

    #[test]
    fn every_kind_of_step_is_drawn() {
        let mut seen = HashSet::new();
        for seed in 0..50 {
            for s in Plan::draw(seed, 60).steps {
                let kind = match s {
                    Step::Partition { even, .. } => format!("partition-{even}"),
                    other => format!("{other:?}")
                        .split([' ', '{'])
                        .next()
                        .unwrap_or("")
                        .into(),
                };
                seen.insert(kind);
            }
        }
        for k in [
            "Put",
            "PutTwice",
            "Rm",
            "Get",
            "Kill",
            "Restart",
            "partition-true",
            "partition-false",
            "Heal",
            "Corrupt",
            "Settle",
        ] {
            assert!(seen.contains(k), "{k} never drawn: {seen:?}");
        }
    }
}
