//! The sans-IO core of DynoStore.
//!
//! Everything here is a pure function of its inputs: no tokio, libp2p, sled,
//! filesystem or clock. Time and randomness, where needed, are arguments.
//! The node (`dynostore-node`) does the IO and calls into this crate; the
//! scale simulator (`dynostore-sim scale`) runs the very same code over
//! thousands of virtual nodes.
//!
//! - [`ids`]: `ObjectId`, `ShardId`, `NodeId`.
//! - [`durability`]: reliability targets: the cheapest `(k, m)` that meets
//!   an annual durability, in closed form.
//! - [`erasure`]: segment geometry and the two Reed-Solomon codecs.
//! - [`manifest`]: the versioned CBOR manifest of an object.
//! - [`names`]: replicated name records (buckets, keys), last writer wins.
//! - [`membership`]: the alive/suspect/down view, driven by announcements and time.
//! - [`placement`]: weighted rendezvous hashing with site spreading.
//! - [`repair`]: who repairs an object and where rebuilt shards go.
//! - [`planner`]: what a node does about one object in a repair round, as
//!   actions computed from the answers it gathered.
//! - [`read`]: which shard a stripe read asks for next (data first, hedge,
//!   fallbacks).
//! - [`token`]: user tokens (biscuits signed by a site admin key): issue,
//!   attenuate, authorize one operation on one name.
//! - [`trust`]: site admin keys, the federation's sites, node certificates.
//! - [`wire`]: the node protocols' messages, limits and framing.

pub mod durability;
pub mod erasure;
pub mod ids;
pub mod manifest;
pub mod membership;
pub mod names;
pub mod placement;
pub mod planner;
pub mod read;
pub mod repair;
pub mod token;
pub mod trust;
pub mod wire;

pub use erasure::{CodecKind, Encoder, ErasureError, Geometry};
pub use ids::{IdError, NodeId, ObjectId, ShardId};
pub use manifest::{Manifest, ManifestError, Metadata};
pub use placement::{Member, MemberState, PlacementKey, View, Weighting};
