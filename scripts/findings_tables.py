"""The tables of docs/findings.md, computed from the run files committed in docs/findings/.

    .venv/bin/python scripts/findings_tables.py docs/findings

prints every table of the page (Markdown) from the JSON files the run wrote (``summary.json``,
``stability.json``, ``nll/*.json``, ``steering/*.json``). tests/experiment/test_findings.py checks
that the page holds each table exactly as printed here, so no number on the page is typed by hand.

Numbers: Δ NLL in nats/token with 3 decimals; "[lo, hi]" is the 95 % bootstrap CI over held-out
documents; "Δ − control" is the paired difference of the ablation and the mean of the random
controls, its CI from the same resamples.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(folder: Path) -> dict[str, Any]:
    """The run files of ``folder``: summary, stability, NLL matrices and steering evaluations by name."""
    read = lambda p: json.loads(p.read_text(encoding="utf-8"))  # noqa: E731
    stability = folder / "stability.json"
    return {
        "summary": read(folder / "summary.json"),
        "documents": read(folder / "documents.json"),
        "stability": read(stability) if stability.exists() else None,
        "nll": {p.stem: read(p) for p in sorted((folder / "nll").glob("*.json"))},
        "steering": {p.stem: read(p) for p in sorted((folder / "steering").glob("*.json"))},
    }


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


def ci(lo: float | None, hi: float | None, digits: int = 3) -> str:
    return "[n/a]" if lo is None or hi is None else f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


class Cells:
    """Named access to the cells of one NLL matrix file."""

    def __init__(self, m: dict[str, Any]) -> None:
        self.m = m
        self.groups, self.evals = m["groups"], m["evals"]

    def get(self, field: str, g: str, e: str) -> float | None:
        return self.m[field][self.groups.index(g)][self.evals.index(e)]

    def with_ci(self, kind: str, g: str, e: str) -> str:
        """``kind`` (``delta``, ``control`` or ``paired``) of a cell with its CI: ``+1.087 [+0.884, +1.386]``."""
        value = "delta" if kind == "delta" else f"{kind}_delta"
        lo, hi = self.get(f"{kind}_ci_low", g, e), self.get(f"{kind}_ci_high", g, e)
        return f"{num(self.get(value, g, e))} {ci(lo, hi)}"

    def largest(self, g: str, skip: set[str], prefix: str = "") -> str:
        """The largest Δ of row ``g`` on the evals outside ``skip`` (starting with ``prefix``), with its eval."""
        cells = [(self.get("delta", g, e), e) for e in self.evals if e not in skip and e.startswith(prefix)]
        d, e = max(cells)
        return f"{num(d)} ({e})"

    def mean(self, g: str, skip: set[str], prefix: str) -> str:
        vals = [self.get("delta", g, e) for e in self.evals if e not in skip and e.startswith(prefix)]
        return num(sum(vals) / len(vals))


def neurons_table(run: dict[str, Any]) -> str:
    counts = run["summary"]["neurons"]
    groups = list(counts["culture"])
    rows = [
        [name] + [str(counts[name].get(g, 0)) for g in groups] for name in ("language", "culture", "compound", "pure")
    ]
    rows.append(["generic"] + [str(counts["generic"].get("generic", 0))] + [""] * (len(groups) - 1))
    return table(["neurons per group"] + groups, rows)


def layers_table(run: dict[str, Any]) -> str:
    s = run["summary"]
    n = s["n_layers"]
    edges = [n * i // 4 for i in range(5)]
    header = ["union of the groups' sets"] + [f"layers {a}–{b - 1}" for a, b in zip(edges, edges[1:])]
    rows = []
    for name in ("language", "culture", "compound", "pure"):
        prof = s["layers"][name]
        per, total = prof["union_per_layer"], prof["union"]
        cells = [
            f"{100 * sum(per[a:b]) / total:.1f} % ({sum(per[a:b])})" if total else "–" for a, b in zip(edges, edges[1:])
        ]
        depth = prof["mean_relative_depth"]
        rows.append([f"{name} ({total} neurons)"] + cells + ["–" if depth is None else f"{depth:.2f}"])
    return table(header + ["mean relative depth"], rows)


def heldout_table(run: dict[str, Any]) -> str:
    rows = []
    for name in ("language", "culture"):
        m = run["nll"][name]
        for e, t, u in zip(m["evals"], m["eval_tokens"], m["bootstrap_units"], strict=True):
            if e.startswith("lang:" if name == "language" else "cult:"):
                rows.append([e, f"{t:,}", str(u)])
    return table(["held-out corpus", "scored tokens", "bootstrap units (documents)"], rows)


def _per_source(record: dict[str, Any]) -> dict[str, int]:
    """Documents read per top-level file or folder of a corpus (a folder of tales counts as one source)."""
    out: dict[str, int] = {}
    root = Path(record["source"]).name
    for f, v in record.get("files", {}).items():
        parts = Path(f).parts
        top = parts[parts.index(root) + 1] if root in parts[:-1] else parts[0]
        out[top] = out.get(top, 0) + v["documents"]
    return out


def documents_table(run: dict[str, Any]) -> str:
    docs = run["documents"]
    rows = []
    for g, sel in docs["selection"]["culture"].items():
        ev = docs["evaluation"][f"cult:{g}"]
        a, b = _per_source(sel), _per_source(ev)
        cell = ", ".join(f"{src} {a.get(src, 0)}/{b.get(src, 0)}" for src in sorted(set(a) | set(b)))
        rows.append([g, str(sel["used"]), str(ev["used"]), cell])
    header = ["culture", "selection documents", "evaluation documents", "per source: selection/evaluation"]
    return table(header, rows)


def language_table(run: dict[str, Any]) -> str:
    c = Cells(run["nll"]["language"])
    rows = []
    for g in c.groups:
        own = f"lang:{g}"
        n = run["summary"]["neurons"]["language"][g]
        rows.append(
            [
                f"{g} ({n})",
                c.with_ci("delta", g, own),
                c.with_ci("control", g, own),
                c.with_ci("paired", g, own),
                c.mean(g, {own}, "lang:"),
                c.largest(g, {own}, "lang:"),
            ]
        )
    header = [
        "ablated (neurons)",
        "Δ own language text [CI]",
        "control Δ [CI]",
        "Δ − control [CI]",
        "mean Δ other languages",
        "largest other language",
    ]
    return table(header, rows)


def language_matrix(run: dict[str, Any]) -> str:
    """Δ NLL of every language set on every language's held-out text, 2 decimals, own text in bold."""
    c = Cells(run["nll"]["language"])
    counts = run["summary"]["neurons"]["language"]
    rows = []
    for i, g in enumerate(c.groups):
        cells = [f"{c.get('delta', g, f'lang:{t}'):+.2f}" for t in c.groups]
        cells[i] = f"**{cells[i]}**"
        rows.append([f"{g} ({counts[g]} neurons)" if i == 0 else f"{g} ({counts[g]})"] + cells)
    return table(["ablated ↓ / text →"] + c.groups, rows)


def culture_table(run: dict[str, Any]) -> str:
    c = Cells(run["nll"]["culture"])
    pairs = run["summary"]["pairs"]
    rows = []
    for g in c.groups:
        own, lang = f"cult:{g}", f"lang:{pairs[g]}"
        n = run["summary"]["neurons"]["culture"][g]
        rows.append(
            [
                f"{g} ({n})",
                c.with_ci("delta", g, own),
                c.with_ci("paired", g, own),
                c.with_ci("delta", g, lang),
                c.largest(g, {own}, "cult:"),
            ]
        )
    header = [
        "ablated (neurons)",
        "Δ own culture text [CI]",
        "Δ − control [CI]",
        "Δ own language text [CI]",
        "largest other culture text",
    ]
    return table(header, rows)


def categories_table(run: dict[str, Any]) -> str:
    comp, pure = Cells(run["nll"]["compound"]), Cells(run["nll"]["pure"])
    pairs, counts = run["summary"]["pairs"], run["summary"]["neurons"]
    rows = []
    for g in comp.groups:
        own, lang = f"cult:{g}", f"lang:{pairs[g]}"
        nc, npure = counts["compound"][g], counts["pure"][g]
        row = [g, f"{nc}", num(comp.get("delta", g, own)), num(comp.get("delta", g, lang)), f"{npure}"]
        if npure:
            row += [
                pure.with_ci("delta", g, own),
                pure.with_ci("paired", g, own),
                pure.with_ci("delta", g, lang),
                pure.largest(g, {own, lang}),
            ]
        else:
            row += ["–"] * 4
        rows.append(row)
    header = [
        "culture c",
        "compound neurons",
        "compound: Δ c's culture text",
        "compound: Δ c's language text",
        "pure neurons",
        "pure: Δ c's culture text [CI]",
        "pure: Δ − control [CI]",
        "pure: Δ c's language text [CI]",
        "pure: largest Δ on other text",
    ]
    return table(header, rows)


def stability_table(run: dict[str, Any]) -> str:
    st = run["stability"]
    groups = list(st["language"])
    rows = [[f"{side} sets"] + [f"{st[side][g]:.2f}" for g in groups] for side in ("language", "culture")]
    return table(["Jaccard of the two halves"] + groups, rows)


def steering_table(run: dict[str, Any]) -> str:
    rows = []
    for t, ev in run["steering"].items():
        pct = lambda r, c: f"{100 * r:.1f} % [{100 * c[0]:.1f}, {100 * c[1]:.1f}]"  # noqa: E731
        n = run["summary"]["neurons"]["language"][t]
        diff = ev["steered_minus_control"]
        lo, hi = ev["steered_minus_control_ci"]
        rows.append(
            [
                f"{t} ({n})",
                pct(ev["baseline_rate"], ev["baseline_ci"]),
                pct(ev["steered_rate"], ev["steered_ci"]),
                pct(ev["control_rate"], ev["control_ci"]),
                f"{100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
            ]
        )
    header = [
        "target language (neurons)",
        "share in target: no edit [CI]",
        "steered [CI]",
        "random-neuron control [CI]",
        "steered − control, points [CI]",
    ]
    return table(header, rows)


CONDITIONS = ("baseline", "steered", "control")


def steering_languages_table(run: dict[str, Any]) -> str:
    """The identified languages of the greedy continuations per condition (controls pooled over draws)."""
    rows = []
    for t, ev in run["steering"].items():
        g = ev["modes"]["greedy"]
        cells = [", ".join(f"{k} {v}" for k, v in g[f"{c}_languages"].items()) for c in CONDITIONS]
        rows.append([t, *cells])
    return table(["target language", "no edit", "steered", "controls (all draws)"], rows)


TABLES = {
    "neurons": neurons_table,
    "layers": layers_table,
    "heldout": heldout_table,
    "documents": documents_table,
    "language": language_table,
    "language_matrix": language_matrix,
    "culture": culture_table,
    "categories": categories_table,
    "stability": stability_table,
    "steering": steering_table,
    "steering_languages": steering_languages_table,
}


def tables(folder: Path) -> dict[str, str]:
    """Every table of the page, by name."""
    run = load(folder)
    return {name: f(run) for name, f in TABLES.items()}


if __name__ == "__main__":
    for name, text in tables(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/findings")).items():
        print(f"<!-- table: {name} -->\n{text}\n")
