#!/usr/bin/env bash
# Install the headless browser the dashboard test drives (tests/it/dashboard.rs):
# Debian's `chromium-headless-shell`, or Debian's `chromium` (run with
# --headless) where that package does not exist.
#
# Idempotent: does nothing when either binary is already installed. Needs
# root and apt (Debian); elsewhere it says what to install and fails.
#
# Usage: scripts/browser.sh
set -euo pipefail

for b in chromium-headless-shell chromium; do
    if command -v "$b" >/dev/null 2>&1; then
        echo "headless browser already installed: $(command -v "$b")"
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get here: install chromium-headless-shell (or chromium) by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

pkg=chromium-headless-shell
if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    echo "updating the apt package lists..."
    $SUDO apt-get update -qq
fi
if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    pkg=chromium
fi
echo "installing $pkg from apt (about a minute)..."
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$pkg" fonts-dejavu-core >/dev/null
echo "installed: $(command -v chromium-headless-shell || command -v chromium)"
