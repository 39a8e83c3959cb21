"""Subcommands of the core pipeline: collect, identify, neurons, run."""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_culture.cli._common import add_collect_args, add_model_args, pairs_to_dict, unit_rate
from tl_culture.errors import TLCultureError


def _cmd_collect(args: argparse.Namespace) -> int:
    from tl_culture import collect, load_corpus, load_model

    corpora = {name: load_corpus(path, name=name) for name, path in pairs_to_dict(args.corpus).items()}
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    stats = collect(
        model, corpora, seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=args.max_tokens,
        progress=not args.no_progress,
    )
    stats.save(args.out)
    toks = ", ".join(f"{g}={n}" for g, n in zip(stats.groups, stats.tokens.tolist()))
    print(f"wrote {args.out}: {stats.n_layers} layers x {stats.d_mlp} neurons; tokens {toks}")
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    from tl_culture import ActivationStats, identify

    stats = ActivationStats.load(args.stats)
    ns = identify(stats, top_rate=args.top_rate, filter_rate=args.filter_rate, activation_bar_ratio=args.bar_ratio)
    ns.save(args.out)
    print(ns.table())
    print(f"wrote {args.out}")
    return 0


def load_neurons(path: str, groups: list[str] | None = None):
    """Load our NeuronSet file, or a reference ``.pth`` file (needs ``groups``)."""
    from tl_culture import NeuronSet

    if str(path).endswith((".pth", ".pt")):
        if not groups:
            raise TLCultureError(f"{path} is a reference file; name its groups with --groups en,zh,...")
        return NeuronSet.load_reference(path, groups)
    return NeuronSet.load(path)


def _cmd_neurons(args: argparse.Namespace) -> int:
    groups = [g.strip() for g in args.groups.split(",")] if args.groups else None
    ns = load_neurons(args.file, groups)
    print(ns.table(bands=args.bands))
    if args.overlaps:
        j = ns.jaccard()
        width = max(len(g) for g in ns.groups)
        print("\nJaccard overlap")
        print(" " * width + " " + " ".join(f"{g:>6}" for g in ns.groups))
        for i, g in enumerate(ns.groups):
            print(f"{g:<{width}} " + " ".join(f"{float(j[i, k]):6.3f}" for k in range(len(ns.groups))))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from tl_culture.experiment import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(
        out=args.out,
        model=args.model,
        languages=pairs_to_dict(args.language),
        cultures=pairs_to_dict(args.culture),
        pairs=pairs_to_dict(args.pair, "CULTURE=LANGUAGE"),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        eval_fraction=args.eval_fraction,
        top_rate=args.top_rate,
        filter_rate=args.filter_rate,
        activation_bar_ratio=args.bar_ratio,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    res = run_experiment(cfg)
    print((Path(res.out) / "neurons.txt").read_text(encoding="utf-8"))
    print(f"wrote {res.out}: " + ", ".join(sorted(p.name for p in Path(res.out).iterdir())))
    return 0


def _add_lape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-rate", type=unit_rate, default=0.01, help="share of neurons selected (default 0.01)")
    p.add_argument("--filter-rate", type=unit_rate, default=0.95, help="candidate quantile of P (default 0.95)")
    p.add_argument("--bar-ratio", type=unit_rate, default=0.95, help="membership quantile of P (default 0.95)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="count MLP neuron activations per corpus")
    add_model_args(p)
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=PATH", help="a group's corpus (repeat)")
    p.add_argument("--out", required=True, help="statistics file to write (.safetensors)")
    add_collect_args(p)
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("identify", help="select group-specific neurons with LAPE")
    p.add_argument("stats", help="statistics file from `collect`")
    p.add_argument("--out", required=True, help="neuron-set file to write (.safetensors)")
    _add_lape_args(p)
    p.set_defaults(func=_cmd_identify)

    p = sub.add_parser("neurons", help="print a neuron-set table (per group x layer band, overlaps)")
    p.add_argument("file", help="neuron-set file (ours, or a reference .pth with --groups)")
    p.add_argument("--groups", default=None, help="group names of a reference .pth file, comma-separated")
    p.add_argument("--bands", type=int, default=4, help="layer bands (default 4)")
    p.add_argument("--overlaps", action="store_true", help="also print the Jaccard overlap matrix")
    p.set_defaults(func=_cmd_neurons)

    p = sub.add_parser("run", help="the whole experiment: statistics, selection, categories, evaluation, report")
    add_model_args(p)
    p.add_argument("--language", action="append", metavar="NAME=PATH", help="a language corpus (repeat)")
    p.add_argument("--culture", action="append", metavar="NAME=PATH", help="a culture corpus (repeat)")
    p.add_argument("--pair", action="append", metavar="CULTURE=LANGUAGE", help="pair a culture with a language")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--eval-fraction", type=unit_rate, default=0.15, help="held-out share of documents (default 0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and controls (default 0)")
    add_collect_args(p, seq_len=256)
    _add_lape_args(p)
    p.set_defaults(func=_cmd_run)


__all__ = ["load_neurons", "register"]
