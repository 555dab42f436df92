//! Test harness: real `dynostore` node processes on loopback.
//!
//! Every node gets its own directory under one temporary network directory,
//! its own free port on 127.0.0.1, and its log in `DIR/node.log`; nodes are
//! started by the simulator's launcher (`dynostore_sim::launch`), the same
//! one the simulator and the benches use. Waiting is
//! always on a condition with a deadline ([`wait_until`]), never a bare sleep.

use std::fs;
use std::net::TcpListener;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dynostore_sim::launch::{Init, Node};
use serde_json::Value;

/// The node binary under test (built from `node/src/main.rs` in this package).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dynostore-it"))
}

/// Fast membership timings for tests.
pub const ANNOUNCE_MS: u64 = 500;
pub const SUSPECT_MS: u64 = 2_500;
pub const DOWN_MS: u64 = 6_000;
pub const REPAIR_MS: u64 = 1_000;

/// Polls `cond` every 100 ms until it returns `Some`, or panics after `limit`
/// with `what` and the last observation.
pub fn wait_until<T>(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    let mut last;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free TCP port on 127.0.0.1 (the listener is dropped before use).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A temporary network: a directory and a network key.
pub struct Net {
    pub root: tempfile::TempDir,
    pub key: PathBuf,
}

impl Net {
    pub fn new() -> Net {
        let root = tempfile::tempdir().expect("tempdir");
        let key = root.path().join("network.key");
        let out = Command::new(bin())
            .args(["network-key"])
            .arg(&key)
            .output()
            .expect("run network-key");
        assert!(out.status.success(), "network-key failed: {out:?}");
        Net { root, key }
    }

    /// Runs a client command with this network's key; returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with_key(Some(&self.key), args)
    }

    /// `status --json` from `peer`.
    pub fn status(&self, peer: &str) -> Result<Value, String> {
        let out = self.cli(&["status", "--json", "--timeout-secs", "15", "--peer", peer]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }
}

/// Runs the CLI with the given key (or none, with the variable cleared).
pub fn cli_with_key(key: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("DYNOSTORE_PEER")
        .env_remove("DYNOSTORE_TOKEN");
    match key {
        Some(k) => cmd.env("DYNOSTORE_NETWORK_KEY", k),
        None => cmd.env_remove("DYNOSTORE_NETWORK_KEY"),
    };
    cmd.output().expect("run dynostore")
}

/// One node process: the simulator's launcher ([`dynostore_sim::launch`])
/// with the tests' timings, and panics in place of errors.
pub struct NodeProc(Node);

impl Deref for NodeProc {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.0
    }
}

impl DerefMut for NodeProc {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.0
    }
}

/// How to initialise a node.
pub struct NodeSpec<'a> {
    pub site: &'a str,
    pub containers: Vec<String>,
    pub bootstrap: Option<&'a str>,
    /// `None` = no key (an open node), `Some(path)` = that key file.
    pub key: Option<&'a Path>,
    /// More `init` arguments.
    pub extra: &'a [&'a str],
}

impl NodeProc {
    /// `dynostore init` in `root/name`.
    pub fn init(root: &Path, name: &str, spec: NodeSpec<'_>) -> NodeProc {
        let mut args: Vec<String> = Vec::new();
        for (flag, v) in [
            ("--announce-interval-ms", ANNOUNCE_MS),
            ("--suspect-after-ms", SUSPECT_MS),
            ("--down-after-ms", DOWN_MS),
            ("--repair-interval-ms", REPAIR_MS),
        ] {
            args.extend([flag.to_string(), v.to_string()]);
        }
        args.extend(spec.extra.iter().map(|s| s.to_string()));
        let bin = bin();
        let node = Node::init(Init {
            bin: &bin,
            dir: root.join(name),
            name: name.into(),
            ip: "127.0.0.1",
            site: spec.site,
            containers: spec.containers,
            bootstrap: spec.bootstrap.map(str::to_string),
            network_key: spec.key,
            args,
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        NodeProc(node)
    }

    /// A node initialised by hand in `dir`, listening where its config says;
    /// `addr()` is only meaningful for nodes made by [`NodeProc::init`].
    pub fn attach(dir: PathBuf, name: &str, id: String) -> NodeProc {
        NodeProc(Node::attach(&bin(), dir, name, id))
    }

    /// Starts the process and waits until it has written `node.addr`.
    pub fn start(&mut self) {
        self.0.start().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The node's full multiaddr.
    pub fn addr(&self) -> String {
        self.0.addr.clone()
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        self.0.terminate(Duration::from_secs(60));
    }
}

/// The member entry for node `id` in a status report.
pub fn member<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_str() == Some(id))
}

/// The state (`alive`, `suspect`, `down`) of `id` in a status report.
pub fn state_of(status: &Value, id: &str) -> Option<String> {
    member(status, id).and_then(|m| m["state"].as_str().map(str::to_string))
}

/// Starts `n` nodes; every node after the first bootstraps from the first only.
pub fn cluster(net: &Net, n: usize, containers: impl Fn(usize) -> Vec<String>) -> Vec<NodeProc> {
    cluster_with(net, n, containers, &[])
}

/// [`cluster`] with more `init` arguments for every node.
pub fn cluster_with(
    net: &Net,
    n: usize,
    containers: impl Fn(usize) -> Vec<String>,
    extra: &[&str],
) -> Vec<NodeProc> {
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 0..n {
        let first = nodes.first().map(NodeProc::addr);
        let mut node = NodeProc::init(
            net.root.path(),
            &format!("n{i}"),
            NodeSpec {
                site: &format!("site-{}", i % 3),
                containers: containers(i),
                bootstrap: first.as_deref(),
                key: Some(&net.key),
                extra,
            },
        );
        node.start();
        nodes.push(node);
    }
    nodes
}

/// Waits until every node's view lists every node in `ids` as `state`.
pub fn wait_all_see(net: &Net, observers: &[String], ids: &[&str], state: &str, limit: Duration) {
    wait_until(
        limit,
        &format!("every node to see {} members {state}", ids.len()),
        || {
            for o in observers {
                let s = net.status(o)?;
                for id in ids {
                    let got = state_of(&s, id);
                    if got.as_deref() != Some(state) {
                        return Err(format!("{o} sees {id} as {got:?}"));
                    }
                }
            }
            Ok(())
        },
    );
}

/// The addresses of `nodes`.
pub fn addrs<'a>(nodes: impl IntoIterator<Item = &'a NodeProc>) -> Vec<String> {
    nodes.into_iter().map(NodeProc::addr).collect()
}

/// Deterministic test bytes (xorshift32 from `seed`).
pub fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The file called `name` anywhere under `root` (a shard file is named by
/// its ID in every container layout).
pub fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(root).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().and_then(|n| n.to_str()) == Some(name) {
            return Some(p);
        }
    }
    None
}

/// Peak RSS (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    dynostore_sim::launch::vm_hwm_kib(pid).expect("VmHWM in /proc/PID/status") * 1024
}
