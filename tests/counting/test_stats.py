"""The LAPE statistic against hand computations on tiny dense and gated models."""

import pytest
import torch
import torch.nn.functional as F

from tl_culture import ActivationStats, MLPHooks, TLCultureError, collect


def hand_counts(model, rows, act):
    """Count act(hook_pre) > 0 per layer from a full run_with_cache (the slow obvious way)."""
    mlp = MLPHooks.from_model(model)
    with torch.inference_mode():
        _, cache = model.run_with_cache(rows)
    counts = torch.stack([(act(cache[mlp.pre(l)]) > 0).sum((0, 1)) for l in range(mlp.n_layers)])
    sums = torch.stack([act(cache[mlp.pre(l)]).double().sum((0, 1)) for l in range(mlp.n_layers)])
    post = torch.stack([(cache[mlp.post(l)] > 0).sum((0, 1)) for l in range(mlp.n_layers)])
    return counts, sums, post


@pytest.mark.parametrize("gated, act", [(False, F.gelu), (True, F.silu)])
def test_counts_equal_hand_computation(gated, act):
    from tests.conftest import tiny_model

    model = tiny_model(gated)
    g = torch.Generator().manual_seed(1)
    rows_a = torch.randint(0, 64, (5, 12), generator=g)
    rows_b = torch.randint(0, 64, (4, 12), generator=g)
    stats = collect(model, {"a": rows_a, "b": rows_b}, seq_len=12, batch_size=2, progress=False)
    for k, rows in enumerate([rows_a, rows_b]):
        counts, sums, post = hand_counts(model, rows, act)
        assert torch.equal(stats.counts[k], counts)
        torch.testing.assert_close(stats.sums[k], sums, rtol=1e-6, atol=1e-6)  # float32 per batch
        assert stats.tokens[k] == rows.numel()
        if gated:  # hook_post = act(gate) * up has another sign pattern: it is NOT the statistic
            assert not torch.equal(post, counts)
    assert stats.meta["gated"] is gated and stats.meta["n_layers"] == 3 and stats.meta["d_mlp"] == 32


def test_batch_size_invariance(gated_model):
    rows = torch.randint(0, 64, (11, 10), generator=torch.Generator().manual_seed(2))
    results = [
        collect(gated_model, {"a": rows, "b": rows[:3]}, seq_len=10, batch_size=b, progress=False) for b in (1, 3, 11)
    ]
    for r in results[1:]:
        assert torch.equal(r.counts, results[0].counts) and torch.equal(r.tokens, results[0].tokens)


def test_stops_before_unembedding(gated_model):
    calls = []
    rows = torch.randint(0, 64, (2, 8))
    with gated_model.hooks(fwd_hooks=[("unembed.hook_in", lambda x, hook: calls.append(1))]):
        collect(gated_model, {"a": rows, "b": rows}, seq_len=8, progress=False)
        assert calls == []
        gated_model(rows)  # the user's hook is still there and fires on a normal forward
    assert calls == [1]
    assert all(not hp._forward_hooks for hp in gated_model.hook_dict.values()), "collect left hooks behind"


def test_padding_excluded_and_mask_passed(tiny_hf_model):
    """Unpacked, right-padded batches give exactly the counts of each document run alone."""
    docs = ["the cat sat on the mat", "der Hund schläft", "кошка спит на диване", "猫在睡觉"]
    padded = collect(tiny_hf_model, {"x": docs, "y": docs[:2]}, seq_len=32, batch_size=4, pack=False, progress=False)
    alone = [collect(tiny_hf_model, {"x": [d], "y": [d]}, seq_len=32, pack=False, progress=False) for d in docs]
    assert torch.equal(padded.counts[0], sum(a.counts[0] for a in alone))
    assert padded.tokens[0] == sum(int(a.tokens[0]) for a in alone)
    tok = tiny_hf_model.tokenizer
    assert padded.tokens[0] == sum(len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs)


def test_save_load_and_merge(tmp_path):
    a = ActivationStats(
        ["x", "y"],
        torch.tensor([[[1, 2]], [[3, 4]]]),
        torch.tensor([5, 6]),
        torch.ones(2, 1, 2, dtype=torch.float64),
        {"model": "m"},
    )
    b = ActivationStats(
        ["y", "z"],
        torch.tensor([[[1, 1]], [[0, 2]]]),
        torch.tensor([2, 3]),
        torch.ones(2, 1, 2, dtype=torch.float64),
        {"model": "m"},
    )
    a.save(tmp_path / "a.safetensors")
    a2 = ActivationStats.load(tmp_path / "a.safetensors")
    assert torch.equal(a2.counts, a.counts) and torch.equal(a2.sums, a.sums) and a2.meta == {"model": "m"}
    m = a + b
    assert m.groups == ["x", "y", "z"]
    assert m.counts.tolist() == [[[1, 2]], [[4, 5]], [[0, 2]]]
    assert m.tokens.tolist() == [5, 8, 3]
    assert m.sums[1].tolist() == [[2.0, 2.0]]
    assert m.probabilities[1, 0, 1].item() == pytest.approx(5 / 8)
    assert m.mean_activation()[2, 0, 0].item() == pytest.approx(1 / 3)
    with pytest.raises(TLCultureError, match="different model"):
        a + ActivationStats(["q"], torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([1]))


def test_loading_a_foreign_file_is_refused(tmp_path):
    from tl_culture import NeuronSet

    NeuronSet(["a"], torch.zeros(1, 1, 2, dtype=torch.bool)).save(tmp_path / "n.safetensors")
    with pytest.raises(TLCultureError, match="holds a 'NeuronSet' object, expected 'ActivationStats'"):
        ActivationStats.load(tmp_path / "n.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(TLCultureError, match="not a readable tl-culture file"):
        ActivationStats.load(tmp_path / "junk.safetensors")


def test_invalid_stats_are_refused():
    with pytest.raises(TLCultureError, match="more tokens than its group has"):
        ActivationStats(["a"], torch.tensor([[[5]]]), torch.tensor([4]))


def test_every_supported_activation_is_sign_preserving():
    """collect tests z > 0 in place of act_fn(z) > 0: that must hold for every supported act_fn."""
    from tl_culture.model.load import ACTIVATIONS

    z = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor([-1e-30, -1e-20, 0.0, 1e-20, 1e-30])])
    for name, act in ACTIVATIONS.items():
        for dtype in (torch.float32, torch.bfloat16):
            x = z.to(dtype)
            assert torch.equal(act(x) > 0, x > 0), (name, dtype)
