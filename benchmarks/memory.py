"""Peak memory against corpus size: `tl_culture.collect` vs hand-written `run_with_cache` baselines.

Each (method, size) runs in a fresh subprocess, so one measurement cannot inherit another's heap.
The worker loads the model and builds the rows, then resets the kernel's peak-RSS mark (``VmHWM``,
via ``/proc/self/clear_refs``) and CUDA's peak counter, runs the method once, and reports

    peak_rss      VmHWM after the run: the process's peak resident memory during the run
    base_rss      resident memory just before the run (model + rows)
    peak_cuda     torch.cuda.max_memory_allocated() during the run (GPU only)

Methods:

    collect               tl_culture.collect (counts + float64 sums) on the pre-tokenized rows
    collect_text          tl_culture.collect on the FLORES text itself with max_tokens=tokens: the
                          streamed tokenization and packing (`RowStream`) are inside the measurement
    run_with_cache_store  per batch ``run_with_cache(names_filter=hook_pre)``, keep every batch's
                          activations, count ``act_fn(pre) > 0`` at the end (the notebook pattern)
    run_with_cache_batch  same, but count each batch and drop its cache (logits + cache per batch)

    python benchmarks/memory.py --model default --sizes 1024,3072,10240
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from tl_culture.errors import TLCultureError  # noqa: E402

METHODS = ("collect", "collect_text", "run_with_cache_store", "run_with_cache_batch")
FLAT_TOLERANCE = 0.05


# --------------------------------------------------------------------------- worker
def run_method(
    method: str, model: Any, rows: torch.Tensor, batch_size: int, texts: list[str] | None = None
) -> torch.Tensor:
    """Run one method over ``rows`` (``collect_text``: over ``texts``, as many tokens); returns
    ``int64[layer, neuron]`` counts."""
    from tl_culture import collect
    from tl_culture.model.hooks import MLPHooks
    from tl_culture.model.load import model_device

    if method in ("collect", "collect_text"):
        corpus = {"bench": rows if method == "collect" else texts}
        cap = None if method == "collect" else int(rows.numel()) - len(rows)  # the same number of counted tokens
        # corpus order (sample_seed=None): the capped text must be the text of ``rows``
        stats = collect(model, corpus, seq_len=rows.shape[1], batch_size=batch_size, max_tokens=cap,
                        sample_seed=None, progress=False)
        return stats.counts[0]
    mlp = MLPHooks.from_model(model)
    dev = model_device(model)
    names = [mlp.pre(layer) for layer in range(mlp.n_layers)]
    wanted = set(names)
    counts = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.int64)
    kept: list[list[torch.Tensor]] = [[] for _ in names]
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            _, cache = model.run_with_cache(rows[i : i + batch_size].to(dev), names_filter=lambda n: n in wanted)
            for layer, name in enumerate(names):
                if method == "run_with_cache_store":
                    kept[layer].append(cache[name])
                else:
                    counts[layer] += (mlp.act(cache[name]) > 0).reshape(-1, mlp.d_mlp).sum(0).cpu()
            del cache
        if method == "run_with_cache_store":
            for layer in range(mlp.n_layers):
                acts = torch.cat(kept[layer])
                counts[layer] = (mlp.act(acts) > 0).reshape(-1, mlp.d_mlp).sum(0).cpu()
    return counts


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    from tl_culture import load_model
    from tl_culture.model.load import model_device

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    rows = C.bench_rows(model, args.tokens, args.seq_len)
    texts = C.bench_texts() if args.method == "collect_text" else None
    dev = model_device(model)
    # Fault in every weight page first (safetensors weights are memory-mapped): otherwise RSS grows
    # with the number of distinct token ids as the 262k x 640 embedding's rows are first touched,
    # which is page cache of the model file, not memory the method allocates.
    with torch.no_grad():
        for p in model.parameters():
            p.data.sum()
    gc.collect()
    base = C.status_kib("VmRSS")
    C.reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cuda_base = torch.cuda.memory_allocated() if dev.type == "cuda" else None
    t0 = time.perf_counter()
    counts = run_method(args.method, model, rows, args.batch_size, texts)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "method": args.method,
        "tokens": int(rows.numel()),
        "seconds": seconds,
        "tokens_per_s": rows.numel() / seconds,
        "base_rss_mib": base / 1024,
        "peak_rss_mib": C.status_kib("VmHWM") / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
        "base_cuda_mib": cuda_base / 2**20 if cuda_base is not None else None,
        "counts_sum": int(counts.sum()),
    }


# --------------------------------------------------------------------------- parent
def measure(args: argparse.Namespace, method: str, tokens: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--method",
        method,
        "--tokens",
        str(tokens),
        "--model",
        args.model,
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
    ]
    for flag in ("device", "dtype"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TLCultureError(f"memory worker {method} at {tokens} tokens failed (rc {proc.returncode}): {tail}")
    return json.loads(lines[-1][len("RESULT ") :])


def plot(out: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_tps) = plt.subplots(1, 2, figsize=(11, 4))
    for method, runs in out["runs"].items():
        x = [r["tokens"] for r in runs]
        ax_mem.plot(x, [r["peak_rss_mib"] / 1024 for r in runs], marker="o", label=method)
        ax_tps.plot(x, [r["tokens_per_s"] for r in runs], marker="o", label=method)
        if runs and runs[0].get("peak_cuda_mib") is not None:
            ax_mem.plot(
                x, [r["peak_cuda_mib"] / 1024 for r in runs], marker="x", linestyle="--", label=f"{method} (CUDA)"
            )
    ax_mem.set(xlabel="tokens", ylabel="peak memory (GiB)", title="Peak RSS during the run")
    ax_tps.set(xlabel="tokens", ylabel="tokens / s", title="Throughput (one run per point)")
    for ax in (ax_mem, ax_tps):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{out['model_name']} on {out['machine']['cpu']} ({out['machine']['nproc']} cores, shared)", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for tokens in sizes:
        for method in methods:  # interleaved by size, so slow drift in load hits every method
            r = measure(args, method, tokens)
            runs[method].append(r)
            print(
                f"  {method:22s} {r['tokens']:>8} tokens  peak RSS {r['peak_rss_mib']:8.1f} MiB  "
                f"(+{r['peak_rss_mib'] - r['base_rss_mib']:.1f} over base)  {r['tokens_per_s']:.0f} tok/s",
                flush=True,
            )
    growth = {}
    for method, rs in runs.items():
        lo, hi = rs[0], rs[-1]
        growth[method] = {
            "tokens_ratio": hi["tokens"] / lo["tokens"],
            "peak_rss_ratio": hi["peak_rss_mib"] / lo["peak_rss_mib"],
            "peak_rss_increase_mib": hi["peak_rss_mib"] - lo["peak_rss_mib"],
            "flat": hi["peak_rss_mib"] / lo["peak_rss_mib"] < 1 + FLAT_TOLERANCE,
        }
        if lo.get("peak_cuda_mib"):
            growth[method]["peak_cuda_ratio"] = hi["peak_cuda_mib"] / lo["peak_cuda_mib"]
    from tl_culture.model.load import DEFAULT_MODEL_NAME

    return {
        "benchmark": "memory",
        "command": C.command_line("memory.py", args),
        "machine": C.machine_info(),
        "model": args.model,
        "model_name": DEFAULT_MODEL_NAME if args.model == "default" else Path(args.model).name,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "sizes": sizes,
        "runs": runs,
        "growth": growth,
    }


def report(out: dict[str, Any]) -> str:
    rows = []
    for method, rs in out["runs"].items():
        for r in rs:
            cuda = f"{r['peak_cuda_mib']:.0f}" if r.get("peak_cuda_mib") is not None else "-"
            rows.append(
                [
                    method,
                    r["tokens"],
                    r["base_rss_mib"],
                    r["peak_rss_mib"],
                    r["peak_rss_mib"] - r["base_rss_mib"],
                    cuda,
                    r["tokens_per_s"],
                ]
            )
    lines = [
        C.table(
            ["method", "tokens", "base RSS MiB", "peak RSS MiB", "peak - base MiB", "peak CUDA MiB", "tokens/s"], rows
        )
    ]
    for method, g in out["growth"].items():
        lines.append(
            f"{method}: {g['tokens_ratio']:.0f}x tokens -> peak RSS x{g['peak_rss_ratio']:.3f} "
            f"({g['peak_rss_increase_mib']:+.0f} MiB); flat (<{100 * FLAT_TOLERANCE:.0f}%): {g['flat']}"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--sizes", default="1024,3072,10240", help="comma-separated token counts")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--out", default=str(C.RESULTS / "memory.json"))
    p.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="collect", help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=1024, help=argparse.SUPPRESS)
    return C.parse_recorded(p, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.worker:
        res = worker(args)
        print("RESULT " + json.dumps(res), flush=True)
        return res
    out = run(args)
    print(report(out))
    out_path = C.write_json(args.out, out)
    png = plot(out, Path(args.plot) if args.plot else out_path.with_suffix(".png"))
    print(f"wrote {out_path} and {png}")
    return out


if __name__ == "__main__":
    main()
