"""A model's usable context, read once, and the one rule every stage that packs rows applies to it.

Two limits, from the model's config:

- ``positions``: positions the model can run at all, where positions index a table (GPT-2's
  ``n_positions``, OPT's learned positions, a TL 3.x `HookedTransformer`'s ``cfg.n_ctx``, whose
  rotary tables also have ``n_ctx`` rows). A longer row fails inside the model.
- ``trained``: positions the model was trained on, where it can run further (rotary or ALiBi
  models: ``max_position_embeddings``). A longer row runs, on positions the model never saw.

The rule (`check_seq_len`): a row of ``seq_len`` tokens needs ``seq_len ≤ positions``, always, and
``seq_len ≤ trained`` unless the caller allows positions beyond training (``allow_long_context``,
``--allow-long-context``). Where neither limit is known the tokenizer's ``model_max_length`` is
the ``trained`` limit (when it is a real number, not a "no limit" sentinel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tl_culture.errors import TLCultureError

#: HF model types whose positions index a learned table sized by ``max_position_embeddings``.
LEARNED_POSITIONS = ("opt", "gpt_neo", "biogpt", "xglm", "bert", "roberta", "gpt_bigcode")
#: A tokenizer ``model_max_length`` at or above this means "no limit" (transformers uses 1e30).
NO_LIMIT = 10**9


@dataclass(frozen=True)
class Context:
    """A model's context limits (None: not known, or none).

    Attributes:
        positions: positions it can run at all.
        trained: positions it was trained on.
        source: where the numbers come from, e.g. ``"n_positions in its HF config"``.
    """

    positions: int | None
    trained: int | None
    source: str = ""

    @property
    def limit(self) -> int | None:
        """The longest row the rule allows without ``allow_long_context``."""
        known = [n for n in (self.positions, self.trained) if n is not None]
        return min(known) if known else None


def context_of_config(config: Any) -> Context:
    """The `Context` of a HF config (a ``PretrainedConfig``; its ``text_config`` where it has one)."""
    cfg = getattr(config, "text_config", None) or config
    model_type = str(getattr(cfg, "model_type", "") or "")
    n_positions = getattr(cfg, "n_positions", None)
    if isinstance(n_positions, int):
        return Context(n_positions, n_positions, "n_positions in its HF config")
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            if model_type in LEARNED_POSITIONS:
                return Context(value, value, f"{key} in its HF config, learned positions")
            return Context(None, value, f"{key} in its HF config")
    return Context(None, None, "its HF config names no context")


def model_context(model: Any) -> Context:
    """The `Context` of a TransformerLens model: a bridge's HF config, or a TL 3.x model's ``cfg.n_ctx``."""
    hf_config = getattr(getattr(model, "original_model", None), "config", None)
    ctx = context_of_config(hf_config) if hf_config is not None else None
    if ctx is None:
        n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
        ctx = (Context(int(n_ctx), int(n_ctx), "cfg.n_ctx of the TransformerLens model") if isinstance(n_ctx, int)
               else Context(None, None, "the model names no context"))
    if ctx.limit is None:
        tok_max = getattr(getattr(model, "tokenizer", None), "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < NO_LIMIT:
            ctx = Context(None, tok_max, "model_max_length of its tokenizer")
    return ctx


def check_seq_len(
    context: Context,
    seq_len: int,
    *,
    name: str = "the model",
    allow_long_context: bool = False,
    what: str = "rows of",
    fix: str | None = None,
) -> None:
    """Refuse ``seq_len`` positions that ``context`` does not allow (see the module doc).

    The message names the Python setting and its command-line flag, so it serves both.

    Args:
        context: the model's `Context` (`model_context`, or `context_of_config` for a config alone).
        seq_len: positions needed: tokens per row, BOS included (or a prompt plus its new tokens).
        name: the model's name, for the message.
        allow_long_context: allow positions beyond ``trained`` (never beyond ``positions``).
        what: what needs the positions, for the message (``"rows of"`` N tokens).
        fix: the fix to name instead of lowering ``seq_len``.

    Raises:
        TLCultureError: one line naming the model's limit and the setting to change.
    """
    def use(n: int) -> str:
        return fix or f"use seq_len {n} or less (--seq-len {n})"

    if context.positions is not None and seq_len > context.positions:
        raise TLCultureError(f"{what} {seq_len} tokens are longer than {name}'s context of {context.positions} "
                             f"positions ({context.source}); {use(context.positions)}")
    if context.trained is not None and seq_len > context.trained and not allow_long_context:
        raise TLCultureError(f"{what} {seq_len} tokens are longer than the {context.trained} positions {name} was "
                             f"trained on ({context.source}); {use(context.trained)}, or allow_long_context=True "
                             "(--allow-long-context) to run positions it was not trained on")


def beyond_training(context: Context, seq_len: int) -> bool:
    """Whether ``seq_len`` positions run past the positions the model was trained on (record it in meta)."""
    return context.trained is not None and seq_len > context.trained


def fit_seq_len(context: Context, default: int) -> int:
    """A default row length that the rule allows: ``min(default, context.limit)``."""
    return default if context.limit is None else min(default, context.limit)


def row_length(
    model: Any, seq_len: int | None, default: int, *, name: str = "the model", allow_long_context: bool = False
) -> tuple[int, Context]:
    """``(seq_len, context)``: the user's ``seq_len`` checked by `check_seq_len`, or, when it is None,
    ``default`` fitted to the model's context (`fit_seq_len`)."""
    context = model_context(model)
    seq_len = fit_seq_len(context, default) if seq_len is None else seq_len
    check_seq_len(context, seq_len, name=name, allow_long_context=allow_long_context)
    return seq_len, context


__all__ = ["LEARNED_POSITIONS", "Context", "beyond_training", "check_seq_len", "context_of_config", "fit_seq_len",
           "model_context", "row_length"]
