"""The control seeds."""

from __future__ import annotations

from tl_culture.evaluation.bootstrap import control_seed


def test_control_seeds_are_distinct_and_stable():
    seeds = {control_seed(0, s, gi) for s in range(3) for gi in range(5)}
    assert len(seeds) == 15
    assert control_seed(7, 1, 2) == (7 * 1_000_003 + 7_919 + 2)
