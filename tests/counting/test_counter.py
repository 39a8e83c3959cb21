"""`Counter`: one group's counts from forwards that stop after the last MLP, and the backend choice."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_rows
from tl_culture import MLPHooks, TLCultureError
from tl_culture.counting.counter import Counter, choose_backend, probe_ids
from tl_culture.data.rows import TokenRows


def test_counter_refuses_positions_outside_run_batch(tiny_hf_model):
    mlp = MLPHooks.from_model(tiny_hf_model)
    counter = Counter(tiny_hf_model, mlp, torch.device("cpu"))
    with pytest.raises(TLCultureError, match="blocks.0.mlp.hook_pre: got 3 positions outside Counter.run_batch"):
        counter.add(0, torch.zeros(1, 3, mlp.d_mlp))


def test_run_batch_counts_real_tokens_only(gated_model):
    """Trailing padding columns are dropped and padded or uncounted positions add nothing."""
    mlp = MLPHooks.from_model(gated_model)
    ids = random_rows(3, 2, 6)
    attn = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    count = attn.clone()
    count[:, 0] = False  # BOS
    batch = TokenRows(ids, attn, count)
    alone = []
    for r in range(2):
        n = int(attn[r].sum())
        one = TokenRows(ids[r : r + 1, :n], attn[r : r + 1, :n], count[r : r + 1, :n])
        c = Counter(gated_model, mlp, torch.device("cpu"))
        with torch.inference_mode(), c.attached():
            assert c.run_batch(one) == n - 1
        alone.append(c)
    both = Counter(gated_model, mlp, torch.device("cpu"))
    with torch.inference_mode(), both.attached():
        assert both.run_batch(batch) == 5
    assert torch.equal(both.counts, alone[0].counts + alone[1].counts) and both.tokens == 5
    torch.testing.assert_close(both.sums, alone[0].sums + alone[1].sums, rtol=1e-5, atol=1e-6)
    assert all(not hp._forward_hooks for hp in gated_model.hook_dict.values())


def test_start_from_continues_the_totals(gated_model):
    mlp = MLPHooks.from_model(gated_model)
    counter = Counter(gated_model, mlp, torch.device("cpu"), with_sums=False)
    counts = torch.ones(mlp.n_layers, mlp.d_mlp, dtype=torch.int64)
    counter.start_from(counts, 7)
    assert counter.sums is None and counter.tokens == 7 and torch.equal(counter.counts, counts)


def test_choose_backend(tiny_hf_model, dense_model):
    mlp = MLPHooks.from_model(tiny_hf_model)
    probe = probe_ids(TokenRows(random_rows(0, 1, 40), torch.ones(1, 40, dtype=torch.bool),
                                torch.ones(1, 40, dtype=torch.bool)), torch.device("cpu"))
    assert probe.shape == (1, 32)  # the first row's first 32 real tokens
    native, name, attention, note = choose_backend(tiny_hf_model, mlp, "auto", None, probe)
    assert native is not None and (name, attention, note) == ("native", "sdpa", None)
    assert choose_backend(tiny_hf_model, mlp, "hooks", None, probe) == (None, "hooks", "eager", None)
    dense = MLPHooks.from_model(dense_model)
    native, name, _, note = choose_backend(dense_model, dense, "auto", None, probe[:, :8])
    assert native is None and name == "hooks" and "hook_pre differs" in note  # quiet fallback, reason kept
    with pytest.raises(TLCultureError, match="the native backend cannot run: layer 0"):
        choose_backend(dense_model, dense, "native", None, probe[:, :8])
