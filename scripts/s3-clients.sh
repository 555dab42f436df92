#!/usr/bin/env bash
# Install the S3 clients the S3 gateway tests drive (tests/it/s3_clients.rs):
# boto3 and the aws CLI (v1, from PyPI) in a virtualenv, rclone from Debian.
#
# Idempotent and quick when already installed. The venv lives at
# $DYNOSTORE_S3_VENV (default /opt/dynostore-s3-venv), outside target/ so
# that `cargo clean` keeps it.
#
# Usage: scripts/s3-clients.sh
set -euo pipefail

VENV="${DYNOSTORE_S3_VENV:-/opt/dynostore-s3-venv}"
AWSCLI_VERSION="1.46.2"

if ! command -v rclone >/dev/null 2>&1; then
    echo "installing rclone (Debian)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rclone >/dev/null
fi
echo "rclone: $(command -v rclone)"

if [ -x "$VENV/bin/aws" ] && "$VENV/bin/python" -c 'import boto3' 2>/dev/null; then
    echo "boto3 and aws CLI already installed in $VENV"
    exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
fi
echo "creating $VENV with boto3 and awscli $AWSCLI_VERSION..."
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "awscli==$AWSCLI_VERSION" boto3
echo "installed: $("$VENV/bin/aws" --version 2>&1)"
