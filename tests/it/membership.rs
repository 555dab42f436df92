//! Discovery, gossip and the alive/suspect/down view across real processes.

use std::time::{Duration, Instant};

use crate::harness::{addrs, cluster, state_of, wait_all_see, wait_until, Net};

#[test]
fn five_nodes_converge_and_track_a_crash_and_restart() {
    let net = Net::new();
    let started = Instant::now();
    // Each node is given only the first node's address.
    // Node 3 keeps its shards in a directory: they must survive its crash.
    let root = net.root.path().to_path_buf();
    let mut nodes = cluster(&net, 5, |i| {
        if i == 3 {
            vec![format!(
                "dir:{}/n3/shards:{}MiB",
                root.display(),
                64 * (i + 1)
            )]
        } else {
            vec![format!("mem:{}MiB", 64 * (i + 1))]
        }
    });
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_all_see(
        &net,
        &addrs(&nodes),
        &id_refs,
        "alive",
        Duration::from_secs(60),
    );
    println!(
        "figure: five nodes converged {:.2}s after the first started",
        started.elapsed().as_secs_f64()
    );

    // Every view carries capacity and addresses.
    let s = net.status(&nodes[2].addr()).unwrap();
    let m = crate::harness::member(&s, &ids[4]).unwrap();
    assert_eq!(m["capacity_bytes"].as_u64(), Some((5 * 64) << 20));
    assert!(m["free_bytes"].as_u64().unwrap() <= m["capacity_bytes"].as_u64().unwrap());
    assert!(!m["addrs"].as_array().unwrap().is_empty());
    assert_eq!(m["site"].as_str(), Some("site-1"));

    // Idle memory of one node, for the closing note.
    if let Some(pid) = nodes[1].pid() {
        if let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(line) = st.lines().find(|l| l.starts_with("VmRSS")) {
                println!("figure: idle node {line}");
            }
        }
    }

    // A shard on node 3 must survive its crash and restart.
    let shard_file = net.root.path().join("shard.bin");
    std::fs::write(&shard_file, b"survives a restart".repeat(100)).unwrap();
    let out = net.cli(&[
        "shard",
        "put",
        shard_file.to_str().unwrap(),
        "--peer",
        &nodes[3].addr(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shard_id = String::from_utf8_lossy(&out.stdout).trim().to_string();

    nodes[3].kill();
    let others = addrs(
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, n)| n),
    );
    wait_all_see(
        &net,
        &others,
        &[&ids[3]],
        "suspect",
        Duration::from_secs(30),
    );
    wait_all_see(&net, &others, &[&ids[3]], "down", Duration::from_secs(30));

    nodes[3].start();
    wait_all_see(&net, &others, &[&ids[3]], "alive", Duration::from_secs(30));
    let s = net.status(&nodes[3].addr()).unwrap();
    assert_eq!(
        s["node"].as_str(),
        Some(ids[3].as_str()),
        "restart keeps the identity"
    );
    // Its own view sees everyone alive again.
    wait_until(
        Duration::from_secs(30),
        "the restarted node to see all",
        || {
            let s = net.status(&nodes[3].addr())?;
            match id_refs
                .iter()
                .find(|id| state_of(&s, id).as_deref() != Some("alive"))
            {
                Some(id) => Err(format!("{id} not alive")),
                None => Ok(()),
            }
        },
    );
    // The shard written before the crash is still there and still verifies.
    let out = net.cli(&["shard", "get", &shard_id, "--peer", &nodes[3].addr()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, std::fs::read(&shard_file).unwrap());
}

/// A node started before its bootstrap peer joins as soon as that peer
/// listens, not a Kademlia re-bootstrap later (a minute by default): it
/// redials its bootstrap peers while it has no connection. Before the
/// redial, B stayed alone for the whole minute.
#[test]
fn a_node_started_before_its_bootstrap_peer_joins_when_it_comes_up() {
    use crate::harness::{NodeProc, NodeSpec};
    let net = Net::new();
    let mut a = NodeProc::init(
        net.root.path(),
        "a",
        NodeSpec {
            site: "site-a",
            containers: vec!["mem:64MiB".into()],
            bootstrap: None,
            key: Some(&net.key),
            extra: &[],
        },
    );
    let mut b = NodeProc::init(
        net.root.path(),
        "b",
        NodeSpec {
            site: "site-b",
            containers: vec!["mem:64MiB".into()],
            bootstrap: Some(&a.addr()),
            key: Some(&net.key),
            extra: &[],
        },
    );
    // B first: its only bootstrap peer is not there yet.
    b.start();
    let s = net.status(&b.addr()).unwrap();
    assert_eq!(state_of(&s, &a.id), None, "b cannot know a yet");
    a.start();
    let started = Instant::now();
    wait_all_see(
        &net,
        &[a.addr(), b.addr()],
        &[a.id.as_str(), b.id.as_str()],
        "alive",
        Duration::from_secs(20),
    );
    println!(
        "figure: the early node joined {:.2}s after its bootstrap peer started",
        started.elapsed().as_secs_f64()
    );
}
