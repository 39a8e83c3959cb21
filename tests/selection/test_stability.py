"""Split-half stability: the Jaccard of LAPE sets selected on two halves, against doing it by hand."""

from __future__ import annotations

import pytest

from tl_culture import Corpus
from tl_culture.selection.stability import split_half_stability


def test_split_half_stability_by_hand(tiny_hf_model):
    from tl_culture import collect, identify

    corpora = {
        "en": Corpus("en", documents=["the cat sat on the mat", "a dog ran", "the sun is hot", "we eat bread"]),
        "ru": Corpus("ru", documents=["кошка спит", "собака бежит", "солнце светит", "мы едим хлеб"]),
    }
    got = split_half_stability(tiny_hf_model, corpora, seed=2, seq_len=16, top_rate=0.1, progress=False)
    halves = {g: c.halves(2) for g, c in corpora.items()}
    sets = [identify(collect(tiny_hf_model, {g: h[i] for g, h in halves.items()}, seq_len=16, progress=False),
                     top_rate=0.1) for i in (0, 1)]
    for g in corpora:
        a, b = sets[0].mask(g), sets[1].mask(g)
        union = int((a | b).sum())
        assert got[g] == pytest.approx(int((a & b).sum()) / union if union else 0.0)
        assert 0.0 <= got[g] <= 1.0
