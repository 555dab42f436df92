//! Node processes for the benches that run a cluster (`cluster`,
//! `repair`): `dynostore init` and `dynostore node` per node, each with its
//! own directory, port, site and container, all with one fresh network key;
//! convergence checked through `dynostore status --json`.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use dynostore_node::client::Client;
use dynostore_node::keys::NetworkKey;
use libp2p::Multiaddr;

use super::{cpu_secs, vm_hwm_kib};

/// The node binary of this package (release build under `cargo bench`).
pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_dynostore");

const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Connection and request timeout of the in-process clients.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

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

/// One node process, killed when dropped.
#[derive(Debug)]
pub struct NodeProc {
    pub name: String,
    pub dir: PathBuf,
    pub id: String,
    pub addr: String,
    child: Option<Child>,
    /// Peak RSS (KiB) and CPU seconds, read just before the node was stopped.
    pub final_hwm_kib: Option<u64>,
    pub final_cpu: Option<f64>,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait().context("waiting for a node")? {
                self.child = None;
                bail!(
                    "node {} exited with {status}; its log ends:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    /// Reads the peak RSS and CPU time, then SIGTERM, then SIGKILL after
    /// [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        self.final_hwm_kib = vm_hwm_kib(c.id());
        self.final_cpu = cpu_secs(c.id());
        if matches!(c.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg(c.id().to_string())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGKILL at once, as a crash: no shutdown, no goodbye to the network.
    /// Reads the peak RSS and CPU time first.
    pub fn kill(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        self.final_hwm_kib = vm_hwm_kib(c.id());
        self.final_cpu = cpu_secs(c.id());
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A free TCP port on 127.0.0.1 (the listener is dropped before use).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port")?;
    Ok(l.local_addr().context("local addr")?.port())
}

pub fn dynostore(key: &Path) -> Command {
    let mut cmd = Command::new(NODE_BIN);
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
        let key = root.join("network.key");
        let out = Command::new(NODE_BIN)
            .arg("network-key")
            .arg(&key)
            .output()
            .context("cannot run dynostore network-key")?;
        if !out.status.success() {
            bail!(
                "dynostore network-key failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            key,
        };
        for i in 0..spec.nodes {
            let name = format!("n{i}");
            let dir = root.join(&name);
            let port = free_port()?;
            let container = match spec.container {
                ContainerKind::Dir => {
                    format!("dir:{}:{}MiB", dir.join("shards").display(), spec.quota_mib)
                }
                ContainerKind::Mem => format!("mem:{}MiB", spec.quota_mib),
            };
            let mut cmd = dynostore(&cluster.key);
            cmd.arg("init")
                .arg("--dir")
                .arg(&dir)
                .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
                .args(["--site", &format!("site-{i}")])
                .args(["--container", &container])
                .arg("--network-key")
                .arg(&cluster.key)
                .args(["--announce-interval-ms", &spec.announce_ms.to_string()])
                .args(["--suspect-after-ms", &spec.suspect_ms.to_string()])
                .args(["--down-after-ms", &spec.down_ms.to_string()])
                .args(&spec.init_args);
            if let Some(first) = cluster.nodes.first() {
                cmd.args(["--bootstrap", &first.addr]);
            }
            let out = cmd.output().context("cannot run dynostore init")?;
            if !out.status.success() {
                bail!(
                    "init {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let log = fs::File::create(dir.join("node.log")).context("node log")?;
            let child = Command::new(NODE_BIN)
                .arg("node")
                .arg("--dir")
                .arg(&dir)
                .env("RUST_LOG", "info,libp2p_gossipsub=warn")
                .env_remove("DYNOSTORE_NETWORK_KEY")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().context("node log")?))
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("cannot start node {name}"))?;
            cluster.nodes.push(NodeProc {
                name,
                addr: format!("/ip4/127.0.0.1/tcp/{port}/p2p/{id}"),
                dir,
                id,
                child: Some(child),
                final_hwm_kib: None,
                final_cpu: None,
            });
            let node = cluster.nodes.last_mut().expect("just pushed");
            let deadline = Instant::now() + NODE_START_TIMEOUT;
            loop {
                node.check_running()?;
                if fs::read_to_string(node.dir.join("node.addr"))
                    .is_ok_and(|s| s.lines().next().is_some())
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} wrote no node.addr within {NODE_START_TIMEOUT:?}",
                        node.name
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
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

    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}
