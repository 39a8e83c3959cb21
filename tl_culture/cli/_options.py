"""Command-line options generated from dataclass fields, with defaults from their one home.

`add_options` turns fields of a dataclass (`tl_culture.experiment.config.ExperimentConfig`) into
argparse options. A field with ``metadata["help"]`` becomes one option:

- flag: ``metadata["flag"]``, else ``--`` + the field name with dashes (``seq_len`` -> ``--seq-len``);
  the parsed value keeps the field name (``--controls`` -> ``control_seeds``);
- help: ``metadata["help"]`` followed by the default (``(default: 256)``) unless it is None;
- value: ``metadata["check"]`` (``"positive"``, ``"count"``, ``"rate"``) parses and checks it, so
  a bad value is a one-line usage error; else the field's type (int, float or str), with
  ``metadata["choices"]`` where given;
- a bool field is a switch that sets the opposite of its default (``--no-eval``, ``--stability``);
- a dict field is a repeated ``NAME=VALUE`` option (``--language en=en.txt``), read by `given`.

Other subcommands reuse these fields (their help and checks) with the defaults of the function
they call (`signature_defaults`), so no default is typed twice.

Why not a library: simple-parsing and tyro both build the dataclass while parsing, so a
``--config`` file cannot take its place between the command line and the defaults; both add
option strings of their own (``--activation-bar-ratio``, ``--noevaluate``, ``--evaluate/--no-evaluate``)
and read a dict field as ``KEY VALUE`` pairs or a literal rather than repeated ``NAME=PATH``; and
tyro prints its errors as multi-line panels, where tl-culture prints one line
``tl-culture: error: ...``. The mapping needed here is this one small function over
`dataclasses.fields` and the standard library's argparse.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, fields
from typing import Any

from tl_culture.cli._common import non_negative_int, pairs_to_dict, positive_int, unit_rate

CHECKS: dict[str, Callable[[str], Any]] = {"positive": positive_int, "count": non_negative_int, "rate": unit_rate}


def signature_defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """The default of every parameter of ``func`` that has one."""
    params = inspect.signature(func).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int; ``dict[str, str]`` -> dict; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _option_fields(cls: type) -> dict[str, tuple[Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, _base_type(hints[f.name])) for f in fields(cls) if "help" in f.metadata}


def _field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def flag_of(f: Field) -> str:
    """The option string of a field."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def with_default(help_text: str, default: Any) -> str:
    """``help_text`` for argparse (``%`` escaped), followed by ``(default: X)`` unless the default is None."""
    help_text = help_text.replace("%", "%%")
    if default is None:
        return help_text
    return f"{help_text} (default: {default:g})" if isinstance(default, float) else f"{help_text} (default: {default})"


def add_option(parser: argparse.ArgumentParser, flag: str, help_text: str, default: Any, **kw: Any) -> None:
    """One option whose default comes from elsewhere (a function signature), shown in its help."""
    parser.add_argument(flag, default=default, help=with_default(help_text, default), **kw)


def _kwargs(f: Field, kind: Any, default: Any) -> dict[str, Any]:
    """`add_argument` keywords of one field, its help showing ``default``."""
    help_only = with_default(f.metadata["help"], None)
    if kind is bool:
        return dict(action="store_const", const=not default, default=default, help=help_only)
    if kind is dict:
        metavar = f.metadata.get("metavar", "NAME=VALUE")
        return dict(action="append", metavar=metavar, default=None, help=help_only)
    help_text = with_default(f.metadata["help"], default)
    value = CHECKS[f.metadata["check"]] if "check" in f.metadata else kind if kind in (int, float) else str
    kw = dict(type=value, default=default, help=help_text, choices=f.metadata.get("choices"))
    if "choices" not in f.metadata:  # named after the flag: --controls N is CONTROLS, not CONTROL_SEEDS
        kw["metavar"] = f.metadata.get("metavar", flag_of(f).lstrip("-").replace("-", "_").upper())
    return kw


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    names: Iterable[str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    given_only: bool = False,
) -> None:
    """Add an option for each of the fields ``names`` of dataclass ``cls`` (default: all with help).

    Args:
        parser: where to add them.
        cls: the dataclass whose field metadata describe the options.
        names: which fields, in this order.
        defaults: field name -> default, for options whose default comes from another home (the
            function the subcommand calls); the others show and use the field's default.
        given_only: leave an option that is not on the command line out of the parsed namespace
            (its help still shows the field's default), so that `given` returns only what was typed.
    """
    known = _option_fields(cls)
    for name in names if names is not None else known:
        f, kind = known[name]
        default = defaults[name] if defaults is not None and name in defaults else _field_default(f)
        kw = _kwargs(f, kind, default)
        if given_only:
            kw["default"] = argparse.SUPPRESS
        parser.add_argument(flag_of(f), dest=name, **kw)


def given(args: argparse.Namespace, cls: type, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The values of ``cls``'s options (or of the fields ``names``) in ``args``, by field name.

    A repeated NAME=VALUE option becomes a dict.

    Raises:
        TLCultureError: a NAME=VALUE option is malformed or names a key twice.
    """
    out: dict[str, Any] = {}
    known = _option_fields(cls)
    for name in names if names is not None else known:
        f, kind = known[name]
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if kind is dict and value is not None:
            value = pairs_to_dict(value, f.metadata.get("metavar", "NAME=VALUE"))
        out[name] = value
    return out


__all__ = ["CHECKS", "add_option", "add_options", "flag_of", "given", "signature_defaults", "with_default"]
