"""`NeuronExamples`: save/load round trip, contexts as text, the circuitsvis view."""

from __future__ import annotations

import pytest
import torch

from tl_culture import Corpus, NeuronExamples, TLCultureError, top_examples
from tl_culture.explore.text import TokenText

DOCS = ["the cat sat on the mat", "der Hund schläft", "кошка спит", "猫在睡觉 گربه خوابیده است"] * 3


@pytest.fixture(scope="module")
def examples(tiny_hf_model):
    corpora = {"en": Corpus("en", documents=DOCS[:6]), "xx": Corpus("xx", documents=DOCS[6:])}
    return top_examples(tiny_hf_model, corpora, [(0, 5), (1, 2), (1, 40)], k=4, window=3, seq_len=12,
                        batch_size=2, progress=False)


def test_save_load_round_trip(examples, tmp_path):
    path = tmp_path / "ex.safetensors"
    examples.save(path)
    back = NeuronExamples.load(path)
    for name in NeuronExamples.TENSORS:
        assert torch.equal(getattr(back, name), getattr(examples, name)), name
    assert back.strings == examples.strings and back.groups == examples.groups and back.meta == examples.meta
    assert back.top(1, 40, "xx") == examples.top(1, 40, "xx")
    assert repr(back) == "NeuronExamples(3 neurons, groups en, xx, k=4, window=3)"
    with pytest.raises(TLCultureError, match="holds a 'NeuronSet'"):
        from tl_culture import NeuronSet

        NeuronSet(["a"], torch.zeros(1, 2, 3, dtype=torch.bool)).save(tmp_path / "ns.safetensors")
        NeuronExamples.load(tmp_path / "ns.safetensors")


def test_contexts_are_text(examples, tiny_hf_model):
    text = TokenText(tiny_hf_model.tokenizer)
    for g in examples.groups:
        ctx = examples.top(0, 5, g)
        assert len(ctx) == 4 and [c.activation for c in ctx] == sorted((c.activation for c in ctx), reverse=True)
        for c in ctx:
            assert c.tokens == text.window(c.token_ids)
            assert len(c.tokens) == len(c.values) == len(c.token_ids) <= 7


def test_view_is_offline_circuitsvis(examples, tmp_path):
    view = examples.view(1, 2)
    assert "TopkSamples" in view.local_src and view._repr_html_() == view.local_src
    assert list(view.data) == ["en", "xx"] and view.data["en"] == examples.top(1, 2, "en")
    page = view.save(tmp_path / "v.html")
    assert "unpkg" not in page.read_text(encoding="utf-8")
