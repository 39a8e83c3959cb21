"""Per-token next-token NLLs of eval corpora under a set of interventions.

For an eval corpus with counted target tokens t (the BOS position is never a target, padding is
excluded):

    nll[t] = logsumexp(logits[t − 1]) − logits[t − 1, x_t]        (nats)

Every intervention runs a full forward of the model on the same rows of every eval corpus it is
scored on, so the k-th value of every intervention's NLLs of one corpus belongs to the same token.
The forwards run on the native fast path where it checks out, else through TransformerLens hooks
(`tl_culture.evaluation.scorer`).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Hashable, Mapping
from contextlib import nullcontext
from typing import Any, TypeVar

import torch
from jaxtyping import Float, Int

from tl_culture.data.corpus import as_corpora
from tl_culture.data.rows import TokenRows, encode, stack_rows
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.scorer import choose_scorer, hooks_nll, token_nll
from tl_culture.intervene.interventions import Intervention
from tl_culture.model.context import Context, beyond_training, row_length
from tl_culture.model.forward import is_oom
from tl_culture.model.load import model_device, model_name
from tl_culture.model.scoring import NativeScorer

K = TypeVar("K", bound=Hashable)
#: Tokens per row of the scored text unless the model's context is shorter.
DEFAULT_SEQ_LEN = 256


def _score_batch(
    model: Any,
    scorer: NativeScorer | None,
    batch: TokenRows,
    owner: Int[torch.Tensor, " row"],
    hooks: Mapping[K, list | None],
    parts: dict[K, dict[int, list[torch.Tensor]]],
) -> None:
    """One batch under every intervention of ``hooks``; appends each row's NLLs to ``parts[key][owner]``.

    The unedited forward runs at most once per batch, for the baseline (hooks None) and for
    interventions without hooks (an empty group).
    """
    dev = model_device(model)
    ids, attn = batch.input_ids.to(dev), batch.attention_mask.to(dev)
    mask = None if bool(attn.all()) else attn.long()
    plain = None
    for key, fwd_hooks in hooks.items():
        if not fwd_hooks and plain is not None:
            per_row = plain
        elif scorer is not None:
            per_row = scorer.nll(ids, batch.count_mask, mask, fwd_hooks or ())
        else:
            per_row = hooks_nll(model, ids, batch.count_mask, mask, fwd_hooks or ())
        if not fwd_hooks:
            plain = per_row
        for r, nll in enumerate(per_row):
            parts[key].setdefault(int(owner[r]), []).append(nll)


def _plan(keys: list[K], names: list[str], evals_of: Mapping[K, Collection[str]] | None) -> dict[tuple, list[K]]:
    """Keys grouped by the eval corpora (indices) they are scored on, in the order of ``keys``."""
    plan: dict[tuple, list[K]] = {}
    for k in keys:
        which = names if evals_of is None or k not in evals_of else list(evals_of[k])
        unknown = [e for e in which if e not in names]
        if unknown:
            raise TLCultureError(f"{k!r} is to be scored on unknown eval corpora {unknown}; they are {names}")
        idx = tuple(i for i, e in enumerate(names) if e in which)
        if idx:
            plan.setdefault(idx, []).append(k)
    return plan


def _check(model: Any, interventions: Mapping[K, Intervention | None], seq_len: int | None, batch_size: int,
           allow_long_context: bool) -> tuple[int, Context]:
    """Refuse bad settings and interventions that do not fit the model; return the row length and context."""
    if batch_size < 1:
        raise TLCultureError(f"batch_size must be at least 1, got {batch_size}")
    seq_len, context = row_length(model, seq_len, DEFAULT_SEQ_LEN, name=model_name(model),
                                  allow_long_context=allow_long_context)
    for it in interventions.values():
        if it is not None:
            it.validate(model)
    return seq_len, context


def _oom(exc: Exception, rows: int, pos: int, batch_size: int) -> TLCultureError:
    """The one-line out-of-memory error of a scoring batch, with the batch size to try."""
    fix = (f"use a smaller batch size ({batch_size // 2}: --eval-batch-size for run, --batch-size for evaluate)"
           if batch_size > 1 else "use a smaller --seq-len")
    return TLCultureError(f"out of memory scoring {rows} rows x {pos} tokens; {fix}")


def _run_plan(
    model: Any, scorer: NativeScorer | None, rows: TokenRows, owner: Int[torch.Tensor, " row"],
    plan: dict[tuple, list[K]], hooks: Mapping[K, list | None], batch_size: int, *, progress: bool, desc: str,
) -> tuple[dict[K, dict[int, list[torch.Tensor]]], int]:
    """Score every key of ``plan`` on the rows of its eval corpora; ``(parts[key][owner], scored tokens)``."""
    from tqdm.auto import tqdm

    parts: dict[K, dict[int, list[torch.Tensor]]] = {k: {} for ks in plan.values() for k in ks}
    per_row = rows.count_mask[:, 1:].sum(1)
    sel = {idx: torch.nonzero(torch.isin(owner, torch.tensor(idx))).flatten() for idx in plan}
    total = sum(int(per_row[sel[idx]].sum()) * len(ks) for idx, ks in plan.items())
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not progress,
                                      leave=False) as bar, (scorer.active() if scorer else nullcontext()):
        for idx, keys in plan.items():
            for s in range(0, len(sel[idx]), batch_size):
                b = sel[idx][s : s + batch_size]
                batch = rows.take(b).trimmed()
                try:
                    _score_batch(model, scorer, batch, owner[b], {k: hooks[k] for k in keys}, parts)
                except Exception as exc:
                    if is_oom(exc):
                        raise _oom(exc, len(b), batch.input_ids.shape[1], batch_size) from exc
                    raise
                bar.update(int(per_row[b].sum()) * len(keys))
    return parts, total


def token_nlls(
    model: Any,
    eval_corpora: Mapping[str, Any],
    interventions: Mapping[K, Intervention | None],
    *,
    seq_len: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = 256,
    progress: bool = True,
    desc: str = "Δ NLL",
    evals_of: Mapping[K, Collection[str]] | None = None,
    backend: str = "auto",
    attention: str | None = None,
    allow_long_context: bool = False,
) -> tuple[dict[K, dict[str, Float[torch.Tensor, " tokens"]]], dict[str, Any]]:
    """Per-token NLLs of eval corpora under every intervention (``None`` = no intervention).

    Args:
        model: a TransformerLens model with a tokenizer (or eval corpora of token rows).
        eval_corpora: eval name -> corpus-like; each is packed into rows of ``seq_len`` tokens.
        interventions: key -> intervention; the keys name the results.
        seq_len: tokens per row (BOS included); default `DEFAULT_SEQ_LEN`, or the model's context
            where that is shorter.
        batch_size: rows per forward.
        max_tokens: scored tokens per eval corpus (None = all).
        progress: show a tqdm bar (scored tokens per second).
        desc: the bar's label.
        evals_of: key -> the eval corpora it is scored on (keys not in it: every corpus).
        backend: ``"auto"`` (the native fast path when it checks out, else hooks), ``"native"`` or
            ``"hooks"`` (`tl_culture.evaluation.scorer.choose_scorer`).
        attention: the native path's attention (default sdpa, falling back to the bridge's own).
        allow_long_context: score rows longer than the positions the model was trained on
            (`tl_culture.model.context`; recorded as ``beyond_trained_positions``).

    Returns:
        ``nll[key][eval_name]``: ``float64[tokens]`` in row-major token order (the same tokens for
        every key), for the eval corpora the key was scored on; and run info (seconds, seq_len,
        max_tokens, batch_size, backend, attention, backend_note where it fell back, scored_tokens).
    """
    seq_len, context = _check(model, interventions, seq_len, batch_size, allow_long_context)
    named = as_corpora(eval_corpora)
    names = list(named)
    tok = getattr(model, "tokenizer", None)
    rows, owner = stack_rows([encode(c, tok, seq_len, pack=True, max_tokens=max_tokens) for c in named.values()])
    plan = _plan(list(interventions), names, evals_of)
    t0 = time.perf_counter()
    scorer, info = choose_scorer(model, backend, attention, rows.input_ids, rows.count_mask)
    hooks = {k: None if it is None else it.fwd_hooks(model) for k, it in interventions.items()}
    parts, total = _run_plan(model, scorer, rows, owner, plan, hooks, batch_size, progress=progress, desc=desc)
    nll: dict[K, dict[str, torch.Tensor]] = {k: {} for k in interventions}
    for idx, keys in plan.items():
        for k in keys:
            nll[k] = {names[i]: _cat(parts[k].get(i)) for i in idx}
    info.update(seconds=round(time.perf_counter() - t0, 3), seq_len=seq_len, max_tokens=max_tokens,
                batch_size=batch_size, scored_tokens=total)
    if beyond_training(context, seq_len):
        info["beyond_trained_positions"] = True
    return nll, info


def _cat(parts: list[torch.Tensor] | None) -> Float[torch.Tensor, " tokens"]:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


__all__ = ["token_nll", "token_nlls"]
