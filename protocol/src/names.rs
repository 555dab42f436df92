//! Name records: small replicated key/value records that give objects
//! names (S3 buckets and keys, `dynostore put --name BUCKET/KEY`), and the
//! other S3 state that must live without a coordinator (the bucket
//! catalogue, S3 key registrations, multipart uploads).
//!
//! A record lives in a *namespace* (a bucket's name for object names, or a
//! reserved namespace starting with `.`, which no S3 bucket name can) and is
//! replicated on the first [`NAME_REPLICAS`] members of the namespace's
//! ranking ([`crate::PlacementKey::for_names`]), so a listing of a bucket
//! asks a bounded set of nodes, never all of them.
//!
//! Concurrent writes of one key resolve by a deterministic
//! last-writer-wins rule: the record with the greater [`NameVersion`]
//! `(ms, writer)` wins on every replica, whatever order writes arrive in.
//! A writer takes `ms` above the version it read (so a later write from a
//! node with a slow clock still wins). A delete is a record without an
//! entry (a tombstone), which wins over older writes like any other
//! record.

use serde::{Deserialize, Serialize};

use crate::{NodeId, ObjectId};

/// Members that hold each namespace's records: survives two losses, like a
/// manifest of the default geometry (m = 2).
pub const NAME_REPLICAS: usize = 3;
/// Longest namespace (bucket names are at most 63 bytes; reserved
/// namespaces add a short prefix).
pub const MAX_NAMESPACE_LEN: usize = 128;
/// Longest key (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Most user metadata pairs on one record.
pub const MAX_META_PAIRS: usize = 64;
/// Most bytes of user metadata (keys and values) on one record (S3 allows 2 KiB).
pub const MAX_META_BYTES: usize = 8 << 10;
/// Most stored standard headers on one record, and their bytes.
pub const MAX_HEADERS: usize = 8;
pub const MAX_HEADER_BYTES: usize = 4 << 10;
/// Largest opaque blob on one record (a user token, an upload's state).
pub const MAX_BLOB_LEN: usize = 20 << 10;
/// Largest content type or ETag.
pub const MAX_SHORT_TEXT: usize = 256;
/// Most parts of a multipart object (S3's limit).
pub const MAX_PARTS: usize = 10_000;
/// Most pieces of an object stored as its parts: 1,000 IDs keep a record
/// near 40 KiB, well inside a control message; an upload of more parts is
/// stored whole.
pub const MAX_PIECES: usize = 1_000;
/// Most records in one message.
pub const MAX_RECORDS_PER_MESSAGE: usize = 1000;

/// The order of writes to one key: wall-clock milliseconds of the writer
/// (raised above what it read), then the writer's node ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NameVersion {
    pub ms: u64,
    pub writer: NodeId,
}

impl NameVersion {
    /// The version of a write by `writer` at `now_ms` that must supersede
    /// `seen` (the newest version the writer read, if any).
    pub fn next(now_ms: u64, writer: NodeId, seen: Option<&NameVersion>) -> NameVersion {
        let floor = seen.map_or(0, |v| v.ms.saturating_add(1));
        NameVersion {
            ms: now_ms.max(floor),
            writer,
        }
    }
}

/// What a live name points at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameEntry {
    /// The object named (absent for records that are not object names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectId>,
    #[serde(default)]
    pub size: u64,
    /// The S3 ETag, without quotes.
    #[serde(default)]
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`), sorted by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta: Vec<(String, String)>,
    /// The user whose token wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Opaque bytes of reserved namespaces (a token, an upload's state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<Vec<u8>>,
    /// Standard headers kept with the object and answered on reads
    /// (`cache-control`, `content-disposition`, `content-encoding`,
    /// `content-language`, `expires`): lower-case names, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The sizes of a multipart object's parts, in order (empty for an
    /// object stored in one piece): what a read by `partNumber` answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
    /// A multipart object stored as its parts: the object of each part,
    /// in the order of `parts` (whose sizes they have). `object` is then
    /// absent: the whole is read part by part, each part verified against
    /// its own ID, and no byte is stored twice. Empty for an object stored
    /// in one piece.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<ObjectId>,
}

impl NameEntry {
    /// Every object this entry relies on (its object, or its pieces), each
    /// once, in order of first appearance.
    pub fn objects(&self) -> Vec<ObjectId> {
        let mut out: Vec<ObjectId> = Vec::new();
        for o in self.object.iter().chain(self.pieces.iter()) {
            if !out.contains(o) {
                out.push(*o);
            }
        }
        out
    }

    /// Whether the entry names an object (in one piece or in parts).
    pub fn names_object(&self) -> bool {
        self.object.is_some() || !self.pieces.is_empty()
    }
}

/// One versioned record; `entry: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    pub ns: String,
    pub key: String,
    pub version: NameVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<NameEntry>,
}

impl NameRecord {
    /// Whether this record wins over `other` (same namespace and key).
    pub fn supersedes(&self, other: &NameRecord) -> bool {
        self.version > other.version
    }

    pub fn is_tombstone(&self) -> bool {
        self.entry.is_none()
    }

    /// Checks every size limit; decoders call it on untrusted records.
    pub fn check(&self) -> Result<(), String> {
        check_len("namespace", self.ns.len(), MAX_NAMESPACE_LEN)?;
        if self.ns.is_empty() {
            return Err("empty namespace".into());
        }
        check_len("key", self.key.len(), MAX_KEY_LEN)?;
        if let Some(e) = &self.entry {
            check_len("etag", e.etag.len(), MAX_SHORT_TEXT)?;
            if let Some(ct) = &e.content_type {
                check_len("content type", ct.len(), MAX_SHORT_TEXT)?;
            }
            if let Some(o) = &e.owner {
                check_len("owner", o.len(), MAX_SHORT_TEXT)?;
            }
            check_len("metadata pairs", e.meta.len(), MAX_META_PAIRS)?;
            let bytes: usize = e.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
            check_len("metadata bytes", bytes, MAX_META_BYTES)?;
            if let Some(b) = &e.blob {
                check_len("blob", b.len(), MAX_BLOB_LEN)?;
            }
            check_len("headers", e.headers.len(), MAX_HEADERS)?;
            let bytes: usize = e.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
            check_len("header bytes", bytes, MAX_HEADER_BYTES)?;
            check_len("parts", e.parts.len(), MAX_PARTS)?;
            check_len("pieces", e.pieces.len(), MAX_PIECES)?;
            if !e.pieces.is_empty() {
                if e.object.is_some() {
                    return Err("an entry has both an object and pieces".into());
                }
                if e.pieces.len() != e.parts.len() {
                    return Err(format!(
                        "{} pieces for {} parts",
                        e.pieces.len(),
                        e.parts.len()
                    ));
                }
                let sum = e.parts.iter().try_fold(0u64, |a, &b| a.checked_add(b));
                if sum != Some(e.size) {
                    return Err("the parts' sizes do not add up to the size".into());
                }
            }
        }
        Ok(())
    }
}

fn check_len(what: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{what}: {n} is more than the limit of {max}"));
    }
    Ok(())
}

/// Merges answers from several replicas: the newest record per key, in
/// key order (tombstones kept, so that the caller can tell a deleted name
/// from one a replica lacks).
pub fn merge(answers: impl IntoIterator<Item = NameRecord>) -> Vec<NameRecord> {
    let mut by_key: std::collections::BTreeMap<String, NameRecord> = Default::default();
    for r in answers {
        match by_key.get(&r.key) {
            Some(old) if !r.supersedes(old) => {}
            _ => {
                by_key.insert(r.key.clone(), r);
            }
        }
    }
    by_key.into_values().collect()
}

/// One page of a listing: `Key`s and `CommonPrefix`es in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Key(Box<NameRecord>),
    CommonPrefix(String),
}

/// Folds merged, key-ordered live records into a listing page: keys that
/// contain `delimiter` after `prefix` collapse into one common prefix;
/// anything not above `after` is skipped (a common prefix equal to `after`
/// skips every key under it). Returns the page and whether it stopped at
/// `max` entries.
pub fn fold_page(
    records: impl IntoIterator<Item = NameRecord>,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
    max: usize,
) -> (Vec<Listed>, bool) {
    let mut out: Vec<Listed> = Vec::new();
    for r in records {
        if r.is_tombstone() || !r.key.starts_with(prefix) {
            continue;
        }
        if let Some(a) = after {
            if r.key.as_str() <= a {
                continue;
            }
        }
        let entry = match delimiter.filter(|d| !d.is_empty()) {
            Some(d) => match r.key[prefix.len()..].find(d) {
                Some(pos) => {
                    Listed::CommonPrefix(r.key[..prefix.len() + pos + d.len()].to_string())
                }
                None => Listed::Key(Box::new(r)),
            },
            None => Listed::Key(Box::new(r)),
        };
        if let Listed::CommonPrefix(p) = &entry {
            if after.is_some_and(|a| a.starts_with(p.as_str())) {
                continue;
            }
            if matches!(out.last(), Some(Listed::CommonPrefix(q)) if q == p) {
                continue;
            }
        }
        if out.len() == max {
            return (out, true);
        }
        out.push(entry);
    }
    (out, false)
}

impl Listed {
    /// Where the next page starts (a continuation token's content).
    pub fn resume_after(&self) -> &str {
        match self {
            Listed::Key(r) => &r.key,
            Listed::CommonPrefix(p) => p,
        }
    }
}

/// References: which names rely on an object, so that the bytes of an
/// object no name points at any more can be reclaimed without losing one
/// that some name (or an acknowledged put by ID) still needs.
///
/// Every name record that points at an object also has a reference record
/// in the object's own namespace ([`refs_namespace`]), keyed by the name
/// *and its version* ([`ref_key`]): written live before the name record,
/// and a tombstone once a later version of the name replaced that one. A
/// key per version (not per name) is what makes the tombstone safe: a
/// writer that moves `a` away from an object can only ever retire the
/// version it read, never a newer write of `a` to the same object.
///
/// Collection is a handshake between a collector and writers, each
/// writing its own record and then reading the other's (so at least one
/// of two that overlap sees the other):
/// - the collector writes a condemnation ([`condemn_key`], naming the
///   generation it means to remove), reads the references again, and
///   removes that generation only when none is live;
/// - a writer writes its reference, then reads the condemnations, and
///   gives up (the client retries) when one names the generation its put
///   found or an older one ([`condemned`]).
pub mod refs {
    use super::{NameRecord, NameVersion};
    use crate::manifest::Generation;
    use crate::{NodeId, ObjectId};

    /// Prefix of every references namespace.
    pub const PREFIX: &str = ".refs/";
    /// Within an object's keys (after [`object_prefix`]): condemnations.
    pub const CONDEMN_PREFIX: &str = "gc/";
    /// Within an object's keys: references.
    pub const REF_PREFIX: &str = "r/";

    /// The namespace holding the references to `object`: one of 256, by
    /// the ID's first byte. A namespace per object would make the names'
    /// anti-entropy (a digest exchange per namespace every few seconds)
    /// grow with the number of objects.
    pub fn refs_namespace(object: &ObjectId) -> String {
        format!("{PREFIX}{:02x}", object.as_bytes()[0])
    }

    /// Whether `ns` is a references namespace.
    pub fn is_refs_namespace(ns: &str) -> bool {
        ns.strip_prefix(PREFIX)
            .is_some_and(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    /// The prefix of every key of `object`'s records in its namespace.
    pub fn object_prefix(object: &ObjectId) -> String {
        format!("{object}/")
    }

    /// The object a references record's key belongs to.
    pub fn object_of_key(key: &str) -> Option<ObjectId> {
        key.get(..64)?
            .parse()
            .ok()
            .filter(|_| key.as_bytes().get(64) == Some(&b'/'))
    }

    /// A key's part after its object's prefix.
    fn local_part(key: &str) -> &str {
        key.get(65..).unwrap_or("")
    }

    fn hex16(bytes: &[u8]) -> String {
        bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key of the reference of version `version` of name `ns`/`key`
    /// to `object`.
    pub fn ref_key(object: &ObjectId, ns: &str, key: &str, version: &NameVersion) -> String {
        let mut h = blake3::Hasher::new();
        for part in [ns.as_bytes(), key.as_bytes(), version.writer.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&version.ms.to_le_bytes());
        format!("{object}/{REF_PREFIX}{}", hex16(h.finalize().as_bytes()))
    }

    /// The key of `object`'s pin: a reference no name writes and nothing
    /// retires, written by every put acknowledged by ID. A generation such
    /// a put rests on is not collectable, but a named put that could not
    /// see it (across a partition) writes a newer, collectable one, which
    /// replaces it once the sides meet; the pin keeps the collector off
    /// whatever generation is stored.
    pub fn pin_key(object: &ObjectId) -> String {
        format!("{object}/{REF_PREFIX}pin")
    }

    /// The key of `collector`'s condemnation record: one per collector, so
    /// that one withdrawing its own never hides another's.
    pub fn condemn_key(object: &ObjectId, collector: &NodeId) -> String {
        let h = blake3::hash(collector.as_bytes());
        format!("{object}/{CONDEMN_PREFIX}{}", hex16(h.as_bytes()))
    }

    /// Whether `key` is a condemnation's (of any collector).
    pub fn is_condemnation(key: &str) -> bool {
        local_part(key).starts_with(CONDEMN_PREFIX)
    }

    /// The blob of a condemnation of `generation`.
    pub fn condemn_blob(generation: Generation) -> Vec<u8> {
        generation.to_bytes().to_vec()
    }

    /// Whether a live condemnation among `records` reaches `generation`
    /// (names it or a later one: a tombstone removes its generation and
    /// every older one). A condemnation whose blob does not parse counts
    /// as reaching everything: a writer gives up rather than guess.
    pub fn condemned(records: &[NameRecord], generation: Generation) -> bool {
        records
            .iter()
            .filter(|r| is_condemnation(&r.key))
            .filter_map(|r| r.entry.as_ref())
            .any(|e| {
                match e
                    .blob
                    .as_deref()
                    .and_then(|b| <&[u8; 16]>::try_from(b).ok())
                {
                    Some(b) => Generation::from_bytes(b) >= generation,
                    None => true,
                }
            })
    }

    /// What the references of an object say.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Verdict {
        /// No reference was ever written.
        Unknown,
        /// A live reference: some name relies on the object.
        Referenced,
        /// Every reference is a tombstone; the newest was written at `ms`.
        Unreferenced { since_ms: u64 },
    }

    /// The verdict over the merged records of one object (its keys).
    pub fn verdict(records: &[NameRecord]) -> Verdict {
        let mut since: Option<u64> = None;
        for r in records
            .iter()
            .filter(|r| local_part(&r.key).starts_with(REF_PREFIX))
        {
            if !r.is_tombstone() {
                return Verdict::Referenced;
            }
            since = Some(since.map_or(r.version.ms, |s| s.max(r.version.ms)));
        }
        match since {
            Some(since_ms) => Verdict::Unreferenced { since_ms },
            None => Verdict::Unknown,
        }
    }

    /// Whether an unreferenced object may be condemned at `now_ms`: its
    /// last reference went at least `grace_ms` ago.
    pub fn ripe(v: &Verdict, now_ms: u64, grace_ms: u64) -> bool {
        matches!(v, Verdict::Unreferenced { since_ms } if now_ms.saturating_sub(*since_ms) >= grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId::from_bytes(vec![0, 36, 8, 1, 18, 32, b]).unwrap()
    }

    fn rec(key: &str, ms: u64, w: u8, live: bool) -> NameRecord {
        NameRecord {
            ns: "b".into(),
            key: key.into(),
            version: NameVersion {
                ms,
                writer: node(w),
            },
            entry: live.then(NameEntry::default),
        }
    }

    #[test]
    fn references_are_per_name_version_and_condemnations_reach_older_generations() {
        use crate::manifest::Generation;
        let v1 = NameVersion {
            ms: 10,
            writer: node(1),
        };
        let v2 = NameVersion {
            ms: 11,
            writer: node(1),
        };
        // One key per version of a name: retiring the old version's
        // reference never touches a newer write of the same name.
        let id = ObjectId::of(b"x");
        let k1 = refs::ref_key(&id, "b", "k", &v1);
        assert_ne!(k1, refs::ref_key(&id, "b", "k", &v2));
        assert_ne!(k1, refs::ref_key(&id, "b", "k2", &v1));
        assert_ne!(
            refs::ref_key(&id, "b", "kx", &v1),
            refs::ref_key(&id, "bk", "x", &v1)
        );
        assert!(k1.starts_with(&refs::object_prefix(&id)) && k1.len() < MAX_KEY_LEN);
        assert_eq!(refs::object_of_key(&k1), Some(id));
        assert_eq!(refs::object_of_key("abc/r/x"), None);
        let ns = refs::refs_namespace(&id);
        assert!(ns.len() <= MAX_NAMESPACE_LEN && refs::is_refs_namespace(&ns));
        assert!(!refs::is_refs_namespace("bucket") && !refs::is_refs_namespace(".refs/abc"));

        let r = |key: &str, ms: u64, live: bool| rec(&format!("{id}/{key}"), ms, 1, live);
        assert_eq!(refs::verdict(&[]), refs::Verdict::Unknown);
        let dead = [r("r/a", 5, false), r("r/b", 7, false)];
        assert_eq!(
            refs::verdict(&dead),
            refs::Verdict::Unreferenced { since_ms: 7 }
        );
        assert!(refs::ripe(&refs::verdict(&dead), 107, 100));
        assert!(!refs::ripe(&refs::verdict(&dead), 106, 100));
        let mut one_live = dead.to_vec();
        one_live.push(r("r/c", 1, true));
        assert_eq!(refs::verdict(&one_live), refs::Verdict::Referenced);
        assert!(!refs::ripe(&refs::verdict(&one_live), u64::MAX, 0));
        // A condemnation is not a reference.
        let mut gc = rec(&refs::condemn_key(&id, &node(2)), 3, 2, true);
        gc.entry = Some(NameEntry {
            blob: Some(refs::condemn_blob(Generation { ms: 50, nonce: 1 })),
            ..NameEntry::default()
        });
        let mut with_gc = dead.to_vec();
        with_gc.push(gc.clone());
        assert_eq!(
            refs::verdict(&with_gc),
            refs::Verdict::Unreferenced { since_ms: 7 }
        );
        // It reaches its generation and older ones, never a later one.
        let g = |ms, nonce| Generation { ms, nonce };
        assert!(refs::condemned(&with_gc, g(50, 1)));
        assert!(refs::condemned(&with_gc, g(49, 9)));
        assert!(!refs::condemned(&with_gc, g(50, 2)));
        assert!(!refs::condemned(&with_gc, g(51, 0)));
        // Withdrawn (a tombstone), it reaches nothing; unreadable, everything.
        let withdrawn = NameRecord {
            entry: None,
            ..gc.clone()
        };
        assert!(!refs::condemned(&[withdrawn], g(1, 0)));
        let mut garbled = gc.clone();
        garbled.entry = Some(NameEntry {
            blob: Some(vec![1, 2, 3]),
            ..NameEntry::default()
        });
        assert!(refs::condemned(&[garbled], g(u64::MAX, 0)));
        // Keys of two collectors differ, so neither withdraws the other's.
        assert_ne!(
            refs::condemn_key(&id, &node(2)),
            refs::condemn_key(&id, &node(3))
        );
        assert!(refs::is_condemnation(&refs::condemn_key(&id, &node(2))));
        assert!(!refs::is_condemnation(&k1));
    }

    #[test]
    fn last_writer_wins_whatever_the_order() {
        let a = rec("k", 10, 1, true);
        let b = rec("k", 10, 2, false);
        let c = rec("k", 9, 3, true);
        for order in [
            vec![a.clone(), b.clone(), c.clone()],
            vec![c.clone(), b.clone(), a.clone()],
            vec![b.clone(), c.clone(), a.clone()],
        ] {
            let m = merge(order);
            assert_eq!(m, vec![b.clone()]);
        }
    }

    #[test]
    fn a_write_after_a_read_wins_over_a_fast_clock() {
        let seen = NameVersion {
            ms: 5_000,
            writer: node(9),
        };
        let v = NameVersion::next(1_000, node(1), Some(&seen));
        assert!(v > seen);
        assert_eq!(v.ms, 5_001);
    }

    #[test]
    fn pages_fold_delimiters_and_skip_tombstones() {
        let recs = vec![
            rec("a/1", 1, 1, true),
            rec("a/2", 1, 1, true),
            rec("b", 1, 1, false),
            rec("c", 1, 1, true),
            rec("d/x/y", 1, 1, true),
        ];
        let (page, more) = fold_page(recs.clone(), "", Some("/"), None, 2);
        assert!(more);
        assert_eq!(page.len(), 2);
        assert_eq!(page[0], Listed::CommonPrefix("a/".into()));
        assert_eq!(page[1].resume_after(), "c");
        let (page, more) = fold_page(recs.clone(), "", Some("/"), Some("c"), 2);
        assert!(!more);
        assert_eq!(page, vec![Listed::CommonPrefix("d/".into())]);
        // Resuming after a common prefix skips its keys.
        let (page, _) = fold_page(recs, "", Some("/"), Some("a/"), 10);
        assert_eq!(page[0].resume_after(), "c");
    }

    #[test]
    fn limits_are_checked() {
        let mut r = rec("k", 1, 1, true);
        r.entry.as_mut().unwrap().blob = Some(vec![0; MAX_BLOB_LEN + 1]);
        assert!(r.check().is_err());
        let r = rec(&"x".repeat(MAX_KEY_LEN + 1), 1, 1, true);
        assert!(r.check().is_err());
        let mut r = rec("k", 1, 1, true);
        r.entry.as_mut().unwrap().headers =
            vec![("cache-control".into(), "x".repeat(MAX_HEADER_BYTES))];
        assert!(r.check().is_err());
        r.entry.as_mut().unwrap().headers = vec![("expires".into(), "x".into()); MAX_HEADERS + 1];
        assert!(r.check().is_err());
    }

    #[test]
    fn pieces_match_their_parts_and_stand_alone() {
        let a = ObjectId::of(b"a");
        let b = ObjectId::of(b"b");
        let mut r = rec("k", 1, 1, true);
        let e = r.entry.as_mut().unwrap();
        (e.object, e.size, e.parts, e.pieces) = (None, 5, vec![2, 3], vec![a, b]);
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.entry.as_ref().unwrap().objects(), vec![a, b]);
        assert!(r.entry.as_ref().unwrap().names_object());
        // A piece twice is referenced once.
        let e = r.entry.as_mut().unwrap();
        e.pieces = vec![a, a];
        assert_eq!(e.objects(), vec![a]);
        for broken in [
            |e: &mut NameEntry| e.object = Some(ObjectId::of(b"c")),
            |e: &mut NameEntry| e.size = 6,
            |e: &mut NameEntry| e.parts = vec![5],
            |e: &mut NameEntry| e.parts = vec![u64::MAX, 6],
            |e: &mut NameEntry| {
                e.parts = vec![0; MAX_PIECES + 1];
                e.pieces = vec![ObjectId::of(b"z"); MAX_PIECES + 1];
                e.size = 0;
            },
        ] {
            let mut r = r.clone();
            broken(r.entry.as_mut().unwrap());
            assert!(r.check().is_err(), "{:?}", r.entry);
        }
        let mut r = rec("k", 1, 1, true);
        r.entry.as_mut().unwrap().parts = vec![0; MAX_PARTS + 1];
        assert!(r.check().is_err());
    }
}
