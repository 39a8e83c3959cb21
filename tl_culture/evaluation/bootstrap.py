"""Uncertainty of a mean over tokens: chunked bootstrap CIs, and the seeds of the random controls.

The per-token values of a corpus are cut into chunks of ``chunk`` consecutive tokens (neighbouring
tokens are correlated; whole chunks are resampled). With chunk sums s_c, sizes n_c and k chunks, one
resample draws multinomial weights ``w_b ~ Multinomial(k, 1/k)`` and gives

    mean*_b = Σ_c w_bc s_c / Σ_c w_bc n_c

the CI is the ``(1 − level)/2`` and ``(1 + level)/2`` percentiles of ``mean*``. Paired use (the
same chunks for baseline and ablation) resamples the per-token differences.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float

CI_LEVEL = 0.95
"""Coverage of the bootstrap intervals."""


def chunk_sums(
    x: Float[torch.Tensor, " n"], chunk: int
) -> tuple[Float[torch.Tensor, " k"], Float[torch.Tensor, " k"]]:
    """Sums and sizes of consecutive chunks of ``chunk`` tokens (the last may be shorter)."""
    n = x.shape[0]
    ids = torch.arange(n) // chunk
    k = int(ids[-1]) + 1 if n else 0
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, ids, x.double())
    sizes = torch.zeros(k, dtype=torch.float64).index_add_(0, ids, torch.ones(n, dtype=torch.float64))
    return sums, sizes


def bootstrap_ci(
    diff: Float[torch.Tensor, " n"],
    *,
    chunk: int = 16,
    n_boot: int = 1000,
    level: float = CI_LEVEL,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(diff)`` resampling chunks of ``chunk`` consecutive tokens.

    Draws ``n_boot × k`` chunk indices from ``generator`` (a fresh one seeded 0 if None), so a
    shared generator gives reproducible CIs when the calls come in the same order. Returns
    ``(nan, nan)`` for fewer than two chunks (drawing nothing).
    """
    s, n = chunk_sums(diff, chunk)
    k = s.shape[0]
    if k < 2 or n_boot < 1:
        return math.nan, math.nan
    g = generator or torch.Generator().manual_seed(0)
    draws = torch.randint(0, k, (n_boot, k), generator=g)
    w = torch.zeros(n_boot, k, dtype=torch.float64).scatter_add_(1, draws, torch.ones(n_boot, k, dtype=torch.float64))
    means = (w @ s) / (w @ n)
    a = (1.0 - level) / 2
    q = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.float64))
    return float(q[0]), float(q[1])


def control_seed(seed: int, control: int, group_index: int) -> int:
    """Independent, reproducible seed of random control ``control`` for the group at ``group_index``."""
    return (int(seed) * 1_000_003 + control * 7_919 + group_index) % (2**63 - 1)


__all__ = ["CI_LEVEL", "bootstrap_ci", "chunk_sums", "control_seed"]
