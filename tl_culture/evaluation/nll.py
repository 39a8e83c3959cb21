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

from tl_culture._io import PartStore
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
    model: Any, scorer: NativeScorer | None, batch: TokenRows, fwd_hooks: list | None
) -> list[Float[torch.Tensor, " tokens"]]:
    """Per-row NLLs of one batch under one intervention's hooks (None: the unedited model)."""
    dev = model_device(model)
    ids, attn = batch.input_ids.to(dev), batch.attention_mask.to(dev)
    mask = None if bool(attn.all()) else attn.long()
    if scorer is not None:
        return scorer.nll(ids, batch.count_mask, mask, fwd_hooks or ())
    return hooks_nll(model, ids, batch.count_mask, mask, fwd_hooks or ())


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


def _score_unit(
    model: Any, scorer: NativeScorer | None, rows: TokenRows, owner: Int[torch.Tensor, " row"],
    sel: Int[torch.Tensor, " row"], fwd_hooks: list | None, batch_size: int, bar: Any,
) -> dict[int, list[torch.Tensor]]:
    """One intervention on the rows ``sel`` (batches of ``batch_size``): each row's NLLs by its corpus."""
    parts: dict[int, list[torch.Tensor]] = {}
    per_row = rows.count_mask[:, 1:].sum(1)
    for s in range(0, len(sel), batch_size):
        b = sel[s : s + batch_size]
        batch = rows.take(b).trimmed()
        try:
            nlls = _score_batch(model, scorer, batch, fwd_hooks)
        except Exception as exc:
            if is_oom(exc):
                raise _oom(exc, len(b), batch.input_ids.shape[1], batch_size) from exc
            raise
        for r, nll in zip(owner[b].tolist(), nlls, strict=True):
            parts.setdefault(r, []).append(nll)
        bar.update(int(per_row[b].sum()))
    return parts


def _run_plan(
    model: Any, scorer: NativeScorer | None, rows: TokenRows, owner: Int[torch.Tensor, " row"],
    plan: dict[tuple, list[K]], hooks: Mapping[K, list | None], names: list[str], batch_size: int, *,
    store: PartStore | None, progress: bool, desc: str,
) -> tuple[dict[K, dict[str, torch.Tensor]], int, int]:
    """Score every key of ``plan`` on the rows of its eval corpora, one key at a time.

    A unit (key, eval corpora) found in ``store`` is taken from it; a unit scored is put there.
    The unedited forward runs once per eval subset, shared by the keys without hooks.

    Returns:
        ``(nll[key][eval name], scored tokens, tokens taken from the store)``.
    """
    from tqdm.auto import tqdm

    per_row = rows.count_mask[:, 1:].sum(1)
    sel = {idx: torch.nonzero(torch.isin(owner, torch.tensor(idx))).flatten() for idx in plan}
    size = {idx: int(per_row[sel[idx]].sum()) for idx in plan}
    nll: dict[K, dict[str, torch.Tensor]] = {}
    stored = {(idx, k): _stored(store, k, [names[i] for i in idx]) for idx, ks in plan.items() for k in ks}
    reused = sum(size[idx] for (idx, _), got in stored.items() if got is not None)
    total = sum(size[idx] * len(ks) for idx, ks in plan.items())
    with torch.inference_mode(), tqdm(total=total - reused, desc=desc, unit="tok", unit_scale=True,
                                      disable=not progress, leave=False) as bar, \
            (scorer.active() if scorer else nullcontext()):
        for idx, keys in plan.items():
            plain = None  # the unedited NLLs of this subset, once computed
            for k in keys:
                got = stored[(idx, k)]
                if got is None and not hooks[k] and plain is not None:
                    got = plain
                if got is None:
                    parts = _score_unit(model, scorer, rows, owner, sel[idx], hooks[k], batch_size, bar)
                    got = {names[i]: _cat(parts.get(i)) for i in idx}
                    if store is not None:
                        store.put(repr(k), got, {"evals": list(got)})
                if not hooks[k]:
                    plain = got
                nll[k] = got
    return nll, total, reused


def _stored(store: PartStore | None, key: Hashable, evals: list[str]) -> dict[str, torch.Tensor] | None:
    """A unit's NLLs kept in ``store`` for exactly these eval corpora (in their order), or None."""
    got = store.get(repr(key)) if store is not None else None
    if got is None or not isinstance(got[1], dict) or got[1].get("evals") != evals:
        return None
    return {e: got[0][e] for e in evals}


def token_nlls(
    model: Any,
    eval_corpora: Mapping[str, Any],
    interventions: Mapping[K, Intervention | None],
    *,
    seq_len: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None | Mapping[str, int | None] = 256,
    progress: bool = True,
    desc: str = "Δ NLL",
    evals_of: Mapping[K, Collection[str]] | None = None,
    backend: str = "auto",
    attention: str | None = None,
    allow_long_context: bool = False,
    store: PartStore | None = None,
) -> tuple[dict[K, dict[str, Float[torch.Tensor, " tokens"]]], dict[str, Any]]:
    """Per-token NLLs of eval corpora under every intervention (``None`` = no intervention).

    Long because it documents the thirteen settings of the public API; the body is a few calls.

    Args:
        model: a TransformerLens model with a tokenizer (or eval corpora of token rows).
        eval_corpora: eval name -> corpus-like; each is packed into rows of ``seq_len`` tokens.
        interventions: key -> intervention; the keys name the results.
        seq_len: tokens per row (BOS included); default `DEFAULT_SEQ_LEN`, or the model's context
            where that is shorter.
        batch_size: rows per forward.
        max_tokens: scored tokens per eval corpus (None = all); a mapping gives each eval corpus
            its own cap (corpora not in it: all).
        progress: show a tqdm bar (scored tokens per second).
        desc: the bar's label.
        evals_of: key -> the eval corpora it is scored on (keys not in it: every corpus).
        backend: ``"auto"`` (the native fast path when it checks out, else hooks), ``"native"`` or
            ``"hooks"`` (`tl_culture.evaluation.scorer.choose_scorer`).
        attention: the native path's attention (default sdpa, falling back to the bridge's own).
        allow_long_context: score rows longer than the positions the model was trained on
            (`tl_culture.model.context`; recorded as ``beyond_trained_positions``).
        store: keeps each finished (key, eval corpora) unit, keyed by ``repr(key)``, and takes the
            units it holds instead of scoring them again (a rerun after a crash). Its settings
            must fingerprint everything the NLLs depend on (model, corpora, settings, the
            interventions behind each key).

    Returns:
        ``nll[key][eval_name]``: ``float64[tokens]`` in row-major token order (the same tokens for
        every key), for the eval corpora the key was scored on; and run info (seconds, seq_len,
        max_tokens, batch_size, backend, attention, backend_note where it fell back, scored_tokens,
        and with a store ``stored_tokens``: how many of them it held).
    """
    seq_len, context = _check(model, interventions, seq_len, batch_size, allow_long_context)
    named = as_corpora(eval_corpora)
    names = list(named)
    tok = getattr(model, "tokenizer", None)
    caps = max_tokens if isinstance(max_tokens, Mapping) else dict.fromkeys(names, max_tokens)
    rows, owner = stack_rows([encode(c, tok, seq_len, pack=True, max_tokens=caps.get(n)) for n, c in named.items()])
    plan = _plan(list(interventions), names, evals_of)
    t0 = time.perf_counter()
    scorer, info = choose_scorer(model, backend, attention, rows.input_ids, rows.count_mask)
    hooks = {k: None if it is None else it.fwd_hooks(model) for k, it in interventions.items()}
    scored, total, reused = _run_plan(model, scorer, rows, owner, plan, hooks, names, batch_size, store=store,
                                      progress=progress, desc=desc)
    nll: dict[K, dict[str, torch.Tensor]] = {k: scored.get(k, {}) for k in interventions}
    info.update(seconds=round(time.perf_counter() - t0, 3), seq_len=seq_len, max_tokens=max_tokens,
                batch_size=batch_size, scored_tokens=total)
    if store is not None:
        info["stored_tokens"] = reused
    if beyond_training(context, seq_len):
        info["beyond_trained_positions"] = True
    return nll, info


def _cat(parts: list[torch.Tensor] | None) -> Float[torch.Tensor, " tokens"]:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


__all__ = ["token_nll", "token_nlls"]
