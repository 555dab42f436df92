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
            extra: &[],
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
            extra: &[],
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

#[test]
fn open_networks_also_speak_quic() {
    // Without a network key a node may listen on QUIC; a second node joins
    // through the QUIC address and clients talk to it over QUIC.
    let net = Net::new();
    let port = crate::harness::free_port();
    let quic = format!("/ip4/127.0.0.1/udp/{port}/quic-v1");
    let dir0 = net.root.path().join("q0");
    let tcp0 = format!("/ip4/127.0.0.1/tcp/{}", crate::harness::free_port());
    let out = cli_with_key(
        None,
        &[
            "init",
            "--dir",
            dir0.to_str().unwrap(),
            "--listen",
            &tcp0,
            "--listen",
            &quic,
            "--container",
            "mem:8MiB",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id0 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut n0 = NodeProc::attach(dir0, "q0", id0.clone());
    n0.start();
    let quic_full = format!("{quic}/p2p/{id0}");
    let mut n1 = NodeProc::init(
        net.root.path(),
        "q1",
        NodeSpec {
            site: "y",
            containers: vec!["mem:8MiB".into()],
            bootstrap: Some(&quic_full),
            key: None,
            extra: &[],
        },
    );
    n1.start();
    wait_until(
        Duration::from_secs(30),
        "both open nodes to see each other over QUIC",
        || {
            let out = cli_with_key(
                None,
                &[
                    "status",
                    "--json",
                    "--timeout-secs",
                    "10",
                    "--peer",
                    &quic_full,
                ],
            );
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            let s: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            match crate::harness::state_of(&s, &n1.id).as_deref() {
                Some("alive") => Ok(()),
                other => Err(format!("q1 is {other:?}")),
            }
        },
    );
}
