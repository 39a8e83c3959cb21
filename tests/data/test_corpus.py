"""Corpora: files, folders, JSONL, HF datasets, and splits."""

import json

import pytest

from tl_culture import TLCultureError, demo_corpora, load_corpus, load_murel
from tl_culture.data.corpus import DEMO_LANGUAGES


def test_folder_sorted_and_lines_are_documents(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("third\n\nfourth\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("  first \nsecond", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text", encoding="utf-8")
    c = load_corpus(tmp_path, name="x")
    assert c.documents == ["first", "second", "third", "fourth"]
    assert c.name == "x" and len(c.fingerprint) == 16
    assert load_corpus(tmp_path).fingerprint == c.fingerprint


def test_jsonl_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "eins"}) + "\n\n" + json.dumps({"text": "zwei"}) + "\n", encoding="utf-8")
    assert load_corpus(p).documents == ["eins", "zwei"]
    with pytest.raises(TLCultureError, match="no field 'body'"):
        load_corpus(p, text_field="body")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Grüße".encode("latin-1"))
    with pytest.raises(TLCultureError, match="not UTF-8 text"):
        load_corpus(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(TLCultureError, match="is empty"):
        load_corpus(empty)
    with pytest.raises(TLCultureError, match="no such file or folder"):
        load_corpus(tmp_path / "missing.txt")


def test_split_is_deterministic_disjoint_and_parallel():
    docs = [f"doc {i}" for i in range(40)]
    c = load_corpus(docs, name="a")
    sel, held = c.split(0.25, seed=3)
    assert len(held.documents) == 10 and len(sel.documents) == 30
    assert set(sel.documents).isdisjoint(held.documents)
    assert sorted(sel.documents + held.documents) == sorted(docs)
    assert c.split(0.25, seed=3)[1].documents == held.documents
    other = load_corpus([f"Dokument {i}" for i in range(40)], name="b")
    assert [d.split()[1] for d in other.split(0.25, seed=3)[1].documents] == [d.split()[1] for d in held.documents]
    with pytest.raises(TLCultureError, match="needs two or more"):
        load_corpus(["only"]).split()


def test_demo_corpus_and_murel_layout(tmp_path):
    langs, cults = demo_corpora()
    assert list(langs) == list(cults) == list(DEMO_LANGUAGES)
    assert all(len(c) >= 30 for c in [*langs.values(), *cults.values()])
    (tmp_path / "data" / "xx").mkdir(parents=True)
    (tmp_path / "data" / "xx" / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    m = load_murel(tmp_path, ["xx"])
    assert m["xx"].documents == ["one", "two"]


def test_shared_murel(shared_data):
    m = load_murel(shared_data / "murel")
    assert sorted(m) == ["da", "de", "en", "fa", "ru", "zh"]
    assert (
        m["fa"].documents[0]
        == (shared_data / "murel/fa/WVS_FA_sentences.txt").read_text("utf-8").splitlines()[0].strip()
    )


def test_hf_dataset_spec_streams_and_is_bounded(monkeypatch):
    """hf:NAME:CONFIG:SPLIT is parsed, streamed record by record, and stopped at max_documents."""
    import datasets

    calls, seen = [], []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))

        def records():
            for i in range(1000):
                seen.append(i)
                yield {"text": f"  article {i}  " if i % 3 else "", "id": i}

        return records()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    c = load_corpus("hf:wikimedia/wikipedia:20231101.da:train", max_documents=4)
    assert calls == [("wikimedia/wikipedia", "20231101.da", "train", True)]
    assert c.name == "wikipedia" and c.documents == ["article 1", "article 2", "article 4", "article 5"]
    assert len(seen) == 6  # streaming stopped as soon as 4 documents were found


def test_hf_dataset_errors_name_the_fix(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TLCultureError, match="not in the local HF cache"):
        load_corpus("hf:some/dataset", max_documents=10)
