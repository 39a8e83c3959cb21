"""`top_examples` under 2 CPU ranks (gloo): every rank returns exactly what one process computes."""

from __future__ import annotations

import torch

from tests.conftest import random_rows, tiny_model
from tests.ranks import one_thread, run_ranks
from tl_culture import NeuronExamples, top_examples

PAIRS = [(0, 1), (1, 7), (1, 30), (2, 12)]
CORPORA = {"a": random_rows(3, n=13, T=12), "b": random_rows(4, n=6, T=12)}  # a: 7 batches, uneven over 2 ranks
SETTINGS = dict(k=5, window=2, seq_len=12, batch_size=2, progress=False)

WORKER = """
import sys
from tests.conftest import tiny_model
from tests.explore.test_distributed import CORPORA, PAIRS, SETTINGS
from tl_culture import top_examples
from tl_culture.counting.distributed import close_distributed, init_distributed
info = init_distributed(device="cpu")
ex = top_examples(tiny_model(gated=True), CORPORA, PAIRS, **SETTINGS)
ex.save(f"{sys.argv[1]}.rank{info.rank}")
print("rank", info.rank, "of", info.world_size, "scanned", ex.tokens_scanned.tolist())
close_distributed(info)
"""


def test_two_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "ex")
    outs = run_ranks(WORKER, [out], tmp_path)
    assert "rank 0 of 2 scanned [156, 72]" in outs[0][0] and "rank 1 of 2 scanned [156, 72]" in outs[1][0]
    with one_thread():
        single = top_examples(tiny_model(gated=True), CORPORA, PAIRS, **SETTINGS)
    for r in (0, 1):
        got = NeuronExamples.load(f"{out}.rank{r}")
        assert got.meta["world_size"] == 2
        for name in NeuronExamples.TENSORS:
            assert torch.equal(getattr(got, name), getattr(single, name)), name
        assert got.strings == single.strings
    rows = {c.row for g in single.groups for layer, j in PAIRS for c in single.top(layer, j, g)}
    assert {r // 2 % 2 for r in rows} == {0, 1}  # the merged top k holds batches of both ranks
