"""The stages of `run_experiment`, each a short function that computes its results (or, on a rerun,
takes them from the run folder: `tl_culture.experiment.resume`) and writes them through `RunDir`.

Every stage takes the run's `Resume` (None outside a run: it then computes and writes plainly).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from typing import Any

import torch

from tl_culture.counting.collect import collect
from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import Corpus
from tl_culture.data.sampling import covering_cap
from tl_culture.evaluation.delta import evaluate_categories, summarize
from tl_culture.evaluation.langid import LanguageIdentifier
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.evaluation.steer_result import SteerEval
from tl_culture.evaluation.steering import steer_evals
from tl_culture.experiment.config import CATEGORIES, ExperimentConfig
from tl_culture.experiment.resume import Resume
from tl_culture.experiment.rundir import RunDir
from tl_culture.explore.examples import NeuronExamples
from tl_culture.explore.scan import top_examples
from tl_culture.explore.writes import NeuronWrites, direct_effects
from tl_culture.intervene.controls import selected_union
from tl_culture.intervene.interventions import set_to
from tl_culture.selection.lape import identify
from tl_culture.selection.neurons import NeuronSet, culture_categories
from tl_culture.selection.stability import split_half_stability


def _reused(resume: Resume | None, stage: str) -> bool:
    return resume is not None and resume.reused(stage)


def _finish(resume: Resume | None, stage: str, files: list) -> None:
    if resume is not None:
        resume.finish(stage, files)


def count_stage(
    cfg: ExperimentConfig, model: Any, lang_sel: dict[str, Corpus], cult_sel: dict[str, Corpus], run: RunDir,
    resume: Resume | None = None,
) -> tuple[ActivationStats, ActivationStats]:
    """Activation statistics of the language and the culture selection text (``stats_*.safetensors``).

    In a run, `collect` keeps a checkpoint of each side in the stage's parts (resumed after a crash).
    """
    if _reused(resume, "count"):
        return run.read_stats("language"), run.read_stats("culture")
    parts = resume.parts("count") if resume is not None else None
    stats = {}
    for side, sel in (("language", lang_sel), ("culture", cult_sel)):
        ckpt = parts / side if parts is not None else None
        stats[side] = collect(model, sel, **cfg.collect_kwargs(side), checkpoint_dir=ckpt)
    files = run.write_stats("language", stats["language"]) + run.write_stats("culture", stats["culture"])
    _finish(resume, "count", files)
    return stats["language"], stats["culture"]


def _lape(cfg: ExperimentConfig) -> dict[str, float]:
    return dict(top_rate=cfg.top_rate, filter_rate=cfg.filter_rate, activation_bar_ratio=cfg.activation_bar_ratio)


def selection_stage(
    cfg: ExperimentConfig, stats_l: ActivationStats, stats_c: ActivationStats, pairs: dict[str, str], run: RunDir,
    resume: Resume | None = None,
) -> tuple[NeuronSet, dict[str, NeuronSet]]:
    """LAPE language and culture neurons, and the culture categories (``neurons/``, ``neurons.txt``)."""
    if _reused(resume, "selection"):
        return run.read_language_neurons(), run.read_categories()
    neurons_l = identify(stats_l, **_lape(cfg))
    neurons_c = identify(stats_c, **_lape(cfg))
    cats = culture_categories(neurons_l, neurons_c, pairs)
    _finish(resume, "selection", run.write_neurons(neurons_l, cats, neuron_report(neurons_l, cats)))
    return neurons_l, cats


def examples_stage(
    cfg: ExperimentConfig,
    model: Any,
    lang_sel: dict[str, Corpus],
    cult_sel: dict[str, Corpus],
    neurons_l: NeuronSet,
    cats: dict[str, NeuronSet],
    run: RunDir,
    resume: Resume | None = None,
) -> tuple[NeuronExamples, NeuronWrites] | None:
    """Top activating contexts in the selection text (groups ``lang:{language}``, ``cult:{culture}``,
    ``examples_tokens`` tokens each) and direct effects of every selected neuron (``examples.safetensors``,
    ``writes.safetensors``); None when no neuron was selected."""
    if _reused(resume, "examples"):
        explored = run.read_examples()
        return explored if explored[0] is not None else None
    chosen = neurons_l.union_mask() | cats["culture"].union_mask()
    if not bool(chosen.any()):
        _finish(resume, "examples", [])
        return None
    corpora = {**{f"lang:{k}": v for k, v in lang_sel.items()}, **{f"cult:{k}": v for k, v in cult_sel.items()}}
    examples = top_examples(model, corpora, chosen, max_tokens=cfg.examples_tokens, seq_len=cfg.seq_len,
                            allow_long_context=cfg.allow_long_context,
                            batch_size=cfg.batch_size, progress=cfg.progress)
    writes = direct_effects(model, chosen)
    _finish(resume, "examples", run.write_examples(examples, writes))
    return examples, writes


def eval_caps(cfg: ExperimentConfig, model: Any, heldout: dict[str, Corpus]) -> dict[str, int | None]:
    """The scored-token cap of each held-out corpus: ``eval_tokens``, raised where needed to cover
    its first ``eval_min_documents`` documents (`tl_culture.data.sampling.covering_cap`)."""
    tok = getattr(model, "tokenizer", None)
    return {n: covering_cap(c, tok, cfg.eval_tokens, cfg.eval_min_documents) for n, c in heldout.items()}


def evaluation_stage(
    cfg: ExperimentConfig,
    model: Any,
    cats: dict[str, NeuronSet],
    heldout: dict[str, Corpus],
    pairs: dict[str, str],
    run: RunDir,
    resume: Resume | None = None,
) -> dict[str, NLLMatrix]:
    """Δ NLL matrices of every category on the held-out text, each with its `summarize` in its meta.

    In a run, every finished scoring pass is kept in the stage's parts (`evaluate_categories`' store).
    """
    if _reused(resume, "evaluation"):
        return run.read_nll()
    nll = evaluate_categories(
        model, cats, heldout, pairs, mode=cfg.eval_mode, progress=cfg.progress, seq_len=cfg.seq_len,
        batch_size=cfg.eval_batch_size, max_tokens=eval_caps(cfg, model, heldout), controls=cfg.control_seeds,
        control_cells=cfg.control_cells, bootstrap=cfg.bootstrap, seed=cfg.seed, backend=cfg.backend,
        attention=cfg.attention, allow_long_context=cfg.allow_long_context,
        store=resume.store("evaluation") if resume is not None else None,
    )
    for m in nll.values():
        m.meta["summary"] = summarize(m, pairs)
    _finish(resume, "evaluation", run.write_nll(nll))
    return nll


def stability_stage(
    cfg: ExperimentConfig, model: Any, lang_sel: dict[str, Corpus], cult_sel: dict[str, Corpus], run: RunDir,
    resume: Resume | None = None,
) -> dict[str, dict[str, float]]:
    """Split-half Jaccard of the language and culture selections (each half gets half the tokens);
    in a run, each finished side is kept in the stage's parts."""
    if _reused(resume, "stability"):
        return run.read_stability()
    store = resume.store("stability") if resume is not None else None
    out = {}
    for side, sel in (("language", lang_sel), ("culture", cult_sel)):
        kept = store.get(side) if store is not None else None
        if kept is not None:
            out[side] = kept[1]
            continue
        cap = cfg.cap("max_tokens", side)
        half = None if cap is None else max(1, cap // 2)
        kw = dict(cfg.collect_kwargs(), seed=cfg.seed, max_tokens=half, **_lape(cfg))
        out[side] = split_half_stability(model, sel, **kw)
        if store is not None:
            store.put(side, {}, out[side])
    _finish(resume, "stability", run.write_stability(out))
    return out


def steering_stage(
    cfg: ExperimentConfig,
    model: Any,
    neurons_l: NeuronSet,
    stats_l: ActivationStats,
    cats: dict[str, NeuronSet],
    run: RunDir,
    prompts: list[str],
    resume: Resume | None = None,
) -> dict[str, SteerEval]:
    """Measured steering (``steering/{language}.json``) of every language group the identifier knows.

    Each language's neurons are set to their mean activation on that language (``stats_language``),
    the prompts continued greedily for ``steer_tokens`` tokens; the controls (``control_seeds``
    draws) edit random neurons outside every neuron selected in the run. In a run, every finished
    condition is kept in the stage's parts.
    """
    if _reused(resume, "steering"):
        return run.read_steering()
    ident = LanguageIdentifier()
    edits, skipped = {}, []
    for g in neurons_l.groups:
        if g in ident.labels and bool(neurons_l.mask(g).any()):
            edits[g] = set_to(neurons_l, g, stats_l)
        else:
            skipped.append(g)
    if skipped:
        warnings.warn(f"steering: no measurement for {skipped} (no neurons, or a name that is not a language "
                      "code the identifier knows)", stacklevel=2)
    exclude = selected_union(neurons_l, *cats.values())
    evals = steer_evals(model, prompts, edits, controls=cfg.control_seeds, exclude=exclude, modes=("greedy",),
                        allow_long_context=cfg.allow_long_context, max_new_tokens=cfg.steer_tokens, seed=cfg.seed,
                        identifier=ident, progress=cfg.progress,
                        store=resume.store("steering") if resume is not None else None)
    _finish(resume, "steering", run.write_steering(evals))
    return evals


def steering_summary(evals: dict[str, SteerEval]) -> dict[str, dict[str, Any]]:
    """Per target language, the rates and CIs at the top of its ``steering/*.json``."""
    keep = ("n_prompts", "baseline_rate", "baseline_ci", "steered_rate", "steered_ci", "control_rate", "control_ci",
            "steered_minus_control", "steered_minus_control_ci")
    return {t: {k: v for k, v in ev.to_dict().items() if k in keep} for t, ev in evals.items()}


def run_summary(
    cfg: ExperimentConfig,
    stats_l: ActivationStats,
    stats_c: ActivationStats,
    neurons_l: NeuronSet,
    cats: dict[str, NeuronSet],
    pairs: dict[str, str],
    nll: dict[str, NLLMatrix],
    stability: dict[str, dict[str, float]] | None,
) -> dict[str, Any]:
    """``summary.json`` without its ``seconds``: settings, model, token and neuron counts, Δ NLL summaries."""
    summary = {
        "config": asdict(cfg),
        "model": stats_l.meta.get("model"),
        "counted_with": {k: stats_l.meta.get(k) for k in ("backend", "attention", "dtype")},
        "n_layers": stats_l.n_layers,
        "d_mlp": stats_l.d_mlp,
        "tokens_language": dict(zip(stats_l.groups, stats_l.tokens.tolist())),
        "tokens_culture": dict(zip(stats_c.groups, stats_c.tokens.tolist())),
        "neurons": {name: ns.counts() for name, ns in {"languages": neurons_l, **cats}.items()},
        "layers": {name: layer_profile(ns) for name, ns in {"languages": neurons_l, **cats}.items()},
        "pairs": pairs,
    }
    if nll:
        summary["nll"] = {name: m.meta.get("summary", {}) for name, m in nll.items()}
    if stability is not None:
        summary["stability"] = stability
    return summary


def layer_profile(ns: NeuronSet) -> dict[str, Any]:
    """Where a set's neurons sit: the union over groups per layer, and its mean relative depth.

    Depth of layer l is l / (n_layers − 1) (0 = first, 1 = last); the mean is over the union's neurons.
    """
    per_layer = ns.masks.any(0).sum(1)
    total = int(per_layer.sum())
    depth = None
    if total and ns.n_layers > 1:
        rel = torch.arange(ns.n_layers, dtype=torch.float64) / (ns.n_layers - 1)
        depth = round(float((per_layer.double() * rel).sum() / total), 5)
    return {"union_per_layer": per_layer.tolist(), "union": total, "mean_relative_depth": depth}


def neuron_report(languages: NeuronSet, categories: dict[str, NeuronSet]) -> str:
    """The plain-text neuron tables of a run."""
    parts = ["# Language neurons (LAPE on the language corpora)", languages.table(), ""]
    for name in CATEGORIES:
        parts += [f"# {name}", categories[name].table(), ""]
    j = categories["culture"].jaccard(categories["language"])
    parts.append("# Jaccard(culture_c, language_l(c)) per culture")
    parts.append(json.dumps({g: round(float(j[i, i]), 4) for i, g in enumerate(categories["culture"].groups)}))
    return "\n".join(parts) + "\n"
