//! Unreferenced shard copies are collected; referenced ones never are.
//!
//! A shard stored with the low-level tool belongs to no object's manifest:
//! after the grace period the node releases it. An object stored before
//! that round and older than the grace period keeps every copy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{addrs, cluster_with, data, wait_all_see, wait_until, Net};

const GRACE_MS: u64 = 6000;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn unreferenced_copies_are_collected_and_referenced_ones_kept() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let grace = GRACE_MS.to_string();
    let nodes = cluster_with(
        &net,
        3,
        |i| {
            vec![format!(
                "dir:{}:256MiB",
                root.join(format!("n{i}")).join("shards").display()
            )]
        },
        &[
            "--gc-interval-ms",
            "1000",
            "--gc-grace-ms",
            &grace,
            "--request-timeout-ms",
            "5000",
        ],
    );
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let peers = addrs(&nodes);
    wait_all_see(&net, &peers, &ids, "alive", Duration::from_secs(60));

    // A real object, then wait until it is older than the grace period, so
    // that every later round looks at its copies.
    let file = root.join("kept.bin");
    let body = data(2 << 20, 9);
    std::fs::write(&file, &body).unwrap();
    let put = net.cli(&[
        "put",
        "--k",
        "2",
        "--m",
        "1",
        "--peer",
        &peers[0],
        file.to_str().unwrap(),
    ]);
    assert!(put.status.success(), "put: {put:?}");
    let id = String::from_utf8(put.stdout).unwrap().trim().to_string();
    let stored_at = wall_ms();
    wait_until(
        Duration::from_secs(30),
        "the object to pass the grace period",
        || {
            if wall_ms() > stored_at + GRACE_MS + 1000 {
                Ok(())
            } else {
                Err("younger than the grace period".into())
            }
        },
    );

    // A copy no manifest names, on every node.
    let blob = root.join("orphan.bin");
    std::fs::write(&blob, b"a copy no manifest names").unwrap();
    let mut orphans = Vec::new();
    for p in &peers {
        let o = net.cli(&["shard", "put", "--peer", p, blob.to_str().unwrap()]);
        assert!(o.status.success(), "shard put: {o:?}");
        orphans.push((
            p.clone(),
            String::from_utf8(o.stdout).unwrap().trim().to_string(),
        ));
    }
    for (p, shard) in &orphans {
        wait_until(
            Duration::from_secs(60),
            &format!("{p} to collect the orphan copy"),
            || {
                let o = net.cli(&["shard", "get", "--peer", p, shard, "-o", "-"]);
                if o.status.success() {
                    Err("still stored".into())
                } else {
                    Ok(())
                }
            },
        );
    }
    // The rounds that collected the orphans looked at the object too.
    let stat = net.cli(&["stat", "--json", "--peer", &peers[1], &id]);
    assert!(stat.status.success(), "stat: {stat:?}");
    let v: serde_json::Value = serde_json::from_slice(&stat.stdout).unwrap();
    assert_eq!(v["health"], "healthy", "{v}");
    let back = root.join("kept.back");
    let get = net.cli(&[
        "get",
        "--peer",
        &peers[2],
        &id,
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(get.status.success(), "get: {get:?}");
    assert_eq!(std::fs::read(&back).unwrap(), body);
    let collected = nodes
        .iter()
        .filter(|n| {
            std::fs::read_to_string(n.dir.join("node.log"))
                .unwrap_or_default()
                .contains("collected unreferenced shard copies")
        })
        .count();
    assert_eq!(collected, 3, "every node logged its collection");
}
