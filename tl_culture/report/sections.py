"""The sections of the report, each a small function from a `ReportContext` to its HTML.

Every section gathers its numbers from the run folder's contents (`RunContents`) and renders its
template (``templates/{section}.html.j2``); figures are written to the run's ``figures/`` folder
as they are drawn and inlined as SVG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from markupsafe import Markup

from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.experiment.rundir import RunContents
from tl_culture.report.explorer import explorer_data, explorer_section
from tl_culture.report.figures import (
    Figure,
    diagonal_mask,
    plot_category_counts,
    plot_delta_nll,
    plot_layer_distribution,
    plot_overlap,
)
from tl_culture.report.html import render, views_html
from tl_culture.report.tokens import colored_tokens_multi, topk_tokens
from tl_culture.selection.neurons import NeuronSet

#: Settings of ``summary.json``'s config shown in the Settings table, in order.
SETTING_KEYS = ("model", "seq_len", "batch_size", "max_tokens", "eval_fraction", "top_rate", "filter_rate",
                "activation_bar_ratio", "seed", "device", "dtype")


@dataclass
class ReportContext:
    """What the sections read.

    Attributes:
        run: the run folder's contents.
        figures: the folder the figures are written to.
        model: a TransformerLens model for the token views, or None.
        texts: name -> text for the token views; None = the run's held-out samples.
        max_tokens: tokens shown per text.
    """

    run: RunContents
    figures: Path
    model: Any = None
    texts: dict[str, str] | None = None
    max_tokens: int = 48

    @property
    def pairs(self) -> dict[str, str]:
        return dict(self.run.summary.get("pairs") or {})

    @property
    def model_name(self) -> str:
        s = self.run.summary
        return s.get("model") or s.get("config", {}).get("model", "?")

    def figure(self, fig: Figure) -> dict[str, Any]:
        """Write ``fig`` as PNG and SVG into the figures folder; its name, inline SVG and caption."""
        paths = fig.save(self.figures)
        svg = paths[1].read_text(encoding="utf-8")  # rendered once, for the file and the page
        fig.fig.clf()
        return {"name": fig.name, "svg": Markup(svg), "caption": fig.caption}


# --------------------------------------------------------------------------- overview
def mean_depth(ns: NeuronSet) -> float:
    """Mean relative depth (0 = first layer, 1 = last) of the union of a set's neurons."""
    per_layer = ns.union_mask().sum(dim=1).double()
    if per_layer.sum() == 0 or ns.n_layers < 2:
        return float("nan")
    depth = torch.arange(ns.n_layers, dtype=torch.float64) / (ns.n_layers - 1)
    return float((per_layer * depth).sum() / per_layer.sum())


def overview(ctx: ReportContext) -> str:
    """Headline numbers (cards) and findings: depth, culture-language overlap, stability, Δ NLL."""
    summary, languages, cats = ctx.run.summary, ctx.run.languages, ctx.run.categories
    culture = cats["culture"]
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
        f"Mean relative depth of the selected neurons (0 = first layer, 1 = last): language "
        f"{mean_depth(languages):.2f}, culture {mean_depth(culture):.2f}.",
        "Jaccard overlap of each culture's neurons with its language's neurons: "
        + ", ".join(f"{g} {v:.2f}" for g, v in zip(culture.groups, same, strict=True)) + ".",
    ]
    for kind, per_group in (summary.get("stability") or {}).items():
        if per_group:
            findings.append(
                f"Split-half stability of the {kind} sets (Jaccard of the sets selected on two disjoint halves): "
                + ", ".join(f"{g} {v:.2f}" for g, v in per_group.items()) + "."
            )
    for cat, m in ctx.run.nll.items():
        s = own_text_summary(m, ctx.pairs)
        if s:
            findings.append(f"Ablating {cat} neurons: {s}.")
    return render("overview.html.j2", cards=cards, findings=findings)


# --------------------------------------------------------------------------- settings and neurons
def _fmt_config(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={w}" for k, w in v.items()) if v else "—"
    return "—" if v is None else str(v)


def settings(ctx: ReportContext) -> str:
    """The run's settings (``summary.json``'s config) and the tokens counted per corpus."""
    summary = ctx.run.summary
    cfg = summary.get("config", {})
    kv = [["model (loaded)", ctx.model_name]] + [[k, _fmt_config(cfg.get(k))] for k in SETTING_KEYS if k in cfg]
    kv += [["languages", _fmt_config(cfg.get("languages")) if cfg.get("languages") else "demo corpus"],
           ["cultures", _fmt_config(cfg.get("cultures")) if cfg.get("cultures") else "demo corpus"],
           ["culture → language", _fmt_config(ctx.pairs)]]
    counted = summary.get("counted_with") or {}
    if counted.get("backend"):
        kv.append(["statistics counted with", ", ".join(f"{k} {v}" for k, v in counted.items() if v)])
    if "seconds" in summary:
        kv.append(["run time", f"{summary['seconds']} s"])
    tok_l, tok_c = summary.get("tokens_language", {}), summary.get("tokens_culture", {})
    groups = list(dict.fromkeys([*tok_l, *tok_c]))
    tokens = [[g, f"{tok_l.get(g, 0):,}", f"{tok_c.get(g, 0):,}"] for g in groups]
    return render("settings.html.j2", settings=kv, tokens=tokens)


def neurons(ctx: ReportContext) -> str:
    """Neurons per culture and category, generic and shared counts, and ``neurons.txt``."""
    languages, cats, pairs = ctx.run.languages, ctx.run.categories, ctx.pairs
    culture = cats["culture"]
    rows = []
    for g in culture.groups:
        lang = pairs.get(g, g)
        rows.append([g, lang, languages.count(lang) if lang in languages.groups else "—",
                     *(cats[c].count(g) for c in ("culture", "compound", "pure"))])
    paired = {pairs.get(c, c) for c in culture.groups}
    rows += [["—", g, languages.count(g), "—", "—", "—"] for g in languages.groups if g not in paired]
    return render(
        "neurons.html.j2", rows=rows, generic=cats["generic"].count(),
        shared_language=int(languages.shared_mask(2).sum()), n_language=languages.count(),
        shared_culture=int(culture.shared_mask(2).sum()), n_culture=culture.count(),
        neuron_table=ctx.run.neuron_table,
    )


# --------------------------------------------------------------------------- figures
def layers(ctx: ReportContext) -> str:
    """Neurons per layer: language and culture sets; compound and pure."""
    cats = ctx.run.categories
    rows = [[plot_layer_distribution({"language neurons": ctx.run.languages, "culture neurons": cats["culture"]})],
            [plot_layer_distribution({"compound": cats["compound"], "pure": cats["pure"]}, name="layers_categories")]]
    return render("figures.html.j2", rows=[[ctx.figure(f) for f in row] for row in rows])


def overlap(ctx: ReportContext) -> str:
    """Jaccard overlaps: culture vs language (pairs outlined), language vs language, culture vs culture."""
    languages, culture = ctx.run.languages, ctx.run.categories["culture"]
    rows = [[plot_overlap(culture, languages, pairs=ctx.pairs, labels=("culture neurons", "language neurons"),
                          name="overlap_culture_language", title="culture vs language")],
            [plot_overlap(languages, name="overlap_language", title="language vs language"),
             plot_overlap(culture, name="overlap_culture", title="culture vs culture")]]
    return render("figures.html.j2", rows=[[ctx.figure(f) for f in row] for row in rows])


def categories(ctx: ReportContext) -> str:
    """Language, culture, compound and pure neurons per culture; generic as a line."""
    return render("figures.html.j2", rows=[[ctx.figure(plot_category_counts(ctx.run.categories))]])


# --------------------------------------------------------------------------- Δ NLL
def _cell(v: float, lim: float, diag: bool, ci: tuple[float, float] | None = None) -> str | dict[str, Any]:
    """A Δ NLL table cell tinted like the heatmap (blue < 0 < red); ``"—"`` when not finite."""
    if not np.isfinite(v):
        return "—"
    a = min(abs(v) / lim, 1.0) * 0.55 if lim > 0 else 0.0
    rgb = "214,96,77" if v > 0 else "67,147,195"
    shown_ci = f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci is not None and np.isfinite(ci).all() else None
    return {"value": f"{v:+.3f}", "diag": diag, "background": f"rgba({rgb},{a:.2f})", "ci": shown_ci}


def nll_table(m: NLLMatrix, pairs: Mapping[str, str]) -> tuple[list[str], list[list[Any]]]:
    """(head, rows) of a Δ NLL table: baseline, Δ per group (with CIs), random controls, eval tokens."""
    delta = np.asarray(m.delta, dtype=np.float64)
    diag = diagonal_mask(list(m.groups), list(m.evals), pairs)
    lim = float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 0.0
    lo, hi = m.delta_ci_low, m.delta_ci_high
    has_ci = lo is not None and hi is not None
    rows: list[list[Any]] = [["baseline NLL"] + [f"{float(b):.3f}" for b in np.asarray(m.baseline)]]
    for i, g in enumerate(m.groups):
        cells = []
        for j in range(len(m.evals)):
            ci = (float(np.asarray(lo)[i, j]), float(np.asarray(hi)[i, j])) if has_ci else None
            cells.append(_cell(float(delta[i, j]), lim, bool(diag[i, j]), ci))
        rows.append([f"Δ {g}"] + cells)
    if m.control_delta is not None:
        ctrl = np.asarray(m.control_delta, dtype=np.float64)
        for i, g in enumerate(m.groups):
            rows.append([f"Δ random ~ {g}"] + [_cell(float(ctrl[i, j]), lim, False) for j in range(len(m.evals))])
    if m.tokens is not None:
        rows.append(["eval tokens"] + [str(int(t)) for t in np.asarray(m.tokens)])
    return ["", *m.evals], rows


def own_text_summary(m: NLLMatrix, pairs: Mapping[str, str]) -> str | None:
    """Mean Δ NLL on own vs other text, the control's on own text and how many own cells beat it (paired CI).

    None without both kinds of cell.
    """
    delta = np.asarray(m.delta, dtype=np.float64)
    diag = diagonal_mask(list(m.groups), list(m.evals), pairs)
    if not diag.any() or diag.all():
        return None
    on, off = float(np.nanmean(delta[diag])), float(np.nanmean(delta[~diag]))
    text = f"mean Δ NLL on own text {on:+.3f} vs {off:+.3f} on other text"
    if m.control_delta is not None:
        text += f" (random control on own text {float(np.nanmean(np.asarray(m.control_delta)[diag])):+.3f})"
    if m.paired_ci_low is not None:
        beats = int((np.asarray(m.paired_ci_low)[diag] > 0).sum())
        text += f"; beats the control (paired Δ − control CI above 0) in {beats} of {int(diag.sum())} own cells"
    return text


def nll(ctx: ReportContext) -> str:
    """Per category in ``nll/``: the Δ NLL figure and the table of every cell; a note without ``nll/``."""
    matrices = []
    for cat, m in ctx.run.nll.items():
        head, rows = nll_table(m, ctx.pairs)
        fig = ctx.figure(plot_delta_nll(m, pairs=ctx.pairs, name=f"delta_nll_{cat}"))
        matrices.append({"category": cat, "figure": fig, "head": head, "rows": rows})
    return render("nll.html.j2", matrices=matrices)


# --------------------------------------------------------------------------- steering
def _pct(rate: float | None, ci: Any = None, signed: bool = False) -> str:
    if rate is None:
        return "–"
    text = f"{rate:+.1%}" if signed else f"{rate:.1%}"
    if ci and None not in ci:
        text += f" [{ci[0]:+.1%}, {ci[1]:+.1%}]" if signed else f" [{ci[0]:.1%}, {ci[1]:.1%}]"
    return text


def steering(ctx: ReportContext) -> str:
    """The measured steering table (``steering/*.json``): baseline, steered and control rates per language."""
    evals = ctx.run.steering or {}
    head = ["target", "edit", "baseline", "steered", "random control", "steered − control"]
    rows, first = [], None
    for target, ev in evals.items():
        d = ev.to_dict()
        first = first or ev
        rows.append([target, ev.meta.get("intervention", ""), _pct(d.get("baseline_rate"), d.get("baseline_ci")),
                     _pct(d.get("steered_rate"), d.get("steered_ci")), _pct(d.get("control_rate"), d.get("control_ci")),
                     _pct(d.get("steered_minus_control"), d.get("steered_minus_control_ci"), signed=True)])
    if first is None:
        return render("steering.html.j2", rows=[])
    dec = first.meta.get("decoding", {})
    how = f"{'greedily' if first.modes[0] == 'greedy' else 'with sampling'} for {dec.get('max_new_tokens')} tokens"
    ident, meta = first.meta.get("identifier", {}), first.meta
    return render("steering.html.j2", head=head, rows=rows, n_prompts=first.n_prompts, how=how,
                  identifier=f"{ident.get('name', '?')} {ident.get('version') or ''}".strip(),
                  controls=f"{meta.get('controls', 0)} draw(s), {meta.get('control_excludes', '')} excluded")


# --------------------------------------------------------------------------- token views
def top_neurons(cats: Mapping[str, NeuronSet], stats: Any, per_group: int = 1) -> list[tuple[int, int]]:
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


def held_out_texts(run: RunContents) -> dict[str, str] | None:
    """The first held-out document of each culture, as ``{"culture/{c}": text}``; None without samples."""
    if run.samples is None:
        return None
    return {f"culture/{name}": docs[0] for name, docs in run.samples["cultures"].items() if docs}


def tokens(ctx: ReportContext) -> str:
    """circuitsvis views of each text (every group's neurons) and of each culture's most specific neuron."""
    texts = ctx.texts if ctx.texts is not None else held_out_texts(ctx.run)
    if ctx.model is None or not texts:
        missing = "model" if ctx.model is None else "samples" if texts is None else "texts"
        return render("tokens.html.j2", missing=missing)
    cats = ctx.run.categories
    sets = {"language": cats["language"], "culture": cats["culture"]}
    labels = [f"{k}:{g}" for k, ns in sets.items() for g in ns.groups]
    views = []
    for name, text in texts.items():
        own = name.split("/")[-1].split(" #")[0]  # "culture/de" -> its own groups first (shown on load)
        first = [f"language:{own}", f"culture:{own}"] if f"culture:{own}" in labels else []
        order = first + [x for x in labels if x not in first]
        views.append((f"{name}: mean act_fn(gate) of each group's neurons",
                      colored_tokens_multi(ctx.model, text, sets, order, max_tokens=ctx.max_tokens)))
    chosen = top_neurons(cats, ctx.run.stats_culture)[:8]
    if chosen:
        views.append(("Top tokens of each culture's most specific neuron, per text",
                      topk_tokens(ctx.model, texts, chosen, k=6, max_tokens=ctx.max_tokens)))
    return render("tokens.html.j2", missing=None, views=Markup(views_html(views)), max_tokens=ctx.max_tokens,
                  held_out=ctx.texts is None)


# --------------------------------------------------------------------------- neuron explorer
def explorer(ctx: ReportContext) -> str:
    """The neuron explorer (`tl_culture.report.explorer`): every selected neuron, a panel per neuron.

    Its contexts are circuitsvis colored tokens when the token views (an earlier section) put
    circuitsvis' library on the page, else plain colored tokens.
    """
    run = ctx.run
    data = explorer_data(run.languages, run.categories, {"language": run.stats_language, "culture": run.stats_culture},
                         examples=run.examples, writes=run.writes, model=ctx.model_name)
    texts = ctx.texts if ctx.texts is not None else held_out_texts(run)
    return explorer_section(data, heading=False, circuitsvis=ctx.model is not None and bool(texts))


# --------------------------------------------------------------------------- the list
@dataclass(frozen=True)
class Section:
    """One section of the report: its anchor, table-of-contents label, heading and renderer."""

    key: str
    label: str
    heading: str
    render: Callable[[ReportContext], str]


REPORT_SECTIONS = (
    Section("overview", "Overview", "Overview", overview),
    Section("settings", "Settings", "Settings", settings),
    Section("neurons", "Neurons", "Neurons", neurons),
    Section("layers", "Layers", "Layers", layers),
    Section("overlap", "Overlap", "Overlap", overlap),
    Section("categories", "Categories", "Categories", categories),
    Section("nll", "Δ NLL", "Δ NLL under ablation", nll),
    Section("steering", "Steering", "Measured steering", steering),
    Section("tokens", "Token views", "Token views", tokens),
    Section("explorer", "Explorer", "Neuron explorer", explorer),
)
