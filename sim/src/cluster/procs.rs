//! Node processes: `dynostore init` and `dynostore node`, one directory and
//! one loopback port each, killed and restarted on the fault schedule.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use libp2p::Multiaddr;

use super::scenario::{container_quota, NodePlan, Timing};

/// How long a node may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(30);

/// One node process of the run.
#[derive(Debug)]
pub struct NodeProc {
    pub index: usize,
    pub site: String,
    pub dir: PathBuf,
    pub id: String,
    pub addr: Multiaddr,
    bin: PathBuf,
    child: Option<Child>,
}

/// Everything `init` needs beyond the node's own plan.
pub(crate) struct InitContext<'a> {
    pub bin: &'a Path,
    pub root: &'a Path,
    pub key: &'a Path,
    pub timing: &'a Timing,
    pub repair: bool,
    pub bootstrap: Option<&'a Multiaddr>,
    /// `s3:QUOTA` → a full spec for this node's bucket.
    pub s3: &'a dyn Fn(usize, &str) -> Result<String>,
}

impl NodeProc {
    /// `dynostore init` in `root/nI`.
    pub(crate) fn init(index: usize, plan: &NodePlan, cx: &InitContext<'_>) -> Result<NodeProc> {
        Self::init_at(index, plan, cx, "127.0.0.1", &[])
    }

    /// [`NodeProc::init`] listening on `ip` (a site's loopback address
    /// under WAN emulation) with more `init` arguments.
    pub(crate) fn init_at(
        index: usize,
        plan: &NodePlan,
        cx: &InitContext<'_>,
        ip: &str,
        extra: &[String],
    ) -> Result<NodeProc> {
        let dir = cx.root.join(format!("n{index}"));
        let port = TcpListener::bind((ip, 0))
            .with_context(|| format!("bind an ephemeral port on {ip}"))?
            .local_addr()?
            .port();
        let t = cx.timing;
        let mut cmd = Command::new(cx.bin);
        cmd.arg("init")
            .arg("--dir")
            .arg(&dir)
            .args(["--listen", &format!("/ip4/{ip}/tcp/{port}")])
            .args(extra)
            .args(["--site", &plan.site])
            .arg("--network-key")
            .arg(cx.key)
            .args(["--announce-interval-ms", &t.announce_ms.to_string()])
            .args(["--suspect-after-ms", &t.suspect_ms.to_string()])
            .args(["--down-after-ms", &t.down_ms.to_string()])
            .args(["--repair-interval-ms", &t.repair_ms.to_string()])
            .args(["--scrub-interval-ms", &t.scrub_ms.to_string()]);
        if let Some(r) = t.reclaim_ms {
            cmd.args(["--reclaim-grace-ms", &r.to_string()])
                .args(["--reclaim-wait-ms", &r.to_string()]);
        }
        if !cx.repair {
            cmd.arg("--no-repair");
        }
        if let Some(b) = cx.bootstrap {
            cmd.args(["--bootstrap", &b.to_string()]);
        }
        for (j, c) in plan.containers.iter().enumerate() {
            let quota = container_quota(c).map_err(anyhow::Error::msg)?;
            let spec = match c.split_once(':').map(|(k, _)| k) {
                Some("dir") => format!("dir:{}:{quota}", dir.join(format!("shards{j}")).display()),
                Some("s3") => (cx.s3)(index, quota)?,
                _ => c.clone(),
            };
            cmd.args(["--container", &spec]);
        }
        let out = cmd
            .env_remove("DYNOSTORE_NETWORK_KEY")
            .output()
            .with_context(|| format!("cannot run {}", cx.bin.display()))?;
        if !out.status.success() {
            bail!(
                "init of node {index} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let addr: Multiaddr = format!("/ip4/{ip}/tcp/{port}/p2p/{id}")
            .parse()
            .with_context(|| format!("init printed {id:?}, not a peer ID"))?;
        Ok(NodeProc {
            index,
            site: plan.site.clone(),
            dir,
            id,
            addr,
            bin: cx.bin.to_path_buf(),
            child: None,
        })
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process and waits until it has written `node.addr`.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.index);
        }
        let addr_file = self.dir.join("node.addr");
        let _ = fs::remove_file(&addr_file);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .context("open the node log")?;
        let child = Command::new(&self.bin)
            .args(["node", "--dir"])
            .arg(&self.dir)
            .env("RUST_LOG", "info,libp2p_gossipsub=warn")
            .env_remove("DYNOSTORE_NETWORK_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "node {} exited with {status} while starting:\n{}",
                    self.index,
                    self.log_tail()
                );
            }
            if fs::read_to_string(&addr_file).is_ok_and(|s| s.lines().next().is_some()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "node {} did not listen within {START_LIMIT:?}:\n{}",
                    self.index,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the node to shut down
    /// cleanly; SIGKILL after that. Returns whether it stopped by itself.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // The child is not reaped yet, so its pid still names that node.
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + limit;
        loop {
            match c.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return false;
                }
            }
        }
    }

    /// The address of the node's admin API (and dashboard), from the
    /// `admin.addr` file the running node writes.
    pub fn admin_addr(&self) -> Option<String> {
        let text = fs::read_to_string(self.dir.join("admin.addr")).ok()?;
        text.lines().next().map(|l| l.trim().to_string())
    }

    /// The last lines of the node's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The shard files in this node's directory containers (named by their
    /// 64-hex-digit ID), sorted so that a seeded choice is repeatable.
    pub fn shard_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}
