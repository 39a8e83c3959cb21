"""Confidence intervals of a share (a rate of successes), for the steering evaluation.

Wilson score interval of a share p̂ over n units at coverage ``level`` (z the normal quantile
``Φ⁻¹((1 + level) / 2)``):

    centre = (p̂ + z² / 2n) / (1 + z² / n)
    half   = z / (1 + z² / n) · sqrt(p̂ (1 − p̂) / n + z² / 4n²)
    CI     = [centre − half, centre + half]

It stays inside [0, 1] and is not degenerate at p̂ = 0 or 1 (a percentile bootstrap is [0, 0]
there). Paired differences of two shares over the same units (the same prompts) use a percentile
bootstrap over units, `paired_share_ci`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from jaxtyping import Float

from tl_culture.evaluation.bootstrap import CI_LEVEL


def wilson_ci(share: float, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a share ``share`` over ``n`` units; ``(nan, nan)`` for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    z2n = z * z / n
    centre = (share + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(share * (1.0 - share) / n + z2n / (4.0 * n))
    low = 0.0 if share <= 0.0 else max(0.0, centre - half)
    high = 1.0 if share >= 1.0 else min(1.0, centre + half)
    return low, high


def paired_share_ci(
    a: Float[torch.Tensor, " unit"],
    b: Float[torch.Tensor, " unit"],
    *,
    n_boot: int = 1000,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``mean(a) − mean(b)`` and its percentile bootstrap CI, resampling units (pairs) together.

    ``a[i]`` and ``b[i]`` are unit i's shares under two conditions. Draws ``n_boot × n`` unit
    indices from a generator seeded ``seed``. Returns ``(diff, nan, nan)`` for fewer than two units.
    """
    d = a.double() - b.double()
    n = int(d.shape[0])
    diff = float(d.mean()) if n else math.nan
    if n < 2 or n_boot < 1:
        return diff, math.nan, math.nan
    g = torch.Generator().manual_seed(int(seed))
    means = d[torch.randint(0, n, (n_boot, n), generator=g)].mean(1)
    q = (1.0 - level) / 2.0
    lo, hi = torch.quantile(means, torch.tensor([q, 1.0 - q], dtype=torch.float64)).tolist()
    return diff, float(lo), float(hi)


__all__ = ["paired_share_ci", "wilson_ci"]
