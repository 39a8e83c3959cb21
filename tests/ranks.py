"""Helpers of the data-parallel tests: 2-rank gloo jobs on CPU in torchrun's environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager

import torch

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                 "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@contextmanager
def one_thread():
    """Run the single-process reference on one thread, as each rank runs (OMP_NUM_THREADS=1): the
    float32 kernels round the activations differently with another number of threads, which moves
    the sums by float32 rounding, far above the float64 ordering these tests compare at."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_ranks(script: str, args: list[str], cwd) -> list[tuple[str, str]]:
    """Run ``script`` as ranks 0 and 1 of a 2-process gloo job (torchrun's environment); their outputs."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=clean_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, se) in zip(procs, outs, strict=True):
        assert p.returncode == 0, se[-3000:]
    return outs
