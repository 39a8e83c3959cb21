"""`NeuronExamples`: each neuron's top activating contexts per group, and its file format.

For neuron (l, j) and group g, ``activation[i, g, :]`` holds the k highest values of
``act_fn(blocks.{l}.mlp.hook_pre)[..., j]`` over the group's counted tokens (BOS and padding
excluded), best first, ties broken by position (earlier rows, then earlier positions, first).
Context c is the ±``window`` tokens around the maximum within its row, with the neuron's
activation on each; slots outside the row's counted tokens hold id -1. `top` returns the contexts
of one neuron and group as `Context` objects; `tl_culture.explore.scan.top_examples` computes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tl_culture._io import load_tensors, save_tensors
from tl_culture.errors import TLCultureError
from tl_culture.model.hooks import MLPHooks
from tl_culture.selection.neurons import NeuronSet

KIND = "NeuronExamples"


@dataclass(frozen=True)
class Context:
    """One top activating context of a neuron.

    Attributes:
        activation: the neuron's activation on the centre token (its maximum over the context's
            position, the quantity ranked).
        row: the row of the group's row stream (`tl_culture.data.rows.RowStream`) it lies in.
        pos: the centre token's position in that row (the BOS token, when there is one, is 0).
        center: the centre token's index in ``tokens``.
        tokens: the window's tokens as text.
        token_ids: their ids.
        values: the neuron's activation on each token of the window.
    """

    activation: float
    row: int
    pos: int
    center: int
    tokens: list[str]
    token_ids: list[int]
    values: list[float]


def neuron_rows(layers: Int[torch.Tensor, " n"], neurons: Int[torch.Tensor, " n"]) -> dict[tuple[int, int], int]:
    """``{(layer, neuron): row}`` of a result stored one neuron per row."""
    return {(int(a), int(b)): i for i, (a, b) in enumerate(zip(layers.tolist(), neurons.tolist()))}


def neuron_row(rows: dict[tuple[int, int], int], layer: int, neuron: int, missing: str) -> int:
    """Row of ``(layer, neuron)`` in ``rows`` (`neuron_rows`); one-line error ``neuron L.N {missing}`` when absent."""
    try:
        return rows[(int(layer), int(neuron))]
    except KeyError:
        raise TLCultureError(f"neuron L{layer}.N{neuron} {missing}") from None


def neuron_list(neurons: Any, mlp: MLPHooks | None = None) -> tuple[Int[torch.Tensor, " n"], Int[torch.Tensor, " n"]]:
    """``(layers, indices)`` of a neuron selection, sorted by layer then index, without repeats.

    Args:
        neurons: a `NeuronSet` (the union of its groups), a ``bool[layer, neuron]`` mask, or
            ``(layer, neuron)`` pairs.
        mlp: the model's MLP neurons, to check that every neuron exists.

    Raises:
        TLCultureError: the selection is empty or malformed, or names a neuron the model lacks.
    """
    if isinstance(neurons, NeuronSet):
        neurons = neurons.union_mask()
    if isinstance(neurons, torch.Tensor) and neurons.dtype == torch.bool:
        if neurons.dim() != 2:
            raise TLCultureError(f"a neuron mask must be bool[layer, neuron], got shape {tuple(neurons.shape)}")
        pairs = neurons.nonzero()
    else:
        try:
            pairs = torch.as_tensor([(int(a), int(b)) for a, b in neurons], dtype=torch.long).reshape(-1, 2)
        except (TypeError, ValueError):
            raise TLCultureError(
                "neurons must be a NeuronSet, a bool[layer, neuron] mask or (layer, neuron) pairs"
            ) from None
    if len(pairs) == 0:
        raise TLCultureError("no neurons to explore; the selection is empty")
    pairs = torch.unique(pairs, dim=0)  # sorted lexicographically: by layer, then index
    if mlp is not None:
        bad = (pairs[:, 0] >= mlp.n_layers) | (pairs[:, 1] >= mlp.d_mlp) | (pairs < 0).any(1)
        if bad.any():
            layer, j = pairs[bad][0].tolist()
            raise TLCultureError(
                f"neuron L{layer}.N{j} does not exist; the model has {mlp.n_layers} layers x {mlp.d_mlp} neurons"
            )
    return pairs[:, 0].contiguous(), pairs[:, 1].contiguous()


@dataclass(eq=False)
class NeuronExamples:
    """Top activating contexts of neurons, per group (see the module docstring).

    Attributes:
        groups: group names (corpora), in order.
        layers, neurons: ``int64[n]``: neuron i is ``(layers[i], neurons[i])``.
        activation: ``float32[n, group, k]`` best first; -inf where the group has fewer than k tokens.
        row, pos: ``int64[n, group, k]`` where each maximum lies (-1 where empty).
        token_ids: ``int64[n, group, k, 2 * window + 1]`` the window's ids (-1 outside the row's tokens).
        values: ``float32[n, group, k, 2 * window + 1]`` the neuron's activation on them (0 outside).
        token_text: ``int64[n, group, k, 2 * window + 1]`` index of each token's text in ``strings``.
        strings: the texts of the tokens (`tl_culture.explore.text.TokenText`).
        tokens_scanned: ``int64[group]`` counted tokens each group's top k were taken from.
        meta: model, k, window, seq_len, corpora, ...
    """

    groups: list[str]
    layers: Int[torch.Tensor, " n"]
    neurons: Int[torch.Tensor, " n"]
    activation: Float[torch.Tensor, "n group k"]
    row: Int[torch.Tensor, "n group k"]
    pos: Int[torch.Tensor, "n group k"]
    token_ids: Int[torch.Tensor, "n group k w"]
    values: Float[torch.Tensor, "n group k w"]
    token_text: Int[torch.Tensor, "n group k w"]
    strings: list[str]
    tokens_scanned: Int[torch.Tensor, " group"]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, G = len(self.layers), len(self.groups)
        if self.activation.dim() != 3 or self.activation.shape[:2] != (n, G):
            raise TLCultureError(f"activation must be [{n}, {G}, k], got {tuple(self.activation.shape)}")
        if self.token_ids.shape != self.values.shape or self.token_ids.shape[:3] != self.activation.shape:
            raise TLCultureError("token_ids and values must be [neuron, group, k, window] matching activation")
        self._where = neuron_rows(self.layers, self.neurons)

    @property
    def k(self) -> int:
        return int(self.activation.shape[2])

    @property
    def window(self) -> int:
        """Tokens kept on each side of a context's maximum."""
        return (int(self.token_ids.shape[3]) - 1) // 2

    def __len__(self) -> int:
        return int(self.layers.shape[0])

    def pairs(self) -> list[tuple[int, int]]:
        """The ``(layer, neuron)`` pairs, in order."""
        return list(self._where)

    def __contains__(self, pair: object) -> bool:
        """Whether ``(layer, neuron)`` was explored."""
        return pair in self._where

    def index(self, layer: int, neuron: int) -> int:
        """Row of neuron ``(layer, neuron)``; raises when it was not explored."""
        return neuron_row(self._where, layer, neuron, f"has no examples; these examples cover {len(self)} neurons")

    def group_index(self, group: str) -> int:
        if group not in self.groups:
            raise TLCultureError(f"unknown group {group!r}; these examples have {', '.join(self.groups)}")
        return self.groups.index(group)

    def filled(self) -> Bool[torch.Tensor, "n group k"]:
        """True where a context exists."""
        return torch.isfinite(self.activation)

    def top(self, layer: int, neuron: int, group: str) -> list[Context]:
        """The contexts of neuron ``(layer, neuron)`` in ``group``, highest activation first."""
        i, g = self.index(layer, neuron), self.group_index(group)
        out = []
        for c in range(self.k):
            if not bool(torch.isfinite(self.activation[i, g, c])):
                break
            keep = self.token_ids[i, g, c] >= 0
            center = int(keep[: self.window].sum())
            out.append(Context(
                float(self.activation[i, g, c]), int(self.row[i, g, c]), int(self.pos[i, g, c]), center,
                [self.strings[t] for t in self.token_text[i, g, c][keep].tolist()],
                self.token_ids[i, g, c][keep].tolist(), self.values[i, g, c][keep].tolist(),
            ))
        return out

    def view(self, layer: int, neuron: int, groups: Iterable[str] | None = None):
        """circuitsvis ``TopkSamples`` of one neuron: its top contexts, one list per group.

        Returns:
            A circuitsvis `RenderedHTML` that shows in a notebook (from the inlined library, no network).
        """
        from tl_culture.explore.view import topk_samples_view

        names = list(self.groups if groups is None else groups)
        ctx = {g: self.top(layer, neuron, g) for g in names}
        return topk_samples_view(f"L{layer}.N{neuron}", ctx)

    # --------------------------------------------------------------- files
    #: The tensors a file holds (the constructor's tensor arguments, in order), and those stored as int32.
    TENSORS = ("layers", "neurons", "activation", "row", "pos", "token_ids", "values", "token_text", "tokens_scanned")
    INT32 = ("token_ids", "token_text")

    def save(self, path: str | os.PathLike) -> None:
        """Save as safetensors + JSON metadata (atomic); ids and text indices as int32."""
        tensors = {name: getattr(self, name) for name in self.TENSORS}
        tensors.update({name: tensors[name].to(torch.int32) for name in self.INT32})
        save_tensors(path, KIND, tensors, {"groups": self.groups, "strings": self.strings, "meta": self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronExamples:
        """Load a file written by `save`."""
        t, meta = load_tensors(path, KIND)
        missing = [name for name in cls.TENSORS if name not in t]
        if missing or not isinstance(meta.get("groups"), list) or not isinstance(meta.get("strings"), list):
            raise TLCultureError(f"{path}: examples file without {missing or 'groups/strings'}; it is corrupted")
        t.update({name: t[name].long() for name in cls.INT32})
        try:
            return cls(meta["groups"], *(t[name] for name in cls.TENSORS[:-1]), meta["strings"],
                       t["tokens_scanned"], meta.get("meta") or {})
        except TLCultureError as exc:
            raise TLCultureError(f"{path}: {exc}") from None

    def __repr__(self) -> str:
        return f"NeuronExamples({len(self)} neurons, groups {', '.join(self.groups)}, k={self.k}, window={self.window})"
