"""Direct effects through the unembedding against a hand computation on tiny models."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model
from tl_culture import TLCultureError
from tl_culture.explore.writes import NeuronWrites, direct_effects, norm_scale

PAIRS = [(0, 2), (1, 9), (2, 31)]


class ScaledRMS(torch.nn.Module):
    """An RMSNorm with Gemma's ``1 + w`` scale (a post-MLP norm for the test)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w

    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * (1 + self.w)


@pytest.fixture(params=["dense", "gated"])
def scaled_model(request):
    """A tiny model whose final norm has random weights (and bias, for LayerNorm)."""
    model = tiny_model(gated=request.param == "gated")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.ln_final.w.copy_(torch.rand(16, generator=g) * 2 + 0.1)
        if hasattr(model.ln_final, "b"):
            model.ln_final.b.copy_(torch.randn(16, generator=g))
    return model


def hand(model, layer, j, post=None):
    v = model.W_out[layer, j].detach().float()
    centre = model.cfg.normalization_type == "LN"
    if post is not None:
        v = (v - v.mean() if centre else v) * (1 + post)
    v = (v - v.mean() if centre else v) * model.ln_final.w.detach()
    return v @ model.W_U.detach()


def test_direct_effects_equal_hand_computation(scaled_model):
    w = direct_effects(scaled_model, PAIRS, k=5)
    for layer, j in PAIRS:
        d = hand(scaled_model, layer, j)
        i = w.index(layer, j)
        assert w.top_ids[i].tolist() == d.argsort(descending=True)[:5].tolist()
        assert w.bottom_ids[i].tolist() == d.argsort()[:5].tolist()
        torch.testing.assert_close(w.top_logits[i], d.sort(descending=True).values[:5], rtol=1e-5, atol=1e-5)
        assert [t for t, _ in w.promoted(layer, j)] == [str(t) for t in w.top_ids[i].tolist()]  # no tokenizer: ids
    assert "direct path only" in w.meta["approximation"]


def test_post_mlp_norm_is_folded_in(scaled_model):
    post = torch.randn(16, generator=torch.Generator().manual_seed(4))
    scaled_model.blocks[1].ln2_post = ScaledRMS(post)
    torch.testing.assert_close(norm_scale(scaled_model.blocks[1].ln2_post, 16, scaled_model.W_U), 1 + post)
    w = direct_effects(scaled_model, PAIRS, k=4)
    d = hand(scaled_model, 1, 9, post)
    assert w.top_ids[w.index(1, 9)].tolist() == d.argsort(descending=True)[:4].tolist()
    torch.testing.assert_close(w.bottom_logits[w.index(1, 9)], d.sort().values[:4], rtol=1e-5, atol=1e-5)


def test_texts_save_load(tmp_path, tiny_hf_model):
    w = direct_effects(tiny_hf_model, [(0, 1), (1, 40)], k=3)
    tok = tiny_hf_model.tokenizer
    assert w.top_text[0] == [tok.decode([t]) for t in w.top_ids[0].tolist()]
    w.save(tmp_path / "w.safetensors")
    back = NeuronWrites.load(tmp_path / "w.safetensors")
    assert back.promoted(1, 40) == w.promoted(1, 40) and back.suppressed(0, 1) == w.suppressed(0, 1)
    assert back.meta == w.meta
    with pytest.raises(TLCultureError, match="no direct effects"):
        back.promoted(0, 2)
    with pytest.raises(TLCultureError, match="does not exist"):
        direct_effects(tiny_hf_model, [(2, 0)])
