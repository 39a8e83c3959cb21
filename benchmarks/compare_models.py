"""Compare models: the same language and culture corpora through several models, LAPE on each.

For every ``--model`` (a spec for `tl_culture.load_model`, optionally ``SPEC@DTYPE``, e.g.
``default@bfloat16``):

1. every corpus is split into selection / held-out documents (`Corpus.split`, seeded);
2. `collect` + `identify` on the selection text gives the language sets and the culture sets,
   `culture_categories` the compound / pure / generic sets;
3. tabulated: neurons per group; the layer distribution of each category's union (share in the
   first 2 layers, in the middle half ``[L/4, 3L/4)``, in the last quarter ``[3L/4, L)``, as the
   LAPE paper's released files are usually described); the Jaccard overlap of each culture's set
   with its language's set;
4. with ``--eval`` (default on): Δ NLL of ablating each group on every group's held-out text
   (`tl_culture.delta_nll`, no controls or bootstrap), and its diagonal dominance

       dominance = #{rows g : argmax_e Δ[g, e] = g} / G,  margin = mean_g (Δ[g, g] − mean_{e≠g} Δ[g, e])

Defaults: languages = ``../shared/data/flores/{en,de,da,zh,ru,fa}.txt``, cultures =
``../shared/data/murel`` (same six codes).

    python benchmarks/compare_models.py --model default --model /path/to/other --max-tokens 4096
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from tl_culture import (  # noqa: E402
    collect,
    culture_categories,
    delta_nll,
    identify,
    load_corpus,
    load_model,
    load_murel,
)
from tl_culture.errors import TLCultureError  # noqa: E402


def layer_shares(mask: torch.Tensor) -> dict[str, float | None]:
    """Share of the neurons of a ``bool[layer, neuron]`` mask in the first 2 layers / middle half / last quarter."""
    L = mask.shape[0]
    per_layer = mask.sum(1).double()
    total = float(per_layer.sum())
    if total == 0:
        return {"first2": None, "middle_half": None, "last_quarter": None}
    q1, q3 = L // 4, (3 * L) // 4
    return {
        "first2": float(per_layer[: min(2, L)].sum()) / total,
        "middle_half": float(per_layer[q1:q3].sum()) / total,
        "last_quarter": float(per_layer[q3:].sum()) / total,
    }


def diagonal_dominance(
    delta: torch.Tensor, groups: list[str], evals: list[str], sizes: list[int] | None = None
) -> dict[str, Any]:
    """How strongly each group's ablation hurts its own held-out text most (see the module doc).

    Rows of groups with no neurons (``sizes[g] == 0``: nothing was ablated) are left out.
    """
    sizes = sizes or [1] * len(groups)
    own = [evals.index(g) if g in evals and n > 0 else None for g, n in zip(groups, sizes, strict=True)]
    rows = [(gi, e) for gi, e in enumerate(own) if e is not None and torch.isfinite(delta[gi]).all()]
    if not rows:
        return {"dominance": None, "margin": None, "rows": 0}
    wins = sum(int(torch.argmax(delta[gi]) == e) for gi, e in rows)
    margins = []
    for gi, e in rows:
        others = torch.cat([delta[gi, :e], delta[gi, e + 1 :]])
        margins.append(float(delta[gi, e] - others.mean()) if others.numel() else 0.0)
    return {"dominance": wins / len(rows), "margin": sum(margins) / len(margins), "rows": len(rows)}


def load_corpora(args: argparse.Namespace) -> tuple[dict, dict]:
    langs = args.languages.split(",")
    lang_dir = Path(args.language_dir)
    missing = [lg for lg in langs if not (lang_dir / f"{lg}.txt").is_file()]
    if missing:
        raise TLCultureError(f"no {missing[0]}.txt in {lang_dir}; pass --language-dir with one LANG.txt per language")
    languages = {lg: load_corpus(lang_dir / f"{lg}.txt", name=lg) for lg in langs}
    cultures = load_murel(args.culture_dir, languages=langs)
    return languages, cultures


def run_model(spec: str, languages: dict, cultures: dict, args: argparse.Namespace) -> dict[str, Any]:
    name, _, dtype = spec.partition("@")
    t0 = time.perf_counter()
    model = load_model(name, device=args.device, dtype=dtype or None)
    splits = {
        k: c.split(args.eval_fraction, seed=args.seed)
        for k, c in {
            **{f"lang:{g}": c for g, c in languages.items()},
            **{f"cult:{g}": c for g, c in cultures.items()},
        }.items()
    }
    kw = dict(seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=args.max_tokens, progress=not args.quiet)
    stats_l = collect(model, {g: splits[f"lang:{g}"][0] for g in languages}, **kw)
    stats_c = collect(model, {g: splits[f"cult:{g}"][0] for g in cultures}, **kw)
    lang_ns, cult_ns = identify(stats_l), identify(stats_c)
    cats = culture_categories(lang_ns, cult_ns)
    L, N = lang_ns.n_layers, lang_ns.d_mlp
    out: dict[str, Any] = {
        "spec": spec,
        "model_name": str(model.cfg.model_name),
        "dtype": str(model.cfg.dtype).replace("torch.", ""),
        "n_layers": L,
        "d_mlp": N,
        "tokens": {
            "language": dict(zip(stats_l.groups, stats_l.tokens.tolist(), strict=True)),
            "culture": dict(zip(stats_c.groups, stats_c.tokens.tolist(), strict=True)),
        },
        "neurons": {cat: ns.counts() for cat, ns in cats.items()},
        "union": {cat: ns.count() for cat, ns in cats.items()},
        "layer_shares": {cat: layer_shares(ns.union_mask()) for cat, ns in cats.items()},
        "jaccard_language_culture": {
            c: float(cats["language"].jaccard(cats["culture"])[i, i]) for i, c in enumerate(cats["culture"].groups)
        },
        "layer_histogram": {cat: ns.union_mask().sum(1).tolist() for cat, ns in cats.items()},
    }
    if args.eval:
        out["delta_nll"] = {}
        for what, ns, prefix in (("language", lang_ns, "lang"), ("culture", cult_ns, "cult")):
            evals = {g: splits[f"{prefix}:{g}"][1] for g in ns.groups}
            m = delta_nll(
                model,
                evals,
                ns,
                seq_len=args.seq_len,
                batch_size=args.eval_batch_size,
                max_tokens=args.eval_tokens,
                controls=0,
                bootstrap=0,
                progress=not args.quiet,
            )
            out["delta_nll"][what] = {
                "groups": m.groups,
                "evals": m.evals,
                "baseline": m.baseline.tolist(),
                "delta": m.delta.tolist(),
                **diagonal_dominance(m.delta, m.groups, m.evals, [ns.count(g) for g in m.groups]),
            }
    out["seconds"] = time.perf_counter() - t0
    del model
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    languages, cultures = load_corpora(args)
    models = [run_model(spec, languages, cultures, args) for spec in args.model]
    return {
        "benchmark": "compare_models",
        "command": C.command_line("compare_models.py", args),
        "machine": C.machine_info(),
        "languages": {g: c.source for g, c in languages.items()},
        "cultures": {g: c.source for g, c in cultures.items()},
        "settings": {
            k: getattr(args, k) for k in ("seq_len", "batch_size", "max_tokens", "eval_fraction", "seed", "eval_tokens")
        },
        "models": models,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def report(out: dict[str, Any]) -> str:
    lines = []
    groups = list(out["cultures"])
    rows = []
    for m in out["models"]:
        for cat in ("language", "culture", "compound", "pure", "generic"):
            per = m["neurons"][cat]
            sh = m["layer_shares"][cat]
            cells = [per.get(g, "-") for g in groups] if cat != "generic" else ["-"] * len(groups)
            rows.append(
                [
                    m["spec"],
                    cat,
                    *cells,
                    m["union"][cat],
                    _pct(sh["first2"]),
                    _pct(sh["middle_half"]),
                    _pct(sh["last_quarter"]),
                ]
            )
    lines.append("Neurons per group and layer distribution of each category's union")
    lines.append(
        C.table(["model", "category", *groups, "union", "first 2 layers", "middle half", "last quarter"], rows)
    )
    rows = [
        [
            m["spec"],
            *[f"{m['jaccard_language_culture'][g]:.2f}" for g in groups],
            f"{sum(m['jaccard_language_culture'].values()) / len(groups):.2f}",
        ]
        for m in out["models"]
    ]
    lines.append("\nJaccard(language set of l(c), culture set of c)")
    lines.append(C.table(["model", *groups, "mean"], rows))
    rows = []
    for m in out["models"]:
        d = m.get("delta_nll")
        if isinstance(d, dict):
            for what, r in d.items():
                dom = "-" if r["dominance"] is None else f"{r['dominance']:.2f}"
                mar = "-" if r["margin"] is None else f"{r['margin']:.4f}"
                diag = [
                    r["delta"][i][r["evals"].index(g)] if g in r["evals"] else float("nan")
                    for i, g in enumerate(r["groups"])
                ]
                rows.append([m["spec"], what, dom, mar, f"{sum(diag) / len(diag):.4f}"])
    if rows:
        lines.append("\nΔ NLL diagonal dominance (ablate group g, evaluate on every group's held-out text)")
        lines.append(C.table(["model", "sets", "dominance", "margin (nats)", "mean diagonal Δ"], rows))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="model spec (repeat); SPEC@DTYPE for a dtype")
    p.add_argument("--languages", default=",".join(C.LANGUAGES), help="comma-separated codes (also the cultures)")
    p.add_argument("--language-dir", default=str(C.SHARED_DATA / "flores"), help="folder with LANG.txt files")
    p.add_argument("--culture-dir", default=str(C.SHARED_DATA / "murel"), help="MUREL-layout folder LANG/**/*.txt")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=4096, help="selection tokens per group")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--eval-tokens", type=int, default=256, help="scored held-out tokens per eval corpus")
    p.add_argument("--eval-batch-size", type=int, default=4)
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip the Δ NLL matrices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default=str(C.RESULTS / "compare_models.json"))
    return C.parse_recorded(p, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return C.cli_main(parse, run, report, argv)


if __name__ == "__main__":
    main()
