//! Admission by site certificate, against real nodes.
//!
//! A federation of two sites admits four nodes. Beside them run nodes that
//! must not be admitted: one with no certificate, one certified by another
//! federation's site that uses the same label, one whose certificate claims
//! a site its admin key does not sign for, and one whose certificate
//! expires while it runs. The admitted nodes' views must never list the
//! first three (while those nodes themselves see the federation, so their
//! announcements do arrive), must drop the fourth once its certificate
//! expires, must count a node's capacity only up to its certificate's
//! ceiling, and must refuse node-only requests from anyone unadmitted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    addrs, cli_with_key, data, member, state_of, wait_all_see, wait_until, Net, NodeProc, NodeSpec,
};

/// `dynostore site init`: writes the key, returns the federation-file line.
pub(crate) fn site_init(dir: &Path, site: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{site}.key"));
    let out = cli_with_key(
        None,
        &[
            "site",
            "init",
            "--site",
            site,
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "site init: {out:?}");
    (
        key,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

pub(crate) fn federation_file(dir: &Path, file: &str, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(file);
    let text = format!("name = \"{name}\"\n[sites]\n{}\n", lines.join("\n"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `init` a node (not started) on a 256 MiB directory container.
pub(crate) fn init(net: &Net, name: &str, site: &str, bootstrap: Option<&str>) -> NodeProc {
    let shards = net.root.path().join(name).join("shards");
    NodeProc::init(
        net.root.path(),
        name,
        NodeSpec {
            site,
            containers: vec![format!("dir:{}:256MiB", shards.display())],
            bootstrap,
            key: Some(&net.key),
            extra: &[],
        },
    )
}

/// `cert issue --dir`: certifies and installs; panics with stderr on failure.
pub(crate) fn certify(node: &NodeProc, key: &Path, fed: &Path, capacity: &str, days: &str) {
    let out = cli_with_key(
        None,
        &[
            "cert",
            "issue",
            "--site-key",
            key.to_str().unwrap(),
            "--federation",
            fed.to_str().unwrap(),
            "--dir",
            node.dir.to_str().unwrap(),
            "--capacity",
            capacity,
            "--days",
            days,
        ],
    );
    assert!(
        out.status.success(),
        "cert issue for {}: {}",
        node.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 2+1 put of `file` through `peer`, with `token`.
fn put_2_1(net: &Net, peer: &str, token: &Path, file: &Path) -> std::process::Output {
    let file = file.to_str().unwrap();
    let token = token.to_str().unwrap();
    net.cli(&[
        "put", "--k", "2", "--m", "1", "--peer", peer, "--token", token, file,
    ])
}

/// `token issue`: a token for `user` with `ops` over `prefix`, valid for
/// `days`, written to `out`; returns its revocation ID.
pub(crate) fn issue_token(
    key: &Path,
    fed: &Path,
    user: &str,
    ops: &str,
    prefix: &str,
    days: &str,
    out: &Path,
) -> String {
    let o = cli_with_key(
        None,
        &[
            "token",
            "issue",
            "--site-key",
            key.to_str().unwrap(),
            "--federation",
            fed.to_str().unwrap(),
            "--user",
            user,
            "--ops",
            ops,
            "--prefix",
            prefix,
            "--days",
            days,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "token issue: {o:?}");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn ids_in(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn only_certified_nodes_join_and_only_within_their_ceiling() {
    let net = Net::new();
    let root = net.root.path();
    let (key_a, line_a) = site_init(root, "hospital-a");
    let (key_b, line_b) = site_init(root, "observatory");
    let fed = federation_file(root, "federation.toml", "eu-research", &[&line_a, &line_b]);
    // Another federation whose site uses the same label as ours.
    let other_dir = root.join("other-fed");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (key_x, line_x) = site_init(&other_dir, "hospital-a");
    let other = federation_file(root, "other.toml", "us-research", &[&line_x]);
    // Our federation's name, but site "observatory" listed with hospital-a's
    // key: what an admin of hospital-a would need to certify an observatory node.
    let forged_line = line_b.replace(
        line_b.split_once(" = ").unwrap().1,
        line_a.split_once(" = ").unwrap().1,
    );
    let forged_fed = federation_file(root, "forged.toml", "eu-research", &[&forged_line]);
    let forged_key = root.join("forged-observatory.key");
    std::fs::write(
        &forged_key,
        std::fs::read_to_string(&key_a)
            .unwrap()
            .replace("site = hospital-a", "site = observatory"),
    )
    .unwrap();

    // Four admitted nodes on two sites; n3's certificate allows only 32 MiB
    // of its 256 MiB container.
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 0..4 {
        let (site, key) = if i % 2 == 0 {
            ("hospital-a", &key_a)
        } else {
            ("observatory", &key_b)
        };
        let first = nodes.first().map(NodeProc::addr);
        let mut n = init(&net, &format!("n{i}"), site, first.as_deref());
        let ceiling = if i == 3 { "32MiB" } else { "1GiB" };
        certify(&n, key, &fed, ceiling, "30");
        n.start();
        nodes.push(n);
    }
    let admitted: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let ids: Vec<&str> = admitted.iter().map(String::as_str).collect();
    let observers = addrs(&nodes);
    wait_all_see(&net, &observers, &ids, "alive", Duration::from_secs(60));

    // The ceiling: every member counts n3 at 32 MiB, not 256 MiB.
    for o in &observers {
        let s = net.status(o).unwrap();
        let m = member(&s, &nodes[3].id).unwrap();
        assert_eq!(m["capacity_bytes"].as_u64(), Some(32 << 20), "{o}: {m}");
        assert!(m["free_bytes"].as_u64().unwrap() <= 32 << 20, "{o}: {m}");
        assert_eq!(m["site"].as_str(), Some("observatory"), "{o}: {m}");
    }

    // The nodes that must not join.
    let boot = nodes[0].addr();
    let mut none = init(&net, "no-cert", "hospital-a", Some(&boot));
    none.start();
    let mut alien = init(&net, "alien", "hospital-a", Some(&boot));
    certify(&alien, &key_x, &other, "1GiB", "30");
    alien.start();
    let mut forger = init(&net, "forger", "observatory", Some(&boot));
    certify(&forger, &forged_key, &forged_fed, "1GiB", "30");
    forger.start();
    // Admitted at first, for about 17 s.
    let mut brief = init(&net, "brief", "hospital-a", Some(&boot));
    certify(&brief, &key_a, &fed, "1GiB", "0.0002");
    brief.start();

    // The outsider with no certificate checks none: it sees the federation.
    {
        let n = &none;
        wait_until(
            Duration::from_secs(60),
            &format!("{} to see the admitted nodes", n.name),
            || {
                let s = net.status(&n.addr())?;
                let seen = ids_in(&s);
                match ids.iter().find(|id| !seen.iter().any(|s| s == *id)) {
                    Some(id) => Err(format!("{} does not see {id} yet", n.name)),
                    None => Ok(()),
                }
            },
        );
    }
    // Every admitted node has received each outsider's announcements and
    // refused them for its reason.
    let reasons = [
        (&none, "carries no certificate"),
        (&alien, "is for federation \"us-research\""),
        (&forger, "does not verify under site \"observatory\""),
    ];
    for n in &nodes {
        wait_until(
            Duration::from_secs(30),
            &format!("{} to log every refusal", n.name),
            || {
                let log = std::fs::read_to_string(n.dir.join("node.log")).unwrap_or_default();
                for (outsider, why) in &reasons {
                    let refused = log.lines().any(|l| {
                        l.contains("refused a member's certificate")
                            && l.contains(&outsider.id)
                            && l.contains(why)
                    });
                    if !refused {
                        return Err(format!("no refusal of {} ({why})", outsider.name));
                    }
                }
                Ok(())
            },
        );
    }
    // The expired node is dropped: down in every admitted view.
    wait_all_see(
        &net,
        &observers,
        &[&brief.id],
        "down",
        Duration::from_secs(60),
    );
    for o in &observers {
        let seen = ids_in(&net.status(o).unwrap());
        for n in [&none, &alien, &forger] {
            assert!(!seen.contains(&n.id), "{o} lists {} as a member", n.name);
        }
    }

    // Objects go to admitted nodes only.
    let token = root.join("alice.token");
    issue_token(&key_a, &fed, "alice", "put,get", "", "1", &token);
    let file = root.join("obj.bin");
    std::fs::write(&file, data(3 << 20, 5)).unwrap();
    let put = put_2_1(&net, &boot, &token, &file);
    assert!(put.status.success(), "put: {put:?}");
    let id = String::from_utf8(put.stdout).unwrap().trim().to_string();
    let stat = net.cli(&[
        "stat",
        "--json",
        "--peer",
        &boot,
        "--token",
        token.to_str().unwrap(),
        &id,
    ]);
    assert!(stat.status.success(), "stat: {stat:?}");
    let holders = String::from_utf8_lossy(&stat.stdout).to_string();
    for n in [&none, &alien, &forger, &brief] {
        assert!(
            !holders.contains(&n.id),
            "{} holds a shard: {holders}",
            n.name
        );
    }
    // An unadmitted node as entry peer cannot place shards on members.
    let other_file = root.join("other.bin");
    std::fs::write(&other_file, data(1 << 20, 6)).unwrap();
    let via_outsider = put_2_1(&net, &none.addr(), &token, &other_file);
    assert!(
        !via_outsider.status.success(),
        "an outsider stored an object: {via_outsider:?}"
    );

    // Node-only and operator requests from a client (not admitted) are refused.
    for args in [
        vec!["deny", "--peer", boot.as_str()],
        vec!["scrub", "--peer", boot.as_str()],
    ] {
        let out = net.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains("need an admin token"), "{args:?}: {err}");
    }
    let shard = root.join("shard.bin");
    std::fs::write(&shard, b"not from a member").unwrap();
    let out = net.cli(&["shard", "put", "--peer", &boot, shard.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a client stored a raw shard: {out:?}"
    );
    // The federation still serves the object.
    let back = root.join("obj.back");
    let get = net.cli(&[
        "get",
        "--peer",
        &nodes[1].addr(),
        "--token",
        token.to_str().unwrap(),
        &id,
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(get.status.success(), "get: {get:?}");
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
    assert_eq!(
        state_of(&net.status(&boot).unwrap(), &nodes[3].id).as_deref(),
        Some("alive")
    );
}

#[test]
fn a_node_refuses_to_start_with_a_certificate_that_does_not_admit_it() {
    let net = Net::new();
    let root = net.root.path();
    let (key_a, line_a) = site_init(root, "hospital-a");
    let fed = federation_file(root, "federation.toml", "eu-research", &[&line_a]);
    let a = init(&net, "a", "hospital-a", None);
    let b = init(&net, "b", "hospital-a", None);
    // A certificate for a, installed by hand into b: b's own check refuses it.
    let cert = root.join("a.cert");
    let out = cli_with_key(
        None,
        &[
            "cert",
            "issue",
            "--site-key",
            key_a.to_str().unwrap(),
            "--federation",
            fed.to_str().unwrap(),
            "--node",
            &a.id,
            "--out",
            cert.to_str().unwrap(),
            "--capacity",
            "1GiB",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = cli_with_key(
        None,
        &[
            "cert",
            "install",
            "--dir",
            b.dir.to_str().unwrap(),
            "--federation",
            fed.to_str().unwrap(),
            cert.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "installed a's certificate into b");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("would not admit"), "{err}");
    // Written by hand anyway: the node does not start.
    std::fs::copy(&cert, b.dir.join("node.cert")).unwrap();
    std::fs::copy(&fed, b.dir.join("federation.toml")).unwrap();
    let cfg = b.dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen(
            "listen =",
            "federation = \"federation.toml\"\ncert = \"node.cert\"\nlisten =",
            1,
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::harness::bin())
        .args(["node", "--dir", b.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "b started with a's certificate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("would not admit it") && err.contains("presented by"),
        "{err}"
    );
    // The right certificate is installed and checked.
    let out = cli_with_key(
        None,
        &[
            "cert",
            "inspect",
            cert.to_str().unwrap(),
            "--federation",
            fed.to_str().unwrap(),
            "--json",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "valid");
    assert_eq!(v["node"], a.id.as_str());
}
