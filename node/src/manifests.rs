//! Manifest replicas held by this node.
//!
//! Manifests live in the node's index (sled tree `manifests/1`), keyed by
//! object ID, as the CBOR the protocol defines. A replica is acknowledged
//! only after the index flush. Every manifest is decoded and validated
//! before it is stored and again when it is read back, and must name the
//! object it is stored under.

use std::sync::Arc;

use dynostore_protocol::manifest::{Manifest, ManifestError};
use dynostore_protocol::wire::{ErrorKind, ObjectSummary};
use dynostore_protocol::ObjectId;

use crate::store::{IndexError, KvTree, ShardStore, StoreError};

const TREE: &str = "manifests/1";
/// Object ID -> tombstone expiry (ms since the Unix epoch, u64 LE).
const TOMBSTONES: &str = "tombstones/1";

/// Failures of the manifest store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestStoreError {
    #[error("manifest for {object}: {source}")]
    Invalid {
        object: ObjectId,
        source: ManifestError,
    },
    #[error("object {0} was removed; its manifest is not taken back")]
    Deleted(ObjectId),
    #[error("manifest for {object} at revision {offered} is not newer than the stored revision {stored}")]
    Stale {
        object: ObjectId,
        offered: u64,
        stored: u64,
    },
    #[error("manifest stored under {key} describes object {found}")]
    WrongObject { key: ObjectId, found: ObjectId },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ManifestStoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManifestStoreError::Invalid { .. } | ManifestStoreError::WrongObject { .. } => {
                ErrorKind::BadRequest
            }
            ManifestStoreError::Deleted(_) => ErrorKind::NotFound,
            ManifestStoreError::Stale { .. } => ErrorKind::BadRequest,
            ManifestStoreError::Index(_) => ErrorKind::Internal,
            ManifestStoreError::Store(e) => e.kind(),
        }
    }
}

/// The manifest replicas of this node.
#[derive(Debug, Clone)]
pub struct ManifestStore {
    tree: Arc<dyn KvTree>,
    tombstones: Arc<dyn KvTree>,
    store: ShardStore,
}

impl ManifestStore {
    pub fn open(store: &ShardStore) -> Result<Self, StoreError> {
        Ok(ManifestStore {
            tree: store.kv_tree(TREE)?,
            tombstones: store.kv_tree(TOMBSTONES)?,
            store: store.clone(),
        })
    }

    /// Validates and stores a replica durably.
    pub async fn put(&self, object: ObjectId, bytes: &[u8]) -> Result<(), ManifestStoreError> {
        let m = Manifest::decode(bytes)
            .map_err(|source| ManifestStoreError::Invalid { object, source })?;
        if m.object != object {
            return Err(ManifestStoreError::WrongObject {
                key: object,
                found: m.object,
            });
        }
        if self.is_deleted(&object, wall_ms())? {
            return Err(ManifestStoreError::Deleted(object));
        }
        if let Some(old) = self.get(&object).ok().flatten() {
            if old == m {
                return Ok(());
            }
            if m.revision <= old.revision {
                return Err(ManifestStoreError::Stale {
                    object,
                    offered: m.revision,
                    stored: old.revision,
                });
            }
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

    /// Removes the replica and leaves a tombstone until `tombstone_until_ms`
    /// (wall clock), so that a stale copy pushed back later is refused and
    /// members that were down learn of the removal.
    pub async fn remove(
        &self,
        object: &ObjectId,
        tombstone_until_ms: u64,
    ) -> Result<bool, ManifestStoreError> {
        let existed = self.tree.remove(object.as_bytes())?.is_some();
        self.tombstones
            .insert(object.as_bytes(), &tombstone_until_ms.to_le_bytes())?;
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

    /// Whether `object` has an unexpired tombstone at `now_ms`.
    pub fn is_deleted(&self, object: &ObjectId, now_ms: u64) -> Result<bool, ManifestStoreError> {
        Ok(self
            .tombstones
            .get(object.as_bytes())?
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
            .is_some_and(|until| until > now_ms))
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
    ) -> Result<dynostore_protocol::wire::ManifestState, ManifestStoreError> {
        use dynostore_protocol::wire::ManifestState;
        if self.is_deleted(object, now_ms)? {
            return Ok(ManifestState::Deleted);
        }
        Ok(if self.tree.get(object.as_bytes())?.is_some() {
            ManifestState::Held
        } else {
            ManifestState::Absent
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

    pub fn summaries(&self) -> Result<Vec<ObjectSummary>, ManifestStoreError> {
        Ok(self
            .all()?
            .into_iter()
            .map(|m| ObjectSummary {
                object: m.object,
                size: m.size,
                name: m.meta.name,
            })
            .collect())
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
