"""``tl-culture run``: the whole experiment; its options, defaults and help are `ExperimentConfig`'s.

A setting comes from the command line, else from the ``--config`` file, else from
`ExperimentConfig`'s default: the generated options leave what is not typed out of the parsed
namespace (`tl_culture.cli._options.add_options` with ``given_only``). ``--dry-run`` checks the
settings, the model spec and every corpus and prints what each stage will read
(`tl_culture.experiment.dryrun`), loading no model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_culture.cli._options import add_options, given
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.dryrun import dry_run
from tl_culture.experiment.run import run_experiment
from tl_culture.experiment.rundir import RunDir
from tl_culture.report.write import report_stage


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The `ExperimentConfig` of a parsed ``run`` command line (options over --config over defaults)."""
    values = given(args, ExperimentConfig)
    if args.config:
        return ExperimentConfig.from_file(args.config, **values)
    return ExperimentConfig(**values)


def _cmd(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.dry_run:
        print(dry_run(cfg).text())
        print("dry run: no problems found; no model loaded, nothing streamed or written")
        return 0
    res = run_experiment(cfg, reporter=report_stage)
    run = RunDir.open(res.out)
    print(run.read_neuron_table())
    print(f"wrote {run.path}: " + ", ".join(sorted(p.name for p in Path(run.path).iterdir())))
    if run.report_path.is_file():
        print(f"report: {run.report_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run``: one option per `ExperimentConfig` field, plus ``--config``."""
    p = sub.add_parser("run", help="the whole experiment: statistics, selection, categories, evaluation, report")
    p.add_argument("--config", default=None, help="TOML/JSON experiment config (see examples/); options given here win")
    p.add_argument("--dry-run", action="store_true", help="check the settings, the model spec and every corpus and "
                   "print what each stage will read, with rough token counts; loads no model, streams nothing")
    add_options(p, ExperimentConfig, given_only=True)
    p.set_defaults(func=_cmd)


__all__ = ["config_from_args", "register"]
