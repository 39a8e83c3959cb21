"""Per-token NLLs: the formula with padding, and the forward engine under named interventions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import hand_nll, xy_corpora
from tl_culture import Corpus, NeuronSet, TLCultureError
from tl_culture.evaluation.nll import token_nll, token_nlls
from tl_culture.intervene.interventions import ablate


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


def test_token_nlls_by_key_and_eval(tiny_models, ab_neurons):
    model = tiny_models["gated"]
    ev = xy_corpora()
    empty = ablate(NeuronSet(["e"], torch.zeros(1, 3, 32, dtype=torch.bool)), "e")
    ints = {"none": None, ("ablate", "a"): ablate(ab_neurons, "a"), "empty": empty}
    nll, info = token_nlls(model, ev, ints, seq_len=12, batch_size=2, max_tokens=None, progress=False)
    assert list(nll) == ["none", ("ablate", "a"), "empty"] and all(list(v) == ["x", "y"] for v in nll.values())
    assert info["batch_size"] == 2 and info["seq_len"] == 12
    for e, c in ev.items():
        assert nll["none"][e].shape == (c.rows.numel() - c.rows.shape[0],)
        assert float(nll["none"][e].mean()) == pytest.approx(hand_nll(model, c.rows), abs=1e-5)
        hooks = ints["ablate", "a"].fwd_hooks(model)
        assert float(nll["ablate", "a"][e].mean()) == pytest.approx(hand_nll(model, c.rows, hooks), abs=1e-5)
        assert torch.equal(nll["empty"][e], nll["none"][e])  # an empty group changes nothing


def test_padded_batches_give_each_corpus_alone(tiny_hf_model):
    masks = torch.zeros(1, 2, 48, dtype=torch.bool)
    masks[0, 1, :10] = True
    it = ablate(NeuronSet(["g"], masks), "g")
    ev = {"en": ["the cat sat on the mat"] * 3, "de": ["der Hund schläft", "кошка спит"]}
    kw = dict(seq_len=8, max_tokens=None, progress=False)
    together, _ = token_nlls(tiny_hf_model, ev, {"base": None, "g": it}, batch_size=3, **kw)
    for name, docs in ev.items():
        alone, _ = token_nlls(tiny_hf_model, {name: docs}, {"base": None, "g": it}, batch_size=1, **kw)
        for key in ("base", "g"):
            torch.testing.assert_close(together[key][name], alone[key][name], rtol=0, atol=1e-6)


def test_a_cap_per_corpus_scores_each_corpus_as_its_own_cap_would(tiny_hf_model):
    ev = {"en": ["the cat sat on the mat"] * 4, "de": ["der Hund schläft auf dem Sofa"] * 4}
    kw = dict(seq_len=8, batch_size=2, progress=False)
    both, info = token_nlls(tiny_hf_model, ev, {"base": None}, max_tokens={"en": 5, "de": 17}, **kw)
    assert [len(both["base"][e]) for e in ev] == [5, 17] and info["max_tokens"] == {"en": 5, "de": 17}
    for name, cap in (("en", 5), ("de", 17)):
        alone, _ = token_nlls(tiny_hf_model, {name: ev[name]}, {"base": None}, max_tokens=cap, **kw)
        torch.testing.assert_close(both["base"][name], alone["base"][name], rtol=0, atol=1e-6)
    uncapped, _ = token_nlls(tiny_hf_model, ev, {"base": None}, max_tokens={"en": 5}, **kw)
    full, _ = token_nlls(tiny_hf_model, {"de": ev["de"]}, {"base": None}, max_tokens=None, **kw)
    assert len(uncapped["base"]["de"]) == len(full["base"]["de"]) > 17  # a corpus not named is scored whole


def test_hooks_already_on_the_model_stay_on_for_every_pass(tiny_models, ab_neurons):
    model = tiny_models["dense"]
    ids = xy_corpora()["x"].rows
    user = ("blocks.0.hook_resid_pre", lambda x, hook: x * 1.5)
    ints = {"base": None, "a": ablate(ab_neurons, "a")}
    with model.hooks(fwd_hooks=[user]):
        nll, _ = token_nlls(model, {"x": ids}, ints, seq_len=12, max_tokens=None, progress=False)
    assert float(nll["base"]["x"].mean()) == pytest.approx(hand_nll(model, ids, [user]), abs=1e-5)
    both = [user, *ints["a"].fwd_hooks(model)]
    assert float(nll["a"]["x"].mean()) == pytest.approx(hand_nll(model, ids, both), abs=1e-5)
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())  # nothing left behind


def three_corpora() -> dict[str, list[str]]:
    return {"en": ["the cat sat on the mat"] * 4, "de": ["der Hund schläft"] * 5, "ru": ["кошка спит"] * 6}


def test_evals_of_scores_a_key_on_its_corpora_only(tiny_hf_model):
    masks = torch.zeros(1, 2, 48, dtype=torch.bool)
    masks[0, 0, :12] = True
    it = ablate(NeuronSet(["g"], masks), "g")
    kw = dict(seq_len=8, max_tokens=None, progress=False, batch_size=2)
    full, info_full = token_nlls(tiny_hf_model, three_corpora(), {"base": None, "g": it}, **kw)
    part, info = token_nlls(tiny_hf_model, three_corpora(), {"base": None, "g": it}, evals_of={"g": ["en", "ru"]}, **kw)
    assert list(part["g"]) == ["en", "ru"] and list(part["base"]) == ["en", "de", "ru"]
    for e in ("en", "ru"):  # the same tokens, whichever rows shared the batch
        torch.testing.assert_close(part["g"][e], full["g"][e], rtol=0, atol=1e-6)
    de = len(full["base"]["de"])
    assert info["scored_tokens"] == info_full["scored_tokens"] - de > 0
    none, _ = token_nlls(tiny_hf_model, three_corpora(), {"base": None, "g": it}, evals_of={"g": []}, **kw)
    assert none["g"] == {}
    with pytest.raises(TLCultureError, match="unknown eval corpora \\['fr'\\]"):
        token_nlls(tiny_hf_model, three_corpora(), {"g": it}, evals_of={"g": ["fr"]}, **kw)


@pytest.mark.parametrize("backend", ["native", "hooks"])
def test_both_backends_give_the_hand_nll(tiny_hf_model, backend):
    from tl_culture.data.rows import encode

    masks = torch.zeros(1, 2, 48, dtype=torch.bool)
    masks[0, 1, 5:20] = True
    it = ablate(NeuronSet(["g"], masks), "g")
    docs = three_corpora()["en"]
    nll, info = token_nlls(tiny_hf_model, {"en": docs}, {"base": None, "g": it}, seq_len=8, max_tokens=None,
                           progress=False, backend=backend)
    assert info["backend"] == backend and "backend_note" not in info
    ids = encode(Corpus("en", documents=docs), tiny_hf_model.tokenizer, 8).input_ids
    full = ids[:-1]  # the packed rows of the full width (the last one is shorter)
    n = (full.shape[1] - 1) * len(full)
    assert n > 0 and full.shape[1] == 8
    assert float(nll["base"]["en"][:n].mean()) == pytest.approx(hand_nll(tiny_hf_model, full), abs=1e-5)
    hooks = it.fwd_hooks(tiny_hf_model)
    assert float(nll["g"]["en"][:n].mean()) == pytest.approx(hand_nll(tiny_hf_model, full, hooks), abs=1e-5)


def test_out_of_memory_while_scoring_is_one_line_with_the_batch_size_to_try(tiny_hf_model, monkeypatch):
    import tl_culture.evaluation.nll as nll_mod

    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(nll_mod, "hooks_nll", full)
    with pytest.raises(TLCultureError, match=r"^out of memory scoring 2 rows x 8 tokens; use a smaller batch size "
                                             r"\(1: --eval-batch-size for run, --batch-size for evaluate\)$"):
        token_nlls(tiny_hf_model, three_corpora(), {"base": None}, seq_len=8, batch_size=2, max_tokens=None,
                   progress=False, backend="hooks")


def test_a_store_keeps_every_pass_and_a_rerun_scores_none_again(tiny_hf_model, tmp_path, monkeypatch):
    import tl_culture.evaluation.nll as nll_module
    from tl_culture._io import PartStore

    masks = torch.zeros(1, 2, 48, dtype=torch.bool)
    masks[0, 1, 5:20] = True
    ints = {"base": None, "g": ablate(NeuronSet(["g"], masks), "g")}
    kw = dict(seq_len=8, max_tokens=None, progress=False, batch_size=2, evals_of={"g": ["ru", "en"]})
    first, info = token_nlls(tiny_hf_model, three_corpora(), ints, store=PartStore(tmp_path, "s"), **kw)
    assert info["stored_tokens"] == 0 and len(PartStore(tmp_path, "s")) == 2
    calls = []
    real = nll_module._score_batch
    monkeypatch.setattr(nll_module, "_score_batch", lambda *a: calls.append(1) or real(*a))
    again, info = token_nlls(tiny_hf_model, three_corpora(), ints, store=PartStore(tmp_path, "s"), **kw)
    assert calls == [] and info["stored_tokens"] == info["scored_tokens"] > 0
    assert list(again["base"]) == ["en", "de", "ru"] and list(again["g"]) == ["en", "ru"]  # the corpora's order
    for k in ints:
        for e in first[k]:
            assert torch.equal(again[k][e], first[k][e])
    other, info = token_nlls(tiny_hf_model, three_corpora(), ints, store=PartStore(tmp_path, "other"), **kw)
    assert info["stored_tokens"] == 0 and len(calls) > 0  # units of other settings are not used
