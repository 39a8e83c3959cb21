"""The bridge fast path: a `TransformerBridge`'s own HF modules run without the bridge wrappers.

TransformerLens 4.x `TransformerBridge` wraps every module of the HuggingFace model in a bridge
component that runs hook points around the original module. With no TransformerLens hook attached
that work changes nothing the MLP neurons see, but it costs time (benchmarks/README.md). The
``"native"`` backend of `collect` therefore runs the HF modules themselves inside
`bridge_fast_path` (whose docstring lists what it swaps and restores), with torch hooks on each
layer's gate module (output: ``blocks.{l}.mlp.hook_pre``) and activation module (output:
act_fn(hook_pre), for the sums), and stops after the last layer (`StopForward`).

With the bridge's own attention implementation (eager, which the bridge forces) the same modules
run the same kernels on the same tensors as the TransformerLens hook path, so ``hook_pre`` is the
same bit for bit; `NativeForward.verify` checks this on a probe input before any counting (a
wrapper that changes the computation, e.g. folded weights, fails it) and `collect` falls back to
the hooks otherwise. ``attention="sdpa"`` (what `collect` runs by default) switches the HF configs
to PyTorch's fused attention inside the fast path: its output differs from eager in the last float
bits, so activations within rounding of zero may change sign (docs/scale.md). `verify` checks that
the sdpa forward stays within 5 % of the eager one, else says why in `NativeForward.attention_problem`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float

from tl_culture.errors import TLCultureError
from tl_culture.model.bridge import (
    bridge_fast_path,
    check_backend,
    gate_modules,
    hf_configs,
    native_problem,
    original_module,
    state_signature,
)
from tl_culture.model.forward import StopForward, run_to_layer, until_stop
from tl_culture.model.hooks import MLPHooks

#: Names of a HF MLP's activation module (Llama/Gemma/Qwen/Mistral act_fn, GPT-2/NeoX act, OPT/Phi activation_fn).
ACT_MODULE_NAMES = ("act_fn", "act", "activation_fn", "activation")

#: ``callback(layer, pre, act)``: ``pre`` is ``[..., d_mlp]`` hook_pre in the model dtype; ``act`` is
#: act_fn(pre) from the model's own activation module, or None when it has none to hook.
LayerCallback = Callable[[int, torch.Tensor, torch.Tensor | None], None]


def act_module(hf_mlp: torch.nn.Module | None) -> torch.nn.Module | None:
    """The activation-function module of a HF MLP (a child named in `ACT_MODULE_NAMES`), or None."""
    for name in ACT_MODULE_NAMES:
        child = hf_mlp._modules.get(name) if hf_mlp is not None else None
        if isinstance(child, torch.nn.Module):
            return child
    return None


#: model -> attention -> (state_signature, problem, whether the activation module matched, attention problem)
_CHECKED: weakref.WeakKeyDictionary[Any, dict[str | None, tuple[int, str | None, bool, str | None]]]
_CHECKED = weakref.WeakKeyDictionary()


class NativeForward:
    """The fast path of one model: its HF modules run inside `bridge_fast_path`, hooking MLP neurons.

    Use `native_problem` first; then `verify` on a probe input; then, inside `hooked`, call the
    instance on each batch.

    Args:
        model: a TL 4.x `TransformerBridge` with no TransformerLens hooks attached.
        mlp: its `MLPHooks`.
        attention: None to run the bridge's own attention implementation (the hook path's
            numbers, checked by `verify`), or an HF implementation name such as ``"sdpa"``.
    """

    def __init__(self, model: Any, mlp: MLPHooks, attention: str | None = None) -> None:
        problem = native_problem(model, mlp)
        if problem is not None:
            raise TLCultureError(f"the native backend cannot run: {problem}; use backend='hooks'")
        check_backend("native", attention)
        self.model, self.mlp = model, mlp
        self.root: torch.nn.Module = model.original_model
        own = [c._attn_implementation for c in hf_configs(self.root)]
        #: why ``attention`` cannot run (`verify` fills it in); the bridge's own attention still can
        self.attention_problem: str | None = None
        if attention is not None and not own:
            self.attention_problem = "the model names no HF attention implementation to switch"
            attention = None
        self.attention = None if attention is None or own == [attention] * len(own) else attention
        self.gates = gate_modules(model, mlp)
        acts = [act_module(original_module(model.blocks[layer].mlp)) for layer in range(mlp.n_layers)]
        #: each layer's activation module (its output is act_fn(hook_pre)), or None if any is missing
        self.acts: list[torch.nn.Module] | None = acts if all(a is not None for a in acts) else None
        self._active = False

    @property
    def attn_implementation(self) -> str | None:
        """The attention implementation the fast path runs."""
        configs = hf_configs(self.root)
        return self.attention or (configs[0]._attn_implementation if configs else None)

    @contextmanager
    def hooked(self, callback: LayerCallback, with_act: bool = True) -> Iterator[NativeForward]:
        """Inside `bridge_fast_path`, call ``callback(layer, pre, act)`` on every layer of each forward.

        ``act`` is passed when ``with_act`` and the model has an activation module per layer;
        otherwise it is None. The forward stops once the last layer's callback returned.
        """
        if self._active:
            raise TLCultureError("NativeForward.hooked is already active; it does not nest")
        last = self.mlp.n_layers - 1
        handles = []
        use_act = with_act and self.acts is not None
        pending: dict[int, torch.Tensor] = {}

        def on_gate(layer: int):
            def hook(module: Any, args: Any, out: torch.Tensor) -> None:
                if use_act:
                    pending[layer] = out
                    return
                callback(layer, out, None)
                if layer == last:
                    raise StopForward

            return hook

        def on_act(layer: int):
            def hook(module: Any, args: Any, out: torch.Tensor) -> None:
                pre = pending.pop(layer, None)
                if pre is None:  # not the activation of this layer's gate output (`verify` checks)
                    return
                callback(layer, pre, out)
                if layer == last:
                    raise StopForward

            return hook

        with bridge_fast_path(self.root, self.attention):
            try:
                for layer, gate in enumerate(self.gates):
                    handles.append(gate.register_forward_hook(on_gate(layer)))
                    if use_act:
                        handles.append(self.acts[layer].register_forward_hook(on_act(layer)))
                self._active = True
                yield self
            finally:
                self._active = False
                pending.clear()
                for h in handles:
                    h.remove()

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Run one batch up to the last layer's MLP neurons (inside `hooked`)."""
        if not self._active:
            raise TLCultureError("call NativeForward inside its hooked(...) context")
        kwargs: dict[str, Any] = {"use_cache": False} if hasattr(self.root, "config") else {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if not until_stop(self.root, input_ids, **kwargs):
            raise TLCultureError("the native forward ended without reaching the last MLP layer; use backend='hooks'")

    def verify(self, input_ids: torch.Tensor) -> str | None:
        """Compare ``hook_pre`` of the fast path and the TransformerLens forward on ``input_ids``.

        Returns None when every layer's gate pre-activation is bit-identical (with the bridge's
        attention; close within float rounding with another ``attention``) and the activation
        module's output matches act_fn(pre); otherwise why not. If only the activation module
        does not match, it is dropped (callbacks then get ``act=None``) and None is returned.

        The outcome is remembered for this model as long as its `state_signature` (modules, their
        hooks and patched forwards, parameters and their in-place versions, cfg) and the attention
        stay the same, so repeated `collect` calls on one model check it once.
        """
        known = _CHECKED.get(self.model, {}).get(self.attention)
        if known is not None and known[0] == state_signature(self.model):
            _, problem, acts_ok, self.attention_problem = known
            if not acts_ok:
                self.acts = None
            return problem
        problem = self._verify(input_ids)
        # the signature after the check: the bridge wires its own capture hooks once, on first use
        outcome = (state_signature(self.model), problem, self.acts is not None, self.attention_problem)
        _CHECKED.setdefault(self.model, {})[self.attention] = outcome
        return problem

    def _verify(self, input_ids: torch.Tensor) -> str | None:
        """Structure first (the bridge's attention, bit-identical), then the other attention (close)."""
        bridge = self._bridge_pre(input_ids)
        attention, self.attention = self.attention, None
        try:
            problem = self._compare(input_ids, bridge, exact=True)
            while problem is not None and self.acts is not None:
                self.acts = None  # retry without the activation module
                problem = self._compare(input_ids, bridge, exact=True)
        finally:
            self.attention = attention
        if problem is None and attention is not None:
            self.attention_problem = self._compare(input_ids, bridge, exact=False)
        return problem

    def _bridge_pre(self, input_ids: torch.Tensor) -> list[torch.Tensor | None]:
        L = self.mlp.n_layers
        bridge: list[torch.Tensor | None] = [None] * L

        def tl_hook(layer: int):
            def hook(pre: torch.Tensor, hook: Any = None) -> None:
                bridge[layer] = pre.detach().clone()

            return hook

        with torch.inference_mode():
            hooks = [(self.mlp.pre(layer), tl_hook(layer)) for layer in range(L)]
            run_to_layer(self.model, input_ids, hooks, stop_at=self.mlp.pre(L - 1))
        return bridge

    def _compare(self, input_ids: torch.Tensor, bridge: list[torch.Tensor | None], exact: bool) -> str | None:
        """Why the native ``hook_pre`` differs from ``bridge`` (bit for bit if ``exact``, else beyond
        attention-kernel rounding: 5 % of the layer's largest value), or None."""
        L = self.mlp.n_layers
        native: list[Float[torch.Tensor, "... d_mlp"] | None] = [None] * L
        native_act: list[torch.Tensor | None] = [None] * L

        def keep(layer: int, pre: torch.Tensor, act: torch.Tensor | None) -> None:
            native[layer] = pre.detach().clone()
            native_act[layer] = act.detach().clone() if act is not None else None

        try:
            with torch.inference_mode(), self.hooked(keep):
                self(input_ids)
        except Exception as exc:  # an HF module that cannot run unwrapped, or this attention
            return f"the native forward failed ({type(exc).__name__}: {str(exc).strip()[:200]})"
        for layer in range(L):
            a, b = native[layer], bridge[layer]
            if a is None or b is None or a.shape != b.shape:
                return f"layer {layer}: the native forward does not reach the MLP neurons the hooks see"
            diff = (a.float() - b.float()).abs().max().item()
            if not (torch.equal(a, b) if exact else diff <= 0.05 * b.float().abs().max().item()):
                return f"layer {layer}: hook_pre differs from the TransformerLens forward (max |diff| {diff:.3g})"
            act = native_act[layer]
            if self.acts is not None:
                ref = self.mlp.act(a)
                tol = 1e-5 if ref.dtype == torch.float32 else 1e-2
                if act is None or act.shape != ref.shape or not torch.allclose(act, ref, rtol=tol, atol=tol):
                    return f"layer {layer}: the activation module's output is not act_fn(hook_pre)"
        return None
