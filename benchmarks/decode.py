"""Decoding speed of steering: the uncached loop against the cached decoder, and token agreement.

`tl_culture.intervene.decode.decode` continues prompts either with one full TransformerLens
forward of the whole sequence per new token (``cache=False``, one prompt at a time) or with the
HF model's own KV cache inside the bridge fast path, prompts left-padded into batches
(``cache=True``). This script continues the first ``--prompts`` questions of
``../shared/data/mvicuna/en.txt`` (or built-in English questions when that file is absent) for
``--new-tokens`` tokens under an ablation of random neurons, greedily, each way, ``--repeats``
times interleaved, and reports medians, tokens/s and whether the greedy tokens agree.

    python benchmarks/decode.py --model default --prompts 8 --new-tokens 16 --batch-size 1,8
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
from tl_culture.data.rows import prompt_ids  # noqa: E402
from tl_culture.intervene.decode import cache_problem, decode  # noqa: E402
from tl_culture.intervene.interventions import ablate  # noqa: E402
from tl_culture.model.hooks import MLPHooks  # noqa: E402
from tl_culture.selection.neurons import NeuronSet  # noqa: E402

QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvicuna" / "en.txt"
FALLBACK = ["How can I improve my time management skills?", "What is the capital of France?",
            "Why is the sky blue?", "How do plants make food?"]


def questions(n: int) -> list[str]:
    """The first ``n`` English questions (cycled when fewer)."""
    qs = [q.strip() for q in QUESTIONS.read_text(encoding="utf-8").splitlines() if q.strip()] \
        if QUESTIONS.is_file() else FALLBACK
    return [qs[i % len(qs)] for i in range(n)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    mlp = MLPHooks.from_model(model)
    g = torch.Generator().manual_seed(args.seed)
    masks = torch.rand(1, mlp.n_layers, mlp.d_mlp, generator=g) < 0.01
    edit = ablate(NeuronSet(["random"], masks), "random")
    ids = [prompt_ids(model, q) for q in questions(args.prompts)]
    sizes = [int(b) for b in str(args.batch_size).split(",")]
    problem = cache_problem(model)
    outs: dict[str, list[list[int]]] = {}

    def make(name: str, **kw: Any):
        def fn() -> None:
            outs[name] = decode(model, ids, edit, max_new_tokens=args.new_tokens, **kw)

        return fn

    fns = {"uncached": make("uncached", cache=False)}
    if problem is None:
        fns.update({f"cached_b{b}": make(f"cached_b{b}", cache=True, batch_size=b) for b in sizes})
    times = C.interleaved(fns, args.repeats, warmup=False)
    results = []
    for name in fns:
        med, tokens = C.median(times[name]), sum(len(o) for o in outs[name])
        results.append({"method": name, "seconds": times[name], "median_s": med, "new_tokens": tokens,
                        "tokens_per_s": tokens / med, "same_tokens_as_uncached": outs[name] == outs["uncached"]})
    base = next(r["median_s"] for r in results if r["method"] == "uncached")
    for r in results:
        r["speedup"] = base / r["median_s"]
    return {"benchmark": "decode", "command": C.command_line("decode.py", args), "machine": C.machine_info(),
            "model": args.model, "model_name": str(model.cfg.model_name), "prompts": args.prompts,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "cache_problem": problem,
            "edited_neurons": int(masks.sum()), "results": results}


def report(out: dict[str, Any]) -> str:
    rows = [[r["method"], r["median_s"], r["tokens_per_s"], r["speedup"], r["same_tokens_as_uncached"]]
            for r in out["results"]]
    head = (f"{out['model_name']}: {out['prompts']} prompts x {out['new_tokens']} new tokens, greedy, ablation of "
            f"{out['edited_neurons']} random neurons; {out['repeats']} interleaved repeats (medians)")
    if out["cache_problem"]:
        head += f"; no cached decoder: {out['cache_problem']}"
    return head + "\n" + C.table(["method", "seconds", "new tokens/s", "speed-up", "same tokens"], rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", type=int, default=8, help="prompts continued")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per prompt")
    p.add_argument("--batch-size", default="1,8", help="comma-separated batch sizes of the cached decoder")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--out", default=str(C.RESULTS / "decode.json"))
    return C.parse_recorded(p, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return C.cli_main(parse, run, report, argv)


if __name__ == "__main__":
    main()
