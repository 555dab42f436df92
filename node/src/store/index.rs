//! The node's index: which container holds each shard, and small records
//! of other kinds in named trees.
//!
//! [`ShardIndex`] is the project's own interface; [`SledIndex`] implements
//! it over sled 0.34 and [`MemIndex`] in memory (for tests). The shard
//! store is the only writer of shard records; other parts of the node keep
//! their own records (manifests held, repair queue, membership cache) in
//! trees they open with [`ShardIndex::tree`].
//!
//! # Layout (sled)
//! - Tree `shards/1`: key = the 32 raw bytes of the [`ShardId`], value = a
//!   [`ShardRecord`] in CBOR. Every record carries a format version; a
//!   record of another version is refused with [`IndexError::Version`],
//!   never guessed at.
//! - Any other tree: named by its user, raw bytes in and out. Names that
//!   start with `shards/` or `__sled` are reserved.
//!
//! # Durability
//! A write is durable only once [`ShardIndex::flush`] has returned `Ok`:
//! sled buffers writes in memory and flushes them in the background every
//! half second otherwise. Flushing covers every tree of the database.
//!
//! # Counting
//! sled's `Tree::len` walks the whole tree, so [`SledIndex`] counts shard
//! records itself: once at open, then on each insert of a new key and each
//! removal of an existing one (sled reports the previous value atomically).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dynostore_protocol::ids::ShardId;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

/// Format version of [`ShardRecord`] written by this build.
pub const SHARD_RECORD_VERSION: u16 = 1;
/// Name of the sled tree of shard records.
pub const SHARDS_TREE: &str = "shards/1";
/// sled's page cache limit for the index (sled's default is 1 GiB).
pub const INDEX_CACHE_BYTES: u64 = 64 << 20;

/// Where one shard is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub version: u16,
    /// Name of the container that holds the bytes.
    pub container: String,
    pub size_bytes: u64,
}

impl ShardRecord {
    pub fn new(container: impl Into<String>, size_bytes: u64) -> Self {
        ShardRecord {
            version: SHARD_RECORD_VERSION,
            container: container.into(),
            size_bytes,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = ciborium::into_writer(self, &mut out) {
            unreachable!("serialising a record into memory failed: {e}");
        }
        out
    }

    /// Decodes the record of `shard`, refusing other format versions.
    pub fn decode(shard: &ShardId, bytes: &[u8]) -> Result<Self, IndexError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u16,
        }
        let v: Versioned = ciborium::from_reader(bytes).map_err(|e| IndexError::Corrupt {
            key: shard.to_string(),
            reason: e.to_string(),
        })?;
        if v.version != SHARD_RECORD_VERSION {
            return Err(IndexError::Version {
                shard: *shard,
                found: v.version,
            });
        }
        ciborium::from_reader(bytes).map_err(|e| IndexError::Corrupt {
            key: shard.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("index database {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("index entry {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("index record of shard {shard} has format version {found}; this build reads version {SHARD_RECORD_VERSION}")]
    Version { shard: ShardId, found: u16 },
    #[error("index tree name {name:?} is reserved")]
    ReservedTree { name: String },
    #[error("index flush did not complete: {reason}")]
    Flush { reason: String },
}

/// Key-value pairs read from a [`KvTree`], in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A named tree of raw key-value records (see [`ShardIndex::tree`]).
pub trait KvTree: Send + Sync + fmt::Debug {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError>;
    /// Inserts, returning the previous value.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, IndexError>;
    /// Removes, returning the previous value.
    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError>;
    /// Every record whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvPairs, IndexError>;
    /// Every record, in key order.
    fn iter(&self) -> Result<KvPairs, IndexError> {
        self.scan_prefix(&[])
    }
}

/// The shard index. Calls are synchronous and fast (memory or sled's
/// cache); only [`ShardIndex::flush`] waits for the disk.
pub trait ShardIndex: Send + Sync + fmt::Debug {
    fn get(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError>;
    fn insert(&self, shard: &ShardId, record: &ShardRecord) -> Result<(), IndexError>;
    /// Removes, returning the record that was there.
    fn remove(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError>;
    /// Calls `f` for every shard record, in shard order. Records that do
    /// not decode are reported to `f` as errors, so that one bad record
    /// does not hide the others.
    fn for_each(
        &self,
        f: &mut dyn FnMut(ShardId, Result<ShardRecord, IndexError>),
    ) -> Result<(), IndexError>;
    /// Number of shard records.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A named tree for other records (not `shards/...`).
    fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, IndexError>;
    /// Makes every write before the call durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), IndexError>>;
}

fn check_tree_name(name: &str) -> Result<(), IndexError> {
    if name.starts_with("shards/") || name.starts_with("__sled") || name.is_empty() {
        return Err(IndexError::ReservedTree {
            name: name.to_string(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// sled

/// The index in a sled database.
#[derive(Debug)]
pub struct SledIndex {
    db: sled::Db,
    shards: sled::Tree,
    n_shards: AtomicU64,
    path: PathBuf,
}

impl SledIndex {
    /// Opens (or creates) the database in `path`. Blocking: sled replays
    /// its log, which may take a while after a crash.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let db_err = |source| IndexError::Db {
            path: path.display().to_string(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(INDEX_CACHE_BYTES)
            .open()
            .map_err(db_err)?;
        let shards = db.open_tree(SHARDS_TREE).map_err(db_err)?;
        let n_shards = shards.len() as u64;
        Ok(SledIndex {
            db,
            shards,
            n_shards: AtomicU64::new(n_shards),
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: sled::Error) -> IndexError {
        IndexError::Db {
            path: self.path.display().to_string(),
            source,
        }
    }
}

impl ShardIndex for SledIndex {
    fn get(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
        match self.shards.get(shard.as_bytes()).map_err(|e| self.err(e))? {
            Some(v) => ShardRecord::decode(shard, &v).map(Some),
            None => Ok(None),
        }
    }

    fn insert(&self, shard: &ShardId, record: &ShardRecord) -> Result<(), IndexError> {
        let prev = self
            .shards
            .insert(shard.as_bytes(), record.encode())
            .map_err(|e| self.err(e))?;
        if prev.is_none() {
            self.n_shards.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn remove(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
        match self
            .shards
            .remove(shard.as_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(v) => {
                self.n_shards.fetch_sub(1, Ordering::Relaxed);
                ShardRecord::decode(shard, &v).map(Some)
            }
            None => Ok(None),
        }
    }

    fn for_each(
        &self,
        f: &mut dyn FnMut(ShardId, Result<ShardRecord, IndexError>),
    ) -> Result<(), IndexError> {
        for item in self.shards.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            match ShardId::try_from_slice(&k) {
                Ok(shard) => f(shard, ShardRecord::decode(&shard, &v)),
                Err(e) => {
                    tracing::warn!(error = %e, "index has a shard key that is not a shard ID; skipped")
                }
            }
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.n_shards.load(Ordering::Relaxed)
    }

    fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, IndexError> {
        check_tree_name(name)?;
        let tree = self.db.open_tree(name).map_err(|e| self.err(e))?;
        Ok(Arc::new(SledTree {
            tree,
            path: self.path.clone(),
        }))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), IndexError>> {
        let db = self.db.clone();
        async move {
            match tokio::task::spawn_blocking(move || db.flush()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(self.err(e)),
                Err(join) => Err(IndexError::Flush {
                    reason: join.to_string(),
                }),
            }
        }
        .boxed()
    }
}

/// A named sled tree.
#[derive(Debug)]
struct SledTree {
    tree: sled::Tree,
    path: PathBuf,
}

impl SledTree {
    fn err(&self, source: sled::Error) -> IndexError {
        IndexError::Db {
            path: self.path.display().to_string(),
            source,
        }
    }
}

impl KvTree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self
            .tree
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self
            .tree
            .insert(key, value)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self
            .tree
            .remove(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvPairs, IndexError> {
        self.tree
            .scan_prefix(prefix)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// memory

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An index in memory: nothing survives the process. For tests.
#[derive(Debug, Default)]
pub struct MemIndex {
    shards: Mutex<BTreeMap<ShardId, ShardRecord>>,
    trees: Mutex<HashMap<String, Arc<MemTree>>>,
}

impl MemIndex {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ShardIndex for MemIndex {
    fn get(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
        Ok(lock(&self.shards).get(shard).cloned())
    }

    fn insert(&self, shard: &ShardId, record: &ShardRecord) -> Result<(), IndexError> {
        lock(&self.shards).insert(*shard, record.clone());
        Ok(())
    }

    fn remove(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
        Ok(lock(&self.shards).remove(shard))
    }

    fn for_each(
        &self,
        f: &mut dyn FnMut(ShardId, Result<ShardRecord, IndexError>),
    ) -> Result<(), IndexError> {
        let snapshot: Vec<(ShardId, ShardRecord)> = lock(&self.shards)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (k, v) in snapshot {
            f(k, Ok(v));
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        lock(&self.shards).len() as u64
    }

    fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, IndexError> {
        check_tree_name(name)?;
        let tree = lock(&self.trees)
            .entry(name.to_string())
            .or_default()
            .clone();
        Ok(tree)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), IndexError>> {
        futures::future::ready(Ok(())).boxed()
    }
}

/// A named tree in memory.
#[derive(Debug, Default)]
struct MemTree(Mutex<Map>);

impl KvTree for MemTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(lock(&self.0).get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(lock(&self.0).insert(key.to_vec(), value.to_vec()))
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(lock(&self.0).remove(key))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvPairs, IndexError> {
        Ok(lock(&self.0)
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(index: &dyn ShardIndex) {
        let a = ShardId::of(b"a");
        let b = ShardId::of(b"b");
        assert_eq!(index.len(), 0);
        assert!(index.get(&a).unwrap().is_none());
        index.insert(&a, &ShardRecord::new("disk0", 10)).unwrap();
        index.insert(&a, &ShardRecord::new("disk1", 10)).unwrap();
        index.insert(&b, &ShardRecord::new("disk0", 20)).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index.get(&a).unwrap(), Some(ShardRecord::new("disk1", 10)));
        let mut seen = Vec::new();
        index
            .for_each(&mut |s, r| seen.push((s, r.unwrap().size_bytes)))
            .unwrap();
        seen.sort();
        let mut want = vec![(a, 10), (b, 20)];
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(index.remove(&a).unwrap().unwrap().container, "disk1");
        assert!(index.remove(&a).unwrap().is_none());
        assert_eq!(index.len(), 1);

        let t = index.tree("manifests/1").unwrap();
        assert!(t.insert(b"k1", b"v1").unwrap().is_none());
        assert_eq!(t.insert(b"k1", b"v2").unwrap(), Some(b"v1".to_vec()));
        t.insert(b"k2", b"x").unwrap();
        t.insert(b"j", b"y").unwrap();
        assert_eq!(t.get(b"k1").unwrap(), Some(b"v2".to_vec()));
        let keys: Vec<Vec<u8>> = t
            .scan_prefix(b"k")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
        assert_eq!(t.iter().unwrap().len(), 3);
        assert_eq!(t.remove(b"k1").unwrap(), Some(b"v2".to_vec()));
        // The same name is the same tree.
        assert!(index
            .tree("manifests/1")
            .unwrap()
            .get(b"k2")
            .unwrap()
            .is_some());
        assert!(matches!(
            index.tree(SHARDS_TREE),
            Err(IndexError::ReservedTree { .. })
        ));
        assert!(index.tree("").is_err());
    }

    #[test]
    fn mem_index() {
        exercise(&MemIndex::new());
    }

    #[tokio::test]
    async fn sled_index_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        {
            let index = SledIndex::open(&path).unwrap();
            exercise(&index);
            index.flush().await.unwrap();
        }
        let index = SledIndex::open(&path).unwrap();
        assert_eq!(index.len(), 1);
        let b = ShardId::of(b"b");
        assert_eq!(index.get(&b).unwrap(), Some(ShardRecord::new("disk0", 20)));
        assert_eq!(
            index.tree("manifests/1").unwrap().get(b"k2").unwrap(),
            Some(b"x".to_vec())
        );
    }

    #[test]
    fn records_are_versioned() {
        let s = ShardId::of(b"s");
        let r = ShardRecord::new("disk0", 7);
        assert_eq!(ShardRecord::decode(&s, &r.encode()).unwrap(), r);
        let mut future = r.clone();
        future.version = 2;
        let e = ShardRecord::decode(&s, &future.encode()).unwrap_err();
        assert!(matches!(e, IndexError::Version { found: 2, .. }), "{e}");
        assert!(e.to_string().contains(&s.to_string()));
        let e = ShardRecord::decode(&s, b"\xff\x00garbage").unwrap_err();
        assert!(matches!(e, IndexError::Corrupt { .. }), "{e}");
    }
}
