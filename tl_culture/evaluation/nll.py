"""Per-token next-token NLLs of eval corpora under a set of interventions.

For an eval corpus with counted target tokens t (the BOS position is never a target, padding is
excluded):

    nll[t] = logsumexp(logits[t − 1]) − logits[t − 1, x_t]        (nats)

Every intervention runs a full forward of the model on the same rows, so the k-th value of every
intervention's NLLs belongs to the same token.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

import torch
from jaxtyping import Bool, Float, Int

from tl_culture.data.corpus import as_corpora
from tl_culture.data.rows import TokenRows, encode, stack_rows
from tl_culture.errors import TLCultureError
from tl_culture.intervene.interventions import Intervention
from tl_culture.model.load import model_device

K = TypeVar("K", bound=Hashable)


def token_nll(
    logits: Float[torch.Tensor, "batch pos vocab"],
    input_ids: Int[torch.Tensor, "batch pos"],
    count_mask: Bool[torch.Tensor, "batch pos"],
    chunk: int = 64,
) -> Float[torch.Tensor, " n"]:
    """Next-token NLL of every counted token, in row-major order (nats, float64).

    ``nll[t] = logsumexp(logits[t − 1]) − logits[t − 1, x_t]`` for every position t with
    ``count_mask[t]`` (so the BOS at t = 0 and padding are never targets). The log-softmax is
    computed ``chunk`` positions at a time in float32, so memory beyond the logits stays at
    ``chunk × d_vocab`` floats.
    """
    out = []
    tmask = count_mask[:, 1:].to(logits.device)
    targets = input_ids[:, 1:].to(logits.device)
    for b in range(logits.shape[0]):
        pos = torch.nonzero(tmask[b]).flatten()
        for s in range(0, len(pos), chunk):
            p = pos[s : s + chunk]
            x = logits[b, p].float()
            lse = torch.logsumexp(x, dim=-1)
            out.append((lse - x.gather(1, targets[b, p, None]).squeeze(1)).double())
    if not out:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(out).cpu()


def _score_batch(
    model: Any,
    batch: TokenRows,
    owner: Int[torch.Tensor, " row"],
    hooks: Mapping[K, list | None],
    parts: dict[K, list[list[torch.Tensor]]],
    bar: Any,
) -> None:
    """One batch under every intervention; appends each row's NLLs to ``parts[key][owner]``.

    The plain forward runs at most once per batch, for the baseline (hooks None) and for
    interventions without hooks (an empty group).
    """
    dev = model_device(model)
    ids, attn = batch.input_ids.to(dev), batch.attention_mask.to(dev)
    kwargs = {} if bool(attn.all()) else {"attention_mask": attn.long()}
    plain = None
    for key, fwd_hooks in hooks.items():
        if fwd_hooks:
            with model.hooks(fwd_hooks=fwd_hooks):
                logits = model(ids, **kwargs)
        else:
            if plain is None:
                plain = model(ids, **kwargs)
            logits = plain
        for r in range(len(owner)):
            nll = token_nll(logits[r : r + 1], ids[r : r + 1], batch.count_mask[r : r + 1])
            parts[key][int(owner[r])].append(nll)
        bar.update(1)
        del logits


def token_nlls(
    model: Any,
    eval_corpora: Mapping[str, Any],
    interventions: Mapping[K, Intervention | None],
    *,
    seq_len: int = 256,
    batch_size: int = 4,
    max_tokens: int | None = 256,
    progress: bool = True,
    desc: str = "Δ NLL",
) -> tuple[dict[K, dict[str, Float[torch.Tensor, " tokens"]]], dict[str, Any]]:
    """Per-token NLLs of every eval corpus under every intervention (``None`` = no intervention).

    Args:
        model: a TransformerLens model with a tokenizer (or eval corpora of token rows).
        eval_corpora: eval name -> corpus-like; each is packed into rows of ``seq_len`` tokens.
        interventions: key -> intervention; the keys name the results.
        seq_len: tokens per row (BOS included).
        batch_size: rows per forward.
        max_tokens: scored tokens per eval corpus (None = all).
        progress: show a tqdm bar.
        desc: the bar's label.

    Returns:
        ``nll[key][eval_name]``: ``float64[tokens]`` in row-major token order (the same tokens for
        every key), and run info (seconds, seq_len, max_tokens, batch_size).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise TLCultureError(f"batch_size must be at least 1, got {batch_size}")
    for it in interventions.values():
        if it is not None:
            it.validate(model)
    named = as_corpora(eval_corpora)
    tok = getattr(model, "tokenizer", None)
    rows, owner = stack_rows([encode(c, tok, seq_len, pack=True, max_tokens=max_tokens) for c in named.values()])
    hooks = {k: None if it is None else it.fwd_hooks(model) for k, it in interventions.items()}
    parts: dict[K, list[list[torch.Tensor]]] = {k: [[] for _ in named] for k in interventions}
    t0 = time.perf_counter()
    n_batches = -(-len(rows) // batch_size)
    with torch.inference_mode(), tqdm(total=n_batches * len(hooks), desc=desc, unit="fwd",
                                      disable=not progress, leave=False) as bar:
        for s in range(0, len(rows), batch_size):
            _score_batch(model, rows.slice(s, s + batch_size).trimmed(), owner[s : s + batch_size], hooks, parts, bar)
    nll = {k: {e: torch.cat(p) if p else torch.zeros(0, dtype=torch.float64) for e, p in zip(named, per, strict=True)}
           for k, per in parts.items()}
    info = {"seconds": round(time.perf_counter() - t0, 3), "seq_len": seq_len, "max_tokens": max_tokens,
            "batch_size": batch_size}
    return nll, info


__all__ = ["token_nll", "token_nlls"]
