#!/usr/bin/env bash
# Install s3s-fs, the local S3 server the S3 container tests run against.
#
# Idempotent: does nothing when an `s3s-fs` binary is already on PATH (or in
# ~/.cargo/bin). Version 0.14.1 is pinned because 0.15 and later need a newer
# rustc than the workspace's; a cold install takes about 1.5 minutes.
#
# Usage: scripts/s3s-fs.sh
set -euo pipefail

VERSION="0.14.1"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

if command -v s3s-fs >/dev/null 2>&1; then
    echo "s3s-fs already installed: $(command -v s3s-fs)"
    exit 0
fi
if [ -x "$CARGO_BIN/s3s-fs" ]; then
    echo "s3s-fs already installed at $CARGO_BIN/s3s-fs (add $CARGO_BIN to PATH)"
    exit 0
fi

echo "installing s3s-fs $VERSION (about 1.5 minutes)..."
cargo install s3s-fs --version "$VERSION" --features binary --locked
echo "installed: $CARGO_BIN/s3s-fs"
