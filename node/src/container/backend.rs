//! [`OpendalContainer`]: the one [`DataContainer`] implementation, over an
//! OpenDAL operator of any service (fs, memory, S3, WebDAV, SFTP).
//!
//! Accounting: `used` is the exact sum of the sizes of the shard objects.
//! It is counted by one listing at open and then changed only by this
//! process, by the size difference each put or delete makes. To learn the
//! old size of a key the container stats it first, under a striped lock on
//! the key, so two operations on one key never interleave. A put first
//! reserves its growth (`reserved`), which makes the quota check and the
//! reservation one atomic step; the write happens outside the accounting
//! lock. If a write fails, the key is stat'ed again and `used` follows what
//! the backend really holds.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use dynostore_protocol::ids::ShardId;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use opendal::layers::TimeoutLayer;
use opendal::{EntryMode, ErrorKind, Operator};

use super::spec::{ContainerSpec, SpecError};
use super::{
    parse_shard_path, shard_path, ContainerError, ContainerKind, ContainerStat, DataContainer,
    ListedShard,
};

/// Timeout of one control operation (stat, delete, a whole list page) on a
/// remote container.
pub const REMOTE_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one IO step (reading or writing a chunk) on a remote container.
pub const REMOTE_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Directory under a `dir` container's root where writes are staged before
/// the rename; emptied at open.
const STAGING_DIR: &str = ".staging";

/// Number of key locks; a key uses lock `first byte of its ID`.
const KEY_LOCK_STRIPES: usize = 256;

#[derive(Debug, Default)]
struct Accounting {
    used_bytes: u64,
    /// Growth of puts in flight.
    reserved_bytes: u64,
}

impl Accounting {
    /// What a put may still grow by. `fs_free_bytes` is the filesystem's
    /// own free space, for directories.
    fn free_bytes(&self, quota_bytes: u64, fs_free_bytes: Option<u64>) -> u64 {
        let by_quota =
            quota_bytes.saturating_sub(self.used_bytes.saturating_add(self.reserved_bytes));
        match fs_free_bytes {
            Some(fs) => by_quota.min(fs.saturating_sub(self.reserved_bytes)),
            None => by_quota,
        }
    }
}

/// A data container over an OpenDAL operator.
#[derive(Debug)]
pub struct OpendalContainer {
    name: String,
    kind: ContainerKind,
    op: Operator,
    quota_bytes: u64,
    /// Directory whose filesystem bounds the free space (`dir` only).
    fs_root: Option<PathBuf>,
    acct: Mutex<Accounting>,
    key_locks: Box<[tokio::sync::Mutex<()>]>,
}

impl OpendalContainer {
    /// Builds the operator a spec describes and counts what it already
    /// holds (one full listing). A `dir` container's directory is created if
    /// missing; an S3 bucket must exist. The container takes the name
    /// [`ContainerSpec::name`].
    pub async fn open(spec: &ContainerSpec) -> Result<Self, ContainerError> {
        let name = spec.name();
        spec.validate().map_err(|source| ContainerError::Spec {
            container: name.clone(),
            source: Box::new(source),
        })?;
        let (kind, op, fs_root) = build_operator(&name, spec)?;
        let container = OpendalContainer {
            name,
            kind,
            op,
            quota_bytes: spec.quota().bytes(),
            fs_root,
            acct: Mutex::new(Accounting::default()),
            key_locks: (0..KEY_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        };
        let mut used_bytes = 0u64;
        let mut n_shards = 0u64;
        container
            .scan(|listed| {
                used_bytes = used_bytes.saturating_add(listed.size_bytes);
                n_shards += 1;
            })
            .await?;
        container.acct().used_bytes = used_bytes;
        tracing::info!(
            container = %container.name,
            kind = %container.kind,
            n_shards,
            used_bytes,
            quota_bytes = container.quota_bytes,
            "container opened"
        );
        Ok(container)
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    fn acct(&self) -> MutexGuard<'_, Accounting> {
        // Nothing panics while holding this lock; a poisoned lock still
        // holds consistent numbers.
        self.acct.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn lock_key(&self, shard: &ShardId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = usize::from(shard.as_bytes()[0]) % self.key_locks.len();
        self.key_locks[stripe].lock().await
    }

    fn backend_err(&self, op: &'static str, source: opendal::Error) -> ContainerError {
        ContainerError::Backend {
            container: self.name.clone(),
            op,
            source: Box::new(source),
        }
    }

    /// Size of the object at `path`, `None` if there is none.
    async fn size_of(&self, path: &str) -> Result<Option<u64>, ContainerError> {
        match self.op.stat(path).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.backend_err("stat", e)),
        }
    }

    /// Runs blocking filesystem work on the blocking pool.
    async fn blocking_io<T: Send + 'static>(
        &self,
        op: &'static str,
        path: PathBuf,
        f: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, ContainerError> {
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || f(&path))
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())))
            .map_err(|source| ContainerError::Io {
                container: self.name.clone(),
                op,
                path: shown,
                source,
            })
    }

    /// Free bytes of the filesystem under a `dir` container, for
    /// unprivileged users (`f_bavail`).
    async fn fs_free_bytes(&self) -> Result<Option<u64>, ContainerError> {
        let Some(root) = self.fs_root.clone() else {
            return Ok(None);
        };
        self.blocking_io("statvfs", root, |root| {
            rustix::fs::statvfs(root)
                .map(|s| Some(s.f_bavail.saturating_mul(s.f_frsize)))
                .map_err(std::io::Error::from)
        })
        .await
    }

    /// Whether the directory of a shard path exists yet (`dir` only).
    async fn fs_parent_exists(&self, path: &str) -> bool {
        match (&self.fs_root, path.rsplit_once('/')) {
            (Some(root), Some((parent, _))) => tokio::fs::metadata(root.join(parent)).await.is_ok(),
            _ => true,
        }
    }

    /// Syncs the directory of a freshly renamed shard file, and its parents
    /// up to the root when the write created them (`dir` only).
    async fn fs_sync_dirs(&self, path: &str, created_dirs: bool) -> Result<(), ContainerError> {
        let (Some(root), Some((parent, _))) = (self.fs_root.clone(), path.rsplit_once('/')) else {
            return Ok(());
        };
        let mut dirs = vec![root.join(parent)];
        if created_dirs {
            if let Some((grandparent, _)) = parent.rsplit_once('/') {
                dirs.push(root.join(grandparent));
            }
            dirs.push(root.clone());
        }
        let shard_dir = dirs[0].clone();
        self.blocking_io("fsync", shard_dir, move |_| {
            for d in &dirs {
                std::fs::File::open(d)?.sync_all()?;
            }
            Ok(())
        })
        .await
    }

    /// Calls `each` for every shard object under the root.
    async fn scan(&self, mut each: impl FnMut(ListedShard)) -> Result<(), ContainerError> {
        let mut lister = self
            .op
            .lister_with("/")
            .recursive(true)
            .await
            .map_err(|e| self.backend_err("list", e))?;
        while let Some(entry) = lister
            .try_next()
            .await
            .map_err(|e| self.backend_err("list", e))?
        {
            let meta = entry.metadata();
            if meta.is_dir() {
                continue;
            }
            let Some(shard) = parse_shard_path(entry.path()) else {
                continue;
            };
            // Some services (memory) list without sizes: ask for them.
            let size_bytes = if meta.mode() == EntryMode::FILE {
                meta.content_length()
            } else {
                match self.size_of(entry.path()).await? {
                    Some(n) => n,
                    None => continue,
                }
            };
            each(ListedShard { shard, size_bytes });
        }
        Ok(())
    }

    async fn put_inner(&self, shard: &ShardId, bytes: Bytes) -> Result<(), ContainerError> {
        let path = shard_path(shard);
        let new_bytes = bytes.len() as u64;
        let _key = self.lock_key(shard).await;
        let old_bytes = self.size_of(&path).await?;
        let growth_bytes = new_bytes.saturating_sub(old_bytes.unwrap_or(0));
        let fs_free = if growth_bytes > 0 {
            self.fs_free_bytes().await?
        } else {
            None
        };
        {
            let mut acct = self.acct();
            let free_bytes = acct.free_bytes(self.quota_bytes, fs_free);
            if growth_bytes > free_bytes {
                tracing::debug!(
                    container = %self.name,
                    shard = %shard.short(),
                    growth_bytes,
                    free_bytes,
                    "put refused: full"
                );
                return Err(ContainerError::Full {
                    container: self.name.clone(),
                    needed_bytes: growth_bytes,
                    free_bytes,
                });
            }
            acct.reserved_bytes += growth_bytes;
        }
        let parent_existed = self.fs_parent_exists(&path).await;
        let written = self.op.write(&path, bytes).await;
        {
            let mut acct = self.acct();
            acct.reserved_bytes = acct.reserved_bytes.saturating_sub(growth_bytes);
            if written.is_ok() {
                acct.used_bytes = acct
                    .used_bytes
                    .saturating_sub(old_bytes.unwrap_or(0))
                    .saturating_add(new_bytes);
            }
        }
        match written {
            Ok(_) => self.fs_sync_dirs(&path, !parent_existed).await,
            Err(e) => {
                self.resync(shard, &path, old_bytes).await;
                Err(self.backend_err("write", e))
            }
        }
    }

    /// After a failed write: counts what the backend really holds at `path`.
    async fn resync(&self, shard: &ShardId, path: &str, old_bytes: Option<u64>) {
        match self.size_of(path).await {
            Ok(now) => {
                let mut acct = self.acct();
                acct.used_bytes = acct
                    .used_bytes
                    .saturating_sub(old_bytes.unwrap_or(0))
                    .saturating_add(now.unwrap_or(0));
            }
            Err(e) => tracing::warn!(
                container = %self.name,
                shard = %shard.short(),
                error = %e,
                "cannot stat a shard after a failed write; used bytes may be off until restart"
            ),
        }
    }

    async fn get_inner(&self, shard: &ShardId) -> Result<Bytes, ContainerError> {
        // A `dir` container reads its file in one blocking call: opendal's
        // fs reader zero-fills each buffer before reading into it, which
        // cost a holder about an eighth of its CPU on a get (perf, 256 MiB
        // object, 2026-12-07).
        if let Some(root) = &self.fs_root {
            let path = root.join(shard_path(shard));
            return match self.blocking_io("read", path, |p| std::fs::read(p)).await {
                Ok(v) => Ok(Bytes::from(v)),
                Err(ContainerError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Err(ContainerError::NotFound {
                        container: self.name.clone(),
                        shard: *shard,
                    })
                }
                Err(e) => Err(e),
            };
        }
        match self.op.read(&shard_path(shard)).await {
            Ok(buf) => Ok(buf.to_bytes()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(ContainerError::NotFound {
                container: self.name.clone(),
                shard: *shard,
            }),
            Err(e) => Err(self.backend_err("read", e)),
        }
    }

    async fn delete_inner(&self, shard: &ShardId) -> Result<bool, ContainerError> {
        let path = shard_path(shard);
        let _key = self.lock_key(shard).await;
        let Some(old_bytes) = self.size_of(&path).await? else {
            return Ok(false);
        };
        if let Err(e) = self.op.delete(&path).await {
            self.resync(shard, &path, Some(old_bytes)).await;
            return Err(self.backend_err("delete", e));
        }
        {
            let mut acct = self.acct();
            acct.used_bytes = acct.used_bytes.saturating_sub(old_bytes);
        }
        // A deletion is durable only once its directory is: otherwise a
        // power cut can bring the shard back after its owners released it.
        self.fs_sync_dirs(&path, false).await?;
        Ok(true)
    }

    async fn list_inner(&self) -> Result<Vec<ListedShard>, ContainerError> {
        let mut out = Vec::new();
        self.scan(|l| out.push(l)).await?;
        Ok(out)
    }

    async fn stat_inner(&self) -> Result<ContainerStat, ContainerError> {
        let fs_free = self.fs_free_bytes().await?;
        let acct = self.acct();
        Ok(ContainerStat {
            capacity_bytes: self.quota_bytes,
            used_bytes: acct.used_bytes,
            free_bytes: acct.free_bytes(self.quota_bytes, fs_free),
        })
    }
}

impl DataContainer for OpendalContainer {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ContainerKind {
        self.kind
    }

    fn put<'a>(
        &'a self,
        shard: &'a ShardId,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), ContainerError>> {
        self.put_inner(shard, bytes).boxed()
    }

    fn get<'a>(&'a self, shard: &'a ShardId) -> BoxFuture<'a, Result<Bytes, ContainerError>> {
        self.get_inner(shard).boxed()
    }

    fn delete<'a>(&'a self, shard: &'a ShardId) -> BoxFuture<'a, Result<bool, ContainerError>> {
        self.delete_inner(shard).boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ListedShard>, ContainerError>> {
        self.list_inner().boxed()
    }

    fn stat(&self) -> BoxFuture<'_, Result<ContainerStat, ContainerError>> {
        self.stat_inner().boxed()
    }
}

fn remote_timeouts() -> TimeoutLayer {
    TimeoutLayer::new()
        .with_timeout(REMOTE_OP_TIMEOUT)
        .with_io_timeout(REMOTE_IO_TIMEOUT)
}

fn utf8_path<'p>(
    name: &str,
    kind: &'static str,
    path: &'p std::path::Path,
) -> Result<&'p str, ContainerError> {
    path.to_str().ok_or_else(|| ContainerError::Spec {
        container: name.to_string(),
        source: Box::new(SpecError::Invalid {
            kind,
            field: "path",
            value: path.display().to_string(),
            reason: "it is not valid UTF-8".into(),
        }),
    })
}

/// The operator of a spec, its kind, and the directory whose filesystem
/// bounds its free space.
fn build_operator(
    name: &str,
    spec: &ContainerSpec,
) -> Result<(ContainerKind, Operator, Option<PathBuf>), ContainerError> {
    let open_err = |source| ContainerError::Backend {
        container: name.to_string(),
        op: "open",
        source: Box::new(source),
    };
    match spec {
        ContainerSpec::Dir(d) => {
            let root = utf8_path(name, "dir", &d.path)?;
            let staging = d.path.join(STAGING_DIR);
            // Writes staged by a previous run that died mid-write.
            if let Err(e) = std::fs::remove_dir_all(&staging) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(container = %name, error = %e, "cannot empty the staging directory");
                }
            }
            let staging_str = utf8_path(name, "dir", &staging)?;
            let builder = opendal::services::Fs::default()
                .root(root)
                .atomic_write_dir(staging_str);
            let op = Operator::new(builder).map_err(open_err)?;
            Ok((ContainerKind::Fs, op, Some(d.path.clone())))
        }
        ContainerSpec::Mem(_) => {
            let op = Operator::new(opendal::services::Memory::default()).map_err(open_err)?;
            Ok((ContainerKind::Memory, op, None))
        }
        ContainerSpec::S3(s) => {
            // Installs the reqwest HTTP transport once per process (the
            // facade's automatic registration is off with default features).
            opendal::install_default();
            let mut builder = opendal::services::S3::default()
                .endpoint(&s.endpoint)
                .bucket(&s.bucket)
                .region(&s.region)
                .access_key_id(&s.access_key)
                .secret_access_key(s.secret_key.expose())
                .disable_config_load()
                .disable_ec2_metadata();
            if !s.prefix.is_empty() {
                builder = builder.root(&format!("/{}/", s.prefix));
            }
            let op = Operator::new(builder)
                .map_err(open_err)?
                .layer(remote_timeouts());
            Ok((ContainerKind::S3, op, None))
        }
        #[cfg(feature = "webdav")]
        ContainerSpec::Webdav(w) => {
            opendal::install_default();
            let mut builder = opendal::services::Webdav::default().endpoint(&w.endpoint);
            if !w.root.is_empty() {
                builder = builder.root(&w.root);
            }
            if let Some(u) = &w.user {
                builder = builder.username(u);
            }
            if let Some(p) = &w.password {
                builder = builder.password(p.expose());
            }
            let op = Operator::new(builder)
                .map_err(open_err)?
                .layer(remote_timeouts());
            Ok((ContainerKind::Webdav, op, None))
        }
        #[cfg(not(feature = "webdav"))]
        ContainerSpec::Webdav(_) => Err(ContainerError::FeatureDisabled {
            container: name.to_string(),
            kind: "webdav",
            feature: "webdav",
        }),
        #[cfg(feature = "sftp")]
        ContainerSpec::Sftp(s) => {
            let mut builder = opendal::services::Sftp::default()
                .endpoint(&s.endpoint)
                .root(&s.root);
            if let Some(u) = &s.user {
                builder = builder.user(u);
            }
            if let Some(k) = &s.key {
                builder = builder.key(utf8_path(name, "sftp", k)?);
            }
            if let Some(k) = &s.known_hosts {
                builder = builder.known_hosts_strategy(k);
            }
            let op = Operator::new(builder)
                .map_err(open_err)?
                .layer(remote_timeouts());
            Ok((ContainerKind::Sftp, op, None))
        }
        #[cfg(not(feature = "sftp"))]
        ContainerSpec::Sftp(_) => Err(ContainerError::FeatureDisabled {
            container: name.to_string(),
            kind: "sftp",
            feature: "sftp",
        }),
    }
}
