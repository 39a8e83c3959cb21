"""``tl-culture identify``: select group-specific neurons with LAPE."""

from __future__ import annotations

import argparse

from tl_culture.cli._options import add_options, signature_defaults
from tl_culture.counting.stats import ActivationStats
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.selection.lape import identify

LAPE_FIELDS = ("top_rate", "filter_rate", "activation_bar_ratio")


def _cmd(args: argparse.Namespace) -> int:
    stats = ActivationStats.load(args.stats)
    ns = identify(stats, top_rate=args.top_rate, filter_rate=args.filter_rate,
                  activation_bar_ratio=args.activation_bar_ratio)
    ns.save(args.out)
    print(ns.table())
    print(f"wrote {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``identify``: the LAPE options of `ExperimentConfig`, with `identify`'s defaults."""
    p = sub.add_parser("identify", help="select group-specific neurons with LAPE")
    p.add_argument("stats", help="statistics file from `collect`")
    p.add_argument("--out", required=True, help="neuron-set file to write (.safetensors)")
    add_options(p, ExperimentConfig, LAPE_FIELDS, defaults=signature_defaults(identify))
    p.set_defaults(func=_cmd)


__all__ = ["LAPE_FIELDS", "register"]
