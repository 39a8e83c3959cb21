"""The figures of a `scripts/gpu_check.sh` run, in one JSON and one Markdown table.

    python benchmarks/gpu_report.py benchmarks/results/gpu

Reads ``throughput_{shape}.json``, ``evaluation_{shape}.json`` and ``memory_{shape}.json`` of every
model shape in the folder and ``cuda_tests.xml``, and writes ``summary.json``: per shape the
hardware, dtype, row length, the matmul peak measured in the same run (in the run's dtype), and

- counting: `collect`'s tokens/s, its ratio to the HF body forward (the floor for counting), its
  fraction of the matmul peak, its peak GPU memory;
- scoring: the native Δ NLL pass's scored tokens/s, its ratio to ``model(ids, labels=ids)`` (the
  floor for scoring), its fraction of the matmul peak, its peak memory over the model's;
- memory: whether `collect`'s peak memory stays flat as the corpus grows.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def shape_summary(folder: Path, shape: str) -> dict[str, Any]:
    """The figures of one model shape (None where its file is missing)."""
    tp, ev, mem = (_read(folder / f"{kind}_{shape}.json") for kind in ("throughput", "evaluation", "memory"))
    out: dict[str, Any] = {"shape": shape}
    if tp is not None:
        m = tp["methods"]["collect"]
        out.update(hardware=tp["machine"].get("gpu") or tp["machine"]["cpu"], dtype=tp["dtype"],
                   seq_len=tp["seq_len"], matmul_peak_tflops=tp["matmul_flops_per_s"]["median"] / 1e12)
        out["counting"] = {"tokens_per_s": m["tokens_per_s"], "vs_hf_body": tp["ratios"]["collect_vs_hf_body"],
                           "fraction_of_matmul_peak": m["fraction_of_matmul_peak"],
                           "peak_cuda_mib": m.get("peak_cuda_mib"), "backend": tp.get("collect_backends")}
    if ev is not None:
        r = ev["results"]["native"]
        out["scoring"] = {"scored_tokens_per_s": r["scored_tokens_per_s"], "vs_hf_floor": r["vs_hf_floor"],
                          "vs_hooks": ev["results"]["hooks"]["median_s"] / r["median_s"],
                          "fraction_of_matmul_peak": r["matmul_peak_fraction"],
                          "peak_mib_over_model": r["peak_mib_over_start"], "attention": ev["native"].get("attention")}
    if mem is not None:
        out["memory"] = {k: {"flat": g["flat"], "peak_increase_mib": g["peak_rss_increase_mib"]}
                         for k, g in mem["growth"].items()}
    return out


def tests_summary(path: Path) -> dict[str, int] | None:
    """Passed / failed / skipped counts of the JUnit XML of the cuda tests."""
    if not path.is_file():
        return None
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def table(shapes: list[dict[str, Any]]) -> str:
    rows = []
    for s in shapes:
        c, e = s.get("counting", {}), s.get("scoring", {})
        rows.append([s["shape"], s.get("hardware", "-"), s.get("dtype", "-"), s.get("seq_len", "-"),
                     c.get("tokens_per_s", float("nan")), c.get("vs_hf_body", float("nan")),
                     100 * c.get("fraction_of_matmul_peak", float("nan")), e.get("scored_tokens_per_s", float("nan")),
                     e.get("vs_hf_floor", float("nan")), 100 * e.get("fraction_of_matmul_peak", float("nan")),
                     e.get("peak_mib_over_model", float("nan"))])
    return C.table(["shape", "hardware", "dtype", "row", "collect tok/s", "x HF body", "% peak", "score tok/s",
                    "x HF labels", "% peak", "score MiB over model"], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the --out folder of scripts/gpu_check.sh")
    folder = Path(p.parse_args(argv).folder)
    shapes = sorted({f.stem.split("_", 1)[1] for f in folder.glob("throughput_*.json")})
    if not shapes:
        raise SystemExit(f"{folder}: no throughput_*.json; run scripts/gpu_check.sh first")
    out = {"benchmark": "gpu_check", "shapes": [shape_summary(folder, s) for s in shapes],
           "cuda_tests": tests_summary(folder / "cuda_tests.xml")}
    out["table"] = table(out["shapes"])
    C.write_json(folder / "summary.json", out)
    print(out["table"])
    print(f"cuda tests: {out['cuda_tests']}")
    return out


if __name__ == "__main__":
    main()
