//! Property tests of segmenting and erasure coding over both codecs.
//!
//! The oracle is the original bytes: any erasure of at most m shards per
//! segment must decode to them, and an erasure of m + 1 must fail with an
//! error that names exactly the erased indices.

use dynostore_protocol::erasure::{decode, reconstruct_all, CodecKind, Encoder, Geometry};
use dynostore_protocol::ErasureError;
use proptest::prelude::*;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Encodes an object segment by segment; returns each segment's shards.
fn encode_object(g: Geometry, obj: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut enc = Encoder::new(g).unwrap();
    obj.chunks(g.segment_size as usize)
        .map(|seg| {
            let e = enc.encode(seg).unwrap();
            assert_eq!(e.len(), g.n());
            assert!(e.iter().all(|s| s.len() == g.shard_size(seg.len() as u64)));
            e.to_vecs()
        })
        .collect()
}

/// Decodes with the shards at `erased` removed from every segment.
fn decode_object(
    g: Geometry,
    size: u64,
    segments: &[Vec<Vec<u8>>],
    erased: &[usize],
) -> Result<Vec<u8>, ErasureError> {
    assert_eq!(segments.len() as u64, g.segment_count(size));
    let mut out = Vec::new();
    for (i, shards) in segments.iter().enumerate() {
        let view: Vec<Option<&[u8]>> = shards
            .iter()
            .enumerate()
            .map(|(j, s)| (!erased.contains(&j)).then_some(&s[..]))
            .collect();
        out.extend(decode(g, g.segment_len(size, i as u64), &view)?);
    }
    Ok(out)
}

/// The sizes that break off-by-one errors: 0, 1, shard size -1/0/+1,
/// segment size -1/0/+1, several segments.
fn interesting_sizes(g: Geometry) -> Vec<usize> {
    let seg = g.segment_size as usize;
    let shard = g.shard_size(seg as u64);
    let mut v = vec![0, 1, shard.saturating_sub(1), shard, shard + 1];
    v.extend([seg - 1, seg, seg + 1, 3 * seg + shard / 2 + 1]);
    v.sort_unstable();
    v.dedup();
    v
}

fn erasure_set(n: usize, count: usize, seed: u64) -> Vec<usize> {
    // A seeded choice of `count` distinct indices in 0..n.
    let mut idx: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        idx.swap(i, (x % (i as u64 + 1)) as usize);
    }
    idx.truncate(count);
    idx.sort_unstable();
    idx
}

fn codec() -> impl Strategy<Value = CodecKind> {
    prop_oneof![
        Just(CodecKind::ReedSolomonSimd),
        Just(CodecKind::ReedSolomonNovelpoly)
    ]
}

#[test]
fn interesting_sizes_survive_any_m_erasures() {
    for codec in CodecKind::ALL {
        for (k, m, seg) in [
            (4u16, 2u16, 4096u32),
            (10, 4, 1000),
            (1, 1, 64),
            (3, 5, 999),
        ] {
            let g = Geometry::new(codec, k, m, seg).unwrap();
            for size in interesting_sizes(g) {
                let obj = data(size, size as u64);
                let segments = encode_object(g, &obj);
                let n = g.n();
                // Every erasure of exactly m shards for small n, seeded ones otherwise.
                for seed in 0..6 {
                    let erased = erasure_set(n, m as usize, seed);
                    let back = decode_object(g, size as u64, &segments, &erased).unwrap();
                    assert_eq!(
                        back, obj,
                        "{codec} {k}+{m} seg {seg} size {size} erased {erased:?}"
                    );
                }
                if size > 0 {
                    let erased = erasure_set(n, m as usize + 1, 99);
                    let err = decode_object(g, size as u64, &segments, &erased).unwrap_err();
                    assert_eq!(
                        err,
                        ErasureError::NotEnoughShards {
                            needed: k as usize,
                            present: n - erased.len(),
                            missing: erased.clone(),
                        }
                    );
                    assert!(err.to_string().contains(&format!("{erased:?}")));
                }
            }
        }
    }
}

#[test]
fn wide_stripes_64_plus_64() {
    for codec in CodecKind::ALL {
        let g = Geometry::new(codec, 64, 64, 64 * 1024).unwrap();
        let obj = data(100_000, 7);
        let segments = encode_object(g, &obj);
        let erased = erasure_set(128, 64, 3);
        assert_eq!(
            decode_object(g, obj.len() as u64, &segments, &erased).unwrap(),
            obj
        );
        let erased = erasure_set(128, 65, 4);
        assert!(matches!(
            decode_object(g, obj.len() as u64, &segments, &erased),
            Err(ErasureError::NotEnoughShards {
                needed: 64,
                present: 63,
                ..
            })
        ));
    }
}

#[test]
fn reconstruct_all_rebuilds_parity_and_data_exactly() {
    for codec in CodecKind::ALL {
        let g = Geometry::new(codec, 4, 2, 4096).unwrap();
        let obj = data(4000, 11);
        let shards = &encode_object(g, &obj)[0];
        for erased in [vec![0, 5], vec![4, 5], vec![1, 2]] {
            let view: Vec<Option<&[u8]>> = shards
                .iter()
                .enumerate()
                .map(|(j, s)| (!erased.contains(&j)).then_some(&s[..]))
                .collect();
            let rebuilt = reconstruct_all(g, 4000, &view).unwrap();
            assert_eq!(&rebuilt, shards);
        }
    }
}

#[test]
fn shard_of_wrong_size_is_refused_not_decoded() {
    let g = Geometry::new(CodecKind::ReedSolomonSimd, 4, 2, 4096).unwrap();
    let obj = data(4096, 1);
    let mut shards = encode_object(g, &obj).remove(0);
    shards[2].pop();
    let view: Vec<Option<&[u8]>> = shards.iter().map(|s| Some(&s[..])).collect();
    assert!(matches!(
        decode(g, 4096, &view),
        Err(ErasureError::ShardSize { index: 2, .. })
    ));
    assert!(matches!(
        decode(g, 4096, &view[..5]),
        Err(ErasureError::ShardCount {
            expected: 6,
            found: 5
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_k_m_any_erasure_of_at_most_m(
        codec in codec(),
        k in 1u16..=12,
        m in 1u16..=6,
        seg in 1u32..5000,
        size in 0usize..20_000,
        seed in any::<u64>(),
        lose in 0usize..=6,
    ) {
        let g = Geometry::new(codec, k, m, seg).unwrap();
        let obj = data(size, seed);
        let segments = encode_object(g, &obj);
        let lose = lose.min(m as usize);
        let erased = erasure_set(g.n(), lose, seed);
        prop_assert_eq!(decode_object(g, size as u64, &segments, &erased).unwrap(), obj);
        if size > 0 {
            let erased = erasure_set(g.n(), m as usize + 1, seed ^ 1);
            let is_not_enough = matches!(
                decode_object(g, size as u64, &segments, &erased),
                Err(ErasureError::NotEnoughShards { .. })
            );
            prop_assert!(is_not_enough);
        }
    }

    #[test]
    fn decode_of_garbage_shards_never_panics(
        codec in codec(),
        k in 1u16..=8,
        m in 1u16..=4,
        len in 1u64..3000,
        shards in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..800)), 0..14),
    ) {
        let g = Geometry::new(codec, k, m, 4096).unwrap();
        let view: Vec<Option<&[u8]>> = shards.iter().map(|s| s.as_deref()).collect();
        let _ = decode(g, len, &view);
    }
}
