"""`SteerEval`: the continuations of a steering evaluation, their languages, and the rates.

The JSON file (``save``/``load``) holds, at the top, the rates of the first decoding mode
(greedy when run):

    target_language, n_prompts, mode,
    baseline_rate, baseline_ci, steered_rate, steered_ci, control_rate, control_ci,
    steered_minus_control, steered_minus_control_ci

then ``modes`` (the same per mode, with language counts), ``meta`` (intervention, controls,
decoding, identifier), ``prompts`` and ``outputs`` (one record per continuation: prompt index,
mode, condition, draw, text, language). Loading recomputes every rate from ``outputs``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from tl_culture._io import write_json_atomic
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.bootstrap import CI_LEVEL
from tl_culture.evaluation.rates import paired_share_ci, wilson_ci

KIND = "steer_eval"
CONDITIONS = ("baseline", "steered", "control")


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


@dataclass
class SteerEval:
    """A steering evaluation (`tl_culture.evaluation.steering.steer_eval`).

    Attributes:
        target_language: the language code measured.
        prompts: the prompt texts.
        outputs: one dict per continuation: ``prompt`` (index), ``mode``, ``condition``,
            ``draw`` (control draw, else 0), ``text``, ``language``.
        meta: how it was made (intervention, controls, decoding, identifier, level).
    """

    target_language: str
    prompts: list[str]
    outputs: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def modes(self) -> list[str]:
        """Decoding modes present, in the order they were run."""
        return list(dict.fromkeys(o["mode"] for o in self.outputs))

    def conditions(self, mode: str) -> list[str]:
        """Conditions present for ``mode`` (of baseline, steered, control)."""
        have = {o["condition"] for o in self.outputs if o["mode"] == mode}
        return [c for c in CONDITIONS if c in have]

    def shares(self, condition: str, mode: str = "greedy") -> Float[torch.Tensor, " prompt"]:
        """Per prompt, the share of its continuations in the target language."""
        hit = torch.zeros(self.n_prompts, dtype=torch.float64)
        n = torch.zeros(self.n_prompts, dtype=torch.float64)
        for o in self.outputs:
            if o["mode"] == mode and o["condition"] == condition:
                n[o["prompt"]] += 1
                hit[o["prompt"]] += float(o["language"] == self.target_language)
        if not bool((n > 0).all()):
            raise TLCultureError(f"no {mode} {condition} continuation for some prompts; conditions: "
                                 f"{self.conditions(mode)}, modes: {self.modes}")
        return hit / n

    def rate(self, condition: str, mode: str = "greedy") -> tuple[float, float, float]:
        """``(rate, ci_low, ci_high)``: the target-language share and its Wilson CI over prompts."""
        level = float(self.meta.get("level", CI_LEVEL))
        share = float(self.shares(condition, mode).mean())
        return (share, *wilson_ci(share, self.n_prompts, level))

    def difference(self, a: str, b: str, mode: str = "greedy", n_boot: int = 1000) -> tuple[float, float, float]:
        """``rate(a) − rate(b)`` with a paired bootstrap CI over prompts (seeded with the run's seed)."""
        level = float(self.meta.get("level", CI_LEVEL))
        seed = int(self.meta.get("decoding", {}).get("seed", 0))
        return paired_share_ci(self.shares(a, mode), self.shares(b, mode), n_boot=n_boot, level=level, seed=seed)

    def languages(self, condition: str, mode: str = "greedy") -> dict[str, int]:
        """How many continuations got each language code, most frequent first."""
        c = Counter(o["language"] for o in self.outputs if o["mode"] == mode and o["condition"] == condition)
        return dict(c.most_common())

    def summary(self, mode: str) -> dict[str, Any]:
        """Rates, CIs, paired differences and language counts of one decoding mode."""
        out: dict[str, Any] = {}
        conds = self.conditions(mode)
        for c in conds:
            r, lo, hi = self.rate(c, mode)
            out[f"{c}_rate"], out[f"{c}_ci"] = _num(r), [_num(lo), _num(hi)]
            out[f"{c}_languages"] = self.languages(c, mode)
        for other in ("control", "baseline"):
            if "steered" in conds and other in conds:
                d, lo, hi = self.difference("steered", other, mode)
                out[f"steered_minus_{other}"], out[f"steered_minus_{other}_ci"] = _num(d), [_num(lo), _num(hi)]
        return out

    def to_dict(self) -> dict[str, Any]:
        modes = self.modes
        first = self.summary(modes[0]) if modes else {}
        top = {k: v for k, v in first.items() if not k.endswith("_languages")}
        return {"kind": KIND, "target_language": self.target_language, "n_prompts": self.n_prompts,
                "mode": modes[0] if modes else None, **top,
                "modes": {m: self.summary(m) for m in modes}, "meta": self.meta,
                "prompts": self.prompts, "outputs": self.outputs}

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON file described in the module docstring."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteerEval:
        """Read a file written by `save`."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TLCultureError(f"{p}: cannot read a steering evaluation ({exc})") from None
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise TLCultureError(f"{p}: not a steering evaluation file (kind {KIND!r}); write one with steer_eval")
        return cls(d["target_language"], list(d["prompts"]), list(d["outputs"]), dict(d.get("meta") or {}))

    def table(self) -> str:
        """A plain-text table: one row per mode and condition (rate [CI], languages)."""
        lines = [f"target language {self.target_language}, {self.n_prompts} prompts; "
                 f"{self.meta.get('intervention', '')}"]
        for m in self.modes:
            for c in self.conditions(m):
                r, lo, hi = self.rate(c, m)
                top = ", ".join(f"{k} {v}" for k, v in list(self.languages(c, m).items())[:4])
                lines.append(f"{m:<8} {c:<9} {r:6.1%} [{lo:6.1%}, {hi:6.1%}]   {top}")
            if "steered" in self.conditions(m) and "control" in self.conditions(m):
                d, lo, hi = self.difference("steered", "control", m)
                lines.append(f"{m:<8} steered − control {d:+.1%} [{lo:+.1%}, {hi:+.1%}]")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


__all__ = ["CONDITIONS", "KIND", "SteerEval"]
