//! The HTTP admin API of real nodes: `/metrics` counts what a workload
//! and a repair did, `/health` follows the members alive, and `/v1/...`
//! answers what the CLI's JSON says.
//!
//! The client is a plain HTTP/1.1 GET over `std::net::TcpStream`, and the
//! metrics are parsed as the Prometheus text format (a small parser below),
//! not grepped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{addrs, cluster_with, data, wait_all_see, wait_until, Net, NodeProc};

const SEG: &str = "65536";

/// A cluster of `n` nodes on directory containers whose `/health` judges
/// by a 2+1 geometry; waits until every node sees every other alive.
fn nodes(net: &Net, n: usize) -> Vec<NodeProc> {
    let root = net.root.path().to_path_buf();
    let nodes = cluster_with(
        net,
        n,
        |i| vec![format!("dir:{}/n{i}/shards:256MiB", root.display())],
        &["--default-k", "2", "--default-m", "1"],
    );
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));
    nodes
}

/// Stores `count` objects as 2+1 through `entry`; returns (id, path, size).
fn store(net: &Net, entry: &NodeProc, count: usize) -> Vec<(String, PathBuf, usize)> {
    let dir = net.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    (0..count)
        .map(|i| {
            let f = dir.join(format!("obj{i}.bin"));
            let size = 150_000 + i * 101;
            std::fs::write(&f, data(size, i as u32 + 7)).unwrap();
            let out = net.cli(&[
                "put",
                "--k",
                "2",
                "--m",
                "1",
                "--segment-size",
                SEG,
                "--peer",
                &entry.addr(),
                f.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "put: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                f,
                size,
            )
        })
        .collect()
}

/// The admin API address a running node wrote.
pub(crate) fn admin(node: &NodeProc) -> String {
    let text = std::fs::read_to_string(node.dir.join("admin.addr"))
        .unwrap_or_else(|e| panic!("{} has no admin.addr: {e}", node.name));
    text.trim().to_string()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request (`Connection: close`), with `extra` header lines.
fn request(addr: &str, method: &str, path: &str, extra: &str) -> Result<Reply, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn get(addr: &str, path: &str) -> Result<Reply, String> {
    request(addr, "GET", path, "")
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("bad chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or("short chunk")?);
        s = rest.get(n + 2..).ok_or("short chunk")?;
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus / OpenMetrics text format: comment lines are
/// skipped, every other line must be `name{labels} value [timestamp]`,
/// and the exposition must end with `# EOF`.
fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    if text.lines().last() != Some("# EOF") {
        return Err("the exposition does not end with # EOF".into());
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = &line[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(bad("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut key = String::new();
            let end;
            loop {
                let Some((i, c)) = chars.next() else {
                    return Err(bad("unterminated labels"));
                };
                match c {
                    '}' if key.is_empty() => {
                        end = i + 1;
                        break;
                    }
                    ',' if key.is_empty() => {}
                    '=' => {
                        if chars.next().map(|(_, c)| c) != Some('"') {
                            return Err(bad("label value not quoted"));
                        }
                        let mut value = String::new();
                        loop {
                            match chars.next() {
                                Some((_, '"')) => break,
                                Some((_, '\\')) => match chars.next() {
                                    Some((_, 'n')) => value.push('\n'),
                                    Some((_, c)) => value.push(c),
                                    None => return Err(bad("unterminated escape")),
                                },
                                Some((_, c)) => value.push(c),
                                None => return Err(bad("unterminated label value")),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                    _ => return Err(bad("bad label")),
                }
            }
            rest = &r[end..];
        }
        let mut fields = rest.split_whitespace();
        let value = match fields.next().ok_or_else(|| bad("no value"))? {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| bad("bad value"))?,
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The sum of `name` over the samples whose labels include `with`.
pub(crate) fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

pub(crate) fn scrape(node: &NodeProc) -> Result<Vec<Sample>, String> {
    let r = get(&admin(node), "/metrics")?;
    if r.status != 200 {
        return Err(format!("/metrics answered {}: {}", r.status, r.body));
    }
    parse_metrics(&r.body)
}

fn stat(net: &Net, peer: &NodeProc, id: &str) -> Result<Value, String> {
    cli_json(net, &["stat", "--json", id, "--peer", &peer.addr()])
}

fn cli_json(net: &Net, args: &[&str]) -> Result<Value, String> {
    let out = net.cli(args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[test]
fn metrics_parser_reads_the_text_format() {
    let text = "# HELP a A.\n# TYPE a counter\na_total{op=\"put\",x=\"q\\\"\\\\\"} 3\nb 1.5e3\nc_bucket{le=\"+Inf\"} 2\n# EOF\n";
    let s = parse_metrics(text).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].labels["x"], "q\"\\");
    assert_eq!(sum(&s, "a_total", &[("op", "put")]), 3.0);
    assert_eq!(sum(&s, "b", &[]), 1500.0);
    assert!(parse_metrics("a 1\n").is_err(), "no # EOF");
    assert!(parse_metrics("a{op=put} 1\n# EOF\n").is_err(), "unquoted");
}

#[test]
fn metrics_count_the_workload_and_the_repair() {
    let net = Net::new();
    let mut nodes = nodes(&net, 4);
    let objects = store(&net, &nodes[0], 6);
    let put_bytes: usize = objects.iter().map(|(_, _, size)| size).sum();

    let m = scrape(&nodes[0]).unwrap();
    let received = sum(&m, "dynostore_client_received_bytes_total", &[]);
    assert!(
        received >= put_bytes as f64,
        "the entry node counted {received} bytes put, the objects have {put_bytes}"
    );
    let puts = sum(
        &m,
        "dynostore_operations_total",
        &[("op", "put"), ("outcome", "ok")],
    );
    assert_eq!(puts, objects.len() as f64, "puts counted ok");
    let timed = sum(
        &m,
        "dynostore_operation_duration_seconds_count",
        &[("op", "put")],
    );
    assert_eq!(timed, objects.len() as f64, "puts timed");
    assert_eq!(sum(&m, "dynostore_members", &[("state", "alive")]), 4.0);
    let shards: f64 = nodes
        .iter()
        .map(|n| sum(&scrape(n).unwrap(), "dynostore_shards_stored", &[]))
        .sum();
    assert!(shards > 0.0, "no shards stored anywhere");
    // libp2p's metrics share the registry.
    assert!(
        m.iter().any(|s| s.name.starts_with("libp2p_")),
        "no libp2p metrics"
    );

    // A get counts bytes out.
    let back = net.root.path().join("back.bin");
    let out = net.cli(&[
        "get",
        &objects[0].0,
        "--peer",
        &nodes[0].addr(),
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = scrape(&nodes[0]).unwrap();
    assert!(sum(&m, "dynostore_client_sent_bytes_total", &[]) >= objects[0].2 as f64);

    nodes[3].kill();
    let alive = &nodes[..3];
    wait_until(
        Duration::from_secs(180),
        "every object to be healthy again",
        || {
            for (id, _, _) in &objects {
                let s = stat(&net, &nodes[1], id)?;
                if s["health"] != "healthy" {
                    return Err(format!("{id} is {}", s["health"]));
                }
            }
            Ok(())
        },
    );
    let scrapes: Vec<Vec<Sample>> = alive.iter().map(|n| scrape(n).unwrap()).collect();
    let total = |name: &str| -> f64 { scrapes.iter().map(|m| sum(m, name, &[])).sum() };
    let rebuilt = total("dynostore_repair_rebuilt_shards_total");
    assert!(rebuilt > 0.0, "no shard rebuilt on any node");
    assert!(total("dynostore_repair_rebuilt_bytes_total") > 0.0);
    // Reed-Solomon reads k shards per shard rebuilt.
    assert!(
        total("dynostore_repair_read_bytes_total") >= total("dynostore_repair_rebuilt_bytes_total"),
        "repair read less than it rebuilt"
    );
    assert!(total("dynostore_repair_rounds_total") > 0.0);
    for (n, m) in alive.iter().zip(&scrapes) {
        assert_eq!(
            sum(m, "dynostore_members", &[("state", "down")]),
            1.0,
            "{} does not count the killed node down",
            n.name
        );
    }
}

#[test]
fn health_follows_the_members_alive() {
    let net = Net::new();
    let mut nodes = nodes(&net, 3);
    let addr = admin(&nodes[0]);
    let addr = addr.as_str();
    let health = |want: u16| {
        move || -> Result<String, String> {
            let r = get(addr, "/health")?;
            if r.status == want {
                Ok(r.body)
            } else {
                Err(format!("{}: {}", r.status, r.body.trim()))
            }
        }
    };
    wait_until(Duration::from_secs(60), "/health 200", health(200));
    nodes[2].kill();
    let reason = wait_until(
        Duration::from_secs(60),
        "/health 503 with a member gone",
        health(503),
    );
    assert!(
        reason.contains("a 2+1 stripe needs 3"),
        "the reason does not say why: {reason}"
    );
    nodes[2].start();
    wait_until(
        Duration::from_secs(90),
        "/health 200 after the member returned",
        health(200),
    );
}

#[test]
fn admin_api_agrees_with_the_cli() {
    let net = Net::new();
    let nodes = nodes(&net, 3);
    let objects = store(&net, &nodes[0], 2);
    let addr = admin(&nodes[1]);
    let peer = nodes[1].addr();

    let r = get(&addr, "/v1/objects").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let api: Value = serde_json::from_str(&r.body).unwrap();
    let cli = cli_json(&net, &["ls", "--json", "--peer", &peer]).unwrap();
    assert_eq!(api, cli, "/v1/objects and ls --json differ");
    assert_eq!(api.as_array().map(Vec::len), Some(objects.len()));

    for (id, _, _) in &objects {
        let r = get(&addr, &format!("/v1/objects/{id}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let api: Value = serde_json::from_str(&r.body).unwrap();
        let cli = stat(&net, &nodes[1], id).unwrap();
        assert_eq!(api, cli, "/v1/objects/{id} and stat --json differ");
    }

    let r = get(&addr, "/v1/status").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let api: Value = serde_json::from_str(&r.body).unwrap();
    let cli = net.status(&peer).unwrap();
    // The same fields; the clocks (last seen, sequence numbers, load) move.
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&api), keys(&cli));
    for k in ["node", "containers", "shards_stored"] {
        assert_eq!(api[k], cli[k], "{k}");
    }
    let members = |v: &Value| -> BTreeSet<(String, String, String)> {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    m["site"].as_str().unwrap().to_string(),
                    m["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(members(&api), members(&cli));
    assert_eq!(keys(&api["members"][0]), keys(&cli["members"][0]));
    assert_eq!(keys(&api["repair"]), keys(&cli["repair"]));

    // Bad input: a clear 400, 404, 405, and no harm done.
    let r = get(&addr, "/v1/objects/not-an-id").unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let e: Value = serde_json::from_str(&r.body).unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("is not an object ID"),
        "{e}"
    );
    let unknown = "0".repeat(64);
    assert_eq!(
        get(&addr, &format!("/v1/objects/{unknown}"))
            .unwrap()
            .status,
        404
    );
    assert_eq!(get(&addr, "/v1/nothing").unwrap().status, 404);
    assert_eq!(get(&addr, "/index.html").unwrap().status, 404);
    // `/` is the web dashboard (tests/it/dashboard.rs drives it).
    let page = get(&addr, "/").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("dashboard.js"), "{}", page.body);
    let r = request(&addr, "POST", "/v1/objects", "Content-Length: 0\r\n").unwrap();
    assert_eq!(r.status, 405);
    let r = request(&addr, "GET", "/health", "Content-Length: 100000000\r\n").unwrap();
    assert_eq!(r.status, 413);
    let huge = format!("X-Pad: {}\r\n", "a".repeat(64 * 1024));
    // A refusal, or the connection closed (also a refusal).
    if let Ok(r) = request(&addr, "GET", "/health", &huge) {
        assert!(r.status == 431 || r.status == 400, "{}", r.status);
    }
    assert_eq!(get(&addr, "/health").unwrap().status, 200, "still serving");
    let r = get(&addr, "/metrics").unwrap();
    assert_eq!(
        r.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let m = parse_metrics(&r.body).unwrap();
    assert_eq!(
        sum(
            &m,
            "dynostore_admin_requests_total",
            &[("route", "object"), ("status", "400")]
        ),
        1.0
    );
    assert!(
        sum(
            &m,
            "dynostore_operations_total",
            &[("op", "stat"), ("outcome", "ok")]
        ) >= 2.0
    );
}
