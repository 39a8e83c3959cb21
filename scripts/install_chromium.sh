#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the browser tests (tests/browser.py: the report and the explorer).
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (CI containers run as root).
set -euo pipefail
# fonts-noto-cjk: the report shows Chinese text; without a CJK font screenshots show boxes.
if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y --no-install-recommends chromium fonts-noto-cjk fonts-noto-core
/usr/bin/chromium --version
