"""``tl-culture evaluate``: the Δ NLL matrix of ablating each group's neurons on held-out corpora."""

from __future__ import annotations

import argparse

from tl_culture.cli._common import (
    add_neuron_file_args,
    group_list,
    is_reference,
    load_neurons,
    pairs_to_dict,
    positive_int,
)
from tl_culture.cli._options import add_option, add_options, signature_defaults
from tl_culture.data.corpus import load_corpus
from tl_culture.evaluation.delta import delta_nll
from tl_culture.experiment.config import MODEL_FIELDS, ExperimentConfig
from tl_culture.model.load import load_model

DEFAULTS = signature_defaults(delta_nll)


def _cmd(args: argparse.Namespace) -> int:
    groups = group_list(args.groups)
    corpora = {name: load_corpus(path, name=name) for name, path in pairs_to_dict(args.corpus).items()}
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    neurons = load_neurons(args.neurons, groups, model)
    res = delta_nll(
        model, corpora, neurons, groups=None if is_reference(args.neurons) else groups, seq_len=args.seq_len,
        batch_size=args.batch_size, max_tokens=args.max_tokens, controls=args.control_seeds, seed=args.seed,
        bootstrap=args.bootstrap, allow_overlap=args.allow_overlap, progress=args.progress,
        control_cells=args.control_cells, pairs=pairs_to_dict(args.pair, "GROUP=EVAL"), backend=args.backend,
        attention=args.attention,
    )
    res.save(args.out)
    print(res.table())
    print(f"wrote {args.out} ({res.meta['seconds']} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate``: options with the defaults of `tl_culture.evaluation.delta.delta_nll`."""
    d = DEFAULTS
    p = sub.add_parser("evaluate", help="Δ NLL of ablating each group's neurons on held-out corpora")
    add_options(p, ExperimentConfig, MODEL_FIELDS)
    add_neuron_file_args(p, "groups to ablate, comma-separated (a .pth file: its group names)")
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=PATH", help="an eval corpus (repeat)")
    p.add_argument("--out", required=True, help="NLL matrix file to write (.json)")
    add_options(p, ExperimentConfig, ("control_seeds", "control_cells", "bootstrap", "backend", "attention"),
                defaults={"control_seeds": d["controls"], "bootstrap": d["bootstrap"],
                          "control_cells": d["control_cells"], "backend": d["backend"], "attention": d["attention"]})
    p.add_argument("--pair", action="append", metavar="GROUP=EVAL",
                   help="count EVAL as GROUP's own text for the controls when the names differ (repeat)")
    add_option(p, "--seed", "seed of the controls and bootstrap", d["seed"], type=int)
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="tokens per row (default: 256, or the model's context if shorter)")
    add_option(p, "--batch-size", "rows per forward", d["batch_size"], type=positive_int)
    add_option(p, "--max-tokens", "scored tokens per corpus", d["max_tokens"], type=positive_int)
    p.add_argument("--allow-overlap", action="store_true", help="evaluate even on the neurons' selection text")
    p.add_argument("--no-shared-prefix", action="store_true", help=argparse.SUPPRESS)  # accepted, does nothing
    add_options(p, ExperimentConfig, ("progress",), defaults={"progress": d["progress"]})
    p.set_defaults(func=_cmd)


__all__ = ["register"]
