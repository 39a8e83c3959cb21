"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from tl_culture.errors import TLCultureError


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


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {v}")
    return v


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
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
