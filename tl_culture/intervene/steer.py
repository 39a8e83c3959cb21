"""Steering: continue one prompt with and without an intervention, side by side.

Decoding is `tl_culture.intervene.decode.decode` (the HF model's KV cache where the bridge fast
path reproduces the model, else a loop of full TransformerLens forwards; the same tokens). Each step

    greedy (temperature = 0):  x_{t+1} = argmax logits_t
    sampling:                  x_{t+1} ~ softmax(logits_t / temperature), restricted to the top_k

Both runs draw from generators seeded with the same ``seed``, so with the same logits they pick the
same tokens: any difference comes from the intervention.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import torch

from tl_culture.data.rows import prompt_ids
from tl_culture.errors import TLCultureError
from tl_culture.intervene.decode import decode
from tl_culture.intervene.interventions import Intervention


@dataclass
class SteerResult:
    """A prompt and its two continuations.

    Attributes:
        prompt: the prompt text ('' for a token prompt).
        baseline: continuation without the intervention (text; token ids joined if no tokenizer).
        steered: continuation with the intervention.
        baseline_tokens, steered_tokens: the generated token ids.
        meta: intervention name, seed, temperature, ...
    """

    prompt: str
    baseline: str
    steered: str
    baseline_tokens: list[int]
    steered_tokens: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def side_by_side(self, width: int = 100) -> str:
        """Two wrapped columns: baseline | steered."""
        col = max(20, (width - 3) // 2)
        left = textwrap.wrap(self.baseline.replace("\n", " ⏎ "), col) or [""]
        right = textwrap.wrap(self.steered.replace("\n", " ⏎ "), col) or [""]
        n = max(len(left), len(right))
        left += [""] * (n - len(left))
        right += [""] * (n - len(right))
        head = [f"prompt: {self.prompt}", f"{'baseline':<{col}} | steered: {self.meta.get('intervention', '')}",
                f"{'-' * col}-+-{'-' * col}"]
        return "\n".join(head + [f"{a:<{col}} | {b}" for a, b in zip(left, right, strict=True)])

    def __str__(self) -> str:
        return self.side_by_side()


def _prompt_ids(model: Any, prompt: str | torch.Tensor) -> torch.Tensor:
    if isinstance(prompt, torch.Tensor):
        ids = prompt.long().flatten()
        if ids.numel() == 0:
            raise TLCultureError("the prompt has no tokens; give some text")
        return ids[None]
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise TLCultureError("this model has no tokenizer; give the prompt as a 1-D tensor of token ids")
    if not str(prompt).strip():
        raise TLCultureError("the prompt is empty; give some text")
    return prompt_ids(tok, str(prompt))[None]


def generate(
    model: Any,
    prompt: str | torch.Tensor,
    intervention: Intervention,
    *,
    max_new_tokens: int = 40,
    seed: int = 0,
    temperature: float = 0.0,
    top_k: int | None = 50,
    stop_at_eos: bool = True,
) -> SteerResult:
    """Continue ``prompt`` without and with ``intervention``.

    Args:
        model: a TransformerLens model (with a tokenizer for a text prompt).
        prompt: text (a BOS is prepended) or a 1-D tensor of token ids.
        intervention: what to apply in the steered run (e.g. ``scale(culture, "fa", 4)``).
        max_new_tokens: tokens to generate per run.
        seed: seed of the sampler (the same for both runs).
        temperature: 0 for greedy decoding, > 0 to sample.
        top_k: sample only among the top_k tokens (None = all).
        stop_at_eos: stop a run at the tokenizer's EOS token.

    Returns:
        A `SteerResult`; ``print(result)`` shows the two continuations side by side.
    """
    if not isinstance(intervention, Intervention):
        raise TLCultureError(f"expected an Intervention (ablate/scale/set_to), got {type(intervention).__name__}")
    if max_new_tokens < 1:
        raise TLCultureError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise TLCultureError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise TLCultureError(f"top_k must be at least 1 (or None), got {top_k}")
    intervention.validate(model)
    ids = _prompt_ids(model, prompt)
    tok = getattr(model, "tokenizer", None)
    eos = getattr(tok, "eos_token_id", None) if (tok is not None and stop_at_eos) else None
    kw = dict(max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k, seed=seed, eos=eos)
    base = decode(model, [ids[0]], None, **kw)[0]
    steered = decode(model, [ids[0]], intervention, **kw)[0]

    def text(t: list[int]) -> str:
        if tok is None:
            return " ".join(map(str, t))
        return tok.decode(t, skip_special_tokens=True)

    meta = {"intervention": intervention.name, "seed": seed, "temperature": temperature, "top_k": top_k,
            "max_new_tokens": max_new_tokens, "prompt_tokens": int(ids.shape[1])}
    return SteerResult(prompt if isinstance(prompt, str) else "", text(base), text(steered), base, steered, meta)


__all__ = ["SteerResult", "generate"]
