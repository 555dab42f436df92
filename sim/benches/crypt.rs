//! Client-side encryption (issue 14): put and get of one file through a
//! six-node loopback cluster, in clear and encrypted (`put --encrypt-to`,
//! `get -i`), in the same run; CPU seconds per GiB of every process.
//!
//! `cargo bench -p dynostore-sim --bench crypt` prints one markdown table:
//! for each operation the wall time, MB/s, the CLI's CPU seconds (polled
//! from `/proc/PID/stat` every 5 ms until it exits), the six nodes' CPU
//! seconds (`/proc`, before and after), and each per GiB of plaintext;
//! then the encrypted operations as ratios to the clear ones. The got
//! files are checked (clear: BLAKE3 = ID; decrypted: BLAKE3 = the
//! plaintext's). The encrypted put includes encrypting to a temporary file
//! and hashing it.
//!
//! Environment: `DYNOSTORE_BENCH_FILE_MB` (default 1024), `TMPDIR` (node
//! directories, the file, the temporary ciphertext). Without `--bench` (as
//! under `cargo test --benches`) it runs a 16 MiB smoke round.

mod common;

use std::fs;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use common::cluster::{dynostore, Cluster, ClusterSpec, ContainerKind};
use common::{budget, cpu_delta, cpu_secs, env_number, hash_file, mb_per_s, note, write_file, MIB};

const FILE_MB_ENV: &str = "DYNOSTORE_BENCH_FILE_MB";
const GIB: f64 = (1u64 << 30) as f64;

fn main() -> ExitCode {
    common::init_tracing();
    match run(std::env::args().any(|a| a == "--bench")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crypt bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One CLI operation's measurements.
#[derive(Debug)]
struct Op {
    what: &'static str,
    wall: Duration,
    client_cpu: f64,
    nodes_cpu: f64,
    stdout: String,
}

/// Runs `dynostore ARGS`, polling its CPU time until it exits.
fn cli_op(cluster: &Cluster, what: &'static str, args: &[&str], limit: Duration) -> Result<Op> {
    let before = cluster.cpu();
    let start = Instant::now();
    let mut child = dynostore(&cluster.key)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run dynostore {}", args.join(" ")))?;
    let pid = child.id();
    let mut cpu = 0.0f64;
    // The pipes are small (an ID, or an error): reading them after exit is fine.
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Some(c) = cpu_secs(pid) {
            cpu = c;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "dynostore {} did not finish within {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = start.elapsed();
    let nodes_cpu: f64 = cpu_delta(&before, &cluster.cpu()).iter().sum();
    let out = child.wait_with_output()?;
    if !status.success() {
        bail!(
            "dynostore {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Op {
        what,
        wall,
        client_cpu: cpu,
        nodes_cpu,
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

fn run(full: bool) -> Result<()> {
    let mb = if full {
        env_number(FILE_MB_ENV, 1024)?
    } else {
        16
    };
    let bytes = mb * MIB as u64;
    let work = tempfile::Builder::new()
        .prefix("dynostore-crypt-bench-")
        .tempdir()
        .context("work directory")?;
    let root = work.path();
    note(&format!("starting six nodes in {}", root.display()));
    let mut cluster = Cluster::start(
        root,
        &ClusterSpec {
            nodes: 6,
            container: ContainerKind::Dir,
            quota_mib: (mb * 4).max(1024),
            announce_ms: 500,
            suspect_ms: 5_000,
            down_ms: 20_000,
            init_args: Vec::new(),
        },
    )?;
    cluster.wait_converged()?;
    let file = root.join("input.bin");
    note(&format!("writing a {mb} MiB file"));
    let (plain_hash, _) = write_file(&file, bytes, 14)?;
    let key = root.join("me.key");
    let out = dynostore(&cluster.key).arg("keygen").arg(&key).output()?;
    if !out.status.success() {
        bail!("keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (a, b) = (cluster.nodes[0].addr.clone(), cluster.nodes[1].addr.clone());
    let limit = budget(bytes) * 2;
    let f = file.to_str().context("path")?;
    let back = root.join("back.bin");
    let back_s = back.to_str().context("path")?;
    let key_s = key.to_str().context("path")?;

    let mut ops = Vec::new();
    note("put in clear");
    let put = cli_op(&cluster, "put", &["put", "--peer", &a, f], limit)?;
    let id = put.stdout.clone();
    ops.push(put);
    note("get in clear");
    ops.push(cli_op(
        &cluster,
        "get",
        &["get", &id, "--peer", &b, "-o", back_s],
        limit,
    )?);
    if hash_file(&back)? != id {
        bail!("the clear get does not hash to its ID");
    }
    fs::remove_file(&back)?;
    note("put encrypted");
    let put = cli_op(
        &cluster,
        "put --encrypt-to",
        &["put", "--peer", &a, "--encrypt-to", &recipient, f],
        limit,
    )?;
    let eid = put.stdout.clone();
    ops.push(put);
    note("get -i");
    ops.push(cli_op(
        &cluster,
        "get -i",
        &["get", &eid, "--peer", &b, "-i", key_s, "-o", back_s],
        limit,
    )?);
    if hash_file(&back)? != plain_hash {
        bail!("the decrypted get differs from the plaintext");
    }
    fs::remove_file(&back)?;
    cluster.stop();

    let gib = bytes as f64 / GIB;
    println!(
        "\n### Client-side encryption: {mb} MiB through six nodes (k = 4, m = 2){}\n",
        if full {
            ""
        } else {
            " (smoke round, not a measurement)"
        }
    );
    println!("| operation | wall s | MB/s | client CPU s/GiB | nodes CPU s/GiB | all CPU s/GiB |");
    println!("|---|---|---|---|---|---|");
    for o in &ops {
        println!(
            "| {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
            o.what,
            o.wall.as_secs_f64(),
            mb_per_s(bytes, o.wall),
            o.client_cpu / gib,
            o.nodes_cpu / gib,
            (o.client_cpu + o.nodes_cpu) / gib
        );
    }
    let ratio = |enc: &Op, clear: &Op| {
        format!(
            "wall x{:.2}, client CPU x{:.2}, all CPU x{:.2}",
            enc.wall.as_secs_f64() / clear.wall.as_secs_f64(),
            enc.client_cpu / clear.client_cpu,
            (enc.client_cpu + enc.nodes_cpu) / (clear.client_cpu + clear.nodes_cpu)
        )
    };
    println!("\nencrypted put vs clear put: {}", ratio(&ops[2], &ops[0]));
    println!("encrypted get vs clear get: {}", ratio(&ops[3], &ops[1]));
    println!(
        "client CPU added by encryption: put +{:.2} s/GiB, get +{:.2} s/GiB",
        (ops[2].client_cpu - ops[0].client_cpu) / gib,
        (ops[3].client_cpu - ops[1].client_cpu) / gib
    );
    Ok(())
}
