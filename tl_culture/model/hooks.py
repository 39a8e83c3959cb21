"""The MLP neuron hooks every stage reads, and the activation functions behind them.

Everything downstream touches a model only through what TransformerLens 4.x `TransformerBridge`
and 3.x `HookedTransformer` share: ``model.cfg``, ``model.hook_dict``, ``model.hooks(...)``,
``model.tokenizer`` and the hook points ``blocks.{l}.mlp.hook_pre`` (the gate pre-activation on
gated MLPs, the pre-activation on dense ones), ``hook_pre_linear`` (the up projection, gated
only) and ``hook_post`` (the input of the down projection):

    dense:  hook_post = act_fn(hook_pre)
    gated:  hook_post = act_fn(hook_pre) * hook_pre_linear
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tl_culture.errors import TLCultureError


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


#: Activation functions by TransformerLens/HF name. Each satisfies act(z) > 0 iff z > 0.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": _gelu_fast,
    "silu": F.silu,
    "swish": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


@dataclass(frozen=True)
class MLPHooks:
    """Where a model's MLP neurons live, and how they are computed.

    Attributes:
        n_layers: number of transformer blocks.
        d_mlp: neurons per MLP.
        gated: True for gated MLPs (Llama, Gemma, Qwen, Mistral), False for dense ones.
        act_fn: name of the activation function (a key of `ACTIVATIONS`).
    """

    n_layers: int
    d_mlp: int
    gated: bool
    act_fn: str

    @classmethod
    def from_model(cls, model: Any) -> MLPHooks:
        """Describe ``model`` and check that every MLP neuron hook exists.

        Raises:
            TLCultureError: a hook is missing, the activation is unknown, or cfg lacks d_mlp.
        """
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "hook_dict"):
            raise TLCultureError(
                f"{type(model).__name__} is not a TransformerLens model (no cfg/hook_dict); "
                "load it with tl_culture.load_model or TransformerBridge.boot_transformers"
            )
        d_mlp = getattr(cfg, "d_mlp", None)
        if not d_mlp:
            raise TLCultureError("model.cfg.d_mlp is not set; tl-culture needs MLP neurons")
        act = (getattr(cfg, "act_fn", None) or "").lower()
        if act not in ACTIVATIONS:
            raise TLCultureError(
                f"activation function {act!r} is not supported (supported: "
                f"{', '.join(sorted(ACTIVATIONS))}); its sign need not match its input's"
            )
        hooks = cls(int(cfg.n_layers), int(d_mlp), bool(getattr(cfg, "gated_mlp", False)), act)
        names = set(model.hook_dict)
        missing = [n for layer in range(hooks.n_layers) for n in hooks.names(layer) if n not in names]
        if missing:
            raise TLCultureError(
                f"model has no MLP neuron hook {missing[0]} ({len(missing)} missing); "
                "tl-culture needs blocks.{l}.mlp.hook_pre/hook_post"
            )
        return hooks

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP activation function."""
        return ACTIVATIONS[self.act_fn](x)

    def pre(self, layer: int) -> str:
        """Hook of the (gate) pre-activation of ``layer``."""
        return f"blocks.{layer}.mlp.hook_pre"

    def pre_linear(self, layer: int) -> str:
        """Hook of the up projection of ``layer`` (gated MLPs only)."""
        return f"blocks.{layer}.mlp.hook_pre_linear"

    def post(self, layer: int) -> str:
        """Hook of the neuron outputs of ``layer`` (input of the down projection)."""
        return f"blocks.{layer}.mlp.hook_post"

    def names(self, layer: int) -> list[str]:
        """Every hook of ``layer`` that tl-culture uses."""
        out = [self.pre(layer), self.post(layer)]
        return out + [self.pre_linear(layer)] if self.gated else out

    def check_width(self, x: torch.Tensor, name: str) -> None:
        """Raise if a hooked tensor is not ``d_mlp`` wide."""
        if x.shape[-1] != self.d_mlp:
            raise TLCultureError(
                f"hook {name} gives width {x.shape[-1]}, but cfg.d_mlp is {self.d_mlp}; "
                "this model's MLP hooks do not expose its neurons"
            )

    def check_neurons(self, n_layers: int, d_mlp: int, what: str = "neuron set") -> None:
        """Raise if a neuron set or statistics of shape (n_layers, d_mlp) does not fit."""
        if (n_layers, d_mlp) != (self.n_layers, self.d_mlp):
            raise TLCultureError(
                f"{what} is for {n_layers} layers x {d_mlp} neurons, the model has "
                f"{self.n_layers} x {self.d_mlp}; use one made for this model"
            )
