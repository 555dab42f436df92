//! Never lose an acknowledged object (issue 10), against real nodes: a
//! rolling restart of `m + 1` memory-backed members, a put that fails
//! after it wrote shards another object already had, and a 4/4 partition
//! longer than `down_after` with writes on both sides.
//!
//! On the code before volatile members were tracked, the first fails:
//! stripes put more than `m` shards on `mem:` members, and restarting
//! `m + 1` of them loses those stripes for good.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use serde_json::Value;

use dynostore_node::client::Client;
use dynostore_node::{keys, net as dnet};
use dynostore_protocol::erasure::CodecKind;
use dynostore_protocol::manifest::{ManifestVersion, Metadata};
use dynostore_protocol::wire::{
    ClientEnvelope, ClientRequest, ClientResponse, ControlRequest, ControlResponse, ErrorKind,
};
use dynostore_protocol::ObjectId;

use crate::harness::{
    addrs, cluster, data, wait_all_see, wait_until, Net, NodeProc, DOWN_MS, REPAIR_MS,
};
use crate::ownership::{health, put, reads_back, text, write, SEG};

/// Waits until every object in `ids` is healthy when asked through `peer`.
fn all_healthy(net: &Net, peer: &NodeProc, ids: &[String], limit: Duration) {
    wait_until(limit, "every object back at k + m", || {
        for id in ids {
            match health(net, peer, id) {
                Ok(h) if h == "healthy" => {}
                other => return Err(format!("{id}: {other:?}")),
            }
        }
        Ok(())
    });
}

/// Reads every object through `peer`, retrying transient failures (a
/// connection being re-established) until `limit`.
fn all_read_back(net: &Net, peer: &NodeProc, objects: &[(String, PathBuf)], limit: Duration) {
    wait_until(
        limit,
        &format!("every object read through {}", peer.name),
        || {
            for (id, f) in objects {
                reads_back(net, peer, id, f).map_err(|e| format!("{id}: {e}"))?;
            }
            Ok(())
        },
    );
}

/// A repair counter of every node in `nodes`.
fn counters(net: &Net, nodes: &[&NodeProc], field: &str) -> Result<Vec<u64>, String> {
    nodes
        .iter()
        .map(|n| {
            let s = net.status(&n.addr())?;
            s["repair"][field]
                .as_u64()
                .ok_or_else(|| format!("{} reports no repair.{field}: {s}", n.name))
        })
        .collect()
}

/// Waits until every node in `nodes` completed `rounds` more repair rounds.
fn repair_rounds_pass(net: &Net, nodes: &[&NodeProc], rounds: u64) {
    let start = wait_until(Duration::from_secs(30), "repair counters", || {
        counters(net, nodes, "rounds")
    });
    let limit = Duration::from_millis(REPAIR_MS * rounds * 20 + 30_000);
    wait_until(
        limit,
        &format!("{rounds} repair rounds on every node"),
        || {
            let now = counters(net, nodes, "rounds")?;
            for ((n, a), b) in nodes.iter().zip(&start).zip(&now) {
                if *b < a + rounds {
                    return Err(format!("{} ran {} rounds of {rounds}", n.name, b - a));
                }
            }
            Ok(())
        },
    );
}

/// Waits until no node has a pending release left.
fn releases_sent(net: &Net, nodes: &[&NodeProc], limit: Duration) {
    wait_until(limit, "every pending release sent", || {
        let p = counters(net, nodes, "pending_deletes")?;
        match nodes.iter().zip(&p).find(|(_, p)| **p != 0) {
            Some((n, p)) => Err(format!("{} has {p} pending releases", n.name)),
            None => Ok(()),
        }
    });
}

/// The `stat --json` of `id` through `peer`.
fn stat(net: &Net, peer: &NodeProc, id: &str) -> Value {
    let out = net.cli(&["stat", "--json", id, "--peer", &peer.addr()]);
    assert!(out.status.success(), "stat {id}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Per segment, how many of its shards sit on a member of `among`.
fn holders_among(stat: &Value, among: &BTreeSet<String>) -> Vec<usize> {
    stat["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seg| {
            seg["shards"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| among.contains(s["holder"].as_str().unwrap()))
                .count()
        })
        .collect()
}

fn put_all(net: &Net, nodes: &[NodeProc], files: &[PathBuf], km: (u16, u16)) -> Vec<String> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let r = put(net, &nodes[i % nodes.len()], f, km);
            r["id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn restarting_m_plus_one_memory_backed_holders_loses_nothing() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    // Three directory nodes and three memory-only nodes, one of each kind
    // per site.
    let mem = |i: usize| i % 2 == 1;
    let mut nodes = cluster(&net, 6, |i| {
        if mem(i) {
            vec!["mem:128MiB".into()]
        } else {
            vec![format!("dir:{}/n{i}/shards:128MiB", root.display())]
        }
    });
    let owned: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let ids: Vec<&str> = owned.iter().map(String::as_str).collect();
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    let mem_ids: BTreeSet<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| mem(*i))
        .map(|(_, n)| n.id.clone())
        .collect();

    // k = 2, m = 2: 24 stripes of four shards over six nodes.
    let (k, m) = (2u16, 2u16);
    let dir = root.join("files");
    let files: Vec<PathBuf> = (0..6)
        .map(|i| write(&dir, &format!("obj{i}"), &data(4 * SEG, 100 + i)))
        .collect();
    let objects = put_all(&net, &nodes, &files, (k, m));
    let most_in_memory = objects
        .iter()
        .flat_map(|id| holders_among(&stat(&net, &nodes[0], id), &mem_ids))
        .max()
        .unwrap();
    println!("figure: at most {most_in_memory} shards of a stripe on memory-backed members");

    // A rolling upgrade gone fast: m + 1 memory-backed members restart at
    // once (they come back empty, with the same identity).
    let victims: Vec<usize> = (0..nodes.len()).filter(|i| mem(*i)).collect();
    assert_eq!(victims.len(), usize::from(m) + 1);
    for &i in &victims {
        nodes[i].kill();
    }
    for &i in &victims {
        nodes[i].start();
    }
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));

    let pairs: Vec<(String, PathBuf)> = objects.iter().cloned().zip(files).collect();
    // Through a directory node and through a restarted one.
    all_read_back(&net, &nodes[0], &pairs, Duration::from_secs(60));
    all_read_back(&net, &nodes[victims[0]], &pairs, Duration::from_secs(60));
    all_healthy(&net, &nodes[2], &objects, Duration::from_secs(120));
    all_read_back(&net, &nodes[4], &pairs, Duration::from_secs(60));
    assert!(
        most_in_memory <= usize::from(m),
        "a stripe relied on {most_in_memory} memory-backed shards, more than m = {m}"
    );
}

/// Stores `body` through `peer` under the object ID `claimed`, with the
/// raw client protocol; returns the entry peer's answer.
async fn put_as(net: &Net, peer: &NodeProc, claimed: ObjectId, body: &[u8]) -> ClientResponse {
    let psk = keys::load_network_key(&net.key).unwrap();
    let client = Client::connect(
        peer.addr().parse().unwrap(),
        Some(&psk),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut s = client
        .streams()
        .open_stream(client.peer(), dnet::client_protocol())
        .await
        .unwrap();
    let req = ClientRequest::Put {
        object: claimed,
        size: body.len() as u64,
        codec: CodecKind::default(),
        k: 4,
        m: 2,
        segment_size: SEG as u32,
        meta: Metadata::default(),
        durability: None,
    };
    let req = ClientEnvelope {
        token: None,
        request: req,
    };
    dnet::write_frame(&mut s, &req).await.unwrap();
    s.flush().await.unwrap();
    let ready: ClientResponse = dnet::read_frame(&mut s).await.unwrap();
    assert_eq!(ready, ClientResponse::Ready, "the put must start");
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    let resp = dnet::read_frame(&mut s).await.unwrap();
    let _ = s.close().await;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    resp
}

#[test]
fn a_failed_put_keeps_the_copies_it_shared_with_a_stored_object() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let nodes = cluster(&net, 6, |i| {
        vec![format!("dir:{}/n{i}/shards:128MiB", root.display())]
    });
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    let all: Vec<&NodeProc> = nodes.iter().collect();

    // A: a zero segment and a data segment, in 4 + 2 stripes over the six
    // nodes, so every node holds the zero shard (all six shards of a zero
    // segment are the same bytes) and one shard of the data segment.
    let mut a = vec![0u8; SEG];
    a.extend(data(SEG, 21));
    let dir = root.join("files");
    let fa = write(&dir, "a", &a);
    let id_a = put(&net, &nodes[0], &fa, (4, 2))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(health(&net, &nodes[1], &id_a).as_deref(), Ok("healthy"));
    let before = counters(&net, &all, "pending_deletes").unwrap();
    assert!(before.iter().all(|p| *p == 0), "{before:?}");
    let stored: Vec<u64> = all
        .iter()
        .map(|n| {
            net.status(&n.addr()).unwrap()["shards_stored"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        stored.iter().all(|s| *s == 2),
        "two copies per node: {stored:?}"
    );

    // B: A's bytes followed by two more segments. Its put writes every
    // segment (the zero shard again on every node, A's data shards again
    // wherever B's placement puts them) and then fails deterministically:
    // the bytes do not hash to the ID it claimed. Its clean-up must
    // release B's references only.
    let mut b = a.clone();
    b.extend(data(2 * SEG, 22));
    let claimed = ObjectId::of(b"not the bytes that follow");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(put_as(&net, &nodes[2], claimed, &b)) {
        ClientResponse::Error(e) => assert_eq!(e.kind, ErrorKind::Integrity, "{e}"),
        other => panic!("the put must fail, got {other:?}"),
    }

    // A is whole at once, and no node lost a copy of A or kept one of B.
    reads_back(&net, &nodes[3], &id_a, &fa).unwrap();
    assert_eq!(health(&net, &nodes[4], &id_a).as_deref(), Ok("healthy"));
    releases_sent(&net, &all, Duration::from_secs(60));
    let stored: Vec<u64> = all
        .iter()
        .map(|n| {
            net.status(&n.addr()).unwrap()["shards_stored"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        stored.iter().all(|s| *s == 2),
        "the failed put's own copies are gone and A's stay: {stored:?}"
    );
    let err = reads_back(&net, &nodes[1], &claimed.to_string(), &fa).unwrap_err();
    assert!(err.to_lowercase().contains("no manifest"), "{err}");

    // And it stays so through repair rounds (a late release or a repair
    // decision would act within them).
    repair_rounds_pass(&net, &all, 3);
    assert_eq!(health(&net, &nodes[5], &id_a).as_deref(), Ok("healthy"));
    reads_back(&net, &nodes[5], &id_a, &fa).unwrap();
}

/// `ManifestStates` of `objects` on `node`: the version each replica holds.
async fn manifest_versions(
    net: &Net,
    node: &NodeProc,
    objects: &[ObjectId],
) -> Result<Vec<Option<ManifestVersion>>, String> {
    let psk = keys::load_network_key(&net.key).map_err(|e| e.to_string())?;
    let client = Client::connect(
        node.addr().parse().unwrap(),
        Some(&psk),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())?;
    let req = ControlRequest::ManifestStates {
        objects: objects.to_vec(),
    };
    match client.control(req).await.map_err(|e| e.to_string())? {
        ControlResponse::ManifestStates { states } => {
            Ok(states.into_iter().map(|s| s.held).collect())
        }
        other => Err(format!("{}: unexpected answer {other:?}", node.name)),
    }
}

/// Waits until, for every object, every replica on every node holds one
/// and the same manifest version (so the same holder table: the version's
/// digest covers the encoding), on at least `r` nodes.
fn manifests_converge(net: &Net, nodes: &[NodeProc], objects: &[String], r: usize) {
    let ids: Vec<ObjectId> = objects.iter().map(|o| o.parse().unwrap()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "one manifest per object on every replica",
        || {
            let mut held: BTreeMap<usize, Vec<(String, ManifestVersion)>> = BTreeMap::new();
            for n in nodes {
                let versions = rt.block_on(manifest_versions(net, n, &ids))?;
                for (i, v) in versions.into_iter().enumerate() {
                    if let Some(v) = v {
                        held.entry(i).or_default().push((n.name.clone(), v));
                    }
                }
            }
            for (i, id) in objects.iter().enumerate() {
                let replicas = held.get(&i).cloned().unwrap_or_default();
                let distinct: BTreeSet<&ManifestVersion> =
                    replicas.iter().map(|(_, v)| v).collect();
                if distinct.len() != 1 || replicas.len() < r {
                    return Err(format!("{id}: replicas {replicas:?}"));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn a_partition_of_eight_nodes_into_halves_heals_to_one_manifest_per_object() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let nodes = cluster(&net, 8, |i| {
        vec![format!("dir:{}/n{i}/shards:128MiB", root.display())]
    });
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    let all: Vec<&NodeProc> = nodes.iter().collect();
    let (k, m) = (2u16, 2u16);
    let dir = root.join("files");
    let mut files: Vec<PathBuf> = (0..6)
        .map(|i| write(&dir, &format!("before{i}"), &data(3 * SEG, 300 + i)))
        .collect();
    let mut objects = put_all(&net, &nodes, &files, (k, m));
    all_healthy(&net, &nodes[0], &objects, Duration::from_secs(60));

    // Partition: each half denies the other (a complete bipartition, so no
    // gossip relays across).
    let (left, right) = nodes.split_at(4);
    let deny = |side: &[NodeProc], other: &[NodeProc]| {
        for n in side {
            let mut args = vec!["deny".to_string(), "--peer".into(), n.addr()];
            args.extend(other.iter().map(|o| o.id.clone()));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = net.cli(&refs);
            assert!(out.status.success(), "deny on {}: {}", n.name, text(&out));
        }
    };
    deny(left, right);
    deny(right, left);
    let left_ids: Vec<&str> = left.iter().map(|n| n.id.as_str()).collect();
    let right_ids: Vec<&str> = right.iter().map(|n| n.id.as_str()).collect();
    let limit = Duration::from_millis(4 * DOWN_MS + 30_000);
    wait_all_see(&net, &addrs(left), &right_ids, "down", limit);
    wait_all_see(&net, &addrs(right), &left_ids, "down", limit);
    // Both sides repair what they can of the objects written before.
    repair_rounds_pass(&net, &all, 3);

    // Writes on both sides during the partition (k + m = 4 fits a side).
    for (side, tag) in [(left, "left"), (right, "right")] {
        let during: Vec<PathBuf> = (0..2)
            .map(|i| {
                write(
                    &dir,
                    &format!("{tag}{i}"),
                    &data(2 * SEG + 77, 400 + 10 * tag.len() as u32 + i),
                )
            })
            .collect();
        objects.extend(put_all(&net, side, &during, (k, m)));
        files.extend(during);
    }
    repair_rounds_pass(&net, &all, 2);

    // Heal.
    for n in &nodes {
        let out = net.cli(&["deny", "--peer", &n.addr()]);
        assert!(out.status.success(), "heal {}: {}", n.name, text(&out));
    }
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));

    let pairs: Vec<(String, PathBuf)> = objects.iter().cloned().zip(files).collect();
    all_read_back(&net, &left[1], &pairs, Duration::from_secs(90));
    all_read_back(&net, &right[1], &pairs, Duration::from_secs(90));
    let r = usize::from(m) + 1;
    manifests_converge(&net, &nodes, &objects, r);
    all_healthy(&net, &nodes[0], &objects, Duration::from_secs(120));

    // Once every release the healing made due is sent, and repair ran
    // again, it all still holds.
    releases_sent(&net, &all, Duration::from_secs(90));
    repair_rounds_pass(&net, &all, 3);
    manifests_converge(&net, &nodes, &objects, r);
    all_healthy(&net, &nodes[7], &objects, Duration::from_secs(60));
    all_read_back(&net, &left[2], &pairs, Duration::from_secs(60));
    all_read_back(&net, &right[2], &pairs, Duration::from_secs(60));
    for id in &objects {
        let s = stat(&net, &nodes[3], id);
        for seg in s["segments"].as_array().unwrap() {
            let holders: BTreeSet<&str> = seg["shards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["holder"].as_str().unwrap())
                .collect();
            assert_eq!(holders.len(), usize::from(k + m), "{id}: {seg}");
        }
    }
}

/// A put by ID is acknowledged on bytes no collector may take. A named
/// put of the same bytes on the other side of a partition cannot see that
/// generation, writes a collectable one, and after the heal that newer
/// generation replaces it; once the name goes, the collector must still
/// not take the object the put by ID was acknowledged for.
#[test]
fn an_object_put_by_id_outlives_a_name_written_across_a_partition() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let nodes = crate::harness::cluster_with(
        &net,
        8,
        |i| vec![format!("dir:{}/n{i}/shards:128MiB", root.display())],
        &["--reclaim-grace-ms", "1000", "--reclaim-wait-ms", "1000"],
    );
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    let dir = root.join("files");
    let x = write(&dir, "x", &data(5 * SEG + 11, 700));
    let y = write(&dir, "y", &data(5 * SEG + 13, 701));
    let xid = put(&net, &nodes[0], &x, (2, 2))["id"]
        .as_str()
        .unwrap()
        .to_string();
    all_healthy(
        &net,
        &nodes[0],
        std::slice::from_ref(&xid),
        Duration::from_secs(60),
    );

    // The side that names x holds none of its manifest replicas.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let object: ObjectId = xid.parse().unwrap();
    let mut holds: Vec<bool> = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "every node's manifest states",
        || {
            holds = nodes
                .iter()
                .map(|n| {
                    let v = rt.block_on(manifest_versions(&net, n, &[object]))?;
                    Ok(v.first().copied().flatten().is_some())
                })
                .collect::<Result<_, String>>()?;
            Ok(())
        },
    );
    let (blind, seeing): (Vec<usize>, Vec<usize>) = (0..nodes.len()).partition(|&i| !holds[i]);
    assert!(
        blind.len() >= 4,
        "replicas on {seeing:?}: no side of 4 without one"
    );
    let blind: Vec<usize> = blind.into_iter().take(4).collect();
    let deny = |i: usize, others: &[usize]| {
        let mut args = vec!["deny".to_string(), "--peer".into(), nodes[i].addr()];
        args.extend(others.iter().map(|&o| nodes[o].id.clone()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = net.cli(&refs);
        assert!(
            out.status.success(),
            "deny on {}: {}",
            nodes[i].name,
            text(&out)
        );
    };
    let other: Vec<usize> = (0..nodes.len()).filter(|i| !blind.contains(i)).collect();
    for &i in &blind {
        deny(i, &other);
    }
    for &i in &other {
        deny(i, &blind);
    }
    let blind_addrs: Vec<String> = blind.iter().map(|&i| nodes[i].addr()).collect();
    let other_ids: Vec<&str> = other.iter().map(|&i| nodes[i].id.as_str()).collect();
    let limit = Duration::from_millis(4 * DOWN_MS + 30_000);
    wait_all_see(&net, &blind_addrs, &other_ids, "down", limit);

    // On the blind side, x and y are stored to be named, and named.
    let peer = nodes[blind[0]].addr();
    for (key, file) in [("keep/x", &x), ("keep/y", &y)] {
        let out = net.cli(&[
            "put",
            "--json",
            "--segment-size",
            &SEG.to_string(),
            "--k",
            "2",
            "--m",
            "2",
            "--name",
            key,
            "--peer",
            &peer,
            file.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "put --name {key}: {}", text(&out));
    }
    let yid = blake3::hash(&std::fs::read(&y).unwrap())
        .to_hex()
        .to_string();

    // Heal: one manifest per object again.
    for n in &nodes {
        let out = net.cli(&["deny", "--peer", &n.addr()]);
        assert!(out.status.success(), "heal {}: {}", n.name, text(&out));
    }
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    manifests_converge(&net, &nodes, std::slice::from_ref(&xid), 3);

    // Both names go; y, only ever named, is reclaimed. x was put by ID.
    for key in ["keep/x", "keep/y"] {
        let out = net.cli(&["rm", key, "--peer", &nodes[0].addr()]);
        assert!(out.status.success(), "rm {key}: {}", text(&out));
    }
    wait_until(Duration::from_secs(60), "y reclaimed", || {
        match health(&net, &nodes[1], &yid) {
            Err(e) if e.contains("no manifest") => Ok(()),
            other => Err(format!("y: {other:?}")),
        }
    });
    // The collectors took y; they have had x's references as long.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        if let Err(e) = reads_back(&net, &nodes[2], &xid, &x) {
            panic!("x, put by ID, was taken once its name across the partition went: {e}");
        }
    }
    all_healthy(&net, &nodes[3], &[xid], Duration::from_secs(60));
}
