"""The scoring fast path: next-token NLLs from a bridge's own HF modules and a fused head.

Inside `bridge_fast_path` (the module swap the counting fast path uses) a TransformerBridge's HF
causal LM runs without its wrappers, with the HF attention ``attention`` (sdpa by default). The
forward stops at the input of the output embedding (`StopForward`): the final hidden states, after
the model's final norm, go to `fused_nll`, which never materialises ``[rows, pos, vocab]`` logits.

TransformerLens forward hooks on the MLP neuron hook points given to `NativeScorer.nll` (an
intervention's ``fwd_hooks``) run as plain torch hooks on the HF modules their hook points read (`hook_target`):

    hook point aliasing X.hook_in   ->  forward pre-hook on X's HF module, editing its first input
    hook point aliasing X.hook_out  ->  forward hook on X's HF module, editing its output

e.g. ``blocks.{l}.mlp.hook_post`` is the input of the down projection. The scorer computes what
``model(ids)`` with those hooks and a log-softmax compute, up to kernel rounding;
`tl_culture.evaluation.scorer` checks that on a probe before using it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tl_culture.errors import TLCultureError
from tl_culture.model.bridge import bridge_fast_path, hook_target, native_problem
from tl_culture.model.forward import StopForward, until_stop
from tl_culture.model.fused_head import VOCAB_BLOCK, Unembed, fused_nll
from tl_culture.model.hooks import MLPHooks

FwdHooks = Sequence[tuple[str, Callable[..., Any]]]


def _torch_hook(module: torch.nn.Module, side: str, fn: Callable[..., Any]) -> torch.utils.hooks.RemovableHandle:
    """Register TransformerLens hook ``fn(tensor, hook)`` on ``module``'s first input or its output."""
    if side == "in":

        def pre(mod: Any, args: tuple) -> tuple | None:
            new = fn(args[0], None)
            return None if new is None else (new, *args[1:])

        return module.register_forward_pre_hook(pre)
    return module.register_forward_hook(lambda mod, args, out: fn(out, None))


def scoring_problem(model: Any, mlp: MLPHooks) -> str | None:
    """Why ``model`` cannot be scored on the fast path (None: it can, subject to the probe check)."""
    problem = native_problem(model, mlp)
    if problem is None and not callable(getattr(model.original_model, "get_output_embeddings", None)):
        problem = f"{type(model.original_model).__name__} is not a HF causal LM with an output embedding"
    return problem


class NativeScorer:
    """Per-token next-token NLLs of a TransformerBridge on its HF modules (see the module doc).

    Use `scoring_problem` first, then call `nll` inside `active`.

    Args:
        model: a TL 4.x `TransformerBridge` with no TransformerLens hooks attached.
        mlp: its `MLPHooks`.
        attention: an HF attention implementation (``"sdpa"``), or None for the bridge's own.
        block: vocabulary rows per block of the fused head.
    """

    def __init__(self, model: Any, mlp: MLPHooks, attention: str | None = "sdpa", block: int = VOCAB_BLOCK) -> None:
        problem = scoring_problem(model, mlp)
        if problem is not None:
            raise TLCultureError(f"the native scorer cannot run: {problem}; use backend='hooks'")
        self.model, self.mlp, self.attention, self.block = model, mlp, attention, block
        self.root: torch.nn.Module = model.original_model
        self._head: Unembed | None = None
        self._hidden: list[torch.Tensor] = []
        #: the HF module and side of every MLP hook point, resolved while the wrappers are in place
        self.targets = {name: hook_target(model, name) for layer in range(mlp.n_layers) for name in mlp.names(layer)}

    @contextmanager
    def active(self) -> Iterator[NativeScorer]:
        """The model rewired for scoring: HF modules, ``attention``, a stop at the output embedding."""

        def capture(mod: Any, args: tuple) -> None:
            self._hidden.append(args[0])
            raise StopForward

        with bridge_fast_path(self.root, self.attention):
            out = self.root.get_output_embeddings()
            handle = out.register_forward_pre_hook(capture)
            try:
                self._head = Unembed.of(self.root)
                yield self
            finally:
                handle.remove()
                self._head, self._hidden = None, []

    def hidden(
        self, input_ids: Int[torch.Tensor, "batch pos"], attention_mask: torch.Tensor | None = None,
        fwd_hooks: FwdHooks = (),
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """Final hidden states (after the final norm) of one forward with ``fwd_hooks`` (inside `active`)."""
        if self._head is None:
            raise TLCultureError("call NativeScorer inside its active() context")
        kwargs: dict[str, Any] = {"use_cache": False}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        with ExitStack() as stack:
            for name, fn in fwd_hooks:
                if name not in self.targets:
                    why = f"the native scorer runs MLP neuron hooks only, not {name}"
                    raise TLCultureError(f"{why}; use backend='hooks'")
                stack.callback(_torch_hook(*self.targets[name], fn).remove)
            stopped = until_stop(self.root, input_ids, **kwargs)
        if not stopped or not self._hidden:
            raise TLCultureError("the native forward did not reach the output embedding; use backend='hooks'")
        return self._hidden.pop()

    def nll(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        count_mask: Bool[torch.Tensor, "batch pos"],
        attention_mask: torch.Tensor | None = None,
        fwd_hooks: FwdHooks = (),
    ) -> list[Float[torch.Tensor, " n"]]:
        """Per row, the float64 NLL of every counted target token (``count_mask[:, 1:]``), in position order."""
        h = self.hidden(input_ids, attention_mask, fwd_hooks)
        tmask = count_mask[:, 1:].to(h.device)
        scored = fused_nll(h[:, :-1][tmask], input_ids[:, 1:].to(h.device)[tmask], self._head, self.block)
        return list(scored.double().cpu().split(tmask.sum(1).tolist()))


__all__ = ["NativeScorer", "scoring_problem"]
