"""The pipeline on a GPU against the CPU: counts, edits, scoring, examples, decoding, OOM, torchrun.

Marked ``cuda`` and skipped without a CUDA device. ``TL_CULTURE_TEST_DEVICE=cpu`` runs the same
tests with the CPU as "the device" (what `scripts/gpu_check.sh --device cpu --quick` does to prove
the path here; the comparisons are then trivially tight). Models: the tiny Llama and GPT-2
checkpoints of the tests and a random-weight model of the embedded Gemma 3 270M's exact shape
(`benchmarks/shapes.py`; ``TL_CULTURE_TEST_GEMMA_LAYERS`` keeps fewer of its layers).

Tolerances, device vs CPU (float32 on the CPU is the reference):

- counts: float32 differs only where a pre-activation lies within rounding of zero (another
  kernel sums in another order): at most `FLIP_FP32` of the sign decisions; bfloat16 at most
  `FLIP_BF16` (the documented bf16 tolerance, docs/scale.md);
- logits under an edit: float32 within `LOGIT_ATOL`; bfloat16: the edit's effect (edited − plain)
  points the same way as on the CPU in float32 (cosine > `COSINE_BF16`; bf16 rounding of the
  logits is a sizeable part of a small edit's effect on the tiny models);
- per-token NLL: float32 within `NLL_ATOL` nats.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, make_tiny_hf_checkpoint

DEVICE = os.environ.get("TL_CULTURE_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    DEVICE is None, reason="no CUDA device (TL_CULTURE_TEST_DEVICE=cpu runs these on the CPU)")]
FLIP_FP32 = 1e-4
FLIP_BF16 = 0.02
LOGIT_ATOL = 1e-4
COSINE_BF16 = 0.9
NLL_ATOL = 1e-4
DTYPES = ["float32", "bfloat16"]


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3-270m"])
def model_dir(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param != "gemma3-270m":
        return make_tiny_hf_checkpoint(folder, request.param)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from shapes import write_checkpoint

    layers = os.environ.get("TL_CULTURE_TEST_GEMMA_LAYERS")
    return write_checkpoint("gemma3-270m", folder, layers=int(layers) if layers else None)


def load(path: Path, device: str, dtype: str = "float32"):
    from tl_culture.model.load import load_model

    return load_model(str(path), device=device, dtype=dtype)


def corpora() -> dict:
    from tl_culture.data.corpus import demo_corpora

    langs, _ = demo_corpora()
    return {g: langs[g] for g in ("en", "de", "zh")}


def collect_stats(model, **kw):
    from tl_culture.counting.collect import collect

    return collect(model, corpora(), seq_len=32, max_tokens=256, batch_size=4, progress=False, **kw)


def flip_share(a: torch.Tensor, b: torch.Tensor, decisions: int) -> float:
    return float((a - b).abs().sum()) / decisions


@pytest.mark.parametrize("dtype", DTYPES)
def test_collect_on_the_device_counts_what_the_cpu_counts(model_dir, dtype):
    ref = collect_stats(load(model_dir, "cpu"), backend="hooks").counts
    dev_model = load(model_dir, DEVICE, dtype)
    decisions = int(ref.shape[1] * ref.shape[2]) * 256 * len(corpora())
    bound = FLIP_FP32 if dtype == "float32" else FLIP_BF16
    runs = {}
    for backend in ("hooks", "auto"):
        stats = collect_stats(dev_model, backend=backend)
        assert stats.counts.device.type == "cpu" and stats.counts.dtype == torch.int64
        assert flip_share(stats.counts, ref, decisions) <= bound, backend
        runs[backend] = stats
    if runs["auto"].meta["backend"] == "native":  # the fast path runs here: eager attention counts exactly as hooks
        eager = collect_stats(dev_model, backend="native", attention="eager")
        assert torch.equal(eager.counts, runs["hooks"].counts)
    else:  # it fell back after its check, and says why
        assert runs["auto"].meta["backend_note"]


def neuron_set(model):
    from tl_culture.selection.neurons import NeuronSet

    L, N = model.cfg.n_layers, model.cfg.d_mlp
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, L, N, generator=g) < 0.05
    return NeuronSet(["a", "b"], masks)


def edits(model):
    from tl_culture.intervene.controls import random_edit
    from tl_culture.intervene.interventions import ablate, scale, set_to

    ns = neuron_set(model)
    values = torch.full((model.cfg.n_layers, model.cfg.d_mlp), 0.5)
    out = {"ablate": ablate(ns, "a"), "scale": scale(ns, "a", 3.0), "set": set_to(ns, "b", values)}
    out["control"] = random_edit(out["ablate"], 7, ns.masks.any(0))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_edits_give_the_cpus_logits(model_dir, dtype):
    ref_model, dev_model = load(model_dir, "cpu"), load(model_dir, DEVICE, dtype)
    ids = torch.randint(4, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain_ref = ref_model(ids).float()
        plain_dev = dev_model(ids.to(DEVICE)).float().cpu()
        for name, edit in edits(ref_model).items():
            ref = ref_model.run_with_hooks(ids, fwd_hooks=edit.fwd_hooks(ref_model)).float()
            got = dev_model.run_with_hooks(ids.to(DEVICE), fwd_hooks=edit.fwd_hooks(dev_model)).float().cpu()
            assert not torch.equal(ref, plain_ref), name  # the edit does something
            if dtype == "float32":
                torch.testing.assert_close(got, ref, atol=LOGIT_ATOL, rtol=0, msg=name)
            else:
                cos = torch.nn.functional.cosine_similarity((got - plain_dev).flatten(), (ref - plain_ref).flatten(), 0)
                assert cos > COSINE_BF16, (name, float(cos))


def test_delta_nll_and_top_examples_run_on_the_device_and_return_cpu_results(model_dir):
    from tl_culture.evaluation.delta import delta_nll
    from tl_culture.explore.scan import top_examples

    ref_model, dev_model = load(model_dir, "cpu"), load(model_dir, DEVICE)
    held = corpora()
    kw = dict(seq_len=32, max_tokens=64, controls=1, control_cells="all", bootstrap=20, progress=False,
              allow_overlap=True)
    ref = delta_nll(ref_model, held, neuron_set(ref_model), **kw)
    for backend in ("native", "hooks"):
        got = delta_nll(dev_model, held, neuron_set(dev_model), backend=backend, **kw)
        for field in ("baseline", "ablated", "control_delta"):
            value = getattr(got, field)
            assert value.device.type == "cpu", field
            torch.testing.assert_close(value, getattr(ref, field), atol=NLL_ATOL, rtol=0, equal_nan=True)
    chosen = neuron_set(dev_model).union_mask()
    ex = top_examples(dev_model, held, chosen, max_tokens=128, seq_len=32, progress=False)
    ex_ref = top_examples(ref_model, held, chosen, max_tokens=128, seq_len=32, progress=False)
    assert ex.activation.device.type == "cpu" and ex.token_ids.device.type == "cpu"
    torch.testing.assert_close(ex.activation, ex_ref.activation, atol=1e-4, rtol=0)


def test_kv_cache_steering_on_the_device(model_dir):
    from tl_culture.data.rows import prompt_ids
    from tl_culture.intervene.decode import cache_problem, decode

    model = load(model_dir, DEVICE)
    if cache_problem(model) is not None:
        pytest.skip(f"no cached decoder for this model: {cache_problem(model)}")
    prompts = [prompt_ids(model, p) for p in ("The city is", "Der Hund", "猫在")]
    edit = edits(model)["scale"]
    for e in (None, edit):
        cached = decode(model, prompts, e, max_new_tokens=6, cache=True)
        plain = decode(model, prompts, e, max_new_tokens=6, cache=False)
        assert cached == plain


@pytest.mark.skipif(DEVICE == "cpu", reason="a CPU does not run out of memory the way a GPU does")
def test_out_of_memory_is_the_documented_line(model_dir):
    from tl_culture.counting.collect import collect
    from tl_culture.data.corpus import Corpus
    from tl_culture.errors import TLCultureError

    if "gemma" not in model_dir.name:
        pytest.skip("needs the large vocabulary and width of the Gemma shape")
    model = load(model_dir, DEVICE)
    free, _ = torch.cuda.mem_get_info()
    rows = 1 + int(free // (4096 * model.cfg.d_mlp * model.cfg.n_layers * 4))  # activations alone exceed it
    text = Corpus("big", documents=["word " * 5000] * (rows * 2))
    with pytest.raises(TLCultureError, match=rf"^out of memory on {DEVICE}(:0)? running \d+ rows x \d+ tokens; "
                                             r"use a smaller batch size"):
        collect(model, {"big": text}, seq_len=4096, batch_size=rows * 64, backend="hooks", progress=False)
    torch.cuda.empty_cache()


def test_torchrun_with_one_process_counts_what_one_process_counts(model_dir, tmp_path):
    if "gemma" in model_dir.name:
        pytest.skip("the tiny models suffice for the process group")
    from tl_culture.counting.stats import ActivationStats
    from tl_culture.data.corpus import demo_corpora

    langs, _ = demo_corpora()
    files = []
    for g in ("en", "de"):
        path = tmp_path / f"{g}.txt"
        path.write_text("\n".join(langs[g].documents), encoding="utf-8")
        files += ["--corpus", f"{g}={path}"]
    out = tmp_path / "stats.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "tl_culture",
           "collect", "--model", str(model_dir), "--device", DEVICE, *files, "--seq-len", "32", "--max-tokens", "256",
           "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = ActivationStats.load(out)
    assert stats.meta["world_size"] == 1  # one rank of a process group (nccl on CUDA, gloo on a CPU)
    from tl_culture.counting.collect import collect

    single = collect(load(model_dir, DEVICE), {g: langs[g] for g in ("en", "de")}, seq_len=32, max_tokens=256,
                     progress=False)
    assert torch.equal(stats.counts, single.counts) and torch.equal(stats.tokens, single.tokens)
