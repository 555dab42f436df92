//! Segmenting and erasure coding.
//!
//! An object of `size` bytes is cut into segments of `segment_size` bytes
//! (the last one shorter; an empty object has no segment). Each segment is
//! encoded independently into `k` data shards and `m` parity shards of one
//! shard size, so that any `k` of the `k + m` shards give the segment back.
//! Encoding in independent segments keeps memory bounded and the working set
//! in cache (FIGURES.md: 1 MiB stripes encode twice as fast as one huge one).
//!
//! Everything needed to decode is recorded in the [`Geometry`] and the
//! segment's length, never guessed: the shard size is a pure function of the
//! codec, `k` and the segment length ([`Geometry::shard_size`]), and the
//! manifest stores it beside the length so a reader can check both.
//!
//! Two codecs are available behind [`CodecKind`]:
//! - `reed-solomon-simd` (default): systematic Reed-Solomon over GF(2^16)
//!   with runtime SIMD detection. Data shard `i` is bytes
//!   `[i * shard_size, (i + 1) * shard_size)` of the segment, zero-padded at
//!   the end; shard sizes are even.
//! - `reed-solomon-novelpoly`: the novel-polynomial-basis code. It rounds `k`
//!   down and `k + m` up to powers of two internally, so its shards are
//!   bigger; it is kept as a selectable alternative and benchmarked beside
//!   the default.
//!
//! The decoding contract is the same for both: given at least `k` shards of
//! the right size, the segment comes back; with fewer, the error names the
//! missing shard indices. (novelpoly could sometimes do with fewer; we do not
//! rely on it, so that the durability arithmetic is the same for both.)

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest number of data shards, and of parity shards, in one stripe.
pub const MAX_DATA_SHARDS: u16 = 128;
/// See [`MAX_DATA_SHARDS`].
pub const MAX_PARITY_SHARDS: u16 = 128;
/// Largest segment: bounds the memory one segment in flight can take.
pub const MAX_SEGMENT_SIZE: u32 = 64 << 20;
/// Default segment size: with k = 4 this gives 1 MiB shards, the stripe size
/// at which the default codec is fastest.
pub const DEFAULT_SEGMENT_SIZE: u32 = 4 << 20;

/// Which erasure code a manifest was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CodecKind {
    /// `reed-solomon-simd` 3.x (default).
    #[default]
    ReedSolomonSimd,
    /// `reed-solomon-novelpoly` 2.x.
    ReedSolomonNovelpoly,
}

impl CodecKind {
    pub const ALL: [CodecKind; 2] = [CodecKind::ReedSolomonSimd, CodecKind::ReedSolomonNovelpoly];

    pub fn name(self) -> &'static str {
        match self {
            CodecKind::ReedSolomonSimd => "reed-solomon-simd",
            CodecKind::ReedSolomonNovelpoly => "reed-solomon-novelpoly",
        }
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CodecKind {
    type Err = ErasureError;
    fn from_str(s: &str) -> Result<Self, ErasureError> {
        match s {
            "reed-solomon-simd" | "rs-simd" | "simd" => Ok(CodecKind::ReedSolomonSimd),
            "reed-solomon-novelpoly" | "novelpoly" => Ok(CodecKind::ReedSolomonNovelpoly),
            other => Err(ErasureError::UnknownCodec(other.to_string())),
        }
    }
}

/// What went wrong while validating a geometry, encoding or decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    #[error("k (data shards) must be 1 to {MAX_DATA_SHARDS}, got {0}")]
    DataShards(u16),
    #[error("m (parity shards) must be 1 to {MAX_PARITY_SHARDS}, got {0}")]
    ParityShards(u16),
    #[error("segment size must be 1 to {MAX_SEGMENT_SIZE} bytes, got {0}")]
    SegmentSize(u32),
    #[error("unknown codec {0:?}: use reed-solomon-simd or reed-solomon-novelpoly")]
    UnknownCodec(String),
    #[error("segment of {len} bytes is empty or larger than the segment size {segment_size}")]
    SegmentLength { len: u64, segment_size: u32 },
    #[error("expected {expected} shards (k + m), got {found}")]
    ShardCount { expected: usize, found: usize },
    #[error("shard {index} is {found} bytes, expected {expected}")]
    ShardSize {
        index: usize,
        expected: usize,
        found: usize,
    },
    #[error("need {needed} shards to decode, have {present}; missing shard indices {missing:?}")]
    NotEnoughShards {
        needed: usize,
        present: usize,
        missing: Vec<usize>,
    },
    #[error("{codec} failed: {reason}")]
    Codec { codec: CodecKind, reason: String },
}

/// The recorded shape of an object's stripes: codec, k, m and segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Geometry {
    pub codec: CodecKind,
    pub k: u16,
    pub m: u16,
    pub segment_size: u32,
}

impl Geometry {
    /// A validated geometry.
    pub fn new(codec: CodecKind, k: u16, m: u16, segment_size: u32) -> Result<Self, ErasureError> {
        let g = Geometry {
            codec,
            k,
            m,
            segment_size,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks the limits; a geometry read from untrusted bytes goes through here.
    pub fn validate(&self) -> Result<(), ErasureError> {
        if self.k == 0 || self.k > MAX_DATA_SHARDS {
            return Err(ErasureError::DataShards(self.k));
        }
        if self.m == 0 || self.m > MAX_PARITY_SHARDS {
            return Err(ErasureError::ParityShards(self.m));
        }
        if self.segment_size == 0 || self.segment_size > MAX_SEGMENT_SIZE {
            return Err(ErasureError::SegmentSize(self.segment_size));
        }
        Ok(())
    }

    /// Total shards per segment, `k + m`.
    pub fn n(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }

    /// Number of segments of an object of `object_size` bytes.
    pub fn segment_count(&self, object_size: u64) -> u64 {
        object_size.div_ceil(u64::from(self.segment_size))
    }

    /// Length of segment `idx` of an object of `object_size` bytes (0 past the end).
    pub fn segment_len(&self, object_size: u64, idx: u64) -> u64 {
        let seg = u64::from(self.segment_size);
        let start = idx.saturating_mul(seg);
        object_size.saturating_sub(start).min(seg)
    }

    /// Byte offset of segment `idx` within the object.
    pub fn segment_offset(&self, idx: u64) -> u64 {
        idx.saturating_mul(u64::from(self.segment_size))
    }

    /// Size of every shard of a segment of `segment_len` bytes (0 for an
    /// empty segment, which is never encoded).
    pub fn shard_size(&self, segment_len: u64) -> usize {
        if segment_len == 0 {
            return 0;
        }
        let len = usize::try_from(segment_len).unwrap_or(usize::MAX);
        match self.codec {
            CodecKind::ReedSolomonSimd => {
                let per = len.div_ceil(usize::from(self.k));
                per + (per & 1)
            }
            CodecKind::ReedSolomonNovelpoly => {
                let k_po2 = novelpoly_k(self.k);
                let symbols = len.div_ceil(2);
                symbols.div_ceil(k_po2) * 2
            }
        }
    }

    fn check_segment_len(&self, len: u64) -> Result<(), ErasureError> {
        if len == 0 || len > u64::from(self.segment_size) {
            return Err(ErasureError::SegmentLength {
                len,
                segment_size: self.segment_size,
            });
        }
        Ok(())
    }
}

impl Default for Geometry {
    /// k = 4, m = 2, 4 MiB segments, reed-solomon-simd.
    fn default() -> Self {
        Geometry {
            codec: CodecKind::ReedSolomonSimd,
            k: 4,
            m: 2,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

/// novelpoly rounds k down to a power of two.
fn novelpoly_k(k: u16) -> usize {
    let k = usize::from(k.max(1));
    1 << (usize::BITS - 1 - k.leading_zeros())
}

/// The `k + m` shards of one encoded segment. Data shards that lie wholly
/// inside the segment are borrowed from it, not copied.
#[derive(Debug)]
pub struct EncodedSegment<'a> {
    shard_size: usize,
    shards: Vec<ShardBytes<'a>>,
}

#[derive(Debug)]
enum ShardBytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl EncodedSegment<'_> {
    pub fn shard_size(&self) -> usize {
        self.shard_size
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Shard `idx` (`0..k` data, `k..k+m` parity).
    pub fn shard(&self, idx: usize) -> &[u8] {
        match &self.shards[idx] {
            ShardBytes::Borrowed(b) => b,
            ShardBytes::Owned(v) => v,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.shards.len()).map(|i| self.shard(i))
    }

    /// Owned copies of every shard.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }
}

/// A reusable encoder for one geometry; keeps the codec's work buffers
/// between segments.
pub struct Encoder {
    geometry: Geometry,
    simd: Option<reed_solomon_simd::ReedSolomonEncoder>,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(geometry: Geometry) -> Result<Self, ErasureError> {
        geometry.validate()?;
        Ok(Encoder {
            geometry,
            simd: None,
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Frees the codec's work buffers (about the parity of one segment);
    /// the next [`Encoder::encode`] allocates them again. For callers that
    /// account for memory and are about to wait without it.
    pub fn release_buffers(&mut self) {
        self.simd = None;
    }

    /// Encodes one segment (1 to `segment_size` bytes) into `k + m` shards.
    pub fn encode<'a>(&mut self, segment: &'a [u8]) -> Result<EncodedSegment<'a>, ErasureError> {
        let g = self.geometry;
        g.check_segment_len(segment.len() as u64)?;
        let shard_size = g.shard_size(segment.len() as u64);
        match g.codec {
            CodecKind::ReedSolomonSimd => self.encode_simd(segment, shard_size),
            CodecKind::ReedSolomonNovelpoly => {
                let params = novelpoly_params(g)?;
                let shards = params
                    .make_encoder()
                    .encode::<reed_solomon_novelpoly::WrappedShard>(segment)
                    .map_err(|e| codec_err(g.codec, e))?;
                let shards: Vec<ShardBytes<'a>> = shards
                    .into_iter()
                    .map(|s| ShardBytes::Owned(s.into_inner()))
                    .collect();
                debug_assert!(shards.iter().all(|s| match s {
                    ShardBytes::Owned(v) => v.len() == shard_size,
                    ShardBytes::Borrowed(_) => false,
                }));
                Ok(EncodedSegment { shard_size, shards })
            }
        }
    }

    fn encode_simd<'a>(
        &mut self,
        segment: &'a [u8],
        shard_size: usize,
    ) -> Result<EncodedSegment<'a>, ErasureError> {
        let g = self.geometry;
        let (k, m) = (usize::from(g.k), usize::from(g.m));
        let enc = match &mut self.simd {
            Some(enc) => {
                enc.reset(k, m, shard_size)
                    .map_err(|e| codec_err(g.codec, e))?;
                enc
            }
            slot @ None => slot.insert(
                reed_solomon_simd::ReedSolomonEncoder::new(k, m, shard_size)
                    .map_err(|e| codec_err(g.codec, e))?,
            ),
        };
        let mut shards = Vec::with_capacity(k + m);
        for i in 0..k {
            let start = (i * shard_size).min(segment.len());
            let end = ((i + 1) * shard_size).min(segment.len());
            if end - start == shard_size {
                shards.push(ShardBytes::Borrowed(&segment[start..end]));
            } else {
                let mut padded = vec![0u8; shard_size];
                padded[..end - start].copy_from_slice(&segment[start..end]);
                shards.push(ShardBytes::Owned(padded));
            }
        }
        for s in &shards {
            let bytes: &[u8] = match s {
                ShardBytes::Borrowed(b) => b,
                ShardBytes::Owned(v) => v,
            };
            enc.add_original_shard(bytes)
                .map_err(|e| codec_err(g.codec, e))?;
        }
        let result = enc.encode().map_err(|e| codec_err(g.codec, e))?;
        shards.extend(
            result
                .recovery_iter()
                .map(|p| ShardBytes::Owned(p.to_vec())),
        );
        Ok(EncodedSegment { shard_size, shards })
    }
}

/// Rebuilds a segment of `segment_len` bytes from its shards (`None` where a
/// shard is missing). Needs at least `k` shards, each of the geometry's
/// shard size.
pub fn decode(
    geometry: Geometry,
    segment_len: u64,
    shards: &[Option<&[u8]>],
) -> Result<Vec<u8>, ErasureError> {
    let (present, shard_size) = check_shards(geometry, segment_len, shards)?;
    let len = segment_len as usize;
    let k = usize::from(geometry.k);
    match geometry.codec {
        CodecKind::ReedSolomonSimd => {
            let mut out = Vec::with_capacity(k * shard_size);
            if shards[..k].iter().all(Option::is_some) {
                for s in shards[..k].iter().flatten() {
                    out.extend_from_slice(s);
                }
            } else {
                decode_simd_into(geometry, shard_size, shards, &mut out)?;
            }
            out.truncate(len);
            Ok(out)
        }
        CodecKind::ReedSolomonNovelpoly => {
            let _ = present;
            let params = novelpoly_params(geometry)?;
            let received = shards
                .iter()
                .map(|s| s.map(|s| reed_solomon_novelpoly::WrappedShard::new(s.to_vec())))
                .collect();
            let mut out = params
                .make_encoder()
                .reconstruct(received)
                .map_err(|e| codec_err(geometry.codec, e))?;
            if out.len() < len {
                return Err(ErasureError::Codec {
                    codec: geometry.codec,
                    reason: format!("reconstructed {} bytes, expected {len}", out.len()),
                });
            }
            out.truncate(len);
            Ok(out)
        }
    }
}

/// Rebuilds the missing shards (data and parity) of a segment, for repair.
/// Returns every shard, present ones copied.
pub fn reconstruct_all(
    geometry: Geometry,
    segment_len: u64,
    shards: &[Option<&[u8]>],
) -> Result<Vec<Vec<u8>>, ErasureError> {
    check_shards(geometry, segment_len, shards)?;
    let segment = decode(geometry, segment_len, shards)?;
    let mut enc = Encoder::new(geometry)?;
    Ok(enc.encode(&segment)?.to_vecs())
}

fn check_shards(
    geometry: Geometry,
    segment_len: u64,
    shards: &[Option<&[u8]>],
) -> Result<(usize, usize), ErasureError> {
    geometry.validate()?;
    geometry.check_segment_len(segment_len)?;
    let n = geometry.n();
    if shards.len() != n {
        return Err(ErasureError::ShardCount {
            expected: n,
            found: shards.len(),
        });
    }
    let shard_size = geometry.shard_size(segment_len);
    let mut present = 0;
    let mut missing = Vec::new();
    for (index, s) in shards.iter().enumerate() {
        match s {
            Some(s) if s.len() != shard_size => {
                return Err(ErasureError::ShardSize {
                    index,
                    expected: shard_size,
                    found: s.len(),
                })
            }
            Some(_) => present += 1,
            None => missing.push(index),
        }
    }
    let needed = usize::from(geometry.k);
    if present < needed {
        return Err(ErasureError::NotEnoughShards {
            needed,
            present,
            missing,
        });
    }
    Ok((present, shard_size))
}

thread_local! {
    /// One decoder per thread, reset for each stripe: building one per
    /// segment (allocating its work buffers) cost about 20% of decode speed.
    static SIMD_DECODER: std::cell::RefCell<Option<reed_solomon_simd::ReedSolomonDecoder>> =
        const { std::cell::RefCell::new(None) };
}

/// Restores the missing data shards and appends the k data shards, in
/// order, to `out`.
fn decode_simd_into(
    g: Geometry,
    shard_size: usize,
    shards: &[Option<&[u8]>],
    out: &mut Vec<u8>,
) -> Result<(), ErasureError> {
    let (k, m) = (usize::from(g.k), usize::from(g.m));
    let err = |e: reed_solomon_simd::Error| codec_err(g.codec, e);
    SIMD_DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dec = match slot.as_mut() {
            Some(d) => {
                d.reset(k, m, shard_size).map_err(err)?;
                d
            }
            None => slot
                .insert(reed_solomon_simd::ReedSolomonDecoder::new(k, m, shard_size).map_err(err)?),
        };
        for (i, s) in shards.iter().enumerate() {
            if let Some(s) = s {
                if i < k {
                    dec.add_original_shard(i, s)
                } else {
                    dec.add_recovery_shard(i - k, s)
                }
                .map_err(err)?;
            }
        }
        let result = dec.decode().map_err(err)?;
        for (i, s) in shards[..k].iter().enumerate() {
            match s {
                Some(s) => out.extend_from_slice(s),
                None => out.extend_from_slice(result.restored_original(i).ok_or_else(|| {
                    ErasureError::Codec {
                        codec: g.codec,
                        reason: format!("did not restore data shard {i}"),
                    }
                })?),
            }
        }
        Ok(())
    })
}

fn novelpoly_params(g: Geometry) -> Result<reed_solomon_novelpoly::CodeParams, ErasureError> {
    reed_solomon_novelpoly::CodeParams::derive_parameters(g.n(), usize::from(g.k))
        .map_err(|e| codec_err(g.codec, e))
}

fn codec_err(codec: CodecKind, e: impl fmt::Display) -> ErasureError {
    ErasureError::Codec {
        codec,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sizes_are_recorded_functions_of_length() {
        let g = Geometry::new(CodecKind::ReedSolomonSimd, 4, 2, 1000).unwrap();
        assert_eq!(g.shard_size(1), 2);
        assert_eq!(g.shard_size(8), 2);
        assert_eq!(g.shard_size(9), 4);
        assert_eq!(g.shard_size(1000), 250);
        assert_eq!(g.segment_count(0), 0);
        assert_eq!(g.segment_count(1000), 1);
        assert_eq!(g.segment_count(1001), 2);
        assert_eq!(g.segment_len(1001, 1), 1);
        let n = Geometry::new(CodecKind::ReedSolomonNovelpoly, 10, 4, 1000).unwrap();
        // novelpoly uses k = 8 internally.
        assert_eq!(n.shard_size(1000), 126);
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(
            Geometry::new(CodecKind::ReedSolomonSimd, 0, 2, 10),
            Err(ErasureError::DataShards(0))
        );
        assert_eq!(
            Geometry::new(CodecKind::ReedSolomonSimd, 4, 129, 10),
            Err(ErasureError::ParityShards(129))
        );
        assert!(Geometry::new(CodecKind::ReedSolomonSimd, 4, 2, 0).is_err());
        assert!(Geometry::new(CodecKind::ReedSolomonSimd, 128, 128, 1 << 20).is_ok());
        let mut e =
            Encoder::new(Geometry::new(CodecKind::ReedSolomonSimd, 4, 2, 10).unwrap()).unwrap();
        assert!(e.encode(&[]).is_err());
        assert!(e.encode(&[0; 11]).is_err());
    }

    #[test]
    fn wrong_shard_size_is_named() {
        let g = Geometry::new(CodecKind::ReedSolomonSimd, 2, 1, 100).unwrap();
        let short = [0u8; 3];
        let ok = [0u8; 50];
        let shards = [Some(&ok[..]), Some(&short[..]), None];
        assert_eq!(
            decode(g, 100, &shards),
            Err(ErasureError::ShardSize {
                index: 1,
                expected: 50,
                found: 3
            })
        );
    }

    #[test]
    fn codec_names_parse() {
        for c in CodecKind::ALL {
            assert_eq!(c.name().parse::<CodecKind>().unwrap(), c);
        }
        assert!("lz4".parse::<CodecKind>().is_err());
    }
}
