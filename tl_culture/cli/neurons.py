"""``tl-culture neurons``: print a neuron-set table and, optionally, the groups' overlaps."""

from __future__ import annotations

import argparse

from tl_culture.cli._common import group_list, load_neurons, positive_int
from tl_culture.cli._options import add_option, signature_defaults
from tl_culture.selection.neurons import NeuronSet


def _cmd(args: argparse.Namespace) -> int:
    ns = load_neurons(args.file, group_list(args.groups))
    print(ns.table(bands=args.bands))
    if args.overlaps:
        j = ns.jaccard()
        width = max(len(g) for g in ns.groups)
        print("\nJaccard overlap")
        print(" " * width + " " + " ".join(f"{g:>6}" for g in ns.groups))
        for i, g in enumerate(ns.groups):
            print(f"{g:<{width}} " + " ".join(f"{float(j[i, k]):6.3f}" for k in range(len(ns.groups))))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``neurons``."""
    p = sub.add_parser("neurons", help="print a neuron-set table (per group x layer band, overlaps)")
    p.add_argument("file", help="neuron-set file (ours, or a reference .pth with --groups)")
    p.add_argument("--groups", default=None, help="group names of a reference .pth file, comma-separated")
    add_option(p, "--bands", "layer bands", signature_defaults(NeuronSet.table)["bands"], type=positive_int)
    p.add_argument("--overlaps", action="store_true", help="also print the Jaccard overlap matrix")
    p.set_defaults(func=_cmd)


__all__ = ["register"]
