#!/usr/bin/env bash
# Install Debian's `age` tool, which the encryption tests use to check that
# DynoStore's encrypted objects are standard age v1 files (both ways).
#
# Idempotent: does nothing when `age` and `age-keygen` are already on PATH.
#
# Usage: scripts/age.sh
set -euo pipefail

if command -v age >/dev/null 2>&1 && command -v age-keygen >/dev/null 2>&1; then
    echo "age already installed: $(command -v age)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: age is not installed and there is no apt-get; install age (https://age-encryption.org) by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "installing age from Debian..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq age >/dev/null
echo "installed: $(command -v age)"
