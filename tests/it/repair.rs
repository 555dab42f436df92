//! Self-healing with no command from anyone: repair after node loss, a
//! repairer that dies mid-way, scrubbing, and removal with a holder down.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    addrs, cluster_with, data, find_file, wait_all_see, wait_until, Net, NodeProc,
};

const SEG: usize = 64 * 1024;

fn nodes(net: &Net, n: usize, extra: &[&str]) -> Vec<NodeProc> {
    let root = net.root.path().to_path_buf();
    let nodes = cluster_with(
        net,
        n,
        |i| vec![format!("dir:{}/n{i}/shards:256MiB", root.display())],
        extra,
    );
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    nodes
}

/// Stores `count` objects through `entry`; returns (id, path) pairs.
fn store(net: &Net, entry: &NodeProc, count: usize, size: usize) -> Vec<(String, PathBuf)> {
    let dir = net.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let seg = SEG.to_string();
    (0..count)
        .map(|i| {
            let f = dir.join(format!("obj{i}.bin"));
            std::fs::write(&f, data(size + i * 37, i as u32 + 1)).unwrap();
            let out = net.cli(&[
                "put",
                "--segment-size",
                &seg,
                "--peer",
                &entry.addr(),
                f.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "put: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (String::from_utf8_lossy(&out.stdout).trim().to_string(), f)
        })
        .collect()
}

fn stat(net: &Net, peer: &NodeProc, id: &str) -> Result<Value, String> {
    let out = net.cli(&[
        "stat",
        "--json",
        "--timeout-secs",
        "20",
        id,
        "--peer",
        &peer.addr(),
    ]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn wait_all_healthy(net: &Net, peer: &NodeProc, objects: &[(String, PathBuf)], limit: Duration) {
    wait_until(limit, "every object to be healthy again", || {
        for (id, _) in objects {
            let s = stat(net, peer, id)?;
            if s["health"] != "healthy" {
                return Err(format!("{id} is {}", s["health"]));
            }
        }
        Ok(())
    });
}

fn read_back(net: &Net, peer: &NodeProc, objects: &[(String, PathBuf)]) {
    let dest = net.root.path().join("back.bin");
    for (id, f) in objects {
        let out = net.cli(&[
            "get",
            id,
            "--peer",
            &peer.addr(),
            "-o",
            dest.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "get {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(f).unwrap(),
            "{id}"
        );
    }
}

fn status(net: &Net, n: &NodeProc) -> Option<Value> {
    net.status(&n.addr()).ok()
}

#[test]
fn lost_nodes_are_repaired_without_a_command() {
    let net = Net::new();
    let mut nodes = nodes(&net, 8, &[]);
    let objects = store(&net, &nodes[0], 50, 100_000);
    nodes[6].kill();
    nodes[7].kill();
    // No command: the responsible nodes notice the loss and rebuild.
    wait_all_healthy(&net, &nodes[1], &objects, Duration::from_secs(180));
    let repaired: u64 = nodes[..6]
        .iter()
        .filter_map(|n| status(&net, n))
        .map(|s| s["repair"]["shards_repaired"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        repaired > 0,
        "objects are healthy but nobody rebuilt anything"
    );
    println!("figure: {repaired} shards rebuilt after losing 2 of 8 nodes");
    // Two more losses would lose data without the repair above.
    nodes[4].kill();
    nodes[5].kill();
    let survivors = addrs(&nodes[..4]);
    let dead: Vec<&str> = nodes[4..6].iter().map(|n| n.id.as_str()).collect();
    wait_all_see(&net, &survivors, &dead, "suspect", Duration::from_secs(30));
    read_back(&net, &nodes[2], &objects);
}

#[test]
fn a_repairer_that_dies_is_replaced() {
    let net = Net::new();
    // Slow repair (256 KiB/s) so that it is caught in the middle.
    let mut nodes = nodes(&net, 8, &["--repair-rate-bytes-per-sec", "262144"]);
    let objects = store(&net, &nodes[0], 12, 300_000);
    nodes[7].kill();
    // The event: some node has started rebuilding.
    let repairer = wait_until(
        Duration::from_secs(120),
        "a node to start repairing",
        || {
            for (i, n) in nodes[..7].iter().enumerate() {
                if let Some(s) = status(&net, n) {
                    if s["repair"]["shards_repaired"].as_u64().unwrap_or(0) > 0 {
                        return Ok(i);
                    }
                }
            }
            Err("no repair yet".into())
        },
    );
    let still_degraded = objects
        .iter()
        .filter(|(id, _)| {
            stat(&net, &nodes[(repairer + 1) % 7], id)
                .map(|s| s["health"] != "healthy")
                .unwrap_or(true)
        })
        .count();
    assert!(
        still_degraded > 0,
        "repair finished before the repairer could be killed; slow it down"
    );
    nodes[repairer].kill();
    let observer = &nodes[(repairer + 1) % 7];
    wait_all_healthy(&net, observer, &objects, Duration::from_secs(300));
    read_back(&net, observer, &objects);
}

#[test]
fn scrub_finds_corruption_and_rm_reaches_a_node_that_was_down() {
    let net = Net::new();
    let mut nodes = nodes(&net, 6, &[]);
    let objects = store(&net, &nodes[0], 4, 3 * SEG);

    // Corrupt two shards of object 0 on their holders' disks.
    let st = stat(&net, &nodes[0], &objects[0].0).unwrap();
    let mut victims = Vec::new();
    for seg in 0..2 {
        let sh = &st["segments"][seg]["shards"][seg + 1];
        let holder = nodes
            .iter()
            .position(|n| n.id == sh["holder"].as_str().unwrap())
            .unwrap();
        let path = find_file(&nodes[holder].dir, sh["id"].as_str().unwrap()).unwrap();
        let mut b = std::fs::read(&path).unwrap();
        b[3] ^= 0xa5;
        std::fs::write(&path, b).unwrap();
        victims.push(holder);
    }
    let mut corrupt = 0;
    for &h in &victims {
        let out = net.cli(&["scrub", "--json", "--peer", &nodes[h].addr()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        corrupt += v["corrupt"].as_u64().unwrap();
    }
    assert_eq!(corrupt, 2, "scrub must find both corrupt shards");
    // Reads stay correct while the rebuild runs.
    read_back(&net, &nodes[3], &objects[..1]);
    wait_all_healthy(&net, &nodes[1], &objects, Duration::from_secs(120));
    read_back(&net, &nodes[2], &objects);

    // rm with one holder down: after it returns, nothing of the object remains.
    let (id, _) = &objects[1];
    let st = stat(&net, &nodes[0], id).unwrap();
    let shard_ids: HashSet<String> = st["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["shards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].as_str().unwrap().to_string())
        })
        .collect();
    let down = nodes
        .iter()
        .position(|n| n.id == st["segments"][0]["shards"][0]["holder"].as_str().unwrap())
        .unwrap();
    let entry = (down + 1) % nodes.len();
    // What the cluster stores before the rm, and what the rm must free.
    let before = used_space(&net, &nodes).unwrap();
    let removed_bytes: u64 = shard_ids
        .iter()
        .map(|s| {
            let holder = nodes.iter().find_map(|n| find_file(&n.dir, s)).unwrap();
            std::fs::metadata(holder).unwrap().len()
        })
        .sum();
    nodes[down].kill();
    wait_all_see(
        &net,
        &addrs(
            nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != down)
                .map(|(_, n)| n),
        ),
        &[&nodes[down].id],
        "down",
        Duration::from_secs(30),
    );
    let out = net.cli(&["rm", id, "--peer", &nodes[entry].addr()]);
    assert!(
        out.status.success(),
        "rm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    nodes[down].start();
    wait_until(
        Duration::from_secs(60),
        "the returning node to drop the removed object's shards",
        || {
            for n in &nodes {
                for s in &shard_ids {
                    if find_file(&n.dir, s).is_some() {
                        return Err(format!("{} still holds {}", n.name, &s[..8]));
                    }
                }
            }
            Ok(())
        },
    );
    // And the space is back: every container's accounting, as `status`
    // reports it, dropped by exactly the removed shards.
    let want = UsedSpace {
        bytes: before.bytes - removed_bytes,
        shards: before.shards - shard_ids.len() as u64,
    };
    wait_until(
        Duration::from_secs(60),
        "the removed object's space to be free again",
        || match used_space(&net, &nodes)? {
            now if now == want => Ok(()),
            now => Err(format!(
                "{now:?} used, want {want:?} ({before:?} before the rm of {removed_bytes} bytes)"
            )),
        },
    );
    let out = net.cli(&["get", id, "--peer", &nodes[entry].addr(), "-o", "/dev/null"]);
    assert!(!out.status.success(), "a removed object is still readable");
}

/// Container bytes in use (capacity - free) and shards stored, summed over
/// `nodes` from each one's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UsedSpace {
    bytes: u64,
    shards: u64,
}

fn used_space(net: &Net, nodes: &[NodeProc]) -> Result<UsedSpace, String> {
    let mut used = UsedSpace {
        bytes: 0,
        shards: 0,
    };
    for n in nodes {
        let s = net.status(&n.addr())?;
        for c in s["containers"].as_array().ok_or("no containers")? {
            let cap = c["capacity_bytes"].as_u64().ok_or("no capacity")?;
            let free = c["free_bytes"].as_u64().ok_or("no free bytes")?;
            used.bytes += cap - free;
        }
        used.shards += s["shards_stored"].as_u64().ok_or("no shards_stored")?;
    }
    Ok(used)
}

/// (max - min) and max/min of the members' fill fractions, as one node sees them.
fn fill_spread(net: &Net, observer: &NodeProc) -> (f64, f64) {
    let s = net.status(&observer.addr()).unwrap();
    let fills: Vec<f64> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let cap = m["capacity_bytes"].as_f64().unwrap();
            1.0 - m["free_bytes"].as_f64().unwrap() / cap
        })
        .collect();
    let max = fills.iter().cloned().fold(0.0, f64::max);
    let min = fills.iter().cloned().fold(1.0, f64::min);
    (max - min, if min > 0.0 { max / min } else { f64::INFINITY })
}

#[test]
fn a_joining_node_receives_shards_and_fill_evens_out() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let mut nodes = cluster_with(
        &net,
        8,
        |i| vec![format!("dir:{}/n{i}/shards:16MiB", root.display())],
        &[],
    );
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_all_see(
        &net,
        &addrs(&nodes),
        &id_refs,
        "alive",
        Duration::from_secs(60),
    );
    let objects = store(&net, &nodes[0], 30, 200_000);
    let first = nodes[0].addr();
    let mut joiner = NodeProc::init(
        net.root.path(),
        "n8",
        crate::harness::NodeSpec {
            site: "site-new",
            containers: vec![format!("dir:{}/n8/shards:16MiB", root.display())],
            bootstrap: Some(&first),
            key: Some(&net.key),
            extra: &[],
        },
    );
    joiner.start();
    wait_all_see(
        &net,
        &addrs(&nodes),
        &[&joiner.id],
        "alive",
        Duration::from_secs(30),
    );
    let (before_diff, _) = fill_spread(&net, &nodes[0]);
    // While shards move, no object may ever drop below k + m.
    let moved = wait_until(
        Duration::from_secs(120),
        "the new node to receive shards",
        || {
            for (id, _) in objects.iter().step_by(5) {
                let s = stat(&net, &nodes[1], id)?;
                assert_eq!(
                    s["health"], "healthy",
                    "{id} dropped below k + m during the move"
                );
            }
            let s = net.status(&joiner.addr())?;
            match s["shards_stored"].as_u64() {
                Some(n) if n >= 20 => Ok(n),
                n => Err(format!("the new node holds {n:?} shards")),
            }
        },
    );
    // Let the moves settle: two polls a few rounds apart with no change.
    let total_moved = |nodes: &[NodeProc]| -> u64 {
        nodes
            .iter()
            .filter_map(|n| net.status(&n.addr()).ok())
            .map(|s| s["repair"]["shards_moved"].as_u64().unwrap_or(0))
            .sum()
    };
    let mut last = total_moved(&nodes);
    wait_until(Duration::from_secs(60), "rebalancing to settle", || {
        std::thread::sleep(Duration::from_millis(2500));
        let now = total_moved(&nodes);
        if now == last {
            Ok(())
        } else {
            last = now;
            Err(format!("{now} moved so far"))
        }
    });
    for (id, _) in &objects {
        assert_eq!(stat(&net, &nodes[1], id).unwrap()["health"], "healthy");
    }
    read_back(&net, &joiner, &objects[..3]);
    let (after_diff, after_ratio) = fill_spread(&net, &nodes[0]);
    println!(
        "figure: join moved {last} shards; new node holds {moved}+; fill spread (max-min) {before_diff:.4} -> {after_diff:.4}, max/min after {after_ratio:.2}"
    );
    assert!(
        after_diff < before_diff,
        "the spread of fill fractions did not shrink"
    );
    nodes.push(joiner);
}
