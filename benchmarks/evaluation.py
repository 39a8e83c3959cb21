"""Δ NLL evaluation time: shared lower layers vs the naive loop, for upper-layer neuron sets.

`tl_culture.evaluate.delta_nll` ablates each group's neurons and scores every eval corpus. With
``shared_prefix=True`` the layers below the lowest intervened layer ``L0`` run once per batch (the
baseline forward stores ``blocks.{L0}.hook_resid_pre``; each ablation resumes from there); with
``shared_prefix=False`` (the naive loop) every ablation runs the full forward.

The neuron sets are seeded random sets of ``--neurons`` neurons per group, all in layers
``>= L0`` (spread evenly over those layers): what matters for the cost is only where the
lowest intervened layer is. For each ``--start-layer`` both modes run ``--repeats`` times,
interleaved; the table reports medians, the speed-up, and the largest |Δ shared − Δ naive|
(the two must agree).

    python benchmarks/evaluation.py --model default --groups 6 --start-layer 9,13 --eval-tokens 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from tl_culture import load_model  # noqa: E402
from tl_culture.data.corpus import Corpus  # noqa: E402
from tl_culture.errors import TLCultureError  # noqa: E402
from tl_culture.model.load import MLPHooks  # noqa: E402
from tl_culture.selection.neurons import NeuronSet  # noqa: E402


def upper_layer_sets(n_layers: int, d_mlp: int, groups: int, neurons: int, start: int, seed: int) -> NeuronSet:
    """``groups`` random sets of ``neurons`` neurons each, spread evenly over layers ``start..n_layers-1``."""
    if not 0 <= start < n_layers:
        raise TLCultureError(f"--start-layer {start} is outside the model's 0..{n_layers - 1}")
    layers = list(range(start, n_layers))
    if neurons > len(layers) * d_mlp:
        raise TLCultureError(f"--neurons {neurons} exceeds the {len(layers) * d_mlp} neurons of layers >= {start}")
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(groups, n_layers, d_mlp, dtype=torch.bool)
    for g in range(groups):
        for i, layer in enumerate(layers):
            k = neurons // len(layers) + (1 if i < neurons % len(layers) else 0)
            masks[g, layer, torch.randperm(d_mlp, generator=gen)[:k]] = True
    return NeuronSet([f"g{g}" for g in range(groups)], masks, {"category": f"random >= L{start}"})


def eval_corpora(groups: int) -> dict[str, Corpus]:
    """One eval corpus per group: FLORES sentences of a language each (cycled when groups > 6)."""
    out = {}
    for g in range(groups):
        lang = C.LANGUAGES[g % len(C.LANGUAGES)]
        out[f"g{g}"] = Corpus(f"g{g}", documents=C.bench_texts([lang]), source=f"flores/{lang}")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tl_culture.evaluation.delta import delta_nll

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    mlp = MLPHooks.from_model(model)
    evals = eval_corpora(args.groups)
    starts = [int(s) for s in args.start_layer.split(",")] if args.start_layer else [(3 * mlp.n_layers) // 4]
    results = []
    for start in starts:
        ns = upper_layer_sets(mlp.n_layers, mlp.d_mlp, args.groups, args.neurons, start, args.seed)
        mats: dict[str, Any] = {}

        def make(shared: bool, ns=ns, mats=mats):
            def fn() -> None:
                mats[shared] = delta_nll(
                    model,
                    evals,
                    ns,
                    seq_len=args.seq_len,
                    batch_size=args.batch_size,
                    max_tokens=args.eval_tokens,
                    controls=0,
                    bootstrap=0,
                    allow_overlap=True,
                    shared_prefix=shared,
                    progress=False,
                )

            return fn

        times = C.interleaved({"shared": make(True), "naive": make(False)}, args.repeats, warmup=False)
        shared_s, naive_s = C.median(times["shared"]), C.median(times["naive"])
        diff = float((mats[True].delta - mats[False].delta).abs().max())
        results.append(
            {
                "start_layer": start,
                "neurons_per_group": args.neurons,
                "shared_prefix_used": mats[True].meta.get("shared_prefix"),
                "shared_prefix_note": mats[True].meta.get("shared_prefix_note"),
                "shared_s": times["shared"],
                "naive_s": times["naive"],
                "median_shared_s": shared_s,
                "median_naive_s": naive_s,
                "speedup": naive_s / shared_s,
                "max_abs_delta_diff": diff,
                "tokens_per_eval": mats[True].tokens.tolist(),
            }
        )
    return {
        "benchmark": "evaluation",
        "command": C.command_line("evaluation.py", args),
        "machine": C.machine_info(),
        "model": args.model,
        "model_name": str(model.cfg.model_name),
        "n_layers": mlp.n_layers,
        "groups": args.groups,
        "forwards_per_batch": 1 + args.groups,
        "eval_tokens": args.eval_tokens,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "results": results,
    }


def report(out: dict[str, Any]) -> str:
    rows = [
        [
            f"L{r['start_layer']}..L{out['n_layers'] - 1}",
            r["median_naive_s"],
            r["median_shared_s"],
            r["speedup"],
            r["shared_prefix_used"],
            f"{r['max_abs_delta_diff']:.2e}",
        ]
        for r in out["results"]
    ]
    head = (
        f"{out['model_name']}: {out['groups']} groups x {out['groups']} eval corpora, {out['eval_tokens']} tokens "
        f"each, {out['repeats']} interleaved repeats (medians)"
    )
    return (
        head
        + "\n"
        + C.table(["ablated layers", "naive s", "shared s", "speed-up", "shared used", "max |Δ diff|"], rows)
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--groups", type=int, default=6, help="groups ablated (= eval corpora)")
    p.add_argument("--neurons", type=int, default=32, help="neurons per group")
    p.add_argument("--start-layer", default=None, help="comma-separated lowest ablated layers (default 3L/4)")
    p.add_argument("--eval-tokens", type=int, default=128, help="scored tokens per eval corpus")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--out", default=str(C.RESULTS / "evaluation.json"))
    return C.parse_recorded(p, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return C.cli_main(parse, run, report, argv)


if __name__ == "__main__":
    main()
