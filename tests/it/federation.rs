//! Private federation: only holders of the network key can join or read.

use std::time::Duration;

use crate::harness::{
    addrs, cli_with_key, cluster, wait_all_see, wait_until, Net, NodeProc, NodeSpec,
};

#[test]
fn nodes_and_clients_without_the_key_are_refused() {
    let net = Net::new();
    let nodes = cluster(&net, 2, |_| vec!["mem:16MiB".into()]);
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(30));

    // A node with another network's key, and one with none, both told to
    // bootstrap from n0.
    let other = Net::new();
    let first = nodes[0].addr();
    let mut wrong = NodeProc::init(
        net.root.path(),
        "wrong-key",
        NodeSpec {
            site: "x",
            containers: vec!["mem:1MiB".into()],
            bootstrap: Some(&first),
            key: Some(&other.key),
        },
    );
    let mut open = NodeProc::init(
        net.root.path(),
        "no-key",
        NodeSpec {
            site: "x",
            containers: vec!["mem:1MiB".into()],
            bootstrap: Some(&first),
            key: None,
        },
    );
    wrong.start();
    open.start();

    // n0 logs both refusals (the event we wait on), ...
    wait_until(
        Duration::from_secs(30),
        "n0 to refuse both intruders",
        || {
            let log = std::fs::read_to_string(nodes[0].dir.join("node.log"))
                .map_err(|e| e.to_string())?;
            let refused = log.matches("refused an incoming connection").count();
            if refused >= 2 {
                Ok(())
            } else {
                Err(format!("{refused} refusals logged"))
            }
        },
    );
    // ... and after several more announcement rounds nobody lists them.
    let seq_of =
        |s: &serde_json::Value| crate::harness::member(s, ids[1]).and_then(|m| m["seq"].as_u64());
    let seq0 = seq_of(&net.status(&first).unwrap()).unwrap();
    wait_until(
        Duration::from_secs(30),
        "five more announcements from n1",
        || {
            let s = net.status(&first)?;
            match seq_of(&s) {
                Some(q) if q >= seq0 + 5 => Ok(()),
                q => Err(format!("seq {q:?}")),
            }
        },
    );
    for n in &nodes {
        let s = net.status(&n.addr()).unwrap();
        let members = s["members"].as_array().unwrap();
        assert_eq!(members.len(), 2, "{} lists {members:?}", n.name);
    }
    // The intruders see only themselves.
    let s = other.status(&wrong.addr()).unwrap();
    assert_eq!(s["members"].as_array().unwrap().len(), 1);

    // A client needs the key to read a shard.
    let f = net.root.path().join("secret.bin");
    std::fs::write(&f, b"patient record").unwrap();
    let out = net.cli(&["shard", "put", f.to_str().unwrap(), "--peer", &first]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for key in [None, Some(other.key.as_path())] {
        let out = cli_with_key(
            key,
            &["shard", "get", &id, "--peer", &first, "--timeout-secs", "5"],
        );
        assert!(
            !out.status.success(),
            "read without the right key (key {key:?})"
        );
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error:"), "{err}");
    }
    let out = net.cli(&["shard", "get", &id, "--peer", &first]);
    assert_eq!(out.stdout, b"patient record");
}
