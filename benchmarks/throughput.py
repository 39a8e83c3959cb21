"""Collector throughput: tokens/s of `tl_culture.collect` against the plain forward and hand-written baselines.

Every method runs in this process on the same ``int64[row, seq_len]`` rows, interleaved over
``--repeats`` rounds (rotating order); the table reports medians.

    hf_body         (b) the floor: an untouched HF copy's body forward (``hf.base_model``), no hooks,
                        no unembedding, SDPA attention
    bridge_logits   (a) the TransformerLens bridge's plain forward with logits, ``model(ids)``
    collect             ``tl_culture.collect`` (counts + float64 sums; the defaults: backend "auto",
                        i.e. native with sdpa attention on a bridge that passes the probe)
    collect_nosums      ``collect(..., with_sums=False)``
    collect_eager       ``collect(..., attention="eager")``: native backend with the bridge's eager
                        attention (counts bit-identical to the hooks)
    collect_hooks       ``collect(..., backend="hooks")``: counting through TransformerLens hooks
    bridge_stop         bridge forward with no-op hooks on hook_pre that stop after the last one
                        (the floor of any collector built on TransformerLens hooks)
    hf_stop_count       untouched HF copy, torch forward hooks on each MLP's act_fn counting
                        ``act > 0`` and stopping after the last layer, same batches (what a
                        collector that bypasses the bridge could reach)
    run_with_cache      (c) ``model.run_with_cache(ids, names_filter=hook_pre)`` then count ``act_fn(pre) > 0``
    hf_hook_batch1      (c) HF ``register_forward_hook`` on act_fn, batch 1, full forward with logits,
                        as the culture paper's ``activation_*_transformers.py`` does

FLOP/s: the body's matmul FLOPs per token (``_common.body_flops_per_token``; + the unembedding for
methods that compute logits) times tokens/s, divided by the median FLOP/s of a 2048^3 float32
matmul measured once per round in the same process.

    python benchmarks/throughput.py --model default --tokens 4096 --seq-len 256 --batch-size 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from tl_culture import collect, load_model  # noqa: E402
from tl_culture.model.forward import StopForward, run_to_layer, until_stop  # noqa: E402
from tl_culture.model.hooks import MLPHooks  # noqa: E402
from tl_culture.model.load import model_device, parse_dtype  # noqa: E402

TARGETS = {"collect_vs_hf_body": 0.95, "collect_vs_bridge_logits": 2.0}
LOGIT_METHODS = ("bridge_logits", "run_with_cache", "hf_hook_batch1")


def make_methods(
    model: Any, hf: Any, rows: torch.Tensor, batch_size: int, backends: dict[str, str] | None = None
) -> dict[str, Any]:
    """The benchmarked callables; each returns ``int64[layer, neuron]`` counts or None.

    ``backends`` receives, per `collect` variant, the backend and attention it ran (from its meta).
    """
    mlp = MLPHooks.from_model(model)
    dev = model_device(model)
    hf_dev = next(hf.parameters()).device
    seq_len = rows.shape[1]
    batches = [rows[i : i + batch_size].to(dev) for i in range(0, len(rows), batch_size)]
    hf_batches = [b.to(hf_dev) for b in batches]
    pre_names = [mlp.pre(layer) for layer in range(mlp.n_layers)]
    last = mlp.n_layers - 1
    backends = {} if backends is None else backends

    def hf_body() -> None:
        with torch.inference_mode():
            for b in hf_batches:
                hf.base_model(input_ids=b, use_cache=False)

    def bridge_logits() -> None:
        with torch.inference_mode():
            for b in batches:
                model(b)

    def run_collect(with_sums: bool = True, **kw: Any) -> torch.Tensor:
        stats = collect(
            model,
            {"bench": rows},
            seq_len=seq_len,
            batch_size=batch_size,
            with_sums=with_sums,
            device=dev,
            progress=False,
            **kw,
        )
        asked = kw.get("backend", "auto") + ("+" + kw["attention"] if "attention" in kw else "")
        backends[asked] = f"{stats.meta.get('backend')}+{stats.meta.get('attention')}"
        return stats.counts[0]

    def bridge_stop() -> None:
        def noop(pre: torch.Tensor, hook: Any = None) -> None:
            pass

        with torch.inference_mode():
            for b in batches:
                run_to_layer(model, b, [(n, noop) for n in pre_names], stop_at=pre_names[-1])

    def hf_counting(batches_: list[torch.Tensor], stop: bool, grad_ctx) -> torch.Tensor:
        counts = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.int64, device=hf_dev)
        handles = []

        def make(layer: int):
            def hook(module: Any, inputs: Any, out: torch.Tensor) -> None:
                counts[layer] += (out > 0).reshape(-1, out.shape[-1]).sum(0)
                if stop and layer == last:
                    raise StopForward

            return hook

        for i, blk in enumerate(C.hf_layers(hf)):
            handles.append(C.hf_act_module(blk).register_forward_hook(make(i)))
        try:
            with grad_ctx():
                for b in batches_:
                    if stop:
                        until_stop(hf.base_model, input_ids=b, use_cache=False)
                    else:
                        hf(b)
        finally:
            for h in handles:
                h.remove()
        return counts.cpu()

    def run_with_cache() -> torch.Tensor:
        counts = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.int64, device=dev)
        wanted = set(pre_names)
        with torch.inference_mode():
            for b in batches:
                _, cache = model.run_with_cache(b, names_filter=lambda name: name in wanted)
                for layer, name in enumerate(pre_names):
                    counts[layer] += (mlp.act(cache[name]) > 0).reshape(-1, mlp.d_mlp).sum(0)
        return counts.cpu()

    batch1 = [r[None] for r in rows.to(hf_dev)]
    return {
        "hf_body": hf_body,
        "bridge_logits": bridge_logits,
        "collect": run_collect,
        "collect_nosums": lambda: run_collect(False),
        "collect_eager": lambda: run_collect(attention="eager"),
        "collect_hooks": lambda: run_collect(backend="hooks"),
        "bridge_stop": bridge_stop,
        "hf_stop_count": lambda: hf_counting(hf_batches, True, torch.inference_mode),
        "run_with_cache": run_with_cache,
        "hf_hook_batch1": lambda: hf_counting(batch1, False, torch.no_grad),
    }


def profile_ops(methods: dict[str, Any], names: tuple[str, ...] = ("hf_body", "bridge_stop", "collect")) -> dict:
    """Per method, the torch profiler's top operators (self CPU ms and call counts) for one pass."""
    out = {}
    for name in names:
        with torch.profiler.profile() as prof:
            methods[name]()
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        out[name] = {e.key: {"self_ms": round(e.self_cpu_time_total / 1e3, 1), "calls": e.count} for e in ops}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = parse_dtype(args.dtype) or torch.float32
    model = load_model(args.model, device=args.device, dtype=dtype)
    dev = model_device(model)
    hf = C.load_plain_hf(args.model, dtype, dev)
    rows = C.bench_rows(model, args.tokens, args.seq_len)
    n_tokens = int(rows.numel())
    backends: dict[str, str] = {}
    methods = make_methods(model, hf, rows, args.batch_size, backends)
    if args.methods:
        keep = args.methods.split(",")
        unknown = [m for m in keep if m not in methods]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(methods)}")
        methods = {k: v for k, v in methods.items() if k in keep}

    flops_probe: list[float] = [C.matmul_flops(device=dev, dtype=dtype)]
    cuda_peaks: dict[str, float] = {}
    results: dict[str, Any] = {}

    def record(name: str, fn: Any) -> Any:
        out = fn()
        results.setdefault("_counts", {})[name] = out
        return out

    timed = {name: (lambda n=name, f=fn: record(n, f)) for name, fn in methods.items()}
    probe = lambda: flops_probe.append(C.matmul_flops(device=dev, dtype=dtype))  # noqa: E731
    times = C.interleaved(timed, args.repeats, extra=probe, cuda_peaks=cuda_peaks)
    peak = C.median(flops_probe)
    body = C.body_flops_per_token(model.cfg, args.seq_len)
    unembed = C.unembed_flops_per_token(model.cfg)
    counts = results.pop("_counts", {})
    ref = counts.get("collect")

    per_method = {}
    for name, ts in times.items():
        med = C.median(ts)
        tps = n_tokens / med
        fpt = body + (unembed if name in LOGIT_METHODS else 0.0)
        entry = {
            "seconds": ts,
            "median_s": med,
            "tokens_per_s": tps,
            "flops_per_token": fpt,
            "achieved_flops": tps * fpt,
            "fraction_of_matmul_peak": tps * fpt / peak,
        }
        c = counts.get(name)
        if ref is not None and isinstance(c, torch.Tensor):
            diff = (c.long() - ref.long()).abs()
            entry["counts_vs_collect"] = {
                "max_abs_diff": int(diff.max()),
                "entries_differing": int((diff > 0).sum()),
                "entries": int(diff.numel()),
            }
        if name in cuda_peaks:
            entry["peak_cuda_mib"] = cuda_peaks[name]
        per_method[name] = entry

    def ratio(a: str, b: str) -> float | None:
        if a in per_method and b in per_method:
            return per_method[a]["tokens_per_s"] / per_method[b]["tokens_per_s"]
        return None

    ratios = {
        "collect_vs_hf_body": ratio("collect", "hf_body"),
        "collect_vs_bridge_logits": ratio("collect", "bridge_logits"),
        "collect_nosums_vs_hf_body": ratio("collect_nosums", "hf_body"),
        "collect_hooks_vs_hf_body": ratio("collect_hooks", "hf_body"),
        "collect_eager_vs_hf_body": ratio("collect_eager", "hf_body"),
        "bridge_stop_vs_hf_body": ratio("bridge_stop", "hf_body"),
        "hf_stop_count_vs_hf_body": ratio("hf_stop_count", "hf_body"),
        "collect_vs_run_with_cache": ratio("collect", "run_with_cache"),
        "collect_vs_hf_hook_batch1": ratio("collect", "hf_hook_batch1"),
    }
    med = {k: v["median_s"] for k, v in per_method.items()}
    breakdown = {}
    if {"hf_body", "bridge_stop", "collect_hooks"} <= set(med):
        breakdown["hooks_path"] = {
            "hf_body_s": med["hf_body"],
            "bridge_overhead_s": med["bridge_stop"] - med["hf_body"],
            "counting_and_sums_s": med["collect_hooks"] - med["bridge_stop"],
        }
    if {"hf_body", "collect", "collect_nosums"} <= set(med):
        breakdown["default_path"] = {
            "hf_body_s": med["hf_body"],
            "collect_minus_hf_body_s": med["collect"] - med["hf_body"],
            "float64_sums_s": med["collect"] - med["collect_nosums"],
        }
    out = {
        "benchmark": "throughput",
        "command": C.command_line("throughput.py", args),
        "machine": C.machine_info(),
        "model": args.model,
        "model_name": str(model.cfg.model_name),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(dev),
        "tokens": n_tokens,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "matmul_flops_per_s": {"median": peak, "probes": flops_probe},
        "body_flops_per_token": body,
        "unembed_flops_per_token": unembed,
        "methods": per_method,
        "ratios": ratios,
        "targets": {
            k: {"target": v, "measured": ratios[k], "met": ratios[k] is not None and ratios[k] >= v}
            for k, v in TARGETS.items()
        },
        "breakdown_s": breakdown,
        "collect_backends": backends,
    }
    if args.profile:
        names = ("hf_body", "bridge_stop", "collect", "collect_hooks")
        out["profile"] = profile_ops(methods, tuple(n for n in names if n in methods))
    return out


def report(out: dict[str, Any]) -> str:
    rows = []
    for name, m in out["methods"].items():
        cmp = m.get("counts_vs_collect", {})
        rows.append(
            [
                name,
                m["median_s"],
                m["tokens_per_s"],
                m["tokens_per_s"] / out["methods"]["collect"]["tokens_per_s"]
                if "collect" in out["methods"]
                else float("nan"),
                100 * m["fraction_of_matmul_peak"],
                cmp.get("max_abs_diff", "-"),
            ]
        )
    lines = [
        f"model {out['model_name']} ({out['dtype']}, {out['device']}), {out['tokens']} tokens, "
        f"seq_len {out['seq_len']}, batch {out['batch_size']}, {out['repeats']} interleaved rounds (medians)",
        f"matmul peak {out['matmul_flops_per_s']['median'] / 1e9:.1f} GFLOP/s; "
        f"body {out['body_flops_per_token'] / 1e6:.1f} MFLOP/token, "
        f"unembedding {out['unembed_flops_per_token'] / 1e6:.1f} MFLOP/token",
        C.table(["method", "median s", "tokens/s", "x collect", "% matmul peak", "count diff vs collect"], rows),
    ]
    for k, t in out["targets"].items():
        if t["measured"] is not None:
            lines.append(f"{k}: {t['measured']:.3f} (target >= {t['target']}) {'MET' if t['met'] else 'MISSED'}")
    for path, parts in out["breakdown_s"].items():
        lines.append(f"time breakdown, {path} (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    if out.get("collect_backends"):
        lines.append("collect backends: " + ", ".join(f"{k} -> {v}" for k, v in out["collect_backends"].items()))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="'default' (Gemma 3 270M), a local HF folder or a hub name")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per method per round")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    p.add_argument("--profile", action="store_true", help="also record torch profiler top ops of one pass")
    p.add_argument("--out", default=str(C.RESULTS / "throughput.json"))
    return C.parse_recorded(p, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return C.cli_main(parse, run, report, argv)


if __name__ == "__main__":
    main()
