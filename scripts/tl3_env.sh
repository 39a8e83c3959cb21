#!/usr/bin/env bash
# Build (once) a side interpreter with TransformerLens 3.x, for tests/test_tl3_compat.py.
# Prints the path of its python. tl-culture itself is put on PYTHONPATH by the test.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-tl3
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import transformer_lens, tqdm, safetensors, jaxtyping, pytest" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install --quiet "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)" >&2
    "$venv/bin/python" -m pip install --quiet "transformer-lens==3.9.0" safetensors jaxtyping tqdm pytest >&2
fi
echo "$(pwd)/$venv/bin/python"
