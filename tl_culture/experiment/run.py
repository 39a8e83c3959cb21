"""The whole culture-neuron experiment as one call: `run_experiment(ExperimentConfig)`.

    languages, cultures --split--> selection / held-out text        (samples.json)
    selection text --collect--> stats_language, stats_culture       (stats_*.safetensors)
    statistics --identify--> language and culture neuron sets
    neuron sets --culture_categories--> language, culture, compound, pure, generic   (neurons/, neurons.txt)
    categories x held-out text --Δ NLL--> nll/{category}.json       (unless ``evaluate`` is off)
    two halves of the selection text --identify--> stability.json   (when ``stability`` is on)
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl_culture.counting.collect import collect
from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import Corpus
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.delta import evaluate_categories, summarize
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.experiment.config import CATEGORIES, ExperimentConfig
from tl_culture.experiment.rundir import RunDir
from tl_culture.model.load import load_model
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


def split_all(corpora: dict[str, Corpus], fraction: float, seed: int) -> tuple[dict[str, Corpus], dict[str, Corpus]]:
    """Split every corpus into (selection, held-out)."""
    sel, held = {}, {}
    for name, c in corpora.items():
        sel[name], held[name] = c.split(fraction, seed)
    return sel, held


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
        lang_sel, lang_held = split_all(languages, cfg.eval_fraction, cfg.seed)
        cult_sel, cult_held = split_all(cultures, cfg.eval_fraction, cfg.seed)
        run.write_samples(lang_held, cult_held)
        stats_l, stats_c = count_stage(cfg, model, lang_sel, cult_sel, run)
        neurons_l, cats = selection_stage(cfg, stats_l, stats_c, pairs, run)
        heldout = {**{f"lang:{k}": v for k, v in lang_held.items()}, **{f"cult:{k}": v for k, v in cult_held.items()}}
        nll = evaluation_stage(cfg, model, cats, heldout, pairs, run) if cfg.evaluate else {}
        stability = stability_stage(cfg, model, lang_sel, cult_sel, run) if cfg.stability else None
        summary = run_summary(cfg, stats_l, stats_c, neurons_l, cats, pairs, nll, stability)
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
    return ExperimentResult(Path(cfg.out), stats_l, stats_c, cats, heldout, neurons_l, pairs, nll, stability)


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
        bootstrap=cfg.bootstrap,
        seed=cfg.seed,
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
        "pairs": pairs,
    }
    if nll:
        summary["nll"] = {name: m.meta.get("summary", {}) for name, m in nll.items()}
    if stability is not None:
        summary["stability"] = stability
    return summary


def neuron_report(languages: NeuronSet, categories: dict[str, NeuronSet]) -> str:
    """The plain-text neuron tables of a run."""
    parts = ["# Language neurons (LAPE on the language corpora)", languages.table(), ""]
    for name in CATEGORIES:
        parts += [f"# {name}", categories[name].table(), ""]
    j = categories["culture"].jaccard(categories["language"])
    parts.append("# Jaccard(culture_c, language_l(c)) per culture")
    parts.append(json.dumps({g: round(float(j[i, i]), 4) for i, g in enumerate(categories["culture"].groups)}))
    return "\n".join(parts) + "\n"
