"""`scripts/gpu_check.sh --device cpu --quick`: the GPU box's one command runs its whole path here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--python", sys.executable], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    for step in ("environment", "wheels", "models", "cuda tests", "benchmarks gemma3-270m", "benchmarks llama3.2-1b",
                 "summary"):
        assert f"== {step}: ok" in proc.stdout, step
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["shape"] for s in summary["shapes"]] == ["gemma3-270m", "llama3.2-1b"]
    for s in summary["shapes"]:
        assert s["dtype"] == "bfloat16" and s["seq_len"] == 64 and s["matmul_peak_tflops"] > 0
        assert s["counting"]["tokens_per_s"] > 0 and s["counting"]["vs_hf_body"] > 0
        assert s["scoring"]["scored_tokens_per_s"] > 0 and s["scoring"]["vs_hf_floor"] > 0
        assert set(s["memory"]) == {"collect", "run_with_cache_batch"}
    assert summary["cuda_tests"]["passed"] > 0 and summary["cuda_tests"]["failed"] == 0


def test_gpu_check_refuses_unknown_options():
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--gpu"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu_check.sh: unknown option --gpu; see the header of scripts/gpu_check.sh"
