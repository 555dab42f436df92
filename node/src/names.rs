//! Name records on this node ([`NameStore`]) and across the federation:
//! written to, read from and listed on the first
//! [`NAME_REPLICAS`] members of a namespace's ranking, and kept in step
//! among them by anti-entropy ([`sync_loop`]).
//!
//! The rules (last writer wins, tombstones) are `protocol::names`; this
//! module does the IO. A write is acknowledged once [`NAME_REPLICAS`]
//! members (or every live member, when fewer) stored it durably (the
//! index flushed), walking down the ranking past members that fail, like a
//! manifest. A read asks the top replicas and takes the newest record; a
//! replica that answered with an older one is sent the newest at once
//! (read repair). Anti-entropy: every [`SYNC_INTERVAL`] each node compares
//! a digest of each namespace it holds with the current top replicas and
//! pushes its records to those that differ, so a member that joined the
//! top of a ranking, or was down during a write, catches up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dynostore_protocol::names::{merge, NameRecord, MAX_RECORDS_PER_MESSAGE, NAME_REPLICAS};
use dynostore_protocol::placement::{PlacementKey, View, Weighting};
use dynostore_protocol::wire::ErrorKind;
use dynostore_protocol::{MemberState, NodeId};

use crate::shared::Shared;
use crate::store::{IndexError, KvTree, ShardStore, StoreError};

const TREE: &str = "names/1";
const NAMESPACES: &str = "name-namespaces/1";
/// How often each node runs anti-entropy over the namespaces it holds.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Bytes of records in one answer or one push (the control messages'
/// limits are 8 MiB and 256 KiB).
const ANSWER_BYTES: usize = 4 << 20;
const PUSH_BYTES: usize = 192 << 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("name record {ns}/{key}: {reason}")]
    Invalid {
        ns: String,
        key: String,
        reason: String,
    },
    #[error(
        "name records of {ns:?}: stored on {stored} of the {needed} replicas required: {last}"
    )]
    Replicas {
        ns: String,
        stored: usize,
        needed: usize,
        last: String,
    },
    #[error("too few replicas of the names of {ns:?} answered: {last}")]
    Unavailable { ns: String, last: String },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl NameError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NameError::Invalid { .. } => ErrorKind::BadRequest,
            NameError::Replicas { .. } | NameError::Unavailable { .. } => ErrorKind::Unavailable,
            NameError::Index(_) => ErrorKind::Internal,
            NameError::Store(e) => e.kind(),
        }
    }
}

/// The name records this node holds, in a tree of the shard index (so
/// that one flush makes them durable).
#[derive(Debug, Clone)]
pub struct NameStore {
    tree: Arc<dyn KvTree>,
    namespaces: Arc<dyn KvTree>,
    store: ShardStore,
}

fn tree_key(ns: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 1 + key.len());
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn encode(r: &NameRecord) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    let _ = ciborium::into_writer(r, &mut out);
    out
}

fn decode(bytes: &[u8]) -> Option<NameRecord> {
    ciborium::from_reader::<NameRecord, _>(bytes)
        .ok()
        .filter(|r| r.check().is_ok())
}

impl NameStore {
    pub fn open(store: &ShardStore) -> Result<Self, StoreError> {
        Ok(NameStore {
            tree: store.kv_tree(TREE)?,
            namespaces: store.kv_tree(NAMESPACES)?,
            store: store.clone(),
        })
    }

    /// Merges `records` (each kept only if newer than the stored one) and
    /// flushes; returns how many changed something.
    pub async fn merge(&self, records: &[NameRecord]) -> Result<u32, NameError> {
        let mut changed = 0u32;
        for r in records {
            r.check().map_err(|reason| NameError::Invalid {
                ns: r.ns.clone(),
                key: r.key.clone(),
                reason,
            })?;
            if r.ns.contains('\0') {
                return Err(NameError::Invalid {
                    ns: r.ns.clone(),
                    key: r.key.clone(),
                    reason: "a namespace has no NUL".into(),
                });
            }
            let k = tree_key(&r.ns, &r.key);
            let newer = match self.tree.get(&k)?.as_deref().and_then(decode) {
                Some(old) => r.supersedes(&old),
                None => true,
            };
            if newer {
                self.tree.insert(&k, &encode(r))?;
                self.namespaces.insert(r.ns.as_bytes(), &[])?;
                changed += 1;
            }
        }
        if changed > 0 {
            self.store.flush().await?;
        }
        Ok(changed)
    }

    /// Records of `ns` whose keys start with `prefix`, after `after`, in
    /// key order: at most `limit`, and at most [`ANSWER_BYTES`] encoded.
    /// Returns whether more follow.
    pub fn list(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<NameRecord>, bool), NameError> {
        let scan = tree_key(ns, prefix);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (_, v) in self.tree.scan_prefix(&scan)? {
            let Some(r) = decode(&v) else { continue };
            if after.is_some_and(|a| r.key.as_str() <= a) {
                continue;
            }
            if out.len() >= limit.min(MAX_RECORDS_PER_MESSAGE) || bytes + v.len() > ANSWER_BYTES {
                return Ok((out, true));
            }
            bytes += v.len();
            out.push(r);
        }
        Ok((out, false))
    }

    /// Record count and digest of everything held of `ns`.
    pub fn digest(&self, ns: &str) -> Result<(u64, [u8; 32]), NameError> {
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        for (_, v) in self.tree.scan_prefix(&tree_key(ns, ""))? {
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(&v);
            n += 1;
        }
        Ok((n, *h.finalize().as_bytes()))
    }

    /// The namespaces of which this node holds records.
    pub fn namespaces(&self) -> Result<Vec<String>, NameError> {
        Ok(self
            .namespaces
            .iter()?
            .into_iter()
            .filter_map(|(k, _)| String::from_utf8(k).ok())
            .collect())
    }
}

/// The members that hold `ns`'s records, best first (alive ones only).
pub(crate) fn ranking(view: &View, ns: &str) -> Vec<NodeId> {
    view.ranking(PlacementKey::for_names(ns), Weighting::Uniform, |m| {
        m.state == MemberState::Alive
    })
    .into_iter()
    .cloned()
    .collect()
}

/// Writes `records` (all of one namespace) to its replicas; returns how
/// many stored them.
pub(crate) async fn put(
    shared: &Arc<Shared>,
    records: Vec<NameRecord>,
) -> Result<usize, NameError> {
    let Some(ns) = records.first().map(|r| r.ns.clone()) else {
        return Ok(0);
    };
    let view = shared.membership().view();
    let ranking = ranking(&view, &ns);
    let needed = NAME_REPLICAS.min(ranking.len()).max(1);
    let mut stored = 0;
    let mut last = String::from("no live member");
    let mut candidates = ranking.into_iter();
    let peers = shared.peers();
    while stored < needed {
        let batch: Vec<NodeId> = candidates.by_ref().take(needed - stored).collect();
        if batch.is_empty() {
            return Err(NameError::Replicas {
                ns,
                stored,
                needed,
                last,
            });
        }
        let results =
            futures::future::join_all(batch.iter().map(|n| peers.put_names(n, &records))).await;
        for r in results {
            match r {
                Ok(_) => stored += 1,
                Err(e) => last = e.to_string(),
            }
        }
    }
    Ok(stored)
}

/// The newest record of `ns`/`key` on its replicas (a tombstone
/// included), `None` when no replica has one.
pub(crate) async fn get(
    shared: &Arc<Shared>,
    ns: &str,
    key: &str,
) -> Result<Option<NameRecord>, NameError> {
    let view = shared.membership().view();
    let holders: Vec<NodeId> = ranking(&view, ns).into_iter().take(NAME_REPLICAS).collect();
    let peers = shared.peers();
    let answers = futures::future::join_all(
        holders
            .iter()
            .map(|n| peers.list_names(n, ns, key, None, 1)),
    )
    .await;
    let mut newest: Option<NameRecord> = None;
    let mut seen: Vec<(NodeId, Option<NameRecord>)> = Vec::new();
    let mut last = String::from("no live member");
    for (node, a) in holders.iter().zip(answers) {
        match a {
            Ok((records, _)) => {
                let r = records.into_iter().find(|r| r.key == key);
                if let Some(r) = &r {
                    if newest.as_ref().is_none_or(|n| r.supersedes(n)) {
                        newest = Some(r.clone());
                    }
                }
                seen.push((node.clone(), r));
            }
            Err(e) => last = e.to_string(),
        }
    }
    if seen.is_empty() {
        return Err(NameError::Unavailable {
            ns: ns.to_string(),
            last,
        });
    }
    if let Some(n) = &newest {
        let stale: Vec<NodeId> = seen
            .into_iter()
            .filter(|(_, r)| r.as_ref() != Some(n))
            .map(|(node, _)| node)
            .collect();
        if !stale.is_empty() {
            let shared = shared.clone();
            let n = n.clone();
            tokio::spawn(async move {
                let peers = shared.peers();
                for node in stale {
                    if let Err(e) = peers.put_names(&node, std::slice::from_ref(&n)).await {
                        tracing::debug!(error = %e, "read repair of a name failed");
                    }
                }
            });
        }
    }
    Ok(newest)
}

/// One merged page of `ns`'s records after `after` (tombstones included,
/// key order) and whether more follow: every record up to the smallest
/// last key of the replicas that cut their answer short.
pub(crate) async fn list_page(
    shared: &Arc<Shared>,
    ns: &str,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<NameRecord>, bool), NameError> {
    list_page_wide(shared, ns, prefix, after, limit, NAME_REPLICAS, 1).await
}

/// [`list_page`] asking the first `width` members of the ranking and
/// requiring `min_answers` of them (or every live member, when fewer) to
/// answer.
pub(crate) async fn list_page_wide(
    shared: &Arc<Shared>,
    ns: &str,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
    width: usize,
    min_answers: usize,
) -> Result<(Vec<NameRecord>, bool), NameError> {
    let view = shared.membership().view();
    let holders: Vec<NodeId> = ranking(&view, ns).into_iter().take(width).collect();
    let min_answers = min_answers.min(holders.len()).max(1);
    let peers = shared.peers();
    let answers = futures::future::join_all(
        holders
            .iter()
            .map(|n| peers.list_names(n, ns, prefix, after, limit)),
    )
    .await;
    let mut all = Vec::new();
    let mut bound: Option<String> = None;
    let mut answered = 0;
    let mut last = String::from("no live member");
    for a in answers {
        match a {
            Ok((records, truncated)) => {
                answered += 1;
                if truncated {
                    if let Some(l) = records.last() {
                        if bound.as_ref().is_none_or(|b| l.key < *b) {
                            bound = Some(l.key.clone());
                        }
                    }
                }
                all.extend(records);
            }
            Err(e) => last = e.to_string(),
        }
    }
    if answered < min_answers {
        return Err(NameError::Unavailable {
            ns: ns.to_string(),
            last,
        });
    }
    let mut merged = merge(all);
    if let Some(b) = &bound {
        merged.retain(|r| r.key <= *b);
    }
    Ok((merged, bound.is_some()))
}

/// Every live record of `ns` under `prefix` (for small reserved
/// namespaces: a multipart upload's parts, the bucket catalogue).
pub(crate) async fn list_all(
    shared: &Arc<Shared>,
    ns: &str,
    prefix: &str,
    max: usize,
) -> Result<Vec<NameRecord>, NameError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = list_page(
            shared,
            ns,
            prefix,
            after.as_deref(),
            MAX_RECORDS_PER_MESSAGE as u32,
        )
        .await?;
        after = page.last().map(|r| r.key.clone());
        out.extend(page.into_iter().filter(|r| !r.is_tombstone()));
        if !more || after.is_none() || out.len() >= max {
            return Ok(out);
        }
    }
}

/// Anti-entropy: forever, every [`SYNC_INTERVAL`], pushes each namespace
/// this node holds to the current top replicas whose digest differs.
pub(crate) async fn sync_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(SYNC_INTERVAL).await;
        if let Err(e) = sync_once(&shared).await {
            tracing::debug!(error = %e, "name anti-entropy round failed");
        }
    }
}

async fn sync_once(shared: &Arc<Shared>) -> Result<(), NameError> {
    let view = shared.membership().view();
    for ns in shared.names.namespaces()? {
        let mine = shared.names.digest(&ns)?;
        let targets: BTreeSet<NodeId> = ranking(&view, &ns)
            .into_iter()
            .take(NAME_REPLICAS)
            .filter(|n| *n != shared.local)
            .collect();
        let peers = shared.peers();
        for node in targets {
            match peers.names_digest(&node, &ns).await {
                Ok(theirs) if theirs == mine => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "names digest failed");
                    continue;
                }
            }
            push_all(shared, &node, &ns).await?;
        }
    }
    Ok(())
}

async fn push_all(shared: &Arc<Shared>, node: &NodeId, ns: &str) -> Result<(), NameError> {
    let mut after: Option<String> = None;
    let peers = shared.peers();
    loop {
        let (page, more) = shared
            .names
            .list(ns, "", after.as_deref(), MAX_RECORDS_PER_MESSAGE)?;
        after = page.last().map(|r| r.key.clone());
        let mut batch = Vec::new();
        let mut bytes = 0;
        for r in page {
            let len = encode(&r).len();
            if bytes + len > PUSH_BYTES && !batch.is_empty() {
                if let Err(e) = peers.put_names(node, &batch).await {
                    tracing::debug!(error = %e, "names push failed");
                    return Ok(());
                }
                batch.clear();
                bytes = 0;
            }
            bytes += len;
            batch.push(r);
        }
        if !batch.is_empty() {
            if let Err(e) = peers.put_names(node, &batch).await {
                tracing::debug!(error = %e, "names push failed");
                return Ok(());
            }
        }
        if !more || after.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::DirSpec;
    use crate::container::{ByteSize, ContainerSpec};
    use dynostore_protocol::names::{NameEntry, NameVersion};

    fn rec(key: &str, ms: u64, live: bool) -> NameRecord {
        NameRecord {
            ns: "bucket".into(),
            key: key.into(),
            version: NameVersion {
                ms,
                writer: NodeId::from_bytes(vec![0, 36, 8, 1, 18, 32, 1]).unwrap(),
            },
            entry: live.then(|| NameEntry {
                size: ms,
                ..NameEntry::default()
            }),
        }
    }

    #[tokio::test]
    async fn records_merge_by_version_page_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let specs = [ContainerSpec::Dir(DirSpec {
            name: Some("d".into()),
            path: dir.path().join("d"),
            quota: ByteSize(1 << 20),
        })];
        let digest = {
            let store = ShardStore::open(dir.path(), &specs).await.unwrap();
            let names = NameStore::open(&store).unwrap();
            let batch: Vec<NameRecord> = (0..25)
                .map(|i| rec(&format!("k{i:02}"), 10, true))
                .collect();
            assert_eq!(names.merge(&batch).await.unwrap(), 25);
            // An older write loses, a newer tombstone wins.
            assert_eq!(names.merge(&[rec("k03", 9, false)]).await.unwrap(), 0);
            assert_eq!(names.merge(&[rec("k04", 11, false)]).await.unwrap(), 1);
            let (page, more) = names.list("bucket", "k0", Some("k01"), 5).unwrap();
            assert!(more);
            let keys: Vec<&str> = page.iter().map(|r| r.key.as_str()).collect();
            assert_eq!(keys, ["k02", "k03", "k04", "k05", "k06"]);
            assert!(page[2].is_tombstone() && !page[1].is_tombstone());
            assert_eq!(names.namespaces().unwrap(), ["bucket"]);
            names.digest("bucket").unwrap()
        };
        let store = ShardStore::open(dir.path(), &specs).await.unwrap();
        let names = NameStore::open(&store).unwrap();
        assert_eq!(names.digest("bucket").unwrap(), digest);
        assert_eq!(digest.0, 25);
        let (all, more) = names.list("bucket", "", None, 1000).unwrap();
        assert!(!more);
        assert_eq!(all.len(), 25);
    }
}
