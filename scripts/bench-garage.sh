#!/usr/bin/env bash
# Garage and DynoStore side by side (issue 15): three Garage nodes
# (replication 3, one zone each) and six DynoStore nodes (k=4, m=2) on this
# machine, the same workload through one Python harness: 1 GiB put/get and
# 1,000 x 64 KiB put/get with 16 threads; CPU seconds of every process, peak
# RSS, p50/p99 and the ratios. Both are driven with the same boto3 client
# (DynoStore through the S3 endpoint of its first node; --dynostore-client
# cli for its CLI instead).
#
# Not part of CI: it installs Garage (scripts/garage.sh, 16+ minutes cold)
# and a boto3 venv (BENCH_VENV, default /opt/dynostore-bench-venv).
#
# Usage: scripts/bench-garage.sh [side_by_side.py options, e.g. --big-mib 256 --small 300]
#        scripts/bench-garage.sh --inline-sweep   (inline vs striped CPU by size)
set -euo pipefail
cd "$(dirname "$0")/.."

GARAGE=$(bash scripts/garage.sh | tail -n1)
VENV="${BENCH_VENV:-/opt/dynostore-bench-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import boto3" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q boto3
fi
PY="$VENV/bin/python"
nice cargo build --release -p dynostore-node --bin dynostore >&2
exec nice "$PY" scripts/bench/side_by_side.py \
    --dynostore target/release/dynostore --garage "$GARAGE" "$@"
