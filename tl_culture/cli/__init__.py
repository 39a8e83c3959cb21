"""The ``tl-culture`` command line: a thin layer over the Python API.

Each module of this package that defines ``register(subparsers)`` adds its subcommands; a
subcommand sets ``func(args) -> int``. User errors (`TLCultureError`, bad files, out of memory)
print one line ``tl-culture: error: ...`` and exit 2; ``--debug`` shows the traceback. `main`
returns the exit code (also for usage errors, ``--help`` and ``--version``), so it can be called
in-process.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from tl_culture.errors import TLCultureError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        words = self.prog.split()
        where = f"tl-culture {words[-1]}" if len(words) > 1 else "tl-culture"
        self.exit(2, f"tl-culture: error: {message}; see {where} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from tl_culture._version import __version__

    parser = _Parser(prog="tl-culture", description="Find, edit and show language and culture neurons.")
    parser.add_argument("--version", action="version", version=f"tl-culture {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    for p in sub.choices.values():  # --debug also works after the subcommand
        try:
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback")
        except argparse.ArgumentError:
            pass
    return parser


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, (MemoryError, oom)) or "out of memory" in text or "can't allocate memory" in text


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tl-culture`` and ``python -m tl_culture``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tl-culture: interrupted; outputs written so far are complete files", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, TLCultureError):
            msg = _one_line(exc)
        elif _is_oom(exc):
            msg = "out of memory; use a smaller --batch-size (or --seq-len)"
        elif isinstance(exc, FileNotFoundError):
            msg = f"{exc.filename}: no such file; check the path"
        elif isinstance(exc, PermissionError):
            msg = f"{exc.filename}: permission denied; choose another --out"
        else:
            msg = f"unexpected {type(exc).__name__}: {_one_line(exc)[:300]} (rerun with --debug for the traceback)"
        print(f"tl-culture: error: {msg}", file=sys.stderr)
        return 2
