"""``tl-culture collect``: count MLP neuron activations per corpus (also under ``torchrun``)."""

from __future__ import annotations

import argparse

from tl_culture.cli._common import pairs_to_dict, positive_int
from tl_culture.cli._options import add_option, add_options, given, signature_defaults
from tl_culture.counting.collect import DEFAULT_SEQ_LEN, collect
from tl_culture.counting.distributed import DistInfo, collect_under_torchrun
from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import load_corpus
from tl_culture.experiment.config import COLLECT_FIELDS, MODEL_FIELDS, ExperimentConfig
from tl_culture.model.bridge import check_backend
from tl_culture.model.load import load_model

DEFAULTS = signature_defaults(collect)


def _report(out: str, stats: ActivationStats, info: DistInfo) -> None:
    """What rank 0 prints once it has written ``out``."""
    toks = ", ".join(f"{g}={n}" for g, n in zip(stats.groups, stats.tokens.tolist(), strict=True))
    ranks = f" ({info.world_size} processes)" if info.world_size > 1 else ""
    print(f"wrote {out}: {stats.n_layers} layers x {stats.d_mlp} neurons; tokens {toks}{ranks}")


def _cmd(args: argparse.Namespace) -> int:
    check_backend(args.backend, args.attention, flags=True)  # before loading anything
    if not args.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    corpora = {name: load_corpus(path, name=name) for name, path in pairs_to_dict(args.corpus).items()}
    collect_under_torchrun(
        lambda device: load_model(args.model, device=device, dtype=args.dtype),
        corpora,
        args.out,
        device=args.device,
        on_main=lambda stats, info: _report(args.out, stats, info),
        flags=True,
        pack=args.pack,
        checkpoint_dir=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        checkpoint_seconds=args.checkpoint_seconds,
        **given(args, ExperimentConfig, COLLECT_FIELDS),
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``collect``: options and defaults of `tl_culture.counting.collect.collect`."""
    p = sub.add_parser("collect", help="count MLP neuron activations per corpus")
    add_options(p, ExperimentConfig, MODEL_FIELDS)
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=PATH", help="a group's corpus (repeat)")
    p.add_argument("--out", required=True, help="statistics file to write (.safetensors)")
    p.add_argument("--seq-len", type=positive_int, default=None, help=(
        f"tokens per row, BOS included (default: {DEFAULT_SEQ_LEN}, or the model's context if shorter)"))
    add_options(p, ExperimentConfig, [f for f in COLLECT_FIELDS if f != "seq_len"], defaults=DEFAULTS)
    p.add_argument("--no-pack", dest="pack", action="store_const", const=not DEFAULTS["pack"], default=DEFAULTS["pack"],
                   help="one document per row (right-padded) instead of packing")
    p.add_argument("--checkpoint", default=DEFAULTS["checkpoint_dir"], metavar="DIR",
                   help="folder for resumable progress: rerun the same command after a crash to continue")
    p.add_argument("--checkpoint-every", type=positive_int, default=DEFAULTS["checkpoint_every"], metavar="ROWS",
                   help="save the progress every ROWS rows per process (default: by time only)")
    add_option(p, "--checkpoint-seconds", "save the progress every S seconds", DEFAULTS["checkpoint_seconds"],
               type=positive_int, metavar="S")
    p.set_defaults(func=_cmd)


__all__ = ["register"]
