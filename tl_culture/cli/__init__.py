"""The ``tl-culture`` command line: one short module per subcommand over the Python API."""

from tl_culture.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
