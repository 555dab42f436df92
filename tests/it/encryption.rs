//! Client-side encryption through real nodes: `put --encrypt-to`, `get -i`
//! (right identity, wrong identity, a plaintext range, two holders down),
//! `get --raw` opened by Debian's `age`, a file encrypted by `age` put as
//! is, `share`, and a scan of every file of every node for plaintext.
//!
//! Needs the `age` tool (`bash scripts/age.sh`, which `scripts/test.sh` runs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{addrs, bin, cluster, data, wait_all_see, Net, NodeProc};

/// Small segments, so that an object spans several stripes.
const SEG: usize = 64 * 1024;
/// The window no shard may contain a copy of.
const WINDOW: usize = 4096;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what}: {}", text(&o));
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn age_tool(args: &[&str]) -> Output {
    Command::new("age")
        .args(args)
        .output()
        .expect("run age (install it with: bash scripts/age.sh)")
}

fn put_json(net: &Net, peer: &NodeProc, file: &Path, extra: &[&str]) -> Value {
    let seg = SEG.to_string();
    let addr = peer.addr();
    let mut args = vec!["put", "--json", "--segment-size", &seg, "--peer", &addr];
    args.extend_from_slice(extra);
    args.push(file.to_str().unwrap());
    let out = ok(net.cli(&args), &format!("put {}", file.display()));
    serde_json::from_slice(&out.stdout).expect("put --json prints one object")
}

fn get(net: &Net, peer: &NodeProc, id: &str, dest: &Path, extra: &[&str]) -> Output {
    let addr = peer.addr();
    let mut args = vec!["get", id, "--peer", &addr, "-o", dest.to_str().unwrap()];
    args.extend_from_slice(extra);
    net.cli(&args)
}

fn partial(dest: &Path) -> PathBuf {
    let mut n = dest.file_name().unwrap().to_os_string();
    n.push(".partial");
    dest.with_file_name(n)
}

/// Finds 4 KiB windows of a plaintext in other bytes: a rolling hash of
/// every window of the plaintext, checked byte for byte on a hit.
struct Windows<'a> {
    plain: &'a [u8],
    /// Hash of the window -> its offsets in the plaintext.
    hashes: HashMap<u64, Vec<usize>>,
    /// BASE^(WINDOW-1), to roll the oldest byte out.
    top: u64,
}

const BASE: u64 = 0x100_0000_01b3;

impl<'a> Windows<'a> {
    fn new(plain: &'a [u8]) -> Windows<'a> {
        let top = (1..WINDOW).fold(1u64, |a, _| a.wrapping_mul(BASE));
        let mut hashes: HashMap<u64, Vec<usize>> = HashMap::new();
        Self::roll(plain, top, |off, h| hashes.entry(h).or_default().push(off));
        Windows { plain, hashes, top }
    }

    fn roll(bytes: &[u8], top: u64, mut f: impl FnMut(usize, u64)) {
        if bytes.len() < WINDOW {
            return;
        }
        let mut h = bytes[..WINDOW].iter().fold(0u64, |h, &b| {
            h.wrapping_mul(BASE).wrapping_add(u64::from(b) + 1)
        });
        f(0, h);
        for i in WINDOW..bytes.len() {
            h = h
                .wrapping_sub((u64::from(bytes[i - WINDOW]) + 1).wrapping_mul(top))
                .wrapping_mul(BASE)
                .wrapping_add(u64::from(bytes[i]) + 1);
            f(i + 1 - WINDOW, h);
        }
    }

    /// The first (file offset, plaintext offset) of a plaintext window in `bytes`.
    fn find_in(&self, bytes: &[u8]) -> Option<(usize, usize)> {
        let mut found = None;
        Self::roll(bytes, self.top, |off, h| {
            if found.is_some() {
                return;
            }
            if let Some(cands) = self.hashes.get(&h) {
                for &p in cands {
                    if bytes[off..off + WINDOW] == self.plain[p..p + WINDOW] {
                        found = Some((off, p));
                        return;
                    }
                }
            }
        });
        found
    }
}

/// Every file under `root`.
fn files_under(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Scans every file of every node's directory (shard containers, index,
/// manifests, logs); returns (files scanned, bytes scanned, hits).
fn scan_nodes(nodes: &[NodeProc], plain: &[u8]) -> (usize, u64, Vec<String>) {
    let w = Windows::new(plain);
    let mut files = Vec::new();
    for n in nodes {
        files_under(&n.dir, &mut files);
    }
    let (mut bytes, mut hits) = (0u64, Vec::new());
    for f in &files {
        let Ok(b) = std::fs::read(f) else { continue };
        bytes += b.len() as u64;
        if let Some((off, p)) = w.find_in(&b) {
            hits.push(format!(
                "{} at {off} holds plaintext bytes {p}..{}",
                f.display(),
                p + WINDOW
            ));
        }
    }
    (files.len(), bytes, hits)
}

fn shard_files(nodes: &[NodeProc]) -> usize {
    nodes
        .iter()
        .map(|n| {
            let mut v = Vec::new();
            files_under(&n.dir.join("shards"), &mut v);
            v.len()
        })
        .sum()
}

#[test]
fn encrypted_objects_round_trip_share_interoperate_and_leave_no_plaintext() {
    let net = Net::new();
    let root = net.root.path().to_path_buf();
    let mut nodes = cluster(&net, 6, |i| {
        vec![format!("dir:{}/n{i}/shards:256MiB", root.display())]
    });
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    wait_all_see(&net, &addrs(&nodes), &ids, "alive", Duration::from_secs(60));

    // Identities: keygen writes 0600 and prints the recipient; never overwrites.
    let key = |name: &str| -> (PathBuf, String) {
        let p = root.join(format!("{name}.key"));
        let out = ok(net.cli(&["keygen", p.to_str().unwrap()]), "keygen");
        let r = stdout(&out);
        assert!(r.starts_with("age1"), "keygen printed {r:?}");
        (p, r)
    };
    let (alice, alice_r) = key("alice");
    let (bob, bob_r) = key("bob");
    let (carol, _) = key("carol");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&alice).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "identity file mode {mode:o}");
        let again = net.cli(&["keygen", alice.to_str().unwrap()]);
        assert!(!again.status.success(), "keygen overwrote a key");
    }

    // A plaintext with no repeated 4 KiB window (xorshift32), 3.5 segments.
    let plain = data(3 * SEG + SEG / 2 + 123, 0x5eed);
    let plain_path = root.join("scan.dcm");
    std::fs::write(&plain_path, &plain).unwrap();

    let put = put_json(&net, &nodes[0], &plain_path, &["--encrypt-to", &alice_r]);
    let id = put["id"].as_str().unwrap().to_string();
    assert_eq!(put["encrypted"], true);
    assert_eq!(put["name"], "scan.dcm");
    assert_ne!(
        id,
        blake3::hash(&plain).to_hex().to_string(),
        "the ID must be the ciphertext's"
    );
    let size = put["size"].as_u64().unwrap();
    assert!(size > plain.len() as u64, "ciphertext {size} bytes");

    // The right identity: byte-exact, no partial left, the ID verified.
    let dest = root.join("back.dcm");
    ok(
        get(
            &net,
            &nodes[1],
            &id,
            &dest,
            &["-i", alice.to_str().unwrap()],
        ),
        "get -i",
    );
    assert!(
        std::fs::read(&dest).unwrap() == plain,
        "decrypted bytes differ"
    );
    assert!(!partial(&dest).exists());

    // A wrong identity: refused with a clear message, nothing written.
    let wrong = root.join("wrong.dcm");
    let out = get(&net, &nodes[2], &id, &wrong, &["-i", bob.to_str().unwrap()]);
    assert!(!out.status.success(), "a wrong identity decrypted");
    assert!(text(&out).contains("wrong identity"), "{}", text(&out));
    assert!(!wrong.exists(), "output written for a wrong identity");
    assert!(
        !partial(&wrong).exists(),
        "partial left for a wrong identity"
    );

    // An unknown object with -i: the fetch's error, not a decryption one.
    let unknown = blake3::hash(b"never stored").to_hex().to_string();
    let out = get(
        &net,
        &nodes[2],
        &unknown,
        &wrong,
        &["-i", alice.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("no manifest"), "{}", text(&out));
    assert!(!wrong.exists() && !partial(&wrong).exists());

    // A plaintext range across a 64 KiB chunk boundary of age's format.
    let range = root.join("range.bin");
    let (off, len) = (65_000usize, 70_000usize);
    ok(
        get(
            &net,
            &nodes[3],
            &id,
            &range,
            &[
                "-i",
                alice.to_str().unwrap(),
                "--offset",
                &off.to_string(),
                "--length",
                &len.to_string(),
            ],
        ),
        "get a range",
    );
    assert!(std::fs::read(&range).unwrap() == plain[off..off + len]);
    let past = get(
        &net,
        &nodes[3],
        &id,
        &root.join("past.bin"),
        &[
            "-i",
            alice.to_str().unwrap(),
            "--offset",
            &plain.len().to_string(),
            "--length",
            "1",
        ],
    );
    assert!(!past.status.success(), "a range past the end succeeded");
    assert!(!root.join("past.bin").exists() && !partial(&root.join("past.bin")).exists());

    // Raw: the stored age file, which Debian's age opens.
    let raw = root.join("raw.age");
    ok(get(&net, &nodes[4], &id, &raw, &["--raw"]), "get --raw");
    let raw_bytes = std::fs::read(&raw).unwrap();
    assert_eq!(blake3::hash(&raw_bytes).to_hex().to_string(), id);
    assert!(raw_bytes.starts_with(b"age-encryption.org/v1\n"));
    let by_age = root.join("by-age.dcm");
    ok(
        age_tool(&[
            "-d",
            "-i",
            alice.to_str().unwrap(),
            "-o",
            by_age.to_str().unwrap(),
            raw.to_str().unwrap(),
        ]),
        "age -d of the raw object",
    );
    assert!(std::fs::read(&by_age).unwrap() == plain);

    // A file encrypted by Debian's age, put as is, opened by get -i.
    let other = data(100_000, 77);
    let other_path = root.join("other.bin");
    std::fs::write(&other_path, &other).unwrap();
    let other_age = root.join("other.bin.age");
    ok(
        age_tool(&[
            "-r",
            &alice_r,
            "-o",
            other_age.to_str().unwrap(),
            other_path.to_str().unwrap(),
        ]),
        "age -r",
    );
    let put2 = put_json(&net, &nodes[1], &other_age, &[]);
    assert_eq!(put2["encrypted"], false);
    let id2 = put2["id"].as_str().unwrap().to_string();
    let back2 = root.join("other.back");
    ok(
        get(
            &net,
            &nodes[5],
            &id2,
            &back2,
            &["-i", alice.to_str().unwrap()],
        ),
        "get -i of age's file",
    );
    assert!(std::fs::read(&back2).unwrap() == other);
    // A plain object with -i: refused, nothing written.
    let not_enc = root.join("not-enc");
    let out = get(
        &net,
        &nodes[0],
        &id2,
        &not_enc,
        &["-i", bob.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(!not_enc.exists() && !partial(&not_enc).exists());

    // An age file altered before it was put (a flipped payload byte, a
    // missing last byte) is a valid object whose ID matches: age's
    // authentication refuses it, and nothing is kept.
    let age_bytes = std::fs::read(&other_age).unwrap();
    let mut flipped = age_bytes.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 1;
    for (name, bytes) in [
        ("flipped.age", flipped),
        ("truncated.age", age_bytes[..age_bytes.len() - 1].to_vec()),
    ] {
        let p = root.join(name);
        std::fs::write(&p, &bytes).unwrap();
        let idb = put_json(&net, &nodes[1], &p, &[])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let dest = root.join(format!("{name}.out"));
        let out = get(
            &net,
            &nodes[2],
            &idb,
            &dest,
            &["-i", alice.to_str().unwrap()],
        );
        assert!(!out.status.success(), "{name} decrypted");
        assert!(
            text(&out).contains("failed decryption"),
            "{name}: {}",
            text(&out)
        );
        assert!(
            !dest.exists() && !partial(&dest).exists(),
            "{name} left output"
        );
    }

    // Share with bob, without re-uploading: a small share object.
    let out = ok(
        net.cli(&[
            "share",
            &id,
            "--to",
            &bob_r,
            "-i",
            alice.to_str().unwrap(),
            "--json",
            "--peer",
            &nodes[2].addr(),
        ]),
        "share",
    );
    let sh: Value = serde_json::from_slice(&out.stdout).unwrap();
    let share_id = sh["id"].as_str().unwrap().to_string();
    assert_eq!(sh["target"], id.as_str());
    let st = ok(
        net.cli(&["stat", "--json", &share_id, "--peer", &nodes[0].addr()]),
        "stat share",
    );
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(
        st["size"].as_u64().unwrap() < 1024,
        "a share is small, not a copy: {}",
        st["size"]
    );
    let bob_back = root.join("bob.dcm");
    ok(
        get(
            &net,
            &nodes[3],
            &share_id,
            &bob_back,
            &["-i", bob.to_str().unwrap()],
        ),
        "bob reads the share",
    );
    assert!(std::fs::read(&bob_back).unwrap() == plain);
    let carol_out = root.join("carol.dcm");
    let out = get(
        &net,
        &nodes[3],
        &share_id,
        &carol_out,
        &["-i", carol.to_str().unwrap()],
    );
    assert!(
        !out.status.success() && text(&out).contains("wrong identity"),
        "{}",
        text(&out)
    );
    assert!(!carol_out.exists() && !partial(&carol_out).exists());
    // Bob cannot open the original itself (his stanza is only in the share).
    let out = get(
        &net,
        &nodes[3],
        &id,
        &carol_out,
        &["-i", bob.to_str().unwrap()],
    );
    assert!(!out.status.success());
    // The share, raw: a standard age file for bob.
    let share_raw = root.join("share.age");
    ok(
        get(&net, &nodes[4], &share_id, &share_raw, &["--raw"]),
        "get --raw of a share",
    );
    let by_age = root.join("share-by-age.dcm");
    ok(
        age_tool(&[
            "-d",
            "-i",
            bob.to_str().unwrap(),
            "-o",
            by_age.to_str().unwrap(),
            share_raw.to_str().unwrap(),
        ]),
        "age -d of a share",
    );
    assert!(std::fs::read(&by_age).unwrap() == plain);

    // The per-user default: DYNOSTORE_ENCRYPT_TO, and --plaintext to opt out.
    let dflt = root.join("default.bin");
    std::fs::write(&dflt, data(5000, 9)).unwrap();
    let env_put = |extra: &[&str]| -> Value {
        let seg = SEG.to_string();
        let mut args = vec!["put", "--json", "--segment-size", &seg, "--peer"];
        let addr = nodes[0].addr();
        args.push(&addr);
        args.extend_from_slice(extra);
        args.push(dflt.to_str().unwrap());
        let out = Command::new(bin())
            .args(&args)
            .env("DYNOSTORE_NETWORK_KEY", &net.key)
            .env("DYNOSTORE_ENCRYPT_TO", &alice_r)
            .output()
            .unwrap();
        serde_json::from_slice(&ok(out, "put with DYNOSTORE_ENCRYPT_TO").stdout).unwrap()
    };
    assert_eq!(env_put(&[])["encrypted"], true);
    let clear = env_put(&["--plaintext"]);
    assert_eq!(clear["encrypted"], false);
    assert_eq!(
        clear["id"].as_str().unwrap(),
        blake3::hash(&std::fs::read(&dflt).unwrap())
            .to_hex()
            .to_string()
    );

    // No file on any node holds a 4 KiB window of the plaintext.
    let n_shards = shard_files(&nodes);
    assert!(n_shards >= 6, "found {n_shards} shard files");
    let (files, bytes, hits) = scan_nodes(&nodes, &plain);
    assert!(
        bytes > 3 * plain.len() as u64 / 2,
        "scanned only {bytes} bytes in {files} files"
    );
    assert!(hits.is_empty(), "plaintext on a node: {hits:#?}");
    // The scan can fail: the same scan finds a plaintext put in clear.
    let clear_plain = data(2 * SEG, 0xc1ea);
    let clear_path = root.join("clear.bin");
    std::fs::write(&clear_path, &clear_plain).unwrap();
    put_json(&net, &nodes[0], &clear_path, &["--plaintext"]);
    let (_, _, hits) = scan_nodes(&nodes, &clear_plain);
    assert!(!hits.is_empty(), "the scan missed a plaintext object");

    // Two holders down: a degraded read still decrypts, byte-exact.
    nodes[4].kill();
    nodes[5].kill();
    let survivors = addrs(&nodes[..4]);
    wait_all_see(
        &net,
        &survivors,
        &[&nodes[4].id, &nodes[5].id],
        "suspect",
        Duration::from_secs(30),
    );
    let degraded = root.join("degraded.dcm");
    ok(
        get(
            &net,
            &nodes[1],
            &id,
            &degraded,
            &["-i", alice.to_str().unwrap()],
        ),
        "get -i with two holders down",
    );
    assert!(std::fs::read(&degraded).unwrap() == plain);
    let bob_degraded = root.join("bob-degraded.dcm");
    ok(
        get(
            &net,
            &nodes[2],
            &share_id,
            &bob_degraded,
            &["-i", bob.to_str().unwrap()],
        ),
        "share with two holders down",
    );
    assert!(std::fs::read(&bob_degraded).unwrap() == plain);
}
