"""Wilson intervals and paired bootstrap CIs of shares, against hand computations."""

import math

import torch

from tl_culture.evaluation.rates import paired_share_ci, wilson_ci


def test_wilson_against_hand_values():
    z = 1.959963984540054
    # 5 of 10: centre 0.5, half = z / (1 + z²/10) * sqrt(0.025 + z²/400)
    half = z / (1 + z * z / 10) * math.sqrt(0.25 / 10 + z * z / 400)
    lo, hi = wilson_ci(0.5, 10)
    assert math.isclose(lo, 0.5 - half) and math.isclose(hi, 0.5 + half)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4)  # the textbook value
    # 0 of n: [0, z² / (n + z²)]
    assert wilson_ci(0.0, 70) == (0.0, wilson_ci(0.0, 70)[1])
    assert math.isclose(wilson_ci(0.0, 70)[1], z * z / (70 + z * z))
    assert wilson_ci(1.0, 5)[1] == 1.0 and math.isclose(wilson_ci(1.0, 5)[0], 5 / (5 + z * z))
    assert all(math.isnan(x) for x in wilson_ci(0.3, 0))


def test_paired_share_ci_against_direct_resampling():
    a = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 1.0])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.5])
    diff, lo, hi = paired_share_ci(a, b, n_boot=500, seed=3)
    assert math.isclose(diff, float((a - b).mean()))
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 6, (500, 6), generator=g)
    means = sorted(float((a[i] - b[i]).double().mean()) for i in idx)
    q = torch.quantile(torch.tensor(means, dtype=torch.float64), torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert math.isclose(lo, float(q[0])) and math.isclose(hi, float(q[1]))
    assert lo <= diff <= hi
    d1 = paired_share_ci(a[:1], b[:1])
    assert d1[0] == 1.0 and math.isnan(d1[1])
