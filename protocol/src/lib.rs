//! The sans-IO core of DynoStore.
//!
//! Everything here is a pure function of its inputs: no tokio, libp2p, sled,
//! filesystem or clock. Time and randomness, where needed, are arguments.
//! The node (`dynostore-node`) does the IO and calls into this crate; the
//! scale simulator (`dynostore-sim scale`) runs the very same code over
//! thousands of virtual nodes.
//!
//! - [`ids`]: `ObjectId`, `ShardId`, `NodeId`.
//! - [`erasure`]: segment geometry and the two Reed-Solomon codecs.
//! - [`manifest`]: the versioned CBOR manifest of an object.
//! - [`membership`]: the alive/suspect/down view, driven by announcements and time.
//! - [`placement`]: weighted rendezvous hashing with site spreading.
//! - [`repair`]: who repairs an object and where rebuilt shards go.
//! - [`wire`]: the node protocols' messages, limits and framing.

pub mod erasure;
pub mod ids;
pub mod manifest;
pub mod membership;
pub mod placement;
pub mod repair;
pub mod wire;

pub use erasure::{CodecKind, Encoder, ErasureError, Geometry};
pub use ids::{IdError, NodeId, ObjectId, ShardId};
pub use manifest::{Manifest, ManifestError, Metadata};
pub use placement::{Member, MemberState, PlacementKey, View, Weighting};
