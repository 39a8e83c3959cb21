"""Activation statistics: how often each MLP neuron fires on each group's tokens (LAPE).

For every group k, layer l and neuron j (Tang et al. 2024):

    counts[k, l, j] = #{ tokens t of group k : act_fn(W_gate x_t)_j > 0 }
    tokens[k]       = #{ tokens of group k }                    (padding and BOS excluded)
    sums[k, l, j]   = Σ_t act_fn(W_gate x_t)_j                   (float64, for mean activations)
    P[k, l, j]      = counts[k, l, j] / tokens[k]

The statistic is read at ``blocks.{l}.mlp.hook_pre``. Every supported activation function is
sign-preserving (act_fn(z) > 0 iff z > 0, tested per activation and dtype), so the count tests the
gate pre-activation's sign in the model's dtype, which is the reference's test of act_fn(gate) in
the model's dtype; the sums pass it through act_fn. Masked counting and summing are one GEMV per
layer with a 0/1 weight row over the batch's tokens (counts exact; sums float32 within a batch,
float64 across batches). Computing in the model's dtype means a bfloat16 model is counted on
its bfloat16 activations, which flips the sign of activations within bfloat16 rounding of zero
(about 1 % of counts differ from a float32 run; see docs/scale.md). On gated MLPs this is NOT
``hook_post``, whose sign also depends on the up projection. Only reducing hooks run (never
``run_with_cache``), under ``torch.inference_mode``, and the forward stops once the last MLP hook
has fired, so the unembedding is never computed. The hooks are TransformerLens hooks on
``hook_pre`` (``backend="hooks"``), or, on a TL 4.x bridge with no TransformerLens hooks attached,
torch hooks on its own HF modules with the bridge wrappers taken out (``"native"``, see
`tl_culture.model.fastpath`; bit-identical, checked on a probe input first). ``"auto"`` picks.

Exactness. Counts are integer sums over batches, so they do not depend on how the batches are
split between processes or interrupted runs:

- Data parallel (``torchrun``, see `tl_culture.counting.distributed`): batch ``b`` of every group runs on
  rank ``b % world_size``; the ranks ``all_reduce`` counts, tokens and sums. Counts and tokens are
  bit-identical to a single process with the same ``batch_size``; sums equal up to float64
  rounding of the changed addition order.
- Resume (``checkpoint_dir``): each rank saves its partial counts, tokens and sums and the number
  of batches done per group, atomically; a rerun continues at the next batch. The result is
  bit-identical (sums too) to an uninterrupted run.
- Across batch sizes and between padded and unpadded batches the counts agree exactly as long as
  the kernels give each row the same activations whatever its batch (true of the CPU kernels in
  the tests; GPU kernels may round a row differently in another batch shape).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture._io import load_tensors, save_tensors
from tl_culture._version import __version__
from tl_culture.counting.distributed import all_reduce_sum, any_rank, rank_world
from tl_culture.data.corpus import Corpus, RowStream, TokenRows, as_corpora
from tl_culture.errors import TLCultureError
from tl_culture.model.fastpath import ATTENTIONS, BACKENDS, NativeForward, native_problem
from tl_culture.model.load import MLPHooks, model_device, model_name

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


class _StopForward(Exception):
    """Raised by the last MLP hook to skip the rest of the forward (and the unembedding)."""


class Counter:
    """Accumulates the LAPE statistic of one group from forwards that stop after the last MLP.

    `add` takes one layer's gate pre-activations. `attached` routes a forward's layers to it,
    either through TransformerLens hooks on ``blocks.{l}.mlp.hook_pre`` or, given a verified
    `NativeForward`, through torch hooks on the HF modules with the bridge wrappers taken out;
    `run_batch` then runs one batch. Counts live on the model's device until copied out.
    """

    def __init__(
        self,
        model: Any,
        mlp: MLPHooks,
        device: torch.device,
        with_sums: bool = True,
        native: NativeForward | None = None,
    ) -> None:
        self.model, self.mlp, self.device, self.native = model, mlp, device, native
        self.counts = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.int64, device=device)
        self.sums = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.float64, device=device) if with_sums else None
        self.tokens = 0
        self._weights: torch.Tensor | None = None  # [1, batch*pos] float32 counting weights
        self._signs: torch.Tensor | None = None  # [batch*pos, d_mlp] float32 scratch, reused by every layer

    def start_from(
        self,
        counts: Int[torch.Tensor, "layer neuron"],
        tokens: int,
        sums: Float[torch.Tensor, "layer neuron"] | None = None,
    ) -> None:
        """Continue from partial results (a checkpoint): later batches add to these values."""
        self.counts.copy_(counts)
        self.tokens = int(tokens)
        if self.sums is not None and sums is not None:
            self.sums.copy_(sums)

    def add(
        self,
        layer: int,
        pre: Float[torch.Tensor, "... d_mlp"],
        act: Float[torch.Tensor, "... d_mlp"] | None = None,
    ) -> None:
        """Count (and sum) one layer of the current batch.

        ``counts[layer] += w @ 1[pre > 0]`` and ``sums[layer] += w @ act_fn(pre)``, with ``w`` the
        batch's 0/1 counting weights. act_fn(z) > 0 iff z > 0 for every activation in ACTIVATIONS,
        so the sign test runs on the gate pre-activation in the model's dtype; the 0/1 matrix is
        written straight into a reused float32 buffer and the masked count is one GEMV, exact in
        float32 (< 2**24 tokens). ``act`` (the model's own act_fn output) saves recomputing it.
        """
        name = self.mlp.pre(layer)
        self.mlp.check_width(pre, name)
        x = pre.reshape(-1, self.mlp.d_mlp)  # [batch*pos, d_mlp], model dtype
        w = self._weights  # [1, batch*pos] float32: 1 on counted tokens, 0 on BOS/padding
        if w is None or w.shape[1] != x.shape[0]:
            raise TLCultureError(f"{name}: got {x.shape[0]} positions outside Counter.run_batch")
        if self._signs is None or self._signs.shape != x.shape or self._signs.device != x.device:
            self._signs = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        torch.gt(x, 0, out=self._signs)
        self.counts[layer] += (w @ self._signs).squeeze(0).to(torch.int64)
        if self.sums is not None:
            # act_fn in the model dtype, per-batch partial sum in float32, running total in float64
            a = self.mlp.act(x) if act is None else act.reshape(-1, self.mlp.d_mlp)
            self.sums[layer] += (w @ a.to(torch.float32)).squeeze(0).to(torch.float64)

    def fwd_hooks(self) -> list[tuple[str, Any]]:
        """TransformerLens hooks that feed `add` and stop the forward after the last layer."""
        last = self.mlp.n_layers - 1

        def make(layer: int):
            def hook(pre: torch.Tensor, hook: Any = None) -> None:
                self.add(layer, pre)
                if layer == last:
                    raise _StopForward

            return hook

        return [(self.mlp.pre(layer), make(layer)) for layer in range(self.mlp.n_layers)]

    def attached(self) -> AbstractContextManager[Any]:
        """Context in which `run_batch` counts: native torch hooks, or TransformerLens hooks."""
        if self.native is not None:
            return self.native.hooked(self.add, with_act=self.sums is not None)
        return self.model.hooks(fwd_hooks=self.fwd_hooks())

    def run_batch(self, batch: TokenRows) -> int:
        """Run one batch of rows (inside `attached`); returns the number of counted tokens."""
        width = int(batch.attention_mask.any(0).nonzero().max()) + 1  # trim all-padding columns
        ids = batch.input_ids[:, :width].to(self.device, non_blocking=True)
        attn, count = batch.attention_mask[:, :width], batch.count_mask[:, :width]
        if count.numel() >= 2**24:
            raise TLCultureError(f"a batch of {count.numel()} tokens is too large to count exactly; lower --batch-size")
        self._weights = count.reshape(1, -1).to(device=self.device, dtype=torch.float32)
        mask = None if bool(attn.all()) else attn.long().to(self.device)
        try:
            if self.native is not None:
                self.native(ids, attention_mask=mask)
            else:
                self.model(ids, **({} if mask is None else {"attention_mask": mask}))
        except _StopForward:
            pass
        finally:
            self._weights = None
        n = int(count.sum())
        self.tokens += n
        return n


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="tok", unit_scale=True, disable=not enabled, leave=False
    )


# --------------------------------------------------------------------------- fingerprints
def weights_fingerprint(model: Any) -> str:
    """sha256 (16 hex digits) of every parameter's name, shape, dtype and first/last 256 values.

    Cheap (no full pass over the weights) and exact (raw bytes, no float reduction), so it tells
    two checkpoints apart without depending on the number of threads or the device.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        for part in (flat[:256], flat[-256:]):
            h.update(part.to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """sha256 (16 hex digits) of a tokenizer's full definition (a fast tokenizer's JSON: vocabulary,
    merges, normalizer; else its sorted vocabulary) and special tokens; None without a tokenizer.
    Paths are not part of it, so the same tokenizer in another folder or node matches."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return hashlib.sha256((body + special).encode("utf-8")).hexdigest()[:16]


def rows_fingerprint(rows: TokenRows) -> str:
    """sha256 (16 hex digits) of tokenized rows: token ids, attention and count masks."""
    h = hashlib.sha256(str(tuple(rows.input_ids.shape)).encode())
    for t in (rows.input_ids, rows.attention_mask, rows.count_mask):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- checkpoints
CHECKPOINT_KIND = "CollectCheckpoint"
_RANK_FILE = re.compile(r"^rank(\d+)\.safetensors$")


@dataclass
class _Progress:
    """What one rank has counted so far: partial results and batches done per group."""

    counts: Int[torch.Tensor, "group layer neuron"]
    tokens: Int[torch.Tensor, " group"]
    sums: Float[torch.Tensor, "group layer neuron"] | None
    done: list[int]  # batches of this rank's share done, per group
    finished: list[bool] = field(default_factory=list)  # group's stream read to the end

    def __post_init__(self) -> None:
        self.finished = list(self.finished) or [False] * len(self.done)

    @classmethod
    def zeros(cls, G: int, L: int, N: int, with_sums: bool) -> _Progress:
        sums = torch.zeros(G, L, N, dtype=torch.float64) if with_sums else None
        return cls(torch.zeros(G, L, N, dtype=torch.int64), torch.zeros(G, dtype=torch.int64), sums, [0] * G)

    def take(self, gi: int, counter: Counter) -> None:
        """Copy the running counter of group ``gi`` into the progress (to the CPU)."""
        self.counts[gi] = counter.counts.cpu()
        self.tokens[gi] = counter.tokens
        if self.sums is not None:
            self.sums[gi] = counter.sums.cpu()


def _describe_mismatch(key: str, old: Any, new: Any) -> str:
    if key == "world_size":
        return f"it was written by {old} process(es), this run has {new}"
    if isinstance(new, dict) and isinstance(old, dict):
        group = next((g for g in new if old.get(g) != new[g]), None) or next(iter(set(old) - set(new)), "?")
        if key == "corpora":
            return f"the text of group {group!r} changed (fingerprint {old.get(group)} -> {new.get(group)})"
        if key == "rows":
            return f"the first tokenized rows of group {group!r} differ (another tokenizer?)"
        return f"{key} of group {group!r} differs"
    if key == "weights":
        return f"the model weights differ (fingerprint {old} -> {new})"
    return f"{key}={old!r}, this run has {key}={new!r}"


class CollectCheckpoint:
    """One rank's resumable progress of `collect`: ``{folder}/rank{r}.safetensors``.

    The file holds this rank's partial ``counts``, ``tokens``, ``sums`` and, in its metadata, the
    batches done per group and the settings it was made with (world size, model and weights
    fingerprint, dtype, device type, groups, corpus and token-row fingerprints, seq_len, pack,
    max_tokens, batch_size, with_sums). It is replaced atomically, so a ``kill -9`` leaves either
    the previous or the new state, and every saved state lies on a batch boundary.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        rank: int,
        world_size: int,
        settings: dict[str, Any],
        every_rows: int | None = None,
        every_seconds: float | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.rank, self.world_size, self.settings = rank, world_size, settings
        self.path = self.folder / f"rank{rank}.safetensors"
        self.every_rows, self.every_seconds = every_rows, every_seconds
        self._rows = 0
        self._last = time.monotonic()

    def problem(self) -> str | None:
        """Why the existing checkpoint cannot be resumed by this run (None: it can, or there is none)."""
        if self.folder.exists() and not self.folder.is_dir():
            return f"checkpoint {self.folder} is a file, not a folder; give a folder to --checkpoint"
        if not self.folder.is_dir():
            return None
        ranks = [int(m.group(1)) for p in self.folder.iterdir() if (m := _RANK_FILE.match(p.name))]
        if ranks and max(ranks) >= self.world_size:
            return (
                f"checkpoint {self.folder} was written by {max(ranks) + 1} or more processes, this run has "
                f"{self.world_size}; resume with as many processes, or give another --checkpoint folder"
            )
        if not self.path.is_file():
            return None
        try:
            _, meta = load_tensors(self.path, CHECKPOINT_KIND)
        except TLCultureError as exc:
            return f"{exc} (delete {self.path} to count again)"
        old = meta.get("settings", {})
        for key, value in self.settings.items():
            if old.get(key) != value:
                why = _describe_mismatch(key, old.get(key), value)
                return (
                    f"checkpoint {self.folder} was made with other settings: {why}; "
                    f"rerun with the same settings, or give another --checkpoint folder (delete it to start over)"
                )
        return None

    def load(self, G: int, L: int, N: int, with_sums: bool) -> tuple[_Progress, bool]:
        """The saved progress (zeros if there is none) and whether it was complete."""
        if not self.path.is_file():
            return _Progress.zeros(G, L, N, with_sums), False
        t, meta = load_tensors(self.path, CHECKPOINT_KIND)
        done = meta.get("done")
        shape_ok = "counts" in t and tuple(t["counts"].shape) == (G, L, N) and (not with_sums or "sums" in t)
        if not shape_ok or not isinstance(done, list) or len(done) != G:
            raise TLCultureError(f"{self.path}: checkpoint is corrupted; delete it to count again")
        sums = t["sums"].to(torch.float64) if with_sums else None
        finished = meta.get("finished")
        finished = [bool(f) for f in finished] if isinstance(finished, list) and len(finished) == G else []
        counts, tokens = t["counts"].to(torch.int64), t["tokens"].to(torch.int64)
        progress = _Progress(counts, tokens, sums, [int(d) for d in done], finished)
        return progress, bool(meta.get("complete", False))

    def due(self, rows: int) -> bool:
        """Count ``rows`` more rows; True when a save is due (every N rows or S seconds)."""
        self._rows += rows
        by_rows = self.every_rows is not None and self._rows >= self.every_rows
        by_time = self.every_seconds is not None and time.monotonic() - self._last >= self.every_seconds
        return by_rows or by_time

    def save(self, progress: _Progress, complete: bool = False) -> None:
        """Write the progress atomically (the previous file stays valid until the new one is in place)."""
        tensors = {"counts": progress.counts, "tokens": progress.tokens}
        if progress.sums is not None:
            tensors["sums"] = progress.sums
        meta = {
            "settings": self.settings,
            "done": list(progress.done),
            "finished": list(progress.finished),
            "complete": complete,
            "rank": self.rank,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        save_tensors(self.path, CHECKPOINT_KIND, tensors, meta)
        self._rows, self._last = 0, time.monotonic()


# --------------------------------------------------------------------------- collection
_OOM_TYPES: tuple[type[BaseException], ...] = (
    MemoryError,
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, _OOM_TYPES) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


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
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = 300.0,
    distributed: bool | None = None,
    backend: str = "auto",
    attention: str | None = None,
) -> ActivationStats:
    """Stream every group's corpus through ``model`` and count MLP neuron activations.

    Each group's rows are run in batches ``b = 0, 1, ...`` of ``batch_size`` rows. Under an
    initialised ``torch.distributed`` process group (``torchrun``; see
    `tl_culture.distributed.init_distributed`) rank ``r`` of ``W`` runs the batches with
    ``b % W == r`` and the ranks ``all_reduce`` counts, tokens and sums, so every rank returns
    the totals: counts and tokens bit-identical to one process, sums within float64 rounding.
    The sign test runs in the model's dtype (a bfloat16 model is counted on bfloat16 activations,
    as the reference does; see docs/scale.md for the measured difference to float32).

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
        checkpoint_dir: folder for resumable progress (one file per rank). An existing checkpoint
            made with the same settings is resumed (a complete one is returned without running
            the model); one made with other settings is refused.
        checkpoint_every: save the progress every this many rows (per rank).
        checkpoint_seconds: save the progress every this many seconds (default 300). Progress is
            also saved at the end of every group.
        distributed: use the initialised process group; default: whenever one is initialised.
        backend: ``"hooks"`` counts through TransformerLens hooks on ``hook_pre`` (composes with
            any hooks attached to the model, e.g. an ablation during counting); ``"native"``
            runs a TL 4.x bridge's HF modules with the bridge wrappers taken out
            (`tl_culture.model.fastpath`, checked against the hook path on a probe input first);
            ``"auto"`` (default) uses native when the model is a bridge with no TransformerLens
            hooks attached and the probe agrees, else hooks.
        attention: attention implementation of the native backend. None (default): PyTorch's
            fused ``"sdpa"`` when the model supports it, else the bridge's own; ``"sdpa"``:
            require it; ``"eager"``: the bridge's eager attention, so counts are bit-identical
            to the hook path (sdpa changes the sign of activations within float rounding of
            zero: 2.6e-7 of the decisions on Gemma 3 270M in float32). The hook path always runs the
            bridge's attention. ``meta["attention"]`` records what ran.

    Returns:
        `ActivationStats` with one row per group, in the order of ``corpora``.

    Raises:
        TLCultureError: bad settings, an incompatible checkpoint, or out of memory (with the
            batch size to try).
    """
    if batch_size < 1:
        raise TLCultureError(f"batch_size must be at least 1, got {batch_size}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise TLCultureError(f"checkpoint_every must be a positive number of rows, got {checkpoint_every}")
    if checkpoint_seconds is not None and not checkpoint_seconds > 0:
        raise TLCultureError(f"checkpoint_seconds must be positive, got {checkpoint_seconds}")
    if backend not in BACKENDS:
        raise TLCultureError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if attention is not None and attention not in ATTENTIONS:
        raise TLCultureError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTIONS)}")
    if attention == "sdpa" and backend == "hooks":
        raise TLCultureError(f"attention={attention!r} needs the native backend; drop it or use backend='native'")
    mlp = MLPHooks.from_model(model)
    named = as_corpora(corpora)
    dev = torch.device(device) if device is not None else model_device(model)
    rank, world = rank_world() if distributed is not False else (0, 1)  # (0, 1) without a process group
    tokenizer = getattr(model, "tokenizer", None)
    streams = {
        g: RowStream(c, tokenizer, seq_len, block_rows=batch_size, pack=pack, max_tokens=max_tokens)
        for g, c in named.items()
    }
    first = {g: next(iter(s)) for g, s in streams.items()}  # fails fast on a corpus without tokens
    G, L, N = len(named), mlp.n_layers, mlp.d_mlp
    meta = collect_meta(model, mlp, named, seq_len=seq_len, pack=pack, max_tokens=max_tokens)
    meta.update(batch_size=batch_size, world_size=world)
    native, meta["backend"], meta["attention"], note = _choose_backend(
        model, mlp, backend, attention, _probe(next(iter(first.values())), dev)
    )
    if note:
        meta["backend_note"] = note

    ckpt = None
    state, complete = _Progress.zeros(G, L, N, with_sums), False
    if checkpoint_dir is not None:
        settings = {
            "world_size": world,
            "model": meta["model"],
            "weights": weights_fingerprint(model),
            "neurons": f"{L}x{N}",
            "act_fn": mlp.act_fn,
            "dtype": meta["dtype"],
            "device": dev.type,
            "groups": list(named),
            "corpora": {g: c.fingerprint for g, c in named.items()},
            "seq_len": seq_len,
            "pack": pack,
            "max_tokens": max_tokens,
            "batch_size": batch_size,
            "with_sums": with_sums,
            "attention": meta["attention"],  # the one that runs: another one rounds differently
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "rows": {g: rows_fingerprint(r) for g, r in first.items()},
        }
        ckpt = CollectCheckpoint(checkpoint_dir, rank, world, settings, checkpoint_every, checkpoint_seconds)
        problem = ckpt.problem()
        if world > 1 and any_rank(problem is not None, dev) and problem is None:
            problem = f"another process refused checkpoint {checkpoint_dir}; see its message"
        if problem is not None:
            raise TLCultureError(problem)
        state, complete = ckpt.load(G, L, N, with_sums)

    t0 = time.perf_counter()
    for gi, (group, stream) in enumerate(streams.items()):
        if complete or state.finished[gi]:
            continue
        counter = Counter(model, mlp, dev, with_sums, native)
        counter.start_from(state.counts[gi], int(state.tokens[gi]), state.sums[gi] if state.sums is not None else None)
        desc = f"collect {group}" + (f" [rank {rank}/{world}]" if world > 1 else "")
        estimate = stream.estimated_tokens()
        total = None if estimate is None else -(-estimate // world)
        seen = 0  # counted tokens of every batch streamed so far, all ranks' shares
        with _progress(total, desc, progress, initial=int(state.tokens[gi])) as bar, torch.inference_mode():
            with counter.attached():
                for b, batch in enumerate(stream):
                    seen += batch.n_tokens
                    if b % world != rank or b // world < state.done[gi]:
                        continue  # another rank's batch, or counted before the resume
                    n = _run_batch(counter, batch, dev, batch_size, ckpt is not None)
                    state.done[gi] += 1
                    if estimate is None or stream.corpus.rows is None:  # refine the total from tokens per char
                        guess = stream.estimated_tokens(seen, stream.chars_consumed)
                        bar.total = None if guess is None else max(bar.n + n, -(-guess // world))
                    bar.update(n)
                    if ckpt is not None and ckpt.due(len(batch)):
                        state.take(gi, counter)
                        ckpt.save(state)
        state.take(gi, counter)
        state.finished[gi] = True
        if ckpt is not None:
            ckpt.save(state)
    if ckpt is not None and not complete:
        ckpt.save(state, complete=True)

    counts, tokens, sums = state.counts, state.tokens, state.sums
    if world > 1:
        counts, tokens, sums = all_reduce_sum([counts, tokens, sums], dev)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return ActivationStats(list(named), counts, tokens, sums, meta)


def _run_batch(counter: Counter, batch: TokenRows, dev: torch.device, batch_size: int, checkpointed: bool) -> int:
    """`Counter.run_batch`, turning out-of-memory into a one-line error with the batch size to try."""
    try:
        return counter.run_batch(batch)
    except Exception as exc:
        if not _is_oom(exc):
            raise
        fix = (
            f"use a smaller batch size (--batch-size {batch_size // 2})"
            if batch_size > 1
            else "use a smaller --seq-len (a batch is already one row)"
        )
        kept = "; the checkpoint keeps the progress" if checkpointed else ""
        raise TLCultureError(
            f"out of memory on {dev} running {len(batch)} rows x {batch.input_ids.shape[1]} tokens; {fix}{kept}"
        ) from exc


def _probe(rows: TokenRows, device: torch.device, max_len: int = 32) -> Int[torch.Tensor, "1 pos"]:
    """The first row's first real tokens (at most ``max_len``): the input `NativeForward.verify` compares on."""
    n = max(1, min(max_len, int(rows.attention_mask[0].sum())))
    return rows.input_ids[:1, :n].to(device)


def _choose_backend(
    model: Any, mlp: MLPHooks, backend: str, attention: str | None, probe: torch.Tensor
) -> tuple[NativeForward | None, str, str | None, str | None]:
    """``(native forward or None, backend name, attention implementation, note)`` for `collect`.

    Tries, in order: native with ``attention`` (default sdpa), native with the bridge's own
    attention (when sdpa was only the default), the hooks (``auto`` only). Falling back is quiet;
    the reason goes into the statistics' meta as the note. On LayerNorm models (GPT-2, TL-native
    dense models) the bridge's forward differs from the HF modules' in the last float bit, so the
    probe refuses the native forward by design.
    """
    if backend == "hooks":
        return None, "hooks", _attn_implementation(model), None
    problem = native_problem(model, mlp)
    native, note = None, None
    if problem is None:
        native = NativeForward(model, mlp, attention=attention or "sdpa")
        problem = native.verify(probe)
        if problem is None and native.attention_problem is not None:
            if attention is not None:
                raise TLCultureError(
                    f"attention={attention!r} cannot run on this model: {native.attention_problem}; drop --attention"
                )
            note = f"sdpa attention not used: {native.attention_problem}"
            native.attention = None
    if problem is None:
        return native, "native", native.attn_implementation, note
    if backend == "native" or attention is not None:
        fix = "use backend='hooks'" + (f" without attention={attention!r}" if attention is not None else "")
        raise TLCultureError(f"the native backend cannot run: {problem}; {fix}")
    return None, "hooks", _attn_implementation(model), problem


def _attn_implementation(model: Any) -> str | None:
    config = getattr(getattr(model, "original_model", None), "config", None)
    return getattr(config, "_attn_implementation", None)


def collect_meta(
    model: Any, mlp: MLPHooks, corpora: Mapping[str, Corpus], *, seq_len: int, pack: bool, max_tokens: int | None
) -> dict[str, Any]:
    """Provenance stored with statistics: what was counted, on which model and text."""
    tok = getattr(model, "tokenizer", None)
    try:  # the weights' dtype: a TL 4.x bridge's cfg.dtype can say float32 for a bfloat16 model
        dtype = next(model.parameters()).dtype
    except (StopIteration, AttributeError, TypeError):
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
        "corpora": {
            g: {"fingerprint": c.fingerprint, "source": c.source, "documents": len(c)} for g, c in corpora.items()
        },
        "tl_culture": __version__,
    }
