#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report's browser test (tests/test_report_browser.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (CI containers run as root).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium
/usr/bin/chromium --version
