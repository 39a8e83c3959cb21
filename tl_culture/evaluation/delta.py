"""Δ NLL of neuron ablations, with random-neuron controls and bootstrap CIs.

For an eval corpus e with counted target tokens T_e and a model run with intervention I
(per-token NLLs from `tl_culture.evaluation.nll`):

    NLL_I(e)   = (1 / |T_e|) Σ_{t ∈ T_e} nll_I[t]          (nats/token)
    Δ[g, e]    = NLL_{ablate g}(e) − NLL_{none}(e)

Controls and intervals (`tl_culture.evaluation.controls`):

- random neurons: ablate as many random neurons as group g has, with the same count in every
  layer, for ``controls`` seeded draws; with ``exclude_selected`` the draws avoid every neuron of
  ``neurons`` (and of ``exclude``); ``control_delta`` is the mean over the draws. With
  ``control_cells="own"`` the draws are scored on g's own text only (`is_own_text`); the other
  cells' control fields are NaN.
- bootstrap CIs over documents (`tl_culture.evaluation.units`: held-out documents are the units,
  documents of at least 2 × ``min_block`` scored tokens are cut into blocks of at least
  ``min_block``): Δ, the control Δ and the paired Δ − control of a cell from the same resamples,
  one generator seeded with ``seed``, cells groups outer, eval corpora inner. No extra forwards.
  ``units="chunks"`` resamples blocks of ``chunk`` consecutive tokens instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from tl_culture._io import PartStore
from tl_culture.data.corpus import Corpus, as_corpora
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.bootstrap import CI_LEVEL
from tl_culture.evaluation.controls import control_ablations, matrix_statistics, unit_counts
from tl_culture.evaluation.heldout import check_heldout, is_own_text
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.evaluation.nll import token_nlls
from tl_culture.evaluation.units import MIN_BLOCK, document_lengths, token_units
from tl_culture.intervene.controls import selected_union
from tl_culture.intervene.interventions import Intervention, ablate
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import model_name
from tl_culture.selection.neurons import NeuronSet


class Run(NamedTuple):
    """One scoring pass of `delta_nll`: the key of its per-token NLLs.

    Attributes:
        kind: ``"baseline"`` (no intervention), ``"ablate"`` (the group's neurons) or
            ``"control"`` (random neurons with the group's per-layer counts).
        group: the ablated group ("" for the baseline).
        control: which random control of the group (0 unless ``kind == "control"``).
    """

    kind: str
    group: str = ""
    control: int = 0


BASELINE = Run("baseline")

Scores = dict[Run, dict[str, torch.Tensor]]
"""``nll[run][eval_name]``: per-token NLLs of one eval corpus in one pass."""


def _runs(neurons: NeuronSet, groups: Sequence[str], controls: int, seed: int,
          exclude: torch.Tensor | None) -> dict[Run, Intervention]:
    """Every group's ablation, then control 0 of every group, control 1, ..."""
    runs: dict[Run, Intervention] = {Run("ablate", g): ablate(neurons, g) for g in groups}
    for (g, s), edit in control_ablations(neurons, groups, controls, seed, exclude).items():
        runs[Run("control", g, s)] = edit
    return runs


CONTROL_CELLS = ("own", "all")
"""Which cells of a matrix get the random controls: each group's own text, or every cell."""


def control_evals(runs: Mapping[Run, Any], evals: list[str], cells: str,
                  pairs: Mapping[str, str] | None) -> dict[Run, list[str]]:
    """The eval corpora each control run is scored on (runs not named: every eval corpus)."""
    if cells == "all":
        return {}
    return {r: [e for e in evals if is_own_text(r.group, e, pairs)] for r in runs if r.kind == "control"}


UNITS = ("documents", "chunks")
"""Resampling units of the bootstrap: held-out documents (long ones in blocks), or token chunks."""


def _units(corpus: Corpus, tokenizer: Any, n: int, units: str, min_block: int, chunk: int) -> torch.Tensor:
    """The resampling unit of each of the ``n`` scored tokens of ``corpus``."""
    if units == "documents":
        lengths = document_lengths(corpus, tokenizer, n)
        if sum(lengths) == n:
            return token_units(lengths, min_block)
    return torch.arange(n) // (chunk if units == "chunks" else min_block)


def _score(
    model: Any,
    named: dict[str, Corpus],
    runs: dict[Run, Intervention],
    baseline_cache: dict[Any, dict[str, torch.Tensor]] | None,
    **kw: Any,
) -> tuple[Scores, dict[str, Any]]:
    """Per-token NLLs of every run, plus the baseline (taken from ``baseline_cache`` when there)."""
    cap = kw["max_tokens"]
    cap = tuple(sorted(cap.items())) if isinstance(cap, Mapping) else cap
    key = (tuple((n, c.fingerprint) for n, c in named.items()), kw["seq_len"], kw["batch_size"], cap,
           kw["backend"], kw["attention"])
    cached = baseline_cache.get(key) if baseline_cache is not None else None
    todo: dict[Run, Intervention | None] = dict(runs) if cached is not None else {BASELINE: None, **runs}
    nll, info = token_nlls(model, named, todo, **kw)
    if cached is not None:
        nll[BASELINE] = cached
    elif baseline_cache is not None:
        baseline_cache[key] = nll[BASELINE]
    info["baseline_reused"] = cached is not None
    return nll, info


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if len(x) else math.nan


def _matrix_fields(
    nll: Scores, groups: list[str], evals: list[str], units: Mapping[str, torch.Tensor], *, controls: int,
    bootstrap: int, seed: int,
) -> dict[str, Any]:
    """`NLLMatrix` fields from the per-token NLLs (the bootstrap draws in the order of the module doc)."""
    base = nll[BASELINE]
    out: dict[str, Any] = dict(
        groups=groups,
        evals=evals,
        baseline=torch.tensor([_mean(base[e]) for e in evals], dtype=torch.float64),
        ablated=torch.tensor([[_mean(nll[Run("ablate", g)][e]) for e in evals] for g in groups], dtype=torch.float64),
        tokens=torch.tensor([len(base[e]) for e in evals], dtype=torch.int64),
    )
    keyed = {"baseline": base, **{(r.kind, r.group) if r.kind == "ablate" else (r.kind, r.group, r.control): v
                                  for r, v in nll.items() if r != BASELINE}}
    cells = matrix_statistics(keyed, groups, evals, units, controls=controls, n_boot=bootstrap, seed=seed)
    cells.pop("delta")  # an NLLMatrix derives it from ablated − baseline
    return {**out, **cells}


def _check_groups(neurons: NeuronSet, groups: Sequence[str] | None) -> list[str]:
    groups = list(neurons.groups if groups is None else groups)
    if not groups:
        raise TLCultureError("no groups to ablate; give at least one group name")
    for g in groups:
        neurons.index(g)
    if len(set(groups)) != len(groups):
        raise TLCultureError(f"groups to ablate must be unique, got {groups}")
    return groups


def _meta(
    model: Any, neurons: NeuronSet, groups: list[str], named: dict[str, Corpus], settings: dict, info: dict
) -> dict[str, Any]:
    """Provenance of a matrix: model, category, neurons per group, settings, eval corpora, run info."""
    return {
        "model": model_name(model),
        "category": (neurons.meta or {}).get("category"),
        "neurons": {g: neurons.count(g) for g in groups},
        **settings,
        "ci_level": CI_LEVEL,
        "eval_corpora": {n: {"fingerprint": c.fingerprint, "source": c.source} for n, c in named.items()},
        **info,
    }


def delta_nll(
    model: Any,
    eval_corpora: Mapping[str, Any],
    neurons: NeuronSet,
    *,
    groups: Sequence[str] | None = None,
    seq_len: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None | Mapping[str, int | None] = 256,
    controls: int = 1,
    seed: int = 0,
    bootstrap: int = 1000,
    chunk: int = 16,
    units: str = "documents",
    min_block: int = MIN_BLOCK,
    exclude_selected: bool = True,
    exclude: torch.Tensor | None = None,
    selection: Mapping[str, Any] | Sequence[Corpus] | None = None,
    allow_overlap: bool = False,
    progress: bool = True,
    baseline_cache: dict[Any, dict[str, torch.Tensor]] | None = None,
    control_cells: str = "own",
    pairs: Mapping[str, str] | None = None,
    backend: str = "auto",
    attention: str | None = None,
    allow_long_context: bool = False,
    store: PartStore | None = None,
) -> NLLMatrix:
    """Δ NLL of ablating each group's neurons, on every eval corpus, with controls.

    Long because it documents the twenty-four settings of the public API; the body is a few calls.

    Args:
        model: a TransformerLens model with a tokenizer (or eval corpora of token rows).
        eval_corpora: eval name -> corpus-like (held-out text).
        neurons: the neuron sets; rows of the result are its groups (or ``groups``).
        groups: which groups to ablate (default all; no repeats).
        seq_len: tokens per row (BOS included); default 256, or the model's context where that is
            shorter (`tl_culture.evaluation.nll.DEFAULT_SEQ_LEN`).
        batch_size: rows per forward; memory ≈ batch_size × seq_len × d_vocab × 4 bytes of logits.
        max_tokens: scored tokens per eval corpus (None = all), or a cap per eval corpus (`token_nlls`).
        controls: random-neuron control seeds per group (0 = none).
        seed: seed of the random controls and the bootstrap.
        bootstrap: bootstrap resamples for the CIs (0 = none).
        chunk: tokens per unit with ``units="chunks"``.
        units: ``"documents"`` (held-out documents, long ones cut into blocks of at least
            ``min_block`` tokens) or ``"chunks"`` (``chunk`` consecutive tokens).
        min_block: fewest tokens of a block cut from a long document.
        exclude_selected: controls never draw a neuron of ``neurons`` (any group) or of ``exclude``.
        exclude: ``bool[layer, neuron]``: more neurons the controls avoid (e.g. every category of
            the run), with ``exclude_selected``.
        selection: the corpora the neurons were selected on, for a document-level overlap check.
        allow_overlap: skip the held-out check.
        progress: show a tqdm bar.
        baseline_cache: a dict shared between calls on the same model: baseline per-token NLLs
            of eval corpora scored with the same settings (same fingerprints, seq_len, batch_size,
            max_tokens, backend, attention) are reused. Valid while the model's weights and hooks
            stay the same.
        control_cells: which cells get the random controls: ``"own"`` (each group's own text,
            `is_own_text` with ``pairs``: the cells whose "beats its control" statements the
            report and summaries make) or ``"all"`` (every cell). Control fields of the other
            cells are NaN (null in the file).
        pairs: culture -> its language, for ``control_cells="own"``.
        backend: how the forwards run: ``"auto"`` (the native fast path where its check passes,
            else TransformerLens hooks), ``"native"`` or ``"hooks"`` (`tl_culture.evaluation.scorer`).
        attention: the native path's attention implementation (default sdpa).
        allow_long_context: score rows longer than the positions the model was trained on
            (`tl_culture.model.context`).
        store: keeps every finished scoring pass (baseline, ablation, control; `token_nlls`) so
            that a rerun after a crash continues; its settings must fingerprint the model, the
            corpora, the neurons and these settings (`tl_culture.experiment.run` does).

    Returns:
        An `NLLMatrix` (rows = groups, columns = eval corpora).
    """
    MLPHooks.from_model(model).check_neurons(neurons.n_layers, neurons.d_mlp)
    if controls < 0 or bootstrap < 0 or chunk < 1 or min_block < 1 or units not in UNITS:
        raise TLCultureError(f"controls and bootstrap must be >= 0, chunk and min_block >= 1, units one of {UNITS}")
    if control_cells not in CONTROL_CELLS:
        raise TLCultureError(f"unknown control cells {control_cells!r}; use one of {', '.join(CONTROL_CELLS)}")
    groups = _check_groups(neurons, groups)
    named = as_corpora(eval_corpora)
    if not allow_overlap:
        check_heldout(named, neurons, selection)
    avoid = (neurons.masks.any(0) | (exclude if exclude is not None else False)) if exclude_selected else None
    runs = _runs(neurons, groups, controls, seed, avoid)
    evals_of = control_evals(runs, list(named), control_cells, pairs)
    nll, info = _score(model, named, runs, baseline_cache, seq_len=seq_len, batch_size=batch_size,
                       max_tokens=max_tokens, progress=progress, evals_of=evals_of, backend=backend,
                       attention=attention, allow_long_context=allow_long_context, store=store)
    tok = getattr(model, "tokenizer", None)
    per_unit = {e: _units(c, tok, len(nll[BASELINE][e]), units, min_block, chunk) for e, c in named.items()}
    counts = unit_counts(per_unit, warn=bootstrap > 0)
    fields = _matrix_fields(nll, groups, list(named), per_unit, controls=controls, bootstrap=bootstrap, seed=seed)
    fields["bootstrap_units"] = torch.tensor([counts[e] for e in named], dtype=torch.int64)
    settings = dict(control_seeds=controls, control_cells=control_cells, seed=seed, bootstrap=bootstrap,
                    bootstrap_units=units, bootstrap_min_block=min_block, bootstrap_chunk=chunk,
                    control_excludes_selected=exclude_selected)
    return NLLMatrix(**fields, meta=_meta(model, neurons, groups, named, settings, info))


# --------------------------------------------------------------------------- categories
EVAL_MODES = ("matched", "all")


def evaluate_categories(
    model: Any,
    categories: Mapping[str, NeuronSet],
    heldout: Mapping[str, Corpus],
    pairs: Mapping[str, str],
    *,
    mode: str = "matched",
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, NLLMatrix]:
    """Δ NLL matrices of the culture-neuron categories on held-out text (the `run` stage).

    Args:
        model: the model.
        categories: `culture_categories` output (language, culture, compound, pure, generic).
        heldout: held-out corpora keyed ``lang:xx`` and ``cult:xx``.
        pairs: culture -> its language.
        mode: ``"matched"``: the language category on the languages' held-out text
            (``lang:l(c)`` for every culture c), every culture-side category on the cultures'
            (``cult:c``); ``"all"``: every category on every held-out corpus.
        progress: show progress bars.
        **kwargs: passed to `delta_nll` (seq_len, max_tokens, controls, bootstrap, seed, ...).
            The controls avoid every neuron of every category (``exclude``) unless
            ``exclude_selected=False``; a ``store`` keeps each category's passes in its own part
            (`PartStore.child`).
    """
    if mode not in EVAL_MODES:
        raise TLCultureError(f"unknown eval mode {mode!r}; use one of {', '.join(EVAL_MODES)}")
    cultures = list(pairs)
    lang_cols = {f"lang:{pairs[c]}": heldout[f"lang:{pairs[c]}"] for c in cultures}
    cult_cols = {f"cult:{c}": heldout[f"cult:{c}"] for c in cultures}
    out, baselines = {}, {}  # one baseline per set of eval corpora, shared by the categories
    kwargs.setdefault("exclude", selected_union(*categories.values()))
    store = kwargs.pop("store", None)
    for name, ns in categories.items():
        if mode == "all":
            cols = dict(heldout)
        else:
            cols = lang_cols if name == "language" else cult_cols
        out[name] = delta_nll(model, cols, ns, progress=progress, baseline_cache=baselines, pairs=pairs,
                              store=store.child(name) if store is not None else None, **kwargs)
        out[name].meta["eval_mode"] = mode
    return out


def summarize(m: NLLMatrix, pairs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Headline numbers of a matrix, language text and culture text apart.

    A cell (g, e) is the group's own text when `is_own_text`; own cells on language text
    (``lang:*``) and on culture text (``cult:*``) are summarised separately (``own_language_text``,
    ``own_culture_text``; eval names without either prefix count as ``own_text``), each with the
    mean Δ, the mean control Δ, the mean paired Δ − control and how many own cells have a paired CI
    above zero. ``other_delta`` is the mean Δ on every other cell.
    """
    own = torch.tensor([[is_own_text(g, e, pairs) for e in m.evals] for g in m.groups],
                       dtype=torch.bool).reshape(len(m.groups), len(m.evals))

    def mean(x: torch.Tensor | None, sel: torch.Tensor) -> float | None:
        v = x[sel & torch.isfinite(x)] if x is not None else torch.zeros(0)
        return round(float(v.mean()), 5) if v.numel() else None

    kinds = {"own_language_text": "lang:", "own_culture_text": "cult:"}
    out: dict[str, Any] = {}
    for name, prefix in (*kinds.items(), ("own_text", None)):
        col = torch.tensor([e.startswith(prefix) if prefix else not e.startswith(tuple(kinds.values()))
                            for e in m.evals], dtype=torch.bool)
        sel = own & col[None]
        if not bool(sel.any()):
            continue
        out[name] = {"delta": mean(m.delta, sel), "control_delta": mean(m.control_delta, sel),
                     "paired_delta": mean(m.paired_delta, sel), "cells": int(sel.sum())}
        if m.paired_ci_low is not None:
            out[name]["beats_control"] = int((m.paired_ci_low[sel] > 0).sum())
    out["other_delta"] = mean(m.delta, ~own)
    out["seconds"] = m.meta.get("seconds")
    return out


__all__ = ["BASELINE", "CONTROL_CELLS", "EVAL_MODES", "Run", "delta_nll", "evaluate_categories", "summarize"]
