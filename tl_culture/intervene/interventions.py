"""Interventions on MLP neurons as composable TransformerLens hooks.

An `Intervention` edits ``a = act_fn(gate)`` of chosen neurons (docs/method.md). Every edit is an
affine map of ``a``, so a sequence of edits folds into one per-neuron map ``a -> mul * a + add``:

    ablate        mul = 0,       add = 0
    scale(k)      mul = k * mul, add = k * add
    set_to(v)     mul = 0,       add = v

applied in order (a later edit of the same neuron acts on the result of the earlier ones). The map
is applied at ``blocks.{l}.mlp.hook_post`` (the input of the down projection):

    dense:  hook_post = act_fn(hook_pre)                     ->  post' = mul * post + add
    gated:  hook_post = act_fn(hook_pre) * hook_pre_linear   ->  post' = mul * post + add * hook_pre_linear

Zeroing/scaling ``act_fn(gate)_j`` is exactly zeroing/scaling ``hook_post_j``. Setting it on a
gated MLP needs the up projection of the same token: a hook on ``hook_pre_linear`` keeps a
reference to that tensor during the forward and the ``hook_post`` hook uses (and drops) it. (Editing
``hook_pre`` instead cannot set ``act_fn(gate)`` to an arbitrary value: SiLU/GELU are not
invertible.) Only touched neurons are indexed: per layer one index tensor and two value tensors,
moved to the model's device once and cached.

Example:
    >>> edit = ablate(culture, "da") + scale(culture, "fa", 4.0)
    >>> with edit.applied(model):
    ...     logits = model(tokens)
    >>> model.run_with_hooks(tokens, fwd_hooks=edit.fwd_hooks(model))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float

from tl_culture.counting.stats import ActivationStats
from tl_culture.errors import TLCultureError
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import model_device
from tl_culture.selection.neurons import NeuronSet

KINDS = ("ablate", "scale", "set")


@dataclass(frozen=True)
class Edit:
    """One edit of one group's neurons.

    Attributes:
        kind: ``"ablate"``, ``"scale"`` or ``"set"``.
        mask: ``bool[layer, neuron]``: the neurons edited.
        factor: the scale factor (``scale`` only).
        values: ``float64[layer, neuron]`` target values of act_fn(gate) (``set`` only).
        label: a readable description, e.g. ``"scale(culture:fa, 4)"``.
    """

    kind: str
    mask: Bool[torch.Tensor, "layer neuron"]
    factor: float = 1.0
    values: Float[torch.Tensor, "layer neuron"] | None = None
    label: str = ""


class Intervention:
    """A sequence of neuron edits, usable as TransformerLens hooks.

    Build one with `ablate`, `scale`, `set_to` (or `random_like`); combine with ``+`` or
    `combine`. Use ``fwd_hooks(model)`` with ``run_with_hooks``/``model.hooks``/SAELens, or the
    context manager ``applied(model)``.
    """

    def __init__(self, edits: list[Edit], name: str | None = None) -> None:
        if not edits:
            raise TLCultureError("an intervention needs at least one edit; use ablate/scale/set_to")
        shape = tuple(edits[0].mask.shape)
        for e in edits:
            if e.kind not in KINDS:
                raise TLCultureError(f"unknown edit kind {e.kind!r}; use one of {', '.join(KINDS)}")
            if tuple(e.mask.shape) != shape:
                raise TLCultureError(
                    f"cannot combine edits for {shape[0]}x{shape[1]} and "
                    f"{e.mask.shape[0]}x{e.mask.shape[1]} neurons; use neuron sets of one model"
                )
        self.edits = list(edits)
        self.name = name or " + ".join(e.label for e in edits)
        self._maps = self._fold()
        self._cache: dict[torch.device | tuple, dict[int, tuple[torch.Tensor, ...]]] = {}

    # ------------------------------------------------------------------ algebra
    def __add__(self, other: Intervention) -> Intervention:
        if not isinstance(other, Intervention):
            return NotImplemented
        return Intervention(self.edits + other.edits)

    def __repr__(self) -> str:
        return f"Intervention({self.name}; {self.n_neurons} neurons in layers {self.layers})"

    @property
    def n_layers(self) -> int:
        return int(self.edits[0].mask.shape[0])

    @property
    def d_mlp(self) -> int:
        return int(self.edits[0].mask.shape[1])

    @property
    def mask(self) -> Bool[torch.Tensor, "layer neuron"]:
        """Every neuron touched by some edit."""
        out = torch.zeros_like(self.edits[0].mask)
        for e in self.edits:
            out |= e.mask
        return out

    @property
    def n_neurons(self) -> int:
        return int(self.mask.sum())

    @property
    def layers(self) -> list[int]:
        """Layers with at least one edited neuron, ascending."""
        return sorted(self._maps)

    def _fold(self) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Fold the edits into per-layer ``(index, mul, add)`` (CPU, float64)."""
        L, N = self.n_layers, self.d_mlp
        mul = torch.ones(L, N, dtype=torch.float64)
        add = torch.zeros(L, N, dtype=torch.float64)
        for e in self.edits:
            m = e.mask
            if e.kind == "ablate":
                mul[m], add[m] = 0.0, 0.0
            elif e.kind == "scale":
                mul[m] *= e.factor
                add[m] *= e.factor
            else:
                mul[m], add[m] = 0.0, e.values[m]
        touched = self.mask
        maps = {}
        for layer in torch.nonzero(touched.any(1)).flatten().tolist():
            idx = torch.nonzero(touched[layer]).flatten()
            maps[layer] = (idx, mul[layer, idx], add[layer, idx])
        return maps

    def _device_maps(self, device: torch.device, dtype: torch.dtype) -> dict[int, tuple[torch.Tensor, ...]]:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = {
                layer: (idx.to(device), mul.to(device, dtype), add.to(device, dtype), bool((add != 0).any()))
                for layer, (idx, mul, add) in self._maps.items()
            }
        return self._cache[key]

    # ------------------------------------------------------------------ hooks
    def validate(self, model: Any) -> MLPHooks:
        """Check that this intervention fits ``model`` (layers, width, hooks); return its `MLPHooks`."""
        mlp = MLPHooks.from_model(model)
        mlp.check_neurons(self.n_layers, self.d_mlp, what=f"intervention {self.name!r}")
        return mlp

    def fwd_hooks(self, model: Any, device: torch.device | str | None = None) -> list[tuple[str, Any]]:
        """TransformerLens forward hooks ``[(hook_name, fn)]`` that apply this intervention.

        Hook functions take ``(tensor, hook)`` (TL 3.x and 4.x). On gated MLPs a layer whose edits
        set values gets a second hook on ``hook_pre_linear``, which must fire before
        ``hook_post`` of the same forward (it does in every TL MLP).

        Args:
            model: the TransformerLens model the hooks are for (validated here).
            device: where the activations live; default the model's device.
        """
        mlp = self.validate(model)
        dev = torch.device(device) if device is not None else model_device(model)
        dtype = getattr(getattr(model, "cfg", None), "dtype", None) or torch.float32
        maps = self._device_maps(dev, dtype)
        hooks: list[tuple[str, Any]] = []
        for layer, (idx, mul, add, has_add) in maps.items():
            store: dict[str, torch.Tensor] = {}
            if mlp.gated and has_add:
                hooks.append((mlp.pre_linear(layer), _keep_linear(store, mlp, mlp.pre_linear(layer))))
            hooks.append((mlp.post(layer), _edit_post(store, mlp, mlp.post(layer), idx, mul, add, has_add)))
        return hooks

    @contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Context manager: the model with this intervention's hooks; exactly they are removed on exit.

        Users' own hooks (added before or inside the block) are left alone, also when the block
        raises.
        """
        with model.hooks(fwd_hooks=self.fwd_hooks(model)):
            yield model


def _keep_linear(store: dict, mlp: MLPHooks, name: str):
    def hook(lin: torch.Tensor, hook: Any = None) -> None:
        mlp.check_width(lin, name)
        store["lin"] = lin

    return hook


def _edit_post(store: dict, mlp: MLPHooks, name: str, idx, mul, add, has_add: bool):
    gated = mlp.gated

    def hook(post: torch.Tensor, hook: Any = None) -> torch.Tensor:
        mlp.check_width(post, name)
        sel = post[..., idx]
        if mul.dtype != post.dtype:  # a model run in another dtype than cfg.dtype says
            m, a = mul.to(post.dtype), add.to(post.dtype)
        else:
            m, a = mul, add
        new = sel * m
        if has_add:
            if gated:
                lin = store.pop("lin", None)
                if lin is None:
                    raise TLCultureError(
                        f"{name}: hook_pre_linear did not fire before hook_post; set_to needs it on gated MLPs"
                    )
                new = new + a * lin[..., idx]
            else:
                new = new + a
        return post.index_copy(post.dim() - 1, idx, new)

    return hook


# --------------------------------------------------------------------------- constructors
def _group_mask(neurons: NeuronSet, group: str) -> Bool[torch.Tensor, "layer neuron"]:
    if not isinstance(neurons, NeuronSet):
        raise TLCultureError(f"expected a NeuronSet, got {type(neurons).__name__}; load one with NeuronSet.load")
    return neurons.mask(group).clone()


def _tag(neurons: NeuronSet, group: str) -> str:
    cat = neurons.meta.get("category") if isinstance(neurons.meta, dict) else None
    return f"{cat}:{group}" if cat else group


def ablate(neurons: NeuronSet, group: str) -> Intervention:
    """Zero act_fn(gate) of ``group``'s neurons (the reference's ``index_fill_(.., 0)``)."""
    return Intervention([Edit("ablate", _group_mask(neurons, group), label=f"ablate({_tag(neurons, group)})")])


def scale(neurons: NeuronSet, group: str, factor: float) -> Intervention:
    """Multiply act_fn(gate) of ``group``'s neurons by ``factor`` (boost > 1, damp < 1)."""
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        raise TLCultureError(f"scale factor must be a number, got {factor!r}") from None
    if not math.isfinite(factor):
        raise TLCultureError(f"scale factor must be finite, got {factor}")
    mask = _group_mask(neurons, group)
    return Intervention([Edit("scale", mask, factor=factor, label=f"scale({_tag(neurons, group)}, {factor:g})")])


def set_to(neurons: NeuronSet, group: str, values: Any) -> Intervention:
    """Set act_fn(gate) of ``group``'s neurons to ``values``.

    Args:
        neurons: the neuron sets.
        group: whose neurons to set.
        values: a number (every neuron), a ``[layer, neuron]`` tensor (read at the group's
            neurons), e.g. ``stats.mean_activation()[stats.index("fa")]``, or an `ActivationStats`
            with sums, whose mean activation on ``group`` is used.
    """
    mask = _group_mask(neurons, group)
    label = f"set({_tag(neurons, group)}"
    if isinstance(values, ActivationStats):
        values = values.mean_activation()[values.index(group)]
        label += ", mean"
    elif isinstance(values, (int, float)) and not isinstance(values, bool):
        label += f", {float(values):g}"
        values = torch.full(mask.shape, float(values), dtype=torch.float64)
    elif isinstance(values, torch.Tensor):
        label += ", tensor"
    else:
        raise TLCultureError(
            f"set_to values must be a number, a [layer, neuron] tensor or ActivationStats, got {type(values).__name__}"
        )
    values = values.detach().to("cpu", torch.float64)
    if tuple(values.shape) != tuple(mask.shape):
        raise TLCultureError(
            f"set_to values have shape {tuple(values.shape)}, the neuron set is {tuple(mask.shape)} "
            "(layer, neuron); give one value per neuron"
        )
    if not bool(torch.isfinite(values[mask]).all()):
        raise TLCultureError("set_to values are not finite at some selected neurons (NaN mean of an empty group?)")
    return Intervention([Edit("set", mask, values=values, label=label + ")")])


def combine(*interventions: Intervention) -> Intervention:
    """One intervention applying ``interventions`` in order (same as ``a + b + ...``)."""
    if not interventions:
        raise TLCultureError("combine() needs at least one intervention")
    out = interventions[0]
    for i in interventions[1:]:
        out = out + i
    return out


def random_mask(
    mask: Bool[torch.Tensor, "layer neuron"], generator: torch.Generator
) -> Bool[torch.Tensor, "layer neuron"]:
    """Random neurons with the same count per layer as ``mask`` (uniform, without replacement)."""
    L, N = mask.shape
    counts = mask.sum(1)
    keys = torch.rand(L, N, generator=generator)
    ranks = keys.argsort(1).argsort(1)  # a uniform random permutation per layer
    return ranks < counts[:, None]


def random_like(neurons: NeuronSet, group: str, seed: int = 0) -> Intervention:
    """Ablate random neurons with the same per-layer counts as ``group`` (the random control)."""
    g = torch.Generator().manual_seed(int(seed))
    mask = random_mask(_group_mask(neurons, group), g)
    return Intervention([Edit("ablate", mask, label=f"ablate(random~{_tag(neurons, group)}, seed {seed})")])


__all__ = ["Edit", "Intervention", "ablate", "combine", "random_like", "random_mask", "scale", "set_to"]
