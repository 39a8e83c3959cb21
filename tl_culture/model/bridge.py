"""How a TransformerLens 4.x `TransformerBridge` wraps its HF model, and the swap that takes the wrappers out.

A bridge wraps every module of the HuggingFace model in a component that runs hook points around
the original module (held as ``component._modules["_original_component"]``). The fast paths of
counting (`tl_culture.model.fastpath`) and scoring (`tl_culture.model.scoring`) run the original
modules inside `bridge_fast_path`, after `native_problem` said they can; `hook_target` finds the
HF module whose input or output a hook point reads, and `state_signature` tells when a check of a
fast path against the hooks must be redone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tl_culture.errors import TLCultureError
from tl_culture.model.hooks import MLPHooks

#: How `collect` can run the model: TransformerLens hooks, the fast path, or the fast path when possible.
BACKENDS = ("auto", "hooks", "native")
#: Attention implementations the fast path can switch to (HF names).
ATTENTIONS = ("eager", "sdpa")

def check_backend(backend: str, attention: str | None, *, flags: bool = False) -> None:
    """Raise `TLCultureError` unless ``backend`` and ``attention`` are known and fit together.

    ``attention="sdpa"`` needs the fast path (``"native"`` or ``"auto"``): the hooks backend always
    runs the bridge's own attention. ``flags`` words the message with command-line flags
    (``--backend native``) rather than Python arguments (``backend='native'``).
    """
    if backend not in BACKENDS:
        why = f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
        raise TLCultureError(why if flags else f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if attention is not None and attention not in ATTENTIONS:
        why = f"--attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}"
        raise TLCultureError(why if flags else f"unknown attention {attention!r}; use one of {', '.join(ATTENTIONS)}")
    if attention == "sdpa" and backend == "hooks":
        raise TLCultureError(
            "--attention sdpa needs the native backend; drop it or use --backend native"
            if flags
            else f"attention={attention!r} needs the native backend; drop it or use backend='native'"
        )


def _wrapper_class() -> type | None:
    try:
        from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    except ImportError:  # TransformerLens 3.x: no bridge
        return None
    return GeneralizedComponent


def original_module(component: Any) -> torch.nn.Module | None:
    return component._modules.get("_original_component") if isinstance(component, torch.nn.Module) else None


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def native_problem(model: Any, mlp: MLPHooks) -> str | None:
    """Why ``model`` cannot run the fast path (None: it can, subject to `NativeForward.verify`)."""
    wrapper = _wrapper_class()
    root = getattr(model, "original_model", None) if wrapper is not None else None
    if wrapper is None or not isinstance(root, torch.nn.Module) or not hasattr(model, "blocks"):
        return f"{type(model).__name__} is not a TransformerLens 4.x TransformerBridge"
    # TransformerLens hooks (hooks(), run_with_hooks, add_hook, add_perma_hook) live on hook points;
    # the torch hooks the bridge adds to its own wrappers only capture inputs for those.
    for name, point in model.hook_dict.items():
        if _has_hooks(point):
            return f"TransformerLens hooks are attached to the model ({name}); they run only on the hooks backend"
    try:
        gate_modules(model, mlp)
    except (AttributeError, KeyError, IndexError, TypeError) as exc:
        return f"the MLP neurons' HF modules cannot be found ({type(exc).__name__}: {exc})"
    return None


def hook_target(model: Any, name: str) -> tuple[torch.nn.Module, str]:
    """The HF module where TransformerLens hook point ``name`` of a bridge reads its tensor, and which side.

    Follows the bridge's hook aliases (``blocks.3.mlp.hook_post`` -> ``blocks.3.mlp.out.hook_in``)
    to a component's ``hook_in`` or ``hook_out`` and returns that component's original HF module
    with ``"in"`` (its first input) or ``"out"`` (its output).

    Raises:
        TypeError: the hook point does not resolve to a wrapped HF module's input or output.
    """
    path, hook = name.rsplit(".", 1)
    component = model.get_submodule(path)
    alias = getattr(component, "hook_aliases", {}).get(hook)
    if alias is not None:
        for target in [alias] if isinstance(alias, str) else list(alias):
            try:
                return hook_target(model, f"{path}.{target}")
            except (AttributeError, KeyError, TypeError):
                continue
        raise TypeError(f"{name}: no alias of it resolves to a HF module")
    original = original_module(component)
    if hook not in ("hook_in", "hook_out") or original is None:
        raise TypeError(f"{name} is not the input or output of a wrapped HF module")
    return original, hook.removeprefix("hook_")


def gate_modules(model: Any, mlp: MLPHooks) -> list[torch.nn.Module]:
    """The HF module whose output is ``blocks.{l}.mlp.hook_pre``, per layer."""
    out = []
    for layer in range(mlp.n_layers):
        module, side = hook_target(model, mlp.pre(layer))
        if side != "out":
            raise TypeError(f"{mlp.pre(layer)} is the input of a HF module, not its output")
        out.append(module)
    return out


def hf_configs(root: torch.nn.Module) -> list[Any]:
    """Every distinct HF config in the model that names an attention implementation."""
    seen: dict[int, Any] = {}
    for module in root.modules():
        cfg = getattr(module, "config", None)
        for c in (cfg, getattr(cfg, "text_config", None)):
            if c is not None and hasattr(c, "_attn_implementation"):
                seen.setdefault(id(c), c)
    return list(seen.values())


def bridge_attention(model: Any) -> str | None:
    """The attention implementation the bridge's HF model runs (None when it names none)."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    return getattr(config, "_attn_implementation", None)


@contextmanager
def bridge_fast_path(root: torch.nn.Module, attention: str | None = None) -> Iterator[torch.nn.Module]:
    """Take the bridge wrappers out of a bridge's HF model for the duration of the block.

    Swaps, on entry:

    - every bridge component ``C`` below ``root`` (a module holding its HF module ``M`` as
      ``C._modules["_original_component"]``) for ``M`` in its parent's ``_modules`` slot, then
      the same inside ``M``;
    - with ``attention`` given, ``_attn_implementation`` of every HF config below ``root`` (and
      of its ``text_config``) for ``attention``.

    Restores, on exit (also on errors and KeyboardInterrupt): every config's previous
    ``_attn_implementation``, then every wrapper into its slot, in reverse order. Nothing else is
    touched: parameters, buffers, the hooks on the wrappers (which do not run while they are out),
    ``model.cfg``. It does not nest and is not thread-safe: the model is rewired while inside.

    Args:
        root: ``model.original_model`` of a TL 4.x `TransformerBridge`.
        attention: an HF attention implementation name, or None to keep the configs' own.

    Yields:
        ``root``, now running plain HF modules.
    """
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []

    def visit(parent: torch.nn.Module) -> None:
        for name, child in list(parent._modules.items()):
            original = original_module(child)
            if original is not None:
                parent._modules[name] = original
                swaps.append((parent, name, child))
                visit(original)
            elif child is not None:
                visit(child)

    configs = hf_configs(root) if attention is not None else []
    old = [c._attn_implementation for c in configs]
    try:
        visit(root)
        for c in configs:
            c._attn_implementation = attention
        yield root
    finally:
        for c, value in zip(configs, old, strict=True):
            c._attn_implementation = value
        for parent, name, child in reversed(swaps):
            parent._modules[name] = child


def state_signature(model: Any) -> int:
    """A hash of what decides whether the fast path computes what the bridge computes.

    Covers every module (identity, the ids of its forward hooks and pre-hooks, which are new for
    every registration, an instance-patched ``forward``), every parameter and buffer (storage,
    dtype, device and in-place version counter, so folding or editing weights in place changes
    it) and ``model.cfg``.
    """
    mods = tuple(
        (id(m), tuple(m._forward_hooks), tuple(m._forward_pre_hooks), "forward" in m.__dict__) for m in model.modules()
    )
    tensors = tuple(
        (t.data_ptr(), t._version, t.dtype, t.device.type, t.device.index)
        for t in (*model.parameters(), *model.buffers())
    )
    return hash((mods, tensors, repr(getattr(model, "cfg", None))))
