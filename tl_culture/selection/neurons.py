"""Neuron sets: which MLP neurons belong to which group, and the set algebra on them.

A `NeuronSet` is a boolean mask ``masks[group, layer, neuron]``. Neurons may belong to several
groups (LAPE assigns a selected neuron to every group where it is strongly active). The culture
categories of Namazifard & Galke Poech (2025) are plain set algebra on these masks:

    compound_c = language_{l(c)} ∩ culture_c
    pure_c     = culture_c − language_{l(c)}
    generic    = ∩_c pure_c
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int

from tl_culture._io import load_tensors, save_tensors
from tl_culture.errors import TLCultureError

KIND = "NeuronSet"


@dataclass
class NeuronSet:
    """Per-group sets of MLP neurons.

    Attributes:
        groups: group names, one per row of ``masks``.
        masks: ``bool[group, layer, neuron]``; True where the neuron belongs to the group.
        meta: free JSON-able metadata (model, selection parameters, provenance).
    """

    groups: list[str]
    masks: Bool[torch.Tensor, "group layer neuron"]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.groups = [str(g) for g in self.groups]
        if self.masks.dim() != 3:
            raise TLCultureError(
                f"NeuronSet masks must be bool[group, layer, neuron], got shape {tuple(self.masks.shape)}"
            )
        self.masks = self.masks.to(torch.bool)
        if len(self.groups) != self.masks.shape[0]:
            raise TLCultureError(
                f"NeuronSet has {len(self.groups)} group names but {self.masks.shape[0]} masks"
            )
        if len(set(self.groups)) != len(self.groups):
            raise TLCultureError(f"NeuronSet group names must be unique, got {self.groups}")

    # ------------------------------------------------------------------ shape
    @property
    def n_layers(self) -> int:
        return int(self.masks.shape[1])

    @property
    def d_mlp(self) -> int:
        return int(self.masks.shape[2])

    def index(self, group: str) -> int:
        """Row of ``group``; raises with the known names if it is absent."""
        try:
            return self.groups.index(group)
        except ValueError:
            raise TLCultureError(
                f"unknown group {group!r}; this neuron set has {', '.join(self.groups)}"
            ) from None

    def mask(self, group: str) -> Bool[torch.Tensor, "layer neuron"]:
        """The ``bool[layer, neuron]`` mask of one group."""
        return self.masks[self.index(group)]

    def indices(self, group: str) -> list[Int[torch.Tensor, " k"]]:
        """Per layer, the sorted neuron indices of ``group`` (the reference's layout)."""
        m = self.mask(group)
        return [torch.nonzero(m[layer], as_tuple=False).flatten().long() for layer in range(self.n_layers)]

    def count(self, group: str | None = None) -> int:
        """Number of neurons of ``group``, or of the union of all groups when None."""
        m = self.union_mask() if group is None else self.mask(group)
        return int(m.sum())

    def counts(self) -> dict[str, int]:
        """Neurons per group."""
        return {g: int(n) for g, n in zip(self.groups, self.masks.sum(dim=(1, 2)).tolist())}

    def union_mask(self) -> Bool[torch.Tensor, "layer neuron"]:
        """Neurons that belong to at least one group."""
        return self.masks.any(dim=0)

    def shared_mask(self, min_groups: int = 2) -> Bool[torch.Tensor, "layer neuron"]:
        """Neurons that belong to at least ``min_groups`` groups."""
        return self.masks.sum(dim=0) >= min_groups

    def layer_histogram(self) -> Int[torch.Tensor, "group layer"]:
        """``int64[group, layer]``: neurons per group in each layer."""
        return self.masks.sum(dim=2).long()

    def jaccard(self, other: NeuronSet | None = None) -> torch.Tensor:
        """``float[group_self, group_other]`` Jaccard similarity between groups (0 where both empty)."""
        other = self if other is None else other
        self._check_shape(other)
        a = self.masks.flatten(1).float()
        b = other.masks.flatten(1).float()
        inter = a @ b.T
        union = a.sum(1, keepdim=True) + b.sum(1)[None, :] - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))

    # ------------------------------------------------------------- algebra
    def _check_shape(self, other: NeuronSet) -> None:
        if other.masks.shape[1:] != self.masks.shape[1:]:
            raise TLCultureError(
                f"neuron sets of different models: {self.n_layers}x{self.d_mlp} vs "
                f"{other.n_layers}x{other.d_mlp} (layers x d_mlp)"
            )

    def _binary(self, other: NeuronSet, op) -> NeuronSet:
        self._check_shape(other)
        if other.groups != self.groups:
            raise TLCultureError(
                f"set operations need the same groups in the same order: {self.groups} vs "
                f"{other.groups}; use .select(...) or .rename(...) first"
            )
        return NeuronSet(list(self.groups), op(self.masks, other.masks), dict(self.meta))

    def __or__(self, other: NeuronSet) -> NeuronSet:
        return self._binary(other, torch.logical_or)

    def __and__(self, other: NeuronSet) -> NeuronSet:
        return self._binary(other, torch.logical_and)

    def __sub__(self, other: NeuronSet) -> NeuronSet:
        return self._binary(other, lambda a, b: a & ~b)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return self.groups == other.groups and torch.equal(self.masks, other.masks)

    def select(self, groups: Sequence[str], names: Sequence[str] | None = None) -> NeuronSet:
        """The sets of ``groups`` in that order (repeats allowed), optionally renamed to ``names``."""
        rows = [self.index(g) for g in groups]
        new_names = list(names) if names is not None else list(groups)
        return NeuronSet(new_names, self.masks[rows].clone(), dict(self.meta))

    def rename(self, mapping: Mapping[str, str]) -> NeuronSet:
        """Rename groups; names not in ``mapping`` stay."""
        return NeuronSet([mapping.get(g, g) for g in self.groups], self.masks.clone(), dict(self.meta))

    def intersection_of_all(self, name: str = "generic") -> NeuronSet:
        """A one-group set holding the neurons common to every group."""
        return NeuronSet([name], self.masks.all(dim=0, keepdim=True), dict(self.meta))

    # ------------------------------------------------------------ display
    def table(self, bands: int = 4) -> str:
        """A plain-text table: neurons per group, per layer band, shared neurons."""
        L = self.n_layers
        edges = [round(i * L / bands) for i in range(bands + 1)]
        hist = self.layer_histogram()
        heads = [f"L{edges[i]}-{edges[i + 1] - 1}" for i in range(bands) if edges[i + 1] > edges[i]]
        width = max([5] + [len(g) for g in self.groups])
        lines = [f"{'group':<{width}} {'total':>6} " + " ".join(f"{h:>8}" for h in heads)]
        for gi, g in enumerate(self.groups):
            cells = [
                int(hist[gi, edges[i] : edges[i + 1]].sum())
                for i in range(bands)
                if edges[i + 1] > edges[i]
            ]
            lines.append(f"{g:<{width}} {int(hist[gi].sum()):>6} " + " ".join(f"{c:>8}" for c in cells))
        lines.append(
            f"union {self.count()} neurons; {int(self.shared_mask(2).sum())} in two or more groups"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        counts = ", ".join(f"{g}={n}" for g, n in self.counts().items())
        return f"NeuronSet({self.n_layers}x{self.d_mlp}, {counts})"

    # --------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Save as safetensors + JSON metadata (atomic)."""
        save_tensors(path, KIND, {"masks": self.masks.to(torch.uint8)}, {"groups": self.groups, "meta": self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronSet:
        """Load a file written by `save`. A reference ``.pth`` file goes through `load_reference`."""
        tensors, meta = load_tensors(path, KIND)
        if "masks" not in tensors:
            raise TLCultureError(f"{path}: NeuronSet file without masks; it is corrupted")
        return cls(meta["groups"], tensors["masks"].bool(), meta.get("meta", {}))

    def to_reference(self) -> list[list[torch.Tensor]]:
        """The published LAPE layout: ``List[group][layer] -> LongTensor`` of sorted indices."""
        return [self.indices(g) for g in self.groups]

    @classmethod
    def from_reference(
        cls,
        lists: Sequence[Sequence[torch.Tensor]],
        groups: Sequence[str],
        n_layers: int | None = None,
        d_mlp: int | None = None,
    ) -> NeuronSet:
        """Build from the published ``List[group][layer] -> LongTensor`` layout.

        Args:
            lists: per group, per layer, neuron indices.
            groups: names of the groups, in order (the LLaMA-2 files: en, zh, fr, es, vi, id, ja).
            n_layers: number of layers; defaults to the length of the per-group lists.
            d_mlp: MLP width; defaults to one more than the largest index seen.
        """
        if len(lists) != len(groups):
            raise TLCultureError(f"{len(lists)} neuron lists but {len(groups)} group names")
        n_layers = n_layers if n_layers is not None else max((len(x) for x in lists), default=0)
        if d_mlp is None:
            d_mlp = 1 + max((int(t.max()) for x in lists for t in x if len(t)), default=-1)
        masks = torch.zeros(len(groups), n_layers, d_mlp, dtype=torch.bool)
        for gi, per_layer in enumerate(lists):
            if len(per_layer) > n_layers:
                raise TLCultureError(f"group {groups[gi]!r} has {len(per_layer)} layers, model has {n_layers}")
            for layer, idx in enumerate(per_layer):
                idx = torch.as_tensor(idx, dtype=torch.long).flatten()
                if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= d_mlp):
                    raise TLCultureError(
                        f"group {groups[gi]!r} layer {layer}: index out of range for d_mlp={d_mlp}"
                    )
                masks[gi, layer, idx] = True
        return cls(list(groups), masks, {"source": "reference"})

    @classmethod
    def load_reference(
        cls, path: str | os.PathLike, groups: Sequence[str], n_layers: int | None = None, d_mlp: int | None = None
    ) -> NeuronSet:
        """Read a published ``*.neuron.pth`` file safely (``torch.load(weights_only=True)``).

        A file that would need arbitrary code to unpickle is refused.
        """
        p = Path(path)
        if not p.is_file():
            raise TLCultureError(f"{p}: no such file; check the path")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TLCultureError(
                f"{p}: refused: not a plain tensor-list file ({type(exc).__name__}); "
                "only weights_only-safe reference files are read"
            ) from exc
        if not isinstance(obj, (list, tuple)) or not all(isinstance(x, (list, tuple)) for x in obj):
            raise TLCultureError(f"{p}: expected List[group][layer] -> LongTensor, got {type(obj).__name__}")
        ns = cls.from_reference(obj, groups, n_layers, d_mlp)
        ns.meta["source"] = str(p)
        return ns


def culture_categories(
    language: NeuronSet,
    culture: NeuronSet,
    culture_language: Mapping[str, str] | None = None,
) -> dict[str, NeuronSet]:
    """The culture-neuron categories of Namazifard & Galke Poech (2025).

    Args:
        language: language neuron sets (one group per language).
        culture: culture neuron sets (one group per culture).
        culture_language: culture name -> its language's group name; a culture absent from it
            pairs with the language group of the same name.

    Returns:
        ``language`` (each culture's language set, named after the culture), ``culture``,
        ``compound`` (language ∩ culture), ``pure`` (culture − language), all with the culture
        groups, and ``generic``: one group holding ∩ over cultures of ``pure``. Each is a new
        `NeuronSet` whose ``meta["category"]`` names it; the arguments are left unchanged.
    """
    culture_language = dict(culture_language or {})
    missing = [c for c in culture.groups if culture_language.get(c, c) not in language.groups]
    if missing:
        raise TLCultureError(
            f"cultures {missing} have no language set (languages: {', '.join(language.groups)}); "
            "pair them with --pair CULTURE=LANGUAGE"
        )
    lang = language.select([culture_language.get(c, c) for c in culture.groups], names=culture.groups)
    compound = lang & culture
    pure = culture - lang
    out = {
        "language": lang,
        "culture": culture,
        "compound": compound,
        "pure": pure,
        "generic": pure.intersection_of_all("generic"),
    }
    return {name: NeuronSet(ns.groups, ns.masks.clone(), {**ns.meta, "category": name}) for name, ns in out.items()}
