//! Writes valid encodings of every message into `corpus/<target>/` as seed
//! inputs (bare and framed), so that the fuzzers start from inputs that
//! decode and exercise the round trip instead of hunting for CBOR field
//! names. Corpora are not committed; run this before fuzzing:
//!
//! ```text
//! cargo run --manifest-path protocol/fuzz/Cargo.toml --example seeds
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use dynostore_protocol::erasure::{CodecKind, Geometry};
use dynostore_protocol::ids::{NodeId, ObjectId, ShardId};
use dynostore_protocol::manifest::{Generation, Manifest, Metadata, ShardRef, ShardSlot};
use dynostore_protocol::placement::MemberState;
use dynostore_protocol::wire::{
    Announcement, ContainerReport, ControlRequest, ControlResponse, ErrorKind, Load, MemberReport,
    RemoteError, ShardRequest, ShardResponse, StatusReport, WireMessage, ANNOUNCEMENT_VERSION,
};

fn node(i: u8) -> NodeId {
    let mut id = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    id.extend_from_slice(blake3_like(i).as_bytes());
    NodeId::from_bytes(id).expect("38-byte node ID")
}

/// 32 bytes that differ per `i`, via the crate's own hashing.
fn blake3_like(i: u8) -> ShardId {
    ShardId::of(&[b'n', i])
}

fn manifest(codec: CodecKind, k: u16, m: u16, size: u64, segment_size: u32) -> Manifest {
    let g = Geometry::new(codec, k, m, segment_size).expect("geometry");
    let mut man = Manifest::new(
        ObjectId::of(&size.to_le_bytes()),
        size,
        g,
        Metadata {
            name: Some("scan.dcm".into()),
            content_type: Some("application/dicom".into()),
            created_ms: Some(1_700_000_000_000),
            owner: None,
            collectable: false,
        },
    );
    for s in 0..g.segment_count(size) {
        let len = g.segment_len(size, s);
        let shards: Vec<_> = (0..g.n())
            .map(|i| (ShardId::of(&[s as u8, i as u8]), node((i % 5) as u8)))
            .collect();
        man.push_segment(len, g.shard_size(len) as u32, &shards);
    }
    man
}

fn containers() -> Vec<ContainerReport> {
    vec![ContainerReport {
        name: "disk0".into(),
        kind: "fs".into(),
        capacity_bytes: 1 << 40,
        free_bytes: 1 << 39,
    }]
}

fn announcement() -> Announcement {
    Announcement {
        version: ANNOUNCEMENT_VERSION,
        node: node(1),
        site: "hospital-a".into(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        containers: containers(),
        load: Load {
            requests_in_flight: 3,
            bytes_per_sec: 1 << 20,
            client_ops: 2,
        },
        software: "0.1.0".into(),
        seq: 7,
        cert: None,
        revocations: 0,
    }
}

fn error() -> RemoteError {
    RemoteError {
        kind: ErrorKind::NotFound,
        message: "no such shard".into(),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn wire<T: WireMessage>(root: &Path, target: &str, msgs: &[T]) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    for (i, m) in msgs.iter().enumerate() {
        write(&dir, &format!("seed-{i}"), &m.encode());
        write(&dir, &format!("seed-{i}-frame"), &m.to_frame());
    }
    println!("{target}: {} seeds", 2 * msgs.len());
}

fn main() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    let dir = root.join("manifest");
    fs::create_dir_all(&dir).expect("corpus dir");
    let manifests = [
        manifest(CodecKind::ReedSolomonSimd, 4, 2, 0, 1000),
        manifest(CodecKind::ReedSolomonSimd, 4, 2, 1, 1000),
        manifest(CodecKind::ReedSolomonSimd, 4, 2, 2500, 1000),
        manifest(CodecKind::ReedSolomonNovelpoly, 10, 4, 5000, 1000),
    ];
    for (i, m) in manifests.iter().enumerate() {
        write(&dir, &format!("seed-{i}"), &m.encode());
    }
    println!("manifest: {} seeds", manifests.len());

    let shard = ShardId::of(b"shard");
    let slot = ShardSlot {
        shard,
        owner: ShardRef {
            object: ObjectId::of(b"object"),
            generation: Generation { ms: 1, nonce: 2 },
            segment: 3,
            index: 4,
        },
    };
    wire(
        &root,
        "shard_request",
        &[
            ShardRequest::Put {
                shard,
                len: 1 << 20,
                owner: slot.owner,
                durable: true,
            },
            ShardRequest::Get { shard },
        ],
    );
    wire(
        &root,
        "shard_response",
        &[
            ShardResponse::Stored { shard },
            ShardResponse::Data { shard, len: 4096 },
            ShardResponse::Error(error()),
        ],
    );
    wire(
        &root,
        "control_request",
        &[
            ControlRequest::Has {
                slots: vec![slot, slot],
            },
            ControlRequest::Delete { slots: vec![slot] },
            ControlRequest::Status,
        ],
    );
    wire(
        &root,
        "control_response",
        &[
            ControlResponse::Has {
                present: vec![true, false, true],
            },
            ControlResponse::Deleted { count: 2 },
            ControlResponse::Status(StatusReport {
                node: node(1),
                containers: containers(),
                shards_stored: 42,
                members: vec![MemberReport {
                    id: node(2),
                    site: "hospital-b".into(),
                    state: MemberState::Suspect,
                    capacity_bytes: 1 << 40,
                    free_bytes: 1 << 30,
                    addrs: vec!["/ip4/10.0.0.2/udp/4001/quic-v1".into()],
                    load: Load::default(),
                    software: "0.1.0".into(),
                    last_seen_ms: 1500,
                    seq: 9,
                    volatile: true,
                    rtt_ms: Some(12),
                }],
                repair: Default::default(),
                read_bytes_by_site: [("hospital-b".to_string(), 1 << 20)].into(),
            }),
            ControlResponse::Error(error()),
        ],
    );
    wire(&root, "announcement", &[announcement()]);
}
