"""Tiny random HF checkpoints of the decoder families tl-culture supports, for tests that compare paths.

Each family's config is the smallest one that still has its distinctive parts (gated or dense MLP,
RMSNorm or LayerNorm, rotary, ALiBi or learned positions, logit soft-capping, logit scale).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

VOCAB = 300

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def family_config(family: str) -> Any:
    """The transformers config of a tiny model of ``family`` (a key of `FAMILIES`)."""
    import transformers as T

    head8 = dict(head_dim=8)
    return {
        "llama": lambda: T.LlamaConfig(**_COMMON),
        "qwen2": lambda: T.Qwen2Config(**_COMMON),
        "qwen3": lambda: T.Qwen3Config(**_COMMON, **head8),
        "mistral": lambda: T.MistralConfig(**_COMMON),
        "gemma": lambda: T.GemmaConfig(**_COMMON, **head8),
        "gemma2": lambda: T.Gemma2Config(**_COMMON, **head8, final_logit_softcapping=3.0),
        "gemma3": lambda: T.Gemma3TextConfig(**_COMMON, **head8),
        "phi3": lambda: T.Phi3Config(**_COMMON),
        "olmo2": lambda: T.Olmo2Config(**_COMMON),
        "cohere": lambda: T.CohereConfig(**_COMMON, logit_scale=0.5),
        "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256, n_inner=48,
                                     bos_token_id=1, eos_token_id=2),
        "gpt_neox": lambda: T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=48, max_position_embeddings=256),
        "bloom": lambda: T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
        "falcon": lambda: T.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         new_decoder_architecture=False),
    }[family]()


FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "phi3", "olmo2", "cohere", "gpt2",
            "gpt_neox", "bloom", "falcon")


def make_family_checkpoint(path: Path, family: str, tokenizer_dir: Path) -> Path:
    """Write a tiny random ``family`` checkpoint (seeded) with the tokenizer files of ``tokenizer_dir``."""
    from transformers import AutoModelForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(family_config(family)).save_pretrained(path)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, path / f.name)
    return path
