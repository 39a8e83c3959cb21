"""Resampling units of the document bootstrap: held-out documents, long ones cut into blocks.

Neighbouring tokens of one document are not independent, so the bootstrap resamples documents.
An eval corpus is packed as its documents d_0, d_1, ... joined by a separator
(`tl_culture.data.rows.encode`), so its scored tokens are, in order,

    d_0,  sep + d_1,  sep + d_2,  ...      (cut at the token cap)

and token t belongs to the document whose span holds it (a separator belongs to the document
after it). A document with L scored tokens is one unit when L < ``min_block``, else it is cut into
k = L // min_block consecutive blocks of near-equal length (each at least ``min_block`` tokens),
so that one very long document (a novel) does not stand for a single draw. A pre-tokenized corpus
has no documents: each row is a unit.

One resample draws n_units units with replacement, i.e. multinomial weights w_u, and for a
per-token series x with unit sums s_u and sizes n_u gives

    mean* = Σ_u w_u s_u / Σ_u w_u n_u

Several series (Δ of an ablation, of each control, and their paired difference) use the same
draws, so a paired CI comes from the same resamples as its parts. The CI is the percentile
interval of mean*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture.data.corpus import Corpus
from tl_culture.data.rows import SEPARATOR
from tl_culture.data.sampling import packed_lengths
from tl_culture.evaluation.bootstrap import CI_LEVEL

MIN_BLOCK = 128
"""Fewest tokens of a block cut from a long document."""

MIN_UNITS = 30
"""Fewer resampling units than this make a bootstrap CI unreliable (a warning says so)."""


def document_lengths(corpus: Corpus, tokenizer: Any, n_tokens: int, separator: str = SEPARATOR) -> list[int]:
    """Scored tokens of each document in the packed stream, until ``n_tokens`` are covered.

    A document's length includes the separator tokens before it; the last one is cut at the cap.
    """
    if corpus.documents is None or tokenizer is None:
        width = int(corpus.rows.shape[1]) if corpus.rows is not None else n_tokens
        return _cut([width] * math.ceil(n_tokens / max(1, width)), n_tokens)
    out, total = [], 0
    for n in packed_lengths(corpus, tokenizer, separator):
        if total >= n_tokens:
            break
        out.append(n)
        total += n
    return _cut(out, n_tokens)


def _cut(lengths: list[int], n_tokens: int) -> list[int]:
    """``lengths`` with the tail trimmed so they sum to at most ``n_tokens`` (empty entries dropped)."""
    out, total = [], 0
    for n in lengths:
        n = min(n, n_tokens - total)
        if n > 0:
            out.append(n)
            total += n
    return out


def token_units(lengths: Sequence[int], min_block: int = MIN_BLOCK) -> Int[torch.Tensor, " token"]:
    """The unit index of every token of documents of ``lengths`` tokens (blocks of long documents)."""
    ids, unit = [], 0
    for n in lengths:
        k = max(1, n // min_block)
        edges = [round(j * n / k) for j in range(k + 1)]
        for j in range(k):
            ids.append(torch.full((edges[j + 1] - edges[j],), unit + j, dtype=torch.long))
        unit += k
    return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)


def unit_sums(
    series: Float[torch.Tensor, "k token"], units: Int[torch.Tensor, " token"]
) -> tuple[Float[torch.Tensor, "k unit"], Float[torch.Tensor, " unit"]]:
    """Per-unit sums of each series and per-unit token counts."""
    n_units = int(units.max()) + 1 if units.numel() else 0
    x = series.double()
    sums = torch.zeros(x.shape[0], n_units, dtype=torch.float64).index_add_(1, units, x)
    sizes = torch.zeros(n_units, dtype=torch.float64).index_add_(0, units, torch.ones_like(units, dtype=torch.float64))
    return sums, sizes


def bootstrap_cis(
    series: Float[torch.Tensor, "k token"],
    units: Int[torch.Tensor, " token"],
    *,
    n_boot: int = 1000,
    level: float = CI_LEVEL,
    generator: torch.Generator | None = None,
) -> tuple[Float[torch.Tensor, " k"], Float[torch.Tensor, " k"]]:
    """Percentile CIs of the mean of each series, all from the same unit resamples.

    Draws ``n_boot × n_units`` unit indices from ``generator`` (a fresh one seeded 0 if None).
    Returns NaN bounds for fewer than two units or ``n_boot < 1`` (drawing nothing).
    """
    s, n = unit_sums(series, units)
    k, u = s.shape
    nan = torch.full((k,), math.nan, dtype=torch.float64)
    if u < 2 or n_boot < 1:
        return nan, nan.clone()
    g = generator or torch.Generator().manual_seed(0)
    draws = torch.randint(0, u, (n_boot, u), generator=g)
    w = torch.zeros(n_boot, u, dtype=torch.float64).scatter_add_(1, draws, torch.ones(n_boot, u, dtype=torch.float64))
    means = (w @ s.T) / (w @ n)[:, None]  # [n_boot, k]
    a = (1.0 - level) / 2
    q = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.float64), dim=0)
    return q[0], q[1]


__all__ = ["MIN_BLOCK", "MIN_UNITS", "bootstrap_cis", "document_lengths", "token_units", "unit_sums"]
