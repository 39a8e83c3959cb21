"""The neuron explorer: every selected neuron in one sortable table, and a panel per neuron.

The table lists the union of a run's language and culture neurons: layer, index, the groups each
was selected for, its culture categories (compound / pure per culture, language-only, generic),
its LAPE entropy over the languages and over the cultures, and its activation probability P per
group as small bars. Opening a neuron (a click, or the URL fragment ``#L12.345``) shows its panel:
P per group as a bar chart, the tokens it promotes and suppresses through the direct path
(`tl_culture.explore.writes.NeuronWrites`) and its top contexts per group
(`tl_culture.explore.examples.NeuronExamples`) as circuitsvis colored tokens.

The data is embedded once as JSON and drawn by ``templates/explorer.js``: the table renders 200
rows at a time, a panel only when opened. To keep a 7B-size selection (thousands of neurons) small,
each context stores its row and position in a per-group table of token texts (windows of the same
row share it) and its per-token activations as one character each: 64 levels from
``-ZERO / SCALE`` to ``(63 - ZERO) / SCALE`` of the neuron's largest shown activation (the
activation of each context is kept to four significant digits).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from markupsafe import Markup

from tl_culture._io import write_text_atomic
from tl_culture.counting.stats import ActivationStats
from tl_culture.errors import TLCultureError
from tl_culture.experiment.rundir import STATS_KINDS, RunDir
from tl_culture.explore.examples import NeuronExamples
from tl_culture.explore.writes import NeuronWrites
from tl_culture.report.html import circuitsvis_library, external_references, page, render
from tl_culture.selection.lape import lape_entropy
from tl_culture.selection.neurons import NeuronSet

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: Level of activation 0 and of the neuron's largest shown activation in the one-character code.
ZERO, SCALE = 8, 55
#: The code of a window slot outside its row's tokens.
OUTSIDE = "~"
#: How the explorer draws a context with circuitsvis (put on a page that holds the library).
CIRCUITSVIS_ADAPTER = (
    "<script>window.tlxDrawTokens = function (id, props) "
    "{ CircuitsVis.render(id, CircuitsVis.ColoredTokens, props); };</script>"
)
#: Contexts per neuron and group the explorer shows by default.
CONTEXTS = 5


def _asset(name: str) -> str:
    return (files("tl_culture.report") / "templates" / name).read_text(encoding="utf-8")


def _categories(i_layer: int, i_neuron: int, categories: Mapping[str, NeuronSet], in_language: bool) -> list[str]:
    """The category tags of one neuron: ``compound:{culture}``, ``pure:{culture}``, ``generic``, ``language-only``."""
    tags = []
    for name in ("compound", "pure"):
        ns = categories.get(name)
        if ns is not None:
            tags += [f"{name}:{g}" for g, m in zip(ns.groups, ns.masks[:, i_layer, i_neuron].tolist()) if m]
    generic = categories.get("generic")
    if generic is not None and bool(generic.masks[:, i_layer, i_neuron].any()):
        tags.append("generic")
    culture = categories.get("culture")
    if in_language and (culture is None or not bool(culture.masks[:, i_layer, i_neuron].any())):
        tags.append("language-only")
    return tags


def _table(
    languages: NeuronSet, categories: Mapping[str, NeuronSet], stats: Mapping[str, ActivationStats | None]
) -> tuple[dict[str, Any], list[str], list[str], torch.Tensor]:
    """``(columns of the neuron table, P groups, their kinds, int64[n, 2] (layer, neuron) pairs)``."""
    culture = categories["culture"]
    union = languages.union_mask() | culture.union_mask()
    pairs = union.nonzero()
    groups, kinds, p_cols, names, member = [], [], [], [], []
    entropy = {}
    for kind, prefix, ns in (("language", "lang", languages), ("culture", "cult", culture)):
        s = stats.get(kind)
        if s is not None:
            P = s.probabilities.float()
            groups += [f"{prefix}:{g}" for g in s.groups]
            kinds += [kind] * len(s.groups)
            p_cols.append(P[:, pairs[:, 0], pairs[:, 1]].T)  # [n, group]
            entropy[kind] = lape_entropy(P)[pairs[:, 0], pairs[:, 1]]
        names += [f"{prefix}:{g}" for g in ns.groups]
        member.append(ns.masks[:, pairs[:, 0], pairs[:, 1]].T)  # [n, group]
    P = torch.cat(p_cols, 1) if p_cols else torch.zeros(len(pairs), 0)
    in_lang = languages.union_mask()
    columns = {
        "L": pairs[:, 0].tolist(), "N": pairs[:, 1].tolist(),
        "member": [[names[g] for g in row.nonzero().flatten().tolist()] for row in torch.cat(member, 1)],
        "cat": [_categories(layer, j, categories, bool(in_lang[layer, j])) for layer, j in pairs.tolist()],
        "hl": _rounded(entropy.get("language"), len(pairs)), "hc": _rounded(entropy.get("culture"), len(pairs)),
        "p": [[round(x, 4) for x in row] for row in P.tolist()],
    }
    return columns, groups, kinds, pairs


def _rounded(values: torch.Tensor | None, n: int) -> list[float | None]:
    return [None] * n if values is None else [round(float(v), 4) for v in values]


class _Strings:
    """A table of token texts, each stored once."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        return self.index.setdefault(text, len(self.index))


def _contexts(examples: NeuronExamples, pairs: torch.Tensor, contexts: int, strings: _Strings) -> dict[str, Any]:
    """The explorer's context data of the neurons in ``pairs`` (see the module docstring)."""
    c, w = min(contexts, examples.k), examples.window
    where = [examples.index(layer, j) if (layer, j) in examples else -1 for layer, j in pairs.tolist()]
    sel = torch.tensor([i for i in where if i >= 0], dtype=torch.long)
    act = examples.activation[sel, :, :c]  # [m, group, c]
    filled = torch.isfinite(act)
    top = act.masked_fill(~filled, 0.0).amax(dim=(1, 2)) if len(sel) else torch.zeros(0)
    scale = torch.where(top > 0, top, torch.ones_like(top))
    ids = examples.token_ids[sel, :, :c].masked_fill(~filled[..., None], -1)
    codes = _codes(examples.values[sel, :, :c], ids, scale)
    spans = _spans(examples, sel, c, ids, strings)
    rows, pos = examples.row[sel, :, :c].tolist(), examples.pos[sel, :, :c].tolist()
    values, counts = act.tolist(), filled.sum(-1).tolist()
    ctx: list[Any] = []
    k_of = iter(range(len(sel)))
    for i in where:
        if i < 0:
            ctx.append(None)
            continue
        m = next(k_of)
        ctx.append([[[rows[m][g][r], pos[m][g][r], float(f"{values[m][g][r]:.4g}"), codes[m][g][r]]
                     for r in range(counts[m][g])] for g in range(len(examples.groups))])
    vmax = iter(scale.tolist())
    return {"groups": list(examples.groups), "k": examples.k, "window": w, "shown": c,
            "scanned": examples.tokens_scanned.tolist(), "spans": spans,
            "ctx": ctx, "vmax": [None if i < 0 else next(vmax) for i in where],
            "zero": ZERO, "scale": SCALE, "outside": OUTSIDE}


def _codes(values: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor) -> list:
    """One character per window slot (`ALPHABET` level, or `OUTSIDE`), a string per context: ``[m][group][c]``."""
    import numpy as np

    lev = (values / scale[:, None, None, None] * SCALE).round().long().add(ZERO).clamp(0, 63)
    lev = lev.masked_fill(ids < 0, 64)
    chars = np.array(list(ALPHABET + OUTSIDE))[lev.numpy()]  # [..., w] of one-character strings
    width = int(ids.shape[-1])
    return chars.view(f"<U{width}")[..., 0].tolist() if width else chars[..., 0].tolist()


def _spans(examples: NeuronExamples, sel: torch.Tensor, c: int, ids: torch.Tensor, strings: _Strings) -> list:
    """Per group, per row: ``[first position, [text index per position, -1 where no window reaches]]``."""
    w, G = examples.window, len(examples.groups)
    valid = ids >= 0
    at = (examples.pos[sel, :, :c, None] + torch.arange(-w, w + 1))[valid]
    row = examples.row[sel, :, :c, None].expand_as(ids)[valid]
    group = torch.arange(G)[None, :, None, None].expand_as(ids)[valid]
    text = examples.token_text[sel, :, :c][valid]
    out: list[dict[str, list[Any]]] = [{} for _ in range(G)]
    if not len(at):
        return out
    n_row, n_pos = int(row.max()) + 1, int(at.max()) + 1
    keys, inverse = torch.unique((group * n_row + row) * n_pos + at, return_inverse=True)  # sorted
    first_text = torch.empty(len(keys), dtype=torch.long).scatter_(0, inverse, text)
    used = torch.unique(first_text)
    lut = torch.full((int(used.max()) + 1,), -1, dtype=torch.long)
    lut[used] = torch.tensor([strings(examples.strings[t]) for t in used.tolist()], dtype=torch.long)
    cells, run = lut[first_text], keys // n_pos
    starts = torch.cat([torch.tensor([0]), (run[1:] != run[:-1]).nonzero().flatten() + 1, torch.tensor([len(run)])])
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        g, r = divmod(int(run[a]), n_row)
        p = keys[a:b] % n_pos
        first = int(p[0])
        line = torch.full((int(p[-1]) - first + 1,), -1, dtype=torch.long)
        line[p - first] = cells[a:b]
        out[g][str(r)] = [first, line.tolist()]
    return out


def _writes(writes: NeuronWrites, pairs: torch.Tensor, strings: _Strings) -> dict[str, Any]:
    """Promoted and suppressed tokens of the neurons in ``pairs`` (None for those without)."""
    top, bottom = [], []
    for layer, j in pairs.tolist():
        if (layer, j) not in writes:
            top.append(None)
            bottom.append(None)
            continue
        top.append([[strings(t), float(f"{v:.3g}")] for t, v in writes.promoted(layer, j)])
        bottom.append([[strings(t), float(f"{v:.3g}")] for t, v in writes.suppressed(layer, j)])
    return {"top": top, "bottom": bottom, "approximation": writes.meta.get("approximation", "")}


def explorer_data(
    languages: NeuronSet,
    categories: Mapping[str, NeuronSet],
    stats: Mapping[str, ActivationStats | None],
    *,
    examples: NeuronExamples | None = None,
    writes: NeuronWrites | None = None,
    contexts: int = CONTEXTS,
    model: str = "",
) -> dict[str, Any]:
    """Everything the explorer shows, as JSON-able data.

    Args:
        languages: the LAPE language neurons.
        categories: the culture categories (``culture``, ``compound``, ``pure``, ``generic``, ...).
        stats: ``{"language": ActivationStats | None, "culture": ActivationStats | None}``: P per group.
        examples: top contexts (None: the panels say none were computed).
        writes: direct effects (None: the panels say none were computed).
        contexts: contexts shown per neuron and group (at most the examples' k).
        model: the model's name, for the heading.
    """
    if "culture" not in categories:
        raise TLCultureError("the explorer needs the culture neurons (categories['culture'])")
    columns, groups, kinds, pairs = _table(languages, categories, stats)
    strings = _Strings()
    return {
        "model": model, "groups": groups, "kinds": kinds, "neurons": columns,
        "categories": ["compound", "pure", "language-only", "generic"],
        "examples": None if examples is None else _contexts(examples, pairs, contexts, strings),
        "writes": None if writes is None else _writes(writes, pairs, strings),
        "strings": list(strings.index),
    }


def _json_script(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def explorer_section(data: Mapping[str, Any], *, heading: bool = True, circuitsvis: bool = False) -> Markup:
    """The explorer as an HTML fragment with its own style and script.

    Args:
        data: `explorer_data`.
        heading: start with an ``<h2>`` (the report gives its sections their own).
        circuitsvis: draw the contexts as circuitsvis ``ColoredTokens`` (`CIRCUITSVIS_ADAPTER`); the
            page must hold circuitsvis' library before the fragment. Without it they are plain colored
            tokens.
    """
    return render("explorer.html.j2", css=Markup(_asset("explorer.css")), js=Markup(_asset("explorer.js")),
                  data=Markup(_json_script(data)), n_neurons=len(data["neurons"]["L"]), model=data.get("model", ""),
                  heading=heading, adapter=Markup(CIRCUITSVIS_ADAPTER if circuitsvis else ""))


def explorer_page(data: Mapping[str, Any], title: str = "tl-culture neuron explorer") -> str:
    """A complete offline HTML page holding the explorer and circuitsvis' library (once)."""
    body = (f"<h1>{html.escape(title)}</h1>\n<script>{circuitsvis_library()}</script>\n"
            f"{explorer_section(data, circuitsvis=True)}")
    text = page(title, body)
    bad = external_references(text)
    if bad:
        raise TLCultureError(f"the explorer page would load {bad[0]} from the network; refusing to write it")
    return text


def save_explorer(path: str | os.PathLike, data: Mapping[str, Any], title: str = "tl-culture neuron explorer") -> Path:
    """Write `explorer_page` to ``path`` (atomic); returns the path."""
    write_text_atomic(path, explorer_page(data, title))
    return Path(path)


def write_explorer(
    run_dir: str | os.PathLike | RunDir, out: str | os.PathLike | None = None, *, contexts: int = CONTEXTS
) -> Path:
    """Write the explorer of a run folder as one offline page (default ``{run_dir}/explorer.html``).

    It shows what the folder holds: the neuron sets and statistics, and the top contexts and
    direct effects when the run computed them (``examples.safetensors``, ``writes.safetensors``).
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    examples, writes = run.read_examples()
    summary = run.read_summary()
    model = str(summary.get("model") or summary.get("config", {}).get("model", ""))
    data = explorer_data(run.read_language_neurons(), run.read_categories(),
                         {kind: run.read_stats(kind) for kind in STATS_KINDS}, examples=examples, writes=writes,
                         contexts=contexts, model=model)
    title = f"Neuron explorer of {model}" if model else "tl-culture neuron explorer"
    return save_explorer(out if out is not None else run.path / run.EXPLORER, data, title)
