//! The data path through real nodes: put, get, stat, rm, ls of erasure-coded
//! objects, with nodes killed and shards corrupted.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{addrs, cluster, data, find_file, wait_all_see, wait_until, Net, NodeProc};

/// Segment size used by these tests: small, so several segments are cheap.
const SEG: usize = 64 * 1024;
/// Shard size of a full segment with k = 4.
const SHARD: usize = SEG / 4;

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

fn put(net: &Net, peer: &NodeProc, file: &Path) -> Value {
    let seg = SEG.to_string();
    let out = net.cli(&[
        "put",
        "--json",
        "--segment-size",
        &seg,
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

fn get_to(net: &Net, peer: &NodeProc, id: &str, dest: &Path) -> Output {
    net.cli(&[
        "get",
        id,
        "--peer",
        &peer.addr(),
        "-o",
        dest.to_str().unwrap(),
    ])
}

fn stat(net: &Net, peer: &NodeProc, id: &str) -> Value {
    let out = net.cli(&["stat", "--json", id, "--peer", &peer.addr()]);
    assert!(out.status.success(), "stat: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sizes() -> Vec<usize> {
    vec![
        0,
        1,
        SHARD - 1,
        SHARD,
        SHARD + 1,
        SEG - 1,
        SEG,
        SEG + 1,
        3 * SEG + 17,
        3 << 20,
    ]
}

#[test]
fn objects_survive_m_losses_and_fail_clearly_beyond() {
    let net = Net::new();
    let mut nodes = six_nodes(&net);
    let dir = net.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let mut stored: Vec<(String, PathBuf)> = Vec::new();
    for (i, size) in sizes().into_iter().enumerate() {
        let f = dir.join(format!("f{i}-{size}.bin"));
        std::fs::write(&f, data(size, i as u32)).unwrap();
        let r = put(&net, &nodes[0], &f);
        let id = r["id"].as_str().unwrap().to_string();
        // The ID is the file's BLAKE3, exactly what b3sum prints.
        assert_eq!(
            id,
            blake3::hash(&std::fs::read(&f).unwrap())
                .to_hex()
                .to_string()
        );
        assert_eq!(r["size"].as_u64(), Some(size as u64));
        assert_eq!((r["k"].as_u64(), r["m"].as_u64()), (Some(4), Some(2)));
        stored.push((id, f));
    }
    // Put through node 0, get through node 3: byte-identical.
    for (id, f) in &stored {
        let dest = net.root.path().join("out.bin");
        let out = get_to(&net, &nodes[3], id, &dest);
        assert!(out.status.success(), "get {id}: {}", text(&out));
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(f).unwrap(),
            "{}",
            f.display()
        );
    }
    // stat: geometry, one holder per shard, all distinct within a stripe, healthy.
    let st = stat(&net, &nodes[1], &stored[8].0);
    assert_eq!(st["health"], "healthy");
    assert_eq!(st["segments"].as_array().unwrap().len(), 4);
    for seg in st["segments"].as_array().unwrap() {
        let holders: std::collections::HashSet<_> = seg["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["holder"].as_str().unwrap())
            .collect();
        assert_eq!(holders.len(), 6, "six shards on six distinct nodes");
    }
    // ls lists them all.
    let out = net.cli(&["ls", "--json", "--peer", &nodes[2].addr()]);
    let ls: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (id, _) in &stored {
        assert!(
            ls.as_array()
                .unwrap()
                .iter()
                .any(|o| o["id"] == id.as_str()),
            "ls misses {id}"
        );
    }

    // Two nodes down: everything still reads, through a survivor.
    nodes[4].kill();
    nodes[5].kill();
    let survivors = addrs(&nodes[..4]);
    wait_all_see(
        &net,
        &survivors,
        &[&nodes[4].id, &nodes[5].id],
        "suspect",
        Duration::from_secs(30),
    );
    for (id, f) in &stored {
        let dest = net.root.path().join("out2.bin");
        let out = get_to(&net, &nodes[1], id, &dest);
        assert!(
            out.status.success(),
            "get {id} with two nodes down: {}",
            text(&out)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(f).unwrap());
    }
    let st = stat(&net, &nodes[1], &stored[8].0);
    assert_eq!(st["health"], "degraded");

    // A third node down: a multi-segment object can no longer be read, and
    // the error says which segment and how many shards were found. (Small
    // objects live inline on their m + 1 manifest replicas and stay
    // readable while one of those is up: not checked here.)
    nodes[3].kill();
    let dest = net.root.path().join("out3.bin");
    let mut named_segment = 0;
    for (id, f) in stored
        .iter()
        .filter(|(_, f)| std::fs::metadata(f).unwrap().len() > 64 * 1024)
    {
        let out = get_to(&net, &nodes[0], id, &dest);
        assert!(
            !out.status.success(),
            "get {id} succeeded with three of six nodes down ({})",
            f.display()
        );
        let msg = text(&out);
        assert!(msg.starts_with("error:"), "{msg}");
        assert!(
            !dest.exists(),
            "a failed get must not leave the output file"
        );
        if msg.contains("segment") && msg.contains("found 3 of the 4 shards needed") {
            named_segment += 1;
        } else {
            // Only possible when all three manifest replicas were on the dead nodes.
            assert!(msg.contains("no manifest"), "{msg}");
        }
    }
    assert!(named_segment > 0, "no get named the unreadable segment");
}

#[test]
fn corruption_bad_input_and_a_crash_during_put() {
    let net = Net::new();
    let mut nodes = six_nodes(&net);
    let f = net.root.path().join("scan.dcm");
    let original = data(5 * SEG + 123, 42);
    std::fs::write(&f, &original).unwrap();
    let id = put(&net, &nodes[1], &f)["id"].as_str().unwrap().to_string();

    // Corrupt data shard 0 of segment 2 on its holder's disk.
    let st = stat(&net, &nodes[0], &id);
    let victim = &st["segments"][2]["shards"][0];
    let (shard, holder) = (
        victim["id"].as_str().unwrap(),
        victim["holder"].as_str().unwrap(),
    );
    let holder_node = nodes.iter().find(|n| n.id == holder).unwrap();
    let path = find_file(&holder_node.dir, shard).expect("the shard file");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[7] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let dest = net.root.path().join("back.dcm");
    let out = get_to(&net, &nodes[2], &id, &dest);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        original,
        "the corrupt shard was skipped"
    );
    // The get marked the copy corrupt on its holder, so stat reports it,
    // unless a repair round (every second here) came first and rebuilt
    // it: then the copy on disk must hash to its ID again.
    let st = stat(&net, &nodes[0], &id);
    if st["segments"][2]["shards"][0]["ok"] == false {
        assert_eq!(st["health"], "degraded", "{st}");
    } else {
        assert_eq!(st["health"], "healthy", "{st}");
        let path = find_file(&holder_node.dir, shard).expect("the rebuilt shard file");
        assert_eq!(
            blake3::hash(&std::fs::read(&path).unwrap())
                .to_hex()
                .as_str(),
            shard,
            "stat called the corrupt shard ok but it was not rebuilt"
        );
    }

    // Clear errors and non-zero exits for bad input.
    let peer = nodes[0].addr();
    let unknown = blake3::hash(b"never stored").to_hex().to_string();
    for (args, expect) in [
        (
            vec!["get", unknown.as_str(), "--peer", &peer],
            "no manifest",
        ),
        (
            vec!["get", "not-an-id", "--peer", &peer],
            "not an object ID",
        ),
        (vec!["stat", "abc", "--peer", &peer], "not an object ID"),
        (
            vec!["put", net.root.path().to_str().unwrap(), "--peer", &peer],
            "is a directory",
        ),
        (
            vec!["put", "/nonexistent/file", "--peer", &peer],
            "cannot read",
        ),
        (
            vec![
                "put",
                "--k",
                "5",
                "--m",
                "2",
                f.to_str().unwrap(),
                "--peer",
                &peer,
            ],
            "needs 7 distinct live nodes",
        ),
        (
            vec![
                "get",
                &id,
                "--timeout-secs",
                "3",
                "--peer",
                "/ip4/127.0.0.1/tcp/1",
            ],
            "cannot reach",
        ),
    ] {
        let out = net.cli(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(
            msg.contains(expect),
            "{args:?}: expected {expect:?} in {msg}"
        );
        assert_eq!(
            msg.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{msg}"
        );
    }

    // A target node killed in the middle of a put: the put completes or
    // fails cleanly, and never acknowledges an unreadable object.
    let big = net.root.path().join("raster.tif");
    let big_data = data(160 << 20, 7);
    std::fs::write(&big, &big_data).unwrap();
    let seg = SEG.to_string();
    let before = shards_on(&net, &nodes[5]);
    let mut child = std::process::Command::new(crate::harness::bin())
        .args([
            "put",
            "--json",
            "--segment-size",
            &seg,
            "--peer",
            &nodes[0].addr(),
        ])
        .arg(&big)
        .env("DYNOSTORE_NETWORK_KEY", &net.key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the event: node 5 has received shards of it.
    wait_until(
        Duration::from_secs(60),
        "node 5 to receive shards of the big put",
        || {
            let now = shards_on(&net, &nodes[5]);
            if now > before + 10 {
                Ok(())
            } else {
                Err(format!("{now} shards"))
            }
        },
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the put ended before the kill: make it bigger"
    );
    nodes[5].kill();
    let out = child.wait_with_output().unwrap();
    let big_id = blake3::hash(&big_data).to_hex().to_string();
    let dest = net.root.path().join("raster.back");
    if out.status.success() {
        let back = get_to(&net, &nodes[2], &big_id, &dest);
        assert!(
            back.status.success(),
            "acknowledged but unreadable: {}",
            text(&back)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), big_data);
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.starts_with("error:"), "{msg}");
        let back = get_to(&net, &nodes[2], &big_id, &dest);
        assert!(
            !back.status.success(),
            "a failed put left a readable object"
        );
        assert!(
            text(&back).contains("no manifest"),
            "a failed put left a manifest: {}",
            text(&back)
        );
    }
}

fn shards_on(net: &Net, node: &NodeProc) -> u64 {
    net.status(&node.addr())
        .ok()
        .and_then(|s| s["shards_stored"].as_u64())
        .unwrap_or(0)
}
