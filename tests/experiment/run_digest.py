"""Digest of a `tl-culture run` folder: exact sha256 hashes of its numbers.

The digest is a flat JSON object ``{item: sha256 hex}`` with one item per

- statistics tensor: ``stats_language.safetensors:counts`` (also ``tokens``, ``sums``) and the
  file's group names (``...:groups``);
- neuron-set mask: ``neurons/{name}.safetensors:masks`` and its group names;
- numeric array of every Δ NLL matrix: ``nll/{name}.json:baseline`` (also ``ablated``, ``delta``,
  ``tokens``, ``delta_ci_low``, ``delta_ci_high``, ``control_delta``, ``control_ci_low``,
  ``control_ci_high``, and where present ``bootstrap_units`` and ``paired_*``) and its row and
  column names.

Tensors are hashed from their dtype, shape and raw bytes; JSON arrays from their canonical JSON
text (Python writes and reads floats as their shortest round-trip representation, so equal
digests mean bit-identical values). Timings, paths and other metadata are left out. The reader
uses ``safetensors`` and ``json`` only, so it does not depend on the package it checks.

Usage::

    python -m tests.experiment.run_digest RUN_DIR [--out digest.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

STATS_TENSORS = ("counts", "tokens", "sums")
NLL_ARRAYS = (
    "groups",
    "evals",
    "baseline",
    "ablated",
    "delta",
    "tokens",
    "delta_ci_low",
    "delta_ci_high",
    "control_delta",
    "control_ci_low",
    "control_ci_high",
    "bootstrap_units",
    "paired_delta",
    "paired_ci_low",
    "paired_ci_high",
)


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes."""
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)};".encode())
    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def json_hash(value: Any) -> str:
    """sha256 of a JSON value's canonical text (exact for floats, NaN written as null)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _safetensors_items(path: Path, rel: str, names: tuple[str, ...] | None) -> dict[str, str]:
    out = {}
    with safe_open(str(path), "pt") as f:
        header = json.loads((f.metadata() or {}).get("tl_culture", "{}"))
        out[f"{rel}:groups"] = json_hash(header.get("groups"))
        for key in sorted(f.keys()) if names is None else names:
            if key in f.keys():
                out[f"{rel}:{key}"] = tensor_hash(f.get_tensor(key))
    return out


def digest_run(run_dir: str | Path) -> dict[str, str]:
    """The digest of a run folder, in pipeline order: statistics, neuron sets, Δ NLL matrices."""
    run = Path(run_dir)
    items: dict[str, str] = {}
    for p in sorted(run.glob("stats_*.safetensors")):
        items.update(_safetensors_items(p, p.name, STATS_TENSORS))
    for p in sorted((run / "neurons").glob("*.safetensors")):
        items.update(_safetensors_items(p, f"neurons/{p.name}", ("masks",)))
    for p in sorted((run / "nll").glob("*.json")):
        d = json.loads(p.read_text(encoding="utf-8"))
        for key in NLL_ARRAYS:
            if key in d:
                items[f"nll/{p.name}:{key}"] = json_hash(d[key])
    return items


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Every item that is missing, extra or different, in pipeline order (the first one is the
    earliest stage whose numbers changed); empty when the digests are equal."""
    out = []
    for key in [*expected, *(k for k in actual if k not in expected)]:
        if key not in actual:
            out.append(f"{key}: missing from the new run")
        elif key not in expected:
            out.append(f"{key}: not in the expected digest")
        elif expected[key] != actual[key]:
            out.append(f"{key}: differs")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", help="write the digest here (default: stdout)")
    args = ap.parse_args(argv)
    text = json.dumps(digest_run(args.run_dir), indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
