#!/usr/bin/env bash
# Build (once) a side interpreter with TransformerLens 3.x and SAELens 6.x, for tests/model/test_tl3_compat.py
# and tests/intervene/test_saelens.py, with the extras their stages need (the language identifier for
# steering, matplotlib/circuitsvis/jinja2 for the report). Prints the path of its python. tl-culture itself
# is put on PYTHONPATH by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-tl3
tl3="transformer-lens==3.9.0"
sae="sae-lens==6.54.12"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" - "$tl3" "$sae" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version

import jaxtyping, pytest, safetensors, tqdm, transformer_lens, sae_lens  # noqa: F401
import circuitsvis, jinja2, matplotlib, py3langid  # noqa: F401

for pin in sys.argv[1:]:
    name, want = pin.split("==")
    assert version(name) == want, (name, version(name), want)
PY
then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install --quiet "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)" >&2
    "$venv/bin/python" -m pip install --quiet "$tl3" "$sae" safetensors jaxtyping tqdm pytest \
        py3langid jinja2 matplotlib circuitsvis >&2
fi
echo "$(pwd)/$venv/bin/python"
