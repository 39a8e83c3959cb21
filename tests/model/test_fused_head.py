"""The fused unembedding and log-softmax against a float64 log-softmax of full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tl_culture.model.fused_head import Unembed, fused_nll


def reference(h, targets, w, b=None, scale=None, softcap=None) -> torch.Tensor:
    z = h.double() @ w.double().T + (0 if b is None else b.double())
    z = z * (scale or 1.0)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return -F.log_softmax(z, -1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("block", [1, 8, 37, 4096])  # 37 = the vocabulary; 8 leaves a short last block
@pytest.mark.parametrize("extra", ["plain", "bias", "scale", "softcap"])
def test_fused_nll_equals_log_softmax(block, extra):
    g = torch.Generator().manual_seed(1)
    n, d, vocab = 23, 16, 37
    h, w = torch.randn(n, d, generator=g) * 3, torch.randn(vocab, d, generator=g)
    targets = torch.arange(n) * 5 % vocab  # every block holds some target
    kw = {"bias": {"b": torch.randn(vocab, generator=g)}, "scale": {"scale": 0.25},
          "softcap": {"softcap": 4.0}, "plain": {}}[extra]
    head = Unembed(w, kw.get("b"), kw.get("scale"), kw.get("softcap"))
    got = fused_nll(h, targets, head, block=block)
    assert got.dtype == torch.float32 and got.shape == (n,)
    torch.testing.assert_close(got.double(), reference(h, targets, w, **kw), atol=2e-5, rtol=0)


def test_fused_nll_of_no_tokens():
    head = Unembed(torch.randn(10, 4))
    assert fused_nll(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), head).shape == (0,)


def test_unembed_reads_softcap_scale_and_bias_from_hf_models():
    from transformers import AutoModelForCausalLM

    from tests.families import family_config

    gemma2 = AutoModelForCausalLM.from_config(family_config("gemma2"))
    head = Unembed.of(gemma2)
    assert head.softcap == 3.0 and head.scale is None and head.weight is gemma2.lm_head.weight
    cohere = Unembed.of(AutoModelForCausalLM.from_config(family_config("cohere")))
    assert cohere.scale == 0.5 and cohere.softcap is None
    llama = Unembed.of(AutoModelForCausalLM.from_config(family_config("llama")))
    assert llama.scale is None and llama.softcap is None and llama.bias is None
