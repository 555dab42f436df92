#!/usr/bin/env python3
"""Garage and DynoStore side by side on this machine, in one run (issue 15).

Starts three Garage nodes (replication 3, one zone each, configured with the
`garage` CLI) and a six-node DynoStore cluster (k=4, m=2, `dir:`
containers), and runs the same workload against both:

  * 1 GiB put, then get
  * N x 64 KiB put, then get, with T client threads

Both systems are driven through the same boto3 client (`--dynostore-client
s3`, the default): DynoStore's nodes then run as one certified site with
S3 on the first node, and the harness gets its S3 keys from a user token
(`token issue`, `s3 keys`). `--dynostore-client cli` drives DynoStore
through the `dynostore` CLI instead (one process per operation, which costs
the client a process start and a handshake per small object).

For every phase it prints wall time, CPU seconds of every server process
and of the client (from /proc/PID/stat utime + stime, and getrusage for
the CLI children), CPU per GiB or per object, p50/p99 per operation and
the ratios DynoStore / Garage. Peak RSS (VmHWM) of every server process is
printed at the end. CPU figures, not wall-clock throughput, are what to
compare on a contended machine.

Usage: side_by_side.py --dynostore BIN --garage BIN [--work DIR]
       [--big-mib 1024] [--small 1000] [--threads 16] [--json]
"""

import argparse
import concurrent.futures as cf
import json
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")
GIB = float(1 << 30)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_secs(pid):
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_for(what, cond, limit=120.0):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the last error is reported
            last = e
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what} (last: {last})")


def percentile(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    i = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[i]


class System:
    """A set of server processes and how to drive them."""

    name = "?"

    def __init__(self):
        self.procs = []

    def server_cpu(self):
        return sum(cpu_secs(p.pid) or 0.0 for p in self.procs)

    def peak_rss(self):
        return [peak_rss_mib(p.pid) for p in self.procs]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Garage(System):
    name = "garage"

    def __init__(self, binary, root, fsync):
        super().__init__()
        self.bin = binary
        self.root = root
        secret = secrets.token_hex(32)
        self.confs = []
        self.s3_port = None
        for i in range(3):
            d = os.path.join(root, f"g{i}")
            os.makedirs(d, exist_ok=True)
            rpc, s3, admin = free_port(), free_port(), free_port()
            if i == 0:
                self.s3_port = s3
            conf = os.path.join(d, "garage.toml")
            with open(conf, "w") as f:
                f.write(
                    f"""metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 3
metadata_fsync = {str(fsync).lower()}
data_fsync = {str(fsync).lower()}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"""
                )
            self.confs.append(conf)
            logf = open(os.path.join(d, "garage.log"), "w")
            env = dict(os.environ, RUST_LOG="warn")
            self.procs.append(
                subprocess.Popen(
                    [binary, "-c", conf, "server"], stdout=logf, stderr=logf, env=env
                )
            )
        ids = [
            wait_for(
                f"garage node {i} id",
                lambda c=c: self.cli(c, "node", "id", "-q").strip(),
            )
            for i, c in enumerate(self.confs)
        ]
        for other in ids[1:]:
            wait_for(f"garage connect {other[:16]}", lambda o=other: self.cli(self.confs[0], "node", "connect", o), limit=60)
        for i, full in enumerate(ids):
            self.cli(self.confs[0], "layout", "assign", "-z", f"zone{i}", "-c", "20G", full.split("@")[0][:16])
        self.cli(self.confs[0], "layout", "apply", "--version", "1")
        out = self.cli(self.confs[0], "key", "create", "bench-key")
        self.key_id = re.search(r"Key ID:\s*(\S+)", out).group(1)
        self.secret = re.search(r"Secret key:\s*(\S+)", out).group(1)
        wait_for("garage bucket", lambda: self.try_cli(self.confs[0], "bucket", "create", "bench"))
        self.cli(self.confs[0], "bucket", "allow", "--read", "--write", "--owner", "bench", "--key", "bench-key")

    def cli(self, conf, *args):
        out = subprocess.run([self.bin, "-c", conf, *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"garage {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def try_cli(self, conf, *args):
        try:
            self.cli(conf, *args)
            return True
        except RuntimeError as e:
            if "already exists" in str(e):
                return True
            raise


class Boto3Driver:
    """The client side for an S3 endpoint: one boto3 client, shared by threads."""

    def __init__(self, port, key_id, secret, threads, region="garage", create_bucket=False):
        import boto3
        from botocore.config import Config

        self.s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name=region,
            config=Config(
                max_pool_connections=threads + 4,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )
        self.note = "boto3"
        if create_bucket:
            wait_for("the bucket", lambda: self.s3.create_bucket(Bucket="bench") is not None, limit=60)
        wait_for("the S3 endpoint", self._ready, limit=60)

    def _ready(self):
        self.s3.list_objects_v2(Bucket="bench", MaxKeys=1)
        return True

    def client_cpu(self):
        return self_cpu()

    def put_file(self, key, path):
        self.s3.upload_file(path, "bench", key)
        return key

    def get_file(self, ref, path):
        self.s3.download_file("bench", ref, path)

    def put_bytes(self, key, data):
        self.s3.put_object(Bucket="bench", Key=key, Body=data)
        return key

    def get_bytes(self, ref):
        return self.s3.get_object(Bucket="bench", Key=ref)["Body"].read()


class DynoStore(System):
    name = "dynostore"

    def __init__(self, binary, root, extra=(), s3=False):
        super().__init__()
        self.bin = binary
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.key = os.path.join(root, "network.key")
        subprocess.run([binary, "network-key", self.key], check=True, capture_output=True)
        self.addrs = []
        self.s3_port = None
        if s3:
            # One site: S3 keys come from a user token, which needs a site
            # key, a federation file and certified nodes.
            self.site_key = os.path.join(root, "site.key")
            line = self._run("site", "init", "--site", "bench", "--key", self.site_key)
            self.fed = os.path.join(root, "federation.toml")
            with open(self.fed, "w") as f:
                f.write(f'name = "bench"\n[sites]\n{line.strip()}\n')
        first = None
        for i in range(6):
            d = os.path.join(root, f"n{i}")
            port = free_port()
            args = [
                binary, "init", "--dir", d,
                "--listen", f"/ip4/127.0.0.1/tcp/{port}",
                "--site", "bench" if s3 else f"site-{i % 3}",
                "--container", f"dir:{d}/shards:40GiB",
                "--network-key", self.key,
                "--announce-interval-ms", "1000",
                *extra,
            ]
            if s3 and i == 0:
                self.s3_port = free_port()
                args += ["--s3-listen", f"127.0.0.1:{self.s3_port}"]
            if first:
                args += ["--bootstrap", first]
            nid = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
            if s3:
                self._run("cert", "issue", "--site-key", self.site_key, "--federation", self.fed,
                          "--dir", d, "--capacity", "40GiB", "--days", "30")
            addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{nid}"
            first = first or addr
            self.addrs.append(addr)
            logf = open(os.path.join(d, "node.log"), "w")
            env = dict(os.environ, RUST_LOG="warn")
            env.pop("DYNOSTORE_NETWORK_KEY", None)
            self.procs.append(
                subprocess.Popen([binary, "node", "--dir", d], stdout=logf, stderr=logf, env=env)
            )
            wait_for(f"node {i} to listen", lambda d=d: os.path.exists(os.path.join(d, "node.addr")))
        wait_for("six members alive", self._all_alive, limit=120)
        if s3:
            token = os.path.join(root, "bench.token")
            self._run("token", "issue", "--site-key", self.site_key, "--federation", self.fed,
                      "--user", "bench", "--ops", "put,get,ls,rm", "--days", "1", "--out", token)
            keys = json.loads(self._run("s3", "keys", "--json", "--token", token,
                                        "--peer", self.addrs[0], "--network-key", self.key))
            self.key_id, self.secret = keys["access_key_id"], keys["secret_access_key"]

    def _run(self, *args):
        out = subprocess.run([self.bin, *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"dynostore {' '.join(args[:2])}: {out.stderr.strip()}")
        return out.stdout

    def _all_alive(self):
        out = subprocess.run(
            [self.bin, "status", "--json", "--peer", self.addrs[0], "--network-key", self.key],
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            return False
        st = json.loads(out.stdout)
        return sum(1 for m in st["members"] if m["state"] == "alive") == 6


class CliDriver:
    """The client side through the `dynostore` CLI (one process per operation)."""

    def __init__(self, system):
        self.sys = system
        self.note = "CLI, one process per operation"
        self.n = 0
        self.lock = threading.Lock()

    def client_cpu(self):
        return children_cpu()

    def _peer(self):
        with self.lock:
            self.n += 1
            return self.sys.addrs[self.n % len(self.sys.addrs)]

    def _run(self, *args):
        out = subprocess.run(
            [self.sys.bin, *args, "--peer", self._peer(), "--network-key", self.sys.key],
            capture_output=True,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode(errors="replace").strip())
        return out.stdout

    def put_file(self, key, path):
        return self._run("put", path).decode().strip()

    def get_file(self, ref, path):
        self._run("get", ref, "-o", path)

    def put_bytes(self, key, data):
        # The CLI reads files: one temporary file per object.
        with tempfile.NamedTemporaryFile(dir=self.sys.root, delete=False) as f:
            f.write(data)
        try:
            return self._run("put", f.name).decode().strip()
        finally:
            os.unlink(f.name)

    def get_bytes(self, ref):
        return self._run("get", ref, "-o", "-")


def phase(system, driver, label, work, total_bytes, ops=1):
    """Runs `work()`, returns its figures."""
    s0, c0, t0 = system.server_cpu(), driver.client_cpu(), time.monotonic()
    lat = work()
    wall = time.monotonic() - t0
    s1, c1 = system.server_cpu(), driver.client_cpu()
    server, client = s1 - s0, c1 - c0
    gib = total_bytes / GIB
    return {
        "phase": label,
        "wall_s": wall,
        "mb_s": total_bytes / 1e6 / wall,
        "ops_s": ops / wall,
        "server_cpu_s": server,
        "client_cpu_s": client,
        "server_cpu_s_per_gib": server / gib,
        "all_cpu_s_per_gib": (server + client) / gib,
        "server_cpu_ms_per_op": server * 1000.0 / ops,
        "client_cpu_ms_per_op": client * 1000.0 / ops,
        "p50_ms": percentile(lat, 50) * 1000.0,
        "p99_ms": percentile(lat, 99) * 1000.0,
    }


def run_workload(system, driver, big_path, big_bytes, small, threads, scratch):
    out = []
    refs = {}

    def big_put():
        t = time.monotonic()
        refs["big"] = driver.put_file("big", big_path)
        return [time.monotonic() - t]

    def big_get():
        dest = os.path.join(scratch, f"{system.name}-big.back")
        t = time.monotonic()
        driver.get_file(refs["big"], dest)
        d = time.monotonic() - t
        if os.path.getsize(dest) != big_bytes:
            raise SystemExit(f"{system.name}: 1 GiB get returned {os.path.getsize(dest)} bytes")
        os.unlink(dest)
        return [d]

    log(f"{system.name}: put of {big_bytes >> 20} MiB")
    out.append(phase(system, driver, "big put", big_put, big_bytes))
    log(f"{system.name}: get of {big_bytes >> 20} MiB")
    out.append(phase(system, driver, "big get", big_get, big_bytes))

    small_refs = [None] * len(small)

    def one_put(i):
        t = time.monotonic()
        small_refs[i] = driver.put_bytes(f"small/{i}", small[i])
        return time.monotonic() - t

    def one_get(i):
        t = time.monotonic()
        got = driver.get_bytes(small_refs[i])
        d = time.monotonic() - t
        if got != small[i]:
            raise SystemExit(f"{system.name}: small object {i} read back wrong")
        return d

    def many(f):
        with cf.ThreadPoolExecutor(threads) as ex:
            return list(ex.map(f, range(len(small))))

    n = len(small)
    size = len(small[0])
    log(f"{system.name}: {n} x {size >> 10} KiB put, {threads} threads")
    out.append(phase(system, driver, "64K put", lambda: many(one_put), n * size, n))
    log(f"{system.name}: {n} x {size >> 10} KiB get, {threads} threads")
    out.append(phase(system, driver, "64K get", lambda: many(one_get), n * size, n))
    return out


def table(rows_by_sys, notes, rss):
    names = list(rows_by_sys)
    lines = []
    lines.append("| phase | figure | " + " | ".join(names) + " | dynostore / garage |")
    lines.append("|---|---|" + "---|" * len(names) + "---|")
    figures = [
        ("big put", ["mb_s", "server_cpu_s_per_gib", "all_cpu_s_per_gib"]),
        ("big get", ["mb_s", "server_cpu_s_per_gib", "all_cpu_s_per_gib"]),
        ("64K put", ["ops_s", "server_cpu_ms_per_op", "client_cpu_ms_per_op", "p50_ms", "p99_ms"]),
        ("64K get", ["ops_s", "server_cpu_ms_per_op", "client_cpu_ms_per_op", "p50_ms", "p99_ms"]),
    ]
    for ph, keys in figures:
        for k in keys:
            vals = []
            for n in names:
                row = next(r for r in rows_by_sys[n] if r["phase"] == ph)
                vals.append(row[k])
            if len(names) < 2:
                lines.append(f"| {ph} | {k} | {vals[0]:.2f} | |")
                continue
            ratio = vals[names.index("dynostore")] / vals[names.index("garage")] if vals[names.index("garage")] else float("nan")
            lines.append(f"| {ph} | {k} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {ratio:.2f} |")
    lines.append("")
    for n in names:
        lines.append(f"- {n}: client = {notes[n]}; peak RSS per server process (MiB): "
                     + ", ".join(f"{x:.0f}" for x in rss[n] if x is not None))
    return "\n".join(lines)


def inline_sweep(args):
    """Server CPU per put and get, inline against striped, by object size:
    the measurement the inline threshold is chosen from."""
    sizes = [int(x) << 10 for x in args.sweep_kib.split(",")]
    work = args.work or tempfile.mkdtemp(prefix="inline-sweep-")
    rows = {}
    for mode, extra in (("inline", ["--inline-max-bytes", str(1 << 20)]), ("striped", ["--inline-max-bytes", "0"])):
        log(f"six DynoStore nodes, {mode}")
        d = DynoStore.__new__(DynoStore)
        System.__init__(d)
        try:
            d.__init__(args.dynostore, os.path.join(work, mode), extra)
            drv = CliDriver(d)
            for size in sizes:
                objs = [os.urandom(size) for _ in range(args.sweep_count)]
                refs = [None] * len(objs)

                def put(i, objs=objs, refs=refs):
                    t = time.monotonic()
                    refs[i] = drv.put_bytes(None, objs[i])
                    return time.monotonic() - t

                def get(i, objs=objs, refs=refs, size=size, mode=mode):
                    t = time.monotonic()
                    if drv.get_bytes(refs[i]) != objs[i]:
                        raise SystemExit(f"{mode}: object of {size} read back wrong")
                    return time.monotonic() - t

                def many(f, n=len(objs)):
                    with cf.ThreadPoolExecutor(args.threads) as ex:
                        return list(ex.map(f, range(n)))

                for label, f in (("put", put), ("get", get)):
                    r = phase(d, drv, label, lambda f=f: many(f), size * len(objs), len(objs))
                    rows[(mode, size, label)] = r
                    log(f"  {mode} {size >> 10} KiB {label}: {r['server_cpu_ms_per_op']:.2f} ms CPU/op, p50 {r['p50_ms']:.1f} ms")
        finally:
            d.stop()
    print("| size | op | inline: server CPU ms/op | striped: server CPU ms/op | inline / striped | inline p50 ms | striped p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        for label in ("put", "get"):
            a, b = rows[("inline", size, label)], rows[("striped", size, label)]
            print(f"| {size >> 10} KiB | {label} | {a['server_cpu_ms_per_op']:.2f} | {b['server_cpu_ms_per_op']:.2f} | "
                  f"{a['server_cpu_ms_per_op'] / b['server_cpu_ms_per_op']:.2f} | {a['p50_ms']:.1f} | {b['p50_ms']:.1f} |")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dynostore", required=True)
    ap.add_argument("--garage", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--small-kib", type=int, default=64)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--garage-fsync", choices=["on", "off"], default="on",
                    help="Garage's metadata_fsync and data_fsync (DynoStore syncs before every ack)")
    ap.add_argument("--dynostore-client", choices=["s3", "cli"], default="s3",
                    help="drive DynoStore through its S3 endpoint with the same boto3 client as Garage, or its CLI")
    ap.add_argument("--only", choices=["garage", "dynostore"], default=None,
                    help="run one system (for profiling it); the ratios column is then absent")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--inline-sweep", action="store_true",
                    help="only DynoStore: server CPU per put/get inline vs striped, by size")
    ap.add_argument("--sweep-kib", default="4,16,64,256,1024")
    ap.add_argument("--sweep-count", type=int, default=100)
    args = ap.parse_args()
    if args.inline_sweep:
        inline_sweep(args)
        return

    work = args.work or tempfile.mkdtemp(prefix="side-by-side-")
    os.makedirs(work, exist_ok=True)
    big_path = os.path.join(work, "big.bin")
    big_bytes = args.big_mib << 20
    log(f"writing {args.big_mib} MiB of random bytes")
    with open(big_path, "wb") as f:
        left = big_bytes
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n
    small = [os.urandom(args.small_kib << 10) for _ in range(args.small)]

    results, notes, rss = {}, {}, {}
    g = d = None
    try:
        if args.only != "dynostore":
            log("starting three Garage nodes")
            g = Garage.__new__(Garage)
            System.__init__(g)
            g.__init__(args.garage, os.path.join(work, "garage"), args.garage_fsync == "on")
            drv = Boto3Driver(g.s3_port, g.key_id, g.secret, args.threads)
            results["garage"] = run_workload(g, drv, big_path, big_bytes, small, args.threads, work)
            notes["garage"] = drv.note
            rss["garage"] = g.peak_rss()
            g.stop()
            g = None
        if args.only != "garage":
            log("starting six DynoStore nodes")
            d = DynoStore.__new__(DynoStore)
            System.__init__(d)
            if args.dynostore_client == "s3":
                d.__init__(args.dynostore, os.path.join(work, "dynostore"), s3=True)
                drv = Boto3Driver(d.s3_port, d.key_id, d.secret, args.threads,
                                  region="us-east-1", create_bucket=True)
            else:
                d.__init__(args.dynostore, os.path.join(work, "dynostore"))
                drv = CliDriver(d)
            results["dynostore"] = run_workload(d, drv, big_path, big_bytes, small, args.threads, work)
            notes["dynostore"] = drv.note
            rss["dynostore"] = d.peak_rss()
    finally:
        for s in (g, d):
            if s is not None:
                s.stop()
    if args.json:
        print(json.dumps({"results": results, "notes": notes, "peak_rss_mib": rss}, indent=2))
    else:
        print(table(results, notes, rss))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
