"""Activation statistics: how often each MLP neuron fires on each group's tokens (LAPE).

For every group k, layer l and neuron j (Tang et al. 2024):

    counts[k, l, j] = #{ tokens t of group k : act_fn(W_gate x_t)_j > 0 }
    tokens[k]       = #{ tokens of group k }                    (padding and BOS excluded)
    sums[k, l, j]   = Σ_t act_fn(W_gate x_t)_j                   (float64, for mean activations)
    P[k, l, j]      = counts[k, l, j] / tokens[k]

The statistic is read at ``blocks.{l}.mlp.hook_pre`` and passed through the model's activation
function, computed in the model's dtype (as the reference does). On gated MLPs this is NOT
``hook_post``, whose sign also depends on the up projection. Only reducing hooks run (never
``run_with_cache``), under ``torch.inference_mode``, and the forward stops once the last MLP hook
has fired, so the unembedding is never computed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture import __version__
from tl_culture._io import load_tensors, save_tensors
from tl_culture.corpus import Corpus, TokenRows, as_corpora, encode
from tl_culture.errors import TLCultureError
from tl_culture.models import MLPHooks, model_device, model_name

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
            raise TLCultureError("counts and tokens must be non-negative")
        if (self.counts > self.tokens[:, None, None]).any():
            raise TLCultureError("a neuron fired on more tokens than its group has; the statistics are corrupted")

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
                raise TLCultureError(f"cannot merge statistics with different {key}: {self.meta[key]} vs {other.meta[key]}")
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
        if "counts" not in t or "tokens" not in t:
            raise TLCultureError(f"{path}: statistics file without counts/tokens; it is corrupted")
        return cls(meta["groups"], t["counts"], t["tokens"], t.get("sums"), meta.get("meta", {}))

    def __repr__(self) -> str:
        toks = ", ".join(f"{g}={n}" for g, n in zip(self.groups, self.tokens.tolist()))
        return f"ActivationStats({self.n_layers}x{self.d_mlp}, tokens: {toks})"


class _StopForward(Exception):
    """Raised by the last MLP hook to skip the rest of the forward (and the unembedding)."""


class Counter:
    """Accumulates the LAPE statistic of one group from hooked forwards.

    Call `fwd_hooks` to get the TransformerLens hooks, run batches through `run_batch`.
    Counts live on the model's device until `result` moves them to the CPU.
    """

    def __init__(self, model: Any, mlp: MLPHooks, device: torch.device, with_sums: bool = True) -> None:
        self.model, self.mlp, self.device = model, mlp, device
        self.counts = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.int64, device=device)
        self.sums = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.float64, device=device) if with_sums else None
        self.tokens = 0
        self._mask: torch.Tensor | None = None  # [batch*pos, 1] bool, None when every position counts

    def fwd_hooks(self) -> list[tuple[str, Any]]:
        last = self.mlp.n_layers - 1

        def make(layer: int):
            name = self.mlp.pre(layer)

            def hook(pre: torch.Tensor, hook: Any = None) -> None:
                self.mlp.check_width(pre, name)
                act = self.mlp.act(pre).reshape(-1, self.mlp.d_mlp)  # [batch*pos, d_mlp], model dtype
                pos = act > 0
                if self._mask is not None:
                    pos = pos & self._mask
                    act = act * self._mask
                self.counts[layer] += pos.sum(0)
                if self.sums is not None:
                    self.sums[layer] += act.sum(0, dtype=torch.float64)
                if layer == last:
                    raise _StopForward

            return hook

        return [(self.mlp.pre(layer), make(layer)) for layer in range(self.mlp.n_layers)]

    def run_batch(self, batch: TokenRows) -> int:
        """Run one batch of rows; returns the number of counted tokens."""
        width = int(batch.attention_mask.any(0).nonzero().max()) + 1  # trim all-padding columns
        ids = batch.input_ids[:, :width].to(self.device, non_blocking=True)
        attn, count = batch.attention_mask[:, :width], batch.count_mask[:, :width]
        full = bool(count.all())
        self._mask = None if full else count.reshape(-1, 1).to(self.device)
        kwargs = {} if bool(attn.all()) else {"attention_mask": attn.long().to(self.device)}
        try:
            self.model(ids, **kwargs)
        except _StopForward:
            pass
        finally:
            self._mask = None
        n = int(count.sum())
        self.tokens += n
        return n


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not enabled, leave=False)


def collect(
    model: Any,
    corpora: Mapping[str, Any],
    *,
    seq_len: int = 512,
    batch_size: int = 8,
    max_tokens: int | None = None,
    pack: bool = True,
    device: str | torch.device | None = None,
    with_sums: bool = True,
    progress: bool = True,
) -> ActivationStats:
    """Stream every group's corpus through ``model`` and count MLP neuron activations.

    Args:
        model: a TransformerLens model (TL 4.x `TransformerBridge` or TL 3.x `HookedTransformer`).
        corpora: group name -> corpus-like (`Corpus`, path, list of strings, or ``[row, pos]``
            token tensor).
        seq_len: tokens per row (including the BOS token prepended to each row).
        batch_size: rows per forward.
        max_tokens: cap on the counted tokens per group.
        pack: pack documents into full rows (no padding) rather than one document per row.
        device: where to run; default the model's device.
        with_sums: also accumulate float64 activation sums (for mean activations).
        progress: show a tqdm bar with tokens/s.

    Returns:
        `ActivationStats` with one row per group, in the order of ``corpora``.
    """
    if batch_size < 1:
        raise TLCultureError(f"batch_size must be at least 1, got {batch_size}")
    mlp = MLPHooks.from_model(model)
    named = as_corpora(corpora)
    dev = torch.device(device) if device is not None else model_device(model)
    tokenizer = getattr(model, "tokenizer", None)
    encoded = {g: encode(c, tokenizer, seq_len, pack=pack, max_tokens=max_tokens) for g, c in named.items()}
    G = len(named)
    counts = torch.zeros(G, mlp.n_layers, mlp.d_mlp, dtype=torch.int64)
    sums = torch.zeros(G, mlp.n_layers, mlp.d_mlp, dtype=torch.float64) if with_sums else None
    tokens = torch.zeros(G, dtype=torch.int64)
    t0 = time.perf_counter()
    for gi, (group, rows) in enumerate(encoded.items()):
        counter = Counter(model, mlp, dev, with_sums)
        with _progress(rows.n_tokens, f"collect {group}", progress) as bar, torch.inference_mode():
            with model.hooks(fwd_hooks=counter.fwd_hooks()):
                for start in range(0, len(rows), batch_size):
                    bar.update(counter.run_batch(rows.slice(start, start + batch_size)))
        counts[gi] = counter.counts.cpu()
        tokens[gi] = counter.tokens
        if sums is not None:
            sums[gi] = counter.sums.cpu()
    meta = collect_meta(model, mlp, named, seq_len=seq_len, pack=pack, max_tokens=max_tokens)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return ActivationStats(list(named), counts, tokens, sums, meta)


def collect_meta(
    model: Any, mlp: MLPHooks, corpora: Mapping[str, Corpus], *, seq_len: int, pack: bool, max_tokens: int | None
) -> dict[str, Any]:
    """Provenance stored with statistics: what was counted, on which model and text."""
    tok = getattr(model, "tokenizer", None)
    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    return {
        "model": model_name(model),
        "n_layers": mlp.n_layers,
        "d_mlp": mlp.d_mlp,
        "gated": mlp.gated,
        "act_fn": mlp.act_fn,
        "hook": "act_fn(blocks.{l}.mlp.hook_pre) > 0",
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "seq_len": seq_len,
        "pack": pack,
        "max_tokens": max_tokens,
        "tokenizer": getattr(tok, "name_or_path", None) if tok is not None else None,
        "corpora": {g: {"fingerprint": c.fingerprint, "source": c.source, "documents": len(c)} for g, c in corpora.items()},
        "tl_culture": __version__,
    }
