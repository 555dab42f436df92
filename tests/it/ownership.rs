//! Shard ownership and generations (issue 10): the ways to lose an
//! acknowledged object that today's tests did not cover, each against real
//! nodes. On the code before shard ownership the first three fail: `rm` of
//! one object deleted the copies another object shared with it, a re-put
//! after `rm` was answered "existed" or later destroyed by the tombstone,
//! and a put of a degraded object changed nothing.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{addrs, cluster_with, data, wait_all_see, wait_until, Net, NodeProc};

pub(crate) const SEG: usize = 64 * 1024;

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `n` nodes with 256 MiB `dir:` containers and `extra` arguments, all
/// seeing each other alive.
pub(crate) fn nodes(net: &Net, n: usize, extra: &[&str]) -> Vec<NodeProc> {
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

pub(crate) fn put(net: &Net, peer: &NodeProc, file: &Path, km: (u16, u16)) -> Value {
    let (seg, k, m) = (SEG.to_string(), km.0.to_string(), km.1.to_string());
    let out = net.cli(&[
        "put",
        "--json",
        "--segment-size",
        &seg,
        "--k",
        &k,
        "--m",
        &m,
        "--peer",
        &peer.addr(),
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "put {}: {}",
        file.display(),
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("put --json prints one object")
}

fn rm(net: &Net, peer: &NodeProc, id: &str) {
    let out = net.cli(&["rm", id, "--peer", &peer.addr()]);
    assert!(out.status.success(), "rm {id}: {}", text(&out));
}

pub(crate) fn health(net: &Net, peer: &NodeProc, id: &str) -> Result<String, String> {
    let out = net.cli(&["stat", "--json", id, "--peer", &peer.addr()]);
    if !out.status.success() {
        return Err(text(&out));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v["health"].as_str().unwrap_or("?").to_string())
}

/// Reads `id` through `peer` and compares it with `file`.
pub(crate) fn reads_back(net: &Net, peer: &NodeProc, id: &str, file: &Path) -> Result<(), String> {
    let dest = net.root.path().join(format!("back-{id}"));
    let out = net.cli(&[
        "get",
        id,
        "--peer",
        &peer.addr(),
        "-o",
        dest.to_str().unwrap(),
    ]);
    if !out.status.success() {
        return Err(text(&out));
    }
    if std::fs::read(&dest).unwrap() != std::fs::read(file).unwrap() {
        return Err(format!("{id} read back different bytes"));
    }
    Ok(())
}

/// Waits until no node has a pending release left (every release made due
/// so far was checked and sent), then keeps checking for three repair
/// intervals that `ids` stay healthy: a removal that would destroy them
/// acts within that time.
fn releases_settle_and_objects_stay_whole(net: &Net, nodes: &[NodeProc], ids: &[&str]) {
    wait_until(Duration::from_secs(60), "pending releases sent", || {
        for n in nodes {
            let s = net.status(&n.addr())?;
            let p = s["repair"]["pending_deletes"].as_u64().unwrap_or(u64::MAX);
            if p != 0 {
                return Err(format!("{} has {p} pending releases", n.name));
            }
        }
        Ok(())
    });
    let until = Instant::now() + Duration::from_millis(3 * crate::harness::REPAIR_MS);
    while Instant::now() < until {
        for id in ids {
            assert_eq!(
                health(net, &nodes[1], id).as_deref(),
                Ok("healthy"),
                "{id} must stay whole"
            );
        }
    }
}

pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join(name);
    std::fs::write(&f, bytes).unwrap();
    f
}

#[test]
fn rm_of_one_object_keeps_the_copies_another_shares() {
    let net = Net::new();
    let nodes = nodes(&net, 6, &[]);
    let dir = net.root.path().join("files");
    // Two objects whose first segment is all zeros: every shard of that
    // stripe is the same zero shard, on every node of both stripes.
    let mut a = vec![0u8; SEG];
    a.extend(data(1000, 1));
    let mut b = vec![0u8; SEG];
    b.extend(data(1000, 2));
    // A file and its appended version: the longer one's first three
    // segments are the shorter one's.
    let c = data(3 * SEG, 3);
    let mut d = c.clone();
    d.extend(data(5000, 4));
    let files: Vec<PathBuf> = [("a", &a), ("b", &b), ("c", &c), ("d", &d)]
        .iter()
        .map(|(n, bytes)| write(&dir, n, bytes))
        .collect();
    let ids: Vec<String> = files
        .iter()
        .map(|f| {
            put(&net, &nodes[0], f, (4, 2))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in &ids {
        assert_eq!(health(&net, &nodes[2], id).as_deref(), Ok("healthy"));
    }
    // rm of a (shares its zero stripe with b) and of d (the appended
    // version, whose segments c shares).
    rm(&net, &nodes[3], &ids[0]);
    rm(&net, &nodes[4], &ids[3]);
    for (id, f) in [(&ids[1], &files[1]), (&ids[2], &files[2])] {
        reads_back(&net, &nodes[5], id, f).unwrap();
        assert_eq!(
            health(&net, &nodes[1], id).as_deref(),
            Ok("healthy"),
            "{id}"
        );
    }
    releases_settle_and_objects_stay_whole(&net, &nodes, &[&ids[1], &ids[2]]);
    for (id, f) in [(&ids[1], &files[1]), (&ids[2], &files[2])] {
        reads_back(&net, &nodes[2], id, f).unwrap();
    }
    // The removed ones are gone.
    for id in [&ids[0], &ids[3]] {
        let err = reads_back(&net, &nodes[1], id, &files[0]).unwrap_err();
        assert!(err.to_lowercase().contains("no manifest"), "{err}");
    }
}

#[test]
fn rm_then_put_again_works_at_once_and_for_good() {
    let net = Net::new();
    let mut nodes = nodes(&net, 6, &[]);
    let dir = net.root.path().join("files");
    let f = write(&dir, "scan.dcm", &data(2 * SEG + 99, 7));
    let id = put(&net, &nodes[0], &f, (4, 2))["id"]
        .as_str()
        .unwrap()
        .to_string();
    rm(&net, &nodes[1], &id);
    // Same members: the re-put is a new upload, not "existed", and no
    // tombstone of the first one removes it.
    let r = put(&net, &nodes[2], &f, (4, 2));
    assert_eq!(r["existed"], Value::Bool(false), "{r}");
    reads_back(&net, &nodes[3], &id, &f).unwrap();
    releases_settle_and_objects_stay_whole(&net, &nodes, &[&id]);
    reads_back(&net, &nodes[4], &id, &f).unwrap();

    // Again, after three new members joined (the manifest ranking changes,
    // and the new members hold no tombstone).
    rm(&net, &nodes[5], &id);
    let first = nodes[0].addr();
    let root = net.root.path().to_path_buf();
    for i in 6..9 {
        let mut n = NodeProc::init(
            &root,
            &format!("n{i}"),
            crate::harness::NodeSpec {
                site: &format!("site-{}", i % 3),
                containers: vec![format!("dir:{}/n{i}/shards:256MiB", root.display())],
                bootstrap: Some(&first),
                key: Some(&net.key),
                extra: &[],
            },
        );
        n.start();
        nodes.push(n);
    }
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    let r = put(&net, &nodes[7], &f, (4, 2));
    assert_eq!(r["existed"], Value::Bool(false), "{r}");
    releases_settle_and_objects_stay_whole(&net, &nodes, &[&id]);
    reads_back(&net, &nodes[1], &id, &f).unwrap();
    reads_back(&net, &nodes[8], &id, &f).unwrap();
}

#[test]
fn a_put_of_a_degraded_object_repairs_it() {
    let net = Net::new();
    // Repair is off, so only the put can make the object whole again.
    let mut nodes = nodes(&net, 7, &["--no-repair"]);
    let dir = net.root.path().join("files");
    let f = write(&dir, "study.bin", &data(3 * SEG, 11));
    let id = put(&net, &nodes[0], &f, (4, 2))["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Kill one holder and wait until the others see it down.
    let stat = net.cli(&["stat", "--json", &id, "--peer", &nodes[0].addr()]);
    let v: Value = serde_json::from_slice(&stat.stdout).unwrap();
    let holder = v["segments"][0]["shards"][0]["holder"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = nodes.iter().position(|n| n.id == holder).unwrap();
    let entry = (victim + 1) % nodes.len();
    nodes[victim].kill();
    let observers: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.addr())
        .collect();
    wait_all_see(
        &net,
        &observers,
        &[&holder],
        "down",
        Duration::from_secs(60),
    );
    assert_eq!(health(&net, &nodes[entry], &id).as_deref(), Ok("degraded"));
    // The same file again: written anew on live nodes, not "existed".
    let r = put(&net, &nodes[entry], &f, (4, 2));
    assert_eq!(r["existed"], Value::Bool(false), "{r}");
    assert_eq!(health(&net, &nodes[entry], &id).as_deref(), Ok("healthy"));
    reads_back(&net, &nodes[entry], &id, &f).unwrap();
    // A put of a whole object is still answered from what is stored.
    let r = put(&net, &nodes[entry], &f, (4, 2));
    assert_eq!(r["existed"], Value::Bool(true), "{r}");
}
