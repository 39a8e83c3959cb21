"""Held-out checks (content, provenance, documents) and the "own text" rule."""

from __future__ import annotations

import pytest
import torch

from tl_culture import Corpus, NeuronSet, TLCultureError
from tl_culture.evaluation.heldout import check_heldout, is_own_text

L, N = 3, 32


def test_heldout_checks():
    full = Corpus("en", documents=[f"doc {i}" for i in range(10)], source="flores/en.txt")
    sel, held = full.split(0.3, seed=0)
    ns = NeuronSet(["en"], torch.zeros(1, L, N, dtype=torch.bool),
                   {"stats_meta": {"corpora": {"en": {"fingerprint": sel.fingerprint, "source": sel.source}}}})
    check_heldout({"en": held}, ns)  # sibling split: fine
    with pytest.raises(TLCultureError, match=r"eval corpus 'en' is the selection text of group 'en'"):
        check_heldout({"en": Corpus("en", documents=list(sel.documents))}, ns)
    with pytest.raises(TLCultureError, match=r"eval corpus 'e2' \(flores/en.txt\) overlaps the selection text"):
        check_heldout({"e2": full}, ns)
    plain = NeuronSet(["en"], torch.zeros(1, L, N, dtype=torch.bool))
    leaky = Corpus("x", documents=["new text", "doc 3"], source="other")
    with pytest.raises(TLCultureError, match=r"shares 1 document\(s\) with selection corpus 'en'; evaluate on"):
        check_heldout({"x": leaky}, plain, selection={"en": full})


@pytest.mark.parametrize(
    "group, eval_name, want",
    [
        ("en", "en", True),  # a bare name
        ("en", "lang:en", True),  # a prefixed column of `run`
        ("english", "lang:en", True),  # a culture's paired language
        ("english", "cult:english", True),
        ("english", "cult:german", False),
        ("de", "lang:en", False),
        ("lang:en", "lang:en", True),  # the whole name also counts
    ],
)
def test_is_own_text(group, eval_name, want):
    assert is_own_text(group, eval_name, {"english": "en"}) is want


def test_is_own_text_is_the_rule_of_the_report_diagonal():
    pytest.importorskip("matplotlib")
    from tl_culture.report.figures import diagonal_mask

    rows, cols, pairs = ["english", "de"], ["lang:en", "cult:english", "de", "lang:fr"], {"english": "en"}
    got = diagonal_mask(rows, cols, pairs)
    assert got.tolist() == [[is_own_text(r, c, pairs) for c in cols] for r in rows]
