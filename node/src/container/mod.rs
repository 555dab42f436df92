//! Data containers: the places where a node keeps shard bytes.
//!
//! A container is one directory, one memory area, one S3 bucket (or prefix),
//! one WebDAV collection or one SFTP directory, each with a quota. They all
//! sit behind the [`DataContainer`] trait, implemented once over Apache
//! OpenDAL operators ([`OpendalContainer`]); the shard store above sees only
//! the trait.
//!
//! # What a container owns
//! - Shard bytes, keyed by [`ShardId`]. The object for shard `abcd…` lives at
//!   `ab/cd/abcd…` (64 hex characters) under the container's root, so that no
//!   directory holds more than 1/65536 of the shards. The layout is the same
//!   on every backend.
//! - The exact number of bytes it stores ([`ContainerStat::used_bytes`]): the
//!   sum of the sizes of its shard objects, counted by a listing when the
//!   container is opened and kept up to date by every put and delete.
//!
//! A container does not check that bytes hash to their key: that is the
//! shard store's job, on the way in and on the way out.
//!
//! # Invariants
//! - Free space is `quota - used - reserved` (bytes of writes in flight),
//!   and for a directory never more than what the filesystem itself has
//!   free for unprivileged users.
//! - A put that does not fit fails with [`ContainerError::Full`] before a
//!   byte is written. Puts reserve their bytes under a lock, so concurrent
//!   puts cannot together overshoot the quota.
//! - Operations on one key are serialised (striped locks), so that the
//!   accounting of an overwrite or a delete sees a consistent old size.
//! - Directory writes go through a temporary file that is synced and then
//!   renamed (OpenDAL's atomic write), so a crash never leaves a partial
//!   shard under its final name; the shard's directory (and its parents,
//!   when the write created them) is then synced too, so a put that
//!   returned `Ok` survives a power cut.
//! - Remote operators (S3, WebDAV, SFTP) carry a timeout layer, and the S3
//!   operator never reads `~/.aws` or the environment, nor probes the EC2
//!   metadata address: its credentials come from the spec only.
//!
//! See [`spec`] for how containers are described in `config.toml` and on
//! the command line.

mod backend;
pub mod spec;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use dynostore_protocol::ids::ShardId;
use futures::future::BoxFuture;

pub use backend::{OpendalContainer, REMOTE_IO_TIMEOUT, REMOTE_OP_TIMEOUT};
pub use spec::{ByteSize, ContainerSpec, Secret, SpecError};

/// What backs a container; its string form goes into announcements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContainerKind {
    Fs,
    Memory,
    S3,
    Webdav,
    Sftp,
}

impl ContainerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerKind::Fs => "fs",
            ContainerKind::Memory => "memory",
            ContainerKind::S3 => "s3",
            ContainerKind::Webdav => "webdav",
            ContainerKind::Sftp => "sftp",
        }
    }
}

impl fmt::Display for ContainerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Capacity figures of one container, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerStat {
    /// The configured quota.
    pub capacity_bytes: u64,
    /// Sum of the sizes of the stored shards.
    pub used_bytes: u64,
    /// What a put may still use now: quota minus used minus writes in
    /// flight, capped by the filesystem's own free space for directories.
    pub free_bytes: u64,
}

/// One stored shard as a listing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListedShard {
    pub shard: ShardId,
    pub size_bytes: u64,
}

/// Why a container operation failed. Every variant names the container.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    #[error("container {container}: shard {shard} not found")]
    NotFound { container: String, shard: ShardId },
    #[error("container {container} is full: {needed_bytes} bytes needed, {free_bytes} bytes free")]
    Full {
        container: String,
        needed_bytes: u64,
        free_bytes: u64,
    },
    #[error("container {container}: {op} failed: {source}")]
    Backend {
        container: String,
        op: &'static str,
        #[source]
        source: Box<opendal::Error>,
    },
    #[error("container {container}: {op} of {path} failed: {source}")]
    Io {
        container: String,
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container {container}: kind {kind} needs the node built with feature `{feature}`")]
    FeatureDisabled {
        container: String,
        kind: &'static str,
        feature: &'static str,
    },
    #[error("container {container}: invalid specification: {source}")]
    Spec {
        container: String,
        #[source]
        source: Box<SpecError>,
    },
}

impl ContainerError {
    /// The name of the container the error is about.
    pub fn container(&self) -> &str {
        match self {
            ContainerError::NotFound { container, .. }
            | ContainerError::Full { container, .. }
            | ContainerError::Backend { container, .. }
            | ContainerError::Io { container, .. }
            | ContainerError::FeatureDisabled { container, .. }
            | ContainerError::Spec { container, .. } => container,
        }
    }
}

/// A place that stores shard bytes under their [`ShardId`], with a quota.
///
/// The methods return boxed futures so that the store can hold containers
/// of different kinds as `Arc<dyn DataContainer>`.
pub trait DataContainer: Send + Sync + fmt::Debug {
    /// Stable name, recorded in the shard index.
    fn name(&self) -> &str;

    fn kind(&self) -> ContainerKind;

    /// Stores `bytes` under `shard`, replacing what was there. Fails with
    /// [`ContainerError::Full`], writing nothing, if the growth does not fit.
    fn put<'a>(
        &'a self,
        shard: &'a ShardId,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), ContainerError>>;

    /// The bytes stored under `shard`, unverified.
    fn get<'a>(&'a self, shard: &'a ShardId) -> BoxFuture<'a, Result<Bytes, ContainerError>>;

    /// Removes `shard`; `false` if it was not there.
    fn delete<'a>(&'a self, shard: &'a ShardId) -> BoxFuture<'a, Result<bool, ContainerError>>;

    /// Every shard stored, with its size, in no particular order. Objects
    /// under the root that are not shards (temporary files) are skipped.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ListedShard>, ContainerError>>;

    /// Capacity, used and free bytes now.
    fn stat(&self) -> BoxFuture<'_, Result<ContainerStat, ContainerError>>;
}

/// Opens the container a spec describes (see [`OpendalContainer::open`]).
pub async fn open(spec: &ContainerSpec) -> Result<Arc<dyn DataContainer>, ContainerError> {
    Ok(Arc::new(OpendalContainer::open(spec).await?))
}

/// The object path of a shard: `ab/cd/abcd…`.
pub fn shard_path(shard: &ShardId) -> String {
    let hex = shard.to_string();
    format!("{}/{}/{hex}", &hex[..2], &hex[2..4])
}

/// The shard a path names, if it is exactly a shard path (see [`shard_path`]).
pub fn parse_shard_path(path: &str) -> Option<ShardId> {
    let path = path.trim_start_matches('/');
    let mut parts = path.split('/');
    let (a, b, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || a.len() != 2 || b.len() != 2 {
        return None;
    }
    let shard: ShardId = hex.parse().ok()?;
    // Only the canonical lowercase form produced by `shard_path`.
    (shard_path(&shard) == path).then_some(shard)
}

#[cfg(any(test, feature = "testkit"))]
pub mod s3s;
#[cfg(test)]
pub(crate) mod suite;
