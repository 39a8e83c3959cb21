"""``tl-culture report``: its options (the report itself is tested in tests/report)."""

from __future__ import annotations

from tests.cli.conftest import help_text, option_help
from tl_culture.cli import build_parser
from tl_culture.cli._options import signature_defaults
from tl_culture.report.write import write_report


def test_options_default_to_write_report(capsys):
    max_tokens = signature_defaults(write_report)["max_tokens"]
    args = build_parser().parse_args(["report", "runs/x"])
    assert (args.run_dir, args.model, args.device, args.dtype, args.text, args.max_tokens) == (
        "runs/x", None, None, None, None, max_tokens)
    text = help_text(capsys, "report")
    assert f"(default: {max_tokens})" in option_help(text, "--max-tokens", ["--max-tokens", "--debug"])
