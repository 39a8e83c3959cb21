"""tl-culture interventions composed with SAELens (`HookedSAETransformer`, TransformerLens 3.x).

SAELens 6.x needs TransformerLens 3.x, the main suite runs on TL 4.x. The tests run in-process where
``sae_lens`` imports, otherwise in the interpreter named by ``$TL3_PYTHON`` (`.ci/run` builds it with
`scripts/tl3_env.sh`). Without either they are skipped locally and fail under CI.

Everything is random and built from configs (no download): a 2-layer gated `HookedSAETransformer`, a
`StandardSAE` with random weights and biases on a residual or MLP-output hook point of layer 0, and a
hand-made `NeuronSet` (group ``fa``: layer-0 neurons only; ``da``: neurons in both layers). The
expected values are composed by hand: the edit as plain hooks that zero or multiply columns of
``hook_post``, the SAE as ``relu((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tl_culture as tc
from tests.conftest import run_in_tl3_interpreter

HAS_SAELENS = False
try:
    from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformerConfig

    HAS_SAELENS = True
except ImportError:
    pass

D_MODEL, D_MLP, D_SAE, N_LAYERS = 16, 24, 40, 2
SAE_HOOKS = ["blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
EDITS = {"ablate": 0.0, "scale": 3.0}  # edit name -> factor on the group's hook_post columns
N_IN_PROCESS = 2 * len(SAE_HOOKS) * len(EDITS) + len(SAE_HOOKS) + 2  # the tests below, parametrized

in_process = pytest.mark.skipif(not HAS_SAELENS, reason="sae_lens not importable here (see test_in_tl3_interpreter)")


def _model():
    cfg = HookedTransformerConfig(
        d_model=D_MODEL, d_head=4, n_heads=4, n_layers=N_LAYERS, n_ctx=32, d_vocab=50, d_mlp=D_MLP,
        act_fn="silu", gated_mlp=True, seed=0, normalization_type="LN",
    )
    return HookedSAETransformer(cfg).eval()


def _sae(hook_name: str, use_error_term: bool = False, seed: int = 1):
    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=D_MODEL, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook_name))
    sae = StandardSAE(cfg, use_error_term=use_error_term)
    with torch.no_grad():  # random biases too, so that apply_b_dec_to_input and b_enc matter
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def _neurons():
    masks = torch.zeros(2, N_LAYERS, D_MLP, dtype=torch.bool)
    masks[0, 0, [1, 4, 5, 11, 20]] = True  # fa: layer 0 only
    masks[1, 0, 3:9] = True  # da: both layers
    masks[1, 1, [0, 7, 13, 22]] = True
    return tc.NeuronSet(["fa", "da"], masks)


def _edit(neurons, name: str, group: str):
    return tc.ablate(neurons, group) if name == "ablate" else tc.scale(neurons, group, EDITS[name])


def _tokens():
    return torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))


def _hand_encode(sae, x):
    return torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)


def _hand_decode(sae, feats):
    return feats @ sae.W_dec + sae.b_dec


def _hand_edit_hooks(neurons, group: str, factor: float):
    """The edit as plain TL hooks: ``hook_post[..., group's neurons] *= factor``."""

    def hook(post, hook):
        cols = neurons.mask(group)[int(hook.name.split(".")[1])]
        post = post.clone()
        post[..., cols] = post[..., cols] * factor
        return post

    return [(f"blocks.{layer}.mlp.hook_post", hook) for layer in range(N_LAYERS)]


def _assert_clean(model, sae, hook_names: set[str]):
    """No SAE attached, no hook left on the model or the SAE, the model's hook points as before."""
    assert model.acts_to_saes == {}
    assert set(model.hook_dict) == hook_names
    for hp in [*model.hook_dict.values(), *sae.hook_dict.values()]:
        assert not hp._forward_hooks and not hp._backward_hooks, hp.name


@in_process
@pytest.mark.parametrize("use_error_term", [False, True])
@pytest.mark.parametrize("edit_name", list(EDITS))
@pytest.mark.parametrize("hook_name", SAE_HOOKS)
def test_logits_match_hand_composition(hook_name, edit_name, use_error_term):
    model, sae, neurons, tokens = _model(), _sae(hook_name, use_error_term), _neurons(), _tokens()
    hook_names = set(model.hook_dict)
    edit = _edit(neurons, edit_name, "da")

    logits_hooks = model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=edit.fwd_hooks(model))
    _assert_clean(model, sae, hook_names)
    with edit.applied(model):
        logits_applied = model.run_with_saes(tokens, saes=[sae])
    _assert_clean(model, sae, hook_names)

    # By hand: the plain model, the edit as hand hooks, the SAE spliced in (transparent with the error term).
    def splice(x, hook):
        return x if use_error_term else _hand_decode(sae, _hand_encode(sae, x))

    hand_hooks = [*_hand_edit_hooks(neurons, "da", EDITS[edit_name]), (hook_name, splice)]
    want = model.run_with_hooks(tokens, fwd_hooks=hand_hooks)
    torch.testing.assert_close(logits_hooks, want)
    torch.testing.assert_close(logits_applied, want)
    assert not torch.allclose(want, model(tokens)), "the edit and SAE should change the logits"
    _assert_clean(model, sae, hook_names)


@in_process
@pytest.mark.parametrize("hook_name", SAE_HOOKS)
def test_feature_change_under_ablation(hook_name):
    model, sae, neurons, tokens = _model(), _sae(hook_name), _neurons(), _tokens()
    hook_names = set(model.hook_dict)
    edit = tc.ablate(neurons, "fa")

    # The recipe: SAE feature activations with and without the edit, and their change.
    _, base = model.run_with_cache_with_saes(tokens, saes=[sae])
    with edit.applied(model):
        _, ablated = model.run_with_cache_with_saes(tokens, saes=[sae])
    key = f"{hook_name}.hook_sae_acts_post"
    change = ablated[key] - base[key]  # [batch, pos, d_sae]
    _assert_clean(model, sae, hook_names)

    # By hand: fa's neurons are in layer 0 only, so ablating them moves layer 0's MLP output (and the
    # residual stream after it) by -post[..., fa] @ W_out[fa]; the SAE reads that point.
    cols = neurons.mask("fa")[0]
    x = base[f"{hook_name}.hook_sae_input"]
    shift = -base["blocks.0.mlp.hook_post"][..., cols] @ model.blocks[0].mlp.W_out[cols]
    torch.testing.assert_close(ablated[f"{hook_name}.hook_sae_input"], x + shift)
    torch.testing.assert_close(base[key], _hand_encode(sae, x))
    torch.testing.assert_close(change, _hand_encode(sae, x + shift) - _hand_encode(sae, x))
    assert (change != 0).any(), "ablating fa should move some features"


@in_process
def test_hooks_removed_after_errors():
    model, sae, neurons, tokens = _model(), _sae(SAE_HOOKS[0]), _neurons(), _tokens()
    hook_names = set(model.hook_dict)
    edit = _edit(neurons, "scale", "da")
    with pytest.raises(RuntimeError, match="boom"):
        with edit.applied(model), model.saes([sae]):
            model(tokens)
            raise RuntimeError("boom")
    _assert_clean(model, sae, hook_names)

    def fail(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks_with_saes(
            tokens, saes=[sae], fwd_hooks=[*edit.fwd_hooks(model), ("blocks.1.hook_resid_post", fail)]
        )
    _assert_clean(model, sae, hook_names)
    torch.testing.assert_close(model(tokens), _model()(tokens))  # the model computes as before


@in_process
def test_sae_on_the_edited_hook_point_is_refused():
    """An SAE attached at ``mlp.hook_post`` replaces the hook point the edit needs: tl-culture says so."""
    model, neurons, tokens = _model(), _neurons(), _tokens()
    torch.manual_seed(1)
    cfg = StandardSAEConfig(d_in=D_MLP, d_sae=D_SAE, metadata=SAEMetadata(hook_name="blocks.1.mlp.hook_post"))
    sae = StandardSAE(cfg)
    with model.saes([sae]), pytest.raises(tc.TLCultureError, match="blocks.1.mlp.hook_post"):
        with _edit(neurons, "ablate", "da").applied(model):
            model(tokens)


@pytest.mark.skipif(HAS_SAELENS, reason="sae_lens importable: the tests above ran in-process")
def test_in_tl3_interpreter():
    run_in_tl3_interpreter(Path(__file__), "not in_tl3_interpreter", N_IN_PROCESS, needs="sae_lens")
