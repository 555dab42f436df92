//! Four emulated sites 5 to 60 ms apart (`node::wan`): nodes measure the
//! round-trip times the matrix sets, a put for a durability target gets
//! the geometry the formula chooses and `stat` reports it, site-aware
//! reads take more of their bytes from near sites than a site-blind entry
//! peer at the same site, and a whole site lost does not stop reads.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    bin, data, member, wait_all_see, wait_until, Net, NodeProc, ANNOUNCE_MS, DOWN_MS, REPAIR_MS,
    SUSPECT_MS,
};

/// (site, loopback address).
const SITES: [(&str, &str); 4] = [
    ("a", "127.0.0.11"),
    ("b", "127.0.0.12"),
    ("c", "127.0.0.13"),
    ("d", "127.0.0.14"),
];
/// One-way delays in ms between site pairs.
const LINKS: [(&str, &str, u32); 6] = [
    ("a", "b", 5),
    ("a", "c", 20),
    ("a", "d", 60),
    ("b", "c", 15),
    ("b", "d", 45),
    ("c", "d", 30),
];
const NODES_PER_SITE: usize = 2;
const SEG: &str = "262144";

fn delay(from: &str, to: &str) -> u32 {
    LINKS
        .iter()
        .find(|(x, y, _)| (*x == from && *y == to) || (*x == to && *y == from))
        .map_or(0, |l| l.2)
}

fn write_matrix(root: &Path) -> PathBuf {
    let mut t = String::from("client_site = \"a\"\n");
    for (name, ip) in SITES {
        t += &format!("[[site]]\nname = \"{name}\"\nips = [\"{ip}\"]\n");
    }
    for (x, y, d) in LINKS {
        t += &format!(
            "[[link]]\nbetween = [\"{x}\", \"{y}\"]\none_way_delay_ms = {d}\nbandwidth_mbit = 400\n"
        );
    }
    let p = root.join("wan.toml");
    fs::write(&p, t).unwrap();
    p
}

/// A node of `site` listening on the site's address.
struct WanNode {
    proc: NodeProc,
    site: &'static str,
    addr: String,
}

fn init_node(
    net: &Net,
    matrix: &Path,
    name: &str,
    (site, ip): (&'static str, &str),
    bootstrap: Option<&str>,
    extra: &[&str],
) -> WanNode {
    let dir = net.root.path().join(name);
    let port = TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("/ip4/{ip}/tcp/{port}");
    let shards = format!("dir:{}/shards:256MiB", dir.display());
    let timing = [
        ANNOUNCE_MS.to_string(),
        SUSPECT_MS.to_string(),
        DOWN_MS.to_string(),
        REPAIR_MS.to_string(),
    ];
    let mut args: Vec<&str> = vec![
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
        "--site",
        site,
        "--container",
        &shards,
        "--network-key",
        net.key.to_str().unwrap(),
        "--wan-emulation",
        matrix.to_str().unwrap(),
        "--announce-interval-ms",
        &timing[0],
        "--suspect-after-ms",
        &timing[1],
        "--down-after-ms",
        &timing[2],
        "--repair-interval-ms",
        &timing[3],
    ];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    args.extend(extra);
    let out = Command::new(bin())
        .args(&args)
        .env_remove("DYNOSTORE_NETWORK_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut proc = NodeProc::attach(dir, name, id.clone());
    proc.start();
    WanNode {
        proc,
        site,
        addr: format!("{listen}/p2p/{id}"),
    }
}

/// The CLI as a client at site `a`, shaped by the matrix.
fn cli(net: &Net, matrix: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("DYNOSTORE_NETWORK_KEY", &net.key)
        .env("DYNOSTORE_WAN_EMULATION", matrix)
        .env("DYNOSTORE_WAN_SITE", "a")
        .env_remove("DYNOSTORE_PEER")
        .env_remove("DYNOSTORE_DURABILITY")
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn by_site(status: &Value) -> Vec<(String, u64)> {
    status["read_bytes_by_site"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn four_sites_site_aware_reads_and_durability_targets() {
    let net = Net::new();
    let matrix = write_matrix(net.root.path());
    let mut nodes: Vec<WanNode> = Vec::new();
    for (s, site) in SITES.iter().enumerate() {
        for j in 0..NODES_PER_SITE {
            let boot = nodes.first().map(|n| n.addr.clone());
            // The second node of site a reads site-blind: the comparison.
            let extra: &[&str] = if s == 0 && j == 1 {
                &["--site-blind-reads"]
            } else {
                &[]
            };
            let name = format!("{}{j}", site.0);
            nodes.push(init_node(
                &net,
                &matrix,
                &name,
                *site,
                boot.as_deref(),
                extra,
            ));
        }
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let ids: Vec<&str> = nodes.iter().map(|n| n.proc.id.as_str()).collect();
    wait_all_see(&net, &addrs, &ids, "alive", Duration::from_secs(90));
    let (aware, blind) = (&nodes[0], &nodes[1]);

    // The measured RTTs follow the matrix: a node of site d is at least
    // 2 x 60 ms from site a, one of site b well under that.
    wait_until(Duration::from_secs(60), "RTTs to every member", || {
        for entry in [aware, blind] {
            let st = net.status(&entry.addr)?;
            for n in &nodes {
                if n.proc.id == entry.proc.id {
                    continue;
                }
                let rtt = member(&st, &n.proc.id)
                    .and_then(|m| m["rtt_ms"].as_u64())
                    .ok_or(format!("{} has no RTT to {}", entry.proc.name, n.proc.name))?;
                let want = u64::from(2 * delay(entry.site, n.site));
                if rtt < want || rtt > want + 80 {
                    return Err(format!(
                        "{} -> {}: rtt {rtt} ms, matrix {want} ms",
                        entry.proc.name, n.proc.name
                    ));
                }
            }
        }
        Ok(())
    });

    // Puts for a durability target: 8 members in 4 sites, default failure
    // model: the cheapest geometry with k < 4 (a site may be lost) that
    // meets 0.999999 is 3+2.
    let files = net.root.path().join("files");
    fs::create_dir_all(&files).unwrap();
    let mut objects = Vec::new();
    for i in 0..3u32 {
        let f = files.join(format!("scan-{i}.dcm"));
        let bytes = data(1_500_000 + i as usize * 4099, 90 + i);
        fs::write(&f, &bytes).unwrap();
        let out = cli(
            &net,
            &matrix,
            &[
                "put",
                "--json",
                "--durability",
                "0.999999",
                "--segment-size",
                SEG,
                "--peer",
                &aware.addr,
                f.to_str().unwrap(),
            ],
        );
        let r: Value = serde_json::from_str(&ok(&out, "put")).unwrap();
        assert_eq!(
            (r["k"].as_u64(), r["m"].as_u64()),
            (Some(3), Some(2)),
            "{r}"
        );
        objects.push((r["id"].as_str().unwrap().to_string(), bytes));
    }
    let st: Value = serde_json::from_str(&ok(
        &cli(
            &net,
            &matrix,
            &["stat", "--json", "--peer", &aware.addr, &objects[0].0],
        ),
        "stat",
    ))
    .unwrap();
    assert_eq!(st["durability_target"].as_f64(), Some(0.999999), "{st}");
    let now = st["durability_now"].as_f64().unwrap();
    assert!(now >= 0.999999, "durability of fresh holders {now}");

    // The same objects read through the site-aware and the site-blind
    // entry peer, both at site a.
    for entry in [aware, blind] {
        for (id, bytes) in &objects {
            let out_file = files.join(format!("{id}.{}", entry.proc.name));
            ok(
                &cli(
                    &net,
                    &matrix,
                    &[
                        "get",
                        "--peer",
                        &entry.addr,
                        id,
                        "-o",
                        out_file.to_str().unwrap(),
                    ],
                ),
                "get",
            );
            assert!(fs::read(&out_file).unwrap() == *bytes, "bytes of {id}");
        }
    }
    let read = |n: &WanNode| by_site(&net.status(&n.addr).unwrap());
    let (a, b) = (read(aware), read(blind));
    let near = |v: &[(String, u64)]| -> u64 {
        v.iter()
            .filter(|(s, _)| delay("a", s) <= 5)
            .map(|(_, b)| b)
            .sum()
    };
    let weighted =
        |v: &[(String, u64)]| -> u64 { v.iter().map(|(s, b)| b * u64::from(delay("a", s))).sum() };
    eprintln!("bytes read per site: site-aware {a:?}, site-blind {b:?}");
    let total = |v: &[(String, u64)]| -> u64 { v.iter().map(|(_, b)| b).sum() };
    assert!(total(&a) > 0 && total(&b) > 0);
    assert!(
        near(&a) > near(&b),
        "site-aware reads took {} bytes from sites a and b, site-blind {}",
        near(&a),
        near(&b)
    );
    assert!(
        weighted(&a) < weighted(&b),
        "site-aware byte-ms {} vs site-blind {}",
        weighted(&a),
        weighted(&b)
    );

    // Given a far and a near peer, the CLI uses the near one as its entry
    // peer: a get through "d0,a0" is read by a0 (its byte counts grow),
    // not by d0.
    let total_read = |n: &WanNode| -> u64 {
        by_site(&net.status(&n.addr).unwrap())
            .iter()
            .map(|(_, b)| b)
            .sum()
    };
    let d0 = nodes.iter().find(|n| n.site == "d").unwrap();
    let (aware_before, d0_before) = (total_read(aware), total_read(d0));
    let both = format!("{},{}", d0.addr, aware.addr);
    let out_file = files.join("nearest");
    ok(
        &cli(
            &net,
            &matrix,
            &[
                "get",
                "--peer",
                &both,
                &objects[0].0,
                "-o",
                out_file.to_str().unwrap(),
            ],
        ),
        "get through the nearest of two peers",
    );
    assert!(fs::read(&out_file).unwrap() == objects[0].1);
    assert!(
        total_read(aware) > aware_before,
        "a0 was not the entry peer"
    );
    assert_eq!(total_read(d0), d0_before, "d0 was the entry peer");

    // Site d goes dark: every object is still read whole (k = 3 of 5, at
    // most 2 at one site).
    let aware_addr = aware.addr.clone();
    for n in nodes.iter_mut().filter(|n| n.site == "d") {
        n.proc.kill();
    }
    for (id, bytes) in &objects {
        let out_file = files.join(format!("{id}.after"));
        ok(
            &cli(
                &net,
                &matrix,
                &[
                    "get",
                    "--peer",
                    &aware_addr,
                    id,
                    "-o",
                    out_file.to_str().unwrap(),
                ],
            ),
            "get with site d down",
        );
        assert!(fs::read(&out_file).unwrap() == *bytes, "bytes of {id}");
    }
}

/// The paper's comparison (`dynostore-sim wan`), short: every system
/// serves every client site, and under faults each survives what it
/// promises: DynoStore (3+2 over four sites) and three-way replication
/// lose nothing with two nodes or one whole site down, the central store
/// nothing survives the loss of its one server or its site.
#[test]
fn the_paper_comparison_runs_and_each_system_survives_its_promise() {
    use dynostore_sim::cluster::scenario::Workload;
    use dynostore_sim::wan::{compare, Args};
    if !on_path("s3s-fs") {
        panic!("s3s-fs is not installed: scripts/s3s-fs.sh (scripts/test.sh runs it)");
    }
    let args = Args {
        workload: Workload::Medical,
        seed: 3,
        objects: Some(4),
        size_scale: Some(0.05),
        bin: Some(bin()),
        json: true,
        no_faults: false,
        plot: None,
    };
    let r = compare(&args).unwrap();
    eprintln!("{}", dynostore_sim::wan::table(&r));
    assert_eq!((r.dynostore_k, r.dynostore_m), (3, 2));
    for system in ["dynostore", "central", "replication"] {
        let rows: Vec<_> = r.sites.iter().filter(|s| s.system == system).collect();
        assert_eq!(rows.len(), 4, "{system}: one row per client site");
        for row in rows {
            assert_eq!(row.put.failed + row.get.failed, 0, "{row:?}");
            assert!(row.get.count > 0 && row.get.p50_ms > 0.0, "{row:?}");
        }
    }
    let ok = |step: usize, system: &str| r.faults[step].read_ok[system];
    assert_eq!(r.faults.len(), 4);
    for step in [0, 1] {
        assert_eq!(ok(step, "dynostore"), 1.0, "{:?}", r.faults[step]);
        assert_eq!(ok(step, "replication"), 1.0, "{:?}", r.faults[step]);
        assert_eq!(ok(step, "central"), 0.0, "{:?}", r.faults[step]);
    }
    let site = &r.faults[3];
    assert_eq!(site.read_ok["dynostore"], 1.0, "{site:?}");
    assert_eq!(site.read_ok["replication"], 1.0, "{site:?}");
    assert_eq!(site.read_ok["central"], 0.0, "{site:?}");
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}
