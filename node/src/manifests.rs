//! Manifest replicas held by this node, tombstones, and the releases of
//! shard copies that replacing or removing a manifest makes due.
//!
//! Manifests live in the node's index (sled tree `manifests/1`), keyed by
//! object ID, as the CBOR the protocol defines. A replica is acknowledged
//! only after the index flush. Every manifest is decoded and validated
//! before it is stored and again when it is read back, and must name the
//! object it is stored under.
//!
//! A replica is replaced only by a manifest of a later
//! [`ManifestVersion`] (generation, revision, digest: a total order, so
//! every node picks the same one of two manifests written on both sides of
//! a partition). Tombstones name one generation of an object: a manifest
//! of that generation is refused until the tombstone expires, and any
//! other generation (a re-upload after `rm`) is taken as usual.
//!
//! Whenever a replica is replaced or removed, every shard copy the old
//! manifest placed and the new one does not ([`Manifest::released_from`])
//! gets a pending release, written in the same flush as the change. The
//! repair loop sends pending releases only after checking them against the
//! newest manifest it can confirm (see `repair::send_pending_releases`).

use std::collections::BTreeMap;
use std::sync::Arc;

use dynostore_protocol::manifest::{Generation, Manifest, ManifestError, ShardSlot};
use dynostore_protocol::manifest::{ManifestVersion, ShardRef};
use dynostore_protocol::wire::{
    ErrorKind, ManifestState, ObjectSummary, MAX_LISTED_OBJECTS, MAX_REMOVED_GENERATIONS,
};
use dynostore_protocol::{NodeId, ObjectId, ShardId};

use crate::store::{IndexError, KvTree, ShardStore, StoreError};

const TREE: &str = "manifests/1";
/// Object ID ++ generation -> tombstone expiry (ms since the Unix epoch, u64 LE).
const TOMBSTONES: &str = "tombstones/2";
/// Pending releases: node ID length (1 byte) ++ node ID ++ shard ID ++ owner.
const PENDING: &str = "pending-releases/1";

/// Failures of the manifest store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestStoreError {
    #[error("manifest for {object}: {source}")]
    Invalid {
        object: ObjectId,
        source: ManifestError,
    },
    #[error(
        "generation {generation} of object {object} was removed; its manifest is not taken back"
    )]
    Deleted {
        object: ObjectId,
        generation: Generation,
    },
    #[error("manifest for {object} at {offered:?} is not newer than the stored {stored:?}")]
    Stale {
        object: ObjectId,
        offered: ManifestVersion,
        stored: ManifestVersion,
    },
    #[error("manifest stored under {key} describes object {found}")]
    WrongObject { key: ObjectId, found: ObjectId },
    #[error(
        "manifest for generation {generation} of {object} changes more than where its shards \
         are held; refused"
    )]
    Changed {
        object: ObjectId,
        generation: Generation,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ManifestStoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManifestStoreError::Invalid { .. }
            | ManifestStoreError::WrongObject { .. }
            | ManifestStoreError::Changed { .. } => ErrorKind::BadRequest,
            ManifestStoreError::Deleted { .. } => ErrorKind::NotFound,
            ManifestStoreError::Stale { .. } => ErrorKind::BadRequest,
            ManifestStoreError::Index(_) => ErrorKind::Internal,
            ManifestStoreError::Store(e) => e.kind(),
        }
    }
}

/// Releases of shard copies not yet sent, per holder, persisted in the
/// index (tree `pending-releases/1`).
#[derive(Debug, Clone)]
pub(crate) struct PendingReleases {
    tree: Arc<dyn KvTree>,
    store: ShardStore,
}

impl PendingReleases {
    fn key(node: &NodeId, slot: &ShardSlot) -> Vec<u8> {
        let n = node.as_bytes();
        let mut k = Vec::with_capacity(1 + n.len() + 32 + ShardRef::LEN);
        k.push(n.len() as u8);
        k.extend_from_slice(n);
        k.extend_from_slice(slot.shard.as_bytes());
        k.extend_from_slice(&slot.owner.to_bytes());
        k
    }

    fn insert(&self, node: &NodeId, slots: &[ShardSlot]) -> Result<(), IndexError> {
        for s in slots {
            self.tree.insert(&Self::key(node, s), &[])?;
        }
        Ok(())
    }

    /// Records releases durably.
    pub(crate) async fn add(&self, node: &NodeId, slots: &[ShardSlot]) -> Result<(), StoreError> {
        self.insert(node, slots)?;
        self.store.flush().await
    }

    pub(crate) fn all(&self) -> BTreeMap<NodeId, Vec<ShardSlot>> {
        let mut out: BTreeMap<NodeId, Vec<ShardSlot>> = BTreeMap::new();
        for (k, _) in self.tree.iter().unwrap_or_default() {
            let Some((&len, rest)) = k.split_first() else {
                continue;
            };
            let len = usize::from(len);
            if rest.len() != len + 32 + ShardRef::LEN {
                continue;
            }
            let (Ok(node), Ok(shard), Some(owner)) = (
                NodeId::from_bytes(rest[..len].to_vec()),
                ShardId::try_from_slice(&rest[len..len + 32]),
                ShardRef::from_bytes(&rest[len + 32..]),
            ) else {
                continue;
            };
            out.entry(node)
                .or_default()
                .push(ShardSlot { shard, owner });
        }
        out
    }

    pub(crate) async fn remove(&self, node: &NodeId, slots: &[ShardSlot]) {
        for s in slots {
            let _ = self.tree.remove(&Self::key(node, s));
        }
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "cannot flush sent releases");
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.tree.iter().map_or(0, |v| v.len() as u64)
    }
}

/// The manifest replicas of this node.
#[derive(Debug, Clone)]
pub struct ManifestStore {
    tree: Arc<dyn KvTree>,
    tombstones: Arc<dyn KvTree>,
    pending: PendingReleases,
    store: ShardStore,
}

fn tomb_key(object: &ObjectId, generation: Generation) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.extend_from_slice(object.as_bytes());
    k.extend_from_slice(&generation.to_bytes());
    k
}

impl ManifestStore {
    pub fn open(store: &ShardStore) -> Result<Self, StoreError> {
        Ok(ManifestStore {
            tree: store.kv_tree(TREE)?,
            tombstones: store.kv_tree(TOMBSTONES)?,
            pending: PendingReleases {
                tree: store.kv_tree(PENDING)?,
                store: store.clone(),
            },
            store: store.clone(),
        })
    }

    pub(crate) fn pending(&self) -> &PendingReleases {
        &self.pending
    }

    /// Records, in the index, the release of every copy `old` placed that
    /// `new` (if any) does not.
    fn queue_releases(&self, old: &Manifest, new: Option<&Manifest>) -> Result<(), IndexError> {
        let mut by_node: BTreeMap<&NodeId, Vec<ShardSlot>> = BTreeMap::new();
        let released = match new {
            Some(n) => n.released_from(old),
            None => old.slots().collect(),
        };
        for (node, slot) in released {
            by_node.entry(node).or_default().push(slot);
        }
        for (node, slots) in by_node {
            self.pending.insert(node, &slots)?;
        }
        Ok(())
    }

    /// Validates and stores a replica durably, if it is newer than the one
    /// held. Copies the replaced manifest placed and this one does not get
    /// pending releases in the same flush.
    pub async fn put(&self, object: ObjectId, bytes: &[u8]) -> Result<(), ManifestStoreError> {
        let m = Manifest::decode(bytes)
            .map_err(|source| ManifestStoreError::Invalid { object, source })?;
        if m.object != object {
            return Err(ManifestStoreError::WrongObject {
                key: object,
                found: m.object,
            });
        }
        if self.is_deleted(&object, m.generation, wall_ms())? {
            return Err(ManifestStoreError::Deleted {
                object,
                generation: m.generation,
            });
        }
        let old = self.get(&object).ok().flatten();
        if let Some(old) = &old {
            if *old == m {
                return Ok(());
            }
            if old.generation == m.generation && !old.same_upload(&m) {
                return Err(ManifestStoreError::Changed {
                    object,
                    generation: m.generation,
                });
            }
            let (offered, stored) = (m.version(), old.version());
            if offered <= stored {
                return Err(ManifestStoreError::Stale {
                    object,
                    offered,
                    stored,
                });
            }
            self.queue_releases(old, Some(&m))?;
        }
        self.tree.insert(object.as_bytes(), bytes)?;
        self.store.flush().await?;
        Ok(())
    }

    /// The stored replica, validated.
    pub fn get(&self, object: &ObjectId) -> Result<Option<Manifest>, ManifestStoreError> {
        match self.tree.get(object.as_bytes())? {
            None => Ok(None),
            Some(bytes) => {
                Manifest::decode(&bytes)
                    .map(Some)
                    .map_err(|source| ManifestStoreError::Invalid {
                        object: *object,
                        source,
                    })
            }
        }
    }

    /// The stored replica's bytes, validated.
    pub fn get_bytes(&self, object: &ObjectId) -> Result<Option<Vec<u8>>, ManifestStoreError> {
        Ok(self.get(object)?.map(|m| m.encode()))
    }

    /// Removes generation `generation` of `object`: a tombstone for it until
    /// `tombstone_until_ms` (wall clock), so that a stale copy pushed back
    /// later is refused and members that were down learn of the removal,
    /// and the held replica if it is of that generation or an older one
    /// (whose copies are released). A newer generation (a re-upload) stays.
    /// Returns whether a replica was removed.
    pub async fn remove(
        &self,
        object: &ObjectId,
        generation: Generation,
        tombstone_until_ms: u64,
    ) -> Result<bool, ManifestStoreError> {
        let held = self.get(object).ok().flatten();
        let existed = match held {
            Some(m) if m.generation <= generation => {
                self.queue_releases(&m, None)?;
                self.tree.remove(object.as_bytes())?;
                true
            }
            _ => false,
        };
        self.tombstones.insert(
            &tomb_key(object, generation),
            &tombstone_until_ms.to_le_bytes(),
        )?;
        self.store.flush().await?;
        Ok(existed)
    }

    /// Drops a replica this node no longer needs to hold (no tombstone).
    pub async fn discard(&self, object: &ObjectId) -> Result<(), ManifestStoreError> {
        if self.tree.remove(object.as_bytes())?.is_some() {
            self.store.flush().await?;
        }
        Ok(())
    }

    /// Whether generation `generation` of `object` has an unexpired tombstone at `now_ms`.
    pub fn is_deleted(
        &self,
        object: &ObjectId,
        generation: Generation,
        now_ms: u64,
    ) -> Result<bool, ManifestStoreError> {
        Ok(self
            .tombstones
            .get(&tomb_key(object, generation))?
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
            .is_some_and(|until| until > now_ms))
    }

    /// The generations of `object` with unexpired tombstones, newest first.
    pub fn removed(
        &self,
        object: &ObjectId,
        now_ms: u64,
    ) -> Result<Vec<Generation>, ManifestStoreError> {
        let mut out = Vec::new();
        for (k, v) in self.tombstones.scan_prefix(object.as_bytes())? {
            let until = <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_le_bytes);
            if until <= now_ms {
                continue;
            }
            if let Some(g) = k.get(32..48).and_then(|b| <&[u8; 16]>::try_from(b).ok()) {
                out.push(Generation::from_bytes(g));
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.truncate(MAX_REMOVED_GENERATIONS);
        Ok(out)
    }

    /// Every unexpired tombstone at `now_ms`: `(object, generation)`, in
    /// key order.
    pub fn tombstones(
        &self,
        now_ms: u64,
    ) -> Result<Vec<(ObjectId, Generation)>, ManifestStoreError> {
        let mut out = Vec::new();
        for (k, v) in self.tombstones.iter()? {
            let until = <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_le_bytes);
            if until <= now_ms {
                continue;
            }
            let object = k
                .get(..32)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(ObjectId::from_bytes);
            let generation = k
                .get(32..48)
                .and_then(|b| <&[u8; 16]>::try_from(b).ok())
                .map(Generation::from_bytes);
            if let (Some(o), Some(g)) = (object, generation) {
                out.push((o, g));
            }
        }
        Ok(out)
    }

    /// Drops expired tombstones; returns how many.
    pub fn purge_tombstones(&self, now_ms: u64) -> Result<usize, ManifestStoreError> {
        let mut n = 0;
        for (k, v) in self.tombstones.iter()? {
            let until = <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_le_bytes);
            if until <= now_ms {
                self.tombstones.remove(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// What this node knows of `object`'s manifest.
    pub fn state(
        &self,
        object: &ObjectId,
        now_ms: u64,
    ) -> Result<ManifestState, ManifestStoreError> {
        Ok(ManifestState {
            held: self.get(object)?.map(|m| m.version()),
            removed: self.removed(object, now_ms)?,
        })
    }

    /// Every held manifest that decodes (a bad record is logged and skipped).
    pub fn all(&self) -> Result<Vec<Manifest>, ManifestStoreError> {
        let mut out = Vec::new();
        for (key, bytes) in self.tree.iter()? {
            match Manifest::decode(&bytes) {
                Ok(m) => out.push(m),
                Err(e) => tracing::warn!(key = ?key, error = %e, "skipping a bad manifest record"),
            }
        }
        Ok(out)
    }

    /// Re-checks every inline object held (decoding a manifest re-hashes
    /// its inline bytes against the object ID) and drops the replicas whose
    /// bytes no longer match, with no tombstone: the object's responsible
    /// member then sees this replica missing and pushes a good one back.
    /// Returns (inline replicas checked, dropped).
    pub async fn scrub_inline(&self) -> Result<(u64, u64), ManifestStoreError> {
        let mut checked = 0u64;
        let mut bad = Vec::new();
        for (key, bytes) in self.tree.iter()? {
            match Manifest::decode(&bytes) {
                Ok(m) if m.is_inline() => checked += 1,
                Ok(_) => {}
                Err(ManifestError::Inline(e)) => {
                    checked += 1;
                    tracing::warn!(key = ?key, error = %e, "scrub found a corrupt inline object; dropping this replica");
                    bad.push(key);
                }
                Err(_) => {}
            }
        }
        for key in &bad {
            self.tree.remove(key)?;
        }
        if !bad.is_empty() {
            self.store.flush().await?;
        }
        Ok((checked, bad.len() as u64))
    }

    /// Summaries of held manifests in object order: at most `limit`
    /// (capped at [`MAX_LISTED_OBJECTS`]) after `after`.
    pub fn summaries_page(
        &self,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<ObjectSummary>, ManifestStoreError> {
        let limit = (limit as usize).min(MAX_LISTED_OBJECTS);
        let mut out = Vec::new();
        for (key, bytes) in self.tree.iter()? {
            if out.len() >= limit {
                break;
            }
            if after.is_some_and(|a| key.as_slice() <= a.as_bytes().as_slice()) {
                continue;
            }
            match Manifest::decode(&bytes) {
                Ok(m) => out.push(summary(m)),
                Err(e) => tracing::warn!(key = ?key, error = %e, "skipping a bad manifest record"),
            }
        }
        Ok(out)
    }
}

/// What a listing shows of a manifest.
pub fn summary(m: Manifest) -> ObjectSummary {
    ObjectSummary {
        object: m.object,
        size: m.size,
        name: m.meta.name,
        owner: m.meta.owner,
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
