"""The whole culture-neuron experiment as one call: `run_experiment(ExperimentConfig)`.

    languages, cultures --split--> selection / held-out text        (samples.json, documents.json)
    selection text --collect--> stats_language, stats_culture       (stats_*.safetensors)
    statistics --identify--> language and culture neuron sets
    neuron sets --culture_categories--> language, culture, compound, pure, generic   (neurons/, neurons.txt)
    selected neurons x selection text --top_examples, direct_effects--> examples, writes   (unless ``examples`` is off)
    categories x held-out text --Δ NLL--> nll/{category}.json       (unless ``evaluate`` is off)
    two halves of the selection text --identify--> stability.json   (when ``stability`` is on)
    language neurons set to their mean x prompts --> steering/{language}.json   (when ``prompts`` is set)
    summary.json, then report.html through the ``reporter`` the caller passes

Each stage is a short function writing through `RunDir`. Everything is written into a staging
folder beside ``cfg.out`` (`RunDir.staged`); only when every stage has succeeded does it replace
``cfg.out``, so a failing run never damages an earlier result.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from tl_culture.counting.collect import collect
from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import Corpus
from tl_culture.data.sampling import capped_sample, document_record, documents_used
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.delta import evaluate_categories, summarize
from tl_culture.evaluation.langid import LanguageIdentifier
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.evaluation.steer_result import SteerEval
from tl_culture.evaluation.steering import read_prompts, steer_evals
from tl_culture.experiment.config import CATEGORIES, ExperimentConfig
from tl_culture.experiment.rundir import RunDir
from tl_culture.explore.examples import NeuronExamples
from tl_culture.explore.scan import top_examples
from tl_culture.explore.writes import NeuronWrites, direct_effects
from tl_culture.intervene.controls import selected_union
from tl_culture.intervene.interventions import set_to
from tl_culture.model.context import check_seq_len, model_context
from tl_culture.model.load import load_model, model_name
from tl_culture.selection.lape import identify
from tl_culture.selection.neurons import NeuronSet, culture_categories
from tl_culture.selection.stability import split_half_stability

#: Writes the report of a staged run folder with the run's model (`tl_culture.report.write.report_stage`).
Reporter = Callable[[RunDir, Any], object]


@dataclass
class ExperimentResult:
    """What `run_experiment` produced (also on disk in ``out``).

    Attributes:
        out: the run folder.
        stats_language, stats_culture: the statistics of the selection text.
        categories: the culture categories (`CATEGORIES`).
        heldout: the held-out corpora, named ``lang:{language}`` and ``cult:{culture}``.
        languages: the LAPE language neurons.
        pairs: culture -> its language.
        nll: category -> Δ NLL matrix (empty when the run did not evaluate).
        stability: ``{"language" | "culture": {group: Jaccard}}``; None when not measured.
        examples, writes: the selected neurons' top contexts and direct effects; None when not computed.
        steering: target language -> measured steering; None when the run had no prompts.
    """

    out: Path
    stats_language: ActivationStats
    stats_culture: ActivationStats
    categories: dict[str, NeuronSet]
    heldout: dict[str, Corpus]
    languages: NeuronSet
    pairs: dict[str, str]
    nll: dict[str, NLLMatrix] = field(default_factory=dict)
    stability: dict[str, dict[str, float]] | None = None
    examples: NeuronExamples | None = None
    writes: NeuronWrites | None = None
    steering: dict[str, SteerEval] | None = None


def split_all(corpora: dict[str, Corpus], cfg: ExperimentConfig) -> tuple[dict[str, Corpus], dict[str, Corpus]]:
    """Split every corpus into (selection, held-out) as the run does (`Corpus.split` with the config's
    ``eval_fraction``, ``seed`` and ``split``)."""
    sel, held = {}, {}
    for name, c in corpora.items():
        sel[name], held[name] = c.split(cfg.eval_fraction, cfg.seed, cfg.split)
    return sel, held


def documents_read(
    cfg: ExperimentConfig, model: Any, selection: dict[str, dict[str, Corpus]], heldout: dict[str, Corpus]
) -> dict[str, Any]:
    """``documents.json``: per stage and corpus, which documents it read under its token cap.

    ``selection`` corpora are given as split (counting samples them under its cap); ``heldout``
    corpora as evaluation reads them (already in their sampled order).
    """
    tok = getattr(model, "tokenizer", None)

    def read(c: Corpus, cap: int | None, sample: bool = True) -> dict[str, Any]:
        sampled = capped_sample(c, cap, cfg.seed) if sample else c  # the held-out corpora come sampled
        return {"max_tokens": cap, **document_record(sampled, documents_used(sampled, tok, cap))}

    cap_eval = cfg.eval_tokens if cfg.evaluate else None
    return {
        "split": cfg.split, "eval_fraction": cfg.eval_fraction, "seed": cfg.seed,
        "selection": {side: {g: read(c, cfg.cap("max_tokens", side)) for g, c in corpora.items()}
                      for side, corpora in selection.items()},
        "evaluation": {name: read(c, cap_eval, sample=False) for name, c in heldout.items()},
    }


def culture_pairs(cfg: ExperimentConfig, languages: dict[str, Corpus], cultures: dict[str, Corpus]) -> dict[str, str]:
    """Culture -> its language (``cfg.pairs``, else the same name); every language must have a corpus."""
    pairs = {c: cfg.pairs.get(c, c) for c in cultures}
    missing = sorted({lang for lang in pairs.values() if lang not in languages})
    if missing:
        raise TLCultureError(
            f"cultures pair with languages {missing} that have no --language corpus; add them or use --pair"
        )
    return pairs


def run_experiment(cfg: ExperimentConfig, model: Any = None, *, reporter: Reporter | None = None) -> ExperimentResult:
    """Run every stage of the experiment into ``cfg.out`` (see the module docstring).

    Args:
        cfg: the experiment settings.
        model: an already loaded TransformerLens model; loaded from ``cfg.model`` when None.
        reporter: called as ``reporter(run_dir, model)`` on the staged folder after every other
            stage when ``cfg.report`` is set (the report is a later stage than the experiment,
            so the caller passes it: the CLI passes `tl_culture.report.write.report_stage`);
            without one no report is written (with a warning when ``cfg.report`` is set).
    """
    t0 = time.perf_counter()
    languages, cultures = cfg.load_corpora()
    pairs = culture_pairs(cfg, languages, cultures)
    with RunDir.staged(cfg.out) as run:
        if model is None:
            model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        check_seq_len(model_context(model), cfg.seq_len, name=model_name(model),
                      allow_long_context=cfg.allow_long_context)  # before any work
        lang_sel, lang_held = split_all(languages, cfg)
        cult_sel, cult_held = split_all(cultures, cfg)
        # an eval token cap scores a seeded sample of held-out documents, as counting's cap does
        lang_held = {k: capped_sample(v, cfg.eval_tokens, cfg.seed) for k, v in lang_held.items()}
        cult_held = {k: capped_sample(v, cfg.eval_tokens, cfg.seed) for k, v in cult_held.items()}
        run.write_samples(lang_held, cult_held)
        stats_l, stats_c = count_stage(cfg, model, lang_sel, cult_sel, run)
        neurons_l, cats = selection_stage(cfg, stats_l, stats_c, pairs, run)
        explored = examples_stage(cfg, model, lang_sel, cult_sel, neurons_l, cats, run) if cfg.examples else None
        heldout = {**{f"lang:{k}": v for k, v in lang_held.items()}, **{f"cult:{k}": v for k, v in cult_held.items()}}
        run.write_documents(documents_read(cfg, model, {"language": lang_sel, "culture": cult_sel}, heldout))
        nll = evaluation_stage(cfg, model, cats, heldout, pairs, run) if cfg.evaluate else {}
        stability = stability_stage(cfg, model, lang_sel, cult_sel, run) if cfg.stability else None
        steering = steering_stage(cfg, model, neurons_l, stats_l, cats, run) if cfg.prompts else None
        summary = run_summary(cfg, stats_l, stats_c, neurons_l, cats, pairs, nll, stability)
        if steering is not None:
            summary["steering"] = steering_summary(steering)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        run.write_summary(summary)
        if cfg.report and reporter is not None:
            reporter(run, model)
        elif cfg.report:
            warnings.warn(
                "no report.html: pass reporter=tl_culture.report.write.report_stage (the CLI does) "
                "or set report=False",
                stacklevel=2,
            )
    return ExperimentResult(Path(cfg.out), stats_l, stats_c, cats, heldout, neurons_l, pairs, nll, stability,
                            *(explored or (None, None)), steering=steering)


def count_stage(
    cfg: ExperimentConfig, model: Any, lang_sel: dict[str, Corpus], cult_sel: dict[str, Corpus], run: RunDir
) -> tuple[ActivationStats, ActivationStats]:
    """Activation statistics of the language and the culture selection text (``stats_*.safetensors``)."""
    stats_l = collect(model, lang_sel, **cfg.collect_kwargs("language"))
    stats_c = collect(model, cult_sel, **cfg.collect_kwargs("culture"))
    run.write_stats("language", stats_l)
    run.write_stats("culture", stats_c)
    return stats_l, stats_c


def selection_stage(
    cfg: ExperimentConfig, stats_l: ActivationStats, stats_c: ActivationStats, pairs: dict[str, str], run: RunDir
) -> tuple[NeuronSet, dict[str, NeuronSet]]:
    """LAPE language and culture neurons, and the culture categories (``neurons/``, ``neurons.txt``)."""
    lape = dict(top_rate=cfg.top_rate, filter_rate=cfg.filter_rate, activation_bar_ratio=cfg.activation_bar_ratio)
    neurons_l = identify(stats_l, **lape)
    neurons_c = identify(stats_c, **lape)
    cats = culture_categories(neurons_l, neurons_c, pairs)
    run.write_neurons(neurons_l, cats, neuron_report(neurons_l, cats))
    return neurons_l, cats


def examples_stage(
    cfg: ExperimentConfig,
    model: Any,
    lang_sel: dict[str, Corpus],
    cult_sel: dict[str, Corpus],
    neurons_l: NeuronSet,
    cats: dict[str, NeuronSet],
    run: RunDir,
) -> tuple[NeuronExamples, NeuronWrites] | None:
    """Top activating contexts in the selection text (groups ``lang:{language}``, ``cult:{culture}``,
    ``examples_tokens`` tokens each) and direct effects of every selected neuron (``examples.safetensors``,
    ``writes.safetensors``); None when no neuron was selected."""
    chosen = neurons_l.union_mask() | cats["culture"].union_mask()
    if not bool(chosen.any()):
        return None
    corpora = {**{f"lang:{k}": v for k, v in lang_sel.items()}, **{f"cult:{k}": v for k, v in cult_sel.items()}}
    examples = top_examples(model, corpora, chosen, max_tokens=cfg.examples_tokens, seq_len=cfg.seq_len,
                            allow_long_context=cfg.allow_long_context,
                            batch_size=cfg.batch_size, progress=cfg.progress)
    writes = direct_effects(model, chosen)
    run.write_examples(examples, writes)
    return examples, writes


def add_examples(run: RunDir, model: Any, examples_tokens: int | None = None) -> tuple[NeuronExamples, NeuronWrites]:
    """`examples_stage` for a finished run folder (one made with ``examples`` off): its corpora and
    selection split are rebuilt from the config in ``summary.json``; the files are added to the folder.

    Raises:
        TLCultureError: the folder selected no neuron, or its corpora cannot be read.
    """
    saved = dict(run.read_summary().get("config") or {})
    known = {f.name for f in fields(ExperimentConfig)}
    cfg = ExperimentConfig(**{k: v for k, v in saved.items() if k in known})
    if examples_tokens is not None:
        cfg.examples_tokens = examples_tokens
    languages, cultures = cfg.load_corpora()
    lang_sel, _ = split_all(languages, cfg)
    cult_sel, _ = split_all(cultures, cfg)
    explored = examples_stage(cfg, model, lang_sel, cult_sel, run.read_language_neurons(), run.read_categories(), run)
    if explored is None:
        raise TLCultureError(f"{run.path} selected no neuron; there is nothing to explore")
    return explored


def evaluation_stage(
    cfg: ExperimentConfig,
    model: Any,
    cats: dict[str, NeuronSet],
    heldout: dict[str, Corpus],
    pairs: dict[str, str],
    run: RunDir,
) -> dict[str, NLLMatrix]:
    """Δ NLL matrices of every category on the held-out text, each with its `summarize` in its meta."""
    nll = evaluate_categories(
        model,
        cats,
        heldout,
        pairs,
        mode=cfg.eval_mode,
        progress=cfg.progress,
        seq_len=cfg.seq_len,
        batch_size=cfg.eval_batch_size,
        max_tokens=cfg.eval_tokens,
        controls=cfg.control_seeds,
        control_cells=cfg.control_cells,
        bootstrap=cfg.bootstrap,
        seed=cfg.seed,
        backend=cfg.backend,
        attention=cfg.attention,
        allow_long_context=cfg.allow_long_context,
    )
    for m in nll.values():
        m.meta["summary"] = summarize(m, pairs)
    run.write_nll(nll)
    return nll


def stability_stage(
    cfg: ExperimentConfig, model: Any, lang_sel: dict[str, Corpus], cult_sel: dict[str, Corpus], run: RunDir
) -> dict[str, dict[str, float]]:
    """Split-half Jaccard of the language and culture selections (each half gets half the tokens)."""
    lape = dict(top_rate=cfg.top_rate, filter_rate=cfg.filter_rate, activation_bar_ratio=cfg.activation_bar_ratio)
    out = {}
    for side, sel in (("language", lang_sel), ("culture", cult_sel)):
        cap = cfg.cap("max_tokens", side)
        half = None if cap is None else max(1, cap // 2)
        kw = dict(cfg.collect_kwargs(), seed=cfg.seed, max_tokens=half, **lape)
        out[side] = split_half_stability(model, sel, **kw)
    run.write_stability(out)
    return out


def steering_stage(
    cfg: ExperimentConfig,
    model: Any,
    neurons_l: NeuronSet,
    stats_l: ActivationStats,
    cats: dict[str, NeuronSet],
    run: RunDir,
) -> dict[str, SteerEval]:
    """Measured steering (``steering/{language}.json``) of every language group the identifier knows.

    Each language's neurons are set to their mean activation on that language (``stats_language``),
    the prompts continued greedily for ``steer_tokens`` tokens; the controls (``control_seeds``
    draws) edit random neurons outside every neuron selected in the run.
    """
    prompts = read_prompts(cfg.prompts)
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
                        allow_long_context=cfg.allow_long_context,
                        max_new_tokens=cfg.steer_tokens, seed=cfg.seed, identifier=ident, progress=cfg.progress)
    run.write_steering(evals)
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
