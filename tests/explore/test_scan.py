"""`top_examples` against brute force (`run_with_cache` on the same batches): values, positions, ties, windows."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_rows
from tl_culture import Corpus, NeuronSet, TLCultureError, top_examples
from tl_culture.data.corpus import as_corpora
from tl_culture.data.rows import RowStream
from tl_culture.model.hooks import MLPHooks


def brute_force(model, corpora, pairs, *, k, window, seq_len, batch_size, pack=True, max_tokens=None):
    """Per group: every neuron's full activations from `run_with_cache` on the same batches, then the
    k best by (value desc, position asc), with windows cut from the full activations."""
    mlp = MLPHooks.from_model(model)
    out = {}
    for g, corpus in as_corpora(corpora).items():
        stream = RowStream(corpus, getattr(model, "tokenizer", None), seq_len, block_rows=batch_size, pack=pack,
                           max_tokens=max_tokens)
        acts, ids, counted = [], [], []
        for batch in stream:
            b = batch.trimmed()
            mask = None if bool(b.attention_mask.all()) else b.attention_mask.long()
            with torch.no_grad():
                _, cache = model.run_with_cache(b.input_ids, attention_mask=mask) if mask is not None else \
                    model.run_with_cache(b.input_ids)
            a = torch.stack([mlp.act(cache[mlp.pre(layer)]).float() for layer in range(mlp.n_layers)], -2)
            pad = seq_len - a.shape[1]
            acts.append(torch.nn.functional.pad(a, (0, 0, 0, 0, 0, pad)))  # [B, seq_len, layer, d_mlp]
            ids.append(torch.nn.functional.pad(b.input_ids, (0, pad), value=-1))
            counted.append(torch.nn.functional.pad(b.count_mask, (0, pad), value=False))
        acts, ids, counted = torch.cat(acts), torch.cat(ids), torch.cat(counted)
        res = {}
        for layer, j in pairs:
            v = acts[:, :, layer, j].reshape(-1)  # key order: row * seq_len + pos
            keys = torch.arange(len(v))[counted.reshape(-1)]
            vv = v[counted.reshape(-1)]
            order = torch.sort(vv, descending=True, stable=True).indices[:k]
            ctx = []
            for key in keys[order].tolist():
                r, p = divmod(key, seq_len)
                span = [q for q in range(p - window, p + window + 1) if 0 <= q < seq_len and counted[r, q]]
                ctx.append((float(v[key]), r, p, ids[r, span].tolist(), acts[r, span, layer, j].tolist()))
            res[(layer, j)] = ctx
        out[g] = res
    return out


def check_equal(ex, brute, pairs):
    for g, res in brute.items():
        for layer, j in pairs:
            got = ex.top(layer, j, g)
            want = res[(layer, j)]
            assert [c.activation for c in got] == [w[0] for w in want]  # exact, same order
            assert [(c.row, c.pos) for c in got] == [(w[1], w[2]) for w in want]
            assert [c.token_ids for c in got] == [w[3] for w in want]
            assert [c.values for c in got] == [w[4] for w in want]
            for c in got:
                assert c.values[c.center] == c.activation


PAIRS = [(0, 3), (0, 17), (1, 0), (2, 31), (2, 5)]


@pytest.mark.parametrize("kind", ["dense", "gated"])
def test_equals_brute_force(kind, tiny_models):
    model = tiny_models[kind]
    corpora = {"a": random_rows(3, n=7, T=20), "b": random_rows(4, n=5, T=20)}
    ex = top_examples(model, corpora, PAIRS, k=6, window=3, seq_len=20, batch_size=3, progress=False)
    assert ex.groups == ["a", "b"] and ex.pairs() == sorted(PAIRS)
    assert ex.tokens_scanned.tolist() == [140, 100]
    check_equal(ex, brute_force(model, corpora, PAIRS, k=6, window=3, seq_len=20, batch_size=3), PAIRS)


def test_ties_broken_by_position(dense_model):
    # the same row four times in one batch: every value appears four times; earlier rows win
    row = random_rows(5, n=1, T=10)
    corpora = {"a": row.repeat(4, 1)}
    ex = top_examples(dense_model, corpora, [(1, 2)], k=6, window=2, seq_len=10, batch_size=4, progress=False)
    got = ex.top(1, 2, "a")
    assert got[0].activation == got[1].activation == got[2].activation == got[3].activation
    assert [(c.row, c.pos) for c in got[:4]] == [(0, got[0].pos), (1, got[0].pos), (2, got[0].pos), (3, got[0].pos)]
    assert got[4].activation == got[5].activation and (got[4].row, got[5].row) == (0, 1)
    check_equal(ex, brute_force(dense_model, corpora, [(1, 2)], k=6, window=2, seq_len=10, batch_size=4), [(1, 2)])


def test_fewer_tokens_than_k_and_max_tokens(gated_model):
    corpora = {"short": random_rows(6, n=1, T=4), "long": random_rows(7, n=4, T=8)}
    ex = top_examples(gated_model, corpora, [(2, 1)], k=8, window=1, seq_len=8, batch_size=2, max_tokens=12,
                      progress=False)
    assert len(ex.top(2, 1, "short")) == 4 and ex.filled()[0, 0].sum() == 4
    assert ex.tokens_scanned.tolist() == [4, 12]
    assert all(c.row * 8 + c.pos < 12 for c in ex.top(2, 1, "long"))  # only the first 12 tokens scanned
    check_equal(ex, brute_force(gated_model, corpora, [(2, 1)], k=8, window=1, seq_len=8, batch_size=2,
                                max_tokens=12), [(2, 1)])


def test_windows_at_document_edges_and_padding(tiny_hf_model):
    # one document per row (pack=False): rows start with BOS and end in padding; windows stop at both
    docs = ["the cat sat on the mat", "der Hund schläft", "кошка спит на мат the cat", "猫 在 睡觉"]
    corpora = {"x": Corpus("x", documents=docs)}
    mlp = MLPHooks.from_model(tiny_hf_model)
    pairs = [(0, j) for j in range(0, mlp.d_mlp, 7)] + [(1, 4)]
    ex = top_examples(tiny_hf_model, corpora, pairs, k=5, window=4, seq_len=16, batch_size=2, pack=False,
                      progress=False)
    check_equal(ex, brute_force(tiny_hf_model, corpora, pairs, k=5, window=4, seq_len=16, batch_size=2,
                                pack=False), pairs)
    bos = tiny_hf_model.tokenizer.bos_token_id
    rows = {r: tiny_hf_model.tokenizer(d, add_special_tokens=False)["input_ids"] for r, d in enumerate(docs)}
    clipped = {"start": 0, "end": 0}
    for layer, j in pairs:
        for c in ex.top(layer, j, "x"):
            doc = rows[c.row][:15]
            clipped["start"] += c.pos - 4 < 1
            clipped["end"] += c.pos + 4 > len(doc)  # a row holds BOS + 15 tokens of its document
            assert bos not in c.token_ids and c.pos >= 1  # never the BOS token
            lo = max(1, c.pos - 4)
            assert c.token_ids == doc[lo - 1 : min(len(doc), c.pos + 4)]  # clipped at the start and the end
            assert c.center == c.pos - lo
            assert "".join(c.tokens).strip("\ufffd") in docs[c.row]
    assert any(len(rows[r]) > 15 for r in rows) and any(len(rows[r]) < 15 for r in rows)  # truncated and padded
    assert clipped["start"] > 0 and clipped["end"] > 0  # U+FFFD only where the window cuts a character


def test_neuron_selections_and_errors(dense_model, ab_neurons):
    corpora = {"a": random_rows(1, n=2, T=6)}
    ex = top_examples(dense_model, corpora, ab_neurons, k=2, window=1, seq_len=6, progress=False)
    assert len(ex) == int(ab_neurons.union_mask().sum())
    mask = torch.zeros(3, 32, dtype=torch.bool)
    mask[2, 4] = True
    assert top_examples(dense_model, corpora, mask, k=1, window=0, seq_len=6, progress=False).pairs() == [(2, 4)]
    with pytest.raises(TLCultureError, match="does not exist"):
        top_examples(dense_model, corpora, [(3, 0)], progress=False)
    with pytest.raises(TLCultureError, match="empty"):
        top_examples(dense_model, corpora, NeuronSet(["a"], torch.zeros(1, 3, 32, dtype=torch.bool)), progress=False)
    with pytest.raises(TLCultureError, match="no examples"):
        ex.top(0, 31, "a")
    with pytest.raises(TLCultureError, match="unknown group"):
        ex.top(2, 10, "zz")
