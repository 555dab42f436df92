#!/usr/bin/env bash
# Install Garage 2.5.0 (the S3 store the side-by-side bench runs against)
# into a cached location, outside CI: only benches need it.
#
# Idempotent and quick when installed: does nothing when
# $GARAGE_ROOT/bin/garage (default /opt/garage) already reports 2.5.0.
# A cold build takes 16+ minutes on a 2-core machine; it runs at low
# priority (nice 19) so that it does not starve other builds.
#
# Usage: scripts/garage.sh        (prints the binary's path last)
set -euo pipefail

VERSION="2.5.0"
ROOT="${GARAGE_ROOT:-/opt/garage}"
BIN="$ROOT/bin/garage"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "[:v ]$VERSION"; then
    echo "garage $VERSION already installed"
    echo "$BIN"
    exit 0
fi

echo "installing garage $VERSION into $ROOT (16+ minutes on two cores)..." >&2
mkdir -p "$ROOT"
nice -n 19 cargo install garage --version "$VERSION" --locked --root "$ROOT" >&2
echo "$BIN"
