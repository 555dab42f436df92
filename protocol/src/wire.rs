//! Wire types of the node protocols, and their framing.
//!
//! Every message is CBOR (ciborium). On a stream a message travels as a
//! frame: a 4-byte big-endian length, then that many bytes of CBOR. Each
//! message type has its own size limit ([`WireMessage::MAX_BYTES`]); a frame
//! announcing more is refused before anything is read or allocated, and
//! [`WireMessage::decode`] never panics on untrusted bytes. Decoded messages
//! are also checked for semantic limits (string lengths, list lengths).
//!
//! Protocols (names carry the version; a change of format is a new name):
//! - [`SHARD_PROTOCOL`]: bulk shard transfer over a raw stream
//!   (libp2p-stream). One request per stream: a [`ShardRequest`] frame, for
//!   `Put` followed by exactly `len` shard bytes; then one [`ShardResponse`]
//!   frame, for `Data` followed by exactly `len` bytes.
//! - [`CONTROL_PROTOCOL`]: small requests over request-response
//!   ([`ControlRequest`] / [`ControlResponse`]).
//! - [`CLIENT_PROTOCOL`]: a client and its entry peer, over a raw stream.
//!   A [`ClientRequest`] frame; for `Put` the peer answers `Ready` (or an
//!   error, or `Stored` when the object already exists) before the client
//!   sends `size` bytes, then a final [`ClientResponse`]. For `Get` the
//!   answer `Object` is followed by [`Chunk`] frames, each `Data` followed
//!   by its bytes, ending in `End` or `Error`.
//! - [`ANNOUNCE_TOPIC`]: the gossipsub topic of [`Announcement`]s. Gossipsub
//!   signs every message with the author's key; a receiver accepts an
//!   announcement only when its `node` is the message's signed source.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::durability::Durability;
use crate::erasure::{CodecKind, MAX_SEGMENT_SIZE};
use crate::ids::{NodeId, ObjectId, ShardId};
use crate::manifest::{
    Generation, ManifestVersion, Metadata, ShardRef, ShardSlot, MAX_MANIFEST_BYTES, MAX_META_LEN,
};
use crate::names::NameRecord;
use crate::placement::{MemberState, Space};

// Version 2: shard copies are owned per object generation ([`ShardRef`]).
pub const SHARD_PROTOCOL: &str = "/dynostore/shard/2";
pub const CONTROL_PROTOCOL: &str = "/dynostore/control/2";
pub const CLIENT_PROTOCOL: &str = "/dynostore/client/1";
pub const ANNOUNCE_TOPIC: &str = "dynostore/announce/1";
/// Version of the [`Announcement`] format.
pub const ANNOUNCEMENT_VERSION: u16 = 1;

/// Largest shard body: a shard is never larger than a segment.
pub const MAX_SHARD_BYTES: usize = MAX_SEGMENT_SIZE as usize;
/// Longest site label.
pub const MAX_SITE_LEN: usize = 128;
/// Longest free-text string in a message (error messages, versions, addresses).
pub const MAX_TEXT_LEN: usize = 1024;
/// Most addresses a node may announce.
pub const MAX_ADDRS: usize = 32;
/// Most containers a node may report.
pub const MAX_CONTAINERS: usize = 64;
/// Most shard IDs in one control request.
pub const MAX_SHARDS_PER_REQUEST: usize = 4096;
/// Most shard slots (shard and owner) in one control request; a slot is
/// about 140 bytes of CBOR, so a full request stays under its limit.
pub const MAX_SLOTS_PER_REQUEST: usize = 1024;
/// Most removed generations a replica reports for one object.
pub const MAX_REMOVED_GENERATIONS: usize = 16;
/// Most members in one membership report.
pub const MAX_MEMBERS: usize = 16384;
/// Peers in one deny-list (a `Deny` request stays under its 256 KiB limit).
pub const MAX_DENIED: usize = 4096;

/// Why bytes from the network were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("{message} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        message: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{message} is not valid CBOR for this protocol version: {reason}")]
    Malformed {
        message: &'static str,
        reason: String,
    },
    #[error("{message} breaks a limit: {reason}")]
    Invalid {
        message: &'static str,
        reason: String,
    },
}

/// A message with a name, a size limit and a CBOR encoding.
pub trait WireMessage: Serialize + DeserializeOwned {
    const NAME: &'static str;
    const MAX_BYTES: usize;

    /// Semantic limits beyond what the type expresses.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = ciborium::into_writer(self, &mut out) {
            unreachable!("serialising a message into memory failed: {e}");
        }
        out
    }

    /// Decodes untrusted bytes: size limit, CBOR, then [`WireMessage::check`].
    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(WireError::TooLarge {
                message: Self::NAME,
                len: bytes.len(),
                max: Self::MAX_BYTES,
            });
        }
        let mut rest = bytes;
        let msg: Self = ciborium::from_reader(&mut rest).map_err(|e| WireError::Malformed {
            message: Self::NAME,
            reason: e.to_string(),
        })?;
        // One encoding per message: bytes after the CBOR item are refused.
        if !rest.is_empty() {
            return Err(WireError::Malformed {
                message: Self::NAME,
                reason: format!("{} bytes after the message", rest.len()),
            });
        }
        msg.check().map_err(|reason| WireError::Invalid {
            message: Self::NAME,
            reason,
        })?;
        Ok(msg)
    }

    /// `[len: u32 BE][CBOR]`.
    fn to_frame(&self) -> Vec<u8> {
        let body = self.encode();
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Checks a frame's length prefix against the limit before the body is read.
    fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > Self::MAX_BYTES {
            return Err(WireError::TooLarge {
                message: Self::NAME,
                len,
                max: Self::MAX_BYTES,
            });
        }
        Ok(len)
    }

    /// Decodes one whole frame held in memory (length prefix and body).
    fn from_frame(frame: &[u8]) -> Result<Self, WireError> {
        let Some((prefix, body)) = frame.split_first_chunk::<4>() else {
            return Err(WireError::Malformed {
                message: Self::NAME,
                reason: format!("frame of {} bytes has no length prefix", frame.len()),
            });
        };
        let len = Self::frame_len(*prefix)?;
        if body.len() != len {
            return Err(WireError::Malformed {
                message: Self::NAME,
                reason: format!("frame announces {len} bytes, carries {}", body.len()),
            });
        }
        Self::decode(body)
    }
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{field} is {} bytes, at most {max}", s.len()));
    }
    Ok(())
}

fn check_records(records: &[NameRecord]) -> Result<(), String> {
    check_count(
        "records",
        records.len(),
        crate::names::MAX_RECORDS_PER_MESSAGE,
    )?;
    records.iter().try_for_each(NameRecord::check)
}

fn check_count(field: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{field} has {n} entries, at most {max}"));
    }
    Ok(())
}

/// First frame on a shard stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardRequest {
    /// Store a shard for `owner`; `len` bytes follow. The receiver hashes
    /// them and refuses them unless they hash to `shard`; the copy is kept
    /// until every owner released it.
    Put {
        shard: ShardId,
        len: u32,
        owner: ShardRef,
        /// The writer counted this copy as durable: the receiver must not
        /// keep it in a volatile (memory) container, and refuses it (`Full`)
        /// rather than do so. Absent from older writers: anywhere.
        #[serde(default)]
        durable: bool,
    },
    /// Send a stored shard back.
    Get { shard: ShardId },
    /// Store a manifest replica; `len` bytes of CBOR manifest follow.
    PutManifest { object: ObjectId, len: u32 },
    /// Send a stored manifest back.
    GetManifest { object: ObjectId },
}

impl WireMessage for ShardRequest {
    const NAME: &'static str = "shard request";
    const MAX_BYTES: usize = 1024;

    fn check(&self) -> Result<(), String> {
        match self {
            ShardRequest::Put { len, .. } if *len as usize > MAX_SHARD_BYTES => {
                Err(format!("shard of {len} bytes exceeds {MAX_SHARD_BYTES}"))
            }
            ShardRequest::PutManifest { len, .. } if *len as usize > MAX_MANIFEST_BYTES => Err(
                format!("manifest of {len} bytes exceeds {MAX_MANIFEST_BYTES}"),
            ),
            _ => Ok(()),
        }
    }
}

/// What went wrong on the remote side, in a form every version understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    NotFound,
    /// Fewer live nodes than the stripe needs.
    NotEnoughNodes,
    /// The bytes do not hash to the shard ID (sent or stored copy).
    Integrity,
    /// No container has room.
    Full,
    BadRequest,
    Unavailable,
    Internal,
    /// The requester is not allowed to make this request (an unadmitted
    /// peer asking for a node-only operation).
    Forbidden,
}

/// An error returned over the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// Answer frame on a shard stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardResponse {
    /// The shard is verified, written and indexed durably.
    Stored {
        shard: ShardId,
    },
    /// `len` verified bytes follow.
    Data {
        shard: ShardId,
        len: u32,
    },
    /// The manifest replica is stored durably.
    ManifestStored {
        object: ObjectId,
    },
    /// `len` bytes of manifest follow.
    Manifest {
        object: ObjectId,
        len: u32,
    },
    Error(RemoteError),
}

impl WireMessage for ShardResponse {
    const NAME: &'static str = "shard response";
    const MAX_BYTES: usize = 4096;

    fn check(&self) -> Result<(), String> {
        match self {
            ShardResponse::Data { len, .. } if *len as usize > MAX_SHARD_BYTES => {
                Err(format!("shard of {len} bytes exceeds {MAX_SHARD_BYTES}"))
            }
            ShardResponse::Manifest { len, .. } if *len as usize > MAX_MANIFEST_BYTES => Err(
                format!("manifest of {len} bytes exceeds {MAX_MANIFEST_BYTES}"),
            ),
            ShardResponse::Error(e) => check_text("error message", &e.message, MAX_TEXT_LEN),
            _ => Ok(()),
        }
    }
}

/// Small requests between nodes and from clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Which of these copies are stored (the shard passes its index check
    /// and the owner's reference is recorded)?
    Has { slots: Vec<ShardSlot> },
    /// Release these owners' references; a copy no reference is left on is
    /// deleted. `Deleted` counts the copies deleted.
    Delete { slots: Vec<ShardSlot> },
    /// Read and re-hash these shards: which are stored and intact?
    Verify { shards: Vec<ShardId> },
    /// Remove generation `generation` of an object: its manifest replica
    /// (if it holds that generation or an older one) and a tombstone for
    /// that generation.
    DeleteManifest {
        object: ObjectId,
        generation: Generation,
    },
    /// Summaries of the manifests this node holds, in object order: at
    /// most `limit` (capped at [`MAX_LISTED_OBJECTS`]) after `after`.
    ListManifests { after: Option<ObjectId>, limit: u32 },
    /// Which of these manifests does this node hold (or know deleted)?
    ManifestStates { objects: Vec<ObjectId> },
    /// Re-hash every stored shard now; corrupt copies are deleted.
    Scrub,
    /// The node's membership view and own state.
    Status,
    /// Replace this node's deny-list: refuse and close every connection to
    /// these peers until the next `Deny` (an empty list heals). Not kept
    /// across restarts. Fault injection and quarantine of a misbehaving
    /// member; anyone holding the network key may send it, as `Delete`.
    Deny { peers: Vec<NodeId> },
    /// Every revocation this node knows ([`crate::trust::Revocation`]s,
    /// encoded): pulled by a member whose revocation digest differs.
    Revocations,
    /// An operator request (`Deny`, `Scrub`, detailed `Status`) with the
    /// admin token that allows it. In a federation that admits nodes by
    /// certificate, operator requests are answered only in this envelope,
    /// with an `admin` token of the node's own site.
    Operator {
        #[serde(with = "crate::trust::serde_bytes_vec")]
        token: Vec<u8>,
        request: Box<ControlRequest>,
    },
    /// Merge these name records (last writer wins per key); answered
    /// `Deleted { count }` with the number that changed something.
    PutNames { records: Vec<NameRecord> },
    /// The records of namespace `ns` whose keys start with `prefix`, in
    /// key order, after `after`, at most `limit` (tombstones included).
    ListNames {
        ns: String,
        prefix: String,
        after: Option<String>,
        limit: u32,
    },
    /// A digest of every record of `ns` this node holds (anti-entropy:
    /// replicas that agree exchange nothing else).
    NamesDigest { ns: String },
}

impl WireMessage for ControlRequest {
    const NAME: &'static str = "control request";
    const MAX_BYTES: usize = 256 << 10;

    fn check(&self) -> Result<(), String> {
        match self {
            ControlRequest::Has { slots } | ControlRequest::Delete { slots } => {
                check_count("slots", slots.len(), MAX_SLOTS_PER_REQUEST)
            }
            ControlRequest::Verify { shards } => {
                check_count("shards", shards.len(), MAX_SHARDS_PER_REQUEST)
            }
            ControlRequest::ManifestStates { objects } => {
                check_count("objects", objects.len(), MAX_SHARDS_PER_REQUEST)
            }
            ControlRequest::Deny { peers } => check_count("peers", peers.len(), MAX_DENIED),
            ControlRequest::Operator { token, request } => {
                check_count("token bytes", token.len(), crate::token::TOKEN_MAX_BYTES)?;
                match **request {
                    ControlRequest::Deny { .. }
                    | ControlRequest::Scrub
                    | ControlRequest::Status => request.check(),
                    _ => Err("only deny, scrub and status are operator requests".into()),
                }
            }
            ControlRequest::PutNames { records } => check_records(records),
            ControlRequest::ListNames {
                ns,
                prefix,
                after,
                limit,
            } => {
                check_text("namespace", ns, crate::names::MAX_NAMESPACE_LEN)?;
                check_text("prefix", prefix, crate::names::MAX_KEY_LEN)?;
                if let Some(a) = after {
                    check_text("after", a, crate::names::MAX_KEY_LEN)?;
                }
                check_count(
                    "limit",
                    *limit as usize,
                    crate::names::MAX_RECORDS_PER_MESSAGE,
                )
            }
            ControlRequest::NamesDigest { ns } => {
                check_text("namespace", ns, crate::names::MAX_NAMESPACE_LEN)
            }
            ControlRequest::DeleteManifest { .. }
            | ControlRequest::Scrub
            | ControlRequest::ListManifests { .. }
            | ControlRequest::Revocations
            | ControlRequest::Status => Ok(()),
        }
    }
}

/// Per-container capacity in an announcement or a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub name: String,
    pub kind: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

/// Container kinds whose contents survive a restart of their node. Any
/// other kind (`memory`, or one this build does not know) is volatile.
pub const DURABLE_CONTAINER_KINDS: &[&str] = &["fs", "dir", "s3", "webdav", "sftp"];

impl ContainerReport {
    /// Whether what this container holds survives a restart.
    pub fn is_durable(&self) -> bool {
        DURABLE_CONTAINER_KINDS.contains(&self.kind.as_str())
    }
}

/// Load figures in an announcement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub requests_in_flight: u32,
    /// Shard bytes in and out per second over the last interval.
    pub bytes_per_sec: u64,
    /// Client puts and gets this node served as entry peer over the last
    /// interval (started or still in flight): repair on every member
    /// yields while any member has client work.
    #[serde(default)]
    pub client_ops: u32,
}

/// A node's periodic capacity and load announcement (gossipsub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub version: u16,
    pub node: NodeId,
    pub site: String,
    pub addrs: Vec<String>,
    pub containers: Vec<ContainerReport>,
    pub load: Load,
    pub software: String,
    /// Strictly increasing per node: older or repeated ones are ignored.
    pub seq: u64,
    /// The node's certificate ([`crate::trust::NodeCert`], encoded), in a
    /// federation that admits nodes by certificate. Members verify it on
    /// every announcement and take the site label and the capacity ceiling
    /// from it, never from the fields above.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::trust::opt_bytes"
    )]
    pub cert: Option<Vec<u8>>,
    /// A digest of the revocations the node knows (0: none); a member that
    /// knows a different set pulls the node's list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revocations: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Announcement {
    pub fn capacity_bytes(&self) -> u64 {
        self.containers.iter().map(|c| c.capacity_bytes).sum()
    }

    pub fn free_bytes(&self) -> u64 {
        self.containers.iter().map(|c| c.free_bytes).sum()
    }

    /// Whether this member's shards may be held in memory: it has no
    /// durable container, or one of its volatile containers holds (or is
    /// being written) anything. A node with a durable container stores
    /// shards there first and keeps a shard it was told is durable out of
    /// memory ([`ShardRequest::Put`]'s `durable`), so a mixed node whose
    /// memory containers are empty counts as durable.
    pub fn is_volatile(&self) -> bool {
        let durable = self
            .containers
            .iter()
            .any(|c| c.is_durable() && c.capacity_bytes > 0);
        let in_memory = self
            .containers
            .iter()
            .any(|c| !c.is_durable() && c.free_bytes < c.capacity_bytes);
        !durable || in_memory
    }

    /// Free bytes new shards can go to: of the durable containers only
    /// when the member counts as durable (those are where its new shards
    /// go).
    pub fn placement_free_bytes(&self) -> u64 {
        self.placement_space().free_bytes
    }

    /// Capacity and free bytes of the containers new shards go to: the
    /// durable ones for a durable member, all of them for a volatile one.
    /// What [`crate::placement::fill_weight`] weighs.
    pub fn placement_space(&self) -> Space {
        let volatile = self.is_volatile();
        self.containers
            .iter()
            .filter(|c| volatile || c.is_durable())
            .fold(Space::default(), |s, c| Space {
                capacity_bytes: s.capacity_bytes.saturating_add(c.capacity_bytes),
                free_bytes: s.free_bytes.saturating_add(c.free_bytes),
            })
    }
}

fn check_containers(containers: &[ContainerReport]) -> Result<(), String> {
    check_count("containers", containers.len(), MAX_CONTAINERS)?;
    for c in containers {
        check_text("container name", &c.name, MAX_SITE_LEN)?;
        check_text("container kind", &c.kind, MAX_SITE_LEN)?;
        if c.free_bytes > c.capacity_bytes {
            return Err(format!(
                "container {} reports {} free of {} bytes",
                c.name, c.free_bytes, c.capacity_bytes
            ));
        }
    }
    Ok(())
}

fn check_addrs(addrs: &[String]) -> Result<(), String> {
    check_count("addrs", addrs.len(), MAX_ADDRS)?;
    addrs
        .iter()
        .try_for_each(|a| check_text("address", a, MAX_TEXT_LEN))
}

impl WireMessage for Announcement {
    const NAME: &'static str = "announcement";
    const MAX_BYTES: usize = 64 << 10;

    fn check(&self) -> Result<(), String> {
        if self.version != ANNOUNCEMENT_VERSION {
            return Err(format!(
                "version {} (this build reads {ANNOUNCEMENT_VERSION})",
                self.version
            ));
        }
        check_text("site", &self.site, MAX_SITE_LEN)?;
        check_text("software", &self.software, MAX_TEXT_LEN)?;
        check_addrs(&self.addrs)?;
        if let Some(cert) = &self.cert {
            check_count(
                "certificate bytes",
                cert.len(),
                crate::trust::CERT_MAX_BYTES,
            )?;
        }
        check_containers(&self.containers)
    }
}

/// One member as a node sees it, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub id: NodeId,
    pub site: String,
    pub state: MemberState,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub addrs: Vec<String>,
    pub load: Load,
    pub software: String,
    /// Milliseconds since its last announcement arrived (0 for the node itself).
    pub last_seen_ms: u64,
    pub seq: u64,
    /// Its shards may be held in memory ([`Announcement::is_volatile`]).
    #[serde(default)]
    pub volatile: bool,
    /// Round-trip time from the reporting node, smoothed (libp2p ping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
}

/// A node's own state and its membership view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: NodeId,
    pub containers: Vec<ContainerReport>,
    pub shards_stored: u64,
    pub members: Vec<MemberReport>,
    #[serde(default)]
    pub repair: RepairReport,
    /// Shard bytes this node's reads (as an entry peer) took from each
    /// site, since it started.
    #[serde(default)]
    pub read_bytes_by_site: std::collections::BTreeMap<String, u64>,
}

/// A node's repair and scrub counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Stripes found short of k + m in the last round and not yet repaired.
    pub queue_len: u64,
    pub shards_repaired: u64,
    pub bytes_repaired: u64,
    /// Shard bytes read to rebuild: the `k` verified shards each rebuilt
    /// stripe was decoded from (fetched from their holders, or read from
    /// this node's own store when it holds one). `bytes_read /
    /// bytes_repaired` is the read amplification: `k` for Reed-Solomon
    /// when one shard of a stripe is missing. A hedged extra request that
    /// lost the race is not counted.
    #[serde(default)]
    pub bytes_read: u64,
    /// Shards moved to emptier members by rebalancing.
    #[serde(default)]
    pub shards_moved: u64,
    /// Stripes with fewer than k shards left (unrecoverable).
    pub stripes_lost: u64,
    /// Repair rounds completed since the node started.
    #[serde(default)]
    pub rounds: u64,
    /// Repair transfers that ran at the reserved share of the budget
    /// because clients were busy (the scheduler yielded to them).
    #[serde(default)]
    pub yielded: u64,
    /// Shard deletions waiting for their node to come back.
    pub pending_deletes: u64,
    /// Milliseconds since the last completed scrub (None: never).
    pub last_scrub_ms_ago: Option<u64>,
    pub last_scrub_checked: u64,
    pub last_scrub_corrupt: u64,
}

/// What a node knows of one object's manifest: the version of the replica
/// it holds, and the generations it knows removed (unexpired tombstones).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestState {
    pub held: Option<ManifestVersion>,
    #[serde(default)]
    pub removed: Vec<Generation>,
}

/// Answers on the control protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// One flag per requested shard, in order (answers `Has` and `Verify`).
    Has {
        present: Vec<bool>,
    },
    Deleted {
        count: u32,
    },
    Manifests {
        objects: Vec<ObjectSummary>,
    },
    /// One state per requested object, in order, with the version of each
    /// held replica, so that a replica that missed a repair is seen as
    /// stale and never decides anything.
    ManifestStates {
        states: Vec<ManifestState>,
    },
    Scrubbed {
        checked: u64,
        corrupt: u64,
    },
    Status(StatusReport),
    /// The deny-list now holds `count` peers.
    Denied {
        count: u32,
    },
    /// Encoded revocations (answers `Revocations`).
    Revocations {
        items: Vec<crate::trust::RevocationBytes>,
    },
    /// Name records (answers `ListNames`); `truncated`: more follow.
    Names {
        records: Vec<NameRecord>,
        truncated: bool,
    },
    /// Answers `NamesDigest`.
    NamesDigest {
        count: u64,
        digest: [u8; 32],
    },
    Error(RemoteError),
}

impl WireMessage for ControlResponse {
    const NAME: &'static str = "control response";
    const MAX_BYTES: usize = 8 << 20;

    fn check(&self) -> Result<(), String> {
        match self {
            ControlResponse::Has { present } => {
                check_count("present", present.len(), MAX_SHARDS_PER_REQUEST)
            }
            ControlResponse::Deleted { .. } => Ok(()),
            ControlResponse::Manifests { objects } => check_summaries(objects),
            ControlResponse::ManifestStates { states } => {
                check_count("states", states.len(), MAX_SHARDS_PER_REQUEST)?;
                states.iter().try_for_each(|s| {
                    check_count("removed", s.removed.len(), MAX_REMOVED_GENERATIONS)
                })
            }
            ControlResponse::Scrubbed { .. }
            | ControlResponse::Denied { .. }
            | ControlResponse::NamesDigest { .. } => Ok(()),
            ControlResponse::Names { records, .. } => check_records(records),
            ControlResponse::Revocations { items } => {
                check_count("revocations", items.len(), crate::trust::MAX_REVOCATIONS)
            }
            ControlResponse::Status(s) => {
                check_containers(&s.containers)?;
                check_count("members", s.members.len(), MAX_MEMBERS)?;
                for m in &s.members {
                    check_text("site", &m.site, MAX_SITE_LEN)?;
                    check_text("software", &m.software, MAX_TEXT_LEN)?;
                    check_addrs(&m.addrs)?;
                }
                Ok(())
            }
            ControlResponse::Error(e) => check_text("error message", &e.message, MAX_TEXT_LEN),
        }
    }
}

/// Most objects in one listing.
pub const MAX_LISTED_OBJECTS: usize = 100_000;

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSummary {
    pub object: ObjectId,
    pub size: u64,
    pub name: Option<String>,
    /// `user@site` of the token that stored it (none in an open network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

fn check_summaries(objects: &[ObjectSummary]) -> Result<(), String> {
    check_count("objects", objects.len(), MAX_LISTED_OBJECTS)?;
    objects
        .iter()
        .flat_map(|o| [o.name.as_deref(), o.owner.as_deref()])
        .flatten()
        .try_for_each(|n| check_text("name", n, MAX_META_LEN))
}

/// First frame from a client on [`CLIENT_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Store an object of `size` bytes whose BLAKE3 is `object`; after the
    /// peer answers `Ready`, exactly `size` bytes follow.
    Put {
        object: ObjectId,
        size: u64,
        codec: CodecKind,
        k: u16,
        m: u16,
        segment_size: u32,
        meta: Metadata,
        /// An annual durability target: the entry peer chooses `k` and `m`
        /// for it ([`crate::durability::choose`]) instead of taking the
        /// ones given, and a `segment_size` of 0 then means `k` MiB.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        durability: Option<Durability>,
    },
    Get {
        object: ObjectId,
    },
    /// An object's geometry, health and holders: the segments from
    /// `first_segment` on, at most `max_segments` of them (capped by the
    /// node so that the answer fits its size limit, see
    /// [`stat_page_segments`]); the answer says how many segments there are.
    Stat {
        object: ObjectId,
        #[serde(default)]
        first_segment: u64,
        #[serde(default)]
        max_segments: Option<u32>,
    },
    Remove {
        object: ObjectId,
    },
    /// Objects in ID order: at most `limit` (capped at
    /// [`MAX_LISTED_OBJECTS`]) after `after`; the answer says where the
    /// next page starts.
    List {
        after: Option<ObjectId>,
        limit: u32,
    },
    /// Spread a site admin's signed revocation ([`crate::trust::Revocation`],
    /// encoded) to every member; it needs no token, its signature is its
    /// authority.
    Revoke {
        #[serde(with = "crate::trust::serde_bytes_vec")]
        revocation: Vec<u8>,
    },
    /// Register a user token for S3; answered `S3Keys` (the node derives
    /// the secret; see the node's `s3::auth`).
    S3Keys {
        token: Vec<u8>,
    },
    /// Name a stored object `bucket/key` (the bucket is created if
    /// absent); answered `Named`.
    Name {
        bucket: String,
        key: String,
        object: ObjectId,
        size: u64,
        etag: String,
        content_type: Option<String>,
    },
    /// The object `bucket/key` names; answered `Resolved`.
    Resolve {
        bucket: String,
        key: String,
    },
    /// Delete the name `bucket/key` (a tombstone; the object it named is
    /// reclaimed once no name refers to it, if it was stored to be
    /// named); answered `Unnamed`, also when there was no such name.
    Unname {
        bucket: String,
        key: String,
    },
    /// The names of `bucket` under `prefix` after `after` (at most 1000);
    /// answered `Names`.
    ListNames {
        bucket: String,
        prefix: String,
        after: Option<String>,
    },
}

/// What a client sends first: its request and the user token it acts with
/// (biscuit bytes; required by a federation that admits nodes by
/// certificate, ignored by an open network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEnvelope {
    #[serde(default, with = "crate::trust::opt_bytes")]
    pub token: Option<Vec<u8>>,
    pub request: ClientRequest,
}

impl WireMessage for ClientEnvelope {
    const NAME: &'static str = "client request";
    const MAX_BYTES: usize = ClientRequest::MAX_BYTES + crate::token::TOKEN_MAX_BYTES + 1024;

    fn check(&self) -> Result<(), String> {
        if let Some(t) = &self.token {
            check_count("token bytes", t.len(), crate::token::TOKEN_MAX_BYTES)?;
        }
        self.request.check()
    }
}

impl WireMessage for ClientRequest {
    const NAME: &'static str = "client request";
    const MAX_BYTES: usize = 64 << 10;

    fn check(&self) -> Result<(), String> {
        match self {
            ClientRequest::Put { meta, .. } => {
                for v in [&meta.name, &meta.content_type, &meta.owner]
                    .into_iter()
                    .flatten()
                {
                    check_text("metadata", v, MAX_META_LEN)?;
                }
            }
            ClientRequest::Revoke { revocation } => check_count(
                "revocation bytes",
                revocation.len(),
                crate::trust::REVOCATION_MAX_BYTES,
            )?,
            ClientRequest::S3Keys { token } => {
                check_count("token bytes", token.len(), crate::token::TOKEN_MAX_BYTES)?
            }
            ClientRequest::Name {
                bucket,
                key,
                etag,
                content_type,
                ..
            } => {
                check_text("bucket", bucket, crate::names::MAX_NAMESPACE_LEN)?;
                check_text("key", key, crate::names::MAX_KEY_LEN)?;
                check_text("etag", etag, crate::names::MAX_SHORT_TEXT)?;
                if let Some(c) = content_type {
                    check_text("content type", c, crate::names::MAX_SHORT_TEXT)?;
                }
            }
            ClientRequest::Resolve { bucket, key } | ClientRequest::Unname { bucket, key } => {
                check_text("bucket", bucket, crate::names::MAX_NAMESPACE_LEN)?;
                check_text("key", key, crate::names::MAX_KEY_LEN)?;
            }
            ClientRequest::ListNames {
                bucket,
                prefix,
                after,
            } => {
                check_text("bucket", bucket, crate::names::MAX_NAMESPACE_LEN)?;
                check_text("prefix", prefix, crate::names::MAX_KEY_LEN)?;
                if let Some(a) = after {
                    check_text("after", a, crate::names::MAX_KEY_LEN)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The health of an object as seen now (ordered from best to worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Every segment has k + m verified shards on live nodes.
    Healthy,
    /// Every segment has at least k.
    Degraded,
    /// Some segment has fewer than k: the object cannot be read.
    Lost,
}

/// One shard in a stat answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStat {
    pub id: ShardId,
    pub holder: NodeId,
    /// Stored on its holder and re-hashed correctly just now.
    pub ok: bool,
}

/// One segment in a stat answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStat {
    pub len: u64,
    pub shards: Vec<ShardStat>,
}

/// What `stat` reports about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStat {
    pub object: ObjectId,
    pub size: u64,
    pub codec: CodecKind,
    pub k: u16,
    pub m: u16,
    pub segment_size: u32,
    pub meta: Metadata,
    pub health: Health,
    pub segments: Vec<SegmentStat>,
    /// The annual durability the object was written for, if it was
    /// written for one (`put --durability`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability_target: Option<Durability>,
    /// The annual durability its current holders give by the formula of
    /// [`crate::durability`] (the entry peer's failure model; verified
    /// shards on live holders, the weakest segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability_now: Option<Durability>,
    /// An object held inline in its manifest (no segments): the nodes among
    /// its top `m + 1` manifest replicas that hold its current manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline_replicas: Vec<NodeId>,
    /// The index of `segments[0]` among the object's segments, and how many
    /// it has (absent from older nodes: `segments` is all of them). Health
    /// and `durability_now` describe the segments answered.
    #[serde(default)]
    pub first_segment: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_count: Option<u64>,
}

/// Most shard entries one stat answer lists.
pub const MAX_STAT_SHARDS: usize = 65_536;

/// Segments per stat answer for `n` shards per segment.
pub fn stat_page_segments(n: usize) -> usize {
    (MAX_STAT_SHARDS / n.max(1)).max(1)
}

/// A stored object, as acknowledged to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReceipt {
    pub object: ObjectId,
    pub size: u64,
    pub k: u16,
    pub m: u16,
    pub segments: u64,
    /// Nodes holding a manifest replica.
    pub manifest_replicas: u32,
    /// True when the object was already stored and nothing was written.
    pub existed: bool,
    /// The generation stored or found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<crate::manifest::Generation>,
}

/// A shard passed over during a get, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedShard {
    pub segment: u64,
    pub shard: ShardId,
    pub holder: NodeId,
    pub reason: String,
}

/// Answers on [`CLIENT_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// Send the object's bytes now.
    Ready,
    Stored(PutReceipt),
    /// `size` bytes follow as [`Chunk`] frames.
    Object {
        size: u64,
        meta: Metadata,
    },
    Stat(ObjectStat),
    Removed {
        shards: u32,
        manifests: u32,
    },
    List {
        objects: Vec<ObjectSummary>,
        /// Pass as `after` for the next page; `None`: this was the last.
        #[serde(default)]
        next: Option<ObjectId>,
    },
    /// The entry peer now knows `added` more revoked identifiers.
    Revoked {
        added: u32,
    },
    /// An S3 key pair for the registered token.
    S3Keys {
        access_key: String,
        secret: String,
    },
    /// The name was written.
    Named,
    /// The name is deleted.
    Unnamed,
    /// What a name points at.
    Resolved {
        object: ObjectId,
        size: u64,
    },
    /// A name of a multipart object stored as its parts: the objects to
    /// read one after the other.
    ResolvedPieces {
        pieces: Vec<ObjectId>,
        size: u64,
    },
    /// Live names in key order; `truncated`: more follow after the last.
    Names {
        names: Vec<NameRecord>,
        truncated: bool,
    },
    Error(RemoteError),
}

impl WireMessage for ClientResponse {
    const NAME: &'static str = "client response";
    const MAX_BYTES: usize = 32 << 20;

    fn check(&self) -> Result<(), String> {
        match self {
            ClientResponse::List { objects, .. } => check_summaries(objects),
            ClientResponse::Error(e) => check_text("error message", &e.message, MAX_TEXT_LEN),
            ClientResponse::Names { names, .. } => check_records(names),
            ClientResponse::ResolvedPieces { pieces, .. } => {
                check_count("pieces", pieces.len(), crate::names::MAX_PIECES)
            }
            ClientResponse::S3Keys { access_key, secret } => {
                check_text("access key", access_key, MAX_TEXT_LEN)?;
                check_text("secret", secret, MAX_TEXT_LEN)
            }
            _ => Ok(()),
        }
    }
}

/// Framing of an object's bytes on a get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chunk {
    /// `len` bytes of the object follow.
    Data {
        len: u32,
    },
    /// All bytes sent; shards that were passed over on the way.
    End {
        skipped: Vec<SkippedShard>,
    },
    Error(RemoteError),
}

impl WireMessage for Chunk {
    const NAME: &'static str = "chunk";
    const MAX_BYTES: usize = 1 << 20;

    fn check(&self) -> Result<(), String> {
        match self {
            Chunk::Data { len } if *len as usize > MAX_SEGMENT_SIZE as usize => {
                Err(format!("chunk of {len} bytes exceeds {MAX_SEGMENT_SIZE}"))
            }
            Chunk::End { skipped } => check_count("skipped", skipped.len(), 4096),
            Chunk::Error(e) => check_text("error message", &e.message, MAX_TEXT_LEN),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn announcement() -> Announcement {
        Announcement {
            version: ANNOUNCEMENT_VERSION,
            node: NodeId::from_bytes(vec![1, 2, 3]).unwrap(),
            site: "hospital-a".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            containers: vec![ContainerReport {
                name: "disk0".into(),
                kind: "fs".into(),
                capacity_bytes: 100,
                free_bytes: 40,
            }],
            load: Load::default(),
            software: "0.1.0".into(),
            seq: 7,
            cert: None,
            revocations: 0,
        }
    }

    fn owner() -> ShardRef {
        ShardRef {
            object: ObjectId::of(b"o"),
            generation: Generation {
                ms: u64::MAX,
                nonce: u64::MAX,
            },
            segment: u64::MAX,
            index: u16::MAX,
        }
    }

    fn slot() -> ShardSlot {
        ShardSlot {
            shard: ShardId::of(b"a"),
            owner: owner(),
        }
    }

    #[test]
    fn frames_round_trip() {
        let a = announcement();
        assert_eq!(Announcement::from_frame(&a.to_frame()).unwrap(), a);
        let r = ShardRequest::Put {
            shard: ShardId::of(b"s"),
            len: 10,
            owner: owner(),
            durable: true,
        };
        assert_eq!(ShardRequest::from_frame(&r.to_frame()).unwrap(), r);
        let c = ControlRequest::Has {
            slots: vec![slot(); 3],
        };
        assert_eq!(ControlRequest::decode(&c.encode()).unwrap(), c);
    }

    /// A put header from a writer before `durable` existed still decodes
    /// (as not durable), and one with it decodes on a reader that ignores it.
    #[test]
    fn put_headers_of_both_versions_decode() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        enum OldShardRequest {
            Put {
                shard: ShardId,
                len: u32,
                owner: ShardRef,
            },
        }
        let old = OldShardRequest::Put {
            shard: ShardId::of(b"s"),
            len: 10,
            owner: owner(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&old, &mut bytes).unwrap();
        assert_eq!(
            ShardRequest::decode(&bytes).unwrap(),
            ShardRequest::Put {
                shard: ShardId::of(b"s"),
                len: 10,
                owner: owner(),
                durable: false,
            }
        );
        let new = ShardRequest::Put {
            shard: ShardId::of(b"s"),
            len: 10,
            owner: owner(),
            durable: true,
        };
        let back: OldShardRequest = ciborium::from_reader(&new.encode()[..]).unwrap();
        assert_eq!(back, old);
    }

    #[test]
    fn limits_are_enforced() {
        assert!(matches!(
            ShardRequest::frame_len((2000u32).to_be_bytes()),
            Err(WireError::TooLarge { .. })
        ));
        let big = ShardRequest::Put {
            shard: ShardId::of(b"s"),
            len: u32::MAX,
            owner: owner(),
            durable: false,
        };
        assert!(matches!(
            ShardRequest::decode(&big.encode()),
            Err(WireError::Invalid { .. })
        ));
        let mut a = announcement();
        a.site = "x".repeat(MAX_SITE_LEN + 1);
        assert!(Announcement::decode(&a.encode()).is_err());
        let mut a = announcement();
        a.containers[0].free_bytes = 101;
        assert!(Announcement::decode(&a.encode()).is_err());
        let many = ControlRequest::Has {
            slots: vec![slot(); MAX_SLOTS_PER_REQUEST + 1],
        };
        assert!(ControlRequest::decode(&many.encode()).is_err());
        // The most slots a request may carry fit in its size limit.
        let full = ControlRequest::Delete {
            slots: vec![slot(); MAX_SLOTS_PER_REQUEST],
        };
        let bytes = full.encode();
        assert!(bytes.len() <= ControlRequest::MAX_BYTES, "{}", bytes.len());
        assert_eq!(ControlRequest::decode(&bytes).unwrap(), full);
        // A frame whose prefix disagrees with its body.
        let mut f = announcement().to_frame();
        f.pop();
        assert!(Announcement::from_frame(&f).is_err());
        assert!(Announcement::from_frame(&[0, 0]).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = announcement().encode();
        bytes.extend_from_slice(&[0; 3]);
        assert!(Announcement::decode(&bytes).is_err());
    }

    #[test]
    fn truncations_are_errors() {
        let bytes = announcement().encode();
        for cut in 0..bytes.len() {
            assert!(Announcement::decode(&bytes[..cut]).is_err());
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ShardRequest::decode(&bytes);
            let _ = ShardResponse::decode(&bytes);
            let _ = ControlRequest::decode(&bytes);
            let _ = ControlResponse::decode(&bytes);
            let _ = Announcement::decode(&bytes);
            let _ = Announcement::from_frame(&bytes);
            let _ = ClientRequest::decode(&bytes);
            let _ = ClientResponse::decode(&bytes);
            let _ = Chunk::decode(&bytes);
        }
    }
}
