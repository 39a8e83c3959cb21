"""Running a model only as far as a hook: the one way tl-culture stops a forward early.

Counting, token views and the bridge fast path need the MLP neurons of some layers, never the
layers above them or the unembedding. A hook raises `StopForward` once the last tensor it needs
has been seen; the forward is run under `until_stop`, which catches it:

    fwd_hooks + [(stop_at, raise StopForward)]    attached with model.hooks(...)
    model(input_ids, ...)                          runs up to the hook point stop_at, then unwinds

TransformerLens runs the hooks of one hook point in the order they were added, so every hook on
``stop_at`` in ``fwd_hooks`` runs before the forward stops. `run_to_layer` does all of this for one
forward; `stop_after` and `until_stop` are its two halves, for callers that attach hooks once and
run many forwards (`tl_culture.counting.counter.Counter`) or hook torch modules directly
(`tl_culture.model.fastpath`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Int

#: A TransformerLens forward hook: ``hook(tensor, hook=HookPoint)``, returning None or a new tensor.
FwdHook = tuple[str, Callable[..., Any]]

_OOM_TYPES: tuple[type[BaseException], ...] = (
    MemoryError,
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
)


class StopForward(Exception):
    """Raised by a hook to skip the rest of a forward; `until_stop` catches it."""


def _stop(tensor: torch.Tensor, hook: Any = None) -> None:
    raise StopForward


def stop_after(fwd_hooks: Sequence[FwdHook], stop_at: str) -> list[FwdHook]:
    """``fwd_hooks`` followed by a hook on ``stop_at`` that raises `StopForward`.

    Args:
        fwd_hooks: TransformerLens ``(hook name, hook)`` pairs; they run unchanged.
        stop_at: the hook point after which the forward ends (its own hooks in ``fwd_hooks`` run first).
    """
    return [*fwd_hooks, (stop_at, _stop)]


def until_stop(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Call ``forward(*args, **kwargs)``; True when a hook ended it with `StopForward`, False when it ran to the end."""
    try:
        forward(*args, **kwargs)
    except StopForward:
        return True
    return False


def run_to_layer(
    model: Any,
    input_ids: Int[torch.Tensor, "batch pos"],
    fwd_hooks: Sequence[FwdHook],
    *,
    stop_at: str,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
) -> bool:
    """Run ``model(input_ids)`` with ``fwd_hooks`` attached, ending it once hook point ``stop_at`` has fired.

    Nothing after ``stop_at`` is computed (no later layer, no unembedding); the hooks are removed
    afterwards, also on errors. Run it under ``torch.inference_mode()`` when nothing needs gradients.

    Args:
        model: a TransformerLens model (TL 4.x `TransformerBridge` or TL 3.x `HookedTransformer`).
        input_ids: ``int64[batch, pos]`` token ids.
        fwd_hooks: TransformerLens ``(hook name, hook)`` pairs that read (or edit) activations.
        stop_at: a hook point name, e.g. ``blocks.{l}.mlp.hook_pre`` of the last layer needed.
        attention_mask: passed to the forward when given (right-padded batches).

    Returns:
        True when the forward stopped at ``stop_at``; False when it ran to the end (``stop_at``
        never fired).
    """
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    with model.hooks(fwd_hooks=stop_after(fwd_hooks, stop_at)):
        return until_stop(model, input_ids, **kwargs)


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` means the device ran out of memory (torch's OOM error, MemoryError, or an
    allocator's RuntimeError saying so)."""
    text = str(exc).lower()
    return isinstance(exc, _OOM_TYPES) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )
