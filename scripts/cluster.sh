#!/usr/bin/env bash
# The main job: a local DynoStore cluster on loopback, end to end.
#
# Builds the node and the simulator (release) and runs the default cluster
# scenario (sim/scenarios/default.toml): six real `dynostore` node
# processes on four sites with directory and memory containers of
# different sizes, a mixed workload of imaging studies and satellite
# rasters generated from a fixed seed, and a fault schedule (a crash and a
# restart, a partition and its healing, corrupted shards on disk). It
# prints a report (throughput, latency, fill spread, time back to full
# redundancy after each fault) and exits non-zero if a check fails.
#
#   bash scripts/cluster.sh                          # the default scenario
#   bash scripts/cluster.sh --json                   # the report as JSON
#   bash scripts/cluster.sh --scenario ci --seed 7   # any flag of `dynostore-sim cluster`
#   bash scripts/cluster.sh --scenario my.toml --work-dir /tmp/run  # keep the node directories
#   bash scripts/cluster.sh --search --seeds 50      # the randomised fault search
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building the node and the simulator (release)" >&2
cargo build --release -p dynostore-node -p dynostore-sim
exec ./target/release/dynostore-sim cluster --bin ./target/release/dynostore "$@"
