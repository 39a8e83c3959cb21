"""The ``tl-culture`` parser and entry point.

Each subcommand module in `COMMANDS` has ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. User errors (`TLCultureError`, bad files, a full disk, out of memory) print
one line ``tl-culture: error: ...`` and exit 2; ``--debug`` shows the traceback. Ctrl-C prints one
line and exits 130, SIGTERM 143 (a `tl-culture run` stopped either way continues when rerun).
Warnings print as one line ``tl-culture: note: ...``. `main` returns the exit code (also for usage
errors, ``--help`` and ``--version``), so it can be called in-process.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from contextlib import contextmanager

from tl_culture._version import __version__
from tl_culture.cli import collect, evaluate, explore, identify, neurons, report, run, steer
from tl_culture.errors import TLCultureError
from tl_culture.model.forward import is_oom

#: The subcommands, in the order of the pipeline (and of ``--help``).
COMMANDS = (collect, identify, neurons, run, evaluate, steer, report, explore)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        words = self.prog.split()
        where = f"tl-culture {words[-1]}" if len(words) > 1 else "tl-culture"
        self.exit(2, f"tl-culture: error: {message}; see {where} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = _Parser(prog="tl-culture", description="Find, edit and show language and culture neurons.")
    parser.add_argument("--version", action="version", version=f"tl-culture {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    for p in sub.choices.values():  # --debug also works after the subcommand
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback")
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def error_line(exc: BaseException) -> str:
    """What ``tl-culture: error:`` says about ``exc``: the problem and the fix, on one line."""
    if isinstance(exc, TLCultureError):
        return _one_line(exc)
    if is_oom(exc):
        return "out of memory; use a smaller --batch-size (or --seq-len)"
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file; check the path"
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: permission denied; choose another --out"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc.filename or 'disk'}: no space left; free some space and rerun the same command"
    return f"unexpected {type(exc).__name__}: {_one_line(exc)[:300]} (rerun with --debug for the traceback)"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that open files and locks are released."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tl-culture: note: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


@contextmanager
def _cli_signals_and_notes():
    """One-line warnings, and SIGTERM as `Terminated`, for the block (restored after)."""
    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    if in_main:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _note
            yield
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


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
    stopped = "outputs written so far are complete files; `tl-culture run` continues where it stopped when rerun"
    try:
        with _cli_signals_and_notes():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"tl-culture: interrupted; {stopped}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"tl-culture: terminated; {stopped}", file=sys.stderr)
        return 143
    except Exception as exc:
        if args.debug:
            raise
        print(f"tl-culture: error: {error_line(exc)}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "build_parser", "error_line", "main"]
