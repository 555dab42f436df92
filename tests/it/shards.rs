//! Shard storage through real nodes: restart, corruption, quotas, S3.

use std::path::Path;
use std::time::Duration;

use crate::harness::{find_file, member, wait_until, Net, NodeProc, NodeSpec};

fn put(net: &Net, node: &NodeProc, file: &Path) -> Result<String, String> {
    let out = net.cli(&[
        "shard",
        "put",
        file.to_str().unwrap(),
        "--peer",
        &node.addr(),
    ]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn get(net: &Net, node: &NodeProc, id: &str) -> Result<Vec<u8>, String> {
    let out = net.cli(&["shard", "get", id, "--peer", &node.addr()]);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn single(net: &Net, name: &str, container: String) -> NodeProc {
    let mut n = NodeProc::init(
        net.root.path(),
        name,
        NodeSpec {
            site: "lab",
            containers: vec![container],
            bootstrap: None,
            key: Some(&net.key),
            extra: &[],
        },
    );
    n.start();
    n
}

#[test]
fn dir_shards_survive_restart_and_corruption_is_detected() {
    let net = Net::new();
    let shards_dir = net.root.path().join("shards");
    let mut node = single(&net, "n0", format!("dir:{}:64MiB", shards_dir.display()));
    let a = net.root.path().join("a.bin");
    let b = net.root.path().join("b.bin");
    std::fs::write(&a, vec![7u8; 100_000]).unwrap();
    std::fs::write(&b, b"second shard".repeat(1000)).unwrap();
    let id_a = put(&net, &node, &a).unwrap();
    let id_b = put(&net, &node, &b).unwrap();
    assert_eq!(
        id_a,
        blake3::hash(&std::fs::read(&a).unwrap())
            .to_hex()
            .to_string()
    );

    // Clean restart: same ID, shards still readable.
    node.stop();
    node.start();
    assert_eq!(get(&net, &node, &id_a).unwrap(), std::fs::read(&a).unwrap());

    // Corrupt shard a on disk: the node refuses to serve it and says why.
    let path = find_file(&shards_dir, &id_a).expect("shard file on disk");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[500] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = get(&net, &node, &id_a).unwrap_err();
    assert!(err.to_lowercase().contains("integrity"), "{err}");
    assert!(err.contains(&id_a[..8]), "the error names the shard: {err}");
    // ...and keeps serving the others.
    assert_eq!(get(&net, &node, &id_b).unwrap(), std::fs::read(&b).unwrap());

    // Wrong, unknown and malformed IDs are clear errors.
    let unknown = blake3::hash(b"never stored").to_hex().to_string();
    let err = get(&net, &node, &unknown).unwrap_err();
    assert!(err.to_lowercase().contains("not"), "{err}");
    let err = get(&net, &node, "xyz").unwrap_err();
    assert!(err.contains("64 hex"), "{err}");
}

#[test]
fn a_full_container_refuses_and_announces_it() {
    let net = Net::new();
    let node = single(&net, "n0", "mem:3000B".into());
    let f = net.root.path().join("f.bin");
    std::fs::write(&f, vec![1u8; 3000]).unwrap();
    put(&net, &node, &f).unwrap();
    std::fs::write(&f, vec![2u8; 10]).unwrap();
    let err = put(&net, &node, &f).unwrap_err();
    assert!(err.to_lowercase().contains("full"), "{err}");
    wait_until(
        Duration::from_secs(10),
        "the announcement to show the node full",
        || {
            let s = net.status(&node.addr())?;
            let m = member(&s, &node.id).ok_or("not in its own view")?;
            match m["free_bytes"].as_u64() {
                Some(0) => Ok(()),
                other => Err(format!("free_bytes = {other:?}")),
            }
        },
    );
}
