"""Write a random-weight HF checkpoint of a named model shape (``benchmarks/shapes/NAME.json``).

    python benchmarks/shapes.py gemma3-270m --out /tmp/models/gemma3-270m [--dtype bfloat16]

The checkpoint has the shape's config with random weights (seeded) and a byte-level BPE tokenizer
of ``--tokenizer-vocab`` tokens trained on the packaged demo corpus; its special tokens are ids
0-3 (``<pad>``, ``<eos>``, ``<bos>``, ``<unk>``) and the config's special ids are set to them. The
model's vocabulary stays the shape's, so the unembedding costs what it costs the real model.
``--layers`` overrides the number of layers (quick checks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import _common as C  # noqa: F401  (puts the checkout on sys.path)
import torch

SHAPES = C.HERE / "shapes"
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]


def shape_names() -> list[str]:
    return sorted(p.stem for p in SHAPES.glob("*.json"))


def write_tokenizer(folder: Path, vocab: int) -> Any:
    """A byte-level BPE tokenizer trained on the demo corpus, saved in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(C.bench_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def write_checkpoint(name: str, folder: str | Path, *, dtype: str = "float32", layers: int | None = None,
                     tokenizer_vocab: int = 2000, seed: int = 0) -> Path:
    """Write the random-weight checkpoint of shape ``name`` into ``folder``; returns the folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = SHAPES / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"unknown shape {name!r}; known: {', '.join(shape_names())}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = json.loads(path.read_text())
    raw.update(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if layers is not None:
        raw["num_hidden_layers"] = layers
        if isinstance(raw.get("layer_types"), list):
            raw["layer_types"] = raw["layer_types"][:layers]
    model_type = raw.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **raw)
    write_tokenizer(folder, tokenizer_vocab)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=shape_names())
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--dtype", default="float32", help="dtype of the saved weights")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--tokenizer-vocab", type=int, default=2000)
    args = p.parse_args(argv)
    out = write_checkpoint(args.name, args.out, dtype=args.dtype, layers=args.layers,
                           tokenizer_vocab=args.tokenizer_vocab)
    print(f"wrote {out} ({args.name}, random weights)")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
