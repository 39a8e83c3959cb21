"""Δ NLL evaluation: hand computations, shared-prefix == naive, controls, held-out checks, files, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_model

from tl_culture import Corpus, NeuronSet, TLCultureError
from tl_culture.evaluation.delta import (
    NLLMatrix,
    _Runner,
    bootstrap_ci,
    check_heldout,
    chunk_sums,
    delta_nll,
    split_half_stability,
    token_nll,
)

L, N = 3, 32


@pytest.fixture(scope="module")
def models():
    return {"dense": tiny_model(gated=False), "gated": tiny_model(gated=True)}


@pytest.fixture(scope="module")
def neurons() -> NeuronSet:
    m = torch.zeros(2, L, N, dtype=torch.bool)
    m[0, 1, :6] = True
    m[0, 2, 10:14] = True
    m[1, 2, 3:20] = True
    return NeuronSet(["a", "b"], m)


def rows(seed: int, n: int = 3, T: int = 12) -> torch.Tensor:
    return torch.randint(0, 64, (n, T), generator=torch.Generator().manual_seed(seed))


def evals() -> dict[str, Corpus]:
    return {"x": Corpus("x", rows=rows(1, 3)), "y": Corpus("y", rows=rows(2, 2))}


def hand_nll(model, ids: torch.Tensor, hooks=()) -> float:
    with torch.no_grad():
        logits = model.run_with_hooks(ids, fwd_hooks=list(hooks))
    lp = F.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return float(-lp.mean())


def test_token_nll_matches_log_softmax_with_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    ids = torch.randint(0, 11, (2, 6), generator=g)
    count = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)  # BOS, then padding in row 1
    got = token_nll(logits, ids, count, chunk=2)
    lp = F.log_softmax(logits.double(), -1)
    want = [-lp[b, t - 1, ids[b, t]] for b in range(2) for t in range(1, 6) if count[b, t]]
    assert got.shape == (7,)
    torch.testing.assert_close(got, torch.stack(want))


@pytest.mark.parametrize("kind", ["dense", "gated"])
def test_delta_nll_matches_hand_computation(models, neurons, kind):
    model = models[kind]
    ev = evals()
    res = delta_nll(model, ev, neurons, seq_len=12, batch_size=2, max_tokens=None, controls=0, bootstrap=0,
                    progress=False)
    from tl_culture.intervene.interventions import ablate

    for e, c in ev.items():
        ei = res.evals.index(e)
        assert res.tokens[ei] == c.rows.shape[0] * 11
        assert res.baseline[ei].item() == pytest.approx(hand_nll(model, c.rows), abs=1e-5)
        for gi, g in enumerate(res.groups):
            want = hand_nll(model, c.rows, ablate(neurons, g).fwd_hooks(model)) - hand_nll(model, c.rows)
            assert res.delta[gi, ei].item() == pytest.approx(want, abs=1e-5)
    assert res.delta_ci_low is None and res.control_delta is None


@pytest.mark.parametrize("kind", ["dense", "gated"])
def test_shared_prefix_equals_naive_loop(models, neurons, kind):
    model = models[kind]
    kw = dict(seq_len=12, batch_size=2, max_tokens=None, controls=2, bootstrap=50, progress=False)
    fast = delta_nll(model, evals(), neurons, **kw)
    slow = delta_nll(model, evals(), neurons, shared_prefix=False, **kw)
    assert fast.meta["shared_prefix"] is True and fast.meta["start_layer"] == 1
    assert slow.meta["shared_prefix"] is False
    assert all("forward" not in b.original_component.__dict__ for b in model.blocks)  # blocks restored
    assert torch.equal(fast.ablated, slow.ablated)
    assert torch.equal(fast.control_delta, slow.control_delta)
    assert torch.equal(fast.delta_ci_low, slow.delta_ci_low)


def test_shared_prefix_with_padding_on_hf_model(tiny_hf_model):
    masks = torch.zeros(1, 2, 48, dtype=torch.bool)
    masks[0, 1, :10] = True
    ns = NeuronSet(["g"], masks)
    ev = {"en": ["the cat sat on the mat"] * 3, "de": ["der Hund schläft", "кошка спит"]}
    kw = dict(seq_len=8, batch_size=3, max_tokens=None, controls=1, bootstrap=0, progress=False)
    fast = delta_nll(tiny_hf_model, ev, ns, **kw)
    slow = delta_nll(tiny_hf_model, ev, ns, shared_prefix=False, **kw)
    assert fast.meta["shared_prefix"] is True
    torch.testing.assert_close(fast.ablated, slow.ablated, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast.baseline, slow.baseline, rtol=0, atol=0)


def test_baseline_cache_reuses_only_the_same_text_and_settings(models, neurons, monkeypatch):
    from tl_culture.evaluation import delta as ev_mod

    calls, run = [], ev_mod.token_nlls

    def recording(model, corpora, ints, **kw):
        calls.append(ints[0] is None)  # does this call score the baseline?
        return run(model, corpora, ints, **kw)

    monkeypatch.setattr(ev_mod, "token_nlls", recording)
    kw = dict(seq_len=12, batch_size=2, max_tokens=None, controls=0, bootstrap=0, progress=False)
    cache: dict = {}
    first = delta_nll(models["gated"], evals(), neurons, baseline_cache=cache, **kw)
    again = delta_nll(models["gated"], evals(), neurons, baseline_cache=cache, **kw)
    other = delta_nll(models["gated"], evals(), neurons, baseline_cache=cache, **{**kw, "max_tokens": 20})
    assert calls == [True, False, True]  # the baseline ran with the first call and with other settings
    assert torch.equal(first.baseline, again.baseline) and torch.equal(first.delta, again.delta)
    assert not torch.equal(first.tokens, other.tokens)


def test_shared_prefix_falls_back_when_not_exact(models, neurons, monkeypatch):
    model = models["gated"]
    real = _Runner.resume
    monkeypatch.setattr(_Runner, "resume", lambda self, resid, attn: real(self, resid, attn) + 1.0)
    kw = dict(seq_len=12, batch_size=2, max_tokens=None, controls=0, bootstrap=0, progress=False)
    with pytest.warns(UserWarning, match="shared-prefix forward is not exact on this model"):
        res = delta_nll(model, evals(), neurons, **kw)
    assert res.meta["shared_prefix"] is False and res.meta["shared_prefix_note"].startswith("not exact")
    monkeypatch.undo()
    assert torch.equal(res.ablated, delta_nll(model, evals(), neurons, shared_prefix=False, **kw).ablated)


def test_user_hooks_disable_shared_prefix(models, neurons):
    model = models["dense"]
    kw = dict(seq_len=12, batch_size=2, max_tokens=None, controls=0, bootstrap=0, progress=False)
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x * 1.5)]):
        res = delta_nll(model, evals(), neurons, **kw)
        want = delta_nll(model, evals(), neurons, shared_prefix=False, **kw)
    assert res.meta["shared_prefix"] is False and "hooks" in res.meta["shared_prefix_note"]
    assert torch.equal(res.ablated, want.ablated)


def test_controls_reproducible_with_seed(models, neurons):
    model = models["gated"]
    kw = dict(seq_len=12, batch_size=4, max_tokens=None, controls=2, bootstrap=200, progress=False)
    a = delta_nll(model, evals(), neurons, seed=5, **kw)
    b = delta_nll(model, evals(), neurons, seed=5, **kw)
    c = delta_nll(model, evals(), neurons, seed=6, **kw)
    for name in ("control_delta", "control_ci_low", "control_ci_high", "delta_ci_low", "delta_ci_high"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.control_delta, c.control_delta)
    assert torch.equal(a.ablated, c.ablated)  # the real ablation does not depend on the seed
    assert (a.delta_ci_low <= a.delta + 1e-12).all() and (a.delta <= a.delta_ci_high + 1e-12).all()


def test_control_delta_is_mean_over_seeds(models, neurons):
    from tl_culture.evaluation.delta import _control_seed
    from tl_culture.intervene.interventions import random_like

    model = models["dense"]
    ev = {"x": Corpus("x", rows=rows(3, 2))}
    res = delta_nll(model, ev, neurons, seq_len=12, max_tokens=None, controls=2, bootstrap=0, seed=1, progress=False)
    ids = ev["x"].rows
    base = hand_nll(model, ids)
    for gi, g in enumerate(neurons.groups):
        d = [hand_nll(model, ids, random_like(neurons, g, _control_seed(1, s, gi)).fwd_hooks(model)) - base
             for s in range(2)]
        assert res.control_delta[gi, 0].item() == pytest.approx(sum(d) / 2, abs=1e-5)


def test_chunk_sums_and_bootstrap_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    s, n = chunk_sums(x, 2)
    assert s.tolist() == [3.0, 7.0, 5.0] and n.tolist() == [2.0, 2.0, 1.0]
    lo, hi = bootstrap_ci(torch.full((40,), 0.25, dtype=torch.float64), chunk=4, n_boot=100)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    assert all(math.isnan(v) for v in bootstrap_ci(x[:3], chunk=8))
    # the same resampling written out: chunks drawn with replacement, ratio of sums, percentiles
    d = torch.randn(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lo, hi = bootstrap_ci(d, chunk=8, n_boot=300, generator=torch.Generator().manual_seed(9))
    s, n = chunk_sums(d, 8)
    draws = torch.randint(0, 8, (300, 8), generator=torch.Generator().manual_seed(9))
    means = torch.stack([s[r].sum() / n[r].sum() for r in draws])
    q = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (lo, hi) == pytest.approx((float(q[0]), float(q[1])))
    assert lo < float(d.mean()) < hi


# --------------------------------------------------------------------------- held-out
def test_heldout_checks():
    full = Corpus("en", documents=[f"doc {i}" for i in range(10)], source="flores/en.txt")
    sel, held = full.split(0.3, seed=0)
    ns = NeuronSet(["en"], torch.zeros(1, L, N, dtype=torch.bool),
                   {"stats_meta": {"corpora": {"en": {"fingerprint": sel.fingerprint, "source": sel.source}}}})
    check_heldout({"en": held}, ns)  # sibling split: fine
    with pytest.raises(TLCultureError, match=r"eval corpus 'en' is the selection text of group 'en'"):
        check_heldout({"en": Corpus("en", documents=list(sel.documents))}, ns)
    with pytest.raises(TLCultureError, match=r"eval corpus 'e2' \(flores/en.txt\) overlaps the selection text"):
        check_heldout({"e2": full}, ns)
    plain = NeuronSet(["en"], torch.zeros(1, L, N, dtype=torch.bool))
    leaky = Corpus("x", documents=["new text", "doc 3"], source="other")
    with pytest.raises(TLCultureError, match=r"shares 1 document\(s\) with selection corpus 'en'; evaluate on"):
        check_heldout({"x": leaky}, plain, selection={"en": full})


def test_delta_nll_refuses_selection_text_unless_allowed(models):
    corp = Corpus("x", rows=rows(4, 2))
    ns = NeuronSet(["x"], torch.ones(1, L, N, dtype=torch.bool),
                   {"stats_meta": {"corpora": {"x": {"fingerprint": corp.fingerprint, "source": "tensor"}}}})
    with pytest.raises(TLCultureError, match="or pass allow_overlap=True"):
        delta_nll(models["dense"], {"x": corp}, ns, controls=0, progress=False)
    res = delta_nll(models["dense"], {"x": corp}, ns, controls=0, bootstrap=0, allow_overlap=True, progress=False)
    assert res.delta[0, 0] > 0  # ablating every neuron hurts


def test_delta_nll_validation(models, neurons):
    model = models["dense"]
    with pytest.raises(TLCultureError, match=r"unknown group 'zz'; this neuron set has a, b"):
        delta_nll(model, evals(), neurons, groups=["zz"], progress=False)
    with pytest.raises(TLCultureError, match="controls and bootstrap must be >= 0"):
        delta_nll(model, evals(), neurons, controls=-1, progress=False)
    big = NeuronSet(["a"], torch.ones(1, 5, N, dtype=torch.bool))
    with pytest.raises(TLCultureError, match=r"is for 5 layers x 32 neurons, the model has 3 x 32"):
        delta_nll(model, evals(), big, progress=False)
    with pytest.raises(TLCultureError, match="no corpora given"):
        delta_nll(model, {}, neurons, progress=False)
    with pytest.raises(TLCultureError, match="batch_size must be at least 1"):
        delta_nll(model, evals(), neurons, batch_size=0, progress=False)


# --------------------------------------------------------------------------- NLLMatrix
def test_nll_matrix_roundtrip_and_table(tmp_path, models, neurons):
    res = delta_nll(models["gated"], evals(), neurons, seq_len=12, max_tokens=None, controls=1, bootstrap=20,
                    progress=False)
    res.ablated[1, 0] = math.nan  # a missing cell survives as null
    p = tmp_path / "nll" / "culture.json"
    res.save(p)
    raw = json.loads(p.read_text())
    assert raw["ablated"][1][0] is None and raw["kind"] == "NLLMatrix"
    back = NLLMatrix.load(p)
    assert back.groups == ["a", "b"] and back.evals == ["x", "y"]
    assert torch.equal(back.ablated.nan_to_num(7), res.ablated.nan_to_num(7))
    assert torch.equal(back.control_ci_high, res.control_ci_high)
    assert back.cell("a", "y") == pytest.approx(float(res.ablated[0, 1] - res.baseline[1]))
    text = back.table()
    assert "baseline" in text and "random-neuron control" in text
    assert f"{float(res.baseline[0]):.3f}" in text and f"{float(res.delta[0, 1]):+.3f}" in text


def test_nll_matrix_errors(tmp_path):
    with pytest.raises(TLCultureError, match="no such file"):
        NLLMatrix.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TLCultureError, match="not a JSON NLLMatrix file"):
        NLLMatrix.load(bad)
    bad.write_text('{"kind": "NeuronSet"}')
    with pytest.raises(TLCultureError, match="holds a 'NeuronSet' object, not an NLLMatrix"):
        NLLMatrix.load(bad)
    with pytest.raises(TLCultureError, match=r"NLLMatrix ablated has shape \(1, 1\), expected \(2, 1\)"):
        NLLMatrix(["a", "b"], ["x"], [1.0], [[1.0]], [3])
    with pytest.raises(TLCultureError, match="one value per eval corpus"):
        NLLMatrix(["a"], ["x", "y"], [1.0], [[1.0, 2.0]], [3, 3])
    m = NLLMatrix(["a"], ["x"], [1.0], [[1.5]], [3])
    assert m.delta.tolist() == [[0.5]]
    with pytest.raises(TLCultureError, match="unknown eval corpus 'q'"):
        m.cell("a", "q")


# --------------------------------------------------------------------------- split-half
def test_split_half_stability_by_hand(tiny_hf_model):
    from tl_culture import collect, identify

    corpora = {
        "en": Corpus("en", documents=["the cat sat on the mat", "a dog ran", "the sun is hot", "we eat bread"]),
        "ru": Corpus("ru", documents=["кошка спит", "собака бежит", "солнце светит", "мы едим хлеб"]),
    }
    got = split_half_stability(tiny_hf_model, corpora, seed=2, seq_len=16, top_rate=0.1, progress=False)
    halves = {g: c.halves(2) for g, c in corpora.items()}
    sets = [identify(collect(tiny_hf_model, {g: h[i] for g, h in halves.items()}, seq_len=16, progress=False),
                     top_rate=0.1) for i in (0, 1)]
    for g in corpora:
        a, b = sets[0].mask(g), sets[1].mask(g)
        union = int((a | b).sum())
        assert got[g] == pytest.approx(int((a & b).sum()) / union if union else 0.0)
        assert 0.0 <= got[g] <= 1.0


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
                    batch_size=2, max_tokens=96, controls=1, bootstrap=200, progress=False)
    d, ctrl = res.delta[0], res.control_delta[0]
    assert d[0] > 0  # ablating Russian neurons raises the NLL of held-out Russian text ...
    assert d[0] > ctrl[0]  # ... more than ablating as many random neurons per layer ...
    assert d[0] > d[1]  # ... and more than it raises the NLL of English text
    assert res.delta_ci_low[0, 0] > 0


@pytest.mark.slow
def test_shared_prefix_is_exact_on_gemma(default_model, shared_data):
    from tl_culture import load_corpus

    masks = torch.zeros(2, 18, 2048, dtype=torch.bool)
    masks[0, 12:, :40] = True
    masks[1, 15:, 100:300] = True
    ns = NeuronSet(["a", "b"], masks)
    ev = {"de": load_corpus(shared_data / "flores" / "de.txt", name="de", max_documents=3),
          "fa": load_corpus(shared_data / "flores" / "fa.txt", name="fa", max_documents=1)}
    kw = dict(seq_len=24, batch_size=4, max_tokens=40, controls=0, bootstrap=0, progress=False)
    fast = delta_nll(default_model, ev, ns, **kw)
    slow = delta_nll(default_model, ev, ns, shared_prefix=False, **kw)
    assert fast.meta["shared_prefix"] is True and fast.meta["start_layer"] == 12
    torch.testing.assert_close(fast.ablated, slow.ablated, rtol=0, atol=1e-6)
    assert (fast.delta[1] > 0).all()


# --------------------------------------------------------------------------- run_experiment stage
def test_run_experiment_writes_nll_matrices(tmp_path, tiny_hf_model):
    from tl_culture.experiment.run import CATEGORIES, ExperimentConfig, run_experiment

    cfg = ExperimentConfig(out=str(tmp_path / "run"), seq_len=32, max_tokens=300, eval_tokens=24, bootstrap=50,
                           control_seeds=1, eval_batch_size=16, progress=False, top_rate=0.1)
    res = run_experiment(cfg, model=tiny_hf_model)
    cultures = list(res.extra["pairs"])
    for name in CATEGORIES:
        m = NLLMatrix.load(tmp_path / "run" / "nll" / f"{name}.json")
        assert m.groups == res.categories[name].groups
        if name == "language":
            assert m.evals == [f"lang:{res.extra['pairs'][c]}" for c in cultures]
        else:
            assert m.evals == [f"cult:{c}" for c in cultures]
        assert m.control_delta is not None and m.delta_ci_low is not None
        assert (m.tokens == 24).all()
        torch.testing.assert_close(m.ablated, res.extra["nll"][name].ablated, equal_nan=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["nll"]) == set(CATEGORIES)
    assert summary["config"]["eval_mode"] == "matched"


def test_run_experiment_eval_config_errors(tmp_path):
    from tl_culture.experiment.run import ExperimentConfig

    with pytest.raises(TLCultureError, match="--eval-mode must be matched or all, got 'some'"):
        ExperimentConfig(out=str(tmp_path), eval_mode="some")
    with pytest.raises(TLCultureError, match="--eval-tokens must be positive, got 0"):
        ExperimentConfig(out=str(tmp_path), eval_tokens=0)
    with pytest.raises(TLCultureError, match="--controls and --bootstrap must be 0 or more"):
        ExperimentConfig(out=str(tmp_path), control_seeds=-1)
    with pytest.raises(TLCultureError, match="--eval-batch-size must be at least 1, got 0"):
        ExperimentConfig(out=str(tmp_path), eval_batch_size=0)


def test_evaluate_categories_modes_and_summary(models, neurons):
    from tl_culture.evaluation.delta import evaluate_categories, summarize

    held = {"lang:en": Corpus("en", rows=rows(5, 1)), "lang:ru": Corpus("ru", rows=rows(6, 1)),
            "cult:a": Corpus("a", rows=rows(7, 1)), "cult:b": Corpus("b", rows=rows(8, 1))}
    cats = {"language": neurons, "culture": neurons}
    pairs = {"a": "en", "b": "ru"}
    kw = dict(seq_len=12, max_tokens=None, controls=1, bootstrap=0, progress=False)
    matched = evaluate_categories(models["dense"], cats, held, pairs, **kw)
    assert matched["language"].evals == ["lang:en", "lang:ru"] and matched["culture"].evals == ["cult:a", "cult:b"]
    every = evaluate_categories(models["dense"], cats, held, pairs, mode="all", **kw)
    assert every["culture"].evals == list(held) and every["culture"].meta["eval_mode"] == "all"
    torch.testing.assert_close(every["culture"].delta[:, 2:], matched["culture"].delta)
    # one baseline per set of eval corpora: the second category on the same text reuses it
    assert [every[c].meta["baseline_reused"] for c in cats] == [False, True]
    alone = delta_nll(models["dense"], held, neurons, **kw)
    assert torch.equal(every["culture"].baseline, alone.baseline) and torch.equal(every["culture"].delta, alone.delta)
    s = summarize(every["language"], pairs)
    d = every["language"].delta
    own = torch.tensor([[True, False, True, False], [False, True, False, True]])
    assert s["matched_delta"] == pytest.approx(float(d[own].mean()), abs=1e-5)
    assert s["other_delta"] == pytest.approx(float(d[~own].mean()), abs=1e-5)
    with pytest.raises(TLCultureError, match="unknown eval mode 'some'; use one of matched, all"):
        evaluate_categories(models["dense"], cats, held, pairs, mode="some")


def test_run_cli_eval_options(tmp_path):
    from tl_culture.cli import build_parser
    from tl_culture.cli.core import config_from_args

    a = build_parser().parse_args(["run", "--eval-tokens", "5", "--controls", "2", "--eval-mode", "all", "--no-eval",
                                   "--bootstrap", "0", "--eval-batch-size", "3"])
    c = config_from_args(a)
    got = (c.eval_tokens, c.control_seeds, c.eval_mode, c.evaluate, c.bootstrap, c.eval_batch_size)
    assert got == (5, 2, "all", False, 0, 3)
    d = config_from_args(build_parser().parse_args(["run"]))
    assert (d.eval_tokens, d.control_seeds, d.eval_mode, d.evaluate, d.bootstrap) == (128, 1, "matched", True, 1000)
    # a config file fills what the command line leaves out; the command line wins
    (tmp_path / "c.toml").write_text('out = "o"\neval_tokens = 64\ncontrol_seeds = 3\n[languages]\nen = "en.txt"\n'
                                     '[cultures]\nen = "en.txt"\n')
    (tmp_path / "en.txt").write_text("hello\n")
    e = config_from_args(build_parser().parse_args(["run", "--config", str(tmp_path / "c.toml"), "--controls", "5"]))
    assert (e.out, e.eval_tokens, e.control_seeds) == ("o", 64, 5)
    assert e.languages == {"en": str(tmp_path / "en.txt")}  # relative to the config file
