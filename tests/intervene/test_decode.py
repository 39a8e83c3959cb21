"""Cached decoding (the HF model's KV cache, edits as torch hooks) against the uncached TL loop."""

import pytest
import torch

from tests.conftest import make_tiny_hf_checkpoint
from tl_culture.data.rows import prompt_ids
from tl_culture.errors import TLCultureError
from tl_culture.intervene.decode import cache_problem, decode, pick_token
from tl_culture.intervene.interventions import ablate, scale, set_to
from tl_culture.intervene.steer import generate
from tl_culture.model.load import load_model
from tl_culture.selection.neurons import NeuronSet

TEXTS = ["the cat sat", "der Hund schläft auf dem", "кошка", "猫在睡觉 the mat", "گربه"]


@pytest.fixture(scope="module")
def hf_model(tiny_hf_model):
    """A bridge over a tiny HF Llama (gated SiLU): the cached decoder runs on it."""
    return tiny_hf_model


def _edits(model):
    L, N = model.cfg.n_layers, model.cfg.d_mlp
    m = torch.zeros(1, L, N, dtype=torch.bool)
    m[0, 0, :10] = True
    m[0, L - 1, 5:20] = True
    ns = NeuronSet(["a"], m)
    return [None, ablate(ns, "a"), scale(ns, "a", 4.0), scale(ns, "a", 3.0), set_to(ns, "a", 2.5)]


def test_cached_equals_uncached_token_for_token(hf_model):
    assert cache_problem(hf_model) is None
    prompts = [prompt_ids(hf_model, t) for t in TEXTS]
    for edit in _edits(hf_model):
        for temperature in (0.0, 1.0):
            kw = {"max_new_tokens": 10, "temperature": temperature, "seed": 5}
            cached = decode(hf_model, prompts, edit, cache=True, batch_size=3, **kw)
            plain = decode(hf_model, prompts, edit, cache=False, **kw)
            assert cached == plain, (edit and edit.name, temperature)
            assert [len(c) for c in cached] == [10] * len(TEXTS)


def test_batches_do_not_change_tokens_and_edits_are_removed(hf_model):
    prompts = [prompt_ids(hf_model, t) for t in TEXTS]
    edit = _edits(hf_model)[4]
    one = decode(hf_model, prompts, edit, max_new_tokens=6, temperature=0.7, batch_size=1)
    five = decode(hf_model, prompts, edit, max_new_tokens=6, temperature=0.7, batch_size=5)
    assert one == five
    assert decode(hf_model, prompts, None, max_new_tokens=6) != five  # the edit acts ...
    assert decode(hf_model, prompts[:2], None, max_new_tokens=6) == decode(  # ... and is gone afterwards
        hf_model, prompts[:2], None, max_new_tokens=6, cache=False)


def test_same_tokens_as_generate(hf_model):
    edit = _edits(hf_model)[1]
    res = generate(hf_model, TEXTS[1], edit, max_new_tokens=8, seed=2, temperature=0.9, stop_at_eos=False)
    ids = [prompt_ids(hf_model, TEXTS[1])]
    assert decode(hf_model, ids, None, max_new_tokens=8, seed=2, temperature=0.9)[0] == res.baseline_tokens
    assert decode(hf_model, ids, edit, max_new_tokens=8, seed=2, temperature=0.9)[0] == res.steered_tokens


def test_eos_stops_a_prompt(hf_model):
    prompts = [prompt_ids(hf_model, t) for t in TEXTS]
    full = decode(hf_model, prompts, None, max_new_tokens=8)
    eos = full[0][2]
    cut = decode(hf_model, prompts, None, max_new_tokens=8, eos=eos)
    for c, f in zip(cut, full):
        assert c == f[: f.index(eos) + 1] if eos in f else c == f


def test_gpt2_falls_back_to_the_uncached_loop(tmp_path):
    # the bridge's GPT-2 forward is not bit-identical to the HF modules run alone: no fast path
    model = load_model(str(make_tiny_hf_checkpoint(tmp_path / "gpt2", "gpt2")), device="cpu")
    assert "hook_pre differs" in cache_problem(model)
    prompts = [prompt_ids(model, t) for t in TEXTS[:2]]
    edit = _edits(model)[1]
    assert decode(model, prompts, edit, max_new_tokens=4) == decode(model, prompts, edit, max_new_tokens=4, cache=False)


def test_uncached_fallback_on_a_tl_native_model(gated_model):
    problem = cache_problem(gated_model)
    assert problem is not None
    prompts = [torch.tensor([1, 5, 9]), torch.tensor([2, 3])]
    out = decode(gated_model, prompts, None, max_new_tokens=4)
    res = generate(gated_model, prompts[0], ablate(NeuronSet(["a"], torch.ones(1, 3, 32, dtype=torch.bool)), "a"),
                   max_new_tokens=4)
    assert out[0] == res.baseline_tokens and len(out[1]) == 4
    with pytest.raises(TLCultureError, match="cannot decode with a KV cache"):
        decode(gated_model, prompts, None, max_new_tokens=2, cache=True)


def test_pick_token():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    g = torch.Generator().manual_seed(0)
    assert pick_token(logits, 0.0, None, g) == 1
    draws = {pick_token(logits, 1.0, 2, g) for _ in range(50)}
    assert draws == {1, 3}


@pytest.mark.parametrize(("temperature", "top_k"), [(0.5, None), (2.0, None), (0.7, 3)])
def test_pick_token_samples_softmax_of_logits_over_temperature(temperature, top_k):
    """Seeded draws equal a hand-written multinomial(softmax(logits / T)) over the top-k support."""
    logits = torch.tensor([0.5, 3.0, 1.0, 2.0, -1.0])
    z = logits / temperature
    if top_k is not None:
        z = torch.where(z >= torch.topk(z, top_k).values[-1], z, torch.tensor(float("-inf")))
    p = torch.softmax(z, -1)
    mine, hand = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    got = [pick_token(logits, temperature, top_k, mine) for _ in range(200)]
    assert got == [int(torch.multinomial(p, 1, generator=hand)) for _ in range(200)]


@pytest.mark.slow
def test_default_model_cached_equals_uncached(default_model):
    """The embedded Gemma 3: the KV-cached decoder gives the uncached loop's greedy tokens."""
    assert cache_problem(default_model) is None
    prompts = [prompt_ids(default_model, t) for t in ("My grandmother always told me that", "Der Hund")]
    m = torch.zeros(1, default_model.cfg.n_layers, default_model.cfg.d_mlp, dtype=torch.bool)
    m[0, -4:, :64] = True
    for edit in (None, ablate(NeuronSet(["a"], m), "a")):
        cached = decode(default_model, prompts, edit, max_new_tokens=8, cache=True, batch_size=2)
        assert cached == decode(default_model, prompts, edit, max_new_tokens=8, cache=False)
