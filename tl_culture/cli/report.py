"""``tl-culture report RUN_DIR``: the run folder's self-contained HTML report."""

from __future__ import annotations

import argparse

from tl_culture.cli._common import positive_int
from tl_culture.cli._options import add_option, add_options, signature_defaults
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.model.load import load_model
from tl_culture.report.write import write_report


def _cmd(args: argparse.Namespace) -> int:
    model = load_model(args.model, device=args.device, dtype=args.dtype) if args.model else None
    texts = list(args.text) if args.text else None
    print(write_report(args.run_dir, model=model, texts=texts, max_tokens=args.max_tokens))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report``: options with the defaults of `write_report`."""
    p = sub.add_parser("report", help="write RUN_DIR/report.html (figures, tables, token views); prints its path")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `tl-culture run`")
    p.add_argument("--model", default=None,
                   help="also show token views, computed with this model ('default', a HF folder or hub name)")
    add_options(p, ExperimentConfig, ("device", "dtype"))
    p.add_argument("--text", action="append", metavar="TEXT",
                   help="a text for the token views (repeat); default: a held-out document per culture")
    max_tokens = signature_defaults(write_report)["max_tokens"]
    add_option(p, "--max-tokens", "tokens shown per text", max_tokens, type=positive_int)
    p.set_defaults(func=_cmd)


__all__ = ["register"]
