//! Group commit of index flushes.
//!
//! Every acknowledged write waits for an index flush (a shard record, a
//! manifest replica, a release). With many requests at once, one flush per
//! request queues the disk syncs one behind the other; [`GroupCommit`]
//! makes concurrent requests share them: one flush runs at a time, and every
//! request that arrives while it runs waits for the *next* flush, which
//! starts as soon as the running one ends and covers all of them.
//!
//! The promise is unchanged: `flush()` returns `Ok` only after a flush that
//! *started after the call* (so after every write the caller made before
//! calling) has completed. A flush that was already running when the call
//! arrived never counts for it, since it may have missed the caller's
//! writes.
//!
//! Each flush runs as its own task, so a caller that gives up (its request
//! is cancelled) never leaves the others waiting on a flush nobody drives.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dynostore_protocol::ids::ShardId;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::index::{IndexError, KvTree, ShardIndex, ShardRecord};

/// Flush requests and the flushes that served them (for the metrics and
/// the bench: requests / flushes is the batch size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub requests: u64,
    pub flushes: u64,
}

#[derive(Debug)]
struct State {
    /// Flushes started so far; the running one (if any) is number `started`.
    started: u64,
    /// The last flush that ended.
    completed: u64,
    running: bool,
    /// How the last flush ended.
    last: Result<(), String>,
}

struct Core {
    index: Arc<dyn ShardIndex>,
    state: Mutex<State>,
    /// Sends the number of each flush that ends.
    done: tokio::sync::watch::Sender<u64>,
    requests: AtomicU64,
    flushes: AtomicU64,
}

/// A [`ShardIndex`] whose flushes are shared by concurrent callers.
#[derive(Clone)]
pub struct GroupCommit {
    core: Arc<Core>,
}

impl fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("index", &self.core.index)
            .field("stats", &self.stats())
            .finish()
    }
}

impl GroupCommit {
    pub fn new(index: Arc<dyn ShardIndex>) -> Self {
        let (done, _) = tokio::sync::watch::channel(0);
        GroupCommit {
            core: Arc::new(Core {
                index,
                state: Mutex::new(State {
                    started: 0,
                    completed: 0,
                    running: false,
                    last: Ok(()),
                }),
                done,
                requests: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
            }),
        }
    }

    pub fn stats(&self) -> CommitStats {
        CommitStats {
            requests: self.core.requests.load(Ordering::Relaxed),
            flushes: self.core.flushes.load(Ordering::Relaxed),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.core
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts flush number `epoch` as a task.
    fn start(&self, epoch: u64) {
        let core = self.core.clone();
        core.flushes.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let r = core.index.flush().await;
            {
                let mut st = core.state.lock().unwrap_or_else(PoisonError::into_inner);
                st.running = false;
                st.completed = epoch;
                st.last = r.map_err(|e| e.to_string());
            }
            core.done.send_replace(epoch);
        });
    }

    async fn flush_grouped(&self) -> Result<(), IndexError> {
        self.core.requests.fetch_add(1, Ordering::Relaxed);
        // Subscribed before the state is read: an end sent after the read
        // wakes this caller.
        let mut rx = self.core.done.subscribe();
        // The first flush to start from now on covers this caller's writes.
        let target = self.state().started + 1;
        loop {
            {
                let mut st = self.state();
                if st.completed >= target {
                    return st
                        .last
                        .clone()
                        .map_err(|reason| IndexError::Flush { reason });
                }
                if !st.running {
                    st.running = true;
                    st.started += 1;
                    let epoch = st.started;
                    drop(st);
                    self.start(epoch);
                }
            }
            if rx.changed().await.is_err() {
                return Err(IndexError::Flush {
                    reason: "the index is closing".into(),
                });
            }
        }
    }
}

impl ShardIndex for GroupCommit {
    fn get(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
        self.core.index.get(shard)
    }

    fn insert(&self, shard: &ShardId, record: &ShardRecord) -> Result<(), IndexError> {
        self.core.index.insert(shard, record)
    }

    fn remove(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
        self.core.index.remove(shard)
    }

    fn for_each(
        &self,
        f: &mut dyn FnMut(ShardId, Result<ShardRecord, IndexError>),
    ) -> Result<(), IndexError> {
        self.core.index.for_each(f)
    }

    fn len(&self) -> u64 {
        self.core.index.len()
    }

    fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, IndexError> {
        self.core.index.tree(name)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), IndexError>> {
        self.flush_grouped().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemIndex;
    use std::time::Duration;

    /// An index that counts writes and, per flush, makes durable exactly
    /// the writes made before that flush started.
    #[derive(Debug, Default)]
    struct Counting {
        mem: MemIndex,
        writes: AtomicU64,
        durable: AtomicU64,
        flushes: AtomicU64,
    }

    impl ShardIndex for Counting {
        fn get(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
            self.mem.get(shard)
        }
        fn insert(&self, shard: &ShardId, record: &ShardRecord) -> Result<(), IndexError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.mem.insert(shard, record)
        }
        fn remove(&self, shard: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
            self.mem.remove(shard)
        }
        fn for_each(
            &self,
            f: &mut dyn FnMut(ShardId, Result<ShardRecord, IndexError>),
        ) -> Result<(), IndexError> {
            self.mem.for_each(f)
        }
        fn len(&self) -> u64 {
            self.mem.len()
        }
        fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, IndexError> {
            self.mem.tree(name)
        }
        fn flush(&self) -> BoxFuture<'_, Result<(), IndexError>> {
            async move {
                let covered = self.writes.load(Ordering::SeqCst);
                self.flushes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.durable.fetch_max(covered, Ordering::SeqCst);
                Ok(())
            }
            .boxed()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_flush_covers_the_writes_before_it_and_flushes_are_shared() {
        let counting = Arc::new(Counting::default());
        let gc = GroupCommit::new(counting.clone());
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let gc = gc.clone();
                let counting = counting.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(u64::from(i % 7) * 300)).await;
                    let id = ShardId::of(&i.to_le_bytes());
                    gc.insert(&id, &ShardRecord::new("c", 1)).unwrap();
                    let mine = counting.writes.load(Ordering::SeqCst);
                    gc.flush().await.unwrap();
                    // Acknowledged: at least every write up to this one is durable.
                    assert!(
                        counting.durable.load(Ordering::SeqCst) >= mine,
                        "write {mine} acknowledged before a flush covered it"
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let stats = gc.stats();
        assert_eq!(stats.requests, 200);
        assert_eq!(stats.flushes, counting.flushes.load(Ordering::SeqCst));
        // Shared: far fewer flushes than requests.
        assert!(stats.flushes < 100, "{stats:?}");
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_callers() {
        #[derive(Debug, Default)]
        struct Failing(MemIndex);
        impl ShardIndex for Failing {
            fn get(&self, s: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
                self.0.get(s)
            }
            fn insert(&self, s: &ShardId, r: &ShardRecord) -> Result<(), IndexError> {
                self.0.insert(s, r)
            }
            fn remove(&self, s: &ShardId) -> Result<Option<ShardRecord>, IndexError> {
                self.0.remove(s)
            }
            fn for_each(
                &self,
                f: &mut dyn FnMut(ShardId, Result<ShardRecord, IndexError>),
            ) -> Result<(), IndexError> {
                self.0.for_each(f)
            }
            fn len(&self) -> u64 {
                self.0.len()
            }
            fn tree(&self, name: &str) -> Result<Arc<dyn KvTree>, IndexError> {
                self.0.tree(name)
            }
            fn flush(&self) -> BoxFuture<'_, Result<(), IndexError>> {
                futures::future::ready(Err(IndexError::Flush {
                    reason: "disk gone".into(),
                }))
                .boxed()
            }
        }
        let gc = GroupCommit::new(Arc::new(Failing::default()));
        let e = gc.flush().await.unwrap_err();
        assert!(e.to_string().contains("disk gone"), "{e}");
    }
}
