"""Measured steering on a tiny model with a stubbed language identifier (plumbing, rates, JSON)."""

import json
import math

import pytest
import torch

from tl_culture.data.rows import prompt_ids
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.rates import wilson_ci
from tl_culture.evaluation.steer_result import SteerEval
from tl_culture.evaluation.steering import read_prompts, steer_eval, steer_evals
from tl_culture.intervene.decode import decode
from tl_culture.intervene.interventions import set_to
from tl_culture.selection.neurons import NeuronSet

PROMPTS = ["the cat sat", "der Hund schläft", "кошка спит", "猫在睡觉", "گربه خوابیده است", "the mat"]


def stub(text: str) -> str:
    """'fa' for an even number of characters, else 'en': deterministic and hand-checkable."""
    return "fa" if len(text) % 2 == 0 else "en"


@pytest.fixture(scope="module")
def edit(tiny_hf_model):
    L, N = tiny_hf_model.cfg.n_layers, tiny_hf_model.cfg.d_mlp
    m = torch.zeros(1, L, N, dtype=torch.bool)
    m[0, :, :8] = True
    return set_to(NeuronSet(["fa"], m), "fa", 3.0)


@pytest.fixture(scope="module")
def result(tiny_hf_model, edit):
    return steer_eval(tiny_hf_model, PROMPTS, edit, "fa", controls=2, max_new_tokens=6, identifier=stub)


def test_continuations_are_the_decoder_s(tiny_hf_model, edit, result):
    ids = [prompt_ids(tiny_hf_model, p) for p in PROMPTS]
    tok = tiny_hf_model.tokenizer
    eos = tok.eos_token_id
    for cond, e in (("baseline", None), ("steered", edit)):
        gen = decode(tiny_hf_model, ids, e, max_new_tokens=6, eos=eos)
        want = [tok.decode(t, skip_special_tokens=True) for t in gen]
        got = [o["text"] for o in result.outputs if o["mode"] == "greedy" and o["condition"] == cond]
        assert got == want
    assert len(result.outputs) == len(PROMPTS) * 4 * 2  # 2 modes x (baseline, steered, 2 controls)
    assert all(o["language"] == stub(o["text"]) for o in result.outputs)
    assert result.meta["control"][0].startswith("set(random~")


def test_rates_and_cis_by_hand(result):
    n = len(PROMPTS)
    for mode in ("greedy", "sampled"):
        for cond in ("baseline", "steered", "control"):
            outs = [o for o in result.outputs if o["mode"] == mode and o["condition"] == cond]
            share = sum(o["language"] == "fa" for o in outs) / len(outs)
            rate, lo, hi = result.rate(cond, mode)
            assert math.isclose(rate, share)
            assert (lo, hi) == wilson_ci(share, n)
        per = {c: result.shares(c, mode) for c in ("steered", "control")}
        d, lo, hi = result.difference("steered", "control", mode)
        assert math.isclose(d, float((per["steered"] - per["control"]).mean()))
        assert lo <= d <= hi


def test_save_load_json(result, tmp_path):
    path = tmp_path / "steer.json"
    result.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    for key in ("target_language", "n_prompts", "baseline_rate", "steered_rate", "control_rate",
                "baseline_ci", "steered_ci", "control_ci", "steered_minus_control_ci"):
        assert key in d, key
    assert d["n_prompts"] == len(PROMPTS) and d["mode"] == "greedy"
    assert d["steered_rate"] == pytest.approx(result.rate("steered")[0])
    back = SteerEval.load(path)
    assert back.to_dict() == d and "steered" in back.table()
    path.write_text('{"kind": "nll"}', encoding="utf-8")
    with pytest.raises(TLCultureError, match="not a steering evaluation"):
        SteerEval.load(path)


def test_several_targets_share_the_baseline(tiny_hf_model, edit, result):
    other = set_to(NeuronSet(["fa"], edit.mask[None]), "fa", -2.0)
    evals = steer_evals(tiny_hf_model, PROMPTS, {"fa": edit, "en": other}, controls=1, modes=["greedy"],
                        max_new_tokens=6, identifier=stub)
    assert sorted(evals) == ["en", "fa"]
    base = [[o["text"] for o in ev.outputs if o["condition"] == "baseline"] for ev in evals.values()]
    assert base[0] == base[1]
    fa = evals["fa"]
    assert [o["text"] for o in fa.outputs] == [o["text"] for o in result.outputs if o["mode"] == "greedy"][:18]
    assert fa.rate("steered") == result.rate("steered") and evals["en"].target_language == "en"


def test_read_prompts_and_bad_arguments(tmp_path, tiny_hf_model, edit):
    f = tmp_path / "p.txt"
    f.write_text("  first \n\n second\n", encoding="utf-8")
    assert read_prompts(f) == ["first", "second"]
    f.write_text("\n \n", encoding="utf-8")
    with pytest.raises(TLCultureError, match="no prompts"):
        read_prompts(f)
    with pytest.raises(TLCultureError, match="does not exist"):
        read_prompts(tmp_path / "none.txt")
    with pytest.raises(TLCultureError, match="list of texts"):
        steer_eval(tiny_hf_model, "one prompt", edit, "fa", identifier=stub)
    with pytest.raises(TLCultureError, match="decoding mode"):
        steer_eval(tiny_hf_model, PROMPTS, edit, "fa", modes=["beam"], identifier=stub)
    with pytest.raises(TLCultureError, match="temperature"):
        steer_eval(tiny_hf_model, PROMPTS, edit, "fa", temperature=0, identifier=stub)


@pytest.mark.slow
def test_default_model_persian_neurons_steer_towards_persian(default_model, shared_data):
    """Persian language neurons (LAPE on FLORES en/fa) set to their Persian mean: more Persian output."""
    from tl_culture.counting.collect import collect
    from tl_culture.selection.lape import identify

    corpora = {g: str(shared_data / "flores" / f"{g}.txt") for g in ("en", "fa", "de")}
    stats = collect(default_model, corpora, seq_len=128, max_tokens=3000, progress=False)
    neurons = identify(stats)
    prompts = read_prompts(shared_data / "mvicuna" / "en.txt")[:6]
    ev = steer_eval(default_model, prompts, set_to(neurons, "fa", stats), "fa", controls=1, modes=["greedy"],
                    max_new_tokens=16)
    assert ev.rate("baseline")[0] <= 1 / 6  # English questions get English answers
    assert ev.rate("steered")[0] > ev.rate("control")[0]
