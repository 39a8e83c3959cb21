"""The scoring fast path against the TransformerLens hooks path, on every supported decoder family.

`choose_scorer` must pick the native path wherever it computes the hooks path's NLLs (within
`TOLERANCE`), with and without each kind of edit, and fall back to the hooks, saying why, where it
cannot (Phi-3's fused gate/up projection, models that are not HF causal LMs, user hooks).
"""

from __future__ import annotations

import pytest
import torch

from tests.families import FAMILIES, make_family_checkpoint
from tl_culture import MLPHooks, TLCultureError
from tl_culture.evaluation.scorer import TOLERANCE, choose_scorer, hooks_nll
from tl_culture.intervene.interventions import Edit, Intervention
from tl_culture.model.scoring import NativeScorer

#: families whose HF MLP has no module for hook_pre_linear (a fused gate/up projection): hooks only
HOOKS_ONLY = {"phi3"}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, tiny_hf_dir):
    from tl_culture import load_model

    root = tmp_path_factory.mktemp("families")
    return {f: load_model(str(make_family_checkpoint(root / f, f, tiny_hf_dir)), device="cpu") for f in FAMILIES}


def rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (2, 24), generator=g)
    ids[:, 0] = 1
    count = torch.ones_like(ids, dtype=torch.bool)
    count[:, 0] = False
    count[1, 20:] = False  # a shorter second row
    return ids, count


def edits(mlp: MLPHooks) -> dict[str, Intervention]:
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(mlp.n_layers, mlp.d_mlp, generator=g) < 0.2
    values = torch.randn(mlp.n_layers, mlp.d_mlp, generator=g, dtype=torch.float64)
    return {"none": None, "ablate": Intervention([Edit("ablate", mask)]),
            "scale": Intervention([Edit("scale", mask, factor=-3.0)]),
            "set": Intervention([Edit("set", mask, values=values)])}


@pytest.mark.parametrize("family", FAMILIES)
def test_native_nlls_equal_the_hooks_path(family_models, family):
    model = family_models[family]
    ids, count = rows()
    scorer, info = choose_scorer(model, "auto", None, ids, count)
    if family in HOOKS_ONLY:
        assert scorer is None and info["backend"] == "hooks" and "hook_pre_linear" in info["backend_note"]
        return
    assert scorer is not None and info["backend"] == "native", info
    mlp = MLPHooks.from_model(model)
    with torch.inference_mode():
        for name, edit in edits(mlp).items():
            hooks = edit.fwd_hooks(model) if edit is not None else []
            want = hooks_nll(model, ids, count, None, hooks)
            with scorer.active():
                got = scorer.nll(ids, count, None, hooks)
            assert [len(x) for x in got] == [23, 19]
            diff = max((a - b).abs().max().item() for a, b in zip(got, want, strict=True))
            assert diff <= TOLERANCE[torch.float32], (family, name, diff)
            if name != "none":  # the edit did change the NLLs, so the comparison saw it
                base = hooks_nll(model, ids, count, None, [])
                assert max((a - b).abs().max().item() for a, b in zip(want, base, strict=True)) > 10 * diff


def test_sdpa_falls_back_to_the_bridges_attention_where_it_cannot_run(family_models):
    ids, count = rows()
    _, info = choose_scorer(family_models["gemma2"], "auto", None, ids, count)  # sdpa has no soft-capping
    assert info["backend"] == "native" and info["attention"] == "eager" and "softcap" in info["backend_note"]
    with pytest.raises(TLCultureError, match="the native scorer cannot run: with sdpa attention"):
        choose_scorer(family_models["gemma2"], "auto", "sdpa", ids, count)


def test_user_hooks_send_scoring_to_the_hooks_path(tiny_hf_model):
    ids, count = rows()
    ids = ids.clamp(max=tiny_hf_model.cfg.d_vocab - 1)
    with tiny_hf_model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", lambda x, hook: x * 0)]):
        scorer, info = choose_scorer(tiny_hf_model, "auto", None, ids, count)
        assert scorer is None and "TransformerLens hooks are attached" in info["backend_note"]
        with pytest.raises(TLCultureError, match="native scorer cannot run.*hooks are attached"):
            choose_scorer(tiny_hf_model, "native", None, ids, count)
    assert choose_scorer(tiny_hf_model, "auto", None, ids, count)[1]["backend"] == "native"


def test_a_failed_check_falls_back_and_native_refuses(tiny_hf_model, monkeypatch):
    import tl_culture.evaluation.scorer as sc

    ids, count = rows()
    ids = ids.clamp(max=tiny_hf_model.cfg.d_vocab - 1)
    monkeypatch.setattr(sc, "TOLERANCE", {torch.float32: -1.0})  # no path agrees with this
    monkeypatch.setattr(sc, "_CHECKED", type(sc._CHECKED)())
    scorer, info = choose_scorer(tiny_hf_model, "auto", None, ids, count)
    assert scorer is None and "differ from the TransformerLens forward" in info["backend_note"]
    with pytest.raises(TLCultureError, match="use backend='hooks'"):
        choose_scorer(tiny_hf_model, "native", None, ids, count)


def test_the_check_runs_once_per_model_state(tiny_hf_model, monkeypatch):
    import tl_culture.evaluation.scorer as sc

    calls = []
    monkeypatch.setattr(sc, "_CHECKED", type(sc._CHECKED)())
    monkeypatch.setattr(sc, "hooks_nll", lambda *a, **k: calls.append(1) or hooks_nll(*a, **k))
    ids, count = rows()
    ids = ids.clamp(max=tiny_hf_model.cfg.d_vocab - 1)
    for _ in range(3):
        choose_scorer(tiny_hf_model, "auto", None, ids, count)
    assert len(calls) == 2  # no edit and the probe edit, once
    with torch.no_grad():
        tiny_hf_model.original_model.get_output_embeddings().weight.mul_(1.0)  # an in-place edit: new state
    choose_scorer(tiny_hf_model, "auto", None, ids, count)
    assert len(calls) == 4


def test_scorer_refuses_other_hooks_and_calls_outside_active(tiny_hf_model):
    scorer = NativeScorer(tiny_hf_model, MLPHooks.from_model(tiny_hf_model))
    ids, count = rows()
    ids = ids.clamp(max=tiny_hf_model.cfg.d_vocab - 1)
    with pytest.raises(TLCultureError, match="inside its active"):
        scorer.nll(ids, count)
    with scorer.active(), pytest.raises(TLCultureError, match="MLP neuron hooks only, not blocks.0.hook_resid_pre"):
        scorer.nll(ids, count, None, [("blocks.0.hook_resid_pre", lambda x, hook: x)])


def test_hooks_backend_and_bad_names():
    with pytest.raises(TLCultureError, match="unknown backend"):
        choose_scorer(object(), "fast", None, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.slow
def test_default_model_native_nlls_equal_the_hooks_path(default_model):
    """The embedded Gemma 3 270M (262k vocabulary): native with sdpa and the fused head, per-token NLLs
    within the float32 tolerance of the hooks path, with no edit and with an ablation."""
    from tl_culture.data.corpus import demo_corpora
    from tl_culture.data.rows import encode

    langs, _ = demo_corpora()
    rows = encode(langs["de"], default_model.tokenizer, 128, max_tokens=254)
    ids, count = rows.input_ids[:2], rows.count_mask[:2]
    scorer, info = choose_scorer(default_model, "auto", None, ids, count)
    assert info == {"backend": "native", "attention": "sdpa"}
    mlp = MLPHooks.from_model(default_model)
    mask = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.bool)
    mask[:, :64] = True
    with torch.inference_mode():
        for hooks in ([], Intervention([Edit("ablate", mask)]).fwd_hooks(default_model)):
            want = torch.cat(hooks_nll(default_model, ids, count, None, hooks))
            with scorer.active():
                got = torch.cat(scorer.nll(ids, count, None, hooks))
            assert len(got) == 254 and float((got - want).abs().max()) <= TOLERANCE[torch.float32]
