//! A node whose only container is an S3 bucket on a real S3 server.

use dynostore_node::container::s3s::{S3sServer, ACCESS_KEY, SECRET_KEY};

use crate::harness::{Net, NodeProc, NodeSpec};

#[test]
fn shards_go_through_a_real_s3_server() {
    let net = Net::new();
    let s3 = S3sServer::start(&["shards"]);
    // The command-line form a user would type (Display masks the secret).
    let spec = format!(
        "s3:{}/shards/node0:16MiB?access_key={ACCESS_KEY}&secret_key={SECRET_KEY}",
        s3.endpoint()
    );
    let mut node = NodeProc::init(
        net.root.path(),
        "n0",
        NodeSpec {
            site: "cloud",
            containers: vec![spec],
            bootstrap: None,
            key: Some(&net.key),
            extra: &[],
        },
    );
    node.start();
    let f = net.root.path().join("s3.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&f, &data).unwrap();
    let out = net.cli(&["shard", "put", f.to_str().unwrap(), "--peer", &node.addr()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = net.cli(&["shard", "get", &id, "--peer", &node.addr()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, data);
    // The bytes really live in the S3 server's bucket directory.
    let listing = walk(&s3.bucket_dir("shards"));
    assert!(
        listing.iter().any(|p| p.ends_with(&id)),
        "shard {id} not in the bucket: {listing:?}"
    );
    // And survive a node restart.
    node.stop();
    node.start();
    let out = net.cli(&["shard", "get", &id, "--peer", &node.addr()]);
    assert_eq!(out.stdout, data);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
