//! Property tests of the release decision (`repair::decide_release`) over
//! random histories of one object: uploads, re-uploads, removals and
//! holder changes, with replicas that answer or not. The invariant: a
//! release is sent only for a copy that the object's true current manifest
//! does not place on that node, whatever subset of replicas answered.

use dynostore_protocol::erasure::{CodecKind, Geometry};
use dynostore_protocol::manifest::{Generation, Manifest, Metadata, ShardSlot};
use dynostore_protocol::repair::{decide_release, Confirmed, ReleaseDecision};
use dynostore_protocol::{NodeId, ObjectId, ShardId};
use proptest::prelude::*;

fn node(i: u8) -> NodeId {
    NodeId::from_bytes(vec![0, 36, 8, 1, 18, 32, i]).unwrap()
}

const NODES: u8 = 6;

/// One step of an object's history.
#[derive(Debug, Clone)]
enum Step {
    /// A new upload (generation `ms`) placed by `seed`.
    Put { seed: u64 },
    /// A repair or a move: shard `idx` of segment `seg` goes to `to`.
    Move { seg: usize, idx: usize, to: u8 },
    /// `rm` of the current generation.
    Remove,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u64>().prop_map(|seed| Step::Put { seed }),
        (0usize..2, 0usize..3, 0..NODES).prop_map(|(seg, idx, to)| Step::Move { seg, idx, to }),
        Just(Step::Remove),
    ]
}

fn upload(ms: u64, seed: u64) -> Manifest {
    let g = Geometry::new(CodecKind::ReedSolomonSimd, 2, 1, 100).unwrap();
    let object = ObjectId::of(b"one object");
    let mut m = Manifest::new(object, 200, g, Metadata::default());
    m.generation = Generation { ms, nonce: seed };
    for s in 0..2u64 {
        // Shared bytes: every stripe's shards are alike (a zero segment).
        let shards: Vec<_> = (0..3u64)
            .map(|i| {
                let holder = ((seed >> (8 * (s * 3 + i))) % u64::from(NODES)) as u8;
                (ShardId::of(b"zero shard"), node(holder))
            })
            .collect();
        m.push_segment(100, 50, &shards);
    }
    m
}

/// What a history left: every manifest that was current at some point (in
/// order), the one current at the end, the removed generations, and every
/// release a replica made due.
struct Replayed {
    history: Vec<Manifest>,
    current: Option<Manifest>,
    removed: Vec<Generation>,
    releases: Vec<(NodeId, ShardSlot)>,
}

fn replay(steps: &[Step]) -> Replayed {
    let mut history: Vec<Manifest> = Vec::new();
    let mut current: Option<Manifest> = None;
    let mut removed = Vec::new();
    let mut releases = Vec::new();
    for (t, s) in steps.iter().enumerate() {
        match s {
            Step::Put { seed } => {
                let new = upload(t as u64 + 1, *seed);
                if let Some(old) = current.take() {
                    releases.extend(
                        new.released_from(&old)
                            .into_iter()
                            .map(|(n, sl)| (n.clone(), sl)),
                    );
                }
                history.push(new.clone());
                current = Some(new);
            }
            Step::Move { seg, idx, to } => {
                if let Some(old) = current.clone() {
                    let mut new = old.clone();
                    new.set_holder(*seg, *idx, &node(*to));
                    new.revision += 1;
                    releases.extend(
                        new.released_from(&old)
                            .into_iter()
                            .map(|(n, sl)| (n.clone(), sl)),
                    );
                    history.push(new.clone());
                    current = Some(new);
                }
            }
            Step::Remove => {
                if let Some(old) = current.take() {
                    removed.push(old.generation);
                    releases.extend(old.slots().map(|(n, sl)| (n.clone(), sl)));
                }
            }
        }
    }
    Replayed {
        history,
        current,
        removed,
        releases,
    }
}

proptest! {
    #[test]
    fn no_release_removes_a_copy_the_current_manifest_places(
        steps in proptest::collection::vec(step(), 1..12),
        // Which replicas answered: the newest answer seen, as an index
        // into the history counted back from the end (0 = current).
        lag in 0usize..4,
        all_answered in any::<bool>(),
        tombstones_seen in any::<bool>(),
    ) {
        let Replayed { history, current, removed, releases } = replay(&steps);
        let truth = current.as_ref();
        // What the replicas that answered told. With every replica
        // answering, the newest is the truth; otherwise any older state.
        let newest = if all_answered {
            truth.cloned()
        } else {
            history.len().checked_sub(1 + lag).and_then(|i| history.get(i)).cloned()
        };
        let c = Confirmed {
            newest,
            removed: if tombstones_seen { removed.clone() } else { Vec::new() },
            complete: all_answered,
        };
        for (n, slot) in &releases {
            let d = decide_release(Some(&c), n, slot);
            if d == ReleaseDecision::Send {
                prop_assert!(
                    !truth.is_some_and(|t| t.places(n, slot)),
                    "sent a release of a copy the current manifest places: {slot:?} on {n}"
                );
            }
        }
        // With full knowledge nothing stays pending forever: every release
        // either goes or is dropped.
        if all_answered {
            for (n, slot) in &releases {
                prop_assert_ne!(decide_release(Some(&c), n, slot), ReleaseDecision::Wait);
            }
        }
    }
}

#[test]
fn unanswered_replicas_block_a_release() {
    let m = upload(1, 7);
    let (n, slot) = m.slots().next().map(|(n, s)| (n.clone(), s)).unwrap();
    let mut other = upload(2, 9);
    other.segments[0].shards[0].holder = other.holder_index(&node(99));
    let c = Confirmed {
        newest: Some(other),
        removed: Vec::new(),
        complete: false,
    };
    assert_eq!(decide_release(Some(&c), &n, &slot), ReleaseDecision::Wait);
    assert_eq!(decide_release(None, &n, &slot), ReleaseDecision::Wait);
    let c = Confirmed {
        newest: None,
        removed: vec![m.generation],
        complete: false,
    };
    assert_eq!(decide_release(Some(&c), &n, &slot), ReleaseDecision::Send);
    let c = Confirmed {
        newest: Some(m.clone()),
        removed: Vec::new(),
        complete: true,
    };
    assert_eq!(decide_release(Some(&c), &n, &slot), ReleaseDecision::Drop);
}
