"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from tl_culture.errors import TLCultureError
from tl_culture.model.fastpath import ATTENTIONS, BACKENDS


def name_eq_value(text: str, what: str = "NAME=PATH") -> tuple[str, str]:
    """Parse ``NAME=VALUE``; a clear error otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise TLCultureError(f"{text!r} is not {what}; write it like en=path/to/en.txt")
    return name.strip(), value.strip()


def pairs_to_dict(items: list[str] | None, what: str = "NAME=PATH") -> dict[str, str]:
    """Parse repeated ``NAME=VALUE`` options into an ordered dict, refusing duplicates."""
    out: dict[str, str] = {}
    for item in items or []:
        k, v = name_eq_value(item, what)
        if k in out:
            raise TLCultureError(f"{k!r} is given twice; give each name once")
        out[k] = v
    return out


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive whole number")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "0 or more")


def group_list(text: str | None) -> list[str] | None:
    """``"en,zh, fr"`` -> ``["en", "zh", "fr"]``; None stays None."""
    return [g.strip() for g in text.split(",") if g.strip()] if text else None


def is_reference(path: str) -> bool:
    """A published LAPE ``.pth`` file (rather than our safetensors)."""
    return str(path).endswith((".pth", ".pt"))


def load_neurons(path: str, groups: list[str] | None = None, model=None):
    """Our NeuronSet file, or a reference ``.pth`` file (its groups named by ``groups``), sized to
    ``model`` when given."""
    from tl_culture import NeuronSet

    if not is_reference(path):
        return NeuronSet.load(path)
    if not groups:
        raise TLCultureError(f"{path} is a reference file; name its groups with --groups en,zh,...")
    if model is None:
        return NeuronSet.load_reference(path, groups)
    return NeuronSet.load_reference(path, groups, n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp)


def unit_rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {v}")
    return v


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default' (embedded Gemma 3 270M), a HF folder or hub name")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")


def add_collect_args(p: argparse.ArgumentParser, seq_len: int = 512) -> None:
    p.add_argument("--seq-len", type=positive_int, default=seq_len, help=f"tokens per row (default {seq_len})")
    p.add_argument("--batch-size", type=positive_int, default=8, help="rows per forward (default 8)")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="cap on tokens per group")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="hooks: TransformerLens hooks; native: the bridge's HF modules without its wrappers "
                   "(faster, same counts); auto (default): native when no TL hooks are attached and it checks out")
    p.add_argument("--attention", choices=ATTENTIONS, default=None,
                   help="attention of the native backend (default: sdpa where the model supports it); "
                   "eager makes counts bit-identical to the hooks backend")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
