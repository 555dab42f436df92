//! The shard store: a node's shards, verified, indexed and spread over its
//! data containers.
//!
//! [`ShardStore`] is a cheap cloneable handle. It owns the node's
//! [`index`] (sled, in `DIR/index`) and its containers (see
//! [`crate::container`]), and is the only code that writes shard records.
//!
//! # Data flow
//! - `put(id, bytes)`: BLAKE3 of the bytes must equal `id`, else
//!   [`StoreError::HashMismatch`] and nothing is written. A shard already
//!   stored (and not known corrupt) is acknowledged at once. Otherwise the
//!   containers with room are ranked by weighted rendezvous hashing (below),
//!   the shard goes to the first that accepts it, its record goes into the
//!   index, and the index is flushed. `put` returns `Ok` only after the
//!   container write and the flush have both succeeded.
//! - `get(id)`: the index names the container; the bytes read back are
//!   hashed, and bytes that do not hash to `id` are never returned:
//!   [`StoreError::Integrity`] names the shard, the container and both
//!   hashes, the shard is marked corrupt ([`ShardStore::corrupt_shards`]) and
//!   a warning is logged. A later `put` of good bytes replaces the copy.
//! - `delete(id)`: container first, then the index record, then a flush: a
//!   crash in between leaves a record without data, which the next open
//!   drops.
//!
//! # Ownership
//! One copy is kept per shard ID, and identical shards of different
//! objects (a zero-filled segment, a file and its appended version, two
//! uploads of one object) share it. So every copy written for an object
//! records who owns it: a [`ShardRef`] (object, generation, segment,
//! position) in the index tree `refs/1`, keyed by shard ID then owner,
//! written in the same flush as the shard record (`put_for`). Nodes never
//! delete a copy on behalf of an object; they release that object's
//! reference (`release`), and the copy goes only when the last reference
//! does. A copy with no reference at all (adopted from a container after a
//! crash, or stored by a tool without an owner) is never deleted by a
//! release. `delete` (scrub's removal of a corrupt copy) keeps the
//! references, so that a rebuilt copy is owned again.
//!
//! # Choosing a container
//! Among the containers with at least the shard's size free, container `j`
//! scores `free_j / -ln(u_j)`, with `u_j` uniform in (0, 1) from the shard
//! ID and the container's name ([`dynostore_protocol::placement::unit`]);
//! the highest score wins. So a shard lands in container `j` with
//! probability `free_j / sum(free)`: containers fill in proportion to their
//! free space, and the choice is deterministic for a given state. A
//! container that refuses (full after all, or failing) passes the shard to
//! the next one in the ranking.
//!
//! Durable containers come first: the ranking above orders the durable
//! containers (directories, buckets) with room, and volatile (memory)
//! containers only follow them, so a node with both keeps shards in memory
//! only once its durable containers are full, and then announces itself
//! volatile (`Announcement::is_volatile`). A shard the writer counted as
//! durable (`put_durable`) never goes to a volatile container: with no
//! durable room it is refused ([`StoreError::NotDurable`]), and so is one
//! whose existing copy is in memory, so that the writer places it on
//! another member.
//!
//! # Restart
//! Opening reconciles the index with the containers, which it lists once:
//! - a record whose data is gone (a memory container after a restart, a
//!   file deleted by hand, a container removed from the configuration) is
//!   dropped, so `has` and `list` never claim a shard that cannot be read;
//! - a record naming the wrong container, when the shard is found in
//!   another one (a container renamed), is pointed at the right one;
//! - a shard found in a container but not indexed (a crash between the
//!   container write and the flush) is adopted: its bytes are verified when
//!   read, like any other.
//!
//! A shard present in two containers is kept in both (each copy is
//! verified on read; scrub may remove the spare). The corrupt-shard set
//! lives in memory only; scrub finds bad copies again after a restart.
//!
//! # Concurrency
//! Operations on one shard are serialised by striped locks, so a put, a
//! delete and the record clean-up of a `get` never interleave on one shard.
//! Index calls are synchronous (sled's cache) and short; flushes run on the
//! blocking pool, one at a time, shared by every caller that arrived while
//! the previous one ran ([`commit::GroupCommit`]).

pub mod commit;
pub mod index;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dynostore_protocol::ids::ShardId;
use dynostore_protocol::manifest::{ShardRef, ShardSlot};
use dynostore_protocol::placement::unit;
use dynostore_protocol::wire::{ContainerReport, ErrorKind, MAX_SHARD_BYTES};

use crate::container::{self, ContainerError, ContainerSpec, ContainerStat, DataContainer};
pub use commit::{CommitStats, GroupCommit};
pub use index::{IndexError, KvPairs, KvTree, MemIndex, ShardIndex, ShardRecord, SledIndex};

/// Directory of the sled index under the node directory.
pub const INDEX_DIR: &str = "index";
/// Owner references of shard copies: shard ID, then [`ShardRef`] bytes.
const REFS_TREE: &str = "refs/1";

/// Shards at least this large are hashed on the blocking pool rather than
/// on the async worker (about 30 µs of BLAKE3 at 8 GB/s).
const HASH_INLINE_MAX_BYTES: usize = 256 << 10;

/// Number of shard locks; a shard uses lock `first byte of its ID`.
const SHARD_LOCK_STRIPES: usize = 256;

/// Why a store operation failed. [`StoreError::kind`] gives the wire form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("shard {shard} not found")]
    NotFound { shard: ShardId },
    #[error("shard {shard} refused: the bytes offered hash to {actual}")]
    HashMismatch { shard: ShardId, actual: ShardId },
    #[error("shard {shard} in container {container} is corrupt: expected BLAKE3 {expected}, read {actual}")]
    Integrity {
        shard: ShardId,
        container: String,
        expected: ShardId,
        actual: ShardId,
    },
    #[error("no container has room for shard {shard}: {needed_bytes} bytes needed, at most {free_bytes} bytes free in any one container")]
    Full {
        shard: ShardId,
        needed_bytes: u64,
        free_bytes: u64,
    },
    #[error("shard {shard} must be stored durably, but {reason}")]
    NotDurable { shard: ShardId, reason: String },
    #[error("shard {shard} of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        shard: ShardId,
        len_bytes: usize,
        max_bytes: usize,
    },
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("shard index: {0}")]
    Index(#[from] IndexError),
    #[error("store configuration: {reason}")]
    Config { reason: String },
    #[error("store directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The kind of error a remote peer is told.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::HashMismatch { .. } | StoreError::Integrity { .. } => ErrorKind::Integrity,
            StoreError::Full { .. } | StoreError::NotDurable { .. } => ErrorKind::Full,
            StoreError::TooLarge { .. } => ErrorKind::BadRequest,
            StoreError::Container(e) => match e {
                ContainerError::NotFound { .. } => ErrorKind::NotFound,
                ContainerError::Full { .. } => ErrorKind::Full,
                ContainerError::Backend { .. } => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            StoreError::Index(_) | StoreError::Config { .. } | StoreError::Io { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

/// Sums over all containers, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreTotals {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub n_shards: u64,
}

/// What reconciling the index with the containers changed at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Records kept as they were.
    pub n_indexed: u64,
    /// Records dropped because their data is gone.
    pub n_dropped: u64,
    /// Records pointed at the container where the shard really is.
    pub n_moved: u64,
    /// Shards found in a container without a record, now indexed.
    pub n_adopted: u64,
    /// Records that do not decode (left in place, reported as missing).
    pub n_unreadable: u64,
}

#[derive(Debug)]
struct Slot {
    container: Arc<dyn DataContainer>,
    /// Per-container input to the rendezvous score.
    hash: u64,
}

#[derive(Debug)]
struct Inner {
    index: Arc<dyn ShardIndex>,
    /// The same index: its flushes are shared by concurrent callers.
    commit: GroupCommit,
    refs: Arc<dyn KvTree>,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    corrupt: Mutex<BTreeSet<ShardId>>,
    corrupt_total: AtomicU64,
    shard_locks: Box<[tokio::sync::Mutex<()>]>,
    open_report: OpenReport,
}

/// Handle to the node's shards. Clones share everything.
#[derive(Debug, Clone)]
pub struct ShardStore {
    inner: Arc<Inner>,
}

fn container_hash(name: &str) -> u64 {
    let h = blake3::Hasher::new()
        .update(b"dynostore/container/1")
        .update(name.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

fn shard_key(shard: &ShardId) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&shard.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// BLAKE3 of `bytes`, off the async worker for large shards.
async fn hash_of(bytes: &Bytes) -> ShardId {
    if bytes.len() < HASH_INLINE_MAX_BYTES {
        return ShardId::of(bytes);
    }
    let b = bytes.clone();
    match tokio::task::spawn_blocking(move || ShardId::of(&b)).await {
        Ok(id) => id,
        // Only if the runtime is shutting down: hash here instead.
        Err(_) => ShardId::of(bytes),
    }
}

impl ShardStore {
    /// Opens the store of a node directory: the sled index in
    /// `dir/index` and one container per spec, then reconciles them (see
    /// the module header).
    pub async fn open(dir: &Path, specs: &[ContainerSpec]) -> Result<ShardStore, StoreError> {
        let index_path = dir.join(INDEX_DIR);
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let index = tokio::task::spawn_blocking(move || SledIndex::open(&index_path))
            .await
            .map_err(|e| StoreError::Config {
                reason: format!("opening the index was interrupted: {e}"),
            })??;
        let containers = Self::open_containers(specs).await?;
        Self::from_parts(Arc::new(index), containers).await
    }

    /// Opens one container per spec, refusing duplicate names.
    pub async fn open_containers(
        specs: &[ContainerSpec],
    ) -> Result<Vec<Arc<dyn DataContainer>>, StoreError> {
        let mut out: Vec<Arc<dyn DataContainer>> = Vec::with_capacity(specs.len());
        for spec in specs {
            let name = spec.name();
            if out.iter().any(|c| c.name() == name) {
                return Err(StoreError::Config {
                    reason: format!(
                        "two containers are named {name:?}; give one another name with name=..."
                    ),
                });
            }
            out.push(container::open(spec).await?);
        }
        Ok(out)
    }

    /// A store over an index and containers opened elsewhere; reconciles
    /// them like [`ShardStore::open`].
    pub async fn from_parts(
        index: Arc<dyn ShardIndex>,
        containers: Vec<Arc<dyn DataContainer>>,
    ) -> Result<ShardStore, StoreError> {
        if containers.is_empty() {
            return Err(StoreError::Config {
                reason: "no data containers configured".into(),
            });
        }
        let mut by_name = HashMap::new();
        for (i, c) in containers.iter().enumerate() {
            if by_name.insert(c.name().to_string(), i).is_some() {
                return Err(StoreError::Config {
                    reason: format!("two containers are named {:?}", c.name()),
                });
            }
        }
        let slots: Vec<Slot> = containers
            .into_iter()
            .map(|c| Slot {
                hash: container_hash(c.name()),
                container: c,
            })
            .collect();
        let commit = GroupCommit::new(index);
        let index: Arc<dyn ShardIndex> = Arc::new(commit.clone());
        let open_report = reconcile(index.as_ref(), &slots, &by_name).await?;
        let refs = index.tree(REFS_TREE)?;
        tracing::info!(
            n_containers = slots.len(),
            n_shards = index.len(),
            n_dropped = open_report.n_dropped,
            n_moved = open_report.n_moved,
            n_adopted = open_report.n_adopted,
            n_unreadable = open_report.n_unreadable,
            "shard store opened"
        );
        Ok(ShardStore {
            inner: Arc::new(Inner {
                index,
                commit,
                refs,
                slots,
                by_name,
                corrupt: Mutex::new(BTreeSet::new()),
                corrupt_total: AtomicU64::new(0),
                shard_locks: (0..SHARD_LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                open_report,
            }),
        })
    }

    /// What reconciling changed when the store was opened.
    pub fn open_report(&self) -> OpenReport {
        self.inner.open_report
    }

    fn container(&self, name: &str) -> Option<&Arc<dyn DataContainer>> {
        self.inner
            .by_name
            .get(name)
            .map(|&i| &self.inner.slots[i].container)
    }

    async fn lock_shard(&self, shard: &ShardId) -> tokio::sync::MutexGuard<'_, ()> {
        let locks = &self.inner.shard_locks;
        locks[usize::from(shard.as_bytes()[0]) % locks.len()]
            .lock()
            .await
    }

    fn corrupt_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<ShardId>> {
        self.inner
            .corrupt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_corrupt(&self, shard: &ShardId) -> bool {
        self.corrupt_set().contains(shard)
    }

    /// Stores a shard without an owner (tools and tests): such a copy is
    /// never removed by [`ShardStore::release`]. Nodes use `put_for`.
    pub async fn put(&self, shard: ShardId, bytes: Bytes) -> Result<(), StoreError> {
        self.put_inner(shard, bytes, None, false).await
    }

    /// Stores a shard for its owner after checking that `bytes` hash to the
    /// shard ID. Idempotent; returns once the bytes, the index record and
    /// the owner's reference are durable.
    pub async fn put_for(&self, slot: ShardSlot, bytes: Bytes) -> Result<(), StoreError> {
        self.put_inner(slot.shard, bytes, Some(slot.owner), false)
            .await
    }

    /// [`ShardStore::put_for`] for a copy the writer counts as durable:
    /// never kept in a volatile container (see the module header).
    pub async fn put_durable(&self, slot: ShardSlot, bytes: Bytes) -> Result<(), StoreError> {
        self.put_inner(slot.shard, bytes, Some(slot.owner), true)
            .await
    }

    /// Whether a container is volatile (its contents do not survive a
    /// restart).
    fn is_volatile(c: &dyn DataContainer) -> bool {
        c.kind() == container::ContainerKind::Memory
    }

    fn ref_key(shard: &ShardId, owner: &ShardRef) -> Vec<u8> {
        let mut k = Vec::with_capacity(32 + ShardRef::LEN);
        k.extend_from_slice(shard.as_bytes());
        k.extend_from_slice(&owner.to_bytes());
        k
    }

    /// Records `owner`'s reference; whether it is new.
    fn add_ref(&self, shard: &ShardId, owner: Option<ShardRef>) -> Result<bool, StoreError> {
        match owner {
            Some(o) => Ok(self
                .inner
                .refs
                .insert(&Self::ref_key(shard, &o), &[])?
                .is_none()),
            None => Ok(false),
        }
    }

    #[tracing::instrument(skip_all, fields(shard = %shard.short(), len = bytes.len()))]
    async fn put_inner(
        &self,
        shard: ShardId,
        bytes: Bytes,
        owner: Option<ShardRef>,
        durable: bool,
    ) -> Result<(), StoreError> {
        if bytes.len() > MAX_SHARD_BYTES {
            return Err(StoreError::TooLarge {
                shard,
                len_bytes: bytes.len(),
                max_bytes: MAX_SHARD_BYTES,
            });
        }
        let actual = hash_of(&bytes).await;
        if actual != shard {
            tracing::warn!(actual = %actual.short(), "refused shard: bytes do not hash to its ID");
            return Err(StoreError::HashMismatch { shard, actual });
        }
        let _guard = self.lock_shard(&shard).await;
        let index = &self.inner.index;
        if let Some(rec) = index.get(&shard)? {
            if !self.is_corrupt(&shard) {
                let in_memory = self
                    .container(&rec.container)
                    .is_none_or(|c| Self::is_volatile(c.as_ref()));
                if durable && in_memory {
                    return Err(StoreError::NotDurable {
                        shard,
                        reason: format!("its copy here is in container {}", rec.container),
                    });
                }
                if self.add_ref(&shard, owner)? {
                    index.flush().await?;
                }
                return Ok(());
            }
            // Replace a copy known to be bad.
            if let Some(c) = self.container(&rec.container) {
                if let Err(e) = c.delete(&shard).await {
                    tracing::warn!(container = %rec.container, error = %e, "cannot delete a corrupt copy");
                }
            }
            index.remove(&shard)?;
        }

        let len_bytes = bytes.len() as u64;
        let mut last_failure: Option<ContainerError> = None;
        let mut chosen = None;
        for i in self.rank(&shard, len_bytes).await.order {
            let c = &self.inner.slots[i].container;
            if durable && Self::is_volatile(c.as_ref()) {
                continue;
            }
            match c.put(&shard, bytes.clone()).await {
                Ok(()) => {
                    chosen = Some(i);
                    break;
                }
                // Filled up since it was ranked: try the next.
                Err(ContainerError::Full { .. }) => {}
                Err(e) => {
                    tracing::warn!(container = %c.name(), error = %e, "container refused a shard; trying the next");
                    last_failure = Some(e);
                }
            }
        }
        let Some(i) = chosen else {
            return Err(match last_failure {
                Some(e) => StoreError::Container(e),
                None if durable => StoreError::NotDurable {
                    shard,
                    reason: "no durable container has room".into(),
                },
                None => StoreError::Full {
                    shard,
                    needed_bytes: len_bytes,
                    free_bytes: self.rank(&shard, u64::MAX).await.max_free_bytes,
                },
            });
        };
        let c = &self.inner.slots[i].container;
        if let Err(e) = index.insert(&shard, &ShardRecord::new(c.name(), len_bytes)) {
            if let Err(d) = c.delete(&shard).await {
                tracing::warn!(container = %c.name(), error = %d, "cannot remove an unindexed shard; the next open adopts it");
            }
            return Err(e.into());
        }
        self.add_ref(&shard, owner)?;
        index.flush().await?;
        self.corrupt_set().remove(&shard);
        tracing::debug!(container = %c.name(), "shard stored");
        Ok(())
    }

    /// Containers that can take `len_bytes` now, best first: durable ones
    /// before volatile ones.
    async fn rank(&self, shard: &ShardId, len_bytes: u64) -> Ranking {
        let key = shard_key(shard);
        let mut scored: Vec<(f64, usize)> = Vec::new();
        let mut max_free_bytes = 0u64;
        for (i, slot) in self.inner.slots.iter().enumerate() {
            let free = match slot.container.stat().await {
                Ok(s) => s.free_bytes,
                Err(e) => {
                    tracing::warn!(container = %slot.container.name(), error = %e, "cannot stat a container; skipped");
                    continue;
                }
            };
            max_free_bytes = max_free_bytes.max(free);
            if free >= len_bytes {
                let score = free.max(1) as f64 / -unit(key ^ slot.hash).ln();
                scored.push((score, i));
            }
        }
        let volatile = |i: usize| Self::is_volatile(self.inner.slots[i].container.as_ref());
        scored.sort_by(|a, b| {
            volatile(a.1)
                .cmp(&volatile(b.1))
                .then(b.0.total_cmp(&a.0))
                .then(a.1.cmp(&b.1))
        });
        Ranking {
            order: scored.into_iter().map(|(_, i)| i).collect(),
            max_free_bytes,
        }
    }

    /// The verified bytes of a shard.
    #[tracing::instrument(skip_all, fields(shard = %shard.short()))]
    pub async fn get(&self, shard: &ShardId) -> Result<Bytes, StoreError> {
        let not_found = || StoreError::NotFound { shard: *shard };
        let rec = self.inner.index.get(shard)?.ok_or_else(not_found)?;
        let Some(c) = self.container(&rec.container) else {
            return Err(not_found());
        };
        let bytes = match c.get(shard).await {
            Ok(b) => b,
            Err(ContainerError::NotFound { .. }) => {
                tracing::warn!(container = %rec.container, "indexed shard is missing from its container; dropping the record");
                self.drop_record_if(shard, &rec).await?;
                return Err(not_found());
            }
            Err(e) => return Err(e.into()),
        };
        let actual = hash_of(&bytes).await;
        if actual != *shard {
            self.corrupt_set().insert(*shard);
            self.inner.corrupt_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                container = %rec.container,
                actual = %actual.short(),
                len = bytes.len(),
                "stored shard is corrupt"
            );
            return Err(StoreError::Integrity {
                shard: *shard,
                container: rec.container,
                expected: *shard,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Removes the record of `shard` if it is still `rec`.
    async fn drop_record_if(&self, shard: &ShardId, rec: &ShardRecord) -> Result<(), StoreError> {
        let _guard = self.lock_shard(shard).await;
        if self.inner.index.get(shard)?.as_ref() == Some(rec) {
            self.inner.index.remove(shard)?;
            self.inner.index.flush().await?;
        }
        Ok(())
    }

    /// Whether the shard is indexed and not known to be corrupt.
    pub async fn has(&self, shard: &ShardId) -> Result<bool, StoreError> {
        Ok(self.inner.index.get(shard)?.is_some() && !self.is_corrupt(shard))
    }

    /// Whether the copy `slot` names is stored intact as far as the index
    /// knows, and its owner's reference is recorded.
    pub async fn has_slot(&self, slot: &ShardSlot) -> Result<bool, StoreError> {
        Ok(self.has(&slot.shard).await?
            && self
                .inner
                .refs
                .get(&Self::ref_key(&slot.shard, &slot.owner))?
                .is_some())
    }

    /// Every recorded reference whose owner's generation began before
    /// `cutoff_ms` (wall clock), at most `limit`, in shard order.
    pub fn refs_older_than(
        &self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<ShardSlot>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.inner.refs.iter()? {
            if out.len() >= limit {
                break;
            }
            let (Some(shard), Some(owner)) = (
                k.get(..32)
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(ShardId::from_bytes),
                k.get(32..).and_then(ShardRef::from_bytes),
            ) else {
                continue;
            };
            if owner.generation.ms < cutoff_ms {
                out.push(ShardSlot { shard, owner });
            }
        }
        Ok(out)
    }

    /// The owners recorded for a shard's copy.
    pub fn owners(&self, shard: &ShardId) -> Result<Vec<ShardRef>, StoreError> {
        Ok(self
            .inner
            .refs
            .scan_prefix(shard.as_bytes())?
            .into_iter()
            .filter_map(|(k, _)| ShardRef::from_bytes(k.get(32..)?))
            .collect())
    }

    /// Releases `slot.owner`'s reference to the copy of `slot.shard`, and
    /// deletes the copy when no reference is left. Returns whether the copy
    /// was deleted. Releasing an owner that holds no reference changes
    /// nothing (an unowned copy stays).
    #[tracing::instrument(skip_all, fields(shard = %slot.shard.short()))]
    pub async fn release(&self, slot: &ShardSlot) -> Result<bool, StoreError> {
        let shard = &slot.shard;
        let _guard = self.lock_shard(shard).await;
        let index = &self.inner.index;
        let had = self
            .inner
            .refs
            .remove(&Self::ref_key(shard, &slot.owner))?
            .is_some();
        if !had {
            return Ok(false);
        }
        if !self.inner.refs.scan_prefix(shard.as_bytes())?.is_empty() {
            index.flush().await?;
            return Ok(false);
        }
        let Some(rec) = index.get(shard)? else {
            index.flush().await?;
            return Ok(false);
        };
        if let Some(c) = self.container(&rec.container) {
            if let Err(e) = c.delete(shard).await {
                // Keep the reference, so that the release is tried again.
                self.inner
                    .refs
                    .insert(&Self::ref_key(shard, &slot.owner), &[])?;
                return Err(e.into());
            }
        }
        index.remove(shard)?;
        index.flush().await?;
        self.corrupt_set().remove(shard);
        Ok(true)
    }

    /// Name of the container the index names for a shard.
    pub fn container_of(&self, shard: &ShardId) -> Result<Option<String>, StoreError> {
        Ok(self.inner.index.get(shard)?.map(|r| r.container))
    }

    /// Deletes a shard; `false` if it was not stored.
    #[tracing::instrument(skip_all, fields(shard = %shard.short()))]
    pub async fn delete(&self, shard: &ShardId) -> Result<bool, StoreError> {
        let _guard = self.lock_shard(shard).await;
        let index = &self.inner.index;
        let Some(rec) = index.get(shard)? else {
            self.corrupt_set().remove(shard);
            return Ok(false);
        };
        if let Some(c) = self.container(&rec.container) {
            c.delete(shard).await?;
        }
        index.remove(shard)?;
        index.flush().await?;
        self.corrupt_set().remove(shard);
        Ok(true)
    }

    /// Every indexed shard, in ID order.
    pub fn list(&self) -> Result<Vec<ShardId>, StoreError> {
        let mut out = Vec::with_capacity(self.inner.index.len() as usize);
        self.inner.index.for_each(&mut |s, _| out.push(s))?;
        Ok(out)
    }

    /// Number of indexed shards.
    pub fn shard_count(&self) -> u64 {
        self.inner.index.len()
    }

    /// Shards whose stored copy failed verification since start, until
    /// they are replaced or deleted.
    pub fn corrupt_shards(&self) -> Vec<ShardId> {
        self.corrupt_set().iter().copied().collect()
    }

    /// How many reads have failed verification since start.
    pub fn corrupt_total(&self) -> u64 {
        self.inner.corrupt_total.load(Ordering::Relaxed)
    }

    async fn stats(&self) -> Vec<(&Arc<dyn DataContainer>, Option<ContainerStat>)> {
        let mut out = Vec::with_capacity(self.inner.slots.len());
        for slot in &self.inner.slots {
            let stat = match slot.container.stat().await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(container = %slot.container.name(), error = %e, "cannot stat a container");
                    None
                }
            };
            out.push((&slot.container, stat));
        }
        out
    }

    /// Capacity and free space per container, for announcements. A
    /// container that cannot be stat'ed reports no free space.
    pub async fn reports(&self) -> Vec<ContainerReport> {
        self.stats()
            .await
            .into_iter()
            .map(|(c, s)| ContainerReport {
                name: c.name().to_string(),
                kind: c.kind().as_str().to_string(),
                capacity_bytes: s.map_or(0, |s| s.capacity_bytes),
                free_bytes: s.map_or(0, |s| s.free_bytes.min(s.capacity_bytes)),
            })
            .collect()
    }

    /// Sums over all containers.
    pub async fn totals(&self) -> StoreTotals {
        let mut t = StoreTotals {
            n_shards: self.shard_count(),
            ..StoreTotals::default()
        };
        for (_, s) in self.stats().await {
            if let Some(s) = s {
                t.capacity_bytes += s.capacity_bytes;
                t.used_bytes += s.used_bytes;
                t.free_bytes += s.free_bytes;
            }
        }
        t
    }

    /// A named tree of the index for other records (see
    /// [`ShardIndex::tree`]); [`ShardStore::flush`] makes its writes durable.
    pub fn kv_tree(&self, name: &str) -> Result<Arc<dyn KvTree>, StoreError> {
        Ok(self.inner.index.tree(name)?)
    }

    /// Makes every index write so far durable (in a flush shared with
    /// concurrent callers: see [`commit`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        Ok(self.inner.index.flush().await?)
    }

    /// Index flushes requested and run so far.
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.commit.stats()
    }
}

#[derive(Debug)]
struct Ranking {
    order: Vec<usize>,
    max_free_bytes: u64,
}

/// Brings the index in line with what the containers hold (see the module
/// header).
async fn reconcile(
    index: &dyn ShardIndex,
    slots: &[Slot],
    by_name: &HashMap<String, usize>,
) -> Result<OpenReport, StoreError> {
    // Where each shard really is: (container, size) of its first copy,
    // plus the set of containers holding one.
    let mut present: HashMap<ShardId, (usize, u64, Vec<usize>)> = HashMap::new();
    for (i, slot) in slots.iter().enumerate() {
        for l in slot.container.list().await? {
            present
                .entry(l.shard)
                .and_modify(|e| e.2.push(i))
                .or_insert((i, l.size_bytes, vec![i]));
        }
    }
    let mut report = OpenReport::default();
    let mut drop_ids = Vec::new();
    let mut moves = Vec::new();
    let mut seen = std::collections::HashSet::new();
    index.for_each(&mut |shard, rec| {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(shard = %shard.short(), error = %e, "unreadable index record left in place");
                report.n_unreadable += 1;
                return;
            }
        };
        seen.insert(shard);
        let here = by_name.get(&rec.container).copied();
        match present.get(&shard) {
            Some((_, _, holders)) if here.is_some_and(|h| holders.contains(&h)) => {
                report.n_indexed += 1;
            }
            Some(&(first, size, _)) => moves.push((shard, first, size)),
            None => drop_ids.push((shard, rec.container)),
        }
    })?;
    for (shard, container) in &drop_ids {
        tracing::warn!(shard = %shard.short(), %container, "shard data gone; dropping its index record");
        index.remove(shard)?;
    }
    report.n_dropped = drop_ids.len() as u64;
    for (shard, i, size) in &moves {
        let name = slots[*i].container.name();
        tracing::info!(shard = %shard.short(), container = %name, "index record pointed at the container that holds the shard");
        index.insert(shard, &ShardRecord::new(name, *size))?;
    }
    report.n_moved = moves.len() as u64;
    for (shard, (i, size, _)) in &present {
        if !seen.contains(shard) {
            index.insert(shard, &ShardRecord::new(slots[*i].container.name(), *size))?;
            report.n_adopted += 1;
        }
    }
    if report.n_adopted > 0 {
        tracing::info!(
            n_adopted = report.n_adopted,
            "unindexed shards found in containers were adopted"
        );
    }
    index.flush().await?;
    Ok(report)
}

#[cfg(test)]
mod tests;
