"""`collect`: stream every group's corpus through the model and count its MLP neurons (LAPE).

One call runs, per group, batches ``b = 0, 1, ...`` of ``batch_size`` rows (`tl_culture.data.rows.RowStream`)
through a `tl_culture.counting.counter.Counter`, which counts ``act_fn(blocks.{l}.mlp.hook_pre) > 0``
in the model's dtype (a bfloat16 model is counted on its bfloat16 activations; docs/scale.md
compares it with float32) and sums act_fn in float64. The result is an
`tl_culture.counting.stats.ActivationStats`.

Exactness. Counts are integer sums over batches, so they do not depend on how the batches are
split between processes or interrupted runs:

- Data parallel (``torchrun``, see `tl_culture.counting.distributed`): batch ``b`` of every group
  runs on rank ``b % world_size``; the ranks ``all_reduce`` counts, tokens and sums. Counts and
  tokens are bit-identical to a single process with the same ``batch_size``; sums equal up to
  float64 rounding of the changed addition order.
- Resume (``checkpoint_dir``, `tl_culture.counting.checkpoint`): a rerun continues at the next
  batch; the result is bit-identical (sums too) to an uninterrupted run.
- Across batch sizes and between padded and unpadded batches the counts agree exactly as long as
  the kernels give each row the same activations whatever its batch (true of the CPU kernels in
  the tests; GPU kernels may round a row differently in another batch shape).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tl_culture._version import __version__
from tl_culture.counting.checkpoint import CollectCheckpoint, Progress, checkpoint_settings
from tl_culture.counting.counter import Counter, choose_backend, probe_ids
from tl_culture.counting.ranks import all_reduce_sum, any_rank, rank_world
from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import Corpus, as_corpora
from tl_culture.data.rows import RowStream, TokenRows
from tl_culture.data.sampling import capped_sample
from tl_culture.errors import TLCultureError
from tl_culture.model.bridge import check_backend
from tl_culture.model.context import beyond_training, row_length
from tl_culture.model.fastpath import NativeForward
from tl_culture.model.forward import is_oom
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import model_device, model_name, weights_dtype

#: Tokens per row of `collect` unless the model's context is shorter.
DEFAULT_SEQ_LEN = 512


def collect(
    model: Any,
    corpora: Mapping[str, Any],
    *,
    seq_len: int | None = None,
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
    sample_seed: int | None = 0,
    allow_long_context: bool = False,
) -> ActivationStats:
    """Stream every group's corpus through ``model`` and count MLP neuron activations.

    Long because it documents the seventeen settings of the public API; the body is a few calls.
    Under an initialised ``torch.distributed`` process group (``torchrun``) rank ``r`` of ``W``
    runs the batches with ``b % W == r`` and every rank returns the reduced totals.

    Args:
        model: a TransformerLens model (TL 4.x `TransformerBridge` or TL 3.x `HookedTransformer`).
        corpora: group name -> corpus-like (`Corpus`, path, list of strings, or ``[row, pos]``
            token tensor).
        seq_len: tokens per row (including the BOS token prepended to each row); default
            `DEFAULT_SEQ_LEN`, or the model's context where that is shorter (`tl_culture.model.context`).
        batch_size: rows per forward.
        max_tokens: cap on the counted tokens per group; the documents are shuffled first
            (`tl_culture.data.sampling.capped_sample`, seeded ``sample_seed``), so the cap takes a
            random sample of documents from the whole corpus, not its first files.
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
            runs the bridge fast path (`tl_culture.model.fastpath`, checked against the hook
            path on a probe input first); ``"auto"`` (default) uses native when the model is a
            bridge with no TransformerLens hooks attached and the probe agrees, else hooks.
        attention: attention implementation of the native backend. None (default): PyTorch's
            fused ``"sdpa"`` when the model supports it, else the bridge's own; ``"sdpa"``:
            require it; ``"eager"``: the bridge's eager attention, so counts are bit-identical
            to the hook path (sdpa may change the sign of activations within float rounding of
            zero; docs/scale.md). The hook path always runs the bridge's attention.
            ``meta["attention"]`` records what ran.
        sample_seed: seed of the document order under ``max_tokens`` (None: corpus order).
        allow_long_context: count rows longer than the positions the model was trained on (never
            longer than it can run; `tl_culture.model.context`); ``meta["beyond_trained_positions"]``
            records it.

    Returns:
        `ActivationStats` with one row per group, in the order of ``corpora``.

    Raises:
        TLCultureError: bad settings, an incompatible checkpoint, or out of memory (with the
            batch size to try).
    """
    _check_numbers(batch_size, checkpoint_every, checkpoint_seconds)
    check_backend(backend, attention)
    seq_len, context = row_length(model, seq_len, DEFAULT_SEQ_LEN, name=model_name(model),
                                  allow_long_context=allow_long_context)
    run = _start(model, corpora, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, pack=pack,
                 device=device, with_sums=with_sums, progress=progress, distributed=distributed, backend=backend,
                 attention=attention, sample_seed=sample_seed)
    if beyond_training(context, seq_len):
        run.meta["beyond_trained_positions"] = True
    state, complete, ckpt = _resume(run, checkpoint_dir, checkpoint_every, checkpoint_seconds)
    t0 = time.perf_counter()
    for gi in range(len(run.streams)):
        if not (complete or state.finished[gi]):
            _count_group(run, gi, state, ckpt)
    if ckpt is not None and not complete:
        ckpt.save(state, complete=True)
    return _totals(run, state, t0)


def _check_numbers(batch_size: int, checkpoint_every: int | None, checkpoint_seconds: float | None) -> None:
    if batch_size < 1:
        raise TLCultureError(f"batch_size must be at least 1, got {batch_size}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise TLCultureError(f"checkpoint_every must be a positive number of rows, got {checkpoint_every}")
    if checkpoint_seconds is not None and not checkpoint_seconds > 0:
        raise TLCultureError(f"checkpoint_seconds must be positive, got {checkpoint_seconds}")


@dataclass
class _Run:
    """The fixed parts of one `collect` call: what runs, on which rank, over which row streams."""

    model: Any
    mlp: MLPHooks
    streams: dict[str, RowStream]
    first: dict[str, TokenRows]  # each group's first block of rows
    device: torch.device
    rank: int
    world: int
    native: NativeForward | None  # the fast path, or None for the hooks
    meta: dict[str, Any]
    batch_size: int
    with_sums: bool
    progress: bool


def _start(
    model: Any, corpora: Mapping[str, Any], *, seq_len: int, batch_size: int, max_tokens: int | None, pack: bool,
    device: str | torch.device | None, with_sums: bool, progress: bool, distributed: bool | None, backend: str,
    attention: str | None, sample_seed: int | None,
) -> _Run:
    """Describe the model, open the row streams (failing fast on a corpus without tokens), find
    this rank and choose the backend on the first row."""
    mlp = MLPHooks.from_model(model)
    named = as_corpora(corpora)
    dev = torch.device(device) if device is not None else model_device(model)
    rank, world = rank_world() if distributed is not False else (0, 1)  # (0, 1) without a process group
    tokenizer = getattr(model, "tokenizer", None)
    streams = {
        g: RowStream(capped_sample(c, max_tokens, sample_seed), tokenizer, seq_len, block_rows=batch_size, pack=pack,
                     max_tokens=max_tokens)
        for g, c in named.items()
    }
    first = {g: next(iter(s)) for g, s in streams.items()}
    meta = collect_meta(model, mlp, named, seq_len=seq_len, pack=pack, max_tokens=max_tokens)
    meta.update(batch_size=batch_size, world_size=world, sample_seed=sample_seed if max_tokens is not None else None)
    probe = probe_ids(next(iter(first.values())), dev)
    native, meta["backend"], meta["attention"], note = choose_backend(model, mlp, backend, attention, probe)
    if note:
        meta["backend_note"] = note
    return _Run(model, mlp, streams, first, dev, rank, world, native, meta, batch_size, with_sums, progress)


def _resume(
    run: _Run, checkpoint_dir: str | os.PathLike | None, every: int | None, seconds: float | None
) -> tuple[Progress, bool, CollectCheckpoint | None]:
    """``(progress so far, whether it is complete, the checkpoint or None)``; refuses a checkpoint
    made with other settings (on every rank when any refuses)."""
    G, L, N = len(run.streams), run.mlp.n_layers, run.mlp.d_mlp
    if checkpoint_dir is None:
        return Progress.zeros(G, L, N, run.with_sums), False, None
    settings = checkpoint_settings(run.model, run.meta, run.first, device=run.device, with_sums=run.with_sums)
    ckpt = CollectCheckpoint(checkpoint_dir, run.rank, run.world, settings, every, seconds)
    problem = ckpt.problem()
    if run.world > 1 and any_rank(problem is not None, run.device) and problem is None:
        problem = f"another process refused checkpoint {checkpoint_dir}; see its message"
    if problem is not None:
        raise TLCultureError(problem)
    state, complete = ckpt.load(G, L, N, run.with_sums)
    return state, complete, ckpt


def _count_group(run: _Run, gi: int, state: Progress, ckpt: CollectCheckpoint | None) -> None:
    """Count this rank's share of group ``gi``'s batches not done yet, saving progress when due."""
    group, stream = list(run.streams.items())[gi]
    counter = Counter(run.model, run.mlp, run.device, run.with_sums, run.native)
    counter.start_from(state.counts[gi], int(state.tokens[gi]), state.sums[gi] if state.sums is not None else None)
    desc = f"collect {group}" + (f" [rank {run.rank}/{run.world}]" if run.world > 1 else "")
    estimate = stream.estimated_tokens()
    total = None if estimate is None else -(-estimate // run.world)
    seen = 0  # counted tokens of every batch streamed so far, all ranks' shares
    with _progress_bar(total, desc, run.progress, initial=int(state.tokens[gi])) as bar, torch.inference_mode():
        with counter.attached():
            for b, batch in enumerate(stream):
                seen += batch.n_tokens
                if b % run.world != run.rank or b // run.world < state.done[gi]:
                    continue  # another rank's batch, or counted before the resume
                n = _run_batch(counter, batch, run.device, run.batch_size, ckpt is not None)
                state.done[gi] += 1
                if estimate is None or stream.corpus.rows is None:  # refine the total from tokens per char
                    guess = stream.estimated_tokens(seen, stream.chars_consumed)
                    bar.total = None if guess is None else max(bar.n + n, -(-guess // run.world))
                bar.update(n)
                if ckpt is not None and ckpt.due(len(batch)):
                    state.take(gi, counter.counts, counter.tokens, counter.sums)
                    ckpt.save(state)
    state.take(gi, counter.counts, counter.tokens, counter.sums)
    state.finished[gi] = True
    if ckpt is not None:
        ckpt.save(state)


def _totals(run: _Run, state: Progress, t0: float) -> ActivationStats:
    """The statistics of every group, summed over the ranks."""
    counts, tokens, sums = state.counts, state.tokens, state.sums
    if run.world > 1:
        counts, tokens, sums = all_reduce_sum([counts, tokens, sums], run.device)
    run.meta["seconds"] = round(time.perf_counter() - t0, 3)
    return ActivationStats(list(run.streams), counts, tokens, sums, run.meta)


def _progress_bar(total: int | None, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="tok", unit_scale=True, disable=not enabled, leave=False
    )


def _run_batch(counter: Counter, batch: TokenRows, dev: torch.device, batch_size: int, checkpointed: bool) -> int:
    """`Counter.run_batch`, turning out-of-memory into a one-line error with the batch size to try."""
    try:
        return counter.run_batch(batch)
    except Exception as exc:
        if not is_oom(exc):
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


def collect_meta(
    model: Any, mlp: MLPHooks, corpora: Mapping[str, Corpus], *, seq_len: int, pack: bool, max_tokens: int | None
) -> dict[str, Any]:
    """Provenance stored with statistics: what was counted, on which model and text."""
    tok = getattr(model, "tokenizer", None)
    dtype = weights_dtype(model)
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
