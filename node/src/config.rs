//! The node's configuration file, `DIR/config.toml`.
//!
//! Written by `dynostore init`, read by `dynostore node`. Every field has a
//! default where one makes sense; a bad value is refused at start with a
//! message naming the field and what is allowed, and an unknown field (a
//! typo) is refused too rather than silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::container::ContainerSpec;

/// File name of the configuration inside the node directory.
pub const CONFIG_FILE: &str = "config.toml";
/// File name of the node identity inside the node directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// File the running node writes its full multiaddrs to, one a line.
pub const ADDR_FILE: &str = "node.addr";
/// File the running node writes the bound address of its admin API to.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";
/// Where a running node writes the S3 endpoint's bound address.
pub const S3_ADDR_FILE: &str = "s3.addr";

/// A refused configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid configuration: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("config field `{field}` = {value}: {allowed}")]
    Field {
        field: &'static str,
        value: String,
        allowed: String,
    },
}

fn field(field: &'static str, value: impl std::fmt::Display, allowed: &str) -> ConfigError {
    ConfigError::Field {
        field,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

/// The node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` (TCP; with no
    /// network key also `/ip4/0.0.0.0/udp/4001/quic-v1`).
    pub listen: Vec<String>,
    /// Site label: placement puts the shards of a stripe on distinct sites first.
    #[serde(default = "default_site")]
    pub site: String,
    /// Full multiaddrs (with `/p2p/<id>`) of nodes to join through.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Path of the network's pre-shared key. Absent: an open network (for
    /// experiments only; anyone can join).
    #[serde(default)]
    pub network_key: Option<PathBuf>,
    /// Path of the federation file (its name and each site's admin public
    /// key). With `cert`, members are admitted by certificate only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<PathBuf>,
    /// Path of this node's certificate, signed by its site's admin key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Seconds between capacity/load announcements.
    #[serde(default = "default_announce_ms")]
    pub announce_interval_ms: u64,
    /// Silence after which a member is suspect (no new shards).
    #[serde(default = "default_suspect_ms")]
    pub suspect_after_ms: u64,
    /// Silence after which a member is down (its shards are repaired elsewhere).
    #[serde(default = "default_down_ms")]
    pub down_after_ms: u64,
    /// Interval of Kademlia re-bootstrap.
    #[serde(default = "default_rebootstrap_ms")]
    pub rebootstrap_interval_ms: u64,
    /// Timeout of every request to another node.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How often this node checks the objects it is responsible for.
    #[serde(default = "default_repair_interval_ms")]
    pub repair_interval_ms: u64,
    /// Repair traffic budget (bytes read plus written per second), so that
    /// clients keep most of the throughput.
    #[serde(default = "default_repair_rate")]
    pub repair_rate_bytes_per_sec: u64,
    /// The byte budget of the node's put and get buffers (default 512 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<u64>,
    /// Turns automatic repair off (for experiments that must see data decay).
    #[serde(default = "default_true")]
    pub repair_enabled: bool,
    /// How often every stored shard is re-hashed (jittered by 10%).
    #[serde(default = "default_scrub_interval_ms")]
    pub scrub_interval_ms: u64,
    /// How long a removed object's tombstone lives: a member down longer
    /// than this may keep orphaned shards of it.
    #[serde(default = "default_tombstone_ttl_ms")]
    pub tombstone_ttl_ms: u64,
    /// How often unreferenced shard copies are looked for (default 1 hour).
    #[serde(default = "default_gc_interval_ms")]
    pub gc_interval_ms: u64,
    /// How old an upload must be before its unreferenced copies are
    /// collected (default 1 day; must exceed the longest put).
    #[serde(default = "default_gc_grace_ms")]
    pub gc_grace_ms: u64,
    /// Address of the HTTP admin API (`/metrics`, `/health`, `/v1/...`):
    /// a loopback `IP:PORT` (port 0: chosen by the OS; the bound address
    /// is written to `admin.addr`). Other addresses need admin tokens,
    /// which do not exist yet, so they are refused.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// The geometry `/health` judges writes by (`k + m` members alive with
    /// free space): the `put` command's defaults unless this federation
    /// writes another.
    #[serde(default = "default_k")]
    pub default_k: u16,
    #[serde(default = "default_m")]
    pub default_m: u16,
    /// This site's default annual durability target: a put that names
    /// neither `k`/`m` nor a target (`k = m = 0` on the wire) gets the
    /// cheapest geometry that meets it ([`dynostore_protocol::durability`]);
    /// absent, such a put gets `default_k` + `default_m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_durability: Option<f64>,
    /// Annual failure rate assumed for every node when choosing `k` and `m`
    /// for a durability target (default 0.04, see the durability module).
    #[serde(default = "default_afr")]
    pub afr: f64,
    /// Time until a lost shard is rebuilt, in the durability formula.
    #[serde(default = "default_repair_window_hours")]
    pub repair_window_hours: f64,
    /// Ceiling on `k + m` when choosing for a durability target.
    #[serde(default = "default_max_stripe_shards")]
    pub max_stripe_shards: u16,
    /// Reads ask the cheapest holders first by measured round-trip time
    /// and transfer rate (off: data shards first, site-blind; for
    /// comparisons).
    #[serde(default = "default_true")]
    pub site_aware_reads: bool,
    /// WAN emulation for tests and scenarios: a matrix file of sites,
    /// their loopback addresses and the delay and bandwidth between them
    /// ([`crate::wan`]). The connections this node dials are shaped from
    /// its `site`; QUIC is off. Never set in a real deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan_emulation: Option<PathBuf>,
    /// Address of the S3 endpoint (`IP:PORT`; absent: no S3). Needs a
    /// federation, a certificate and a network key: S3 keys come from user
    /// tokens, their secrets from the network key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_listen: Option<String>,
    /// Multipart uploads untouched for this long are aborted.
    #[serde(default = "default_upload_expiry_ms")]
    pub s3_upload_expiry_ms: u64,
    /// A completed multipart upload of at most this many parts is named as
    /// its parts (no byte stored twice); one of more is read back and
    /// stored whole, as one object with one ID. 0: every upload is stored
    /// whole. At most `names::MAX_PIECES`.
    #[serde(default = "default_s3_max_pieces")]
    pub s3_max_pieces: usize,
    /// How long after the last name referring to an object went away its
    /// bytes are reclaimed (objects written through S3 only).
    #[serde(default = "default_reclaim_grace_ms")]
    pub reclaim_grace_ms: u64,
    /// How long a collector waits between condemning an unnamed object and
    /// reading its references a last time before removing it.
    #[serde(default = "default_reclaim_wait_ms")]
    pub reclaim_wait_ms: u64,
    /// Fault injection for tests: a name write waits this long between
    /// storing its object and writing its reference. 0 (the default) in
    /// any real deployment.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fault_ref_delay_ms: u64,
    /// Objects of at most this many bytes are stored inside their manifest
    /// (replicated on its m + 1 replicas) instead of as k + m shards; 0
    /// turns inlining off. At most `manifest::MAX_INLINE_BYTES`.
    #[serde(default = "default_inline_max")]
    pub inline_max_bytes: u64,
    /// Data containers that hold this node's shards.
    pub containers: Vec<ContainerSpec>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn default_reclaim_grace_ms() -> u64 {
    3_600_000
}

fn default_reclaim_wait_ms() -> u64 {
    10_000
}

fn default_s3_max_pieces() -> usize {
    dynostore_protocol::names::MAX_PIECES
}

fn default_upload_expiry_ms() -> u64 {
    24 * 3600 * 1000
}

/// The `put` command's default data shards per stripe.
pub const DEFAULT_K: u16 = 4;
/// The `put` command's default parity shards per stripe.
pub const DEFAULT_M: u16 = 2;

fn default_admin_listen() -> String {
    "127.0.0.1:0".into()
}
fn default_k() -> u16 {
    DEFAULT_K
}
fn default_m() -> u16 {
    DEFAULT_M
}
fn default_afr() -> f64 {
    dynostore_protocol::durability::DEFAULT_AFR
}
fn default_repair_window_hours() -> f64 {
    dynostore_protocol::durability::DEFAULT_REPAIR_WINDOW_HOURS
}
fn default_max_stripe_shards() -> u16 {
    dynostore_protocol::durability::DEFAULT_MAX_SHARDS
}

/// The default inline threshold (see README, "Small objects": chosen from
/// the cluster bench's CPU per put inline against striped).
pub const DEFAULT_INLINE_MAX: u64 = 64 << 10;

fn default_inline_max() -> u64 {
    DEFAULT_INLINE_MAX
}

fn default_repair_interval_ms() -> u64 {
    30_000
}
fn default_repair_rate() -> u64 {
    64 << 20
}
fn default_true() -> bool {
    true
}
fn default_scrub_interval_ms() -> u64 {
    24 * 3600 * 1000
}
fn default_tombstone_ttl_ms() -> u64 {
    7 * 24 * 3600 * 1000
}

fn default_site() -> String {
    "default".into()
}
fn default_announce_ms() -> u64 {
    5_000
}
fn default_suspect_ms() -> u64 {
    15_000
}
fn default_down_ms() -> u64 {
    60_000
}
fn default_rebootstrap_ms() -> u64 {
    60_000
}
fn default_gc_interval_ms() -> u64 {
    3_600_000
}

fn default_gc_grace_ms() -> u64 {
    86_400_000
}

fn default_request_timeout_ms() -> u64 {
    30_000
}

const HEADER: &str = "\
# DynoStore node configuration (written by `dynostore init`).
#
# listen                   multiaddrs to listen on (TCP; QUIC only without a network key)
# site                     site label; a stripe's shards go to distinct sites first
# bootstrap                full multiaddrs (/p2p/<id>) of nodes to join through
# network_key              path of the network's pre-shared key (absent = open network)
# federation, cert         federation file and this node's certificate (admission by certificate)
# announce_interval_ms     how often this node announces capacity and load (default 5000)
# suspect_after_ms         silence before a member is suspect (default 15000)
# down_after_ms            silence before a member is down and repaired (default 60000)
# rebootstrap_interval_ms  Kademlia re-bootstrap interval (default 60000)
# request_timeout_ms       timeout of every request to another node (default 30000)
# repair_interval_ms       how often responsible objects are checked (default 30000)
# repair_rate_bytes_per_sec  repair traffic budget (default 64 MiB/s)
# repair_enabled           automatic repair on/off (default true)
# memory_budget_bytes      bytes of put and get buffers the node holds at most (default 512 MiB)
# scrub_interval_ms        how often every shard is re-hashed (default 1 day)
# tombstone_ttl_ms         how long removals are remembered (default 7 days)
# gc_interval_ms           how often unreferenced shard copies are looked for (default 1 hour)
# gc_grace_ms              age of an upload before its unreferenced copies go (default 1 day)
# admin_listen             HTTP admin API, loopback only (default 127.0.0.1:0; see admin.addr)
# default_k, default_m     the geometry /health judges writes by (default 4 and 2)
# default_durability       a put with no k, m or target is written for this annual durability
# afr, repair_window_hours the failure model of durability targets (default 0.04, 24 h)
# max_stripe_shards        ceiling on k + m for durability targets (default 20)
# site_aware_reads         reads ask the cheapest holders by measured RTT first (default true)
# s3_listen                S3 endpoint IP:PORT (absent = none; needs federation, cert, network_key)
# s3_upload_expiry_ms      abandoned multipart uploads are aborted after this (default 1 day)
# s3_max_pieces            uploads of up to this many parts are named as their parts (default 1000; 0 = store whole)
# reclaim_grace_ms         an S3 object no name refers to is reclaimed this long after (default 1 hour)
# reclaim_wait_ms          a condemned object's references are read again after this (default 10000)
# inline_max_bytes         objects up to this size live inside their manifest (default 65536; 0 = off)
# [[containers]]           where shards are kept: kind = dir | mem | s3 (see README)

";

impl Config {
    /// A configuration with defaults for everything optional.
    pub fn new(listen: Vec<String>, containers: Vec<ContainerSpec>) -> Self {
        Config {
            listen,
            site: default_site(),
            bootstrap: Vec::new(),
            network_key: None,
            federation: None,
            cert: None,
            announce_interval_ms: default_announce_ms(),
            suspect_after_ms: default_suspect_ms(),
            down_after_ms: default_down_ms(),
            rebootstrap_interval_ms: default_rebootstrap_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            repair_interval_ms: default_repair_interval_ms(),
            repair_rate_bytes_per_sec: default_repair_rate(),
            memory_budget_bytes: None,
            gc_interval_ms: default_gc_interval_ms(),
            gc_grace_ms: default_gc_grace_ms(),
            repair_enabled: true,
            scrub_interval_ms: default_scrub_interval_ms(),
            tombstone_ttl_ms: default_tombstone_ttl_ms(),
            admin_listen: default_admin_listen(),
            default_k: DEFAULT_K,
            default_m: DEFAULT_M,
            default_durability: None,
            afr: default_afr(),
            repair_window_hours: default_repair_window_hours(),
            max_stripe_shards: default_max_stripe_shards(),
            site_aware_reads: true,
            wan_emulation: None,
            s3_listen: None,
            s3_upload_expiry_ms: default_upload_expiry_ms(),
            s3_max_pieces: default_s3_max_pieces(),
            reclaim_grace_ms: default_reclaim_grace_ms(),
            reclaim_wait_ms: default_reclaim_wait_ms(),
            fault_ref_delay_ms: 0,
            inline_max_bytes: DEFAULT_INLINE_MAX,
            containers,
        }
    }

    /// Reads and validates `DIR/config.toml`.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes `DIR/config.toml` with a commented header, readable by its
    /// owner only (mode 0600): container specs may carry credentials.
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let body = toml::to_string_pretty(self).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                opts.mode(0o600);
                // An existing file keeps its mode on open: narrow it first.
                if path.exists() {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
            }
            let mut f = opts.open(&path)?;
            f.write_all(format!("{HEADER}{body}").as_bytes())?;
            f.sync_all()
        };
        write().map_err(|source| ConfigError::Write { path, source })
    }

    /// Checks every field; the error names the field and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(field("listen", "[]", "at least one multiaddr to listen on"));
        }
        for a in &self.listen {
            let addr: Multiaddr = a.parse().map_err(|e| {
                field(
                    "listen",
                    format!("{a:?}"),
                    &format!("not a multiaddr ({e})"),
                )
            })?;
            let quic = addr.iter().any(|p| matches!(p, Protocol::QuicV1));
            let tcp = addr.iter().any(|p| matches!(p, Protocol::Tcp(_)));
            if !tcp && !quic {
                return Err(field(
                    "listen",
                    format!("{a:?}"),
                    "a TCP (/tcp/PORT) or QUIC (/udp/PORT/quic-v1) address",
                ));
            }
            if quic && self.network_key.is_some() {
                return Err(field(
                    "listen",
                    format!("{a:?}"),
                    "QUIC cannot carry the network key (pnet wraps TCP streams only); \
                     listen on TCP in a private network",
                ));
            }
        }
        for b in &self.bootstrap {
            bootstrap_peer(b)?;
        }
        if self.federation.is_some() != self.cert.is_some() {
            return Err(field(
                if self.cert.is_some() {
                    "federation"
                } else {
                    "cert"
                },
                "absent",
                "`federation` and `cert` go together: admission by certificate needs both",
            ));
        }
        let site_ok = !self.site.is_empty()
            && self.site.len() <= dynostore_protocol::wire::MAX_SITE_LEN
            && !self.site.chars().any(char::is_control);
        if !site_ok {
            return Err(field(
                "site",
                format!("{:?}", self.site),
                "1 to 128 bytes of printable text",
            ));
        }
        if self.announce_interval_ms == 0 {
            return Err(field(
                "announce_interval_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        if self.suspect_after_ms <= self.announce_interval_ms {
            return Err(field(
                "suspect_after_ms",
                self.suspect_after_ms,
                &format!(
                    "more than announce_interval_ms ({}), or every member is suspect between announcements",
                    self.announce_interval_ms
                ),
            ));
        }
        if self.down_after_ms <= self.suspect_after_ms {
            return Err(field(
                "down_after_ms",
                self.down_after_ms,
                &format!("more than suspect_after_ms ({})", self.suspect_after_ms),
            ));
        }
        if self.rebootstrap_interval_ms == 0 {
            return Err(field(
                "rebootstrap_interval_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        if let Some(b) = self.memory_budget_bytes {
            if b < 16 << 20 {
                return Err(field(
                    "memory_budget_bytes",
                    b,
                    "at least 16 MiB (16777216)",
                ));
            }
        }
        if self.gc_interval_ms == 0 {
            return Err(field(
                "gc_interval_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        if self.gc_grace_ms < self.request_timeout_ms.max(1) {
            return Err(field(
                "gc_grace_ms",
                self.gc_grace_ms,
                "at least request_timeout_ms (it must exceed the longest put)",
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(field(
                "request_timeout_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        for (name, v) in [
            ("repair_interval_ms", self.repair_interval_ms),
            ("repair_rate_bytes_per_sec", self.repair_rate_bytes_per_sec),
            ("scrub_interval_ms", self.scrub_interval_ms),
            ("tombstone_ttl_ms", self.tombstone_ttl_ms),
        ] {
            if v == 0 {
                return Err(field(name, 0, "a positive number"));
            }
        }
        if self.inline_max_bytes > dynostore_protocol::manifest::MAX_INLINE_BYTES {
            return Err(field(
                "inline_max_bytes",
                self.inline_max_bytes,
                "at most 1048576",
            ));
        }
        self.admin_addr()?;
        use dynostore_protocol::erasure::{CodecKind, ErasureError, Geometry};
        if let Err(e) = Geometry::new(
            CodecKind::default(),
            self.default_k,
            self.default_m,
            1 << 20,
        ) {
            let (name, value) = match e {
                ErasureError::ParityShards(_) => ("default_m", self.default_m),
                _ => ("default_k", self.default_k),
            };
            return Err(field(
                name,
                value,
                &format!("a geometry a put could use ({e})"),
            ));
        }
        if let Some(d) = self.default_durability {
            if !(d > 0.0 && d < 1.0) {
                return Err(field("default_durability", d, "a probability in (0, 1)"));
            }
        }
        if !(self.afr > 0.0 && self.afr < 1.0) {
            return Err(field("afr", self.afr, "a probability in (0, 1)"));
        }
        if !(self.repair_window_hours > 0.0 && self.repair_window_hours.is_finite()) {
            return Err(field(
                "repair_window_hours",
                self.repair_window_hours,
                "a positive number of hours",
            ));
        }
        if self.max_stripe_shards < 2 {
            return Err(field(
                "max_stripe_shards",
                self.max_stripe_shards,
                "at least 2 (k >= 1 and m >= 1)",
            ));
        }
        if self.containers.is_empty() {
            return Err(field(
                "containers",
                "[]",
                "at least one container (kind = dir, mem or s3)",
            ));
        }
        Ok(())
    }

    /// The admin API's address: loopback only until admin tokens exist.
    pub fn admin_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let addr: std::net::SocketAddr = self.admin_listen.parse().map_err(|e| {
            field(
                "admin_listen",
                format!("{:?}", self.admin_listen),
                &format!("not an IP:PORT address ({e}); e.g. 127.0.0.1:9090"),
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(field(
                "admin_listen",
                format!("{:?}", self.admin_listen),
                "a loopback address (127.0.0.1:PORT or [::1]:PORT): the admin API has no \
                 authentication yet, and listening elsewhere needs admin tokens",
            ));
        }
        Ok(addr)
    }

    /// The S3 endpoint's address, if any (see `s3_listen`).
    pub fn s3_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(text) = &self.s3_listen else {
            return Ok(None);
        };
        let addr: std::net::SocketAddr = text.parse().map_err(|e| {
            field(
                "s3_listen",
                format!("{text:?}"),
                &format!("not an IP:PORT address ({e}); e.g. 127.0.0.1:3900"),
            )
        })?;
        if self.federation.is_none() || self.cert.is_none() || self.network_key.is_none() {
            return Err(field(
                "s3_listen",
                format!("{text:?}"),
                "federation, cert and network_key set too: S3 keys come from user tokens \
                 (verified with the federation) and their secrets from the network key",
            ));
        }
        Ok(Some(addr))
    }

    pub fn announce_interval(&self) -> Duration {
        Duration::from_millis(self.announce_interval_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen.iter().filter_map(|a| a.parse().ok()).collect()
    }

    /// `(peer, address without /p2p)` of every bootstrap entry.
    pub fn bootstrap_peers(&self) -> Vec<(libp2p::PeerId, Multiaddr)> {
        self.bootstrap
            .iter()
            .filter_map(|b| bootstrap_peer(b).ok())
            .collect()
    }
}

/// Splits a full multiaddr into its peer ID and transport address.
pub fn bootstrap_peer(s: &str) -> Result<(libp2p::PeerId, Multiaddr), ConfigError> {
    let mut addr: Multiaddr = s.parse().map_err(|e| {
        field(
            "bootstrap",
            format!("{s:?}"),
            &format!("not a multiaddr ({e})"),
        )
    })?;
    match addr.pop() {
        Some(Protocol::P2p(peer)) => Ok((peer, addr)),
        _ => Err(field(
            "bootstrap",
            format!("{s:?}"),
            "a full multiaddr ending in /p2p/<peer id>, as printed in the node's node.addr",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn the_config_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = Config::new(
            vec!["/ip4/127.0.0.1/tcp/0".into()],
            vec![ContainerSpec::mem("m", 1 << 20)],
        );
        cfg.save(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Config::load(dir.path()).unwrap(), cfg);
    }

    use super::*;

    fn cfg() -> Config {
        Config::new(
            vec!["/ip4/127.0.0.1/tcp/0".into()],
            vec!["mem:1MiB".parse().unwrap()],
        )
    }

    #[test]
    fn round_trip_through_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.site = "observatory".into();
        c.save(dir.path()).unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), c);
    }

    #[test]
    fn bad_values_name_their_field() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("listen", Box::new(|c| c.listen = vec!["nonsense".into()])),
            ("listen", Box::new(|c| c.listen.clear())),
            (
                "bootstrap",
                Box::new(|c| c.bootstrap = vec!["/ip4/1.2.3.4/tcp/1".into()]),
            ),
            ("site", Box::new(|c| c.site = String::new())),
            ("suspect_after_ms", Box::new(|c| c.suspect_after_ms = 1)),
            ("down_after_ms", Box::new(|c| c.down_after_ms = 2)),
            ("containers", Box::new(|c| c.containers.clear())),
            (
                "admin_listen",
                Box::new(|c| c.admin_listen = "0.0.0.0:9090".into()),
            ),
            (
                "admin_listen",
                Box::new(|c| c.admin_listen = "nonsense".into()),
            ),
            ("default_k", Box::new(|c| c.default_k = 0)),
            ("default_m", Box::new(|c| c.default_m = 0)),
            (
                "listen",
                Box::new(|c| {
                    c.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()];
                    c.network_key = Some("k".into());
                }),
            ),
        ];
        for (name, mutate) in cases {
            let mut c = cfg();
            mutate(&mut c);
            match c.validate() {
                Err(ConfigError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: expected a field error, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        cfg().save(dir.path()).unwrap();
        let p = dir.path().join(CONFIG_FILE);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("annouce_interval_ms = 5\n{text}")).unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("annouce_interval_ms"), "{err}");
    }
}
