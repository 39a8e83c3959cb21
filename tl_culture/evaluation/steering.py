"""Measured steering: the share of continuations in a target language, with and without an edit.

For N prompts and a target language λ, every prompt is continued under three conditions

    baseline   the plain model
    steered    the intervention (e.g. a language's neurons set to their mean on that language)
    control    the same edit on random neurons, the same count per layer (K seeded draws,
               never the edited neurons; optionally never any neuron in ``exclude``)

and each decoding mode (``greedy``: temperature 0; ``sampled``: ``temperature``/``top_k``,
prompt i seeded ``seed + i`` in every condition). The language of each continuation (the
generated text only, not the prompt) comes from an identifier (`LanguageIdentifier` by default).
Per mode and condition, with s_i the share of prompt i's continuations in λ (1 continuation per
prompt; K for the control):

    rate = (1/N) Σ_i s_i,   CI = Wilson score interval of ``rate`` with n = N prompts

(for the control, the K draws of a prompt are not independent, so n stays N, which widens the
interval). ``steered − control`` and ``steered − baseline`` come with a paired percentile
bootstrap over prompts (`tl_culture.evaluation.rates.paired_share_ci`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool

from tl_culture._io import PartStore
from tl_culture.data.rows import prompt_ids
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.bootstrap import CI_LEVEL, control_seed
from tl_culture.evaluation.langid import LanguageIdentifier
from tl_culture.evaluation.steer_result import SteerEval
from tl_culture.intervene.controls import random_edit
from tl_culture.intervene.decode import decode
from tl_culture.intervene.interventions import Intervention
from tl_culture.model.load import model_name

MODES = ("greedy", "sampled")
"""Decoding modes: greedy (temperature 0) and sampled (the given temperature and top_k)."""


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped: one prompt per line."""
    p = Path(path)
    if not p.is_file():
        raise TLCultureError(f"prompt file {p} does not exist; give a text file with one prompt per line")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise TLCultureError(f"prompt file {p} has no prompts (one per line)")
    return prompts


def _conditions(intervention: Intervention, controls: int, seed: int,
                exclude: Bool[torch.Tensor, "layer neuron"]) -> list[tuple[str, int, Intervention | None]]:
    out: list[tuple[str, int, Intervention | None]] = [("baseline", 0, None), ("steered", 0, intervention)]
    for k in range(controls):
        out.append(("control", k, random_edit(intervention, control_seed(seed, k, 0), exclude)))
    return out


def _texts(model: Any, ids: list[list[int]]) -> list[str]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [" ".join(map(str, t)) for t in ids]
    return [tok.decode(t, skip_special_tokens=True) for t in ids]


def steer_eval(
    model: Any,
    prompts: Sequence[str],
    intervention: Intervention,
    target_language: str,
    **kwargs: Any,
) -> SteerEval:
    """Continue each prompt with and without ``intervention`` and measure the target-language share.

    Args:
        model: a TransformerLens model with a tokenizer.
        prompts: the prompt texts (`read_prompts` reads a file).
        intervention: the edit to measure.
        target_language: the code the identifier answers for the language steered towards.
        **kwargs: the settings of `steer_evals` (controls, exclude, modes, temperature, top_k,
            max_new_tokens, seed, batch_size, identifier, stop_at_eos, cache, progress,
            allow_long_context).

    Returns:
        A `SteerEval` (``save``/``load``, ``rate``, ``table``).
    """
    return steer_evals(model, prompts, {target_language: intervention}, **kwargs)[target_language]


def steer_evals(
    model: Any,
    prompts: Sequence[str],
    edits: Mapping[str, Intervention],
    *,
    controls: int = 1,
    exclude: Bool[torch.Tensor, "layer neuron"] | None = None,
    modes: Sequence[str] = MODES,
    temperature: float = 0.8,
    top_k: int | None = 50,
    max_new_tokens: int = 24,
    seed: int = 0,
    batch_size: int = 16,
    identifier: Callable[[str], str] | None = None,
    stop_at_eos: bool = True,
    cache: bool | None = None,
    progress: bool = False,
    allow_long_context: bool = False,
    store: PartStore | None = None,
) -> dict[str, SteerEval]:
    """`steer_eval` for several target languages at once: the baseline continuations are shared.

    Long because it documents the seventeen settings of the public API; the body is a few steps.

    Args:
        model: a TransformerLens model with a tokenizer.
        prompts: the prompt texts.
        edits: target language code -> the edit steering towards it.
        controls: random-neuron control draws K per target (0: no control).
        exclude: neurons the controls never draw besides the edited ones (e.g. every neuron
            selected in the run, `tl_culture.intervene.controls.selected_union`).
        modes: decoding modes, a subset of `MODES`.
        temperature, top_k: the ``sampled`` mode's temperature (> 0) and top-k (None = all tokens).
        max_new_tokens, batch_size, cache: see `tl_culture.intervene.decode.decode`.
        seed: sampling seed (prompt i uses ``seed + i``) and seed of the control draws.
        identifier: ``text -> language code``; default `LanguageIdentifier()`.
        stop_at_eos: end a continuation at the tokenizer's EOS token.
        progress: print one line per decoded condition.
        allow_long_context: see `tl_culture.intervene.decode.decode`.
        store: keeps every finished condition (all prompts under one mode, target, condition and
            draw) and takes those it holds instead of decoding them again (a rerun after a
            crash); its settings must fingerprint the model, the prompts, the edits and these
            settings.
    """
    _check(prompts, modes, temperature, controls, max_new_tokens)
    identify = identifier or LanguageIdentifier()
    ids = [prompt_ids(model, p) for p in prompts]
    tok = getattr(model, "tokenizer", None)
    eos = getattr(tok, "eos_token_id", None) if stop_at_eos else None
    dec = {"max_new_tokens": max_new_tokens, "top_k": top_k, "seed": seed, "eos": eos, "batch_size": batch_size,
           "cache": cache, "allow_long_context": allow_long_context}
    conditions = {}
    for target, edit in edits.items():
        edit.validate(model)
        excluded = edit.mask | (exclude if exclude is not None else torch.zeros_like(edit.mask))
        conditions[target] = _conditions(edit, controls, seed, excluded)[1:]
    outputs: dict[str, list[dict[str, Any]]] = {t: [] for t in edits}
    for mode in modes:
        temp = 0.0 if mode == "greedy" else float(temperature)
        base = _run(model, ids, None, identify, mode, "baseline", 0, temp, dec, progress, store, key=mode)
        for target, conds in conditions.items():
            outputs[target] += base
            for cond, draw, edit in conds:
                outputs[target] += _run(model, ids, edit, identify, mode, cond, draw, temp, dec, progress, store,
                                        key=f"{mode}/{target}/{cond}/{draw}")
    meta = _meta(model, identify, controls, exclude is not None, modes, temperature, max_new_tokens, top_k, seed,
                 stop_at_eos)
    return {t: SteerEval(t, list(prompts), outputs[t], {**meta, "intervention": edits[t].name,
                                                        "control": [e.name for _, _, e in conditions[t][1:]]})
            for t in edits}


def _meta(model: Any, identify: Callable[[str], str], controls: int, excludes: bool, modes: Sequence[str],
          temperature: float, max_new_tokens: int, top_k: int | None, seed: int, stop_at_eos: bool) -> dict[str, Any]:
    describe = getattr(identify, "describe", None)
    return {
        "model": model_name(model), "controls": controls,
        "control_excludes": "edited neurons" + (" and the given selected neurons" if excludes else ""),
        "decoding": {"modes": list(modes), "temperature": float(temperature), "top_k": top_k,
                     "max_new_tokens": max_new_tokens, "seed": seed, "stop_at_eos": stop_at_eos},
        "identifier": describe() if callable(describe) else {"name": getattr(identify, "__name__", "custom")},
        "level": CI_LEVEL,
    }


def _run(model: Any, ids: list[torch.Tensor], edit: Intervention | None, identify: Callable[[str], str], mode: str,
         cond: str, draw: int, temperature: float, dec: dict[str, Any], progress: bool, store: PartStore | None,
         key: str) -> list[dict[str, Any]]:
    """Decode every prompt under one condition; one output record per prompt. The records are
    taken from ``store`` when it holds ``key``, and kept there when decoded."""
    kept = store.get(key) if store is not None else None
    if kept is not None:
        return kept[1]
    gen = decode(model, ids, edit, temperature=temperature, **dec)
    out = [{"prompt": i, "mode": mode, "condition": cond, "draw": draw, "text": text, "language": identify(text)}
           for i, text in enumerate(_texts(model, gen))]
    if progress:
        langs = Counter(o["language"] for o in out)
        name = edit.name if edit is not None else "no edit"
        print(f"steer_eval: {mode} {cond} {draw} ({name}): {dict(langs.most_common(4))}", flush=True)
    if store is not None:
        store.put(key, {}, out)
    return out


def _check(prompts: Sequence[str], modes: Sequence[str], temperature: float, controls: int,
           max_new_tokens: int) -> None:
    if isinstance(prompts, str) or not prompts:
        raise TLCultureError("give the prompts as a non-empty list of texts (read_prompts reads a file)")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise TLCultureError(f"unknown decoding mode(s) {bad}; use some of {', '.join(MODES)}")
    if "sampled" in modes and temperature <= 0:
        raise TLCultureError(f"the sampled mode needs temperature > 0, got {temperature}")
    if controls < 0:
        raise TLCultureError(f"controls must be >= 0, got {controls}")
    if max_new_tokens < 1:
        raise TLCultureError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


__all__ = ["MODES", "read_prompts", "steer_eval", "steer_evals"]
