//! User tokens on every client request, against real nodes.
//!
//! A federation of two sites (two nodes each). Users act only through
//! tokens their site's admin issued: no token, an expired token, a token
//! for another prefix and a revoked token are refused with a clear error;
//! an attenuated read-only copy reads and cannot put or rm; objects carry
//! their owner; listings show only what a token covers; operator requests
//! need an admin token of the node's own site; a revocation reaches every
//! member through their announcements and survives a restart.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use serde_json::Value;

use dynostore_node::client::Client;
use dynostore_node::{keys, net as dnet};
use dynostore_protocol::wire::{
    ControlRequest, ControlResponse, ErrorKind, ShardRequest, WireMessage,
};
use dynostore_protocol::ObjectId;

use crate::harness::{addrs, cli_with_key, data, wait_all_see, wait_until, Net, NodeProc};
use crate::trust::{certify, federation_file, init, issue_token, site_init};

/// A client command as `token` (a file), with the network key.
fn as_user(net: &Net, token: &Path, args: &[&str]) -> Output {
    let mut v: Vec<&str> = args.to_vec();
    v.extend(["--token", token.to_str().unwrap()]);
    net.cli(&v)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts `o` failed and its error says `why`.
fn refused(o: &Output, why: &str, what: &str) {
    assert!(!o.status.success(), "{what} was allowed: {o:?}");
    assert!(
        stderr(o).contains(why),
        "{what}: expected {why:?} in {:?}",
        stderr(o)
    );
}

fn put(net: &Net, peer: &str, token: &Path, name: &str, file: &Path) -> Output {
    as_user(
        net,
        token,
        &[
            "put",
            "--k",
            "2",
            "--m",
            "1",
            "--peer",
            peer,
            "--name",
            name,
            file.to_str().unwrap(),
        ],
    )
}

fn get(net: &Net, peer: &str, token: &Path, id: &str, out: &Path) -> Output {
    as_user(
        net,
        token,
        &["get", "--peer", peer, id, "-o", out.to_str().unwrap()],
    )
}

fn stored_id(o: &Output) -> String {
    assert!(o.status.success(), "put: {o:?}");
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .trim()
        .to_string()
}

fn ls_ids(net: &Net, peer: &str, token: &Path) -> Vec<String> {
    let o = as_user(net, token, &["ls", "--json", "--peer", peer]);
    assert!(o.status.success(), "ls: {o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tokens_decide_what_each_client_may_do() {
    let net = Net::new();
    let root = net.root.path();
    let (key_a, line_a) = site_init(root, "hospital-a");
    let (key_b, line_b) = site_init(root, "observatory");
    let fed = federation_file(root, "federation.toml", "eu-research", &[&line_a, &line_b]);
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 0..4 {
        let (site, key) = if i % 2 == 0 {
            ("hospital-a", &key_a)
        } else {
            ("observatory", &key_b)
        };
        let first = nodes.first().map(NodeProc::addr);
        let mut n = init(&net, &format!("n{i}"), site, first.as_deref());
        certify(&n, key, &fed, "1GiB", "30");
        n.start();
        nodes.push(n);
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let idrefs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let peers = addrs(&nodes);
    wait_all_see(&net, &peers, &idrefs, "alive", Duration::from_secs(60));
    let a0 = peers[0].as_str();

    let tok = |name: &str| -> PathBuf { root.join(format!("{name}.token")) };
    let alice = tok("alice");
    let alice_id = issue_token(
        &key_a,
        &fed,
        "alice",
        "put,get,ls,rm",
        "imaging/",
        "1",
        &alice,
    );
    let bob = tok("bob");
    issue_token(&key_b, &fed, "bob", "put,get,ls,rm", "genomics/", "1", &bob);
    let admin_a = tok("admin-a");
    issue_token(&key_a, &fed, "ops", "admin", "", "1", &admin_a);
    let admin_b = tok("admin-b");
    issue_token(&key_b, &fed, "ops", "admin", "", "1", &admin_b);

    let file = root.join("scan.bin");
    std::fs::write(&file, data(600_000, 3)).unwrap();
    let back = root.join("scan.back");

    // No token at all.
    let o = net.cli(&["put", "--peer", a0, file.to_str().unwrap()]);
    refused(&o, "requires a user token", "a put without a token");
    // A token that is not a token.
    let junk = tok("junk");
    std::fs::write(&junk, "bm90IGEgdG9rZW4").unwrap();
    refused(
        &put(&net, a0, &junk, "imaging/x", &file),
        "does not hold a token",
        "a put with a junk token",
    );

    // Alice stores under her prefix; the object carries her as its owner.
    let id = stored_id(&put(&net, a0, &alice, "imaging/scan.bin", &file));
    let st = as_user(&net, &alice, &["stat", "--json", "--peer", a0, &id]);
    assert!(st.status.success(), "stat: {st:?}");
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["owner"], "alice@hospital-a", "{st}");
    assert!(get(&net, &peers[1], &alice, &id, &back).status.success());
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
    // ... but not outside it.
    refused(
        &put(&net, a0, &alice, "genomics/scan.bin", &file),
        "does not allow put on \"genomics/scan.bin\"",
        "alice's put outside her prefix",
    );

    // Bob's token covers another prefix: no read, no rm of alice's object.
    let bob_file = root.join("genome.bin");
    std::fs::write(&bob_file, data(300_000, 4)).unwrap();
    let bob_id = stored_id(&put(&net, &peers[1], &bob, "genomics/g1", &bob_file));
    refused(
        &get(&net, a0, &bob, &id, &back),
        "does not allow get",
        "bob's get of alice's object",
    );
    refused(
        &as_user(&net, &bob, &["rm", "--peer", a0, &id]),
        "does not allow rm",
        "bob's rm of alice's object",
    );
    // Listings show each user what their token covers.
    let seen_by_alice = ls_ids(&net, a0, &alice);
    assert!(seen_by_alice.contains(&id) && !seen_by_alice.contains(&bob_id));
    let seen_by_bob = ls_ids(&net, a0, &bob);
    assert!(seen_by_bob.contains(&bob_id) && !seen_by_bob.contains(&id));

    // A read-only copy of alice's token, made offline.
    let ro = tok("alice-ro");
    let o = cli_with_key(
        None,
        &[
            "token",
            "attenuate",
            "--federation",
            fed.to_str().unwrap(),
            alice.to_str().unwrap(),
            "--ops",
            "get",
            "--out",
            ro.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "attenuate: {o:?}");
    assert!(get(&net, &peers[2], &ro, &id, &back).status.success());
    refused(
        &put(&net, a0, &ro, "imaging/other", &bob_file),
        "does not allow put",
        "a put with the read-only copy",
    );
    refused(
        &as_user(&net, &ro, &["rm", "--peer", a0, &id]),
        "does not allow rm",
        "an rm with the read-only copy",
    );

    // A token that expires within seconds: accepted, then refused.
    let brief = tok("brief");
    issue_token(&key_a, &fed, "carol", "get", "", "0.00005", &brief);
    let first = get(&net, a0, &brief, &id, &back);
    if first.status.success() {
        wait_until(Duration::from_secs(20), "the brief token to expire", || {
            let o = get(&net, a0, &brief, &id, &back);
            if o.status.success() {
                Err("still accepted".into())
            } else {
                Ok(())
            }
        });
    }
    refused(
        &get(&net, a0, &brief, &id, &back),
        "check(s) failed (expired",
        "a get with an expired token",
    );

    // Operator requests: a user token is not enough, nor another site's
    // admin token; this site's admin token is.
    refused(
        &as_user(&net, &alice, &["scrub", "--peer", a0]),
        "does not allow admin",
        "scrub with a user token",
    );
    refused(
        &as_user(&net, &admin_b, &["scrub", "--peer", a0]),
        "admin token of this node's site",
        "scrub with another site's admin token",
    );
    let o = as_user(&net, &admin_a, &["scrub", "--json", "--peer", a0]);
    assert!(
        o.status.success(),
        "scrub with the site's admin token: {o:?}"
    );
    // A user token cannot reach node-only requests either.
    let shard = root.join("shard.bin");
    std::fs::write(&shard, b"not from a member").unwrap();
    let o = as_user(
        &net,
        &alice,
        &["shard", "put", "--peer", a0, shard.to_str().unwrap()],
    );
    assert!(!o.status.success(), "a user stored a raw shard: {o:?}");
    // Nor, speaking the protocols directly, a shard delete, a deny or a
    // forged manifest replica.
    let alice_bytes =
        dynostore_protocol::token::token_bytes(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    let object: ObjectId = id.parse().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let psk = keys::load_network_key(&net.key).unwrap();
        let c = Client::connect(a0.parse().unwrap(), Some(&psk), Duration::from_secs(10))
            .await
            .unwrap()
            .with_token(Some(alice_bytes));
        for req in [
            ControlRequest::Delete { slots: Vec::new() },
            ControlRequest::Deny { peers: Vec::new() },
            ControlRequest::ManifestStates {
                objects: vec![object],
            },
        ] {
            match c.control(req.clone()).await.unwrap() {
                ControlResponse::Error(e) => {
                    assert_eq!(e.kind, ErrorKind::Forbidden, "{req:?}: {e:?}")
                }
                other => panic!("{req:?} was answered: {other:?}"),
            }
        }
        let forged = b"not a manifest".to_vec();
        let mut s = c
            .streams()
            .open_stream(c.peer(), dnet::shard_protocol())
            .await
            .unwrap();
        let header = ShardRequest::PutManifest {
            object,
            len: forged.len() as u32,
        };
        let _ = s.write_all(&header.to_frame()).await;
        let _ = s.write_all(&forged).await;
        let _ = s.flush().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        assert!(answer.is_empty(), "a forged manifest was answered");
    });
    assert!(get(&net, a0, &alice, &id, &back).status.success());

    // Status: members for anyone, addresses only for an operator.
    let s = net.status(a0).unwrap();
    assert!(
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["addrs"].as_array().is_none_or(|a| a.is_empty())),
        "{s}"
    );

    // Revocation through one node reaches every member...
    let o = cli_with_key(
        Some(&net.key),
        &[
            "token",
            "revoke",
            "--site-key",
            key_a.to_str().unwrap(),
            "--federation",
            fed.to_str().unwrap(),
            "--id",
            &alice_id,
            "--peer",
            a0,
        ],
    );
    assert!(o.status.success(), "revoke: {o:?}");
    for p in &peers {
        wait_until(
            Duration::from_secs(30),
            &format!("{p} to refuse the revoked token"),
            || {
                let o = get(&net, p, &alice, &id, &back);
                if stderr(&o).contains("has been revoked") {
                    Ok(())
                } else {
                    Err(format!("answered {o:?}"))
                }
            },
        );
    }
    // ... including its attenuated copy (revoking a block revokes what
    // was derived from it) ...
    refused(
        &get(&net, a0, &ro, &id, &back),
        "has been revoked",
        "the revoked token's read-only copy",
    );
    // ... and is kept across a restart.
    nodes[3].stop();
    let kept = std::fs::read(nodes[3].dir.join("revocations.cbor")).unwrap_or_default();
    assert!(!kept.is_empty(), "n3 kept no revocation on disk");
    nodes[3].start();
    wait_all_see(
        &net,
        &peers[..1],
        &[&nodes[3].id],
        "alive",
        Duration::from_secs(60),
    );
    refused(
        &get(&net, &peers[3], &alice, &id, &back),
        "has been revoked",
        "the revoked token after a restart",
    );
    // Bob is unaffected, once the restarted node sees the others again
    // (before that it cannot find the object's holders).
    let all: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(&net, &peers[3..4], &all, "alive", Duration::from_secs(60));
    let bob_back = root.join("genome.back");
    let o = get(&net, &peers[3], &bob, &bob_id, &bob_back);
    assert!(
        o.status.success(),
        "bob's get through the restarted node: {o:?}"
    );
    assert_eq!(
        std::fs::read(&bob_back).unwrap(),
        std::fs::read(&bob_file).unwrap()
    );
}
