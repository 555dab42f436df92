//! The web dashboard in a real headless browser: a cluster stores
//! objects, one node is killed, and the DOM of a surviving node's
//! dashboard (as Chromium renders it after the page's scripts ran) shows
//! that member down and the objects degraded, then healthy again after
//! repair. Also: `/v1/objects/ID/data` serves the object's exact bytes,
//! and a download aborted half way leaves the node serving.
//!
//! The browser is Debian's `chromium-headless-shell` (or `chromium`),
//! installed by `scripts/browser.sh`; `DYNOSTORE_BROWSER` names another
//! binary. Without one the test fails (it does not skip). Each look at the
//! page is one browser process: `--dump-dom` after the page's scripts
//! polled the API (`--virtual-time-budget`), repeated until the expected
//! state shows or a deadline passes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{addrs, cluster_with, data, wait_all_see, wait_until, Net, NodeProc};

const SEG: &str = "65536";
const OBJECTS: usize = 6;
/// Slow enough that repair takes several seconds after the victim is
/// declared down, so that the degraded state is on screen long enough for
/// a browser poll to see it.
const REPAIR_RATE: &str = "65536";
/// Virtual time the page runs before its DOM is read (two polls).
const PAGE_BUDGET_MS: u64 = 4_500;
/// Longest one browser run may take.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

/// The headless browser: `DYNOSTORE_BROWSER`, else Debian's
/// `chromium-headless-shell` or `chromium` on PATH.
fn browser() -> PathBuf {
    if let Some(b) = std::env::var_os("DYNOSTORE_BROWSER") {
        let b = PathBuf::from(b);
        assert!(
            b.is_file(),
            "DYNOSTORE_BROWSER={} is not a file: install Debian's chromium-headless-shell \
             with `bash scripts/browser.sh`, or point it at a Chromium",
            b.display()
        );
        return b;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium-headless-shell", "chromium"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no headless browser: install Debian's chromium-headless-shell with \
         `bash scripts/browser.sh` (scripts/test.sh does), or set DYNOSTORE_BROWSER"
    );
}

/// One browser run against `url` with `args`; returns its stdout.
fn run_browser(profile: &Path, url: &str, args: &[String]) -> Result<String, String> {
    std::fs::create_dir_all(profile).map_err(|e| e.to_string())?;
    let out_path = profile.with_extension("out");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let mut child = Command::new(browser())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={PAGE_BUDGET_MS}"))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the browser {}: {e}", browser().display()))?;
    let deadline = Instant::now() + BROWSER_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the browser took over {BROWSER_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the browser exited with {status}"));
    }
    Ok(text)
}

/// The page's DOM after its scripts ran, with a fresh profile.
fn dom(net: &Net, url: &str) -> Result<String, String> {
    let profile = tempfile::tempdir_in(net.root.path()).map_err(|e| e.to_string())?;
    let dom = run_browser(&profile.path().join("p"), url, &["--dump-dom".into()])?;
    if !dom.contains("data-updates=") {
        return Err(format!(
            "no dashboard in the DOM: {}",
            &dom[..dom.len().min(300)]
        ));
    }
    Ok(dom)
}

/// The opening tag that carries `attr` (e.g. `data-member="ID"`).
fn tag_with<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(attr)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of `name` in an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!(" {name}=\"");
    let at = tag.find(&pat)? + pat.len();
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// A member's state as the page shows it.
fn member_state<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    attr(
        tag_with(dom, &format!("data-member=\"{id}\""))?,
        "data-state",
    )
}

/// The number shown in the element with `id`.
fn number(dom: &str, id: &str) -> Option<u64> {
    let pat = format!("id=\"{id}\">");
    let at = dom.find(&pat)? + pat.len();
    dom[at..at + dom[at..].find('<')?].trim().parse().ok()
}

/// Whether the event list shows an event of `kind` about `subject`.
fn event_shown(dom: &str, kind: &str, subject: &str) -> bool {
    dom.split("<li ").skip(1).any(|li| {
        let tag = &li[..li.find('>').unwrap_or(li.len())];
        let tag = format!(" {tag}");
        attr(&tag, "data-kind") == Some(kind) && attr(&tag, "data-subject") == Some(subject)
    })
}

#[derive(Debug)]
struct Counts {
    healthy: u64,
    degraded: u64,
    at_risk: u64,
    lost: u64,
    objects: u64,
}

fn counts(dom: &str) -> Result<Counts, String> {
    let n = |id: &str| number(dom, id).ok_or(format!("no number in #{id} yet"));
    Ok(Counts {
        healthy: n("dur-healthy")?,
        degraded: n("dur-degraded")?,
        at_risk: n("dur-at-risk")?,
        lost: n("dur-lost")?,
        objects: n("dur-objects")?,
    })
}

/// One HTTP/1.1 GET; (status, body bytes). `Connection: close`.
fn http_get(addr: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of head")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("bad head {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = raw[end + 4..].to_vec();
    Ok((status, if chunked { dechunk(&body)? } else { body }))
}

fn dechunk(mut s: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = s.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size = std::str::from_utf8(&s[..nl]).map_err(|e| e.to_string())?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(out);
        }
        let rest = &s[nl + 2..];
        out.extend_from_slice(rest.get(..n).ok_or("short chunk")?);
        s = rest.get(n + 2..).ok_or("short chunk")?;
    }
}

fn admin(node: &NodeProc) -> String {
    std::fs::read_to_string(node.dir.join("admin.addr"))
        .unwrap_or_else(|e| panic!("{} has no admin.addr: {e}", node.name))
        .trim()
        .to_string()
}

fn json(addr: &str, path: &str) -> Result<Value, String> {
    let (status, body) = http_get(addr, path)?;
    if status != 200 {
        return Err(format!("{path}: HTTP {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// Where the screenshot goes: the workspace's target directory.
fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard.png")
}

#[test]
fn dashboard_shows_a_member_down_and_objects_degraded_then_repaired() {
    // Before any node starts: a missing browser fails here, plainly.
    let browser = browser();
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let nodes = cluster_with(
        &net,
        5,
        |i| vec![format!("dir:{}/n{i}/shards:256MiB", root.display())],
        &[
            "--default-k",
            "2",
            "--default-m",
            "2",
            "--repair-rate-bytes-per-sec",
            REPAIR_RATE,
        ],
    );
    let mut nodes = nodes;
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_all_see(
        &net,
        &addrs(&nodes),
        &id_refs,
        "alive",
        Duration::from_secs(60),
    );

    // Objects of seven 64 KiB segments, 2+2: each stripe has a copy on
    // four of the five nodes, so losing one node degrades nearly all.
    let files = net.root.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut objects = Vec::new();
    for i in 0..OBJECTS {
        let f = files.join(format!("scan-{i}.dcm"));
        let bytes = data(400_000 + i * 997, i as u32 + 40);
        std::fs::write(&f, &bytes).unwrap();
        let out = net.cli(&[
            "put",
            "--k",
            "2",
            "--m",
            "2",
            "--segment-size",
            SEG,
            "--peer",
            &nodes[0].addr(),
            f.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        objects.push((
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            bytes,
        ));
    }

    // Download through the admin API: the exact bytes; then one aborted
    // after its first bytes, after which the node still serves.
    let a0 = admin(&nodes[0]);
    let (id0, bytes0) = &objects[0];
    let (status, body) = http_get(&a0, &format!("/v1/objects/{id0}/data")).unwrap();
    assert_eq!(status, 200);
    assert!(
        body == *bytes0,
        "downloaded bytes differ ({} vs {})",
        body.len(),
        bytes0.len()
    );
    {
        let mut s = TcpStream::connect(&a0).unwrap();
        write!(s, "GET /v1/objects/{id0}/data HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut first = [0u8; 4096];
        let n = s.read(&mut first).unwrap();
        assert!(
            n > 0 && first.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&first[..n])
        );
        // Dropped here, mid-body.
    }
    let (id1, bytes1) = &objects[1];
    let (status, body) = http_get(&a0, &format!("/v1/objects/{id1}/data")).unwrap();
    assert!(
        status == 200 && body == *bytes1,
        "download after an abort: {status}"
    );
    assert_eq!(http_get(&a0, "/health").unwrap().0, 200);
    let unknown = "0".repeat(64);
    assert_eq!(
        http_get(&a0, &format!("/v1/objects/{unknown}/data"))
            .unwrap()
            .0,
        404
    );

    // The observer: a node that is not the victim and holds the most
    // manifest replicas (so its durability counts cover these objects).
    let victim = 4;
    let observer = (0..4)
        .max_by_key(|i| {
            json(&admin(&nodes[*i]), "/v1/durability")
                .ok()
                .and_then(|d| d["objects"].as_u64())
                .unwrap_or(0)
        })
        .unwrap();
    let url = format!("http://{}/", admin(&nodes[observer]));
    let victim_id = nodes[victim].id.clone();
    println!(
        "browser {}; observing {url} ({}); victim {}",
        browser.display(),
        nodes[observer].name,
        nodes[victim].name
    );

    // Before: the victim alive, every object held healthy.
    let before = wait_until(Duration::from_secs(90), "a healthy dashboard", || {
        let dom = dom(&net, &url)?;
        let c = counts(&dom)?;
        let st = member_state(&dom, &victim_id);
        if st == Some("alive") && c.objects > 0 && c.healthy == c.objects {
            Ok(c)
        } else {
            Err(format!("victim {st:?}, {c:?}"))
        }
    });
    println!("before the kill: {before:?}");

    nodes[victim].kill();
    let killed_at = Instant::now();

    // The victim shown down and the objects degraded (repair is slowed by
    // its rate limit, so this lasts several seconds).
    let during = wait_until(
        Duration::from_secs(90),
        "the victim down and objects degraded",
        || {
            let dom = dom(&net, &url)?;
            let c = counts(&dom)?;
            let st = member_state(&dom, &victim_id);
            if st == Some("down") && c.degraded > 0 {
                Ok(c)
            } else {
                Err(format!("victim {st:?}, {c:?}"))
            }
        },
    );
    println!(
        "{:.1} s after the kill: victim down, {during:?}",
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(during.lost, 0, "one node lost with m = 2 loses nothing");

    // A put the four members left cannot place (3 + 2 needs five) is
    // refused by the observer, and the page lists it.
    let f = files.join("too-wide.bin");
    std::fs::write(&f, data(10_000, 99)).unwrap();
    let out = net.cli(&[
        "put",
        "--k",
        "3",
        "--m",
        "2",
        "--peer",
        &nodes[observer].addr(),
        f.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "a 3+2 put with four members up succeeded"
    );

    // Then healthy again after repair, the victim still down, and the
    // event list names it and shows the refused put.
    let after = wait_until(
        Duration::from_secs(150),
        "every object healthy after repair",
        || {
            let dom = dom(&net, &url)?;
            let c = counts(&dom)?;
            let st = member_state(&dom, &victim_id);
            let down_event = event_shown(&dom, "member-down", &victim_id);
            let refused_event = dom.contains("data-kind=\"put-refused\"");
            if st == Some("down")
                && c.objects > 0
                && c.healthy == c.objects
                && c.degraded + c.at_risk + c.lost == 0
                && down_event
                && refused_event
            {
                Ok(c)
            } else {
                Err(format!(
                    "victim {st:?}, {c:?}, member-down event shown: {down_event}"
                ))
            }
        },
    );
    println!(
        "{:.1} s after the kill: repaired, {after:?}",
        killed_at.elapsed().as_secs_f64()
    );

    // The screenshot, of the repaired state.
    let shot = screenshot_path();
    if let Some(dir) = shot.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir_in(net.root.path()).unwrap();
    run_browser(
        &profile.path().join("p"),
        &url,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1500".into(),
        ],
    )
    .expect("screenshot");
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "not a real screenshot"
    );
    let shown = shot.canonicalize().unwrap_or(shot);
    println!("dashboard screenshot: {}", shown.display());
}
