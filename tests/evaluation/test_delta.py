"""Δ NLL: hand computations, named runs, baseline reuse, controls, validation, categories."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hand_nll, random_rows, xy_corpora
from tl_culture import Corpus, NeuronSet, TLCultureError
from tl_culture.evaluation.bootstrap import control_seed
from tl_culture.evaluation.controls import control_ablations
from tl_culture.evaluation.delta import BASELINE, Run, delta_nll, evaluate_categories, summarize
from tl_culture.intervene.interventions import ablate, random_like

L, N = 3, 32


@pytest.mark.parametrize("kind", ["dense", "gated"])
def test_delta_nll_matches_hand_computation(tiny_models, ab_neurons, kind):
    model = tiny_models[kind]
    ev = xy_corpora()
    res = delta_nll(model, ev, ab_neurons, seq_len=12, batch_size=2, max_tokens=None, controls=0, bootstrap=0,
                    progress=False)
    for e, c in ev.items():
        ei = res.evals.index(e)
        assert res.tokens[ei] == c.rows.shape[0] * 11
        assert res.baseline[ei].item() == pytest.approx(hand_nll(model, c.rows), abs=1e-5)
        for gi, g in enumerate(res.groups):
            want = hand_nll(model, c.rows, ablate(ab_neurons, g).fwd_hooks(model)) - hand_nll(model, c.rows)
            assert res.delta[gi, ei].item() == pytest.approx(want, abs=1e-5)
    assert res.delta_ci_low is None and res.control_delta is None


def test_runs_are_named_by_kind_group_and_control(tiny_models, ab_neurons, monkeypatch):
    from tl_culture.evaluation import delta as ev_mod

    seen, run = [], ev_mod.token_nlls

    def recording(model, corpora, ints, **kw):
        seen.extend(ints)
        return run(model, corpora, ints, **kw)

    monkeypatch.setattr(ev_mod, "token_nlls", recording)
    delta_nll(tiny_models["dense"], xy_corpora(), ab_neurons, seq_len=12, max_tokens=None, controls=2, bootstrap=0,
              progress=False)
    assert seen == [BASELINE, Run("ablate", "a"), Run("ablate", "b"), Run("control", "a", 0),
                    Run("control", "b", 0), Run("control", "a", 1), Run("control", "b", 1)]


def test_baseline_cache_reuses_only_the_same_text_and_settings(tiny_models, ab_neurons, monkeypatch):
    from tl_culture.evaluation import delta as ev_mod

    calls, run = [], ev_mod.token_nlls

    def recording(model, corpora, ints, **kw):
        calls.append(any(it is None for it in ints.values()))  # does this call score the baseline?
        return run(model, corpora, ints, **kw)

    monkeypatch.setattr(ev_mod, "token_nlls", recording)
    kw = dict(seq_len=12, batch_size=2, max_tokens=None, controls=0, bootstrap=0, progress=False)
    cache: dict = {}
    first = delta_nll(tiny_models["gated"], xy_corpora(), ab_neurons, baseline_cache=cache, **kw)
    again = delta_nll(tiny_models["gated"], xy_corpora(), ab_neurons, baseline_cache=cache, **kw)
    other = delta_nll(tiny_models["gated"], xy_corpora(), ab_neurons, baseline_cache=cache, **{**kw, "max_tokens": 20})
    assert calls == [True, False, True]  # the baseline ran with the first call and with other settings
    assert torch.equal(first.baseline, again.baseline) and torch.equal(first.delta, again.delta)
    assert not torch.equal(first.tokens, other.tokens)


def test_controls_reproducible_with_seed(tiny_models, ab_neurons):
    model = tiny_models["gated"]
    kw = dict(seq_len=12, batch_size=4, max_tokens=None, controls=2, bootstrap=200, progress=False, control_cells="all")
    a = delta_nll(model, xy_corpora(), ab_neurons, seed=5, **kw)
    b = delta_nll(model, xy_corpora(), ab_neurons, seed=5, **kw)
    c = delta_nll(model, xy_corpora(), ab_neurons, seed=6, **kw)
    for name in ("control_delta", "control_ci_low", "control_ci_high", "delta_ci_low", "delta_ci_high"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.control_delta, c.control_delta)
    assert torch.equal(a.ablated, c.ablated)  # the real ablation does not depend on the seed
    assert (a.delta_ci_low <= a.delta + 1e-12).all() and (a.delta <= a.delta_ci_high + 1e-12).all()


def test_control_delta_is_mean_over_seeds(tiny_models, ab_neurons):
    model = tiny_models["dense"]
    ev = {"x": Corpus("x", rows=random_rows(3, 2))}
    res = delta_nll(model, ev, ab_neurons, seq_len=12, max_tokens=None, controls=2, bootstrap=0, seed=1,
                    control_cells="all", progress=False, exclude_selected=False)
    ids = ev["x"].rows
    base = hand_nll(model, ids)
    for gi, g in enumerate(ab_neurons.groups):
        d = [hand_nll(model, ids, random_like(ab_neurons, g, control_seed(1, s, gi)).fwd_hooks(model)) - base
             for s in range(2)]
        assert res.control_delta[gi, 0].item() == pytest.approx(sum(d) / 2, abs=1e-5)
    # the default: draws outside every selected neuron (as far as the tiny layers allow)
    with pytest.warns(UserWarning, match="also draws excluded neurons"):
        res = delta_nll(model, ev, ab_neurons, seq_len=12, max_tokens=None, controls=2, bootstrap=0, seed=1,
                        control_cells="all", progress=False)
        draws = control_ablations(ab_neurons, ab_neurons.groups, 2, 1, ab_neurons.masks.any(0))
    for gi, g in enumerate(ab_neurons.groups):
        d = [hand_nll(model, ids, draws[g, s].fwd_hooks(model)) - base for s in range(2)]
        assert res.control_delta[gi, 0].item() == pytest.approx(sum(d) / 2, abs=1e-5)
        assert res.paired_delta[gi, 0].item() == pytest.approx(res.delta[gi, 0].item() - sum(d) / 2, abs=1e-5)


def test_delta_nll_refuses_selection_text_unless_allowed(tiny_models):
    corp = Corpus("x", rows=random_rows(4, 2))
    ns = NeuronSet(["x"], torch.ones(1, L, N, dtype=torch.bool),
                   {"stats_meta": {"corpora": {"x": {"fingerprint": corp.fingerprint, "source": "tensor"}}}})
    with pytest.raises(TLCultureError, match="or pass allow_overlap=True"):
        delta_nll(tiny_models["dense"], {"x": corp}, ns, controls=0, progress=False)
    res = delta_nll(tiny_models["dense"], {"x": corp}, ns, controls=0, bootstrap=0, allow_overlap=True, seq_len=64,
                    progress=False)
    assert res.delta[0, 0] > 0  # ablating every neuron hurts


def test_delta_nll_validation(tiny_models, ab_neurons):
    model = tiny_models["dense"]
    with pytest.raises(TLCultureError, match=r"unknown group 'zz'; this neuron set has a, b"):
        delta_nll(model, xy_corpora(), ab_neurons, groups=["zz"], progress=False)
    with pytest.raises(TLCultureError, match=r"groups to ablate must be unique, got \['a', 'a'\]"):
        delta_nll(model, xy_corpora(), ab_neurons, groups=["a", "a"], progress=False)
    with pytest.raises(TLCultureError, match="controls and bootstrap must be >= 0"):
        delta_nll(model, xy_corpora(), ab_neurons, controls=-1, progress=False)
    big = NeuronSet(["a"], torch.ones(1, 5, N, dtype=torch.bool))
    with pytest.raises(TLCultureError, match=r"is for 5 layers x 32 neurons, the model has 3 x 32"):
        delta_nll(model, xy_corpora(), big, progress=False)
    with pytest.raises(TLCultureError, match="no corpora given"):
        delta_nll(model, {}, ab_neurons, progress=False)
    with pytest.raises(TLCultureError, match="batch_size must be at least 1"):
        delta_nll(model, xy_corpora(), ab_neurons, batch_size=0, progress=False)


def test_evaluate_categories_modes_and_summary(tiny_models, ab_neurons):
    held = {"lang:en": Corpus("en", rows=random_rows(5, 1)), "lang:ru": Corpus("ru", rows=random_rows(6, 1)),
            "cult:a": Corpus("a", rows=random_rows(7, 1)), "cult:b": Corpus("b", rows=random_rows(8, 1))}
    cats = {"language": ab_neurons, "culture": ab_neurons}
    pairs = {"a": "en", "b": "ru"}
    kw = dict(seq_len=12, max_tokens=None, controls=1, bootstrap=0, progress=False)
    matched = evaluate_categories(tiny_models["dense"], cats, held, pairs, **kw)
    assert matched["language"].evals == ["lang:en", "lang:ru"] and matched["culture"].evals == ["cult:a", "cult:b"]
    every = evaluate_categories(tiny_models["dense"], cats, held, pairs, mode="all", **kw)
    assert every["culture"].evals == list(held) and every["culture"].meta["eval_mode"] == "all"
    torch.testing.assert_close(every["culture"].delta[:, 2:], matched["culture"].delta)
    # one baseline per set of eval corpora: the second category on the same text reuses it
    assert [every[c].meta["baseline_reused"] for c in cats] == [False, True]
    alone = delta_nll(tiny_models["dense"], held, ab_neurons, **kw)
    assert torch.equal(every["culture"].baseline, alone.baseline) and torch.equal(every["culture"].delta, alone.delta)
    s = summarize(every["language"], pairs)
    d = every["language"].delta
    own = torch.tensor([[True, False, True, False], [False, True, False, True]])
    lang = torch.tensor([True, True, False, False])
    assert s["own_language_text"]["delta"] == pytest.approx(float(d[own & lang].mean()), abs=1e-5)
    assert s["own_culture_text"]["delta"] == pytest.approx(float(d[own & ~lang].mean()), abs=1e-5)
    assert s["other_delta"] == pytest.approx(float(d[~own].mean()), abs=1e-5)
    with pytest.raises(TLCultureError, match="unknown eval mode 'some'; use one of matched, all"):
        evaluate_categories(tiny_models["dense"], cats, held, pairs, mode="some")


# --------------------------------------------------------------------------- default model
@pytest.mark.slow
def test_ablating_language_neurons_raises_its_nll(default_model, shared_data):
    from tl_culture import collect, identify, load_corpus

    langs = ("en", "ru", "zh")
    full = {lang: load_corpus(shared_data / "flores" / f"{lang}.txt", name=lang) for lang in langs}
    split = {lang: c.split(0.2, seed=0) for lang, c in full.items()}
    stats = collect(default_model, {g: s[0] for g, s in split.items()}, seq_len=128, max_tokens=1000,
                    progress=False)
    ns = identify(stats)
    assert ns.count("ru") > 0
    res = delta_nll(default_model, {g: split[g][1] for g in ("ru", "en")}, ns, groups=["ru"], seq_len=128,
                    batch_size=2, max_tokens=512, controls=1, bootstrap=200, progress=False)
    assert res.bootstrap_units[0] >= 2  # the CI below resamples held-out documents: one gives no interval
    d, ctrl = res.delta[0], res.control_delta[0]
    assert d[0] > 0  # ablating Russian neurons raises the NLL of held-out Russian text ...
    assert d[0] > ctrl[0]  # ... more than ablating as many random neurons per layer ...
    assert d[0] > d[1]  # ... and more than it raises the NLL of English text
    assert res.delta_ci_low[0, 0] > 0


def test_controls_run_on_own_text_only_by_default(tiny_models, ab_neurons):
    """``control_cells="own"``: a group's controls on its own text (by name or ``pairs``), the same
    numbers as with ``"all"`` there, null elsewhere, and fewer scored tokens."""
    model = tiny_models["gated"]
    ev = {"lang:a": xy_corpora()["x"], "lang:b": xy_corpora()["y"], "other": Corpus("o", rows=random_rows(3, 2))}
    kw = dict(seq_len=12, batch_size=2, max_tokens=None, controls=2, bootstrap=100, seed=4, progress=False)
    own = delta_nll(model, ev, ab_neurons, pairs={"b": "other"}, **kw)
    every = delta_nll(model, ev, ab_neurons, control_cells="all", **kw)
    ran = torch.tensor([[True, False, False], [False, True, True]])  # a: lang:a; b: lang:b and its pair
    assert own.meta["control_cells"] == "own" and every.meta["control_cells"] == "all"
    for name in ("control_delta", "control_ci_low", "paired_delta", "paired_ci_high"):
        mine, theirs = getattr(own, name), getattr(every, name)
        assert torch.equal(torch.isfinite(mine), ran), name
        torch.testing.assert_close(mine[ran], theirs[ran], rtol=0, atol=1e-9)
    torch.testing.assert_close(own.delta_ci_low, every.delta_ci_low, rtol=0, atol=1e-12)  # same resamples
    tokens = own.tokens.tolist()
    per_run = {"own": own.meta["scored_tokens"], "all": every.meta["scored_tokens"]}
    assert per_run["all"] - per_run["own"] == 2 * (tokens[1] + tokens[2]) + 2 * tokens[0]  # 2 draws, cells not run
    with pytest.raises(TLCultureError, match="unknown control cells 'some'"):
        delta_nll(model, ev, ab_neurons, control_cells="some", **kw)
