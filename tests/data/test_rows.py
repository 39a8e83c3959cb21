"""Tokenization into rows: packing, streaming, trimming, stacking, and prompt ids."""

import pytest
import torch

from tl_culture import TLCultureError, load_corpus
from tl_culture.data.corpus import Corpus
from tl_culture.data.rows import RowStream, TokenRows, bos_prefix, concat_rows, encode, prompt_ids, stack_rows


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


# --------------------------------------------------------------------------- streaming
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
    corpus = Corpus("x", documents=["abcd", "efghij"])  # 10 characters
    stream = RowStream(corpus, tiny_hf_model.tokenizer, 8, block_rows=2)
    assert stream.estimated_tokens() is None
    assert stream.estimated_tokens(seen_tokens=3, seen_chars=4) == 8  # 3/4 tokens per char x 10 chars (7.5)
    capped = RowStream(corpus, tiny_hf_model.tokenizer, 8, block_rows=2, max_tokens=5)
    assert capped.estimated_tokens() == 5 and capped.estimated_tokens(3, 4) == 5
    rows = RowStream(Corpus("r", rows=torch.zeros(4, 10, dtype=torch.long)), None, 8, block_rows=3, max_tokens=20)
    assert rows.estimated_tokens() == 20 and [b.n_tokens for b in rows] == [20]


# --------------------------------------------------------------------------- trimming, stacking, prompts
def padded_rows() -> TokenRows:
    ids = torch.tensor([[1, 5, 6, 0, 0, 0], [1, 7, 0, 0, 0, 0]])
    attn = ids != 0
    count = attn.clone()
    count[:, 0] = False
    return TokenRows(ids, attn, count, {"pack": False})


def test_trimmed_drops_only_all_padding_columns():
    rows = padded_rows()
    t = rows.trimmed()
    assert t.input_ids.tolist() == [[1, 5, 6], [1, 7, 0]]
    assert torch.equal(t.attention_mask, rows.attention_mask[:, :3])
    assert torch.equal(t.count_mask, rows.count_mask[:, :3])
    assert t.n_tokens == rows.n_tokens == 3 and t.meta == rows.meta
    assert torch.equal(t.trimmed().input_ids, t.input_ids)  # nothing left to trim
    assert rows.slice(1, 2).trimmed().input_ids.tolist() == [[1, 7]]


def test_stack_rows_pads_and_remembers_the_owner():
    a = padded_rows().trimmed()  # 2 rows x 3
    full = torch.ones(1, 5, dtype=torch.bool)
    b = TokenRows(torch.tensor([[1, 2, 3, 4, 5]]), full, full)
    rows, owner = stack_rows([a, b])
    assert owner.tolist() == [0, 0, 1]
    assert rows.input_ids.tolist() == [[1, 5, 6, 0, 0], [1, 7, 0, 0, 0], [1, 2, 3, 4, 5]]
    assert rows.attention_mask.sum(1).tolist() == [3, 2, 5] and rows.n_tokens == a.n_tokens + b.n_tokens
    assert torch.equal(concat_rows([a, b]).input_ids, rows.input_ids)


def test_prompt_ids_put_bos_first(tiny_hf_model):
    tok = tiny_hf_model.tokenizer
    body = tok("der Hund schläft", add_special_tokens=False)["input_ids"]
    assert bos_prefix(tok) == [tok.bos_token_id] and bos_prefix(None) == []
    ids = prompt_ids(tiny_hf_model, "der Hund schläft")
    assert ids.dtype == torch.long and ids.tolist() == [tok.bos_token_id, *body]
    assert prompt_ids(tok, "der Hund schläft", max_tokens=2).tolist() == [tok.bos_token_id, *body[:2]]

    class NoBos:
        bos_token_id = None

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [ord(c) for c in text]}

    assert prompt_ids(NoBos(), "ab").tolist() == [97, 98]
    with pytest.raises(TLCultureError, match="this model has no tokenizer; give token ids instead of text"):
        prompt_ids(type("Model", (), {"tokenizer": None})(), "text")


def test_row_stream_puts_the_same_bos_first(tiny_hf_model):
    tok = tiny_hf_model.tokenizer
    block = next(iter(RowStream(Corpus("x", documents=["der Hund schläft"]), tok, 8, block_rows=1)))
    assert block.input_ids[0, :1].tolist() == bos_prefix(tok) and not block.count_mask[0, 0]
    no_bos = next(iter(RowStream(Corpus("x", documents=["der Hund"]), tok, 8, block_rows=1, add_bos=False)))
    assert no_bos.count_mask[0, 0]
    assert no_bos.input_ids[0, : no_bos.n_tokens].tolist() == prompt_ids(tok, "der Hund")[1:].tolist()
