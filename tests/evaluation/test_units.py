"""Document bootstrap units and CIs against hand computations."""

import math

import torch

from tl_culture.data.corpus import Corpus
from tl_culture.data.rows import SEPARATOR, encode
from tl_culture.evaluation.units import bootstrap_cis, document_lengths, token_units, unit_sums


def test_units_cut_long_documents_into_blocks():
    units = token_units([5, 300, 128, 127], min_block=128)
    assert units.shape[0] == 560
    # 5 -> one unit; 300 -> 2 blocks of 150; 128 -> one; 127 -> one
    assert torch.equal(torch.bincount(units), torch.tensor([5, 150, 150, 128, 127]))
    assert torch.equal(units[:6], torch.tensor([0, 0, 0, 0, 0, 1]))


def test_document_lengths_follow_the_packing(tiny_hf_model):
    tok = tiny_hf_model.tokenizer
    docs = ["the cat sat on the mat", "der Hund schläft", "кошка спит на диване", "猫在睡觉"]
    c = Corpus("x", documents=docs)
    rows = encode(c, tok, 8)
    total = rows.n_tokens
    lengths = document_lengths(c, tok, total)
    sep = len(tok(SEPARATOR, add_special_tokens=False)["input_ids"])
    own = [len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs]
    assert lengths == [own[0]] + [sep + n for n in own[1:]] and sum(lengths) == total
    cut = document_lengths(c, tok, own[0] + 2)
    assert cut == [own[0], 2]
    r = Corpus("r", rows=torch.zeros(3, 10, dtype=torch.long))
    assert document_lengths(r, None, 25) == [10, 10, 5]


def test_bootstrap_against_direct_resampling():
    x = torch.tensor([1.0, 2.0, 3.0, 10.0, 0.0, 4.0, 5.0])
    y = torch.tensor([0.5, 1.0, 1.0, 2.0, 0.0, 1.0, 2.0])
    units = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    s, n = unit_sums(torch.stack([x, y]), units)
    assert torch.equal(s[0], torch.tensor([3.0, 3.0, 14.0, 5.0], dtype=torch.float64))
    assert torch.equal(n, torch.tensor([2.0, 1.0, 3.0, 1.0], dtype=torch.float64))
    lo, hi = bootstrap_cis(torch.stack([x, y, x - y]), units, n_boot=300, generator=torch.Generator().manual_seed(4))
    # by hand: the same draws, unit by unit
    draws = torch.randint(0, 4, (300, 4), generator=torch.Generator().manual_seed(4))
    for k, series in enumerate((x, y, x - y)):
        means = []
        for d in draws.tolist():
            idx = [t for u in d for t in range(7) if int(units[t]) == u]
            means.append(float(series[idx].double().sum() / len(idx)))
        q = torch.quantile(torch.tensor(means, dtype=torch.float64), torch.tensor([0.025, 0.975], dtype=torch.float64))
        assert math.isclose(float(lo[k]), float(q[0]), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(float(hi[k]), float(q[1]), rel_tol=1e-12, abs_tol=1e-12)
    one = bootstrap_cis(x[None], torch.zeros(7, dtype=torch.long))
    assert math.isnan(float(one[0][0]))
