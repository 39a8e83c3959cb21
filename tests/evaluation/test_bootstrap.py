"""Chunked bootstrap CIs against the resampling written out, and the control seeds."""

from __future__ import annotations

import math

import pytest
import torch

from tl_culture.evaluation.bootstrap import bootstrap_ci, chunk_sums, control_seed


def test_chunk_sums_and_bootstrap_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    s, n = chunk_sums(x, 2)
    assert s.tolist() == [3.0, 7.0, 5.0] and n.tolist() == [2.0, 2.0, 1.0]
    lo, hi = bootstrap_ci(torch.full((40,), 0.25, dtype=torch.float64), chunk=4, n_boot=100)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    assert all(math.isnan(v) for v in bootstrap_ci(x[:3], chunk=8))
    # the same resampling written out: chunks drawn with replacement, ratio of sums, percentiles
    d = torch.randn(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lo, hi = bootstrap_ci(d, chunk=8, n_boot=300, generator=torch.Generator().manual_seed(9))
    s, n = chunk_sums(d, 8)
    draws = torch.randint(0, 8, (300, 8), generator=torch.Generator().manual_seed(9))
    means = torch.stack([s[r].sum() / n[r].sum() for r in draws])
    q = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (lo, hi) == pytest.approx((float(q[0]), float(q[1])))
    assert lo < float(d.mean()) < hi


def test_too_few_chunks_draw_nothing_from_the_generator():
    g = torch.Generator().manual_seed(4)
    before = g.get_state()
    assert all(math.isnan(v) for v in bootstrap_ci(torch.ones(5, dtype=torch.float64), chunk=8, generator=g))
    assert torch.equal(g.get_state(), before)


def test_control_seeds_are_distinct_and_stable():
    seeds = {control_seed(0, s, gi) for s in range(3) for gi in range(5)}
    assert len(seeds) == 15
    assert control_seed(7, 1, 2) == (7 * 1_000_003 + 7_919 + 2)
