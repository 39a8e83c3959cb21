"""Steering: greedy/sampled continuations with and without an intervention."""

from __future__ import annotations

import pytest
import torch

from tl_culture import NeuronSet, TLCultureError, ablate, generate, scale


@pytest.fixture(scope="module")
def gated(gated_model):
    return gated_model


@pytest.fixture(scope="module")
def neurons() -> NeuronSet:
    m = torch.zeros(1, 3, 32, dtype=torch.bool)
    m[0, 1:, :16] = True
    return NeuronSet(["fa"], m)


def greedy_by_hand(model, ids: torch.Tensor, n: int, hooks=()) -> list[int]:
    x, out = ids.clone(), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model.run_with_hooks(x, fwd_hooks=list(hooks))[0, -1].argmax())
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], 1)
    return out


def test_greedy_matches_hand_loop(gated, neurons):
    prompt = torch.tensor([1, 5, 9, 2])
    edit = scale(neurons, "fa", 8.0)
    res = generate(gated, prompt, edit, max_new_tokens=6)
    assert res.baseline_tokens == greedy_by_hand(gated, prompt[None], 6)
    assert res.steered_tokens == greedy_by_hand(gated, prompt[None], 6, edit.fwd_hooks(gated))
    assert res.baseline == " ".join(map(str, res.baseline_tokens))  # no tokenizer: ids
    assert sum(len(hp.fwd_hooks) for hp in gated.hook_dict.values()) == 0


def test_sampling_is_deterministic_with_seed(gated, neurons):
    prompt = torch.tensor([3, 4])
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=20)
    a = generate(gated, prompt, scale(neurons, "fa", 1.0), seed=7, **kw)
    b = generate(gated, prompt, scale(neurons, "fa", 1.0), seed=7, **kw)
    c = generate(gated, prompt, scale(neurons, "fa", 1.0), seed=8, **kw)
    assert a.baseline_tokens == b.baseline_tokens
    assert a.steered_tokens == a.baseline_tokens  # a no-op intervention with the same seed picks the same tokens
    assert c.baseline_tokens != a.baseline_tokens
    assert all(0 <= t < 64 for t in a.baseline_tokens)


def test_text_prompt_and_side_by_side(tiny_hf_model):
    m = torch.zeros(1, 2, 48, dtype=torch.bool)
    m[0, :, :24] = True
    ns = NeuronSet(["en"], m)
    res = generate(tiny_hf_model, "the cat", ablate(ns, "en"), max_new_tokens=5, stop_at_eos=False)
    assert len(res.baseline_tokens) == 5 and len(res.steered_tokens) == 5
    assert res.baseline == tiny_hf_model.tokenizer.decode(res.baseline_tokens, skip_special_tokens=True)
    text = res.side_by_side(80)
    assert text.splitlines()[0] == "prompt: the cat"
    assert "ablate(en)" in text and " | " in text
    n_prompt = len(tiny_hf_model.tokenizer("the cat", add_special_tokens=False)["input_ids"])
    assert res.meta["prompt_tokens"] == 1 + n_prompt


def test_generate_errors(gated, neurons):
    edit = ablate(neurons, "fa")
    with pytest.raises(TLCultureError, match="expected an Intervention"):
        generate(gated, torch.tensor([1]), "ablate")
    with pytest.raises(TLCultureError, match="max_new_tokens must be at least 1, got 0"):
        generate(gated, torch.tensor([1]), edit, max_new_tokens=0)
    with pytest.raises(TLCultureError, match="temperature must be >= 0"):
        generate(gated, torch.tensor([1]), edit, temperature=-1)
    with pytest.raises(TLCultureError, match="top_k must be at least 1"):
        generate(gated, torch.tensor([1]), edit, top_k=0)
    with pytest.raises(TLCultureError, match="this model has no tokenizer; give the prompt as a 1-D tensor"):
        generate(gated, "hello", edit)
    with pytest.raises(TLCultureError, match="the prompt has no tokens"):
        generate(gated, torch.tensor([], dtype=torch.long), edit)
