"""Token caps sample documents across every file; the record of which documents a stage read."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FILES, write_culture_folder
from tl_culture.counting.collect import collect
from tl_culture.data.corpus import Corpus, load_corpus
from tl_culture.data.rows import SEPARATOR
from tl_culture.data.sampling import (
    capped_sample,
    covering_cap,
    document_record,
    documents_used,
    line_ranges,
    packed_lengths,
    shuffled,
)
from tl_culture.errors import TLCultureError


@pytest.fixture()
def folder(tmp_path):
    """A MUREL-like culture folder: four files (genres) of 30 one-line documents, a blank line in each."""

    def lines(genre: str) -> list[str]:
        docs = [f"{genre} number {i} the cat sat" for i in range(30)]
        return docs[:5] + [""] + docs[5:]

    return write_culture_folder(tmp_path / "culture", lines)


def test_origins_are_file_and_line(folder):
    c = load_corpus(folder)
    assert len(c) == 120 and c.origins[0] == "a_proverbs.txt:1" and c.origins[5] == "a_proverbs.txt:7"
    assert c.origins[60] == "c_tales/one.txt:1"
    sel, held = c.split(0.2, seed=1)
    assert [c.documents.index(d) for d in held.documents[:3]] == [
        c.origins.index(o) for o in held.origins[:3]]


def test_a_cap_reads_every_file(folder, tiny_hf_model):
    c = load_corpus(folder)
    tok = tiny_hf_model.tokenizer
    first = documents_used(c, tok, 200)
    files_in_order = document_record(c, first)["files"]
    assert list(files_in_order) == ["a_proverbs.txt"]  # in file order a cap reads the first file only
    sampled = capped_sample(c, 200, seed=0)
    rec = document_record(sampled, documents_used(sampled, tok, 200))
    assert sorted(rec["files"]) == sorted(FILES) and rec["used"] < len(c)
    assert sum(f["documents"] for f in rec["files"].values()) == rec["used"]
    assert capped_sample(c, None, 0) is c and capped_sample(c, 200, None) is c


def test_collect_samples_under_a_cap(folder, tiny_hf_model):
    c = load_corpus(folder)
    kw = dict(seq_len=16, batch_size=4, max_tokens=150, progress=False, backend="hooks")
    stats = collect(tiny_hf_model, {"x": c}, **kw, sample_seed=3)
    same = collect(tiny_hf_model, {"x": shuffled(c, 3)}, **kw, sample_seed=None)
    assert torch.equal(stats.counts, same.counts) and stats.meta["sample_seed"] == 3
    plain = collect(tiny_hf_model, {"x": c}, **kw, sample_seed=None)
    assert not torch.equal(stats.counts, plain.counts)
    full = collect(tiny_hf_model, {"x": c}, seq_len=16, batch_size=4, progress=False, backend="hooks")
    assert full.meta["sample_seed"] is None


def test_documents_used_matches_the_packing(folder, tiny_hf_model):
    c = shuffled(load_corpus(folder), 0)
    tok = tiny_hf_model.tokenizer
    lengths = [len(tok(d, add_special_tokens=False)["input_ids"]) for d in c.documents]
    sep = len(tok(SEPARATOR, add_special_tokens=False)["input_ids"])
    for cap in (1, 37, 200, 10**6):
        k = documents_used(c, tok, cap)
        total = sum(lengths[:k]) + sep * (k - 1)
        assert total >= cap or k == len(c)
        assert k == 1 or sum(lengths[: k - 1]) + sep * (k - 2) < cap
    assert documents_used(c, tok, None) == len(c)


def test_covering_cap_reads_the_least_documents(folder, tiny_hf_model):
    c = shuffled(load_corpus(folder), 0)
    tok = tiny_hf_model.tokenizer
    lengths = [len(tok(d, add_special_tokens=False)["input_ids"]) for d in c.documents]
    sep = len(tok(SEPARATOR, add_special_tokens=False)["input_ids"])
    assert list(packed_lengths(c, tok)) == [lengths[0]] + [n + sep for n in lengths[1:]]
    ten = sum(lengths[:10]) + 9 * sep  # the packed tokens of the first ten documents
    assert covering_cap(c, tok, 5, 10) == ten and documents_used(c, tok, ten) == 10
    assert covering_cap(c, tok, ten + 7, 10) == ten + 7  # a cap that already covers them is kept
    assert covering_cap(c, tok, 5, 10**6) == sum(lengths) + (len(c) - 1) * sep  # fewer documents: all of them
    assert covering_cap(c, tok, 5, None) == 5 and covering_cap(c, tok, None, 10) is None
    rows = Corpus("rows", rows=torch.ones(3, 8, dtype=torch.long))
    assert covering_cap(rows, tok, 5, 10) == 5  # token rows have no documents: the cap stays


def test_head_split_and_max_documents(folder):
    c = load_corpus(folder)
    sel, held = c.split(0.25, how="head")
    assert held.documents == c.documents[:30] and sel.documents == c.documents[30:]
    assert held.source.endswith("#heldout") and held.origins == c.origins[:30]
    with pytest.raises(TLCultureError, match="unknown split"):
        c.split(0.25, how="tail")
    few = load_corpus(folder, max_documents=20)
    assert len(few) == 20 and len({o.split(":")[0] for o in few.origins}) == len(FILES)
    assert few.origins == sorted(few.origins, key=c.origins.index)  # corpus order kept
    assert few.source == str(folder)
    lst = load_corpus([f"doc {i}" for i in range(50)], max_documents=5)
    assert len(lst) == 5 and lst.origins is None
    assert document_record(lst)["indices"] == "0-4"


def test_line_ranges_and_origin_checks():
    assert line_ranges([9, 3, 4, 5, 5, 11, 12]) == "3-5,9,11-12"
    assert line_ranges([]) == ""
    with pytest.raises(TLCultureError, match="origins"):
        Corpus("x", documents=["a", "b"], origins=["f:1"])
