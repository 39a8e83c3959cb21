"""Figures of a culture-neuron run (matplotlib, no pyplot, PNG and SVG).

Every ``plot_*`` function takes result objects (`NeuronSet`, `NLLMatrix`) and returns a `Figure`
whose ``data`` holds exactly the numbers drawn, so tests (and users) can check them:

- `plot_layer_distribution`: ``counts[group, layer] = Σ_j masks[group, layer, j]`` per neuron set.
- `plot_overlap`: ``J[a, b] = |A ∩ B| / |A ∪ B|`` between the groups of one or two neuron sets.
- `plot_category_counts`: ``|language_c|, |culture_c|, |compound_c|, |pure_c|`` per culture c,
  and ``|generic|``.
- `plot_delta_nll`: ``Δ[g, e] = NLL_ablated[g, e] − NLL_baseline[e]`` with the diagonal cells
  (a group's own text) outlined, the random-neuron control as an extra row
  ``control_row[e] = mean_g control_delta[g, e]`` over the groups with a control on e (none:
  blank; `tl_culture.evaluation.delta.delta_nll`'s ``control_cells``), and the diagonal cells' Δ against their
  control with 95 % CI error bars where the matrix has them.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_culture._io import atomic_path
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.heldout import is_own_text
from tl_culture.selection.neurons import NeuronSet

#: Okabe-Ito colour-blind-safe palette (then tab10 for more groups).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
CATEGORY_COLORS = {"language": "#0072B2", "culture": "#E69F00", "compound": "#009E73", "pure": "#CC79A7"}


def _mpl_figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure as MplFigure
    except ImportError:
        raise TLCultureError("figures need matplotlib: pip install 'tl-culture[viz]'") from None
    fig = MplFigure(figsize=(width, height), layout="constrained")
    return fig


def _color(i: int) -> str:
    if i < len(PALETTE):
        return PALETTE[i]
    from matplotlib import colormaps

    r, g, b, _ = colormaps["tab10"]((i - len(PALETTE)) % 10)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=9)


@dataclass
class Figure:
    """A matplotlib figure with the numbers it shows.

    Attributes:
        name: file stem (``layers``, ``overlap_language``, ...).
        fig: the `matplotlib.figure.Figure`.
        data: the plotted numbers (numpy arrays, lists of labels).
        caption: one or two sentences saying what is shown.
    """

    name: str
    fig: Any
    data: dict[str, Any] = field(default_factory=dict)
    caption: str = ""

    def png(self, dpi: int = 150) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
        return buf.getvalue()

    def svg(self) -> str:
        """The figure as an ``<svg>`` element for inline HTML (no XML prolog or DOCTYPE)."""
        buf = io.StringIO()
        self.fig.savefig(buf, format="svg", facecolor="white", metadata={"Date": None})
        text = buf.getvalue()
        text = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", text)
        text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
        return text

    def save(self, folder: str | os.PathLike, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
        """Write ``{folder}/{name}.{png,svg}`` atomically; returns the paths."""
        out = []
        for fmt in formats:
            path = Path(folder) / f"{self.name}.{fmt}"
            with atomic_path(path) as tmp:
                if fmt == "png":
                    tmp.write_bytes(self.png())
                elif fmt == "svg":
                    tmp.write_text(self.svg(), encoding="utf-8")
                else:
                    raise TLCultureError(f"unknown figure format {fmt!r}; use png or svg")
            out.append(path)
        return out


# --------------------------------------------------------------------------- layer distribution
def plot_layer_distribution(
    sets: NeuronSet | Mapping[str, NeuronSet], *, share: bool = False, name: str = "layers"
) -> Figure:
    """Neurons per layer for every group (the papers' layer-distribution figure), one panel per set.

    Args:
        sets: a `NeuronSet` or ``{panel title: NeuronSet}`` (e.g. language and culture).
        share: plot each group's share of its neurons (%) instead of counts.
        name: file stem.

    Returns:
        `Figure`; ``data["counts"][panel]`` is ``int[group, layer]`` (or float % with ``share``),
        ``data["groups"][panel]`` the group names, ``data["layers"]`` the layer indices.
    """
    sets = {"neurons": sets} if isinstance(sets, NeuronSet) else dict(sets)
    if not sets:
        raise TLCultureError("plot_layer_distribution needs at least one neuron set")
    n_layers = next(iter(sets.values())).n_layers
    fig = _mpl_figure(min(5.4 * len(sets), 14), 3.6)
    axes = fig.subplots(1, len(sets), sharey=not share, squeeze=False)[0]
    layers = np.arange(n_layers)
    data: dict[str, Any] = {"layers": layers, "counts": {}, "groups": {}, "share": share}
    for ax, (title, ns) in zip(axes, sets.items(), strict=True):
        counts = ns.layer_histogram().numpy()
        if share:
            tot = counts.sum(axis=1, keepdims=True)
            counts = np.where(tot > 0, 100.0 * counts / np.maximum(tot, 1), 0.0)
        data["counts"][title], data["groups"][title] = counts, list(ns.groups)
        for gi, g in enumerate(ns.groups):
            total = int(ns.masks[gi].sum())
            ax.plot(layers, counts[gi], marker="o", ms=3.5, lw=1.6, color=_color(gi), label=f"{g} ({total})")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("layer")
        ax.set_xticks(layers if n_layers <= 24 else layers[:: max(1, n_layers // 12)])
        ax.grid(axis="y", alpha=0.3)
        _style(ax)
        ax.legend(fontsize=8, frameon=False, ncol=2 if len(ns.groups) > 4 else 1)
    axes[0].set_ylabel("share of the group's neurons (%)" if share else "selected neurons")
    what = "share of each group's neurons" if share else "number of selected neurons"
    return Figure(name, fig, data, f"The {what} in each layer, per group (legend: total neurons).")


# --------------------------------------------------------------------------- overlap
def diagonal_mask(
    rows: Sequence[str], cols: Sequence[str], pairs: Mapping[str, str] | None = None
) -> np.ndarray:
    """``bool[row, col]``: True where column ``col`` is row ``row``'s own text (`is_own_text`)."""
    out = np.zeros((len(rows), len(cols)), dtype=bool)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            out[i, j] = is_own_text(r, c, pairs)
    return out


def _heatmap(ax, values: np.ndarray, rows, cols, *, cmap, vmin, vmax, fmt, marked=None, text_size=8.5):
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=40 if max(map(len, cols), default=0) > 3 else 0, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.tick_params(labelsize=9, length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    cmap_obj = im.cmap
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            r, g, b, _ = cmap_obj(im.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=text_size,
                    color="white" if dark else "#1f2328")
    if marked is not None:
        from matplotlib.patches import Rectangle

        for i, j in zip(*np.nonzero(marked), strict=True):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=2.0))
    return im


def plot_overlap(
    a: NeuronSet,
    b: NeuronSet | None = None,
    *,
    pairs: Mapping[str, str] | None = None,
    labels: tuple[str, str] = ("", ""),
    name: str = "overlap",
    title: str | None = None,
) -> Figure:
    """Jaccard overlap ``|A ∩ B| / |A ∪ B|`` between the groups of ``a`` (rows) and ``b`` (columns).

    Args:
        a: row neuron set.
        b: column neuron set; default ``a`` itself (then the trivial diagonal is left blank).
        pairs: row name -> its column name, to outline paired cells (e.g. culture -> language);
            default: cells whose names match are outlined.
        labels: axis titles (rows, columns).
        name: file stem.
        title: panel title.

    Returns:
        `Figure` with ``data["jaccard"]`` (``float[row, col]``), ``data["rows"]``, ``data["cols"]``,
        ``data["marked"]`` (``bool[row, col]``).
    """
    same = b is None
    b = a if b is None else b
    a._check_shape(b)
    jac = a.jaccard(b).double().numpy()
    marked = diagonal_mask(a.groups, b.groups, pairs)
    shown = jac.copy()
    if same:
        np.fill_diagonal(shown, np.nan)
    finite = shown[np.isfinite(shown)]
    vmax = max(float(finite.max()) if finite.size else 0.0, 0.05)
    n = max(len(a.groups), len(b.groups))
    fig = _mpl_figure(1.2 + 0.62 * len(b.groups) + 1.0, 1.0 + 0.5 * len(a.groups))
    ax = fig.subplots()
    rows = [f"{g} ({int(c)})" for g, c in a.counts().items()]
    cols = [f"{g} ({int(c)})" for g, c in b.counts().items()]
    im = _heatmap(ax, shown, rows, cols, cmap="Blues", vmin=0.0, vmax=vmax, fmt=".2f",
                  marked=None if same else marked, text_size=8.5 if n <= 8 else 6.5)
    fig.colorbar(im, ax=ax, shrink=0.85, label="Jaccard")
    ax.set_ylabel(labels[0])
    ax.set_xlabel(labels[1])
    if title:
        ax.set_title(title, fontsize=11)
    data = {"jaccard": jac, "rows": list(a.groups), "cols": list(b.groups), "marked": marked}
    cap = "Jaccard overlap between the groups' neuron sets (counts in brackets)."
    if not same:
        cap += " Outlined: each row's paired group."
    return Figure(name, fig, data, cap)


# --------------------------------------------------------------------------- categories
def plot_category_counts(categories: Mapping[str, NeuronSet], *, name: str = "categories") -> Figure:
    """Neurons per category per culture: language, culture, compound (∩), pure (−); generic as a line.

    Args:
        categories: `culture_categories` output (keys language, culture, compound, pure, generic).
        name: file stem.

    Returns:
        `Figure` with ``data["counts"]`` (``int[culture, category]``), ``data["groups"]``,
        ``data["categories"]`` and ``data["generic"]`` (int).
    """
    cats = [c for c in ("language", "culture", "compound", "pure") if c in categories]
    if "culture" not in categories:
        raise TLCultureError(f"category counts need the culture category; got {', '.join(categories)}")
    groups = list(categories["culture"].groups)
    counts = np.array([[categories[c].count(g) for c in cats] for g in groups], dtype=np.int64)
    generic = categories["generic"].count() if "generic" in categories else None
    fig = _mpl_figure(max(5.5, 1.1 * len(groups) + 2), 3.6)
    ax = fig.subplots()
    x = np.arange(len(groups))
    w = 0.8 / len(cats)
    for ci, c in enumerate(cats):
        bars = ax.bar(x + (ci - (len(cats) - 1) / 2) * w, counts[:, ci], w, label=c,
                      color=CATEGORY_COLORS.get(c, _color(ci)))
        ax.bar_label(bars, fontsize=7, padding=1)
    if generic is not None:
        ax.axhline(generic, color="#444", ls="--", lw=1.2, label=f"generic (∩ pure) = {generic}")
    ax.set_xticks(x, groups)
    ax.set_ylabel("neurons")
    ax.grid(axis="y", alpha=0.3)
    _style(ax)
    ax.legend(fontsize=8, frameon=False, ncol=len(cats) + 1, loc="upper center", bbox_to_anchor=(0.5, 1.13))
    data = {"counts": counts, "groups": groups, "categories": cats, "generic": generic}
    return Figure(name, fig, data, "Neurons per category and culture: compound = language ∩ culture, "
                  "pure = culture − language; generic = neurons pure for every culture.")


# --------------------------------------------------------------------------- Δ NLL
def _opt(m: Any, attr: str) -> np.ndarray | None:
    v = getattr(m, attr, None)
    return None if v is None else np.asarray(v, dtype=np.float64)


def plot_delta_nll(
    m: Any, *, pairs: Mapping[str, str] | None = None, name: str = "delta_nll", title: str | None = None
) -> Figure:
    """Δ NLL heatmap (rows: ablated groups, columns: eval corpora), diagonal outlined, control row.

    Args:
        m: an `NLLMatrix` (groups, evals, baseline, ablated, delta; optional delta_ci_low/high,
            control_delta, control_ci_low/high).
        pairs: group -> its language, for marking the diagonal (see `diagonal_mask`).
        name: file stem.
        title: figure title.

    Returns:
        `Figure` with ``data["delta"]`` (``float[group, eval]``), ``data["diagonal"]``,
        ``data["control_row"]`` (``float[eval]`` or None) and ``data["bars"]``: per outlined cell
        (or per cell of a one-group matrix) ``labels``, ``delta``, ``ci_low``/``ci_high``,
        ``control``, ``control_ci_low``/``control_ci_high`` (arrays; None where absent).
    """
    groups, evals = list(m.groups), list(m.evals)
    delta = np.asarray(m.delta, dtype=np.float64)
    if delta.shape != (len(groups), len(evals)):
        raise TLCultureError(f"NLL matrix delta has shape {delta.shape}, expected ({len(groups)}, {len(evals)})")
    diag = diagonal_mask(groups, evals, pairs)
    ctrl = _opt(m, "control_delta")
    control_row = None
    if ctrl is not None:
        with warnings.catch_warnings():  # a column where no group has a control stays NaN (blank)
            warnings.simplefilter("ignore", RuntimeWarning)
            control_row = np.nanmean(ctrl, axis=0)
    bars = _own_text_bars(m, groups, evals, diag)
    shown = delta if control_row is None else np.vstack([delta, np.full((1, len(evals)), np.nan), control_row[None]])
    rows = groups if control_row is None else [*groups, "", "random (mean)"]
    lim = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
    lim = max(lim, 1e-3)
    small = len(evals) > 8
    n_bars = len(bars["labels"])
    heat_w = 1.6 + (0.55 if small else 0.75) * len(evals)
    bar_w = 1.2 + 0.42 * n_bars if n_bars else 0
    fig = _mpl_figure(min(heat_w + bar_w + 1.0, 16), 1.4 + 0.42 * len(rows) + (0.5 if small else 0))
    axes = fig.subplots(1, 2 if n_bars else 1, squeeze=False, width_ratios=[heat_w, bar_w] if n_bars else None)[0]
    ax = axes[0]
    marked = np.vstack([diag, np.zeros((len(rows) - len(groups), len(evals)), bool)])
    im = _heatmap(ax, shown, rows, evals, cmap="RdBu_r", vmin=-lim, vmax=lim, fmt=".2f" if lim >= 0.1 else ".3f",
                  marked=marked, text_size=7 if small else 8.5)
    fig.colorbar(im, ax=ax, shrink=0.85, label="Δ NLL (nats/token)")
    ax.set_ylabel("ablated neurons")
    ax.set_xlabel("evaluated on")
    if n_bars:
        _draw_bars(axes[1], bars, "Δ NLL on own text" if diag.any() else "Δ NLL")
    if title:
        fig.suptitle(title, fontsize=12)
    data = {"groups": groups, "evals": evals, "delta": delta, "diagonal": diag, "control_row": control_row,
            "bars": bars}
    cap = ("Δ NLL = NLL with the row's neurons ablated − baseline NLL (nats/token); outlined: the group's own "
           "text.")
    if control_row is not None:
        cap += " Last row: ablating random neurons with the same per-layer counts (mean over groups)."
    if _opt(m, "delta_ci_low") is not None:
        cap += " Error bars: bootstrap 95 % CI."
    return Figure(name, fig, data, cap)


def _own_text_bars(m: Any, groups: list[str], evals: list[str], diag: np.ndarray) -> dict[str, Any]:
    """The bar panel's numbers: per outlined cell (every cell of a one-group matrix), Δ, control and CIs."""
    cells = list(zip(*np.nonzero(diag), strict=True)) if diag.any() else (
        [(0, j) for j in range(len(evals))] if len(groups) == 1 else [])

    def pick(attr: str) -> np.ndarray | None:
        a = _opt(m, attr)
        return None if a is None else np.array([a[i, j] for i, j in cells])

    return {
        "labels": [f"{groups[i]} → {evals[j]}" if len(groups) > 1 else evals[j] for i, j in cells],
        "delta": pick("delta"), "ci_low": pick("delta_ci_low"), "ci_high": pick("delta_ci_high"),
        "control": pick("control_delta"), "control_ci_low": pick("control_ci_low"),
        "control_ci_high": pick("control_ci_high"),
    }


def _draw_bars(bx, bars: dict[str, Any], ylabel: str) -> None:
    """Ablated Δ next to its random control, with CI error bars where there are CIs."""
    x = np.arange(len(bars["labels"]))
    w = 0.38 if bars["control"] is not None else 0.7

    def err(v, a, b):
        if a is None or b is None:
            return None
        return np.vstack([np.clip(v - a, 0, None), np.clip(b - v, 0, None)])

    bx.bar(x - (w / 2 if bars["control"] is not None else 0), bars["delta"], w, color="#0072B2",
           label="ablated", yerr=err(bars["delta"], bars["ci_low"], bars["ci_high"]), capsize=2.5,
           error_kw={"lw": 1})
    if bars["control"] is not None:
        bx.bar(x + w / 2, bars["control"], w, color="#BBBBBB", label="random control",
               yerr=err(bars["control"], bars["control_ci_low"], bars["control_ci_high"]), capsize=2.5,
               error_kw={"lw": 1})
    bx.axhline(0, color="#444", lw=0.8)
    bx.set_xticks(x, bars["labels"], rotation=60, ha="right", fontsize=7.5)
    bx.set_ylabel(ylabel)
    bx.grid(axis="y", alpha=0.3)
    _style(bx)
    bx.legend(fontsize=7.5, frameon=False)
