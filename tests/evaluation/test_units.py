"""Document bootstrap units and CIs against hand computations."""

import math

import pytest
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


def chunks(n: int, chunk: int) -> torch.Tensor:
    """The units of ``delta_nll(units="chunks")``: ``chunk`` consecutive tokens each."""
    return torch.arange(n) // chunk


def test_chunk_units_against_the_resampling_written_out():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    s, n = unit_sums(x[None], chunks(5, 2))
    assert s[0].tolist() == [3.0, 7.0, 5.0] and n.tolist() == [2.0, 2.0, 1.0]
    lo, hi = bootstrap_cis(torch.full((1, 40), 0.25, dtype=torch.float64), chunks(40, 4), n_boot=100)
    assert float(lo[0]) == pytest.approx(0.25) and float(hi[0]) == pytest.approx(0.25)
    assert all(math.isnan(float(v[0])) for v in bootstrap_cis(x[None, :3], chunks(3, 8)))
    # the same resampling written out: chunks drawn with replacement, ratio of sums, percentiles
    d = torch.randn(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lo, hi = bootstrap_cis(d[None], chunks(64, 8), n_boot=300, generator=torch.Generator().manual_seed(9))
    s, n = unit_sums(d[None], chunks(64, 8))
    draws = torch.randint(0, 8, (300, 8), generator=torch.Generator().manual_seed(9))
    means = torch.stack([s[0, r].sum() / n[r].sum() for r in draws])
    q = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (float(lo[0]), float(hi[0])) == pytest.approx((float(q[0]), float(q[1])))
    assert float(lo[0]) < float(d.mean()) < float(hi[0])


def test_too_few_units_draw_nothing_from_the_generator():
    g = torch.Generator().manual_seed(4)
    before = g.get_state()
    lo, hi = bootstrap_cis(torch.ones(1, 5, dtype=torch.float64), chunks(5, 8), generator=g)
    assert math.isnan(float(lo[0])) and math.isnan(float(hi[0]))
    assert torch.equal(g.get_state(), before)
