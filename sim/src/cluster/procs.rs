//! The simulator's node processes: [`crate::launch::Node`] with the
//! index, site and multiaddr of a run, initialised from a scenario's
//! `NodePlan` and timings, killed and restarted on the fault schedule.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use anyhow::{Context as _, Result};
use libp2p::Multiaddr;

use super::scenario::{container_quota, NodePlan, Timing};
use crate::launch::{Init, Node};

/// One node process of the run.
#[derive(Debug)]
pub struct NodeProc {
    pub index: usize,
    pub site: String,
    pub addr: Multiaddr,
    node: Node,
}

impl Deref for NodeProc {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for NodeProc {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
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
        let t = cx.timing;
        let mut args: Vec<String> = extra.to_vec();
        for (flag, v) in [
            ("--announce-interval-ms", t.announce_ms),
            ("--suspect-after-ms", t.suspect_ms),
            ("--down-after-ms", t.down_ms),
            ("--repair-interval-ms", t.repair_ms),
            ("--scrub-interval-ms", t.scrub_ms),
        ] {
            args.extend([flag.to_string(), v.to_string()]);
        }
        if let Some(r) = t.reclaim_ms {
            for flag in ["--reclaim-grace-ms", "--reclaim-wait-ms"] {
                args.extend([flag.to_string(), r.to_string()]);
            }
        }
        if !cx.repair {
            args.push("--no-repair".into());
        }
        let mut containers = Vec::new();
        for (j, c) in plan.containers.iter().enumerate() {
            let quota = container_quota(c).map_err(anyhow::Error::msg)?;
            containers.push(match c.split_once(':').map(|(k, _)| k) {
                Some("dir") => format!("dir:{}:{quota}", dir.join(format!("shards{j}")).display()),
                Some("s3") => (cx.s3)(index, quota)?,
                _ => c.clone(),
            });
        }
        let node = Node::init(Init {
            bin: cx.bin,
            dir,
            name: format!("node {index}"),
            ip,
            site: &plan.site,
            containers,
            bootstrap: cx.bootstrap.map(ToString::to_string),
            network_key: Some(cx.key),
            args,
        })?;
        let addr: Multiaddr = node
            .addr
            .parse()
            .with_context(|| format!("{} is not a multiaddr", node.addr))?;
        Ok(NodeProc {
            index,
            site: plan.site.clone(),
            addr,
            node,
        })
    }
}
