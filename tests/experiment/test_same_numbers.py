"""The numbers of `tl-culture run` stay bit-identical: statistics, neuron sets and Δ NLL matrices.

Slow (about 7 minutes on 2 CPU cores). Runs the small experiment (examples/small_shared_data.toml:
FLORES languages, MUREL cultures, the default model) on a reduced setting through the command
line and compares the digest of the run folder (`tests.experiment.run_digest`: sha256 of every
statistics tensor, neuron-set mask and Δ NLL array) with ``same_numbers_small.json``, the digest
of the same command under the sampling and statistics protocol of issue 12 (see its ``about``).

The digest is exact, so the check holds only where floating-point kernels give the same bits as
where the fixture was made (the project's CPU build, default thread count). A legitimate change
of the numbers (a fixed bug, another model) regenerates the fixture::

    tl-culture run --config examples/small_shared_data.toml ARGS --out RUN
    python -m tests.experiment.run_digest RUN    # the "digest" entry of same_numbers_small.json

with ARGS the fixture's ``args``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.experiment.run_digest import differences, digest_run

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).with_name("same_numbers_small.json")
CONFIG = REPO / "examples" / "small_shared_data.toml"
ARGS = [
    "--max-tokens", "1000", "--seq-len", "128", "--eval-tokens", "64", "--controls", "1",
    "--bootstrap", "100", "--eval-mode", "matched", "--no-report", "--no-progress",
]  # fmt: skip


def test_run_gives_the_same_numbers(shared_data, tmp_path):
    from tl_culture.cli import main

    expected = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert expected["args"] == ARGS, "the fixture was made with other settings; regenerate it"
    out = tmp_path / "run"
    # the explorer's examples stage reads no number compared here: skip it to keep the test short
    assert main(["run", "--config", str(CONFIG), *ARGS, "--no-examples", "--out", str(out)]) == 0
    diff = differences(expected["digest"], digest_run(out))
    assert not diff, f"first difference: {diff[0]} ({len(diff)} item(s) differ: {diff})"
