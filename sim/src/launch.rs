//! The one launcher of `dynostore` node processes: the simulator's
//! clusters (`cluster::procs`), the benches that need a cluster
//! (`sim/benches/common/cluster.rs`) and the integration tests
//! (`tests/it/harness.rs`) all start, stop, kill and inspect nodes through
//! [`Node`]. A node is `dynostore init` in its own directory, then
//! `dynostore node --dir DIR` with its log in `DIR/node.log`; it is up
//! once it has written `DIR/node.addr`.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// How long a node may take to start listening.
pub const START_LIMIT: Duration = Duration::from_secs(60);
/// The log filter nodes run with.
const RUST_LOG: &str = "info,libp2p_gossipsub=warn";

/// The `dynostore` binary beside the running executable (a bench or test
/// executable lives one directory further down, in `deps/`), or
/// `$DYNOSTORE_BIN`.
pub fn node_bin() -> Result<PathBuf> {
    if let Some(b) = std::env::var_os("DYNOSTORE_BIN") {
        return Ok(PathBuf::from(b));
    }
    let exe = std::env::current_exe().context("the running executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("dynostore");
    if !bin.exists() {
        bail!(
            "no dynostore binary at {} (build it with `cargo build --release -p dynostore-node`, \
             or set DYNOSTORE_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A free TCP port on `ip` (the listener is dropped before use).
pub fn free_port(ip: &str) -> Result<u16> {
    let l =
        TcpListener::bind((ip, 0)).with_context(|| format!("bind an ephemeral port on {ip}"))?;
    Ok(l.local_addr()?.port())
}

/// `dynostore network-key PATH`.
pub fn network_key(bin: &Path, path: &Path) -> Result<()> {
    let out = Command::new(bin)
        .arg("network-key")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "dynostore network-key failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// How to initialise one node.
#[derive(Debug, Clone)]
pub struct Init<'a> {
    pub bin: &'a Path,
    /// Its directory (created by `init`).
    pub dir: PathBuf,
    /// Its name in messages.
    pub name: String,
    /// The loopback address it listens on (a site's own under WAN
    /// emulation).
    pub ip: &'a str,
    pub site: &'a str,
    /// Full container specs (`dir:PATH:QUOTA`, `mem:QUOTA`, `s3:...`).
    pub containers: Vec<String>,
    pub bootstrap: Option<String>,
    /// `None`: an open node, without a network key.
    pub network_key: Option<&'a Path>,
    /// More `init` arguments (timings, S3, ...).
    pub args: Vec<String>,
}

/// One node process; killed when dropped.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub id: String,
    /// The port it listens on (0 for an [`Node::attach`]ed node).
    pub port: u16,
    /// Its full multiaddr, `/ip4/IP/tcp/PORT/p2p/ID` (empty when attached).
    pub addr: String,
    bin: PathBuf,
    child: Option<Child>,
    /// Peak RSS (KiB) and CPU seconds, read just before it last stopped.
    pub final_hwm_kib: Option<u64>,
    pub final_cpu: Option<f64>,
}

impl Node {
    /// `dynostore init` (not started).
    pub fn init(spec: Init<'_>) -> Result<Node> {
        let port = free_port(spec.ip)?;
        let mut cmd = Command::new(spec.bin);
        cmd.arg("init")
            .arg("--dir")
            .arg(&spec.dir)
            .args(["--listen", &format!("/ip4/{}/tcp/{port}", spec.ip)])
            .args(["--site", spec.site])
            .args(&spec.args);
        for c in &spec.containers {
            cmd.args(["--container", c]);
        }
        if let Some(b) = &spec.bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        if let Some(k) = spec.network_key {
            cmd.arg("--network-key").arg(k);
        }
        let out = cmd
            .env_remove("DYNOSTORE_NETWORK_KEY")
            .output()
            .with_context(|| format!("cannot run {}", spec.bin.display()))?;
        if !out.status.success() {
            bail!(
                "init of {} failed: {}",
                spec.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if id.is_empty() || id.contains(char::is_whitespace) {
            bail!("init of {} printed {id:?}, not a peer ID", spec.name);
        }
        Ok(Node {
            addr: format!("/ip4/{}/tcp/{port}/p2p/{id}", spec.ip),
            name: spec.name,
            dir: spec.dir,
            id,
            port,
            bin: spec.bin.to_path_buf(),
            child: None,
            final_hwm_kib: None,
            final_cpu: None,
        })
    }

    /// A node initialised by hand in `dir`, listening where its config
    /// says (its `addr` is empty).
    pub fn attach(bin: &Path, dir: PathBuf, name: &str, id: String) -> Node {
        Node {
            name: name.into(),
            dir,
            id,
            port: 0,
            addr: String::new(),
            bin: bin.to_path_buf(),
            child: None,
            final_hwm_kib: None,
            final_cpu: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process and waits until it has written `node.addr`.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
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
            .env("RUST_LOG", RUST_LOG)
            .env_remove("DYNOSTORE_NETWORK_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            self.check_running()?;
            if fs::read_to_string(&addr_file).is_ok_and(|s| s.lines().next().is_some()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "{} did not listen within {START_LIMIT:?}:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait().context("waiting for a node")? {
                self.child = None;
                bail!(
                    "{} exited with {status}; its log ends:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
        }
        Ok(())
    }

    fn record(&mut self, pid: u32) {
        self.final_hwm_kib = vm_hwm_kib(pid);
        self.final_cpu = cpu_secs(pid);
    }

    /// SIGKILL at once, as a crash (peak RSS and CPU time read first).
    pub fn kill(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        self.record(c.id());
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGTERM, then waits up to `limit` for a clean shutdown; SIGKILL
    /// after that. Returns whether it stopped by itself.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        self.record(c.id());
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
                    std::thread::sleep(Duration::from_millis(20));
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

    /// The last `lines` lines of the node's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
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

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Peak RSS (VmHWM, KiB) of a process.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS)
}

/// Linux `USER_HZ`: the unit of the CPU times in `/proc/PID/stat`.
const CLOCK_TICKS: f64 = 100.0;
