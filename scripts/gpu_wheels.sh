#!/usr/bin/env bash
# Download the wheels a GPU box without a package registry needs beside its own image (torch,
# transformers, numpy, safetensors, jinja2, matplotlib, pytest), at the versions of this checkout's
# .venv, into wheels/ (git-ignored), and print their size: carry the folder with the device tool
# (64 MiB in all with the tree); scripts/gpu_check.sh installs them with --no-index --no-deps when
# transformer_lens is missing there.
#
#   bash scripts/gpu_wheels.sh [--with-heavy]
#
# --with-heavy adds datasets' binary dependencies (pyarrow, pandas, ~55 MB: over the carry limit
# with the rest; take them only for an image that lacks them and carry fewer other files).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=".venv/bin/pip"
LIGHT=(transformer-lens einops fancy-einsum jaxtyping wadler-lindig beartype typeguard
       transformers-stream-generator accelerate datasets dill multiprocess xxhash rich markdown-it-py mdurl
       pygments sentencepiece py3langid)
HEAVY=(pyarrow pandas)
want=("${LIGHT[@]}")
[ "${1:-}" = "--with-heavy" ] && want+=("${HEAVY[@]}")
mkdir -p wheels
for pkg in "${want[@]}"; do
  version="$($PIP show "$pkg" 2>/dev/null | sed -n 's/^Version: //p')"
  if [ -z "$version" ]; then echo "skipping $pkg: not installed in .venv (not needed here)"; continue; fi
  $PIP download --quiet --no-deps -d wheels "$pkg==$version" 2>&1 | grep -v "^WARNING: Location" || true
  ls wheels | grep -qiE "^${pkg//-/[-_]}-" || { echo "gpu_wheels.sh: could not download $pkg==$version" >&2; exit 1; }
done
du -sh wheels
