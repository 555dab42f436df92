//! The object manifest: everything needed to find, check and decode an object.
//!
//! A manifest is CBOR (ciborium) and carries a format version. It records the
//! object's size and ID, the erasure [`Geometry`] (codec, k, m, segment
//! size), and for every segment its length, shard size and the `k + m` shard
//! IDs with the node that held each at write time. Holders are stored once in
//! a table and referenced by index (measured: about 54 bytes per shard, most
//! of it the 32-byte shard ID and the CBOR map keys).
//!
//! Decoding untrusted bytes ([`Manifest::decode`]) never panics: the input is
//! refused above [`MAX_MANIFEST_BYTES`], and after parsing every derived
//! quantity is checked against the recorded one ([`Manifest::validate`]), so
//! a manifest that decodes is one the data path can follow without further
//! bounds checks.

use serde::{Deserialize, Serialize};

use crate::durability::Durability;
use crate::erasure::{ErasureError, Geometry};
use crate::ids::{NodeId, ObjectId, ShardId};

/// Current manifest format version.
pub const MANIFEST_VERSION: u16 = 1;
/// Largest encoded manifest accepted: about 620k shards, i.e. objects of
/// roughly 400 GB at the default 4 MiB segments with k = 4, m = 2.
pub const MAX_MANIFEST_BYTES: usize = 32 << 20;
/// Longest name, content type and similar metadata strings, in bytes.
pub const MAX_META_LEN: usize = 4096;
/// Largest object a manifest may carry inline ([`Manifest::inline`]).
/// Writers choose their own threshold at or below it (the node's
/// `inline_max_bytes`); this bound is what a reader accepts.
pub const MAX_INLINE_BYTES: u64 = 1 << 20;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is {len} bytes, more than the limit of {MAX_MANIFEST_BYTES}")]
    TooLarge { len: usize },
    #[error("manifest is not valid CBOR for this format: {0}")]
    Cbor(String),
    #[error(
        "manifest format version {found} is not supported (this build reads {MANIFEST_VERSION})"
    )]
    Version { found: u16 },
    #[error("manifest geometry is invalid: {0}")]
    Geometry(#[from] ErasureError),
    #[error("manifest lists {found} segments, an object of {size} bytes has {expected}")]
    SegmentCount {
        size: u64,
        expected: u64,
        found: usize,
    },
    #[error("segment {segment}: {what}")]
    Segment { segment: usize, what: String },
    #[error("metadata field {field} is {len} bytes, more than {MAX_META_LEN}")]
    Meta { field: &'static str, len: usize },
    #[error("inline object: {0}")]
    Inline(String),
}

/// One shard of a segment and the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub id: ShardId,
    /// Index into [`Manifest::holders`].
    pub holder: u32,
}

/// One segment: its length, the size of each of its shards, and its `k + m`
/// shards in order (data first, then parity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    pub len: u64,
    pub shard_size: u32,
    pub shards: Vec<ShardEntry>,
}

/// Optional user metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Milliseconds since the Unix epoch, supplied by the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
    /// `user@site` of the token the object was stored with, set by the
    /// entry peer from the verified token (never taken from the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Stored to be named (by the S3 gateway, or `put --name`): the
    /// generation may be removed once no name refers to it any more
    /// ([`crate::names::refs`]). A put that does not ask for it and finds a
    /// collectable generation writes a new one without it, and a
    /// generation written over one without it never has it, so an
    /// acknowledgement by ID never rests on bytes a collector may take.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub collectable: bool,
}

/// One upload of an object: every put that writes shards picks a new one.
///
/// Shard copies are owned per generation ([`ShardRef`]), and a tombstone
/// removes exactly the generation it names, so a re-upload after `rm` is a
/// new generation that the old tombstone never touches. Generations are
/// ordered by `(ms, nonce)`: `ms` is the writer's wall clock, raised above
/// every generation the writer saw for the object; `nonce` is random, so
/// two puts of one object in the same millisecond still differ.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Generation {
    pub ms: u64,
    pub nonce: u64,
}

impl Generation {
    /// 16 bytes, big-endian, so that byte order is generation order.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.ms.to_be_bytes());
        out[8..].copy_from_slice(&self.nonce.to_be_bytes());
        out
    }

    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let (ms, nonce) = b.split_at(8);
        Generation {
            ms: u64::from_be_bytes(ms.try_into().unwrap_or_default()),
            nonce: u64::from_be_bytes(nonce.try_into().unwrap_or_default()),
        }
    }

    /// The generation a writer at wall clock `now_ms` takes, given the
    /// newest generation it saw for the object (if any): later than both.
    pub fn next(now_ms: u64, seen: Option<Generation>, nonce: u64) -> Generation {
        let floor = seen.map_or(0, |g| g.ms.saturating_add(1));
        Generation {
            ms: now_ms.max(floor),
            nonce,
        }
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:016x}", self.ms, self.nonce)
    }
}

/// Who owns a shard copy on a node: one position of one generation of one
/// object. A node deletes a copy only when no reference to it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardRef {
    pub object: ObjectId,
    pub generation: Generation,
    pub segment: u64,
    pub index: u16,
}

impl ShardRef {
    /// Encoded length of [`ShardRef::to_bytes`].
    pub const LEN: usize = 32 + 16 + 8 + 2;

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(self.object.as_bytes());
        out[32..48].copy_from_slice(&self.generation.to_bytes());
        out[48..56].copy_from_slice(&self.segment.to_be_bytes());
        out[56..].copy_from_slice(&self.index.to_be_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let object = ObjectId::try_from_slice(&b[..32]).ok()?;
        let generation = Generation::from_bytes(b[32..48].try_into().ok()?);
        let segment = u64::from_be_bytes(b[48..56].try_into().ok()?);
        let index = u16::from_be_bytes(b[56..].try_into().ok()?);
        Some(ShardRef {
            object,
            generation,
            segment,
            index,
        })
    }
}

/// A shard and the reference that owns the copy in question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardSlot {
    pub shard: ShardId,
    pub owner: ShardRef,
}

/// Total order of the manifests of one object: generation, then revision,
/// then a digest of the encoding, so that two different manifests at the
/// same revision (written on both sides of a partition) resolve the same
/// way on every node.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct ManifestVersion {
    pub generation: Generation,
    pub revision: u64,
    pub digest: u64,
}

/// A versioned object manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u16,
    pub object: ObjectId,
    pub size: u64,
    pub geometry: Geometry,
    pub holders: Vec<NodeId>,
    pub segments: Vec<SegmentEntry>,
    #[serde(default)]
    pub meta: Metadata,
    /// Bumped by every change of holders (repair, rebalancing); a replica
    /// never takes a manifest older than the one it has.
    #[serde(default)]
    pub revision: u64,
    /// The upload this manifest describes; fixed for its lifetime.
    #[serde(default)]
    pub generation: Generation,
    /// The annual durability the entry peer chose `k` and `m` for
    /// (`put --durability`, [`crate::durability::choose`]); absent when
    /// the writer was given `k` and `m`, and left out of the encoding then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability_target: Option<Durability>,
    /// A small object's bytes, held in the manifest itself instead of in
    /// shards (then `segments` is empty). Checked against `object` (BLAKE3)
    /// whenever the manifest is decoded, so a replica that decodes carries
    /// the right bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "inline_bytes"
    )]
    pub inline: Option<Vec<u8>>,
}

/// A CBOR byte string for [`Manifest::inline`] (serde's default for a
/// `Vec<u8>` is an array of integers, up to twice the size).
mod inline_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }

    struct Visit;

    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Option<Vec<u8>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(Some(v.to_vec()))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_byte_buf(Visit)
    }
}

impl Manifest {
    /// An empty manifest of the current version for an object; segments are
    /// added with [`Manifest::push_segment`].
    pub fn new(object: ObjectId, size: u64, geometry: Geometry, meta: Metadata) -> Self {
        Manifest {
            version: MANIFEST_VERSION,
            object,
            size,
            geometry,
            holders: Vec::new(),
            segments: Vec::new(),
            meta,
            revision: 0,
            generation: Generation::default(),
            durability_target: None,
            inline: None,
        }
    }

    /// A manifest that carries the whole object inline (no segments).
    /// `bytes` must hash to `object`; [`Manifest::validate`] checks it.
    pub fn new_inline(
        object: ObjectId,
        geometry: Geometry,
        meta: Metadata,
        bytes: Vec<u8>,
    ) -> Self {
        let mut m = Manifest::new(object, bytes.len() as u64, geometry, meta);
        m.inline = Some(bytes);
        m
    }

    /// Whether the object's bytes are in this manifest rather than in shards.
    pub fn is_inline(&self) -> bool {
        self.inline.is_some()
    }

    /// Whether `other` describes the same upload as `self`: the same
    /// object, generation, size, geometry, metadata (name, owner) and shard
    /// IDs in the same order. Within one generation only where shards are
    /// held (and the revision that counts such moves) may change: that is
    /// all repair and rebalancing ever change, so a replica refuses any
    /// other change of a generation it holds.
    pub fn same_upload(&self, other: &Manifest) -> bool {
        self.object == other.object
            && self.generation == other.generation
            && self.size == other.size
            && self.geometry == other.geometry
            && self.meta == other.meta
            && self.durability_target == other.durability_target
            && self.inline == other.inline
            && self.segments.len() == other.segments.len()
            && self.segments.iter().zip(&other.segments).all(|(a, b)| {
                a.len == b.len
                    && a.shard_size == b.shard_size
                    && a.shards.len() == b.shards.len()
                    && a.shards.iter().zip(&b.shards).all(|(x, y)| x.id == y.id)
            })
    }

    /// Where this manifest stands among all manifests of its object.
    pub fn version(&self) -> ManifestVersion {
        let h = blake3::hash(&self.encode());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        ManifestVersion {
            generation: self.generation,
            revision: self.revision,
            digest: u64::from_be_bytes(first),
        }
    }

    /// The owner reference of shard `index` of segment `segment`.
    pub fn shard_ref(&self, segment: u64, index: u16) -> ShardRef {
        ShardRef {
            object: self.object,
            generation: self.generation,
            segment,
            index,
        }
    }

    /// Every shard copy this manifest places, with its holder.
    pub fn slots(&self) -> impl Iterator<Item = (&NodeId, ShardSlot)> + '_ {
        self.segments.iter().enumerate().flat_map(move |(s, seg)| {
            seg.shards.iter().enumerate().filter_map(move |(i, e)| {
                let holder = self.holders.get(e.holder as usize)?;
                Some((
                    holder,
                    ShardSlot {
                        shard: e.id,
                        owner: self.shard_ref(s as u64, i as u16),
                    },
                ))
            })
        })
    }

    /// Whether this manifest places exactly `slot` on `node`: same
    /// generation, same position, same shard, that holder.
    pub fn places(&self, node: &NodeId, slot: &ShardSlot) -> bool {
        let o = &slot.owner;
        o.object == self.object
            && o.generation == self.generation
            && self
                .segments
                .get(o.segment as usize)
                .and_then(|seg| seg.shards.get(usize::from(o.index)))
                .is_some_and(|e| e.id == slot.shard && self.holder(e) == Some(node))
    }

    /// The copies `old` placed that this manifest (its successor) does not:
    /// what a replica must release when it replaces `old` with `self`.
    pub fn released_from<'a>(&self, old: &'a Manifest) -> Vec<(&'a NodeId, ShardSlot)> {
        old.slots()
            .filter(|(node, slot)| !self.places(node, slot))
            .collect()
    }

    /// Index of `node` in the holder table, adding it if new.
    pub fn holder_index(&mut self, node: &NodeId) -> u32 {
        match self.holders.iter().position(|h| h == node) {
            Some(i) => i as u32,
            None => {
                self.holders.push(node.clone());
                (self.holders.len() - 1) as u32
            }
        }
    }

    /// Appends the next segment from its shard IDs and holders, in shard order.
    pub fn push_segment(&mut self, len: u64, shard_size: u32, shards: &[(ShardId, NodeId)]) {
        let shards = shards
            .iter()
            .map(|(id, node)| ShardEntry {
                id: *id,
                holder: self.holder_index(node),
            })
            .collect();
        self.segments.push(SegmentEntry {
            len,
            shard_size,
            shards,
        });
    }

    /// The holder of a shard entry. Valid for every entry of a validated manifest.
    pub fn holder(&self, entry: &ShardEntry) -> Option<&NodeId> {
        self.holders.get(entry.holder as usize)
    }

    /// Records `node` as the new holder of shard `shard_idx` of `segment`
    /// (after a repair or a move). Returns false when the position does not exist.
    pub fn set_holder(&mut self, segment: usize, shard_idx: usize, node: &NodeId) -> bool {
        let idx = self.holder_index(node);
        match self
            .segments
            .get_mut(segment)
            .and_then(|s| s.shards.get_mut(shard_idx))
        {
            Some(entry) => {
                entry.holder = idx;
                true
            }
            None => false,
        }
    }

    /// Drops holders no shard refers to any more, keeping the table small
    /// after repairs.
    pub fn compact_holders(&mut self) {
        let mut used = vec![false; self.holders.len()];
        for e in self.segments.iter().flat_map(|s| &s.shards) {
            if let Some(u) = used.get_mut(e.holder as usize) {
                *u = true;
            }
        }
        let mut remap = vec![0u32; self.holders.len()];
        let mut kept = Vec::new();
        for (i, h) in std::mem::take(&mut self.holders).into_iter().enumerate() {
            if used[i] {
                remap[i] = kept.len() as u32;
                kept.push(h);
            }
        }
        self.holders = kept;
        for e in self.segments.iter_mut().flat_map(|s| &mut s.shards) {
            e.holder = remap[e.holder as usize];
        }
    }

    /// CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail, and every field serialises.
        if let Err(e) = ciborium::into_writer(self, &mut out) {
            unreachable!("serialising a manifest into memory failed: {e}");
        }
        out
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        let mut rest = bytes;
        let m: Manifest =
            ciborium::from_reader(&mut rest).map_err(|e| ManifestError::Cbor(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ManifestError::Cbor(format!(
                "{} bytes after the manifest",
                rest.len()
            )));
        }
        m.validate()?;
        Ok(m)
    }

    /// Checks every recorded quantity against what the geometry implies.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version {
                found: self.version,
            });
        }
        let g = self.geometry;
        g.validate()?;
        if let Some(bytes) = &self.inline {
            return self.validate_inline(bytes);
        }
        let expected = g.segment_count(self.size);
        if expected != self.segments.len() as u64 {
            return Err(ManifestError::SegmentCount {
                size: self.size,
                expected,
                found: self.segments.len(),
            });
        }
        let n = g.n();
        for (i, seg) in self.segments.iter().enumerate() {
            let bad = |what: String| ManifestError::Segment { segment: i, what };
            let len = g.segment_len(self.size, i as u64);
            if seg.len != len {
                return Err(bad(format!(
                    "length {} but the object implies {len}",
                    seg.len
                )));
            }
            let shard_size = g.shard_size(len);
            if seg.shard_size as usize != shard_size {
                return Err(bad(format!(
                    "shard size {} but the geometry implies {shard_size}",
                    seg.shard_size
                )));
            }
            if seg.shards.len() != n {
                return Err(bad(format!(
                    "{} shards, expected k + m = {n}",
                    seg.shards.len()
                )));
            }
            if let Some(e) = seg
                .shards
                .iter()
                .find(|e| e.holder as usize >= self.holders.len())
            {
                return Err(bad(format!(
                    "holder index {} past the table of {}",
                    e.holder,
                    self.holders.len()
                )));
            }
        }
        self.validate_meta()
    }

    fn validate_meta(&self) -> Result<(), ManifestError> {
        for (field, v) in [
            ("name", &self.meta.name),
            ("content_type", &self.meta.content_type),
        ] {
            if let Some(v) = v {
                if v.len() > MAX_META_LEN {
                    return Err(ManifestError::Meta {
                        field,
                        len: v.len(),
                    });
                }
            }
        }
        Ok(())
    }

    /// An inline manifest: no segments, no holders, `size` bytes that hash
    /// to the object ID, at most [`MAX_INLINE_BYTES`].
    fn validate_inline(&self, bytes: &[u8]) -> Result<(), ManifestError> {
        let bad = |what: String| Err(ManifestError::Inline(what));
        if bytes.len() as u64 != self.size {
            return bad(format!(
                "{} bytes for an object of {}",
                bytes.len(),
                self.size
            ));
        }
        if self.size > MAX_INLINE_BYTES {
            return bad(format!("{} bytes, more than {MAX_INLINE_BYTES}", self.size));
        }
        if !self.segments.is_empty() || !self.holders.is_empty() {
            return bad("it also lists segments or holders".into());
        }
        let actual = ObjectId::of(bytes);
        if actual != self.object {
            return bad(format!(
                "the bytes hash to {actual}, not to {}",
                self.object
            ));
        }
        self.validate_meta()
    }

    /// Number of shards over all segments.
    pub fn shard_count(&self) -> usize {
        self.segments.iter().map(|s| s.shards.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erasure::CodecKind;
    use proptest::prelude::*;

    fn node(i: u8) -> NodeId {
        NodeId::from_bytes(vec![0, 36, 8, 1, 18, 32, i]).unwrap()
    }

    fn sample(size: u64, segment_size: u32) -> Manifest {
        let g = Geometry::new(CodecKind::ReedSolomonSimd, 4, 2, segment_size).unwrap();
        let mut m = Manifest::new(
            ObjectId::of(b"obj"),
            size,
            g,
            Metadata {
                name: Some("scan.dcm".into()),
                content_type: None,
                created_ms: Some(1_700_000_000_000),
                owner: None,
                collectable: false,
            },
        );
        for s in 0..g.segment_count(size) {
            let len = g.segment_len(size, s);
            let shards: Vec<_> = (0..g.n())
                .map(|i| (ShardId::of(&[s as u8, i as u8]), node(i as u8)))
                .collect();
            m.push_segment(len, g.shard_size(len) as u32, &shards);
        }
        m
    }

    #[test]
    fn round_trip() {
        for size in [0, 1, 999, 1000, 1001, 5000] {
            let m = sample(size, 1000);
            let back = Manifest::decode(&m.encode()).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn holders_are_shared_and_compacted() {
        let mut m = sample(3000, 1000);
        assert_eq!(m.holders.len(), 6);
        assert!(m.set_holder(0, 0, &node(99)));
        assert!(!m.set_holder(9, 0, &node(99)));
        assert_eq!(m.holders.len(), 7);
        // node 0 still holds shard 0 of segments 1 and 2.
        m.compact_holders();
        assert_eq!(m.holders.len(), 7);
        for s in 1..3 {
            assert!(m.set_holder(s, 0, &node(99)));
        }
        m.compact_holders();
        assert_eq!(m.holders.len(), 6);
        assert!(!m.holders.contains(&node(0)));
        m.validate().unwrap();
        assert_eq!(m.holder(&m.segments[2].shards[0]), Some(&node(99)));
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut m = sample(2500, 1000);
        m.segments[2].len = 1000;
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Segment { segment: 2, .. })
        ));
        let mut m = sample(2500, 1000);
        m.segments.pop();
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::SegmentCount { .. })
        ));
        let mut m = sample(2500, 1000);
        m.segments[1].shards[3].holder = 77;
        assert!(Manifest::decode(&m.encode()).is_err());
        let mut m = sample(2500, 1000);
        m.version = 9;
        assert_eq!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Version { found: 9 })
        );
        let mut m = sample(2500, 1000);
        m.geometry.k = 0;
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Geometry(_))
        ));
        assert!(matches!(
            Manifest::decode(&vec![0u8; MAX_MANIFEST_BYTES + 1]),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    fn inline_sample(bytes: &[u8]) -> Manifest {
        let g = Geometry::new(CodecKind::ReedSolomonSimd, 4, 2, 1000).unwrap();
        let mut m =
            Manifest::new_inline(ObjectId::of(bytes), g, Metadata::default(), bytes.to_vec());
        m.generation = Generation { ms: 7, nonce: 9 };
        m
    }

    #[test]
    fn inline_round_trip_is_a_byte_string() {
        for len in [0usize, 1, 5000, 64 << 10] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let m = inline_sample(&bytes);
            let enc = m.encode();
            // A byte string: the object plus a small fixed overhead, not
            // one CBOR integer per byte.
            assert!(enc.len() < len + 300, "{len} bytes encode to {}", enc.len());
            let back = Manifest::decode(&enc).unwrap();
            assert_eq!(back, m);
            assert!(back.is_inline());
            assert_eq!(back.inline.as_deref(), Some(&bytes[..]));
        }
        // A manifest without the field still decodes as not inline.
        assert!(!Manifest::decode(&sample(3000, 1000).encode())
            .unwrap()
            .is_inline());
    }

    #[test]
    fn inline_bytes_are_checked_against_the_id() {
        let mut m = inline_sample(b"small object");
        m.inline.as_mut().unwrap()[0] ^= 1;
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Inline(_))
        ));
        let mut m = inline_sample(b"small object");
        m.size += 1;
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Inline(_))
        ));
        let mut m = inline_sample(b"small object");
        let shards: Vec<_> = (0..6).map(|i| (ShardId::of(&[i]), node(i))).collect();
        m.push_segment(12, 3, &shards);
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Inline(_))
        ));
        let big = vec![1u8; MAX_INLINE_BYTES as usize + 1];
        assert!(matches!(
            Manifest::decode(&inline_sample(&big).encode()),
            Err(ManifestError::Inline(_))
        ));
    }

    #[test]
    fn only_holders_and_revision_may_change_within_a_generation() {
        let m = sample(3000, 1000);
        let mut moved = m.clone();
        moved.revision += 1;
        moved.segments[0].shards[0].holder = 1;
        assert!(m.same_upload(&moved));
        let mut renamed = m.clone();
        renamed.meta.name = Some("other".into());
        assert!(!m.same_upload(&renamed));
        let mut owned = m.clone();
        owned.meta.owner = Some("mallory@x".into());
        assert!(!m.same_upload(&owned));
        let mut swapped = m.clone();
        swapped.segments[1].shards[0].id = ShardId::of(b"forged");
        assert!(!m.same_upload(&swapped));
        let mut resized = m.clone();
        resized.size += 1;
        assert!(!m.same_upload(&resized));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample(3000, 1000).encode();
        bytes.push(0);
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Cbor(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample(3001, 1000).encode();
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Manifest::decode(&bytes);
        }

        #[test]
        fn mutated_manifests_never_panic(
            size in 0u64..6000,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = sample(size, 1000).encode();
            for (pos, val) in flips {
                let len = bytes.len();
                bytes[pos % len] ^= val;
            }
            if let Ok(m) = Manifest::decode(&bytes) {
                // Whatever decodes must be self-consistent.
                prop_assert!(m.validate().is_ok());
            }
        }
    }
}
