#!/usr/bin/env bash
# The main job: a local DynoStore cluster on loopback.
# Until the cluster simulator lands (issue 6) this builds the node and shows
# what it can do.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p dynostore-node
./target/release/dynostore --help
