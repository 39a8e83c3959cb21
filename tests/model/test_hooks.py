"""`MLPHooks`: where a model's MLP neurons live, and the activation functions behind them."""

from __future__ import annotations

import pytest
import torch

from tl_culture import TLCultureError
from tl_culture.model.hooks import ACTIVATIONS, MLPHooks


def test_every_supported_activation_is_sign_preserving():
    """collect tests z > 0 in place of act_fn(z) > 0: that must hold for every supported act_fn."""
    z = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor([-1e-30, -1e-20, 0.0, 1e-20, 1e-30])])
    for name, act in ACTIVATIONS.items():
        for dtype in (torch.float32, torch.bfloat16):
            x = z.to(dtype)
            assert torch.equal(act(x) > 0, x > 0), (name, dtype)


def test_from_model_describes_dense_and_gated_models(dense_model, gated_model):
    dense, gated = MLPHooks.from_model(dense_model), MLPHooks.from_model(gated_model)
    assert dense == MLPHooks(n_layers=3, d_mlp=32, gated=False, act_fn="gelu")
    assert gated == MLPHooks(n_layers=3, d_mlp=32, gated=True, act_fn="silu")
    assert dense.names(1) == ["blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post"]
    assert gated.names(1) == ["blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post", "blocks.1.mlp.hook_pre_linear"]
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(gated.act(x), torch.nn.functional.silu(x))


def test_from_model_refuses_what_it_cannot_count(gated_model):
    with pytest.raises(TLCultureError, match="Linear is not a TransformerLens model"):
        MLPHooks.from_model(torch.nn.Linear(2, 2))

    class Fake:
        def __init__(self, **cfg):
            self.cfg = type("Cfg", (), {"n_layers": 3, "d_mlp": 32, "act_fn": "silu", "gated_mlp": True, **cfg})()
            self.hook_dict = gated_model.hook_dict

    with pytest.raises(TLCultureError, match="activation function 'tanh' is not supported"):
        MLPHooks.from_model(Fake(act_fn="tanh"))
    with pytest.raises(TLCultureError, match="cfg.d_mlp is not set"):
        MLPHooks.from_model(Fake(d_mlp=None))
    with pytest.raises(TLCultureError, match=r"no MLP neuron hook blocks\.3\.mlp\.hook_pre \(3 missing\)"):
        MLPHooks.from_model(Fake(n_layers=4))


def test_width_and_shape_checks(gated_model):
    mlp = MLPHooks.from_model(gated_model)
    mlp.check_width(torch.zeros(2, 5, 32), mlp.pre(0))
    with pytest.raises(TLCultureError, match="hook blocks.0.mlp.hook_pre gives width 8, but cfg.d_mlp is 32"):
        mlp.check_width(torch.zeros(2, 5, 8), mlp.pre(0))
    mlp.check_neurons(3, 32)
    with pytest.raises(TLCultureError, match="neuron set is for 4 layers x 10 neurons, the model has 3 x 32"):
        mlp.check_neurons(4, 10)
