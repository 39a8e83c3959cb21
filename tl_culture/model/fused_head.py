"""A fused unembedding and log-softmax: next-token NLLs without ``[tokens, vocab]`` logits.

For final hidden states ``h`` (after the model's final norm) and target tokens ``x``:

    z_v  = s · (h · W_v + b_v)          s: the model's logit scale (1 unless it has one)
    z_v  ← c · tanh(z_v / c)            c: the model's final logit soft-capping (where it has one)
    nll  = logsumexp_v(z_v) − z_x       (nats)

The vocabulary is streamed in blocks of ``block`` rows of ``W``; each block's logits
``[tokens, block]`` are reduced at once, in float32, into a running logsumexp

    lse ← logaddexp(lse, logsumexp_{v ∈ block}(z_v))

and the target logit is read from the block that holds it. ``W`` is read once per call and the
memory beyond the hidden states is O(tokens × block), where a plain forward holds
``[tokens, vocab]`` logits and their log-softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

#: Vocabulary rows of the unembedding per block of `fused_nll`.
VOCAB_BLOCK = 2048


@dataclass(frozen=True)
class Unembed:
    """What turns a HF causal LM's final hidden states into logits.

    Attributes:
        weight: ``[vocab, d_model]``: the output embedding.
        bias: ``[vocab]`` or None.
        scale: the logit scale ``s`` (Cohere's ``logit_scale``), or None.
        softcap: the final logit soft-capping ``c`` (Gemma 2's ``final_logit_softcapping``), or None.
    """

    weight: Float[torch.Tensor, "vocab d_model"]
    bias: Float[torch.Tensor, " vocab"] | None = None
    scale: float | None = None
    softcap: float | None = None

    @classmethod
    def of(cls, hf_model: Any) -> Unembed:
        """The output embedding of a HF ``*ForCausalLM`` (its plain module, not a bridge wrapper) and its config."""
        out = hf_model.get_output_embeddings()
        config = getattr(hf_model, "config", None)
        text = getattr(config, "text_config", None) or config
        softcap = getattr(text, "final_logit_softcapping", None)
        scale = getattr(hf_model, "logit_scale", None)
        bias = getattr(out, "bias", None)
        bias = bias if bias is not None and bool(bias.any()) else None  # an all-zero bias adds nothing
        return cls(out.weight, bias, None if scale is None else float(scale), None if not softcap else float(softcap))

    def logits(self, h: Float[torch.Tensor, "n d_model"], start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Float32 logits ``[n, stop − start]`` of vocabulary rows ``start:stop``."""
        w = self.weight[start:stop]
        z = h @ w.T if self.bias is None else torch.addmm(self.bias[start:stop], h, w.T)
        z = z.float()
        if self.scale is not None:
            z = z * self.scale
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z


def fused_nll(
    hidden: Float[torch.Tensor, "n d_model"],
    targets: Int[torch.Tensor, " n"],
    head: Unembed,
    block: int = VOCAB_BLOCK,
) -> Float[torch.Tensor, " n"]:
    """Next-token NLL of each row of ``hidden`` for its target (float32, nats; see the module doc).

    Args:
        hidden: final hidden states, one row per scored token.
        targets: the token each row predicts.
        head: the model's `Unembed`.
        block: vocabulary rows per block (memory ≈ n × block × 4 bytes).
    """
    n, vocab = hidden.shape[0], head.weight.shape[0]
    h = hidden.to(head.weight.dtype)
    lse = torch.full((n,), -torch.inf, dtype=torch.float32, device=h.device)
    target = torch.zeros(n, dtype=torch.float32, device=h.device)
    rows = torch.arange(n, device=h.device)
    for start in range(0, vocab, block):
        z = head.logits(h, start, start + block)
        lse = torch.logaddexp(lse, torch.logsumexp(z, dim=-1))
        here = (targets >= start) & (targets < start + z.shape[1])
        target = torch.where(here, z[rows, (targets - start).clamp(0, z.shape[1] - 1)], target)
    return lse - target


__all__ = ["VOCAB_BLOCK", "Unembed", "fused_nll"]
