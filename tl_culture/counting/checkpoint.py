"""Resumable progress of `collect`: one checkpoint file per rank, and the fingerprints that guard it.

Each rank saves its partial counts, tokens and sums and the number of batches done per group,
atomically; a rerun with the same settings continues at the next batch, so the result is
bit-identical (sums too) to an uninterrupted run. The settings (`checkpoint_settings`) include
fingerprints of the weights, the tokenizer, the corpora and their first tokenized rows, so a
checkpoint made with another model or text is refused rather than silently continued.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture._io import load_tensors, save_tensors
from tl_culture.data.rows import TokenRows
from tl_culture.errors import TLCultureError


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


def checkpoint_settings(
    model: Any, meta: Mapping[str, Any], first_rows: Mapping[str, TokenRows], *, device: torch.device, with_sums: bool
) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it, in the order it is checked.

    Args:
        model: the model (its weights are fingerprinted).
        meta: `collect`'s provenance (model, neurons, dtype, corpora, seq_len, ..., attention, world_size).
        first_rows: the first block of tokenized rows of each group.
        device: where the model runs (its type: another device type rounds differently).
        with_sums: whether activation sums are collected.
    """
    return {
        "world_size": meta["world_size"],
        "model": meta["model"],
        "weights": weights_fingerprint(model),
        "neurons": f"{meta['n_layers']}x{meta['d_mlp']}",
        "act_fn": meta["act_fn"],
        "dtype": meta["dtype"],
        "device": device.type,
        "groups": list(first_rows),
        "corpora": {g: c["fingerprint"] for g, c in meta["corpora"].items()},
        "seq_len": meta["seq_len"],
        "pack": meta["pack"],
        "max_tokens": meta["max_tokens"],
        "batch_size": meta["batch_size"],
        "with_sums": with_sums,
        "attention": meta["attention"],  # the one that runs: another one rounds differently
        "tokenizer": tokenizer_fingerprint(getattr(model, "tokenizer", None)),
        "rows": {g: rows_fingerprint(r) for g, r in first_rows.items()},
    }


CHECKPOINT_KIND = "CollectCheckpoint"
_RANK_FILE = re.compile(r"^rank(\d+)\.safetensors$")


@dataclass
class Progress:
    """What one rank has counted so far: partial results and batches done per group."""

    counts: Int[torch.Tensor, "group layer neuron"]
    tokens: Int[torch.Tensor, " group"]
    sums: Float[torch.Tensor, "group layer neuron"] | None
    done: list[int]  # batches of this rank's share done, per group
    finished: list[bool] = field(default_factory=list)  # group's stream read to the end

    def __post_init__(self) -> None:
        self.finished = list(self.finished) or [False] * len(self.done)

    @classmethod
    def zeros(cls, G: int, L: int, N: int, with_sums: bool) -> Progress:
        sums = torch.zeros(G, L, N, dtype=torch.float64) if with_sums else None
        return cls(torch.zeros(G, L, N, dtype=torch.int64), torch.zeros(G, dtype=torch.int64), sums, [0] * G)

    def take(
        self,
        gi: int,
        counts: Int[torch.Tensor, "layer neuron"],
        tokens: int,
        sums: Float[torch.Tensor, "layer neuron"] | None,
    ) -> None:
        """Copy the running totals of group ``gi`` into the progress (to the CPU)."""
        self.counts[gi] = counts.cpu()
        self.tokens[gi] = tokens
        if self.sums is not None:
            self.sums[gi] = sums.cpu()


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

    def load(self, G: int, L: int, N: int, with_sums: bool) -> tuple[Progress, bool]:
        """The saved progress (zeros if there is none) and whether it was complete."""
        if not self.path.is_file():
            return Progress.zeros(G, L, N, with_sums), False
        t, meta = load_tensors(self.path, CHECKPOINT_KIND)
        done = meta.get("done")
        shape_ok = "counts" in t and tuple(t["counts"].shape) == (G, L, N) and (not with_sums or "sums" in t)
        if not shape_ok or not isinstance(done, list) or len(done) != G:
            raise TLCultureError(f"{self.path}: checkpoint is corrupted; delete it to count again")
        sums = t["sums"].to(torch.float64) if with_sums else None
        finished = meta.get("finished")
        finished = [bool(f) for f in finished] if isinstance(finished, list) and len(finished) == G else []
        counts, tokens = t["counts"].to(torch.int64), t["tokens"].to(torch.int64)
        progress = Progress(counts, tokens, sums, [int(d) for d in done], finished)
        return progress, bool(meta.get("complete", False))

    def due(self, rows: int) -> bool:
        """Count ``rows`` more rows; True when a save is due (every N rows or S seconds)."""
        self._rows += rows
        by_rows = self.every_rows is not None and self._rows >= self.every_rows
        by_time = self.every_seconds is not None and time.monotonic() - self._last >= self.every_seconds
        return by_rows or by_time

    def save(self, progress: Progress, complete: bool = False) -> None:
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
