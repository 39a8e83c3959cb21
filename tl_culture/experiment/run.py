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

Each stage is a short function writing through `RunDir` (`tl_culture.experiment.stages`).
Everything is written into a work folder beside ``cfg.out`` (`RunDir.staged`); only when every
stage has succeeded does it replace ``cfg.out``, so a failing run never damages an earlier result.
The same run again after a crash, a kill or Ctrl-C continues where it stopped, and a rerun with
changed settings computes again only the stages they change (`tl_culture.experiment.resume`);
``summary.json``'s ``stages`` says which were reused. ``restart`` starts over.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import Corpus
from tl_culture.data.sampling import capped_sample, document_record, documents_used
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.evaluation.steer_result import SteerEval
from tl_culture.evaluation.steering import read_prompts
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.resume import Resume, stage_inputs
from tl_culture.experiment.rundir import RunDir
from tl_culture.experiment.stages import (
    count_stage,
    eval_caps,
    evaluation_stage,
    examples_stage,
    run_summary,
    selection_stage,
    stability_stage,
    steering_stage,
    steering_summary,
)
from tl_culture.explore.examples import NeuronExamples
from tl_culture.explore.writes import NeuronWrites
from tl_culture.model.context import check_seq_len, model_context
from tl_culture.model.load import load_model, model_name
from tl_culture.selection.neurons import NeuronSet

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


def run_text(
    cfg: ExperimentConfig, languages: dict[str, Corpus], cultures: dict[str, Corpus]
) -> tuple[dict[str, dict[str, Corpus]], dict[str, Corpus]]:
    """The run's text: selection corpora by side (``{"language": ..., "culture": ...}``) and the
    held-out corpora as scored, named ``lang:{language}`` and ``cult:{culture}``.

    An eval token cap scores a seeded sample of held-out documents, as counting's cap does.
    """
    lang_sel, lang_held = split_all(languages, cfg)
    cult_sel, cult_held = split_all(cultures, cfg)
    heldout = {**{f"lang:{k}": capped_sample(v, cfg.eval_tokens, cfg.seed) for k, v in lang_held.items()},
               **{f"cult:{k}": capped_sample(v, cfg.eval_tokens, cfg.seed) for k, v in cult_held.items()}}
    return {"language": lang_sel, "culture": cult_sel}, heldout


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

    caps = eval_caps(cfg, model, heldout) if cfg.evaluate else dict.fromkeys(heldout)
    return {
        "split": cfg.split, "eval_fraction": cfg.eval_fraction, "seed": cfg.seed,
        "selection": {side: {g: read(c, cfg.cap("max_tokens", side)) for g, c in corpora.items()}
                      for side, corpora in selection.items()},
        "evaluation": {name: read(c, caps[name], sample=False) for name, c in heldout.items()},
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
    prompts = read_prompts(cfg.prompts) if cfg.prompts else None
    with RunDir.staged(cfg.out, restart=cfg.restart) as run:
        if model is None:
            model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        check_seq_len(model_context(model), cfg.seq_len, name=model_name(model),
                      allow_long_context=cfg.allow_long_context)  # before any work
        selection, heldout = run_text(cfg, languages, cultures)
        lang_sel, cult_sel = selection["language"], selection["culture"]
        resume = Resume(run, stage_inputs(cfg, model, selection, heldout, prompts), cfg.out)
        resume.warn()
        resume.drop_absent()
        run.write_samples({k[5:]: v for k, v in heldout.items() if k.startswith("lang:")},
                          {k[5:]: v for k, v in heldout.items() if k.startswith("cult:")})
        stats_l, stats_c = count_stage(cfg, model, lang_sel, cult_sel, run, resume)
        neurons_l, cats = selection_stage(cfg, stats_l, stats_c, pairs, run, resume)
        explored = (examples_stage(cfg, model, lang_sel, cult_sel, neurons_l, cats, run, resume)
                    if cfg.examples else None)
        run.write_documents(documents_read(cfg, model, selection, heldout))
        nll = evaluation_stage(cfg, model, cats, heldout, pairs, run, resume) if cfg.evaluate else {}
        stability = stability_stage(cfg, model, lang_sel, cult_sel, run, resume) if cfg.stability else None
        steering = (steering_stage(cfg, model, neurons_l, stats_l, cats, run, prompts, resume)
                    if prompts is not None else None)
        summary = run_summary(cfg, stats_l, stats_c, neurons_l, cats, pairs, nll, stability)
        if steering is not None:
            summary["steering"] = steering_summary(steering)
        summary["stages"] = resume.summary()
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        run.write_summary(summary)
        if cfg.report and reporter is not None:
            reporter(run, model)
        elif cfg.report:
            warnings.warn("no report.html: pass reporter=tl_culture.report.write.report_stage (the CLI does) "
                          "or set report=False", stacklevel=2)
    return ExperimentResult(Path(cfg.out), stats_l, stats_c, cats, heldout, neurons_l, pairs, nll, stability,
                            *(explored or (None, None)), steering=steering)


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


