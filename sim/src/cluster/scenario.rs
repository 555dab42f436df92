//! Scenario files: the cluster, the workload and the fault schedule, as
//! TOML kept in the repository (`sim/scenarios/*.toml`).
//!
//! Every field is checked when the file is read ([`Scenario::parse`]): an
//! unknown key, a fault naming a node that does not exist, a corruption on
//! a node without a directory container, or a geometry the cluster cannot
//! hold is an error that names the field, before any process starts.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The scenario `dynostore-sim cluster` runs with no arguments.
pub const DEFAULT: &str = include_str!("../../scenarios/default.toml");
/// The scenario CI runs: six nodes, two killed during a mixed workload.
pub const CI: &str = include_str!("../../scenarios/ci.toml");

/// Problems with a scenario file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario is not valid TOML for this schema: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("scenario field {field}: {msg}")]
    Invalid { field: String, msg: String },
}

fn invalid(field: impl Into<String>, msg: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        msg: msg.into(),
    }
}

/// What the client writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Many files of 0.5 to 20 MB, like imaging studies.
    Medical,
    /// A few rasters of 100 MB to 1 GB.
    Satellite,
    /// Medical files with one satellite raster in ten.
    Mixed,
}

/// Membership and maintenance timings given to every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub announce_ms: u64,
    pub suspect_ms: u64,
    pub down_ms: u64,
    pub repair_ms: u64,
    pub scrub_ms: u64,
    /// Reclaiming objects no name refers to: grace and wait (ms); absent,
    /// the node's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_ms: Option<u64>,
}

/// A group of identical nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    #[serde(default = "one")]
    pub count: usize,
    pub site: String,
    /// `dir:QUOTA` (a directory in the node's own directory), `mem:QUOTA`,
    /// or `s3:QUOTA` (a bucket of its own on the run's local `s3s-fs`).
    pub containers: Vec<String>,
}

fn one() -> usize {
    1
}

/// One step of the fault schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// SIGKILL the nodes (a crash; their disks stay).
    Kill,
    /// Start killed nodes again on their old directories.
    Restart,
    /// Cut the nodes off from the rest: each side's nodes deny the other
    /// side's peer IDs (the node's deny-list, `ControlRequest::Deny`).
    Partition,
    /// Clear every deny-list.
    Heal,
    /// Flip a byte in `shards` shard files in the node's directory containers.
    Corrupt,
    /// Not a fault: pause the workload until every acknowledged object is
    /// healthy again (or the redundancy deadline passes), so that the next
    /// step meets a repaired network.
    Settle,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Applied once this many puts have been attempted.
    pub after: usize,
    pub action: Action,
    /// Node indices (0-based, in file order after expanding `count`).
    #[serde(default)]
    pub nodes: Vec<usize>,
    /// Shards per node to corrupt (`corrupt` only).
    #[serde(default)]
    pub shards: Option<usize>,
}

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub k: u16,
    pub m: u16,
    /// Bytes per segment; absent: k MiB (1 MiB shards), the CLI's default.
    #[serde(default)]
    pub segment_size: Option<u32>,
    pub workload: Workload,
    /// Objects to put.
    pub objects: usize,
    /// Multiplies every object size of the workload (1.0 = real sizes).
    #[serde(default = "unit")]
    pub size_scale: f64,
    /// After each put, the chance of reading back an earlier object.
    #[serde(default = "half")]
    pub read_fraction: f64,
    /// After the last fault, the time allowed to return to full redundancy.
    pub redundancy_deadline_secs: u64,
    /// Automatic repair on every node (the test-only switch is `false`).
    #[serde(default = "yes")]
    pub repair: bool,
    pub timing: Timing,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeGroup>,
    #[serde(rename = "fault", default)]
    pub faults: Vec<Fault>,
}

fn unit() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn yes() -> bool {
    true
}

/// One node of the expanded cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub site: String,
    pub containers: Vec<String>,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text)
    }

    /// Node groups expanded to one entry per node.
    pub fn node_plans(&self) -> Vec<NodePlan> {
        self.nodes
            .iter()
            .flat_map(|g| {
                (0..g.count).map(|_| NodePlan {
                    site: g.site.clone(),
                    containers: g.containers.clone(),
                })
            })
            .collect()
    }

    /// Whether any node keeps shards in S3 (the run then starts `s3s-fs`).
    pub fn uses_s3(&self) -> bool {
        self.nodes
            .iter()
            .flat_map(|g| &g.containers)
            .any(|c| c.starts_with("s3:"))
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        let plans = self.node_plans();
        let n = plans.len();
        if self.k == 0 || self.m == 0 {
            return Err(invalid("k, m", "both must be at least 1"));
        }
        let width = usize::from(self.k) + usize::from(self.m);
        if n < width {
            return Err(invalid(
                "node",
                format!("{n} nodes cannot hold k + m = {width} shards on distinct nodes"),
            ));
        }
        if self.objects == 0 {
            return Err(invalid("objects", "must be at least 1"));
        }
        if !(self.size_scale > 0.0 && self.size_scale <= 1.0) {
            return Err(invalid("size_scale", "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.read_fraction) {
            return Err(invalid("read_fraction", "must be in [0, 1]"));
        }
        let t = &self.timing;
        if t.announce_ms == 0 || t.suspect_ms <= t.announce_ms || t.down_ms <= t.suspect_ms {
            return Err(invalid(
                "timing",
                "need 0 < announce_ms < suspect_ms < down_ms",
            ));
        }
        if t.repair_ms == 0 || t.scrub_ms == 0 {
            return Err(invalid("timing", "repair_ms and scrub_ms must be positive"));
        }
        for (i, g) in self.nodes.iter().enumerate() {
            if g.count == 0 || g.containers.is_empty() {
                return Err(invalid(
                    format!("node[{i}]"),
                    "needs count >= 1 and at least one container",
                ));
            }
            for c in &g.containers {
                container_quota(c).map_err(|msg| invalid(format!("node[{i}].containers"), msg))?;
            }
        }
        let mut last = 0;
        for (i, f) in self.faults.iter().enumerate() {
            let field = format!("fault[{i}]");
            if f.after < last {
                return Err(invalid(field, "faults must be in order of `after`"));
            }
            last = f.after;
            if f.after > self.objects {
                return Err(invalid(
                    field,
                    format!("after = {} is beyond the {} objects", f.after, self.objects),
                ));
            }
            if let Some(&bad) = f.nodes.iter().find(|&&x| x >= n) {
                return Err(invalid(
                    field,
                    format!("node {bad} does not exist ({n} nodes)"),
                ));
            }
            match f.action {
                Action::Heal | Action::Settle if !f.nodes.is_empty() => {
                    return Err(invalid(field, "heal and settle take no nodes"))
                }
                Action::Heal | Action::Settle => {}
                _ if f.nodes.is_empty() => return Err(invalid(field, "names no nodes")),
                Action::Corrupt => {
                    if f.shards.unwrap_or(0) == 0 {
                        return Err(invalid(field, "corrupt needs shards >= 1"));
                    }
                    if let Some(&x) = f
                        .nodes
                        .iter()
                        .find(|&&x| !plans[x].containers.iter().any(|c| c.starts_with("dir:")))
                    {
                        return Err(invalid(
                            field,
                            format!("node {x} has no dir: container to corrupt"),
                        ));
                    }
                }
                Action::Partition if f.nodes.len() * 2 >= n => {
                    return Err(invalid(
                        field,
                        "the partitioned side must be a minority (the client stays with the majority)",
                    ));
                }
                _ => {}
            }
            if f.shards.is_some() && f.action != Action::Corrupt {
                return Err(invalid(field, "shards is only for corrupt"));
            }
        }
        Ok(())
    }
}

/// The quota part of a scenario container (`dir:512MiB` → "512MiB").
pub fn container_quota(spec: &str) -> Result<&str, String> {
    let (kind, quota) = spec
        .split_once(':')
        .ok_or_else(|| format!("{spec:?}: expected KIND:QUOTA"))?;
    if !matches!(kind, "dir" | "mem" | "s3") {
        return Err(format!("{spec:?}: kind must be dir, mem or s3"));
    }
    if quota.is_empty() || quota.contains(':') {
        return Err(format!("{spec:?}: expected KIND:QUOTA, e.g. dir:512MiB"));
    }
    Ok(quota)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(s.node_plans().len() >= usize::from(s.k + s.m));
            n += 1;
        }
        assert!(n >= 3, "default, ci and s3 at least");
        assert!(Scenario::parse(DEFAULT).is_ok() && Scenario::parse(CI).is_ok());
    }

    fn with(edit: &str, from: &str, to: &str) -> Result<Scenario, ScenarioError> {
        let text = CI.replace(from, to);
        assert_ne!(text, CI, "{edit}: the edit must change the file");
        Scenario::parse(&text)
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_field() {
        let e = with("unknown key", "seed =", "sed = 1\nseed =").unwrap_err();
        assert!(e.to_string().contains("sed"), "{e}");
        let e = with("k too big", "k = 2", "k = 20").unwrap_err();
        assert!(e.to_string().contains("distinct nodes"), "{e}");
        let e = with("node out of range", "nodes = [5]", "nodes = [9]").unwrap_err();
        assert!(e.to_string().contains("node 9 does not exist"), "{e}");
        let e = with("bad container", "\"dir:256MiB\"", "\"disk:256MiB\"").unwrap_err();
        assert!(e.to_string().contains("kind must be"), "{e}");
    }
}
