//! Limits no peer can exhaust, against real nodes: one peer opens 32
//! client streams and 40 shard streams that send a `Put` header and then
//! stall. A normal put and get through the same node still complete, the
//! stalled streams past the peer's share are closed at once, and the rest
//! are cut at their deadlines.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};

use dynostore_node::client::Client;
use dynostore_node::{keys, net as dnet, objects};
use dynostore_protocol::manifest::ShardRef;
use dynostore_protocol::wire::{ClientRequest, ClientResponse, ShardRequest, WireMessage};
use dynostore_protocol::{ObjectId, ShardId};

use crate::harness::{addrs, bin, cluster_with, data, wait_all_see, Net};

/// The nodes' request timeout here: the shard streams' deadline and the
/// client streams' idle deadline (the first client frame has 10 s).
const TIMEOUT_MS: &str = "6000";

/// Runs the CLI and kills it if it has not finished within `limit`.
fn cli_within(net: &Net, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut child = Command::new(bin())
        .args(args)
        .env("DYNOSTORE_NETWORK_KEY", &net.key)
        .env_remove("DYNOSTORE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return if status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("{args:?} did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the node ends `s` (EOF or an error); returns how long it took.
async fn closed_after(mut s: libp2p::Stream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_do_not_stop_a_normal_put_and_are_cut() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let nodes = cluster_with(
        &net,
        3,
        |i| {
            vec![format!(
                "dir:{}:256MiB",
                root.join(format!("n{i}")).join("shards").display()
            )]
        },
        &["--request-timeout-ms", TIMEOUT_MS],
    );
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let peers = addrs(&nodes);
    wait_all_see(&net, &peers, &ids, "alive", Duration::from_secs(60));
    let entry = peers[0].clone();

    // The attacker: one peer, 32 silent client streams and 40 shard
    // streams whose Put header promises 1 MiB that never comes.
    let psk = keys::load_network_key(&net.key).unwrap();
    let attacker = Client::connect(entry.parse().unwrap(), Some(&psk), Duration::from_secs(10))
        .await
        .unwrap();
    let mut control = attacker.streams();
    let mut client_streams = Vec::new();
    for _ in 0..32 {
        let s = control
            .open_stream(attacker.peer(), dnet::client_protocol())
            .await
            .unwrap();
        client_streams.push(s);
    }
    let mut shard_streams = Vec::new();
    for i in 0..40u32 {
        let mut s = control
            .open_stream(attacker.peer(), dnet::shard_protocol())
            .await
            .unwrap();
        let header = ShardRequest::Put {
            shard: ShardId::of(&i.to_le_bytes()),
            len: 1 << 20,
            owner: ShardRef {
                object: ObjectId::of(b"stalled"),
                generation: Default::default(),
                segment: u64::from(i),
                index: 0,
            },
            durable: false,
        };
        // Closed at once past the peer's share: the write may fail.
        let _ = s.write_all(&header.to_frame()).await;
        let _ = s.flush().await;
        shard_streams.push(s);
    }
    let stalled_at = Instant::now();
    let watch = |streams: Vec<libp2p::Stream>, limit: Duration| {
        streams
            .into_iter()
            .map(move |s| tokio::spawn(closed_after(s, limit)))
            .collect::<Vec<_>>()
    };
    let client_watch = watch(client_streams, Duration::from_secs(60));
    let shard_watch = watch(shard_streams, Duration::from_secs(60));

    // A normal put and get through the same node, from another peer, while
    // the stalled streams are open.
    let file = root.join("normal.bin");
    let body = data(3 << 20, 11);
    std::fs::write(&file, &body).unwrap();
    let f = file.to_str().unwrap().to_string();
    let e = entry.clone();
    let net_ref = &net;
    let id = tokio::task::block_in_place(|| {
        cli_within(
            net_ref,
            &[
                "put",
                "--k",
                "2",
                "--m",
                "1",
                "--segment-size",
                "262144",
                "--peer",
                &e,
                &f,
            ],
            Duration::from_secs(25),
        )
    })
    .expect("a normal put while streams stall");
    let in_time = stalled_at.elapsed();
    let back = root.join("normal.back");
    let b = back.to_str().unwrap().to_string();
    tokio::task::block_in_place(|| {
        cli_within(
            net_ref,
            &["get", "--peer", &e, &id, "-o", &b],
            Duration::from_secs(25),
        )
    })
    .expect("a normal get while streams stall");
    assert_eq!(std::fs::read(&back).unwrap(), body);
    eprintln!("normal put and get done {in_time:?} after the stall began");

    // A stat answer pages: 12 segments asked 5 at a time come back whole.
    let object: ObjectId = id.parse().unwrap();
    let reader = Client::connect(entry.parse().unwrap(), Some(&psk), Duration::from_secs(10))
        .await
        .unwrap();
    let one = match objects::request(
        &reader,
        ClientRequest::Stat {
            object,
            first_segment: 0,
            max_segments: Some(5),
        },
    )
    .await
    .unwrap()
    {
        ClientResponse::Stat(st) => st,
        other => panic!("{other:?}"),
    };
    assert_eq!((one.segments.len(), one.segment_count), (5, Some(12)));
    let paged = objects::stat(&reader, object, Some(5)).await.unwrap();
    let whole = objects::stat(&reader, object, None).await.unwrap();
    assert_eq!(paged.segments.len(), 12);
    assert_eq!(paged.segments, whole.segments);
    assert_eq!(paged.health, whole.health);

    // Every stalled stream is cut: past the share at once, the rest at
    // their deadline (10 s for a client's first frame, the request timeout
    // for a shard stream), never left open.
    let mut cut = Vec::new();
    for (what, handles) in [("client", client_watch), ("shard", shard_watch)] {
        for h in handles {
            let t = h.await.unwrap();
            let t = t.unwrap_or_else(|| panic!("a stalled {what} stream was never cut"));
            cut.push((what, t));
        }
    }
    let longest = cut.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "stalled streams cut: {} client, {} shard; the last after {longest:?}",
        cut.iter().filter(|(w, _)| *w == "client").count(),
        cut.iter().filter(|(w, _)| *w == "shard").count()
    );
}
