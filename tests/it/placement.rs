//! Placement under a join: two empty nodes join a filled six-node cluster,
//! and the bytes the live rebalancer moves are compared with the ideal
//! (the joiners' fair share of the stored bytes by capacity).

use std::time::Duration;

use crate::harness::{
    addrs, cluster_with, data, wait_all_see, wait_until, Net, NodeProc, NodeSpec,
};

/// Every object is `SEGMENTS` segments of `SEG` bytes, coded 4 + 2, so every
/// shard is `SEG / 4` bytes and a count of moved shards is a count of bytes.
const SEG: usize = 64 * 1024;
const SEGMENTS: usize = 4;
const SHARD_BYTES: u64 = (SEG / 4) as u64;
const OBJECTS: usize = 24;
const CAPACITY: &str = "12MiB";
const CAPACITY_BYTES: u64 = 12 << 20;

/// (used bytes, shards moved so far) of one node, from its status.
fn used_and_moved(net: &Net, n: &NodeProc) -> Result<(u64, u64), String> {
    let s = net.status(&n.addr())?;
    let mut used = 0;
    for c in s["containers"].as_array().ok_or("no containers")? {
        let cap = c["capacity_bytes"].as_u64().ok_or("no capacity")?;
        let free = c["free_bytes"].as_u64().ok_or("no free bytes")?;
        used += cap - free;
    }
    let moved = s["repair"]["shards_moved"]
        .as_u64()
        .ok_or("no shards_moved")?;
    Ok((used, moved))
}

fn health(net: &Net, peer: &NodeProc, id: &str) -> Result<String, String> {
    let out = net.cli(&["stat", "--json", id, "--peer", &peer.addr()]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v["health"].as_str().unwrap_or("?").to_string())
}

#[test]
fn two_joiners_receive_about_their_share_and_no_more() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let container = |name: &str| format!("dir:{}/{name}/shards:{CAPACITY}", root.display());
    let mut nodes = cluster_with(&net, 6, |i| vec![container(&format!("n{i}"))], &[]);
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_all_see(
        &net,
        &addrs(&nodes),
        &id_refs,
        "alive",
        Duration::from_secs(60),
    );

    // Fill: 24 objects of 256 KiB, 4 + 2 over six nodes, in one put.
    let dir = root.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<String> = (0..OBJECTS)
        .map(|i| {
            let f = dir.join(format!("obj{i}.bin"));
            std::fs::write(&f, data(SEG * SEGMENTS, 1000 + i as u32)).unwrap();
            f.display().to_string()
        })
        .collect();
    let seg = SEG.to_string();
    let mut args = vec!["put", "--segment-size", &seg, "--peer"];
    let entry = nodes[0].addr();
    args.push(&entry);
    args.extend(files.iter().map(String::as_str));
    let out = net.cli(&args);
    assert!(
        out.status.success(),
        "put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let object_ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(object_ids.len(), OBJECTS, "{object_ids:?}");
    let stored: u64 = nodes
        .iter()
        .map(|n| used_and_moved(&net, n).unwrap().0)
        .sum();
    let want_stored = (OBJECTS * SEGMENTS * 6) as u64 * SHARD_BYTES;
    assert_eq!(stored, want_stored, "stored bytes before the join");
    let moved_before: u64 = nodes
        .iter()
        .map(|n| used_and_moved(&net, n).unwrap().1)
        .sum();

    // Two empty nodes of the same capacity join.
    let first = nodes[0].addr();
    let mut joiners: Vec<NodeProc> = (0..2)
        .map(|j| {
            let name = format!("j{j}");
            let mut p = NodeProc::init(
                &root,
                &name,
                NodeSpec {
                    site: &format!("site-{j}"),
                    containers: vec![container(&name)],
                    bootstrap: Some(&first),
                    key: Some(&net.key),
                    extra: &[],
                },
            );
            p.start();
            p
        })
        .collect();
    let joiner_ids: Vec<&str> = joiners.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(
        &net,
        &addrs(&nodes),
        &joiner_ids,
        "alive",
        Duration::from_secs(30),
    );

    // Moves settle: the total moved stays the same over three polls that
    // are two repair rounds apart, once the joiners hold something.
    let all: Vec<&NodeProc> = nodes.iter().chain(&joiners).collect();
    let total_moved = || -> Result<u64, String> {
        let mut t = 0;
        for n in &all {
            t += used_and_moved(&net, n)?.1;
        }
        Ok(t)
    };
    let mut last = (u64::MAX, 0);
    let moved_shards = wait_until(Duration::from_secs(120), "rebalancing to settle", || {
        std::thread::sleep(Duration::from_millis(2 * crate::harness::REPAIR_MS));
        let now = total_moved()?;
        let joined: u64 = joiners
            .iter()
            .map(|n| used_and_moved(&net, n).map(|x| x.0))
            .sum::<Result<u64, String>>()?;
        if joined == 0 {
            return Err("the joiners hold nothing yet".into());
        }
        if now == last.0 {
            last.1 += 1;
        } else {
            last = (now, 0);
        }
        if last.1 >= 2 {
            Ok(now - moved_before)
        } else {
            Err(format!("{now} moved so far"))
        }
    });

    let moved_bytes = moved_shards * SHARD_BYTES;
    let joined_bytes: u64 = joiners
        .iter()
        .map(|n| used_and_moved(&net, n).unwrap().0)
        .sum();
    let stored_after: u64 = all.iter().map(|n| used_and_moved(&net, n).unwrap().0).sum();
    // The joiners' fair share by capacity: 2 of 8 equal nodes.
    let ideal = stored as f64 * (2 * CAPACITY_BYTES) as f64 / (8 * CAPACITY_BYTES) as f64;
    let ratio = moved_bytes as f64 / ideal;
    println!(
        "figure: join of 2 empty nodes to 6 holding {stored} bytes: moved {moved_bytes} bytes \
         ({moved_shards} shards), ideal {ideal:.0}, ratio {ratio:.3}; the joiners hold \
         {joined_bytes} ({:.3} of the ideal)",
        joined_bytes as f64 / ideal
    );

    // Nothing lost or duplicated for good: every object whole, the bytes
    // stored the same once the moved copies' old holders released them.
    for id in &object_ids {
        assert_eq!(health(&net, &nodes[1], id).unwrap(), "healthy", "{id}");
    }
    wait_until(Duration::from_secs(60), "old copies to be released", || {
        let now: u64 = all
            .iter()
            .map(|n| used_and_moved(&net, n).map(|x| x.0))
            .sum::<Result<u64, String>>()?;
        if now == want_stored {
            Ok(())
        } else {
            Err(format!(
                "{now} bytes stored, want {want_stored} (was {stored_after})"
            ))
        }
    });
    let back = root.join("back.bin");
    for (id, f) in object_ids.iter().zip(&files).take(3) {
        let out = net.cli(&[
            "get",
            id,
            "--peer",
            &joiners[0].addr(),
            "-o",
            back.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "get {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&back).unwrap(),
            std::fs::read(f).unwrap(),
            "{id}"
        );
    }

    // The bound. The rebalancer moves a shard only from a holder outside
    // the stripe's placement by capacity to a member inside it
    // (`rebalance_moves`), and never moves it again, so however late fills
    // are announced, a stripe moves at most as many shards as joiners
    // entered its placement. Here every old node holds a shard of every
    // stripe, so those are the only moves, and their expected number is
    // the ideal (2 of 8 equal nodes: 1.5 of each stripe's 6 shards); over
    // 96 stripes the count varies by about 4 % (binomial), so 1.25x is
    // three standard deviations and more. The fill margin can only stop
    // moves early: at 10 % it stops the joiners at 0.92 of their share at
    // the earliest, hence the lower bound of 0.75. Before this rule the
    // rebalancer chased the fill-weighted ranking and shards wandered
    // between members (over 7,000 moves of 576 shards in two minutes).
    assert!(
        ratio <= 1.25,
        "moved {moved_bytes} bytes, {ratio:.3}x the ideal {ideal:.0}"
    );
    // And the joiners do receive their share (up to the margin).
    assert!(
        joined_bytes as f64 >= 0.75 * ideal,
        "the joiners hold {joined_bytes} bytes of an ideal {ideal:.0}"
    );
    nodes.append(&mut joiners);
}
