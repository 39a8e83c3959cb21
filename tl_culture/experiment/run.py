"""The whole culture-neuron experiment as one call: `run_experiment(ExperimentConfig)`.

    languages, cultures --split--> selection / held-out text
    selection text --collect--> stats_language, stats_culture --identify--> neuron sets
    neuron sets --culture_categories--> language, culture, compound, pure, generic
    (later stages add the Δ NLL evaluation and the report)

Everything is written into a fresh temporary folder beside ``out``; only when every stage has
succeeded does it replace ``out``, so a failing run never damages an earlier result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl_culture._io import write_json_atomic, write_text_atomic
from tl_culture.counting.collect import ActivationStats, collect
from tl_culture.data.corpus import Corpus
from tl_culture.errors import TLCultureError
from tl_culture.experiment.config import CATEGORIES, ExperimentConfig
from tl_culture.selection.lape import identify
from tl_culture.selection.neurons import NeuronSet, culture_categories


@dataclass
class ExperimentResult:
    """What `run_experiment` produced (also on disk in ``out``)."""

    out: Path
    stats_language: ActivationStats
    stats_culture: ActivationStats
    categories: dict[str, NeuronSet]
    heldout: dict[str, Corpus]
    extra: dict[str, Any] = field(default_factory=dict)


def split_all(corpora: dict[str, Corpus], fraction: float, seed: int) -> tuple[dict[str, Corpus], dict[str, Corpus]]:
    """Split every corpus into (selection, held-out)."""
    sel, held = {}, {}
    for name, c in corpora.items():
        sel[name], held[name] = c.split(fraction, seed)
    return sel, held


def _swap_into_place(tmp: Path, out: Path) -> None:
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
    os.replace(tmp, out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def run_experiment(cfg: ExperimentConfig, model: Any = None) -> ExperimentResult:
    """Run statistics, selection and culture categories (and the later stages) into ``cfg.out``.

    Args:
        cfg: the experiment settings.
        model: an already loaded TransformerLens model; loaded from ``cfg.model`` when None.
    """
    from tl_culture.model.load import load_model

    t0 = time.perf_counter()
    languages, cultures = cfg.load_corpora()
    pairs = {c: cfg.pairs.get(c, c) for c in cultures}
    missing = sorted({lang for lang in pairs.values() if lang not in languages})
    if missing:
        raise TLCultureError(
            f"cultures pair with languages {missing} that have no --language corpus; add them or use --pair"
        )
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if model is None:
            model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        lang_sel, lang_held = split_all(languages, cfg.eval_fraction, cfg.seed)
        cult_sel, cult_held = split_all(cultures, cfg.eval_fraction, cfg.seed)
        kw = cfg.collect_kwargs()
        stats_l = collect(model, lang_sel, **kw)
        stats_c = collect(model, cult_sel, **kw)
        stats_l.save(tmp / "stats_language.safetensors")
        stats_c.save(tmp / "stats_culture.safetensors")
        lape_kw = dict(
            top_rate=cfg.top_rate, filter_rate=cfg.filter_rate, activation_bar_ratio=cfg.activation_bar_ratio
        )
        neurons_l = identify(stats_l, **lape_kw)
        neurons_c = identify(stats_c, **lape_kw)
        cats = culture_categories(neurons_l, neurons_c, pairs)
        (tmp / "neurons").mkdir()
        neurons_l.save(tmp / "neurons" / "languages.safetensors")
        for name, ns in cats.items():
            ns.save(tmp / "neurons" / f"{name}.safetensors")
        write_text_atomic(tmp / "neurons.txt", neuron_report(neurons_l, cats))
        heldout = {**{f"lang:{k}": v for k, v in lang_held.items()}, **{f"cult:{k}": v for k, v in cult_held.items()}}
        result = ExperimentResult(out, stats_l, stats_c, cats, heldout, {"languages": neurons_l, "pairs": pairs})
        nll = _evaluation_stage(cfg, model, cats, heldout, pairs, tmp) if cfg.evaluate else {}
        result.extra["nll"] = nll
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
        if cfg.stability:
            summary["stability"] = _stability_stage(cfg, model, lang_sel, cult_sel, tmp)
            result.extra["stability"] = summary["stability"]
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(tmp / "summary.json", summary)
        if cfg.report:
            _report_stage(tmp, model)
        _swap_into_place(tmp, out)
        result.out = out
        return result
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _evaluation_stage(
    cfg: ExperimentConfig,
    model: Any,
    cats: dict[str, NeuronSet],
    heldout: dict[str, Corpus],
    pairs: dict[str, str],
    tmp: Path,
) -> dict[str, Any]:
    """Δ NLL matrices of every category on the held-out text, saved as ``nll/{category}.json``."""
    from tl_culture.evaluation.delta import evaluate_categories, summarize

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
    (tmp / "nll").mkdir(exist_ok=True)
    for name, m in nll.items():
        m.meta["summary"] = summarize(m, pairs)
        m.save(tmp / "nll" / f"{name}.json")
    return nll


def neuron_report(languages: NeuronSet, categories: dict[str, NeuronSet]) -> str:
    """The plain-text neuron tables of a run."""
    parts = ["# Language neurons (LAPE on the language corpora)", languages.table(), ""]
    for name in CATEGORIES:
        parts += [f"# {name}", categories[name].table(), ""]
    j = categories["culture"].jaccard(categories["language"])
    parts.append("# Jaccard(culture_c, language_l(c)) per culture")
    parts.append(json.dumps({g: round(float(j[i, i]), 4) for i, g in enumerate(categories["culture"].groups)}))
    return "\n".join(parts) + "\n"


def _stability_stage(
    cfg: ExperimentConfig, model: Any, lang_sel: dict[str, Corpus], cult_sel: dict[str, Corpus], tmp: Path
) -> dict[str, dict[str, float]]:
    """Split-half Jaccard of the language and culture selections (each half gets half the tokens)."""
    from tl_culture.evaluation.delta import split_half_stability

    kw = dict(
        cfg.collect_kwargs(),
        seed=cfg.seed,
        max_tokens=None if cfg.max_tokens is None else max(1, cfg.max_tokens // 2),
        top_rate=cfg.top_rate,
        filter_rate=cfg.filter_rate,
        activation_bar_ratio=cfg.activation_bar_ratio,
    )
    out = {
        "language": split_half_stability(model, lang_sel, **kw),
        "culture": split_half_stability(model, cult_sel, **kw),
    }
    write_json_atomic(tmp / "stability.json", out)
    return out


def _report_stage(run_dir: Path, model: Any) -> None:
    """Write report.html into the run folder; skipped with a warning without the viz extra."""
    import importlib.util
    import warnings

    missing = [m for m in ("matplotlib", "circuitsvis") if importlib.util.find_spec(m) is None]
    if missing:
        warnings.warn(
            f"no report: {', '.join(missing)} not installed; pip install 'tl-culture[viz]' and run "
            "tl-culture report RUN_DIR",
            stacklevel=2,
        )
        return
    from tl_culture.report.write import write_report

    write_report(run_dir, model=model)
