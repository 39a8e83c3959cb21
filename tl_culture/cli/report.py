"""Subcommand ``report RUN_DIR``: the run folder's self-contained HTML report."""

from __future__ import annotations

import argparse

from tl_culture.cli._common import positive_int


def _cmd_report(args: argparse.Namespace) -> int:
    from tl_culture.report.write import write_report

    model = None
    if args.model:
        from tl_culture import load_model

        model = load_model(args.model, device=args.device, dtype=args.dtype)
    texts = list(args.text) if args.text else None
    print(write_report(args.run_dir, model=model, texts=texts, max_tokens=args.max_tokens))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html (figures, tables, token views); prints its path")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `tl-culture run`")
    p.add_argument("--model", default=None,
                   help="also show token views, computed with this model ('default', a HF folder or hub name)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--text", action="append", metavar="TEXT",
                   help="a text for the token views (repeat); default: a held-out document per culture")
    p.add_argument("--max-tokens", type=positive_int, default=48, help="tokens shown per text (default 48)")
    p.set_defaults(func=_cmd_report)


__all__ = ["register"]
