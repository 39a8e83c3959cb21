"""``tl-culture explore RUN_DIR``: the run's neuron explorer alone, as one offline page.

Without ``--model`` the page shows what the run folder holds. With ``--model``, a folder without
top contexts and direct effects (a run made with ``--no-examples``) gets them first, computed on
the run's own selection text (`tl_culture.experiment.run.add_examples`) and kept in the folder.
"""

from __future__ import annotations

import argparse

from tl_culture.cli._common import positive_int
from tl_culture.cli._options import add_option, add_options, signature_defaults
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.run import add_examples
from tl_culture.experiment.rundir import RunDir
from tl_culture.model.load import load_model
from tl_culture.report.explorer import write_explorer


def _cmd(args: argparse.Namespace) -> int:
    run = RunDir.open(args.run_dir)
    if args.model and None in run.read_examples():
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        add_examples(run, model, args.examples_tokens)
    print(write_explorer(run, args.out, contexts=args.contexts))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``explore``: options with the defaults of `write_explorer` and `ExperimentConfig`."""
    p = sub.add_parser("explore", help="write RUN_DIR/explorer.html: every selected neuron, its per-group P, top "
                       "contexts and promoted tokens; prints its path")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `tl-culture run`")
    p.add_argument("--out", default=None, help="where to write the page (default: RUN_DIR/explorer.html)")
    contexts = signature_defaults(write_explorer)["contexts"]
    add_option(p, "--contexts", "top contexts shown per neuron and group", contexts, type=positive_int)
    p.add_argument("--model", default=None, help="compute the top contexts and direct effects the folder lacks with "
                   "this model ('default', a HF folder or hub name)")
    add_options(p, ExperimentConfig, ("device", "dtype", "examples_tokens"))
    p.set_defaults(func=_cmd)


__all__ = ["register"]
