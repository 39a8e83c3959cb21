"""Δ NLL of neuron ablations, with random-neuron controls and bootstrap CIs.

For an eval corpus e with counted target tokens T_e and a model run with intervention I
(per-token NLLs from `tl_culture.evaluation.nll`):

    NLL_I(e)   = (1 / |T_e|) Σ_{t ∈ T_e} nll_I[t]          (nats/token)
    Δ[g, e]    = NLL_{ablate g}(e) − NLL_{none}(e)

Controls:

- random neurons: ablate as many random neurons as group g has, with the same count in every
  layer (`random_like`), for several seeds; ``control_delta`` is the mean over seeds.
- bootstrap CIs (`tl_culture.evaluation.bootstrap`): paired, on the per-token differences
  ``nll_{ablate g} − nll_{none}``, from one generator seeded with ``seed``: first every group's
  Δ (groups outer, eval corpora inner), then every control's. No extra forwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from tl_culture.data.corpus import Corpus, as_corpora
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.bootstrap import CI_LEVEL, bootstrap_ci, control_seed
from tl_culture.evaluation.heldout import check_heldout, is_own_text
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.evaluation.nll import token_nlls
from tl_culture.intervene.interventions import Intervention, ablate, random_like
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


def _runs(neurons: NeuronSet, groups: Sequence[str], controls: int, seed: int) -> dict[Run, Intervention]:
    """Every group's ablation, then control 0 of every group, control 1, ..."""
    runs: dict[Run, Intervention] = {Run("ablate", g): ablate(neurons, g) for g in groups}
    for s in range(controls):
        for gi, g in enumerate(groups):
            runs[Run("control", g, s)] = random_like(neurons, g, seed=control_seed(seed, s, gi))
    return runs


def _score(
    model: Any,
    named: dict[str, Corpus],
    runs: dict[Run, Intervention],
    baseline_cache: dict[Any, dict[str, torch.Tensor]] | None,
    **kw: Any,
) -> tuple[Scores, dict[str, Any]]:
    """Per-token NLLs of every run, plus the baseline (taken from ``baseline_cache`` when there)."""
    key = (tuple((n, c.fingerprint) for n, c in named.items()), kw["seq_len"], kw["batch_size"], kw["max_tokens"])
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


def _cis(
    diffs: Mapping[tuple[str, str], torch.Tensor], groups: Sequence[str], evals: Sequence[str], **kw: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bootstrap CIs of every cell, drawn groups outer, eval corpora inner."""
    lo = torch.full((len(groups), len(evals)), math.nan, dtype=torch.float64)
    hi = lo.clone()
    for gi, g in enumerate(groups):
        for ei, e in enumerate(evals):
            lo[gi, ei], hi[gi, ei] = bootstrap_ci(diffs[g, e], **kw)
    return lo, hi


def _matrix_fields(
    nll: Scores, groups: list[str], evals: list[str], *, controls: int, bootstrap: int, chunk: int, seed: int
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
    boot = dict(chunk=chunk, n_boot=bootstrap, generator=torch.Generator().manual_seed(int(seed)))
    if bootstrap:
        diffs = {(g, e): nll[Run("ablate", g)][e] - base[e] for g in groups for e in evals}
        out["delta_ci_low"], out["delta_ci_high"] = _cis(diffs, groups, evals, **boot)
    if controls:
        ctrl = {(g, e): torch.stack([nll[Run("control", g, s)][e] for s in range(controls)]).mean(0) - base[e]
                for g in groups for e in evals}
        out["control_delta"] = torch.tensor([[_mean(ctrl[g, e]) for e in evals] for g in groups], dtype=torch.float64)
        if bootstrap:
            out["control_ci_low"], out["control_ci_high"] = _cis(ctrl, groups, evals, **boot)
    return out


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
    seq_len: int = 256,
    batch_size: int = 4,
    max_tokens: int | None = 256,
    controls: int = 1,
    seed: int = 0,
    bootstrap: int = 1000,
    chunk: int = 16,
    selection: Mapping[str, Any] | Sequence[Corpus] | None = None,
    allow_overlap: bool = False,
    progress: bool = True,
    baseline_cache: dict[Any, dict[str, torch.Tensor]] | None = None,
) -> NLLMatrix:
    """Δ NLL of ablating each group's neurons, on every eval corpus, with controls.

    Args:
        model: a TransformerLens model with a tokenizer (or eval corpora of token rows).
        eval_corpora: eval name -> corpus-like (held-out text).
        neurons: the neuron sets; rows of the result are its groups (or ``groups``).
        groups: which groups to ablate (default all; no repeats).
        seq_len: tokens per row (BOS included).
        batch_size: rows per forward; memory ≈ batch_size × seq_len × d_vocab × 4 bytes of logits.
        max_tokens: scored tokens per eval corpus (None = all).
        controls: random-neuron control seeds per group (0 = none).
        seed: seed of the random controls and the bootstrap.
        bootstrap: bootstrap resamples for the CIs (0 = none).
        chunk: tokens per bootstrap chunk.
        selection: the corpora the neurons were selected on, for a document-level overlap check.
        allow_overlap: skip the held-out check.
        progress: show a tqdm bar.
        baseline_cache: a dict shared between calls on the same model: baseline per-token NLLs
            of eval corpora scored with the same settings (same fingerprints, seq_len, batch_size,
            max_tokens) are reused. Valid while the model's weights and hooks stay the same.

    Returns:
        An `NLLMatrix` (rows = groups, columns = eval corpora).
    """
    MLPHooks.from_model(model).check_neurons(neurons.n_layers, neurons.d_mlp)
    if controls < 0 or bootstrap < 0 or chunk < 1:
        raise TLCultureError("controls and bootstrap must be >= 0 and chunk >= 1")
    groups = _check_groups(neurons, groups)
    named = as_corpora(eval_corpora)
    if not allow_overlap:
        check_heldout(named, neurons, selection)
    runs = _runs(neurons, groups, controls, seed)
    nll, info = _score(model, named, runs, baseline_cache, seq_len=seq_len, batch_size=batch_size,
                       max_tokens=max_tokens, progress=progress)
    fields = _matrix_fields(nll, groups, list(named), controls=controls, bootstrap=bootstrap, chunk=chunk, seed=seed)
    settings = dict(control_seeds=controls, seed=seed, bootstrap=bootstrap, bootstrap_chunk=chunk)
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
    """
    if mode not in EVAL_MODES:
        raise TLCultureError(f"unknown eval mode {mode!r}; use one of {', '.join(EVAL_MODES)}")
    cultures = list(pairs)
    lang_cols = {f"lang:{pairs[c]}": heldout[f"lang:{pairs[c]}"] for c in cultures}
    cult_cols = {f"cult:{c}": heldout[f"cult:{c}"] for c in cultures}
    out, baselines = {}, {}  # one baseline per set of eval corpora, shared by the categories
    for name, ns in categories.items():
        if mode == "all":
            cols = dict(heldout)
        else:
            cols = lang_cols if name == "language" else cult_cols
        out[name] = delta_nll(model, cols, ns, progress=progress, baseline_cache=baselines, **kwargs)
        out[name].meta["eval_mode"] = mode
    return out


def summarize(m: NLLMatrix, pairs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Headline numbers of a matrix: mean Δ on matched cells (a group's own text) vs the others.

    A cell (g, e) is matched when e is g's own text (`is_own_text`).
    """
    d = m.delta
    own = torch.tensor([[is_own_text(g, e, pairs) for e in m.evals] for g in m.groups],
                       dtype=torch.bool).reshape(len(m.groups), len(m.evals))

    def mean(x: torch.Tensor, sel: torch.Tensor) -> float | None:
        v = x[sel & torch.isfinite(x)]
        return round(float(v.mean()), 5) if v.numel() else None

    out = {"matched_delta": mean(d, own), "other_delta": mean(d, ~own)}
    if m.control_delta is not None:
        out["matched_control_delta"] = mean(m.control_delta, own)
    out["seconds"] = m.meta.get("seconds")
    return out


__all__ = ["BASELINE", "EVAL_MODES", "Run", "delta_nll", "evaluate_categories", "summarize"]
