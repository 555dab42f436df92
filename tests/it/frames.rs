//! Hostile bytes at a node: garbage on its TCP port, and malformed,
//! truncated and oversized frames on an authenticated shard stream. The node
//! refuses each and keeps serving.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};

use dynostore_node::client::Client;
use dynostore_node::{keys, net as dnet, shard_proto};
use dynostore_protocol::wire::{ShardRequest, WireMessage};
use dynostore_protocol::ShardId;

use crate::harness::{Net, NodeProc, NodeSpec};

fn node(net: &Net) -> NodeProc {
    let mut n = NodeProc::init(
        net.root.path(),
        "n0",
        NodeSpec {
            site: "lab",
            containers: vec!["mem:16MiB".into()],
            bootstrap: None,
            key: Some(&net.key),
            extra: &[],
        },
    );
    n.start();
    n
}

#[test]
fn garbage_on_the_tcp_port_is_refused() {
    let net = Net::new();
    let n = node(&net);
    let junk: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for len in [0usize, 3, 24, 25, 1000, junk.len()] {
        let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&junk[..len]);
    }
    // Still serving.
    let s = net.status(&n.addr()).expect("the node still answers");
    assert_eq!(s["node"].as_str(), Some(n.id.as_str()));
}

/// Sends `bytes` on a fresh shard stream and reads until the node closes it.
async fn send_raw(client: &Client, bytes: &[u8]) -> Vec<u8> {
    let mut s = client
        .streams()
        .open_stream(client.peer(), dnet::shard_protocol())
        .await
        .unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.close().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    answer
}

#[tokio::test]
async fn malformed_frames_are_refused_and_the_node_keeps_serving() {
    let net = Net::new();
    let n = node(&net);
    let psk = keys::load_network_key(&net.key).unwrap();
    let addr = n.addr().parse().unwrap();
    let client = Client::connect(addr, Some(&psk), Duration::from_secs(10))
        .await
        .unwrap();

    let payload = b"a well-formed shard".to_vec();
    let id = ShardId::of(&payload);
    let slot = dynostore_protocol::manifest::ShardSlot {
        shard: id,
        owner: dynostore_protocol::manifest::ShardRef {
            object: dynostore_protocol::ObjectId::of(b"frames"),
            generation: Default::default(),
            segment: 0,
            index: 0,
        },
    };
    let header = ShardRequest::Put {
        shard: id,
        len: payload.len() as u32,
        owner: slot.owner,
        durable: false,
    }
    .to_frame();

    // Oversized length prefix: refused before any body is read.
    assert!(send_raw(&client, &u32::MAX.to_be_bytes()).await.is_empty());
    // Garbage CBOR inside a well-sized frame.
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    assert!(send_raw(&client, &garbage).await.is_empty());
    // A truncated header.
    assert!(send_raw(&client, &header[..header.len() - 3])
        .await
        .is_empty());
    // A put whose body stops short: nothing is stored.
    let mut short = header.clone();
    short.extend_from_slice(&payload[..5]);
    assert!(send_raw(&client, &short).await.is_empty());
    let mut streams = client.streams();
    let err = shard_proto::get_shard(&mut streams, client.peer(), id, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("not"), "{err}");
    // A put whose bytes do not hash to the claimed ID is refused.
    let err = shard_proto::put_shard(
        &mut streams,
        client.peer(),
        slot,
        b"other bytes of 19 b",
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("integrity"),
        "{err}"
    );

    // The node still works for well-behaved peers.
    shard_proto::put_shard(
        &mut streams,
        client.peer(),
        slot,
        &payload,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let back = shard_proto::get_shard(&mut streams, client.peer(), id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(&back[..], &payload[..]);
}
