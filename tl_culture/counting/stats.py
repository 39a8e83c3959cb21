"""`ActivationStats`: how often each MLP neuron fires on each group's tokens, and its file format.

For every group k, layer l and neuron j (Tang et al. 2024):

    counts[k, l, j] = #{ tokens t of group k : act_fn(W_gate x_t)_j > 0 }
    tokens[k]       = #{ tokens of group k }                    (padding and BOS excluded)
    sums[k, l, j]   = Σ_t act_fn(W_gate x_t)_j                   (float64, for mean activations)
    P[k, l, j]      = counts[k, l, j] / tokens[k]

`tl_culture.counting.collect.collect` computes them; statistics of disjoint runs add up (``+``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture._io import load_tensors, save_tensors
from tl_culture.errors import TLCultureError

KIND = "ActivationStats"


@dataclass
class ActivationStats:
    """Per-group activation counts of every MLP neuron.

    Attributes:
        groups: group names.
        counts: ``int64[group, layer, neuron]``: tokens on which the neuron's act_fn(gate) > 0.
        tokens: ``int64[group]``: tokens seen per group.
        sums: ``float64[group, layer, neuron]``: sum of act_fn(gate) over the tokens, or None.
        meta: model, hook, seq_len, tokenizer, corpus fingerprints, ...
    """

    groups: list[str]
    counts: Int[torch.Tensor, "group layer neuron"]
    tokens: Int[torch.Tensor, " group"]
    sums: Float[torch.Tensor, "group layer neuron"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.groups = [str(g) for g in self.groups]
        self.counts = torch.as_tensor(self.counts).to(torch.int64)
        self.tokens = torch.as_tensor(self.tokens).to(torch.int64).flatten()
        if self.counts.dim() != 3:
            raise TLCultureError(f"counts must be [group, layer, neuron], got {tuple(self.counts.shape)}")
        if len(self.groups) != self.counts.shape[0] or len(self.groups) != self.tokens.shape[0]:
            raise TLCultureError(
                f"{len(self.groups)} groups but counts/tokens for {self.counts.shape[0]}/{self.tokens.shape[0]}"
            )
        if len(set(self.groups)) != len(self.groups):
            raise TLCultureError(f"group names must be unique, got {self.groups}")
        if self.sums is not None:
            self.sums = torch.as_tensor(self.sums).to(torch.float64)
            if self.sums.shape != self.counts.shape:
                raise TLCultureError("sums must have the shape of counts")
        if (self.counts < 0).any() or (self.tokens < 0).any():
            raise TLCultureError(
                "counts and tokens must be non-negative; the statistics are corrupted, collect them again"
            )
        if (self.counts > self.tokens[:, None, None]).any():
            raise TLCultureError(
                "a neuron fired on more tokens than its group has; the statistics are corrupted, collect them again"
            )

    @property
    def n_layers(self) -> int:
        return int(self.counts.shape[1])

    @property
    def d_mlp(self) -> int:
        return int(self.counts.shape[2])

    @property
    def probabilities(self) -> Float[torch.Tensor, "group layer neuron"]:
        """``P[k, l, j] = counts / tokens`` (float64; NaN for a group with no tokens)."""
        return self.counts.double() / self.tokens.double()[:, None, None]

    def mean_activation(self) -> Float[torch.Tensor, "group layer neuron"]:
        """Mean of act_fn(gate) over each group's tokens: ``sums / tokens``."""
        if self.sums is None:
            raise TLCultureError("these statistics have no activation sums; collect them again")
        return self.sums / self.tokens.double()[:, None, None]

    def index(self, group: str) -> int:
        try:
            return self.groups.index(group)
        except ValueError:
            raise TLCultureError(f"unknown group {group!r}; these statistics have {', '.join(self.groups)}") from None

    def select(self, groups: list[str]) -> ActivationStats:
        """The statistics of ``groups``, in that order."""
        rows = [self.index(g) for g in groups]
        sums = self.sums[rows] if self.sums is not None else None
        return ActivationStats(list(groups), self.counts[rows], self.tokens[rows], sums, dict(self.meta))

    def __add__(self, other: ActivationStats) -> ActivationStats:
        """Merge: counts, tokens and sums of a group present in both are added; others are appended."""
        if not isinstance(other, ActivationStats):
            return NotImplemented
        if other.counts.shape[1:] != self.counts.shape[1:]:
            raise TLCultureError(
                f"cannot merge statistics of different models ({self.n_layers}x{self.d_mlp} vs "
                f"{other.n_layers}x{other.d_mlp})"
            )
        for key in ("model", "act_fn", "hook"):
            if key in self.meta and key in other.meta and self.meta[key] != other.meta[key]:
                raise TLCultureError(
                    f"cannot merge statistics with different {key}: {self.meta[key]} vs {other.meta[key]}"
                )
        groups = list(self.groups) + [g for g in other.groups if g not in self.groups]
        G = len(groups)
        counts = torch.zeros(G, self.n_layers, self.d_mlp, dtype=torch.int64)
        tokens = torch.zeros(G, dtype=torch.int64)
        with_sums = self.sums is not None and other.sums is not None
        sums = torch.zeros(G, self.n_layers, self.d_mlp, dtype=torch.float64) if with_sums else None
        for src in (self, other):
            rows = [groups.index(g) for g in src.groups]
            counts[rows] += src.counts
            tokens[rows] += src.tokens
            if sums is not None:
                sums[rows] += src.sums
        meta = dict(self.meta)
        fps = {**self.meta.get("corpora", {}), **other.meta.get("corpora", {})}
        if fps:
            meta["corpora"] = fps
        return ActivationStats(groups, counts, tokens, sums, meta)

    def save(self, path: str | os.PathLike) -> None:
        """Save as safetensors + JSON metadata (atomic)."""
        tensors = {"counts": self.counts, "tokens": self.tokens}
        if self.sums is not None:
            tensors["sums"] = self.sums
        save_tensors(path, KIND, tensors, {"groups": self.groups, "meta": self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStats:
        """Load a file written by `save`."""
        t, meta = load_tensors(path, KIND)
        if "counts" not in t or "tokens" not in t or not isinstance(meta.get("groups"), list):
            raise TLCultureError(
                f"{path}: statistics file without counts/tokens/groups; it is corrupted, collect again"
            )
        try:
            return cls(meta["groups"], t["counts"], t["tokens"], t.get("sums"), meta.get("meta") or {})
        except TLCultureError as exc:
            raise TLCultureError(f"{path}: {exc}") from None

    def __repr__(self) -> str:
        toks = ", ".join(f"{g}={n}" for g, n in zip(self.groups, self.tokens.tolist(), strict=True))
        return f"ActivationStats({self.n_layers}x{self.d_mlp}, tokens: {toks})"
