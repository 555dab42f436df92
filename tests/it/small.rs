//! Small objects held inline in their manifest, and the durability of
//! acknowledged writes under group commit: real nodes, killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{addrs, cluster, data, wait_all_see, wait_until, Net, NodeProc};

/// The node's default inline threshold (`inline_max_bytes`).
const INLINE_MAX: usize = 64 << 10;

fn six_nodes(net: &Net) -> Vec<NodeProc> {
    let root = net.root.path().to_path_buf();
    let nodes = cluster(net, 6, |i| {
        vec![format!("dir:{}/n{i}/shards:256MiB", root.display())]
    });
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    nodes
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join(name);
    std::fs::write(&f, bytes).unwrap();
    f
}

/// `put --json` through `peer`: the receipt, or the CLI's error.
fn put(net: &Net, peer: &str, file: &Path) -> Result<Value, String> {
    let out = net.cli(&[
        "put",
        "--json",
        "--timeout-secs",
        "30",
        "--peer",
        peer,
        file.to_str().unwrap(),
    ]);
    if !out.status.success() {
        return Err(text(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn stat(net: &Net, peer: &str, id: &str) -> Result<Value, String> {
    let out = net.cli(&["stat", "--json", "--timeout-secs", "15", id, "--peer", peer]);
    if !out.status.success() {
        return Err(text(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Reads `id` through `peer` and compares it with `file`.
fn reads_back(net: &Net, peer: &str, id: &str, file: &Path) -> Result<(), String> {
    let dest = file.with_extension("back");
    let _ = std::fs::remove_file(&dest);
    let out = net.cli(&[
        "get",
        id,
        "--timeout-secs",
        "30",
        "--peer",
        peer,
        "-o",
        dest.to_str().unwrap(),
    ]);
    if !out.status.success() {
        return Err(format!("get {id}: {}", text(&out)));
    }
    if std::fs::read(&dest).unwrap() != std::fs::read(file).unwrap() {
        return Err(format!("{id} read back different bytes"));
    }
    Ok(())
}

fn replicas(st: &Value) -> Vec<String> {
    st["inline_replicas"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_small_object_survives_m_losses() {
    let net = Net::new();
    let mut nodes = six_nodes(&net);
    let dir = net.root.path().join("files");
    let sizes = [0usize, 1, 100, 4096, 40_000, INLINE_MAX - 1, INLINE_MAX];
    let mut small: Vec<(String, PathBuf)> = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let f = write(&dir, &format!("s{i}"), &data(*size, 500 + i as u32));
        let r = put(&net, &nodes[0].addr(), &f).unwrap();
        // Inline: no segments, acknowledged with all m + 1 replicas stored.
        assert_eq!(r["segments"].as_u64(), Some(0), "{size}: {r}");
        assert_eq!(r["manifest_replicas"].as_u64(), Some(3), "{size}: {r}");
        small.push((r["id"].as_str().unwrap().to_string(), f));
    }
    // One byte above the threshold is striped as before.
    let f = write(&dir, "big", &data(INLINE_MAX + 1, 9));
    let r = put(&net, &nodes[0].addr(), &f).unwrap();
    assert!(r["segments"].as_u64().unwrap() > 0, "{r}");
    let big = (r["id"].as_str().unwrap().to_string(), f);
    let st = stat(&net, &nodes[1].addr(), &big.0).unwrap();
    assert_eq!(st["inline"], false, "{st}");

    let mut held: Vec<Vec<String>> = Vec::new();
    for (id, _) in &small {
        let st = stat(&net, &nodes[1].addr(), id).unwrap();
        assert_eq!(st["inline"], true, "{st}");
        assert_eq!(st["health"], "healthy", "{st}");
        assert!(st["segments"].as_array().unwrap().is_empty());
        let r = replicas(&st);
        assert_eq!(r.len(), 3, "m + 1 replicas: {st}");
        held.push(r);
    }
    // ls lists them.
    let out = net.cli(&["ls", "--json", "--peer", &nodes[2].addr()]);
    let ls: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (id, _) in &small {
        assert!(
            ls.as_array()
                .unwrap()
                .iter()
                .any(|o| o["id"] == id.as_str()),
            "ls misses {id}"
        );
    }

    // Kill m = 2 nodes that both hold a replica of the first object (so
    // it keeps one), then read every object through a survivor.
    let victims: Vec<usize> = held[0][..2]
        .iter()
        .map(|id| nodes.iter().position(|n| &n.id == id).unwrap())
        .collect();
    for &v in &victims {
        nodes[v].kill();
    }
    let survivors: Vec<usize> = (0..6).filter(|i| !victims.contains(i)).collect();
    let entry = nodes[survivors[0]].addr();
    for (id, f) in &small {
        reads_back(&net, &entry, id, f).unwrap();
    }
    // Every object that lost a replica is degraded, not lost.
    let victim_ids: Vec<String> = victims.iter().map(|&v| nodes[v].id.clone()).collect();
    let down: Vec<&str> = victim_ids.iter().map(String::as_str).collect();
    wait_all_see(
        &net,
        &survivors
            .iter()
            .map(|&i| nodes[i].addr())
            .collect::<Vec<_>>(),
        &down,
        "down",
        Duration::from_secs(60),
    );
    // Repair brings every object back to m + 1 replicas on live members.
    for (id, f) in &small {
        wait_until(
            Duration::from_secs(60),
            &format!("{id} back to m + 1 replicas"),
            || {
                let st = stat(&net, &entry, id)?;
                let r = replicas(&st);
                if st["health"] != "healthy" || r.len() != 3 {
                    return Err(format!("{st}"));
                }
                if r.iter().any(|n| victim_ids.contains(n)) {
                    return Err(format!("a replica on a dead node: {st}"));
                }
                Ok(())
            },
        );
        reads_back(&net, &nodes[survivors[1]].addr(), id, f).unwrap();
    }
    reads_back(&net, &entry, &big.0, &big.1).unwrap();

    // rm removes an inline object everywhere.
    let out = net.cli(&["rm", &small[3].0, "--peer", &entry]);
    assert!(out.status.success(), "rm: {}", text(&out));
    assert!(reads_back(&net, &entry, &small[3].0, &small[3].1).is_err());
    let out = net.cli(&["ls", "--json", "--peer", &nodes[survivors[2]].addr()]);
    let ls: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!ls
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == small[3].0.as_str()));
}

#[test]
fn acked_puts_survive_a_kill_of_every_node_right_after_the_ack() {
    let net = Net::new();
    let mut nodes = six_nodes(&net);
    let dir = net.root.path().join("files");
    let peers = addrs(&nodes);
    // Eight clients put small (inline) and larger (striped) objects at
    // once through different entry peers, so index flushes of concurrent
    // requests share batches. As soon as twelve puts are acknowledged,
    // every node is killed (SIGKILL), whatever is still in flight.
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 4;
    let acked: Arc<Mutex<Vec<(String, PathBuf)>>> = Arc::default();
    let started = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let acked = acked.clone();
            let started = started.clone();
            let key = net.key.clone();
            let peer = peers[c % peers.len()].clone();
            let dir = dir.clone();
            std::thread::spawn(move || {
                for j in 0..PER_CLIENT {
                    let size = if (c + j) % 3 == 0 {
                        200_000 + 1000 * c
                    } else {
                        1 + 7_000 * (c + 1) + j
                    };
                    let f = write(
                        &dir,
                        &format!("c{c}-{j}"),
                        &data(size, 1000 + (c * 10 + j) as u32),
                    );
                    started.fetch_add(1, Ordering::SeqCst);
                    let out = crate::harness::cli_with_key(
                        Some(&key),
                        &[
                            "put",
                            "--json",
                            "--timeout-secs",
                            "30",
                            "--peer",
                            &peer,
                            f.to_str().unwrap(),
                        ],
                    );
                    if !out.status.success() {
                        // Killed in flight: not acknowledged, nothing promised.
                        return;
                    }
                    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
                    let id = r["id"].as_str().unwrap().to_string();
                    acked.lock().unwrap().push((id, f));
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(120), "twelve acknowledged puts", || {
        let n = acked.lock().unwrap().len();
        if n >= 12 {
            Ok(())
        } else {
            Err(format!("{n} acknowledged"))
        }
    });
    for n in &mut nodes {
        n.kill();
    }
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 12);
    assert!(
        acked
            .iter()
            .any(|(_, f)| std::fs::metadata(f).unwrap().len() as usize <= INLINE_MAX)
            && acked
                .iter()
                .any(|(_, f)| std::fs::metadata(f).unwrap().len() as usize > INLINE_MAX),
        "both kinds of put were acknowledged"
    );
    // Restart everyone: every acknowledged object reads back.
    for n in &mut nodes {
        n.start();
    }
    let node_ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let ids: Vec<&str> = node_ids.iter().map(String::as_str).collect();
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    for (i, (id, f)) in acked.iter().enumerate() {
        reads_back(&net, &nodes[i % nodes.len()].addr(), id, f)
            .unwrap_or_else(|e| panic!("acknowledged object lost after the kill: {e}"));
        let st = stat(&net, &nodes[0].addr(), id).unwrap();
        assert_eq!(st["health"], "healthy", "{st}");
    }

    // On a quiet cluster (no other write whose flush could cover it), one
    // small put, and every node killed the moment it is acknowledged.
    let f = write(&dir, "last", &data(3000, 77));
    let r = put(&net, &nodes[1].addr(), &f).unwrap();
    for n in &mut nodes {
        n.kill();
    }
    assert_eq!(r["segments"].as_u64(), Some(0), "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    for n in &mut nodes {
        n.start();
    }
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    reads_back(&net, &nodes[2].addr(), &id, &f)
        .unwrap_or_else(|e| panic!("acknowledged small object lost after the kill: {e}"));
    let st = stat(&net, &nodes[3].addr(), &id).unwrap();
    assert_eq!(replicas(&st).len(), 3, "{st}");
}
