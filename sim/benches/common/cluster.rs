//! Clusters for the benches that run one (`cluster`, `repair`, `crypt`):
//! node processes started by the simulator's launcher
//! ([`dynostore_sim::launch`], the one the simulator and the integration
//! tests use), each with its own directory, port, site and container, all
//! with one fresh network key; convergence checked through
//! `dynostore status --json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use dynostore_node::client::Client;
use dynostore_node::keys::NetworkKey;
use dynostore_sim::launch::{self, Init, Node};
use libp2p::Multiaddr;

use super::cpu_secs;

/// A node process of a bench cluster.
pub type NodeProc = Node;

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Connection and request timeout of the in-process clients.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The node binary: `dynostore` beside the bench (target/release under
/// `cargo bench`; build it first with `cargo build --release -p
/// dynostore-node`), or `$DYNOSTORE_BIN`. Exits with that instruction when
/// there is none.
pub fn node_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| match launch::node_bin() {
        Ok(b) => b.display().to_string(),
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(2)
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Dir,
    Mem,
}

/// What every node of a cluster is initialised with.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub container: ContainerKind,
    /// Each node's container quota.
    pub quota_mib: u64,
    pub announce_ms: u64,
    pub suspect_ms: u64,
    pub down_ms: u64,
    /// More `dynostore init` arguments, the same for every node.
    pub init_args: Vec<String>,
}

pub fn dynostore(key: &Path) -> Command {
    let mut cmd = Command::new(node_bin());
    cmd.env("DYNOSTORE_NETWORK_KEY", key)
        .env_remove("DYNOSTORE_PEER");
    cmd
}

#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    /// The network key file every node and client uses.
    pub key: PathBuf,
}

impl Cluster {
    /// Initialises and starts `spec.nodes` nodes under `root`, each on its
    /// own site; every node after the first bootstraps from the first.
    pub fn start(root: &Path, spec: &ClusterSpec) -> Result<Cluster> {
        let bin = PathBuf::from(node_bin());
        let key = root.join("network.key");
        launch::network_key(&bin, &key)?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            key,
        };
        for i in 0..spec.nodes {
            let name = format!("n{i}");
            let dir = root.join(&name);
            let container = match spec.container {
                ContainerKind::Dir => {
                    format!("dir:{}:{}MiB", dir.join("shards").display(), spec.quota_mib)
                }
                ContainerKind::Mem => format!("mem:{}MiB", spec.quota_mib),
            };
            let mut args: Vec<String> = Vec::new();
            for (flag, v) in [
                ("--announce-interval-ms", spec.announce_ms),
                ("--suspect-after-ms", spec.suspect_ms),
                ("--down-after-ms", spec.down_ms),
            ] {
                args.extend([flag.to_string(), v.to_string()]);
            }
            args.extend(spec.init_args.iter().cloned());
            let site = format!("site-{i}");
            let mut node = Node::init(Init {
                bin: &bin,
                dir,
                name,
                ip: "127.0.0.1",
                site: &site,
                containers: vec![container],
                bootstrap: cluster.nodes.first().map(|n| n.addr.clone()),
                network_key: Some(&cluster.key),
                args,
            })?;
            node.start()?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// Polls `status --json` on every node until each lists every node as
    /// alive with free space; returns how long that took.
    pub fn wait_converged(&mut self) -> Result<Duration> {
        let start = Instant::now();
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        let mut last = String::new();
        while start.elapsed() < CONVERGE_TIMEOUT {
            match self.converged(&ids) {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) => last = format!("{e:#}"),
            }
            for n in &mut self.nodes {
                n.check_running()?;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("the cluster did not converge within {CONVERGE_TIMEOUT:?}; last: {last}")
    }

    fn converged(&self, ids: &[String]) -> Result<()> {
        for n in &self.nodes {
            let out = dynostore(&self.key)
                .args(["status", "--json", "--timeout-secs", "5", "--peer", &n.addr])
                .output()
                .context("cannot run dynostore status")?;
            if !out.status.success() {
                bail!(
                    "status of {}: {}",
                    n.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("status --json output")?;
            let members = v["members"].as_array().cloned().unwrap_or_default();
            for id in ids {
                let m = members.iter().find(|m| m["id"].as_str() == Some(id));
                let state = m.and_then(|m| m["state"].as_str());
                let free = m.and_then(|m| m["free_bytes"].as_u64()).unwrap_or(0);
                if state != Some("alive") || free == 0 {
                    bail!("{} sees {id} as {state:?} with {free} bytes free", n.name);
                }
            }
        }
        Ok(())
    }

    /// One in-process client connection per node, in node order.
    pub async fn clients(&self, psk: &NetworkKey) -> Result<Vec<Client>> {
        let mut clients = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let addr: Multiaddr = node.addr.parse().context("node multiaddr")?;
            clients.push(
                Client::connect(addr, Some(psk), CLIENT_TIMEOUT)
                    .await
                    .with_context(|| format!("cannot connect to {}", node.name))?,
            );
        }
        Ok(clients)
    }

    /// CPU seconds of every node so far (NaN for a stopped one).
    pub fn cpu(&self) -> Vec<f64> {
        self.nodes
            .iter()
            .map(|n| n.pid().and_then(cpu_secs).unwrap_or(f64::NAN))
            .collect()
    }

    /// Fails if any node that should run has exited.
    pub fn check_running(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.check_running()?;
        }
        Ok(())
    }

    /// Stops every node (SIGTERM, SIGKILL after a while), reading each
    /// one's peak RSS and CPU time first.
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.terminate(STOP_TIMEOUT);
        }
    }
}
