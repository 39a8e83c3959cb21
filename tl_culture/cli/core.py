"""Subcommands of the core pipeline: collect, identify, neurons, run."""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_culture.cli._common import (
    add_collect_args,
    add_model_args,
    group_list,
    load_neurons,
    pairs_to_dict,
    positive_int,
    unit_rate,
)
from tl_culture.errors import TLCultureError


def _check_writable(out: str) -> None:
    """Fail before hours of counting, not after, if ``out`` cannot be written."""
    import tempfile

    path = Path(out)
    if path.is_dir():
        raise TLCultureError(f"--out {out} is a folder; give a file name like stats.safetensors")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise TLCultureError(f"cannot write {out} ({why}); choose another --out") from None


def _cmd_collect(args: argparse.Namespace) -> int:
    from tl_culture import collect, load_corpus, load_model
    from tl_culture.counting.distributed import close_distributed, init_distributed, resolve_device

    if args.seq_len < 2:  # before loading anything
        raise TLCultureError(f"seq_len must be at least 2, got {args.seq_len}")
    if args.attention == "sdpa" and args.backend == "hooks":
        raise TLCultureError("--attention sdpa needs the native backend; drop it or use --backend native")
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    corpora = {name: load_corpus(path, name=name) for name, path in pairs_to_dict(args.corpus).items()}
    info = init_distributed(device=args.device)  # torchrun: joins the job; otherwise a single process
    try:
        if info.is_main:
            _check_writable(args.out)
        device = resolve_device(args.device, info.local_rank, distributed=info.world_size > 1)
        model = load_model(args.model, device=device, dtype=args.dtype)
        stats = collect(
            model, corpora, seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=args.max_tokens,
            pack=not args.no_pack, progress=not args.no_progress and info.is_main,
            checkpoint_dir=args.checkpoint, checkpoint_every=args.checkpoint_every,
            checkpoint_seconds=args.checkpoint_seconds, backend=args.backend, attention=args.attention,
        )
        if info.is_main:  # every rank holds the reduced totals; one writes them
            stats.save(args.out)
            toks = ", ".join(f"{g}={n}" for g, n in zip(stats.groups, stats.tokens.tolist(), strict=True))
            ranks = f" ({info.world_size} processes)" if info.world_size > 1 else ""
            print(f"wrote {args.out}: {stats.n_layers} layers x {stats.d_mlp} neurons; tokens {toks}{ranks}")
    finally:
        close_distributed(info)
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    from tl_culture import ActivationStats, identify

    stats = ActivationStats.load(args.stats)
    ns = identify(stats, top_rate=args.top_rate, filter_rate=args.filter_rate, activation_bar_ratio=args.bar_ratio)
    ns.save(args.out)
    print(ns.table())
    print(f"wrote {args.out}")
    return 0


def _cmd_neurons(args: argparse.Namespace) -> int:
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


# `run` options -> ExperimentConfig fields. Their parser defaults are None so that a value comes, in
# order of precedence, from the command line, then --config, then ExperimentConfig's own default.
_RUN_FIELDS = {
    "out": "out", "model": "model", "seq_len": "seq_len", "batch_size": "batch_size", "max_tokens": "max_tokens",
    "max_documents": "max_documents", "eval_fraction": "eval_fraction", "top_rate": "top_rate",
    "filter_rate": "filter_rate", "bar_ratio": "activation_bar_ratio", "seed": "seed", "device": "device",
    "dtype": "dtype", "evaluate": "evaluate", "eval_tokens": "eval_tokens", "eval_batch_size": "eval_batch_size",
    "controls": "control_seeds", "bootstrap": "bootstrap", "eval_mode": "eval_mode", "stability": "stability",
    "report": "report", "backend": "backend", "attention": "attention",
}


def config_from_args(args: argparse.Namespace):
    """The `ExperimentConfig` of a parsed ``run`` command line (options over --config over defaults)."""
    from tl_culture.experiment.run import ExperimentConfig

    given = {field: getattr(args, opt) for opt, field in _RUN_FIELDS.items() if getattr(args, opt) is not None}
    for opt, field in (("language", "languages"), ("culture", "cultures")):
        if getattr(args, opt):
            given[field] = pairs_to_dict(getattr(args, opt))
    if args.pair:
        given["pairs"] = pairs_to_dict(args.pair, "CULTURE=LANGUAGE")
    given["progress"] = not args.no_progress
    if args.config:
        return ExperimentConfig.from_file(args.config, **given)
    return ExperimentConfig(**{"out": "runs/demo", **given})


def _cmd_run(args: argparse.Namespace) -> int:
    from tl_culture.experiment.run import run_experiment

    res = run_experiment(config_from_args(args))
    print((Path(res.out) / "neurons.txt").read_text(encoding="utf-8"))
    print(f"wrote {res.out}: " + ", ".join(sorted(p.name for p in Path(res.out).iterdir())))
    if (Path(res.out) / "report.html").is_file():
        print(f"report: {Path(res.out) / 'report.html'}")
    return 0


def _add_lape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-rate", type=unit_rate, default=0.01, help="share of neurons selected (default 0.01)")
    p.add_argument("--filter-rate", type=unit_rate, default=0.95, help="candidate quantile of P (default 0.95)")
    p.add_argument("--bar-ratio", type=unit_rate, default=0.95, help="membership quantile of P (default 0.95)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    """Options of the Δ NLL evaluation stage of `run`."""
    p.add_argument("--no-eval", dest="evaluate", action="store_const", const=False,
                   help="skip the Δ NLL evaluation stage")
    p.add_argument("--eval-tokens", type=positive_int, default=128,
                   help="scored held-out tokens per corpus (default 128)")
    p.add_argument("--eval-batch-size", type=positive_int, default=4, help="rows per evaluation forward (default 4)")
    p.add_argument("--controls", type=int, default=1, help="random-neuron control seeds per group (default 1)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (default 1000)")
    p.add_argument("--eval-mode", choices=("matched", "all"), default="matched",
                   help="matched: language sets on language text, culture sets on culture text (default); "
                   "all: every set on every text")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="count MLP neuron activations per corpus")
    add_model_args(p)
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=PATH", help="a group's corpus (repeat)")
    p.add_argument("--out", required=True, help="statistics file to write (.safetensors)")
    add_collect_args(p)
    p.add_argument("--no-pack", action="store_true", help="one document per row (right-padded) instead of packing")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="folder for resumable progress: rerun the same command after a crash to continue")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="ROWS",
                   help="save the progress every ROWS rows per process (default: by time only)")
    p.add_argument("--checkpoint-seconds", type=positive_int, default=300, metavar="S",
                   help="save the progress every S seconds (default 300)")
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
    p.add_argument("--config", default=None, help="TOML/JSON experiment config (see examples/); options given here win")
    p.add_argument("--language", action="append", metavar="NAME=PATH", help="a language corpus (repeat)")
    p.add_argument("--culture", action="append", metavar="NAME=PATH", help="a culture corpus (repeat)")
    p.add_argument("--pair", action="append", metavar="CULTURE=LANGUAGE", help="pair a culture with a language")
    p.add_argument("--out", help="output folder (default runs/demo)")
    p.add_argument("--eval-fraction", type=unit_rate, help="held-out share of documents (default 0.15)")
    p.add_argument("--seed", type=int, help="seed of the split and controls (default 0)")
    p.add_argument("--max-documents", type=positive_int, help="documents per corpus (required for hf: corpora)")
    p.add_argument("--stability", action="store_const", const=True, help="also measure split-half stability")
    p.add_argument("--no-report", dest="report", action="store_const", const=False, help="skip report.html")
    add_collect_args(p, seq_len=256)
    _add_lape_args(p)
    _add_eval_args(p)
    # every ExperimentConfig option defaults to None here: the config file or ExperimentConfig decides
    p.set_defaults(**{opt: None for opt in _RUN_FIELDS})
    p.set_defaults(func=_cmd_run)


__all__ = ["register"]
