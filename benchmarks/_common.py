"""Helpers shared by the benchmark scripts: machine facts, benchmark rows, interleaved timing, FLOP counts.

Every script in this folder runs as ``python benchmarks/<name>.py`` and can also be imported
(the smoke tests call ``main(argv)``), so this module is imported as ``_common`` after the
scripts put their own folder on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"
LANGUAGES = ("en", "de", "da", "zh", "ru", "fa")

if str(ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from tl_culture.errors import TLCultureError  # noqa: E402


# --------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: CPU model, cores, RAM, torch threads, GPU."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "ram_gib": ram_gib,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# --------------------------------------------------------------------------- models
def hf_source(spec: str) -> str:
    """The HF folder or hub name behind a `tl_culture.load_model` spec."""
    if spec == "default":
        from tl_culture.model.load import default_model_dir

        return str(default_model_dir())
    return spec


def load_plain_hf(spec: str, dtype: torch.dtype, device: torch.device) -> Any:
    """A second, untouched HF copy of the model (no TransformerLens bridge around its modules).

    `TransformerBridge` replaces the HF model's submodules with bridge components in place, so
    ``bridge.original_model`` no longer runs plain HF code; the floor needs its own copy.
    """
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_source(spec), dtype=dtype).to(device).eval()


def hf_layers(hf: Any) -> list[Any]:
    """The decoder blocks of a HF causal LM (Llama/Gemma/Qwen ``model.layers``, GPT-2 ``transformer.h``)."""
    body = hf.base_model
    for attr in ("layers", "h", "blocks"):
        if hasattr(body, attr):
            return list(getattr(body, attr))
    raise TLCultureError(f"cannot find the decoder blocks of {type(hf).__name__}; use a Llama/Gemma/GPT-2-style model")


def hf_act_module(layer: Any) -> torch.nn.Module:
    """The activation-function module of a block's MLP: its output is act_fn(gate) (gated) or act_fn(fc) (dense).

    Found as the bridge fast path finds it (`tl_culture.model.fastpath.act_module`).
    """
    from tl_culture.model.fastpath import act_module

    mod = act_module(getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None))
    if mod is not None:
        return mod
    raise TLCultureError(f"cannot find the MLP activation module of {type(layer).__name__}")


# --------------------------------------------------------------------------- data
def bench_texts(languages: Sequence[str] = LANGUAGES) -> list[str]:
    """FLORES sentences of ``languages`` from ../shared/data, else the packaged demo corpus."""
    flores = SHARED_DATA / "flores"
    docs: list[str] = []
    for lang in languages:
        path = flores / f"{lang}.txt"
        if path.is_file():
            docs += [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    if not docs:
        from tl_culture.data.corpus import demo_corpora

        langs, _ = demo_corpora()
        docs = [d for c in langs.values() for d in c.documents]
    return docs


def bench_rows(model: Any, tokens: int, seq_len: int) -> Int[torch.Tensor, "row pos"]:
    """``int64[row, seq_len]`` packed rows holding at least ``tokens`` tokens, each row starting with BOS.

    Multilingual FLORES text, tokenized and packed by `tl_culture.data.rows.encode`; repeated when the
    text is shorter than ``tokens``. Every method of a benchmark runs on exactly these rows.
    """
    from tl_culture.data.corpus import Corpus
    from tl_culture.data.rows import encode

    if tokens < 1 or seq_len < 2:
        raise TLCultureError(f"--tokens must be positive and --seq-len at least 2, got {tokens}, {seq_len}")
    tok = getattr(model, "tokenizer", None)
    docs = bench_texts()
    rows = encode(Corpus("bench", documents=docs), tok, seq_len, pack=True).input_ids
    full = rows[: max(1, len(rows) - 1)]  # the last row may be short (padded): drop it
    if full.shape[1] != seq_len:
        raise TLCultureError(f"the benchmark text gives rows of {full.shape[1]} tokens, not {seq_len}; lower --seq-len")
    n_rows = -(-tokens // seq_len)
    reps = -(-n_rows // len(full))
    return full.repeat(reps, 1)[:n_rows].contiguous()


# --------------------------------------------------------------------------- memory
def status_kib(key: str) -> int:
    """A line of /proc/self/status in KiB (``VmRSS``: resident now, ``VmHWM``: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise TLCultureError(f"/proc/self/status has no {key}; the memory figures need Linux")


def reset_peak_rss() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``), then set this process's
    VmHWM to its current resident memory, so the next peak counts only what is allocated anew."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    if libc:
        ctypes.CDLL(libc).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


# --------------------------------------------------------------------------- timing
def sync(device: torch.device | str | None = None) -> None:
    """Wait for the GPU's queued work (timings of asynchronous CUDA calls would end too early)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def interleaved(
    methods: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True, extra: Callable[[], None] | None = None,
    cuda_peaks: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Wall seconds of each method, ``repeats`` rounds, rotating the order every round.

    On a shared machine, load changes over minutes; running every method once per round (in a
    rotating order) exposes all of them to the same load, so medians and ratios stay comparable.
    ``extra`` runs once per round (e.g. a matmul FLOP/s probe). On a GPU every call is timed up
    to `sync`, and ``cuda_peaks`` (when given) gets each method's peak of
    ``torch.cuda.max_memory_allocated`` in MiB over its rounds.
    """
    names = list(methods)
    if warmup:
        for name in names:
            methods[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    gpu = torch.cuda.is_available()
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync()
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            methods[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
            if gpu and cuda_peaks is not None:
                cuda_peaks[name] = max(cuda_peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
        if extra is not None:
            extra()
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def matmul_flops(
    n: int | None = None, repeats: int = 5, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> float:
    """Median FLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` on ``device`` (2 n^3 FLOPs each).

    ``n`` defaults to 2048 on a CPU and 8192 on a GPU (a smaller product leaves a GPU idle between
    kernels), so the result is the device's attainable matmul peak in that dtype.
    """
    device = torch.device(device or "cpu")
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    ts = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / median(ts)


def body_flops_per_token(cfg: Any, seq_len: int) -> float:
    """Matmul FLOPs per token of the transformer body (no embedding lookup, no unembedding).

    Per layer, with d = d_model, H query heads, K key/value heads of width h, m = d_mlp, T = seq_len:

        linear    = 2 (d H h + 2 d K h + H h d + k d m)        k = 3 gated, 2 dense
        attention = 2 * 2 H h (T + 1) / 2                      (QK^T and AV; causal average context)

    Multiply by n_layers. Norms, activations and softmax are not counted (they are not matmuls).
    """
    d, H, h, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    K = getattr(cfg, "n_key_value_heads", None) or H
    k = 3 if getattr(cfg, "gated_mlp", False) else 2
    linear = 2 * (d * H * h + 2 * d * K * h + H * h * d + k * d * m)
    attention = 2 * 2 * H * h * (seq_len + 1) / 2
    return float(cfg.n_layers * (linear + attention))


def unembed_flops_per_token(cfg: Any) -> float:
    """Matmul FLOPs per token of the unembedding: 2 d_model d_vocab."""
    return float(2 * cfg.d_model * cfg.d_vocab)


# --------------------------------------------------------------------------- output
def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (creating the folder); returns the path."""
    from tl_culture._io import write_json_atomic

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(p, obj)
    return p


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (prints fine in a terminal, pastes into the README)."""

    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    cells = [[fmt(x) for x in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=False)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)


def cli_main(
    parse: Callable[[list[str] | None], Any],
    run: Callable[[Any], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """The shared ``main`` of every benchmark script: parse, run, print the table, write the JSON."""
    args = parse(argv)
    out = run(args)
    print(report(out))
    print(f"wrote {write_json(args.out, out)}")
    return out


def parse_recorded(parser: Any, argv: list[str] | None) -> Any:
    """``parser.parse_args(argv)``, keeping the arguments in ``args.argv`` for `command_line`."""
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def command_line(script: str, args: Any) -> str:
    """The command that reproduces a run, as recorded in its JSON."""
    return " ".join(["python", f"benchmarks/{script}", *args.argv])
