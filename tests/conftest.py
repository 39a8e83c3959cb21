"""Shared fixtures: tiny random TransformerLens models (offline, fast) and a word tokenizer."""

from __future__ import annotations

import os
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
