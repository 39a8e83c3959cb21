"""Value parsers and file helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from tl_culture.errors import TLCultureError
from tl_culture.selection.neurons import NeuronSet


def name_eq_value(text: str, what: str = "NAME=PATH") -> tuple[str, str]:
    """Parse ``NAME=VALUE``; a clear error otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise TLCultureError(f"{text!r} is not {what}; write it like en=path/to/en.txt")
    return name.strip(), value.strip()


def pairs_to_dict(items: list[str] | None, what: str = "NAME=PATH") -> dict[str, str]:
    """Parse repeated ``NAME=VALUE`` options into an ordered dict, refusing duplicates."""
    out: dict[str, str] = {}
    for item in items or []:
        k, v = name_eq_value(item, what)
        if k in out:
            raise TLCultureError(f"{k!r} is given twice; give each name once")
        out[k] = v
    return out


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    return _int_at_least(text, 1, "a positive whole number")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0."""
    return _int_at_least(text, 0, "0 or more")


def unit_rate(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {v}")
    return v


def group_list(text: str | None) -> list[str] | None:
    """``"en,zh, fr"`` -> ``["en", "zh", "fr"]``; None stays None."""
    return [g.strip() for g in text.split(",") if g.strip()] if text else None


def is_reference(path: str) -> bool:
    """A published LAPE ``.pth`` file (rather than our safetensors)."""
    return str(path).endswith((".pth", ".pt"))


def load_neurons(path: str, groups: list[str] | None = None, model=None) -> NeuronSet:
    """Our NeuronSet file, or a reference ``.pth`` file (its groups named by ``groups``), sized to
    ``model`` when given."""
    if not is_reference(path):
        return NeuronSet.load(path)
    if not groups:
        raise TLCultureError(f"{path} is a reference file; name its groups with --groups en,zh,...")
    if model is None:
        return NeuronSet.load_reference(path, groups)
    return NeuronSet.load_reference(path, groups, n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp)


def add_neuron_file_args(p: argparse.ArgumentParser, groups_help: str) -> None:
    """``--neurons FILE`` and ``--groups`` of the commands that apply a neuron set."""
    p.add_argument("--neurons", required=True, help="neuron-set file (ours, or a reference .pth with --groups)")
    p.add_argument("--groups", default=None, help=groups_help)


__all__ = [
    "add_neuron_file_args",
    "group_list",
    "is_reference",
    "load_neurons",
    "name_eq_value",
    "non_negative_int",
    "pairs_to_dict",
    "positive_int",
    "unit_rate",
]
