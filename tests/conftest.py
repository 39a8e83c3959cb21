"""Shared fixtures: tiny random TransformerLens models (offline, fast) and a word tokenizer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(gated: bool, n_layers: int = 3, d_mlp: int = 32, d_vocab: int = 64, seed: int = 0):
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig(
        d_model=16,
        d_head=4,
        n_heads=4,
        n_layers=n_layers,
        n_ctx=128,
        d_vocab=d_vocab,
        d_mlp=d_mlp,
        act_fn="silu" if gated else "gelu",
        gated_mlp=gated,
        seed=seed,
        normalization_type="RMS" if gated else "LN",
        positional_embedding_type="rotary" if gated else "standard",
    )


def tiny_model(gated: bool, **kw):
    """A randomly initialised TL-native bridge (dense GELU or gated SiLU MLPs) in eval mode."""
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(kw.get("seed", 0))
    model = TransformerBridge.boot_native(tiny_config(gated, **kw))
    model.eval()
    return model


@pytest.fixture(scope="session")
def dense_model():
    return tiny_model(gated=False)


@pytest.fixture(scope="session")
def gated_model():
    return tiny_model(gated=True)


@pytest.fixture(params=["dense", "gated"])
def any_model(request):
    return tiny_model(gated=request.param == "gated")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; required under CI, skipped elsewhere when absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared data at {SHARED_DATA}")
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_model():
    """The embedded Gemma 3 270M (slow: converted once, then ~5 s to load)."""
    from tl_culture import load_model

    return load_model("default", device="cpu")


def make_tiny_hf_checkpoint(path: Path, arch: str = "llama") -> Path:
    """Write a tiny random HF causal LM (Llama: gated SiLU; GPT-2: dense GELU) with a byte-level
    BPE tokenizer trained on a few multilingual sentences. Offline, a second or two."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    sample = ["the cat sat on the mat", "der Hund schläft", "кошка спит", "猫在睡觉", "گربه خوابیده است"] * 5
    tok.train_from_iterator(sample, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(path)
    vocab = fast.vocab_size
    torch.manual_seed(0)
    if arch == "llama":
        from transformers import LlamaConfig

        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    else:
        from transformers import GPT2Config

        cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, n_inner=48,
                         bos_token_id=1, eos_token_id=2, activation_function="gelu_new")
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    return make_tiny_hf_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_hf_model(tiny_hf_dir):
    from tl_culture import load_model

    return load_model(str(tiny_hf_dir), device="cpu")


# --------------------------------------------------------------------------- evaluation helpers
@pytest.fixture(scope="session")
def tiny_models(dense_model, gated_model):
    """The two tiny bridges by MLP kind: ``{"dense": ..., "gated": ...}``."""
    return {"dense": dense_model, "gated": gated_model}


@pytest.fixture(scope="session")
def ab_neurons():
    """Groups ``a`` (layers 1 and 2) and ``b`` (layer 2) over the tiny models' 3 x 32 neurons."""
    from tl_culture import NeuronSet

    m = torch.zeros(2, 3, 32, dtype=torch.bool)
    m[0, 1, :6] = True
    m[0, 2, 10:14] = True
    m[1, 2, 3:20] = True
    return NeuronSet(["a", "b"], m)


def random_rows(seed: int, n: int = 3, T: int = 12) -> torch.Tensor:
    """``int64[n, T]`` random token ids below the tiny models' vocabulary of 64."""
    return torch.randint(0, 64, (n, T), generator=torch.Generator().manual_seed(seed))


def xy_corpora() -> dict:
    """Two eval corpora of token rows: ``x`` (3 rows) and ``y`` (2 rows)."""
    from tl_culture import Corpus

    return {"x": Corpus("x", rows=random_rows(1, 3)), "y": Corpus("y", rows=random_rows(2, 2))}


def hand_counts(model, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """counts, sums of act_fn(hook_pre) over the counted tokens, from run_with_cache row by row."""
    from tl_culture import MLPHooks

    mlp = MLPHooks.from_model(model)
    counts = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.int64)
    sums = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.float64)
    with torch.inference_mode():
        for ids, attn, keep in zip(rows.input_ids, rows.attention_mask, rows.count_mask, strict=True):
            n = int(attn.sum())  # right padding: the real tokens are a prefix
            _, cache = model.run_with_cache(ids[None, :n])
            for layer in range(mlp.n_layers):
                pre = cache[mlp.pre(layer)][0][keep[:n]]
                counts[layer] += (mlp.act(pre) > 0).sum(0)
                sums[layer] += mlp.act(pre).double().sum(0)
    return counts, sums


def hand_nll(model, ids: torch.Tensor, hooks=()) -> float:
    """Mean next-token NLL of every position after the first, by plain log-softmax (float64)."""
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model.run_with_hooks(ids, fwd_hooks=list(hooks))
    lp = F.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return float(-lp.mean())


def run_in_tl3_interpreter(test_file: Path, select: str, passed: int, needs: str = "transformer_lens") -> None:
    """Run ``pytest test_file -k select`` in ``$TL3_PYTHON`` (built by scripts/tl3_env.sh); assert ``passed`` passed.

    Skips when ``$TL3_PYTHON`` is unset, except under CI, where that fails, as does an interpreter that
    cannot import ``needs``.
    """
    import re
    import subprocess

    py = os.environ.get("TL3_PYTHON")
    if not py:
        if os.environ.get("CI"):
            pytest.fail("CI must set TL3_PYTHON (built by scripts/tl3_env.sh)")
        pytest.skip("set TL3_PYTHON to the interpreter printed by `bash scripts/tl3_env.sh` to run this")
    probe = subprocess.run([py, "-c", f"import {needs}"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.fail(f"{py} cannot import {needs}; rebuild it with `bash scripts/tl3_env.sh`\n{probe.stderr[-2000:]}")
    proc = subprocess.run(
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file), "-k", select],
        cwd=REPO / "tests", env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.search(r"(\d+) passed", proc.stdout)
    assert found and int(found.group(1)) == passed, proc.stdout[-3000:]


# --------------------------------------------------------------------------- headless Chromium (tests/browser.py)
@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable; skips when it is missing, except under CI, where that fails."""
    from tests.browser import CHROMIUM

    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium for the browser tests: run scripts/install_chromium.sh")
        pytest.skip("chromium is not installed (scripts/install_chromium.sh)")
    return CHROMIUM


# --------------------------------------------------------------------------- run folders (report, experiment)
RUN_CULTURES = ["en", "de", "da", "zh", "ru", "fa"]  # the demo corpus's groups
RUN_EVALS = [f"lang:{c}" for c in RUN_CULTURES] + [f"cult:{c}" for c in RUN_CULTURES]


def make_nll(groups: list[str], seed: int = 0):
    """An NLLMatrix over `RUN_EVALS` with CIs and a control; own-text cells get +0.3."""
    import numpy as np

    from tl_culture import NLLMatrix

    rng = np.random.default_rng(seed)
    base = rng.uniform(2, 4, len(RUN_EVALS))
    d = rng.uniform(0, 0.05, (len(groups), len(RUN_EVALS)))
    for i, g in enumerate(groups):
        for j, e in enumerate(RUN_EVALS):
            if e.endswith(":" + g):
                d[i, j] += 0.3
    t = torch.as_tensor
    return NLLMatrix(
        groups, RUN_EVALS, t(base), t(base[None] + d), t([1000 + j for j in range(len(RUN_EVALS))]),
        delta_ci_low=t(d - 0.02), delta_ci_high=t(d + 0.02),
        control_delta=t(np.full(d.shape, 0.01)), control_ci_low=t(np.zeros(d.shape)),
        control_ci_high=t(np.full(d.shape, 0.03)),
    )


def make_run(out: Path, model) -> Path:
    """A real run folder as `tl-culture run` writes it (report included): `run_experiment` on the
    demo corpus without its evaluation stage, plus made-up Δ NLL files (`make_nll`)."""
    from tl_culture.experiment.config import ExperimentConfig
    from tl_culture.experiment.run import run_experiment
    from tl_culture.experiment.rundir import RunDir
    from tl_culture.report.write import report_stage

    cfg = ExperimentConfig(out=str(out), seq_len=64, batch_size=8, max_tokens=600, top_rate=0.1, progress=False,
                           evaluate=False)
    run_experiment(cfg, model=model, reporter=report_stage)
    nll = {cat: make_nll(RUN_CULTURES, seed=len(cat)) for cat in ("language", "culture", "compound", "pure")}
    RunDir(out).write_nll({**nll, "generic": make_nll(["generic"], seed=9)})
    return out


# --------------------------------------------------------------------------- counting helpers
WORDS = "the cat sat on mat der Hund schläft кошка спит 猫 在 睡觉 گربه خوابیده است".split()


def write_corpus(path: Path, n_docs: int, seed: int) -> Path:
    """A text file of ``n_docs`` random multilingual lines (3 to 30 words each), seeded."""
    import random

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n_docs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- culture folders (sampling, documents.json)
#: A MUREL-like culture folder's files (one a subfolder deep) and the genre each holds.
FILES = {"a_proverbs.txt": "proverb", "b_survey.txt": "survey", "c_tales/one.txt": "tale", "d_novel.txt": "novel"}


def write_culture_folder(root: Path, lines: Callable[[str], list[str]]) -> Path:
    """Write each of `FILES` under ``root``, holding the lines ``lines(genre)`` gives (a non-blank line a document).

    Args:
        root: The folder to write (created with any subfolders).
        lines: Gives a file's lines (documents) from its genre.

    Returns:
        ``root``.
    """
    for name, genre in FILES.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(lines(genre)) + "\n", encoding="utf-8")
    return root
