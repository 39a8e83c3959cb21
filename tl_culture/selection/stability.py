"""Split-half stability of a LAPE selection.

Every corpus is split into two disjoint halves of its documents (`Corpus.halves`, seeded);
statistics are collected on each half separately and `identify` selects neurons on each. For each
group g with sets S_g^(1) and S_g^(2):

    J_g = |S_g^(1) ∩ S_g^(2)| / |S_g^(1) ∪ S_g^(2)|        (0 where both sets are empty)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tl_culture.counting.collect import collect
from tl_culture.data.corpus import as_corpora
from tl_culture.model.context import fit_seq_len, model_context
from tl_culture.selection.lape import ACTIVATION_BAR_RATIO, FILTER_RATE, TOP_RATE, identify

#: Tokens per row of `split_half_stability` unless the model's context is shorter.
DEFAULT_SEQ_LEN = 256


def split_half_stability(
    model: Any,
    corpora: Mapping[str, Any],
    *,
    seed: int = 0,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    top_rate: float = TOP_RATE,
    filter_rate: float = FILTER_RATE,
    activation_bar_ratio: float = ACTIVATION_BAR_RATIO,
    progress: bool = True,
    **collect_kw: Any,
) -> dict[str, float]:
    """Per-group Jaccard of the LAPE sets selected on two disjoint halves of every corpus.

    Args:
        model: the TransformerLens model.
        corpora: group name -> corpus-like (with documents, so that it can be halved).
        seed: seed of the document split.
        seq_len: tokens per row; default `DEFAULT_SEQ_LEN`, or the model's context where that is shorter.
        batch_size, max_tokens, progress: as in `collect` (``max_tokens`` per half).
        top_rate, filter_rate, activation_bar_ratio: as in `identify`.
        **collect_kw: further `collect` options (``backend``, ``attention``, ``device``, ...).

    Returns:
        group -> J_g (see the module docstring).
    """
    named = as_corpora(corpora)
    halves = {g: c.halves(seed) for g, c in named.items()}
    if seq_len is None:
        seq_len = fit_seq_len(model_context(model), DEFAULT_SEQ_LEN)
    kw = dict(seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, progress=progress, **collect_kw)
    lape = dict(top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio)
    sets = [identify(collect(model, {g: h[i] for g, h in halves.items()}, **kw), **lape) for i in (0, 1)]
    j = sets[0].jaccard(sets[1])
    return {g: float(j[i, i]) for i, g in enumerate(sets[0].groups)}


__all__ = ["split_half_stability"]
