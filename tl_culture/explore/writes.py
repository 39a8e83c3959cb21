"""What each neuron writes: the direct effect of its output weights on the logits, and its file format.

Neuron (l, j) adds ``a · W_out[l, j]`` to the MLP output (``a`` its ``hook_post`` value). Its direct
effect on the logits is that vector carried straight to the unembedding, with the normalisations
on the way folded in as TransformerLens folds them for direct logit attribution (``fold_ln``,
``center_unembed``; ``cache.apply_ln_to_stack``):

    u      = γ_post,l ⊙ c(W_out[l, j])       (only on models that normalise the MLP output, e.g. Gemma)
    d[l,j] = (γ_final ⊙ c(u)) @ W_U          (one value per vocabulary token)

with ``c`` the mean-centring of LayerNorm (the identity for RMSNorm) and ``γ`` each norm's
effective per-dimension scale, measured by running the norm on ``±x`` (so Gemma's ``1 + w``
convention needs no special case). What is approximated:

- each norm's division by the norm of its input (``1 / σ`` or ``1 / RMS``) is a positive factor
  that depends on the whole residual stream at that token; it is left out (as in TransformerLens'
  weight-based attribution), so ``d`` ranks the tokens a neuron promotes exactly as the direct path
  does at any token, but its magnitude is in units of "before the final normalisation's scale";
- norm biases, the unembedding bias and any final logit soft-cap do not depend on the neuron
  (soft-capping is monotonic) and are left out;
- only the direct path counts: the effect through later attention layers and MLPs is not included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture._io import load_tensors, save_tensors
from tl_culture.errors import TLCultureError
from tl_culture.explore.examples import neuron_list, neuron_row, neuron_rows
from tl_culture.explore.text import TokenText
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import model_name

KIND = "NeuronWrites"
APPROXIMATION = (
    "direct path only; norms folded in as their per-dimension scale (γ, LayerNorm centring), their "
    "1/σ (1/RMS) scale, biases and any logit soft-cap left out"
)


def norm_scale(norm: Any, d_model: int, like: torch.Tensor) -> Float[torch.Tensor, " d_model"]:
    """The effective per-dimension scale γ of a LayerNorm/RMSNorm module: ``(norm(x) - norm(-x)) / 2x``
    at ``x = (1, -1, 1, -1, ...)``, where mean 0 and RMS 1 leave only γ (divided by ``sqrt(1 + eps)``)."""
    if d_model % 2:
        raise TLCultureError(f"d_model={d_model} is odd; the norm's scale cannot be measured on (1, -1, ...)")
    x = torch.ones(d_model, dtype=like.dtype, device=like.device)
    x[1::2] = -1
    with torch.inference_mode():
        diff = norm(x[None, None]) - norm(-x[None, None])
    return (diff.reshape(-1).float() / (2 * x.float())).clone()


def write_directions(model: Any, layers: torch.Tensor, neurons: torch.Tensor) -> Float[torch.Tensor, "n d_model"]:
    """``γ_final ⊙ c(γ_post ⊙ c(W_out[l, j]))`` for each neuron (see the module docstring), float32."""
    cfg = model.cfg
    centre = str(getattr(cfg, "normalization_type", "") or "").startswith("LN")
    like = model.W_U
    final = norm_scale(model.ln_final, cfg.d_model, like)
    out = torch.empty(len(layers), cfg.d_model, dtype=torch.float32, device=like.device)
    for layer in sorted(set(layers.tolist())):
        rows = (layers == layer).nonzero().flatten()
        v = model.blocks[layer].mlp.W_out[neurons[rows].to(like.device)].float()  # [n, d_model]
        post = getattr(model.blocks[layer], "ln2_post", None)
        if post is not None:
            v = (v - v.mean(-1, keepdim=True) if centre else v) * norm_scale(post, cfg.d_model, like)
        out[rows.to(like.device)] = (v - v.mean(-1, keepdim=True) if centre else v) * final
    return out


@dataclass(eq=False)
class NeuronWrites:
    """The tokens each neuron promotes and suppresses most through the direct path.

    Attributes:
        layers, neurons: ``int64[n]``: neuron i is ``(layers[i], neurons[i])``.
        top_ids, top_logits: ``[n, m]`` the m tokens of largest direct effect, largest first.
        bottom_ids, bottom_logits: ``[n, m]`` the m tokens of smallest (most negative) effect, smallest first.
        top_text, bottom_text: the tokens as text, ``[n][m]``.
        meta: model, what is approximated.
    """

    layers: Int[torch.Tensor, " n"]
    neurons: Int[torch.Tensor, " n"]
    top_ids: Int[torch.Tensor, "n m"]
    top_logits: Float[torch.Tensor, "n m"]
    bottom_ids: Int[torch.Tensor, "n m"]
    bottom_logits: Float[torch.Tensor, "n m"]
    top_text: list[list[str]]
    bottom_text: list[list[str]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._where = neuron_rows(self.layers, self.neurons)

    def __len__(self) -> int:
        return int(self.layers.shape[0])

    def __contains__(self, pair: object) -> bool:
        """Whether ``(layer, neuron)`` has direct effects here."""
        return pair in self._where

    def index(self, layer: int, neuron: int) -> int:
        return neuron_row(self._where, layer, neuron, "has no direct effects here")

    def promoted(self, layer: int, neuron: int) -> list[tuple[str, float]]:
        """``(token, direct effect)`` of the tokens the neuron promotes most, largest first."""
        i = self.index(layer, neuron)
        return list(zip(self.top_text[i], self.top_logits[i].tolist(), strict=True))

    def suppressed(self, layer: int, neuron: int) -> list[tuple[str, float]]:
        """``(token, direct effect)`` of the tokens the neuron suppresses most, most negative first."""
        i = self.index(layer, neuron)
        return list(zip(self.bottom_text[i], self.bottom_logits[i].tolist(), strict=True))

    #: The tensors a file holds (the constructor's tensor arguments, in order).
    TENSORS = ("layers", "neurons", "top_ids", "top_logits", "bottom_ids", "bottom_logits")

    def save(self, path: str | os.PathLike) -> None:
        """Save as safetensors + JSON metadata (atomic)."""
        tensors = {name: getattr(self, name) for name in self.TENSORS}
        save_tensors(path, KIND, tensors, {"top_text": self.top_text, "bottom_text": self.bottom_text,
                                           "meta": self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronWrites:
        """Load a file written by `save`."""
        t, meta = load_tensors(path, KIND)
        if any(name not in t for name in cls.TENSORS) or "top_text" not in meta or "bottom_text" not in meta:
            raise TLCultureError(f"{path}: direct-effects file without its tensors or texts; it is corrupted")
        return cls(*(t[name] for name in cls.TENSORS), meta["top_text"], meta["bottom_text"], meta.get("meta") or {})


def direct_effects(model: Any, neurons: Any, k: int = 10, *, chunk: int = 64) -> NeuronWrites:
    """The k tokens each neuron's output weights promote and suppress most (see the module docstring).

    Args:
        model: a TransformerLens model (bridge or HookedTransformer) with ``W_U``, ``ln_final`` and
            ``blocks[l].mlp.W_out``.
        neurons: a `NeuronSet` (the union of its groups), a ``bool[layer, neuron]`` mask or
            ``(layer, neuron)`` pairs.
        k: tokens kept at each end.
        chunk: neurons multiplied with ``W_U`` at once (memory ``chunk × d_vocab`` floats).

    Returns:
        `NeuronWrites`; no corpus is read and nothing is run but the norms on one probe vector.
    """
    layers, idx = neuron_list(neurons, MLPHooks.from_model(model))
    with torch.inference_mode():
        dirs = write_directions(model, layers, idx)
        W_U = model.W_U.float()
        k = min(k, W_U.shape[1])
        parts = []
        for start in range(0, len(dirs), chunk):
            logits = dirs[start : start + chunk] @ W_U
            top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
            parts.append((top.indices.cpu(), top.values.cpu(), bottom.indices.cpu(), bottom.values.cpu()))
    top_ids, top_logits, bottom_ids, bottom_logits = (torch.cat(p) for p in zip(*parts, strict=True))
    text = TokenText(getattr(model, "tokenizer", None))
    meta = {"model": model_name(model), "k": k, "approximation": APPROXIMATION,
            "normalization": getattr(model.cfg, "normalization_type", None)}
    return NeuronWrites(layers, idx, top_ids, top_logits, bottom_ids, bottom_logits,
                        [[text.piece(i) for i in row] for row in top_ids.tolist()],
                        [[text.piece(i) for i in row] for row in bottom_ids.tolist()], meta)
