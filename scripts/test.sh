#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
bash scripts/s3s-fs.sh
bash scripts/browser.sh
bash scripts/age.sh
bash scripts/s3-clients.sh
# Integration tests start whole clusters of node processes; on a 2-core
# machine two at a time keeps them from starving each other.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
cargo test --workspace "$@"
