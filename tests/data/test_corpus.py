"""Corpora: files, folders, JSONL, splits and tokenization into rows."""

import json

import pytest
import torch

from tl_culture import TLCultureError, demo_corpora, load_corpus, load_murel
from tl_culture.data.corpus import DEMO_LANGUAGES, encode


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


def test_encode_packs_with_separator_and_bos(tiny_hf_model):
    tok = tiny_hf_model.tokenizer
    docs = ["the cat sat on the mat", "der Hund schläft", "кошка спит"]
    c = load_corpus(docs, name="x")
    rows = encode(c, tok, seq_len=8)
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    stream = ids[0] + sep + ids[1] + sep + ids[2]
    assert rows.n_tokens == len(stream)
    assert (rows.input_ids[:, 0] == tok.bos_token_id).all()
    got = rows.input_ids[:, 1:][rows.count_mask[:, 1:]].tolist()
    assert got == stream
    assert not rows.count_mask[:, 0].any()
    capped = encode(c, tok, seq_len=8, max_tokens=5)
    assert capped.n_tokens == 5 and capped.input_ids[0, 1:6].tolist() == stream[:5]
    unpacked = encode(c, tok, seq_len=64, pack=False)
    assert len(unpacked) == 3 and unpacked.count_mask.sum(1).tolist() == [len(i) for i in ids]


def test_pretokenized_rows_count_every_position():
    rows = torch.arange(24).view(4, 6)
    r = encode(load_corpus(rows, name="t"), None, seq_len=6, max_tokens=10)
    assert r.n_tokens == 10 and len(r) == 2


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
    from tl_culture.experiment.run import ExperimentConfig

    cfg = ExperimentConfig(out="o", languages={"en": "hf:some/dataset"}, cultures={"en": "hf:other"})
    with pytest.raises(TLCultureError, match="set max_documents"):
        cfg.load_corpora()


# --------------------------------------------------------------------------- streaming
from tl_culture.data.corpus import Corpus  # noqa: E402

STREAM_DOCS = [f"the cat number {i} sat on mat {i % 7}" * (1 + i % 3) for i in range(40)] + ["der Hund schläft"]


class CountingTokenizer:
    """A tokenizer proxy that records how many documents were tokenized."""

    def __init__(self, tok):
        self.tok, self.documents = tok, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, texts, **kw):
        self.documents += len(texts) if isinstance(texts, list) else 1
        return self.tok(texts, **kw)


@pytest.mark.parametrize("pack, max_tokens", [(True, None), (True, 97), (False, None), (False, 97)])
def test_row_stream_blocks_are_encodes_rows(tiny_hf_model, pack, max_tokens):
    """Block b of the stream is exactly rows [3b, 3b + 3) of encode (ids on real tokens, both masks)."""
    from tl_culture.data.corpus import RowStream, encode

    corpus = Corpus("x", documents=STREAM_DOCS)
    full = encode(corpus, tiny_hf_model.tokenizer, 12, pack=pack, max_tokens=max_tokens)
    stream = RowStream(corpus, tiny_hf_model.tokenizer, 12, block_rows=3, pack=pack, max_tokens=max_tokens,
                       chunk_documents=4)
    blocks = list(stream)
    assert [len(b) for b in blocks[:-1]] == [3] * (len(blocks) - 1) and sum(len(b) for b in blocks) == len(full)
    for b, block in enumerate(blocks):
        ref = full.slice(3 * b, 3 * b + 3)
        w = block.input_ids.shape[1]
        assert torch.equal(block.attention_mask, ref.attention_mask[:, :w]) and not ref.attention_mask[:, w:].any()
        assert torch.equal(block.count_mask, ref.count_mask[:, :w])
        assert torch.equal(block.input_ids[block.attention_mask], ref.input_ids[:, :w][ref.attention_mask[:, :w]])
    assert sum(b.n_tokens for b in blocks) == full.n_tokens
    if max_tokens is not None:
        assert full.n_tokens == max_tokens


def test_row_stream_tokenizes_only_what_it_needs(tiny_hf_model):
    """max_tokens stops the tokenizer too: with 4 documents per call, a 20-token cap reads one chunk."""
    from tl_culture.data.corpus import RowStream

    tok = CountingTokenizer(tiny_hf_model.tokenizer)
    corpus = Corpus("x", documents=STREAM_DOCS * 50)  # 2050 documents
    blocks = list(RowStream(corpus, tok, 12, block_rows=2, max_tokens=20, chunk_documents=4))
    assert sum(b.n_tokens for b in blocks) == 20
    assert tok.documents <= 4 + 1  # one chunk of documents (+ the separator)
    stream = RowStream(corpus, tok, 12, block_rows=2, chunk_documents=4)
    tok.documents = 0
    next(iter(stream))  # the first block needs only the first chunk
    assert tok.documents <= 4 + 1


def test_row_stream_estimates_tokens(tiny_hf_model):
    from tl_culture.data.corpus import RowStream

    corpus = Corpus("x", documents=["abcd", "efghij"])  # 10 characters
    stream = RowStream(corpus, tiny_hf_model.tokenizer, 8, block_rows=2)
    assert stream.estimated_tokens() is None
    assert stream.estimated_tokens(seen_tokens=3, seen_chars=4) == 8  # 3/4 tokens per char x 10 chars (7.5)
    capped = RowStream(corpus, tiny_hf_model.tokenizer, 8, block_rows=2, max_tokens=5)
    assert capped.estimated_tokens() == 5 and capped.estimated_tokens(3, 4) == 5
    rows = RowStream(Corpus("r", rows=torch.zeros(4, 10, dtype=torch.long)), None, 8, block_rows=3, max_tokens=20)
    assert rows.estimated_tokens() == 20 and [b.n_tokens for b in rows] == [20]
