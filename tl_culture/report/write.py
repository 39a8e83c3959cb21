"""One self-contained HTML report of a run folder: settings, neuron tables, figures, Δ NLL, token views.

    write_report("runs/demo")                       # figures + tables
    write_report("runs/demo", model=load_model())   # + circuitsvis token views of held-out text

The report is ``{run_dir}/report.html`` with every figure inlined as SVG (PNG and SVG copies are
written to ``{run_dir}/figures/``) and circuitsvis' JavaScript inlined once, so it opens with no
network: it has no external script, style, font or image (checked before writing).
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_culture._io import write_text_atomic
from tl_culture.errors import TLCultureError
from tl_culture.selection.neurons import NeuronSet

CATEGORIES = ("language", "culture", "compound", "pure", "generic")
SECTIONS = {
    "overview": "Overview",
    "settings": "Settings",
    "neurons": "Neurons",
    "layers": "Layers",
    "overlap": "Overlap",
    "categories": "Categories",
    "nll": "Δ NLL",
    "tokens": "Token views",
}


# --------------------------------------------------------------------------- loading
@dataclass
class _NLL:
    """The `NLLMatrix` contract, read from JSON when `tl_culture.evaluation.delta` is not installed."""

    groups: list[str]
    evals: list[str]
    baseline: np.ndarray
    ablated: np.ndarray
    delta_ci_low: np.ndarray | None = None
    delta_ci_high: np.ndarray | None = None
    control_delta: np.ndarray | None = None
    control_ci_low: np.ndarray | None = None
    control_ci_high: np.ndarray | None = None
    tokens: np.ndarray | None = None
    meta: dict | None = None

    @property
    def delta(self) -> np.ndarray:
        return self.ablated - self.baseline[None]


def _load_nll(path: Path) -> Any:
    """An `NLLMatrix` (the real class when present, else the same fields read from the JSON)."""
    try:
        from tl_culture.evaluation.delta import NLLMatrix
    except ImportError:
        NLLMatrix = None
    if NLLMatrix is not None and hasattr(NLLMatrix, "load"):
        return NLLMatrix.load(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        arr = {k: None if raw.get(k) is None else np.asarray(raw[k], dtype=np.float64) for k in
               ("baseline", "ablated", "delta_ci_low", "delta_ci_high", "control_delta", "control_ci_low",
                "control_ci_high", "tokens")}
        return _NLL(list(raw["groups"]), list(raw["evals"]), meta=raw.get("meta", {}), **arr)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TLCultureError(f"{path}: not a readable NLL matrix ({type(exc).__name__}); rerun the evaluation") from exc


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise TLCultureError(f"{path}: missing {what}; is this a run folder written by `tl-culture run`?")
    return path


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read what the report shows from a run folder.

    Returns:
        ``{"summary", "languages", "categories", "nll": {category: NLLMatrix}, "stats_culture"}``
        (``stats_culture`` is None when the file is absent).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise TLCultureError(f"{run}: no such run folder; give the --out folder of `tl-culture run`")
    try:
        summary = json.loads(_need(run / "summary.json", "summary.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TLCultureError(f"{run / 'summary.json'}: corrupted JSON ({exc.msg}); rerun `tl-culture run`") from exc
    languages = NeuronSet.load(_need(run / "neurons" / "languages.safetensors", "language neurons"))
    cats = {c: NeuronSet.load(_need(run / "neurons" / f"{c}.safetensors", f"{c} neurons")) for c in CATEGORIES}
    nll = {}
    if (run / "nll").is_dir():
        order = {c: i for i, c in enumerate(CATEGORIES)}
        for p in sorted((run / "nll").glob("*.json"), key=lambda p: (order.get(p.stem, 99), p.stem)):
            nll[p.stem] = _load_nll(p)
    stats_c = None
    if (run / "stats_culture.safetensors").is_file():
        from tl_culture.counting.collect import ActivationStats

        stats_c = ActivationStats.load(run / "stats_culture.safetensors")
    return {"summary": summary, "languages": languages, "categories": cats, "nll": nll, "stats_culture": stats_c}


def heldout_texts(summary: Mapping[str, Any], per_group: int = 1) -> dict[str, str]:
    """A few held-out documents of the run's culture corpora (the split `run_experiment` used).

    Returns ``{"culture/{c}": text}``; empty when the corpora cannot be read on this machine.
    """
    from tl_culture.experiment.run import ExperimentConfig, split_all

    try:
        cfg = ExperimentConfig(**{**summary["config"], "progress": False})
        _, cultures = cfg.load_corpora()
        _, held = split_all(cultures, cfg.eval_fraction, cfg.seed)
    except (TLCultureError, KeyError, TypeError, OSError):
        return {}
    out = {}
    for name, corpus in held.items():
        for i, doc in enumerate((corpus.documents or [])[:per_group]):
            out[f"culture/{name}" + (f" #{i + 1}" if per_group > 1 else "")] = doc
    return out


# --------------------------------------------------------------------------- html pieces
def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(c if str(c).startswith("<td") else f"<td>{_e(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _figure(fig: Any, folder: Path) -> str:
    paths = fig.save(folder)
    svg = paths[1].read_text(encoding="utf-8")  # rendered once, for the file and the page
    fig.fig.clf()
    return f'<figure id="fig-{_e(fig.name)}">{svg}<figcaption>{_e(fig.caption)} ' \
           f'<span class="muted">(figures/{_e(fig.name)}.png, .svg)</span></figcaption></figure>'


def _fmt_config(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={w}" for k, w in v.items()) if v else "—"
    return "—" if v is None else str(v)


def _mean_depth(ns: NeuronSet) -> float:
    """Mean relative depth (0 = first layer, 1 = last) of the union of a set's neurons."""
    per_layer = ns.union_mask().sum(dim=1).double()
    if per_layer.sum() == 0 or ns.n_layers < 2:
        return float("nan")
    depth = torch.arange(ns.n_layers, dtype=torch.float64) / (ns.n_layers - 1)
    return float((per_layer * depth).sum() / per_layer.sum())


def _cell(v: float, lim: float, diag: bool, ci: tuple[float, float] | None = None) -> str:
    """A Δ NLL table cell tinted like the heatmap (blue < 0 < red)."""
    if not np.isfinite(v):
        return "<td>—</td>"
    a = min(abs(v) / lim, 1.0) * 0.55 if lim > 0 else 0.0
    rgb = "214,96,77" if v > 0 else "67,147,195"
    ci_txt = f'<span class="ci">[{ci[0]:+.3f}, {ci[1]:+.3f}]</span>' if ci is not None and np.isfinite(ci).all() else ""
    cls = ' class="diag"' if diag else ""
    return f'<td{cls} style="background:rgba({rgb},{a:.2f})">{v:+.3f}{ci_txt}</td>'


def _nll_table(m: Any, pairs: Mapping[str, str]) -> str:
    from tl_culture.report.figures import diagonal_mask

    delta = np.asarray(m.delta, dtype=np.float64)
    diag = diagonal_mask(list(m.groups), list(m.evals), pairs)
    lim = float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 0.0
    lo, hi = getattr(m, "delta_ci_low", None), getattr(m, "delta_ci_high", None)
    ctrl = getattr(m, "control_delta", None)
    rows = [["baseline NLL"] + [f"{float(b):.3f}" for b in np.asarray(m.baseline)]]
    for i, g in enumerate(m.groups):
        cells = []
        for j in range(len(m.evals)):
            has_ci = lo is not None and hi is not None
            ci = (float(np.asarray(lo)[i, j]), float(np.asarray(hi)[i, j])) if has_ci else None
            cells.append(_cell(float(delta[i, j]), lim, bool(diag[i, j]), ci))
        rows.append([f"Δ {g}"] + cells)
    if ctrl is not None:
        ctrl = np.asarray(ctrl, dtype=np.float64)
        for i, g in enumerate(m.groups):
            rows.append([f"Δ random ~ {g}"] + [_cell(float(ctrl[i, j]), lim, False) for j in range(len(m.evals))])
    tokens = getattr(m, "tokens", None)
    if tokens is not None:
        rows.append(["eval tokens"] + [str(int(t)) for t in np.asarray(tokens)])
    return _table(["", *m.evals], rows, "nll")


def _diag_summary(m: Any, pairs: Mapping[str, str]) -> str | None:
    from tl_culture.report.figures import diagonal_mask

    delta = np.asarray(m.delta, dtype=np.float64)
    diag = diagonal_mask(list(m.groups), list(m.evals), pairs)
    if not diag.any() or diag.all():
        return None
    on, off = float(np.nanmean(delta[diag])), float(np.nanmean(delta[~diag]))
    text = f"mean Δ NLL on own text {on:+.3f} vs {off:+.3f} on other text"
    ctrl = getattr(m, "control_delta", None)
    if ctrl is not None:
        text += f" (random control on own text {float(np.nanmean(np.asarray(ctrl)[diag])):+.3f})"
    return text


# --------------------------------------------------------------------------- token views
def _top_neurons(cats: Mapping[str, NeuronSet], stats: Any, per_group: int = 1) -> list[tuple[int, int]]:
    """Per culture, its culture neuron with the largest ``P[c] − max_{c' ≠ c} P[c']`` (the most specific)."""
    culture = cats["culture"]
    out: list[tuple[int, int]] = []
    P = stats.probabilities if stats is not None and stats.groups == culture.groups else None
    for gi in range(len(culture.groups)):
        idx = torch.nonzero(culture.masks[gi])
        if len(idx) == 0:
            continue
        if P is not None and len(culture.groups) > 1:
            p = P[:, idx[:, 0], idx[:, 1]]  # [group, k]
            others = torch.cat([p[:gi], p[gi + 1:]]).max(dim=0).values
            order = torch.argsort(p[gi] - others, descending=True, stable=True)
            idx = idx[order]
        for layer, j in idx[:per_group].tolist():
            if (layer, j) not in out:
                out.append((layer, j))
    return out


def _token_section(model: Any, texts: Mapping[str, str], run: Mapping[str, Any], max_tokens: int) -> str:
    from tl_culture.report.html import views_html
    from tl_culture.report.tokens import colored_tokens_multi, topk_tokens

    cats = run["categories"]
    sets = {"language": cats["language"], "culture": cats["culture"]}
    views = []
    labels = [f"{k}:{g}" for k, ns in sets.items() for g in ns.groups]
    for name, text in texts.items():
        own = name.split("/")[-1].split(" #")[0]  # "culture/de" -> its own groups first (shown on load)
        first = [f"language:{own}", f"culture:{own}"] if f"culture:{own}" in labels else []
        order = first + [x for x in labels if x not in first]
        views.append((f"{name}: mean act_fn(gate) of each group's neurons",
                      colored_tokens_multi(model, text, sets, order, max_tokens=max_tokens)))
    chosen = _top_neurons(cats, run["stats_culture"])[:8]
    if chosen:
        views.append(("Top tokens of each culture's most specific neuron, per text",
                      topk_tokens(model, texts, chosen, k=6, max_tokens=max_tokens)))
    intro = (
        "<p>Each token is colored by the mean <code>act_fn(gate)</code> of a group's selected neurons at that "
        "token; pick the group with the buttons (<code>language:c</code> = the language neurons paired with "
        "culture c, <code>culture:c</code> = its culture neurons). Texts are held-out documents; at most "
        f"{max_tokens} tokens each.</p>"
    )
    return intro + views_html(views)


# --------------------------------------------------------------------------- report
def write_report(
    run_dir: str | os.PathLike,
    model: Any = None,
    texts: Mapping[str, str] | Sequence[str] | None = None,
    *,
    max_tokens: int = 48,
    title: str | None = None,
) -> Path:
    """Write ``{run_dir}/report.html`` (and ``{run_dir}/figures/*.png|svg``).

    Args:
        run_dir: a run folder of `run_experiment` (summary.json, neurons/, optional nll/).
        model: a TransformerLens model; when given, the report has circuitsvis token views.
        texts: texts for the token views (``{name: text}`` or a list); default a held-out
            document per culture.
        max_tokens: tokens shown per text.
        title: page title; default from the model name.

    Returns:
        The path of ``report.html``.
    """
    from tl_culture.report.figures import plot_category_counts, plot_delta_nll, plot_layer_distribution, plot_overlap
    from tl_culture.report.html import external_references, page

    run_path = Path(run_dir)
    run = load_run(run_path)
    summary, languages, cats = run["summary"], run["languages"], run["categories"]
    pairs = dict(summary.get("pairs") or {})
    figdir = run_path / "figures"
    model_name = summary.get("model") or summary.get("config", {}).get("model", "?")
    title = title or f"Culture neurons of {model_name}"
    # run_experiment writes the report in a temporary folder before moving it to config.out
    run_name = Path(summary.get("config", {}).get("out") or run_path.resolve()).name
    culture = cats["culture"]

    # ---- overview
    depth_l, depth_c = _mean_depth(languages), _mean_depth(culture)
    jac = culture.jaccard(cats["language"])
    same = [float(jac[i, i]) for i in range(len(culture.groups))]
    tok_l, tok_c = summary.get("tokens_language", {}), summary.get("tokens_culture", {})
    cards = [
        (f"{summary.get('n_layers', languages.n_layers)} × {summary.get('d_mlp', languages.d_mlp)}",
         "layers × MLP neurons"),
        (languages.count(), "language neurons (union)"),
        (culture.count(), "culture neurons (union)"),
        (cats["generic"].count(), "generic culture neurons"),
        (f"{sum(tok_l.values()) + sum(tok_c.values()):,}", "tokens counted"),
    ]
    findings = [
        f"Mean relative depth of the selected neurons (0 = first layer, 1 = last): language {depth_l:.2f}, "
        f"culture {depth_c:.2f}.",
        "Jaccard overlap of each culture's neurons with its language's neurons: "
        + ", ".join(f"{g} {v:.2f}" for g, v in zip(culture.groups, same, strict=True)) + ".",
    ]
    for kind, per_group in (summary.get("stability") or {}).items():
        if per_group:
            findings.append(
                f"Split-half stability of the {kind} sets (Jaccard of the sets selected on two disjoint halves): "
                + ", ".join(f"{g} {v:.2f}" for g, v in per_group.items()) + "."
            )
    for cat, m in run["nll"].items():
        s = _diag_summary(m, pairs)
        if s:
            findings.append(f"Ablating {cat} neurons: {s}.")
    toc = "".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in SECTIONS.items())
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">tl-culture report of <code>{_e(run_name)}</code> · written '
        f'{time.strftime("%Y-%m-%d %H:%M")} · LAPE (Tang et al. 2024) and culture neurons (Namazifard &amp; '
        "Galke Poech 2025)</p>",
        f'<nav class="toc">{toc}</nav>',
        '<h2 id="overview" class="first">Overview</h2>',
        '<div class="cards">' + "".join(f"<div class=card><b>{_e(v)}</b><span>{_e(k)}</span></div>" for v, k in cards)
        + "</div>",
        "<ul>" + "".join(f"<li>{_e(f)}</li>" for f in findings) + "</ul>",
    ]

    # ---- settings
    cfg = summary.get("config", {})
    keys = ["model", "seq_len", "batch_size", "max_tokens", "eval_fraction", "top_rate", "filter_rate",
            "activation_bar_ratio", "seed", "device", "dtype"]
    kv = [["model (loaded)", _e(model_name)]] + [[k, _fmt_config(cfg.get(k))] for k in keys if k in cfg]
    kv += [["languages", _fmt_config(cfg.get("languages")) if cfg.get("languages") else "demo corpus"],
           ["cultures", _fmt_config(cfg.get("cultures")) if cfg.get("cultures") else "demo corpus"],
           ["culture → language", _fmt_config(pairs)]]
    counted = summary.get("counted_with") or {}
    if counted.get("backend"):
        kv.append(["statistics counted with", _e(", ".join(f"{k} {v}" for k, v in counted.items() if v))])
    if "seconds" in summary:
        kv.append(["run time", f"{summary['seconds']} s"])
    groups = list(dict.fromkeys([*tok_l, *tok_c]))
    body += [
        '<h2 id="settings">Settings</h2>',
        _table(["setting", "value"], kv, "kv"),
        "<h3>Tokens counted per corpus</h3>",
        _table(["group", "language corpus", "culture corpus"],
               [[g, f"{tok_l.get(g, 0):,}", f"{tok_c.get(g, 0):,}"] for g in groups]),
    ]

    # ---- neurons
    rows = []
    for g in culture.groups:
        lang = pairs.get(g, g)
        rows.append([g, lang, languages.count(lang) if lang in languages.groups else "—",
                     *(cats[c].count(g) for c in ("culture", "compound", "pure"))])
    extra_lang = [g for g in languages.groups if g not in {pairs.get(c, c) for c in culture.groups}]
    rows += [["—", g, languages.count(g), "—", "—", "—"] for g in extra_lang]
    neurons_txt = (run_path / "neurons.txt").read_text(encoding="utf-8") if (run_path / "neurons.txt").is_file() else ""
    body += [
        '<h2 id="neurons">Neurons</h2>',
        "<p>LAPE selects the neurons whose activation probability is concentrated on few groups; a "
        "selected neuron belongs to every group where it fires often. Compound = language ∩ culture, "
        "pure = culture − language.</p>",
        _table(["culture", "language", "language neurons", "culture neurons", "compound", "pure"], rows),
        f"<p>Generic culture neurons (pure for every culture): <b>{cats['generic'].count()}</b>. "
        f"Language neurons shared by two or more languages: <b>{int(languages.shared_mask(2).sum())}</b> of "
        f"{languages.count()}; culture neurons shared by two or more cultures: "
        f"<b>{int(culture.shared_mask(2).sum())}</b> of {culture.count()}.</p>",
    ]
    if neurons_txt:
        body.append(f"<details><summary>Per layer band (neurons.txt)</summary><pre>{_e(neurons_txt)}</pre></details>")

    # ---- figures
    body += ['<h2 id="layers">Layers</h2>',
             _figure(plot_layer_distribution({"language neurons": languages, "culture neurons": culture}), figdir),
             _figure(plot_layer_distribution({"compound": cats["compound"], "pure": cats["pure"]},
                                             name="layers_categories"), figdir)]
    body += ['<h2 id="overlap">Overlap</h2>',
             _figure(plot_overlap(culture, languages, pairs=pairs, labels=("culture neurons", "language neurons"),
                                  name="overlap_culture_language", title="culture vs language"), figdir),
             '<div class="fig-row">'
             + _figure(plot_overlap(languages, name="overlap_language", title="language vs language"), figdir)
             + _figure(plot_overlap(culture, name="overlap_culture", title="culture vs culture"), figdir)
             + "</div>"]
    body += ['<h2 id="categories">Categories</h2>', _figure(plot_category_counts(cats), figdir)]

    # ---- Δ NLL
    body.append('<h2 id="nll">Δ NLL under ablation</h2>')
    if not run["nll"]:
        body.append('<p class="note">This run has no <code>nll/</code> folder: no ablation was evaluated. '
                    "Run the evaluation stage to add the Δ NLL matrices.</p>")
    for cat, m in run["nll"].items():
        body += [f"<h3>{_e(cat)} neurons</h3>",
                 _figure(plot_delta_nll(m, pairs=pairs, name=f"delta_nll_{cat}"), figdir),
                 _nll_table(m, pairs)]

    # ---- token views
    body.append('<h2 id="tokens">Token views</h2>')
    if model is None:
        body.append('<p class="note">Token views need a model: rerun with <code>tl-culture report RUN_DIR '
                    "--model default</code> (or <code>write_report(run_dir, model=...)</code>).</p>")
    else:
        if texts is None:
            chosen = heldout_texts(summary)
        elif isinstance(texts, Mapping):
            chosen = {str(k): str(v) for k, v in texts.items()}
        else:
            chosen = {f"text {i + 1}": str(t) for i, t in enumerate(texts)}
        if not chosen:
            body.append('<p class="note">No held-out text could be read (are the corpora on this machine?); '
                        "pass texts=... to show token views.</p>")
        else:
            body.append(_token_section(model, chosen, run, max_tokens))

    text = page(title, "\n".join(body))
    bad = external_references(text)
    if bad:
        raise TLCultureError(f"report would load {bad[0]} from the network; remove that reference")
    out = run_path / "report.html"
    write_text_atomic(out, text)
    return out
