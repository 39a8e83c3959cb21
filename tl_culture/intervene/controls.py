"""Random-neuron controls: the same edit on random neurons with the same count in every layer.

A control answers "is it these neurons, or would any neurons of this many per layer do?". For a
mask ``m: bool[layer, neuron]`` and an optional ``exclude`` mask, one draw is, per layer l,

    keys[l, j] ~ Uniform[0, 1)                        (one generator, row-major)
    keys[l, j] += 1           where exclude[l, j]    (drawn only when too few others remain)
    control[l] = the Σ_j m[l, j] neurons with the smallest keys

so without ``exclude`` it is the draw of `tl_culture.intervene.interventions.random_mask` with the
same generator, bit for bit. Excluding the run's selected neurons (``exclude_selected``) keeps a
control from ablating part of the effect it is compared against.
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Bool

from tl_culture.errors import TLCultureError
from tl_culture.intervene.interventions import Edit, Intervention
from tl_culture.selection.neurons import NeuronSet


def random_mask_excluding(
    mask: Bool[torch.Tensor, "layer neuron"],
    generator: torch.Generator,
    exclude: Bool[torch.Tensor, "layer neuron"] | None = None,
    strict: bool = False,
) -> Bool[torch.Tensor, "layer neuron"]:
    """Random neurons with the per-layer counts of ``mask``, none of them in ``exclude`` where possible.

    A layer with fewer neurons outside ``exclude`` than ``mask`` needs there takes every one of
    them and the rest at random from ``exclude``, with a warning (small models).

    Raises:
        TLCultureError: with ``strict``, instead of drawing from ``exclude``.
    """
    L, N = mask.shape
    counts = mask.sum(1)
    keys = torch.rand(L, N, generator=generator)
    if exclude is not None:
        if tuple(exclude.shape) != (L, N):
            raise TLCultureError(f"exclude mask has shape {tuple(exclude.shape)}, the neurons are {(L, N)}")
        free = N - exclude.sum(1)
        short = torch.nonzero(counts > free).flatten().tolist()
        if short:
            layer = short[0]
            why = (f"layer {layer} has {int(free[layer])} neurons outside the excluded ones, the control needs "
                   f"{int(counts[layer])}")
            if strict:
                raise TLCultureError(f"{why}; use exclude_selected=False")
            warnings.warn(f"{why}: the control also draws excluded neurons there", stacklevel=2)
        keys = keys + exclude.to(keys.dtype)
    ranks = keys.argsort(1).argsort(1)
    return ranks < counts[:, None]


def selected_union(*neuron_sets: NeuronSet) -> Bool[torch.Tensor, "layer neuron"]:
    """Every neuron selected for some group of some of ``neuron_sets`` (one model's sets)."""
    if not neuron_sets:
        raise TLCultureError("selected_union needs at least one NeuronSet")
    out = torch.zeros(neuron_sets[0].masks.shape[1:], dtype=torch.bool)
    for ns in neuron_sets:
        if tuple(ns.masks.shape[1:]) != tuple(out.shape):
            raise TLCultureError("selected_union: the neuron sets are for different models")
        out |= ns.masks.any(0)
    return out


def random_edit(
    intervention: Intervention, seed: int, exclude: Bool[torch.Tensor, "layer neuron"] | None = None
) -> Intervention:
    """``intervention`` with each edit moved to random neurons (same per-layer counts, same kind).

    Each edit gets its own draw from one generator seeded with ``seed``. A ``set`` edit keeps its
    full ``[layer, neuron]`` value table, so the random neurons are set to their own values
    (e.g. their own mean activation on the group).

    Args:
        intervention: the edit to imitate.
        seed: seed of this control draw.
        exclude: neurons never drawn (e.g. `selected_union` of the run, or ``intervention.mask``).
    """
    g = torch.Generator().manual_seed(int(seed))
    edits = []
    for e in intervention.edits:
        mask = random_mask_excluding(e.mask, g, exclude)
        if e.values is not None and not bool(torch.isfinite(e.values[mask]).all()):
            raise TLCultureError(f"{e.label}: the set values are not finite at some randomly drawn neurons")
        label = f"{e.kind}(random~{e.label}, seed {seed})"
        edits.append(Edit(e.kind, mask, factor=e.factor, values=e.values, label=label))
    return Intervention(edits)


__all__ = ["random_edit", "random_mask_excluding", "selected_union"]
