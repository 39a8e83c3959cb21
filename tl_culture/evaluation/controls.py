"""Random-neuron controls of a Δ NLL matrix, and the paired statement "beats the control".

Control draws: for group g, K seeded draws (``control_seed(seed, k, g's index)``) of random
neurons with g's count in every layer, ablated. With ``exclude_selected`` (the default of the
experiment) a draw never takes a neuron selected for any group of the run (`selected_union`), so a
control cannot ablate part of the effect it is compared against.

Statistics of one cell (group g, eval corpus e) with per-token NLLs ``base``, ``abl`` and
``ctl_k`` over the same scored tokens, and the document units of e
(`tl_culture.evaluation.units`):

    Δ        = mean(abl − base)
    Δ_ctl    = mean over tokens of (1/K) Σ_k (ctl_k − base)
    paired   = Δ − Δ_ctl = mean(abl − (1/K) Σ_k ctl_k)

Their CIs are percentile intervals from the same unit resamples (`bootstrap_cis`), drawn from one
generator seeded ``seed``, cells in order groups outer, eval corpora inner. "Beats the control" is
a paired CI above zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tl_culture.evaluation.bootstrap import CI_LEVEL, control_seed
from tl_culture.evaluation.units import MIN_UNITS, bootstrap_cis
from tl_culture.intervene.controls import random_mask_excluding
from tl_culture.intervene.interventions import Edit, Intervention
from tl_culture.selection.neurons import NeuronSet

DEFAULT_CONTROLS = 5
"""Control draws per group in the experiment."""


def control_ablations(
    neurons: NeuronSet,
    groups: Sequence[str],
    controls: int,
    seed: int,
    exclude: Bool[torch.Tensor, "layer neuron"] | None = None,
) -> dict[tuple[str, int], Intervention]:
    """``{(group, k): ablation of draw k}`` for every group and k < ``controls`` (draws outside ``exclude``)."""
    out = {}
    for k in range(controls):
        for gi, g in enumerate(groups):
            s = control_seed(seed, k, gi)
            mask = random_mask_excluding(neurons.mask(g), torch.Generator().manual_seed(s), exclude)
            out[g, k] = Intervention([Edit("ablate", mask, label=f"ablate(random~{g}, seed {s})")])
    return out


def cell_statistics(
    base: Float[torch.Tensor, " token"],
    ablated: Float[torch.Tensor, " token"],
    controls: Sequence[Float[torch.Tensor, " token"]],
    units: Int[torch.Tensor, " token"],
    *,
    n_boot: int,
    generator: torch.Generator,
    level: float = CI_LEVEL,
) -> dict[str, float]:
    """Δ, control Δ and paired Δ − control of one cell, with CIs from the same resamples.

    Returns:
        ``delta``, ``control_delta``, ``paired_delta`` (with controls) and their ``*_ci_low`` /
        ``*_ci_high`` (with ``n_boot``): the names of the `NLLMatrix` fields.
    """
    d = ablated.double() - base.double()
    series = [d]
    out = {"delta": float(d.mean()) if d.numel() else math.nan}
    if controls:
        c = torch.stack([x.double() for x in controls]).mean(0) - base.double()
        series += [c, d - c]
        out["control_delta"] = float(c.mean())
        out["paired_delta"] = float((d - c).mean())
    if n_boot:
        lo, hi = bootstrap_cis(torch.stack(series), units, n_boot=n_boot, level=level, generator=generator)
        names = ["delta", "control", "paired"][: len(series)]
        for i, name in enumerate(names):
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(lo[i]), float(hi[i])
    return out


def unit_counts(units: Mapping[str, Int[torch.Tensor, " token"]], warn: bool = True) -> dict[str, int]:
    """Resampling units per eval corpus; warns for any with fewer than `MIN_UNITS`."""
    counts = {e: int(u.max()) + 1 if u.numel() else 0 for e, u in units.items()}
    few = {e: n for e, n in counts.items() if n < MIN_UNITS}
    if few and warn:
        warnings.warn(f"bootstrap over fewer than {MIN_UNITS} documents for {few}: the CIs are unreliable; "
                      "score more held-out tokens (eval_tokens; in a run, eval_min_documents)", stacklevel=2)
    return counts


def matrix_statistics(
    nll: Mapping[Any, Mapping[str, torch.Tensor]],
    groups: Sequence[str],
    evals: Sequence[str],
    units: Mapping[str, Int[torch.Tensor, " token"]],
    *,
    controls: int,
    n_boot: int,
    seed: int,
    level: float = CI_LEVEL,
) -> dict[str, Float[torch.Tensor, "group eval"]]:
    """Every cell's `cell_statistics` as ``[group, eval]`` tensors.

    ``nll`` maps ``"baseline"``, ``("ablate", g)`` and ``("control", g, k)`` to per-eval per-token NLLs;
    a cell whose eval corpus a control was not scored on has no control (its control fields stay NaN).
    """
    g = torch.Generator().manual_seed(int(seed))
    cells: dict[str, torch.Tensor] = {}
    for gi, grp in enumerate(groups):
        for ei, e in enumerate(evals):
            ctl = [nll["control", grp, k][e] for k in range(controls) if e in nll["control", grp, k]]
            stats = cell_statistics(nll["baseline"][e], nll["ablate", grp][e], ctl, units[e], n_boot=n_boot,
                                    generator=g, level=level)
            for name, v in stats.items():
                cells.setdefault(name, torch.full((len(groups), len(evals)), math.nan, dtype=torch.float64))
                cells[name][gi, ei] = v
    return cells


__all__ = ["DEFAULT_CONTROLS", "cell_statistics", "control_ablations", "matrix_statistics",
           "unit_counts"]
