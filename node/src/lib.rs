//! The DynoStore node: all IO lives here.
//!
//! - [`config`]: `DIR/config.toml`, validated field by field.
//! - [`keys`]: the node identity and the network's pre-shared key.
//! - [`container`]: data containers (filesystem, memory, S3, ...) behind one trait.
//! - [`store`]: the shard store: sled index + containers, BLAKE3-verified.
//! - [`manifests`]: the manifest replicas this node holds.
//! - [`names`]: name records (buckets, keys) held here and on a namespace's replicas.
//! - [`datapath`]: put/get/stat/rm/ls of objects as an entry peer.
//! - [`net`]: transports (TCP + pnet + Noise + Yamux; QUIC in open networks),
//!   the control codec and stream framing.
//! - [`shard_proto`]: the bulk shard protocol over raw streams, both sides.
//! - [`node`]: the running node: event loop, announcements, membership.
//! - [`repair`]: repair, pending deletions, scrubbing.
//! - `metrics`: the Prometheus metrics of the node.
//! - [`http`]: the HTTP admin API (`/metrics`, `/health`, `/v1/...`).
//! - `dashboard`: the web dashboard's events, traffic samples, durability
//!   counts and its page (served by [`http`]).
//! - [`json`]: the JSON of status, stat and list (CLI and admin API).
//! - [`trust`]: node admission by site certificate (federation file, own
//!   certificate, admitted peers).
//! - [`client`]: the command-line client's connection to an entry peer.
//! - [`crypt`]: client-side encryption (age v1), decryption and sharing.
//! - [`wan`]: WAN emulation (delay, bandwidth, loss per site pair) in the
//!   transport, for tests and scenarios only.

pub mod client;
pub mod config;
pub mod container;
pub mod crypt;
pub(crate) mod dashboard;
pub mod datapath;
pub mod gc;
pub mod http;
pub mod json;
pub mod keys;
pub mod limits;
pub mod manifests;
pub(crate) mod metrics;
pub mod names;
pub mod net;
pub mod node;
pub mod objects;
pub mod peers;
pub mod refs;
pub mod repair;
pub mod s3;
pub mod shard_proto;
pub(crate) mod shared;
pub mod store;
pub mod stripes;
pub mod trust;
pub mod wan;
