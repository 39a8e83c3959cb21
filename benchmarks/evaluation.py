"""Δ NLL evaluation time: `tl_culture.delta_nll` on random neuron sets, per eval batch size.

`delta_nll` runs one full forward per batch for the baseline and one per intervention: each
group's ablation and each of its ``--controls`` random-neuron controls. The neuron sets are seeded
random sets of ``--neurons`` neurons per group, spread evenly over all layers (where the neurons
lie does not change the cost). For each ``--batch-size`` the evaluation runs ``--repeats`` times,
interleaved; the table reports medians, forwards per second and scored tokens per second, and the
share of a forward's matmul FLOPs spent in the unembedding (which every intervention must pay to
get its NLLs).

    python benchmarks/evaluation.py --model default --groups 6 --controls 1 --batch-size 4,8 --eval-tokens 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from tl_culture import delta_nll, load_model  # noqa: E402
from tl_culture.data.corpus import Corpus  # noqa: E402
from tl_culture.data.rows import encode  # noqa: E402
from tl_culture.errors import TLCultureError  # noqa: E402
from tl_culture.model.hooks import MLPHooks  # noqa: E402
from tl_culture.selection.neurons import NeuronSet  # noqa: E402


def random_sets(n_layers: int, d_mlp: int, groups: int, neurons: int, seed: int) -> NeuronSet:
    """``groups`` random sets of ``neurons`` neurons each, spread evenly over all layers."""
    if neurons > n_layers * d_mlp:
        raise TLCultureError(f"--neurons {neurons} exceeds the model's {n_layers * d_mlp} neurons")
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(groups, n_layers, d_mlp, dtype=torch.bool)
    for g in range(groups):
        for layer in range(n_layers):
            k = neurons // n_layers + (1 if layer < neurons % n_layers else 0)
            masks[g, layer, torch.randperm(d_mlp, generator=gen)[:k]] = True
    return NeuronSet([f"g{g}" for g in range(groups)], masks, {"category": "random"})


def eval_corpora(groups: int) -> dict[str, Corpus]:
    """One eval corpus per group: FLORES sentences of a language each (cycled when groups > 6)."""
    out = {}
    for g in range(groups):
        lang = C.LANGUAGES[g % len(C.LANGUAGES)]
        out[f"g{g}"] = Corpus(f"g{g}", documents=C.bench_texts([lang]), source=f"flores/{lang}")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    mlp = MLPHooks.from_model(model)
    evals = eval_corpora(args.groups)
    ns = random_sets(mlp.n_layers, mlp.d_mlp, args.groups, args.neurons, args.seed)
    sizes = [int(b) for b in str(args.batch_size).split(",")]
    mats: dict[int, Any] = {}

    def make(batch_size: int):
        def fn() -> None:
            mats[batch_size] = delta_nll(model, evals, ns, seq_len=args.seq_len, batch_size=batch_size,
                                         max_tokens=args.eval_tokens, controls=args.controls, bootstrap=0,
                                         allow_overlap=True, progress=False)

        return fn

    times = C.interleaved({b: make(b) for b in sizes}, args.repeats, warmup=False)
    forwards_per_batch = 1 + args.groups * (1 + args.controls)
    results = []
    rows = sum(len(encode(c, model.tokenizer, args.seq_len, max_tokens=args.eval_tokens)) for c in evals.values())
    for b in sizes:
        m, med = mats[b], C.median(times[b])
        forwards = -(-rows // b) * forwards_per_batch
        scored = int(m.tokens.sum()) * forwards_per_batch
        results.append({"batch_size": b, "seconds": times[b], "median_s": med, "forwards": forwards,
                        "forwards_per_s": forwards / med, "scored_tokens_per_s": scored / med,
                        "tokens_per_eval": m.tokens.tolist()})
    body, unembed = C.body_flops_per_token(model.cfg, args.seq_len), C.unembed_flops_per_token(model.cfg)
    return {
        "benchmark": "evaluation",
        "command": C.command_line("evaluation.py", args),
        "machine": C.machine_info(),
        "model": args.model,
        "model_name": str(model.cfg.model_name),
        "n_layers": mlp.n_layers,
        "groups": args.groups,
        "controls": args.controls,
        "neurons_per_group": args.neurons,
        "forwards_per_batch": forwards_per_batch,
        "eval_tokens": args.eval_tokens,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "unembed_flop_share": unembed / (body + unembed),
        "results": results,
    }


def report(out: dict[str, Any]) -> str:
    rows = [[r["batch_size"], r["median_s"], r["forwards"], r["forwards_per_s"], r["scored_tokens_per_s"]]
            for r in out["results"]]
    head = (
        f"{out['model_name']}: {out['groups']} groups x {out['groups']} eval corpora, {out['controls']} control(s), "
        f"{out['eval_tokens']} tokens each, {out['repeats']} interleaved repeats (medians); unembedding = "
        f"{100 * out['unembed_flop_share']:.0f}% of a forward's matmul FLOPs"
    )
    return head + "\n" + C.table(["batch size", "Δ NLL s", "forwards", "forwards/s", "scored tokens/s"], rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--groups", type=int, default=6, help="groups ablated (= eval corpora)")
    p.add_argument("--neurons", type=int, default=32, help="neurons per group")
    p.add_argument("--controls", type=int, default=1, help="random-neuron controls per group")
    p.add_argument("--eval-tokens", type=int, default=128, help="scored tokens per eval corpus")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", default="4", help="comma-separated eval batch sizes")
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
