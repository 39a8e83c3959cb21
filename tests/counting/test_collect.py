"""`collect`: the LAPE statistic against hand computations on tiny dense and gated models, its
settings, and out-of-memory errors."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_rows
from tl_culture import MLPHooks, TLCultureError, collect
from tl_culture.counting.counter import Counter


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


# --------------------------------------------------------------------------- settings and errors
@pytest.mark.parametrize("kw, message", [
    (dict(checkpoint_every=0), "checkpoint_every must be a positive number of rows, got 0"),
    (dict(checkpoint_seconds=0), "checkpoint_seconds must be positive, got 0"),
    (dict(batch_size=0), "batch_size must be at least 1, got 0"),
])
def test_bad_collect_numbers(gated_model, tmp_path, kw, message):
    with pytest.raises(TLCultureError) as err:
        collect(gated_model, {"a": random_rows(1, 7, 8)}, seq_len=8, progress=False, checkpoint_dir=tmp_path, **kw)
    assert str(err.value) == message




def test_out_of_memory_with_one_row_per_batch(gated_model, monkeypatch):
    def oom(self, batch):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789 bytes")

    monkeypatch.setattr(Counter, "run_batch", oom)
    with pytest.raises(TLCultureError) as err:
        collect(gated_model, {"a": random_rows(1, 7, 8)}, seq_len=8, batch_size=1, progress=False)
    assert str(err.value) == (
        "out of memory on cpu running 1 rows x 8 tokens; use a smaller --seq-len (a batch is already one row)"
    )


# --------------------------------------------------------------------------- the embedded model (slow)
LANGS = ["en", "de", "da", "zh", "ru", "fa"]


@pytest.mark.slow
def test_gemma_statistic_is_act_fn_of_gate(default_model):
    mlp = MLPHooks.from_model(default_model)
    assert (mlp.n_layers, mlp.d_mlp, mlp.gated, mlp.act_fn) == (18, 2048, True, "gelu_pytorch_tanh")
    ids = default_model.tokenizer("Die Katze schläft auf dem Sofa.", return_tensors="pt").input_ids
    stats = collect(default_model, {"a": ids, "b": ids}, seq_len=ids.shape[1], progress=False)
    with torch.inference_mode():
        _, cache = default_model.run_with_cache(ids, names_filter=lambda n: n.endswith("mlp.hook_pre"))
    want = torch.stack([(torch.nn.functional.gelu(cache[mlp.pre(l)], approximate="tanh") > 0).sum((0, 1))
                        for l in range(18)])
    assert torch.equal(stats.counts[0], want)


@pytest.mark.slow
def test_flores_languages_get_neurons(default_model, shared_data):
    from tl_culture import identify

    corpora = {lang: shared_data / "flores" / f"{lang}.txt" for lang in LANGS}
    stats = collect(default_model, corpora, seq_len=256, max_tokens=1000, progress=False)
    assert stats.tokens.tolist() == [1000] * 6
    ns = identify(stats)
    assert ns.meta["n_selected"] == round(18 * 2048 * 0.01) == 369
    assert ns.count() <= 369
    assert sum(n > 0 for n in ns.counts().values()) >= 5
    print(ns.table())
