"""LAPE selection: language activation probability entropy (Tang et al. 2024).

With ``P[k, l, j] = counts / tokens`` over G groups:

    Pn[k, l, j] = P[k, l, j] / Σ_k P[k, l, j]               (0 where the sum is 0)
    H[l, j]     = -Σ_k Pn log Pn                            (natural log, 0 log 0 = 0)
    thr         = kthvalue(P.flatten(), round(numel(P) * filter_rate))
    H[l, j]     = +inf   where no group has P[k, l, j] > thr
    selected    = the round(L * N * top_rate) neurons of lowest H, globally across layers
    bar         = kthvalue(P.flatten(), round(numel(P) * activation_bar_ratio))
    member      = selected neuron (l, j) belongs to every group k with P[k, l, j] > bar

The constants default to the published ones (`TOP_RATE`, `FILTER_RATE`, `ACTIVATION_BAR_RATIO`,
the one home of these defaults). Ties in H are broken by the
flat (layer, neuron) index, lowest first, so the selection is deterministic. Every group is
kept, even one that gets no neuron (the reference silently drops a trailing empty group).
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from tl_culture.counting.stats import ActivationStats
from tl_culture.errors import TLCultureError
from tl_culture.selection.neurons import NeuronSet

TOP_RATE = 0.01
"""Share of all neurons (layers x d_mlp) that LAPE selects."""
FILTER_RATE = 0.95
"""A neuron is a candidate only if some group's activation probability exceeds this quantile."""
ACTIVATION_BAR_RATIO = 0.95
"""A selected neuron belongs to every group whose activation probability exceeds this quantile."""


def _check_rate(name: str, value: float) -> None:
    if not 0.0 < float(value) < 1.0:
        raise TLCultureError(f"{name} must be in (0, 1), got {value}")


def lape_entropy(P: Float[torch.Tensor, "group layer neuron"]) -> Float[torch.Tensor, "layer neuron"]:
    """Entropy over groups of the normalised activation probabilities (natural log)."""
    Pn = P / P.sum(dim=0, keepdim=True)
    Pn = torch.nan_to_num(Pn, nan=0.0)
    logs = torch.where(Pn > 0, Pn.log(), torch.zeros_like(Pn))
    return -(Pn * logs).sum(dim=0)


def _kth(flat: torch.Tensor, rate: float) -> float:
    k = max(1, round(flat.numel() * rate))
    return float(flat.kthvalue(k).values)


def identify(
    stats: ActivationStats,
    top_rate: float = TOP_RATE,
    filter_rate: float = FILTER_RATE,
    activation_bar_ratio: float = ACTIVATION_BAR_RATIO,
) -> NeuronSet:
    """Select group-specific neurons with LAPE.

    Args:
        stats: activation statistics with at least two groups.
        top_rate: fraction of all neurons (layers x d_mlp) to select.
        filter_rate: a neuron is a candidate only if some group's P exceeds this quantile of all P.
        activation_bar_ratio: a selected neuron belongs to every group whose P exceeds this
            quantile of all P.

    Returns:
        A `NeuronSet` over ``stats.groups`` with the thresholds in ``meta``.
    """
    for name, v in (
        ("top_rate", top_rate),
        ("filter_rate", filter_rate),
        ("activation_bar_ratio", activation_bar_ratio),
    ):
        _check_rate(name, v)
    G, L, N = stats.counts.shape
    if G < 2:
        raise TLCultureError(
            f"LAPE needs at least two groups to compare, got {G} ({stats.groups}); "
            "collect statistics of two or more corpora"
        )
    if (stats.tokens == 0).any():
        empty = [g for g, t in zip(stats.groups, stats.tokens.tolist()) if t == 0]
        raise TLCultureError(f"groups {empty} have no tokens; give them text")
    P = stats.probabilities
    H = lape_entropy(P)
    flat = P.flatten()
    thr = _kth(flat, filter_rate)
    H = torch.where((P > thr).any(dim=0), H, torch.full_like(H, float("inf")))
    k = round(L * N * top_rate)
    order = torch.sort(H.flatten(), stable=True).indices[:k]
    chosen = torch.zeros(L * N, dtype=torch.bool)
    chosen[order] = True
    chosen = chosen.view(L, N)
    bar = _kth(flat, activation_bar_ratio)
    masks = (P > bar) & chosen[None]
    meta = {
        "method": "LAPE",
        "top_rate": top_rate,
        "filter_rate": filter_rate,
        "activation_bar_ratio": activation_bar_ratio,
        "filter_threshold": thr,
        "activation_bar": bar,
        "n_selected": int(k),
        "n_selected_finite": int(torch.isfinite(H.flatten()[order]).sum()),
        "stats_meta": {key: stats.meta.get(key) for key in ("model", "n_layers", "d_mlp", "seq_len", "corpora")},
    }
    return NeuronSet(list(stats.groups), masks, meta)
