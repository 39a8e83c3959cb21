#!/usr/bin/env bash
# Create ./.venv (once) and install tl-culture with the demo and dev extras, pinned by
# constraints.txt so that torch is the 2.13.0 CPU build, not a 3 GB CUDA one.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.tl-culture-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, from the pinned CPU build, so nothing below pulls CUDA wheels.
.venv/bin/python -m pip install --quiet -c constraints.txt "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[demo,dev]"
echo "$want" > "$stamp"
