"""Interventions against hand-made hooks on tiny dense and gated models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tl_culture import ActivationStats, NeuronSet, TLCultureError
from tl_culture.intervene.interventions import Intervention, ablate, combine, random_like, random_mask, scale, set_to

L, N = 3, 32


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


@pytest.fixture(scope="module")
def neurons() -> NeuronSet:
    m = torch.zeros(2, L, N, dtype=torch.bool)
    m[0, 0, [1, 5, 7]] = True
    m[0, 2, [0, 31]] = True
    m[1, 1, [2, 3, 4, 5]] = True
    m[1, 2, [7, 31]] = True
    return NeuronSet(["da", "fa"], m, {"category": "culture"})


def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))


def hand_hooks(mask: torch.Tensor, fn, gated: bool, need_lin: bool = False):
    """Reference hooks written out by hand: fn(post_sel, lin_sel, layer, idx) -> new values."""
    hooks, store = [], {}
    for layer in range(L):
        idx = torch.nonzero(mask[layer]).flatten()
        if not len(idx):
            continue
        if gated and need_lin:
            keep = lambda x, hook, layer=layer: store.__setitem__(layer, x)  # noqa: E731
            hooks.append((f"blocks.{layer}.mlp.hook_pre_linear", keep))

        def post_hook(x, hook, layer=layer, idx=idx):
            x = x.clone()
            lin = store[layer][..., idx] if (gated and need_lin) else None
            x[..., idx] = fn(x[..., idx], lin, layer, idx)
            return x

        hooks.append((f"blocks.{layer}.mlp.hook_post", post_hook))
    return hooks


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())


@pytest.mark.parametrize("kind", ["dense", "gated"])
def test_ablate_equals_hand_hooks(models, neurons, kind):
    model = models[kind]
    x = tokens()
    hand = hand_hooks(neurons.mask("da"), lambda p, lin, ly, i: 0 * p, kind == "gated")
    want = model.run_with_hooks(x, fwd_hooks=hand)
    with ablate(neurons, "da").applied(model):
        got = model(x)
    assert torch.equal(got, want)
    assert not torch.allclose(got, model(x))  # the ablation does something


@pytest.mark.parametrize("kind", ["dense", "gated"])
def test_scale_equals_hand_hooks(models, neurons, kind):
    model = models[kind]
    x = tokens()
    want = model.run_with_hooks(x, fwd_hooks=hand_hooks(neurons.mask("fa"), lambda p, lin, ly, i: p * 3.5,
                                                         kind == "gated"))
    got = model.run_with_hooks(x, fwd_hooks=scale(neurons, "fa", 3.5).fwd_hooks(model))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_set_on_gated_is_value_times_up_projection(models, neurons):
    model = models["gated"]
    x = tokens()
    values = torch.linspace(-1.0, 2.0, L * N, dtype=torch.float64).reshape(L, N)
    want = model.run_with_hooks(
        x, fwd_hooks=hand_hooks(neurons.mask("fa"), lambda p, lin, ly, i: values[ly, i].float() * lin, True, True)
    )
    edit = set_to(neurons, "fa", values)
    with edit.applied(model):
        got, cache = model.run_with_cache(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # hook_post_j = value_j * hook_pre_linear_j at layer 1, neurons 2..5 (the act_fn(gate) is replaced by value)
    idx = torch.tensor([2, 3, 4, 5])
    post, lin = cache["blocks.1.mlp.hook_post"], cache["blocks.1.mlp.hook_pre_linear"]
    torch.testing.assert_close(post[..., idx], values[1, idx].float() * lin[..., idx])
    assert n_hooks(model) == 0


def test_set_on_dense_sets_post(models, neurons):
    model = models["dense"]
    x = tokens()
    with set_to(neurons, "da", 0.25).applied(model):
        _, cache = model.run_with_cache(x)
    post = cache["blocks.0.mlp.hook_post"]
    assert torch.all(post[..., [1, 5, 7]] == 0.25)
    _, clean = model.run_with_cache(x)
    assert torch.equal(post[..., [0, 2]], clean["blocks.0.mlp.hook_post"][..., [0, 2]])  # others untouched


def test_set_to_mean_activation_of_stats(neurons):
    sums = torch.arange(2 * L * N, dtype=torch.float64).reshape(2, L, N)
    stats = ActivationStats(["da", "fa"], torch.zeros(2, L, N, dtype=torch.int64), torch.tensor([4, 8]), sums)
    edit = set_to(neurons, "fa", stats)
    want = sums[1] / 8
    assert torch.equal(edit.edits[0].values, want)
    assert edit._maps[1][2].tolist() == want[1, [2, 3, 4, 5]].tolist()


def test_combination_folds_in_order(models, neurons):
    model = models["gated"]
    x = tokens()
    both = ablate(neurons, "da") + scale(neurons, "fa", 2.0)
    assert combine(ablate(neurons, "da"), scale(neurons, "fa", 2.0)).name == both.name
    da, fa = neurons.mask("da"), neurons.mask("fa")

    def fn(p, lin, layer, idx):
        out = p.clone()
        for k, j in enumerate(idx.tolist()):
            out[..., k] = 0 if da[layer, j] else p[..., k] * 2.0
        return out

    want = model.run_with_hooks(x, fwd_hooks=hand_hooks(da | fa, fn, True))
    with both.applied(model):
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # layer 2 neuron 31 is in both sets: ablate then scale -> 0; set then scale -> 2 * value
    i = both._maps[2][0].tolist().index(31)
    assert both._maps[2][1][i] == 0 and both._maps[2][2][i] == 0
    s = set_to(neurons, "fa", 0.5) + scale(neurons, "fa", 2.0)
    assert s._maps[1][1].tolist() == [0.0] * 4 and s._maps[1][2].tolist() == [1.0] * 4
    s = scale(neurons, "fa", 2.0) + set_to(neurons, "fa", 0.5)
    assert s._maps[1][2].tolist() == [0.5] * 4


def test_composes_with_user_hooks_and_removes_only_its_own(models, neurons):
    model = models["dense"]
    x = tokens()

    def user(resid, hook):
        return resid + 0.1

    ref_hooks = [("blocks.0.hook_resid_pre", user)]
    hand = hand_hooks(neurons.mask("da"), lambda p, lin, ly, i: 0 * p, False)
    want = model.run_with_hooks(x, fwd_hooks=ref_hooks + hand)
    with model.hooks(fwd_hooks=ref_hooks):
        before = n_hooks(model)
        with ablate(neurons, "da").applied(model):
            assert n_hooks(model) > before
            got = model(x)
        assert n_hooks(model) == before
        with_user_only = model(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(with_user_only, model.run_with_hooks(x, fwd_hooks=ref_hooks))
    assert n_hooks(model) == 0


def test_no_leak_after_exception(models, neurons):
    model = models["gated"]
    x = tokens()
    clean = model(x)
    with pytest.raises(RuntimeError, match="boom"):
        with set_to(neurons, "fa", 1.0).applied(model):
            model(x)
            raise RuntimeError("boom")
    assert n_hooks(model) == 0
    assert torch.equal(model(x), clean)


def test_empty_group_is_a_no_op(models):
    model = models["dense"]
    ns = NeuronSet(["none"], torch.zeros(1, L, N, dtype=torch.bool))
    assert ablate(ns, "none").fwd_hooks(model) == []


def test_random_like_keeps_per_layer_counts_and_seed(neurons):
    a, b, c = random_like(neurons, "fa", seed=3), random_like(neurons, "fa", seed=3), random_like(neurons, "fa", seed=4)
    assert torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask, c.mask)
    assert a.mask.sum(1).tolist() == [0, 4, 2]
    big = torch.zeros(4, 1000, dtype=torch.bool)
    big[:, :100] = True
    r = random_mask(big, torch.Generator().manual_seed(0))
    assert r.sum(1).tolist() == [100] * 4
    assert 0 < int((r & big).sum()) < 100  # not the original set


# --------------------------------------------------------------------------- validation
def test_unknown_group_is_named(neurons):
    with pytest.raises(TLCultureError, match=r"unknown group 'xx'; this neuron set has da, fa"):
        ablate(neurons, "xx")


def test_neuron_set_shape_must_match_model(models):
    ns = NeuronSet(["a"], torch.ones(1, 4, N, dtype=torch.bool))
    with pytest.raises(TLCultureError, match=r"is for 4 layers x 32 neurons, the model has 3 x 32"):
        ablate(ns, "a").fwd_hooks(models["dense"])


def test_missing_hooks_are_reported(neurons):
    fake = SimpleNamespace(cfg=SimpleNamespace(d_mlp=N, n_layers=L, act_fn="silu", gated_mlp=True), hook_dict={})
    with pytest.raises(TLCultureError, match=r"model has no MLP neuron hook blocks.0.mlp.hook_pre"):
        ablate(neurons, "da").fwd_hooks(fake)


def test_hook_width_is_checked(neurons, models):
    edit = ablate(neurons, "da")
    hooks = edit.fwd_hooks(models["dense"])
    with pytest.raises(TLCultureError, match=r"gives width 7, but cfg.d_mlp is 32"):
        hooks[0][1](torch.zeros(1, 2, 7), hook=None)


def test_bad_values_and_factors(neurons):
    with pytest.raises(TLCultureError, match=r"set_to values have shape \(2, 32\), the neuron set is \(3, 32\)"):
        set_to(neurons, "da", torch.zeros(2, N))
    bad = torch.zeros(L, N)
    bad[0, 1] = float("nan")
    with pytest.raises(TLCultureError, match="not finite at some selected neurons"):
        set_to(neurons, "da", bad)
    with pytest.raises(TLCultureError, match="must be a number, a \\[layer, neuron\\] tensor or ActivationStats"):
        set_to(neurons, "da", "high")
    with pytest.raises(TLCultureError, match="scale factor must be finite, got inf"):
        scale(neurons, "da", float("inf"))
    with pytest.raises(TLCultureError, match="scale factor must be a number, got 'x'"):
        scale(neurons, "da", "x")
    with pytest.raises(TLCultureError, match="expected a NeuronSet, got dict"):
        ablate({}, "da")


def test_combining_different_models_and_empty(neurons):
    other = NeuronSet(["a"], torch.ones(1, 4, N, dtype=torch.bool))
    with pytest.raises(TLCultureError, match=r"cannot combine edits for 3x32 and 4x32 neurons"):
        ablate(neurons, "da") + ablate(other, "a")
    with pytest.raises(TLCultureError, match="needs at least one edit"):
        Intervention([])
    with pytest.raises(TLCultureError, match=r"combine\(\) needs at least one intervention"):
        combine()


def test_gated_set_without_pre_linear_fails_clearly(neurons, models):
    model = models["gated"]
    post_only = [h for h in set_to(neurons, "fa", 1.0).fwd_hooks(model) if h[0].endswith("hook_post")]
    with pytest.raises(TLCultureError, match="hook_pre_linear did not fire before hook_post"):
        model.run_with_hooks(tokens(), fwd_hooks=post_only)
