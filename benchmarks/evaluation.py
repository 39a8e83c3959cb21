"""Scoring speed: scored tokens/s of one Δ NLL pass on the fast path, the hooks path and the HF floor.

Every method scores the same rows (``--tokens`` tokens of multilingual FLORES text in rows of
``--seq-len``, ``--batch-size`` rows per forward) and returns per-token next-token NLLs:

- ``native``: `tl_culture.model.scoring.NativeScorer` with an ablation of ``--neurons`` random
  neurons (the bridge's HF modules, sdpa attention, the fused head; what `delta_nll` runs);
- ``hooks``: the same ablation through TransformerLens hooks, ``model(ids)`` and a log-softmax
  (`tl_culture.evaluation.scorer.hooks_nll`; what `delta_nll` runs with ``backend="hooks"``);
- ``hf_floor``: an untouched HF copy of the model, ``model(ids, labels=ids)`` (its mean loss; no
  intervention), what a user would write without tl-culture.

The methods run ``--repeats`` rounds interleaved in one process (`_common.interleaved`); the table
reports medians and each method's ratio to the floor, with the peak memory each pass adds over the
memory before it (on a CPU the resident memory, Linux VmHWM reset before every pass; on a GPU
``torch.cuda.max_memory_allocated`` over the model and rows, with the total as ``peak_cuda_mib``)
and the fraction of this machine's matmul rate in the model's dtype (`_common.matmul_flops`,
measured once per round) that the unembedding and body FLOPs reach.

    python benchmarks/evaluation.py --model default --tokens 2048 --seq-len 256 --batch-size 4 --repeats 3
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
from tl_culture.errors import TLCultureError  # noqa: E402
from tl_culture.evaluation.scorer import choose_scorer, hooks_nll  # noqa: E402
from tl_culture.intervene.interventions import Edit, Intervention  # noqa: E402
from tl_culture.model.hooks import MLPHooks  # noqa: E402

METHODS = ("native", "hooks", "hf_floor")


def random_ablation(mlp: MLPHooks, neurons: int, seed: int) -> Intervention:
    """An ablation of ``neurons`` seeded random neurons spread evenly over the layers."""
    if neurons > mlp.n_layers * mlp.d_mlp:
        raise TLCultureError(f"--neurons {neurons} exceeds the model's {mlp.n_layers * mlp.d_mlp} neurons")
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.bool)
    for layer in range(mlp.n_layers):
        k = neurons // mlp.n_layers + (1 if layer < neurons % mlp.n_layers else 0)
        mask[layer, torch.randperm(mlp.d_mlp, generator=g)[:k]] = True
    return Intervention([Edit("ablate", mask, label="random ablation")])


def methods(args: argparse.Namespace, model: Any, hf: Any, rows: torch.Tensor) -> dict[str, Any]:
    """One pass over ``rows`` per method (a callable each), and the scorer's info."""
    count = torch.ones_like(rows, dtype=torch.bool)
    count[:, 0] = False
    hooks = random_ablation(MLPHooks.from_model(model), args.neurons, args.seed).fwd_hooks(model)
    scorer, info = choose_scorer(model, "native", args.attention, rows, count)
    batches = [slice(s, s + args.batch_size) for s in range(0, len(rows), args.batch_size)]

    def native() -> None:
        with torch.inference_mode(), scorer.active():
            for b in batches:
                scorer.nll(rows[b], count[b], None, hooks)

    def hooks_path() -> None:
        with torch.inference_mode():
            for b in batches:
                hooks_nll(model, rows[b], count[b], None, hooks)

    def hf_floor() -> None:
        with torch.inference_mode():
            for b in batches:
                hf(rows[b], labels=rows[b]).loss.item()

    return {"native": native, "hooks": hooks_path, "hf_floor": hf_floor, "info": info}


def peak_memory(fns: dict[str, Any]) -> dict[str, float]:
    """MiB of resident memory each pass adds at its peak over the memory before it (Linux VmHWM)."""
    out = {}
    for name, fn in fns.items():
        C.reset_peak_rss()
        before = C.status_kib("VmRSS")
        fn()
        out[name] = (C.status_kib("VmHWM") - before) / 1024
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype) if args.dtype else torch.float32
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    dev = next(model.parameters()).device
    hf = C.load_plain_hf(args.model, dtype, dev)
    rows = C.bench_rows(model, args.tokens, args.seq_len).to(dev)
    fns = methods(args, model, hf, rows)
    info = fns.pop("info")
    flops: list[float] = []
    cuda_peaks: dict[str, float] = {}
    base_mib = torch.cuda.memory_allocated() / 2**20 if dev.type == "cuda" else 0.0  # model and rows
    times = C.interleaved(fns, args.repeats, extra=lambda: flops.append(C.matmul_flops(device=dev, dtype=dtype)),
                          cuda_peaks=cuda_peaks)
    scored = int(rows.shape[0] * (rows.shape[1] - 1))
    med = {m: C.median(times[m]) for m in METHODS}
    per_token = C.body_flops_per_token(model.cfg, args.seq_len) + C.unembed_flops_per_token(model.cfg)
    peak = C.median(flops)
    results = {m: {"seconds": times[m], "median_s": med[m], "scored_tokens_per_s": scored / med[m],
                   "vs_hf_floor": med["hf_floor"] / med[m], "matmul_peak_fraction": per_token * scored / med[m] / peak}
               for m in METHODS}
    if dev.type == "cuda":
        for m in METHODS:
            results[m]["peak_cuda_mib"] = cuda_peaks[m]
            results[m]["peak_mib_over_start"] = cuda_peaks[m] - base_mib
    else:
        for m, mib in peak_memory(fns).items():
            results[m]["peak_mib_over_start"] = mib
    return {
        "benchmark": "evaluation", "command": C.command_line("evaluation.py", args), "machine": C.machine_info(),
        "model": args.model, "model_name": str(model.cfg.model_name), "dtype": str(dtype).replace("torch.", ""),
        "native": info, "tokens": scored, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "neurons": args.neurons, "repeats": args.repeats, "matmul_flops": flops,
        "unembed_flop_share": C.unembed_flops_per_token(model.cfg) / per_token, "results": results,
    }


def report(out: dict[str, Any]) -> str:
    rows = [[m, r["median_s"], r["scored_tokens_per_s"], r["vs_hf_floor"], r["matmul_peak_fraction"],
             r["peak_mib_over_start"]] for m, r in out["results"].items()]
    head = (
        f"{out['model_name']} ({out['dtype']}, native attention {out['native'].get('attention')}): "
        f"{out['tokens']} scored tokens in rows of {out['seq_len']}, batch {out['batch_size']}, "
        f"{out['repeats']} interleaved repeats (medians); unembedding = "
        f"{100 * out['unembed_flop_share']:.0f}% of the matmul FLOPs"
    )
    return head + "\n" + C.table(["method", "s per pass", "scored tokens/s", "x HF floor", "matmul peak",
                                  "peak MiB"], rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--tokens", type=int, default=2048, help="tokens scored per pass")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4, help="rows per forward")
    p.add_argument("--neurons", type=int, default=100, help="random neurons ablated")
    p.add_argument("--attention", default=None, help="the native path's attention (default: sdpa)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--out", default=str(C.RESULTS / "evaluation.json"))
    return C.parse_recorded(p, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return C.cli_main(parse, run, report, argv)


if __name__ == "__main__":
    main()
