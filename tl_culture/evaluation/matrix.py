"""`NLLMatrix`: mean next-token NLL at baseline and with each group's neurons ablated, and its JSON file.

Rows are the ablated groups, columns the eval corpora; ``delta = ablated − baseline`` (nats/token).
The file is JSON (``kind: "NLLMatrix"``, ``format_version: 1``) with non-finite numbers written as
null and read back as NaN.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture._io import write_json_atomic
from tl_culture.errors import TLCultureError

KIND = "NLLMatrix"
_CELL_FIELDS = ("delta_ci_low", "delta_ci_high", "control_delta", "control_ci_low", "control_ci_high", "paired_delta",
                "paired_ci_low", "paired_ci_high")


def _nan_nested(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_nested(v) for v in x]
    return math.nan if x is None else x


def _json(t: torch.Tensor | None) -> Any:
    if t is None:
        return None
    return _null_nested(t.tolist())


def _null_nested(x: Any) -> Any:
    if isinstance(x, list):
        return [_null_nested(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


@dataclass
class NLLMatrix:
    """Mean next-token NLL at baseline and with each group's neurons ablated.

    Attributes:
        groups: rows: the ablated groups.
        evals: columns: the eval corpora.
        baseline: ``float64[eval]``: mean NLL without intervention (nats/token).
        ablated: ``float64[group, eval]``: mean NLL with the group's neurons ablated.
        tokens: ``int64[eval]``: scored target tokens per eval corpus.
        delta_ci_low, delta_ci_high: ``float64[group, eval]``: bootstrap 95 % CI of delta.
        control_delta: ``float64[group, eval]``: Δ NLL of the random-neuron control (mean over seeds);
            NaN in cells where no control ran (``meta["control_cells"]``).
        control_ci_low, control_ci_high: bootstrap 95 % CI of the control Δ.
        bootstrap_units: ``int64[eval]``: resampling units (documents, long ones in blocks) per
            eval corpus; None for a matrix made without them.
        paired_delta: ``float64[group, eval]``: Δ − control Δ, per token then averaged.
        paired_ci_low, paired_ci_high: its bootstrap 95 % CI, from the resamples of Δ and the
            control; "beats the control" means ``paired_ci_low > 0``.
        meta: settings and provenance (model, seeds, eval corpora, seconds, ...).
    """

    groups: list[str]
    evals: list[str]
    baseline: Float[torch.Tensor, " eval"]
    ablated: Float[torch.Tensor, "group eval"]
    tokens: Int[torch.Tensor, " eval"]
    delta_ci_low: Float[torch.Tensor, "group eval"] | None = None
    delta_ci_high: Float[torch.Tensor, "group eval"] | None = None
    control_delta: Float[torch.Tensor, "group eval"] | None = None
    control_ci_low: Float[torch.Tensor, "group eval"] | None = None
    control_ci_high: Float[torch.Tensor, "group eval"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    bootstrap_units: Int[torch.Tensor, " eval"] | None = None
    paired_delta: Float[torch.Tensor, "group eval"] | None = None
    paired_ci_low: Float[torch.Tensor, "group eval"] | None = None
    paired_ci_high: Float[torch.Tensor, "group eval"] | None = None

    def __post_init__(self) -> None:
        self.groups, self.evals = [str(g) for g in self.groups], [str(e) for e in self.evals]
        G, E = len(self.groups), len(self.evals)
        self.baseline = torch.as_tensor(_nan_nested(self.baseline), dtype=torch.float64).reshape(-1)
        self.tokens = torch.as_tensor(self.tokens, dtype=torch.int64).reshape(-1)
        if self.baseline.shape != (E,) or self.tokens.shape != (E,):
            raise TLCultureError(f"NLLMatrix baseline/tokens must have one value per eval corpus ({E})")
        if self.bootstrap_units is not None:
            self.bootstrap_units = torch.as_tensor(self.bootstrap_units, dtype=torch.int64).reshape(-1)
            if self.bootstrap_units.shape != (E,):
                raise TLCultureError(f"NLLMatrix bootstrap_units must have one value per eval corpus ({E})")
        for name in ("ablated", *_CELL_FIELDS):
            v = getattr(self, name)
            if v is not None:
                t = torch.as_tensor(_nan_nested(v), dtype=torch.float64)
                if G == 0:
                    t = t.reshape(0, E)
                if tuple(t.shape) != (G, E):
                    raise TLCultureError(f"NLLMatrix {name} has shape {tuple(t.shape)}, expected ({G}, {E})")
                setattr(self, name, t)
        if self.ablated is None:
            raise TLCultureError("NLLMatrix needs the ablated NLLs")

    @property
    def delta(self) -> Float[torch.Tensor, "group eval"]:
        """``ablated − baseline[None]`` (nats/token)."""
        return self.ablated - self.baseline[None]

    def cell(self, group: str, eval_name: str) -> float:
        """Δ NLL of ``group`` ablated on ``eval_name``."""
        if group not in self.groups:
            raise TLCultureError(f"unknown group {group!r}; this matrix has {', '.join(self.groups)}")
        if eval_name not in self.evals:
            raise TLCultureError(f"unknown eval corpus {eval_name!r}; this matrix has {', '.join(self.evals)}")
        return float(self.delta[self.groups.index(group), self.evals.index(eval_name)])

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "format_version": 1,
            "groups": self.groups,
            "evals": self.evals,
            "baseline": _json(self.baseline),
            "ablated": _json(self.ablated),
            "delta": _json(self.delta),
            "tokens": self.tokens.tolist(),
            "delta_ci_low": _json(self.delta_ci_low),
            "delta_ci_high": _json(self.delta_ci_high),
            "control_delta": _json(self.control_delta),
            "control_ci_low": _json(self.control_ci_low),
            "control_ci_high": _json(self.control_ci_high),
            "eval_tokens": self.tokens.tolist(),
            "bootstrap_units": None if self.bootstrap_units is None else self.bootstrap_units.tolist(),
            "paired_delta": _json(self.paired_delta),
            "paired_ci_low": _json(self.paired_ci_low),
            "paired_ci_high": _json(self.paired_ci_high),
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (atomic; NaN as null). ``delta`` is included for readers; it is recomputed on load."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> NLLMatrix:
        """Read a file written by `save`."""
        p = Path(path)
        if not p.is_file():
            raise TLCultureError(f"{p}: no such file; check the path")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            why = type(exc).__name__
            raise TLCultureError(f"{p}: not a JSON NLLMatrix file ({why}); it may be corrupted") from None
        if not isinstance(d, dict) or d.get("kind") != KIND:
            kind = d.get("kind") if isinstance(d, dict) else None
            raise TLCultureError(f"{p}: holds a {kind!r} object, not an NLLMatrix; pass an nll/*.json file")
        return cls(d["groups"], d["evals"], d["baseline"], d["ablated"], d["tokens"],
                   **{k: d.get(k) for k in (*_CELL_FIELDS, "bootstrap_units")}, meta=d.get("meta", {}))

    # ---------------------------------------------------------------- display
    def table(self, digits: int = 3) -> str:
        """Plain text: baseline NLL, then Δ NLL per group (with the CI), then the random control."""
        w = max([8] + [len(g) for g in self.groups] + [len("baseline")])
        cw = max([10 if self.delta_ci_low is None else 24] + [len(e) + 1 for e in self.evals])
        head = f"{'':<{w}} " + " ".join(f"{e:>{cw}}" for e in self.evals)
        lines = ["Δ NLL (nats/token): rows = ablated group, columns = eval text", head]
        lines.append(f"{'baseline':<{w}} " + " ".join(f"{float(b):>{cw}.{digits}f}" for b in self.baseline))

        def fmt(v: float, lo: float | None, hi: float | None) -> str:
            if not math.isfinite(v):
                return f"{'-':>{cw}}"
            s = f"{v:+.{digits}f}"
            if lo is not None and math.isfinite(lo):
                s += f" [{lo:+.{digits}f},{hi:+.{digits}f}]"
            return f"{s:>{cw}}"

        def block(vals, lo, hi) -> None:
            for gi, g in enumerate(self.groups):
                cells = [
                    fmt(float(vals[gi, ei]), None if lo is None else float(lo[gi, ei]),
                        None if hi is None else float(hi[gi, ei]))
                    for ei in range(len(self.evals))
                ]
                lines.append(f"{g:<{w}} " + " ".join(cells))

        block(self.delta, self.delta_ci_low, self.delta_ci_high)
        if self.control_delta is not None:
            seeds = self.meta.get("control_seeds", "?")
            lines.append(f"random-neuron control (same per-layer counts, {seeds} seed(s)):")
            block(self.control_delta, self.control_ci_low, self.control_ci_high)
        if self.paired_delta is not None:
            lines.append("Δ − control, paired:")
            block(self.paired_delta, self.paired_ci_low, self.paired_ci_high)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"NLLMatrix({len(self.groups)} groups x {len(self.evals)} evals)"


__all__ = ["KIND", "NLLMatrix"]
