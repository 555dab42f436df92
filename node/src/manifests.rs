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

/// Failures of the manifest store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestStoreError {
    #[error("manifest for {object}: {source}")]
    Invalid {
        object: ObjectId,
        source: ManifestError,
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
            ManifestStoreError::Index(_) => ErrorKind::Internal,
            ManifestStoreError::Store(e) => e.kind(),
        }
    }
}

/// The manifest replicas of this node.
#[derive(Debug, Clone)]
pub struct ManifestStore {
    tree: Arc<dyn KvTree>,
    store: ShardStore,
}

impl ManifestStore {
    pub fn open(store: &ShardStore) -> Result<Self, StoreError> {
        Ok(ManifestStore {
            tree: store.kv_tree(TREE)?,
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

    pub async fn remove(&self, object: &ObjectId) -> Result<bool, ManifestStoreError> {
        let existed = self.tree.remove(object.as_bytes())?.is_some();
        if existed {
            self.store.flush().await?;
        }
        Ok(existed)
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
