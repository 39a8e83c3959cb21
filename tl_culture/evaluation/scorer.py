"""Which path scores next-token NLLs: the native fast path, checked on a probe, or TransformerLens hooks.

Both compute, for every counted target token t of a row (``nll[t]`` of `tl_culture.evaluation.nll`),

    nll[t] = logsumexp(logits[t − 1]) − logits[t − 1, x_t]

with an intervention's hooks on the MLP neurons. The hooks path runs ``model(ids)`` with the hooks
attached and a log-softmax of its logits; the native path (`tl_culture.model.scoring.NativeScorer`)
runs the bridge's HF modules with sdpa attention and a fused head. Agreement guaranteed: on a probe
row, with no edit and with `probe_edit`, every per-token NLL of the native path is within
``TOLERANCE[dtype]`` of the hooks path's (1e-4 nats in float32); the native path runs only when the
check passes, and the check is redone whenever the model's modules, hooks or weights change.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tl_culture.errors import TLCultureError
from tl_culture.intervene.interventions import Edit, Intervention
from tl_culture.model.bridge import bridge_attention, check_backend, state_signature
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import model_device, weights_dtype
from tl_culture.model.scoring import NativeScorer, scoring_problem

#: Largest per-token |NLL difference| (nats) between the native and the hooks path that the check accepts.
TOLERANCE = {torch.float64: 1e-4, torch.float32: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.05}
#: Tokens of the probe row the check scores (BOS included).
PROBE_TOKENS = 64

#: model -> attention -> (state signature, problem or None)
_CHECKED: weakref.WeakKeyDictionary[Any, dict[str | None, tuple[int, str | None]]] = weakref.WeakKeyDictionary()


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


def hooks_nll(
    model: Any, input_ids: torch.Tensor, count_mask: torch.Tensor, attention_mask: torch.Tensor | None,
    fwd_hooks: Sequence[tuple[str, Any]],
) -> list[Float[torch.Tensor, " n"]]:
    """Per row, the NLLs of the counted tokens from ``model(ids)`` with ``fwd_hooks`` (the hooks path)."""
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(input_ids, **kwargs)
    return [token_nll(logits[r : r + 1], input_ids[r : r + 1], count_mask[r : r + 1]) for r in range(len(input_ids))]


def probe_edit(mlp: MLPHooks) -> Intervention:
    """The check's intervention: neurons 0–1 of every layer scaled by 2, neurons 2–3 set to 0.5.

    It runs every hook an intervention can use (``hook_post``; ``hook_pre_linear`` on gated MLPs).
    """
    n = min(2, mlp.d_mlp // 2)
    scaled = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.bool)
    scaled[:, :n] = True
    fixed = torch.zeros_like(scaled)
    fixed[:, n : 2 * n] = True
    values = torch.full(scaled.shape, 0.5, dtype=torch.float64)
    return Intervention([Edit("scale", scaled, factor=2.0, label="probe scale"),
                         Edit("set", fixed, values=values, label="probe set")])


def check_native(scorer: NativeScorer, probe: torch.Tensor, probe_mask: torch.Tensor) -> str | None:
    """Why the native path's NLLs on ``probe`` differ from the hooks path's (None: they agree; module doc)."""
    model = scorer.model
    key = state_signature(model)
    known = _CHECKED.get(model, {}).get(scorer.attention)
    if known is not None and known[0] == key:
        return known[1]
    tol = TOLERANCE.get(weights_dtype(model) or torch.float32, 0.1)
    problem = None
    try:
        with torch.inference_mode():
            for what, hooks in (("no edit", []), ("an edit", probe_edit(scorer.mlp).fwd_hooks(model))):
                ref = torch.cat(hooks_nll(model, probe, probe_mask, None, hooks))
                with scorer.active():
                    got = torch.cat(scorer.nll(probe, probe_mask, None, hooks))
                diff = (got - ref).abs().max().item() if len(ref) else 0.0
                if not diff <= tol:
                    problem = f"with {what} its NLLs differ from the TransformerLens forward by {diff:.3g} nats"
                    break
    except TLCultureError as exc:
        problem = str(exc)
    except Exception as exc:  # an HF module that cannot run unwrapped, or this attention
        problem = f"the native forward failed ({type(exc).__name__}: {str(exc).strip()[:200]})"
    _CHECKED.setdefault(model, {})[scorer.attention] = (state_signature(model), problem)
    return problem


def choose_scorer(
    model: Any, backend: str, attention: str | None, probe: torch.Tensor, probe_mask: torch.Tensor
) -> tuple[NativeScorer | None, dict[str, Any]]:
    """``(native scorer or None for the hooks path, info for the results' meta)``.

    ``probe`` and ``probe_mask`` are token rows (on any device); the check scores the first
    `PROBE_TOKENS` tokens of the first row on the model's device.

    Tries, in order: native with ``attention`` (default sdpa), native with the bridge's own
    attention (when sdpa was only the default), the hooks (``backend="auto"`` only). Falling back
    is quiet; the reason goes into the info as ``backend_note``.
    """
    check_backend(backend, attention)
    if backend == "hooks":
        return None, {"backend": "hooks", "attention": bridge_attention(model)}
    mlp = MLPHooks.from_model(model)
    problem = scoring_problem(model, mlp)
    notes = []
    if problem is None:
        probe, probe_mask = probe[:1, :PROBE_TOKENS].to(model_device(model)), probe_mask[:1, :PROBE_TOKENS]
        for att in [attention or "sdpa"] + ([None] if attention is None else []):
            scorer = NativeScorer(model, mlp, attention=att)
            problem = check_native(scorer, probe, probe_mask)
            if problem is None:
                info = {"backend": "native", "attention": att or bridge_attention(model)}
                return scorer, info | ({"backend_note": notes[0]} if notes else {})
            notes.append(f"with {att or 'its own'} attention: {problem}")
        problem = "; ".join(notes)
    if backend == "native" or attention is not None:
        raise TLCultureError(f"the native scorer cannot run: {problem}; use backend='hooks'")
    return None, {"backend": "hooks", "attention": bridge_attention(model), "backend_note": problem}


__all__ = ["PROBE_TOKENS", "TOLERANCE", "check_native", "choose_scorer", "hooks_nll", "probe_edit", "token_nll"]
