"""Split-half stability: the Jaccard of LAPE sets selected on two halves, against doing it by hand."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hand_counts
from tl_culture import Corpus
from tl_culture.selection.stability import split_half_stability


def test_split_half_stability_by_hand(tiny_hf_model):
    from tl_culture import ActivationStats, identify
    from tl_culture.data.rows import encode

    corpora = {
        "en": Corpus("en", documents=["the cat sat on the mat", "a dog ran", "the sun is hot", "we eat bread"]),
        "ru": Corpus("ru", documents=["кошка спит", "собака бежит", "солнце светит", "мы едим хлеб"]),
    }
    got = split_half_stability(tiny_hf_model, corpora, seed=2, seq_len=16, top_rate=0.1, progress=False)
    halves = {g: c.halves(2) for g, c in corpora.items()}
    for g, (h0, h1) in halves.items():  # two disjoint halves of the documents
        assert not set(h0.documents) & set(h1.documents)
        assert sorted(h0.documents + h1.documents) == sorted(corpora[g].documents)
    # the selection of each half from counts made by hand (run_with_cache on the packed rows)
    masks = []
    for i in (0, 1):
        rows = [encode(h[i], tiny_hf_model.tokenizer, 16) for h in halves.values()]
        counts = torch.stack([hand_counts(tiny_hf_model, r)[0] for r in rows])
        stats = ActivationStats(list(halves), counts, torch.tensor([int(r.count_mask.sum()) for r in rows]))
        masks.append(identify(stats, top_rate=0.1))
    for g in corpora:
        a = {tuple(x) for x in torch.nonzero(masks[0].mask(g)).tolist()}
        b = {tuple(x) for x in torch.nonzero(masks[1].mask(g)).tolist()}
        assert a | b, g  # a Jaccard of two empty sets would say nothing
        assert got[g] == pytest.approx(len(a & b) / len(a | b))
        assert 0.0 <= got[g] <= 1.0
