"""Tokenization into rows of token ids: what the model is fed.

Documents are never glued together: packing joins them with `SEPARATOR` and cuts the token
stream into rows of ``seq_len`` tokens, each starting with the tokenizer's BOS token (which is not
counted). `RowStream` produces the rows block by block, `encode` all at once; `stack_rows`,
`TokenRows.trimmed` and `prompt_ids` are the shared steps of every later stage that runs rows or
prompts through a model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int

from tl_culture.data.corpus import Corpus
from tl_culture.errors import TLCultureError

SEPARATOR = "\n\n"


@dataclass
class TokenRows:
    """Tokenized rows ready for the model.

    Attributes:
        input_ids: ``int64[row, pos]``.
        attention_mask: ``bool[row, pos]``: real tokens (False on padding).
        count_mask: ``bool[row, pos]``: tokens of the corpus (False on padding and on the BOS
            token tl-culture prepends to each row).
    """

    input_ids: Int[torch.Tensor, "row pos"]
    attention_mask: Bool[torch.Tensor, "row pos"]
    count_mask: Bool[torch.Tensor, "row pos"]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.count_mask.sum())

    def slice(self, start: int, stop: int) -> TokenRows:
        """Rows ``start`` to ``stop`` (views)."""
        return TokenRows(
            self.input_ids[start:stop], self.attention_mask[start:stop], self.count_mask[start:stop], dict(self.meta)
        )

    def take(self, index: Int[torch.Tensor, " n"]) -> TokenRows:
        """The rows at ``index``, in that order (copies)."""
        return TokenRows(self.input_ids[index], self.attention_mask[index], self.count_mask[index], dict(self.meta))

    def trimmed(self) -> TokenRows:
        """The rows without their trailing all-padding columns (views), as a model should see them.

        A block of right-padded rows is as wide as the widest row of its corpus or batch; the
        columns after the last real token of every row change nothing but cost a forward.
        """
        width = int(self.attention_mask.any(0).nonzero().max()) + 1
        return TokenRows(
            self.input_ids[:, :width], self.attention_mask[:, :width], self.count_mask[:, :width], dict(self.meta)
        )


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def bos_prefix(tokenizer: Any) -> list[int]:
    """The ids tl-culture puts before a text: ``[bos_token_id]``, or ``[]`` when the tokenizer has no BOS."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None else []


def prompt_ids(model_or_tokenizer: Any, prompt: str, max_tokens: int | None = None) -> Int[torch.Tensor, " pos"]:
    """``int64[pos]`` ids of one text as the model sees it: `bos_prefix`, then the text's tokens.

    Args:
        model_or_tokenizer: a model with a ``tokenizer`` attribute, or a HF tokenizer.
        prompt: the text (tokenized without the tokenizer's own special tokens).
        max_tokens: keep at most this many tokens of the text (the BOS token not included).

    Raises:
        TLCultureError: there is no tokenizer.
    """
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tok is None:
        raise TLCultureError("this model has no tokenizer; give token ids instead of text")
    body = tok(prompt, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        body = body[:max_tokens]
    return torch.tensor(bos_prefix(tok) + list(body), dtype=torch.long)


class RowStream:
    """The rows of `encode`, produced block by block: memory O(block), not O(corpus).

    Documents are tokenized ``chunk_documents`` at a time and packed (or truncated) into rows as
    they come, so a 100M-token corpus never exists as token ids all at once. Iterating yields
    `TokenRows` of ``block_rows`` rows (the last block may be shorter); concatenated they are
    exactly `encode`'s rows (block ``b`` = rows ``[b * block_rows, (b + 1) * block_rows)``), up
    to right padding, which the model never sees (`TokenRows.trimmed`).

    Args:
        corpus: the corpus.
        tokenizer: a HF tokenizer (unused for pre-tokenized corpora).
        seq_len: tokens per row, the BOS token included.
        block_rows: rows per yielded block (`collect` uses its batch size).
        pack, max_tokens, add_bos, separator: as in `encode`.
        chunk_documents: documents tokenized per tokenizer call.
    """

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: Any,
        seq_len: int,
        *,
        block_rows: int,
        pack: bool = True,
        max_tokens: int | None = None,
        add_bos: bool = True,
        separator: str = SEPARATOR,
        chunk_documents: int = 256,
    ) -> None:
        if seq_len < 2:
            raise TLCultureError(f"seq_len must be at least 2, got {seq_len}")
        if max_tokens is not None and max_tokens < 1:
            raise TLCultureError(f"max_tokens must be positive, got {max_tokens}")
        if block_rows < 1 or chunk_documents < 1:
            raise TLCultureError("block_rows and chunk_documents must be at least 1")
        if corpus.rows is None and tokenizer is None:
            raise TLCultureError("this model has no tokenizer; give pre-tokenized rows instead of text")
        self.corpus, self.tokenizer, self.seq_len = corpus, tokenizer, seq_len
        self.block_rows, self.pack, self.max_tokens = block_rows, pack, max_tokens
        self.separator, self.chunk_documents = separator, chunk_documents
        self._chars = 0
        self._total_chars: int | None = None
        self.prefix = bos_prefix(tokenizer) if add_bos and corpus.rows is None else []
        self.width = seq_len - len(self.prefix)  # corpus tokens per row
        self.meta: dict[str, Any] = (
            {"pack": "pretokenized", "seq_len": seq_len}
            if corpus.rows is not None
            else {"pack": pack, "seq_len": seq_len, "bos": bool(self.prefix)}
        )

    def estimated_tokens(self, seen_tokens: int = 0, seen_chars: int = 0) -> int | None:
        """Counted tokens the whole stream will give: exact for rows, else extrapolated from the
        tokens per character seen so far (None before any)."""
        if self.corpus.rows is not None:
            n = int(self.corpus.rows[:, : self.seq_len].numel())
        elif seen_chars and seen_tokens:
            if self._total_chars is None:  # once: a corpus may hold millions of documents
                self._total_chars = sum(len(d) for d in self.corpus.documents)
            n = round(seen_tokens / seen_chars * self._total_chars)
        else:
            return self.max_tokens
        return min(n, self.max_tokens) if self.max_tokens is not None else n

    def __iter__(self) -> Iterator[TokenRows]:
        """Blocks of rows, in order."""
        if self.corpus.rows is not None:
            yield from self._pretokenized()
            return
        block: list[list[int]] = []
        for row in self._token_rows():
            block.append(row)
            if len(block) == self.block_rows:
                yield self._tensors(block)
                block = []
        if block:
            yield self._tensors(block)

    @property
    def chars_consumed(self) -> int:
        """Characters of the documents tokenized so far (for progress estimates)."""
        return self._chars

    def _pretokenized(self) -> Iterator[TokenRows]:
        ids = self.corpus.rows[:, : self.seq_len]
        if self.max_tokens is not None:
            ids = ids[: -(-self.max_tokens // ids.shape[1])]
        for start in range(0, ids.shape[0], self.block_rows):
            part = ids[start : start + self.block_rows]
            count = torch.ones_like(part, dtype=torch.bool)
            before = start * ids.shape[1]
            if self.max_tokens is not None and before + count.numel() > self.max_tokens:
                count.view(-1)[max(0, self.max_tokens - before) :] = False
            yield TokenRows(part, torch.ones_like(part, dtype=torch.bool), count, dict(self.meta))

    def _documents(self) -> Iterator[list[int]]:
        docs = self.corpus.documents
        self._chars = 0
        for start in range(0, len(docs), self.chunk_documents):
            chunk = docs[start : start + self.chunk_documents]
            self._chars += sum(len(d) for d in chunk)
            yield from self.tokenizer(list(chunk), add_special_tokens=False)["input_ids"]

    def _token_rows(self) -> Iterator[list[int]]:
        """Rows of corpus tokens (no BOS, no padding), as `encode` cuts them."""
        total, width, cap = 0, self.width, self.max_tokens
        produced = False
        if self.pack:
            sep = self.tokenizer(self.separator, add_special_tokens=False)["input_ids"] if self.separator else []
            buf: list[int] = []
            for i, d in enumerate(self._documents()):
                piece = (sep + d) if i else d
                if cap is not None:
                    piece = piece[: cap - total]
                buf.extend(piece)
                total += len(piece)
                if len(buf) >= width:
                    n_full = len(buf) // width
                    for k in range(n_full):
                        produced = True
                        yield buf[k * width : (k + 1) * width]
                    buf = buf[n_full * width :]
                if cap is not None and total >= cap:
                    break
            if buf:
                produced = True
                yield buf
        else:
            for d in self._documents():
                d = d[:width] if cap is None else d[: min(width, cap - total)]
                if d:
                    produced = True
                    total += len(d)
                    yield d
                if cap is not None and total >= cap:
                    break
        if not produced:
            raise TLCultureError(f"corpus {self.corpus.name!r} gives no tokens; give it some text")

    def _tensors(self, rows: list[list[int]]) -> TokenRows:
        prefix, pad = self.prefix, _pad_id(self.tokenizer)
        n, L = len(rows), len(prefix) + max(len(r) for r in rows)
        ids = torch.full((n, L), pad, dtype=torch.long)
        attn = torch.zeros((n, L), dtype=torch.bool)
        count = torch.zeros((n, L), dtype=torch.bool)
        for i, r in enumerate(rows):
            m = len(prefix) + len(r)
            ids[i, :m] = torch.tensor(prefix + r, dtype=torch.long)
            attn[i, :m] = True
            count[i, len(prefix) : m] = True
        return TokenRows(ids, attn, count, dict(self.meta))


def concat_rows(blocks: Sequence[TokenRows], pad_id: int = 0) -> TokenRows:
    """Stack blocks of rows, right-padding narrower blocks with ``pad_id`` (masked out)."""
    L = max(b.input_ids.shape[1] for b in blocks)

    def pad(t: torch.Tensor, value: int | bool) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, L - t.shape[1]), value=value) if t.shape[1] < L else t

    ids = torch.cat([pad(b.input_ids, pad_id) for b in blocks])
    attn = torch.cat([pad(b.attention_mask, False) for b in blocks])
    count = torch.cat([pad(b.count_mask, False) for b in blocks])
    return TokenRows(ids, attn, count, dict(blocks[0].meta))


def stack_rows(encoded: Sequence[TokenRows]) -> tuple[TokenRows, Int[torch.Tensor, " row"]]:
    """The rows of several corpora in one `TokenRows` (right-padded with id 0, masked out), and
    ``owner[row]``: the index in ``encoded`` of the corpus each row came from."""
    owner = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, r in enumerate(encoded)])
    return concat_rows(encoded, pad_id=0), owner


def encode(
    corpus: Corpus,
    tokenizer: Any,
    seq_len: int,
    *,
    pack: bool = True,
    max_tokens: int | None = None,
    add_bos: bool = True,
    separator: str = SEPARATOR,
) -> TokenRows:
    """Tokenize a corpus into rows of at most ``seq_len`` tokens.

    Packed (``pack=True``): documents are tokenized, joined with ``separator`` and cut into rows
    of ``seq_len`` tokens; each row starts with the tokenizer's BOS token (not counted), so no
    padding is needed except in the last row. Unpacked: one document per row, truncated, padded
    on the right. ``max_tokens`` caps the counted tokens. All rows at once; `RowStream` gives
    the same rows block by block.
    """
    stream = RowStream(
        corpus, tokenizer, seq_len, block_rows=4096, pack=pack, max_tokens=max_tokens, add_bos=add_bos,
        separator=separator,
    )
    return concat_rows(list(stream), pad_id=_pad_id(tokenizer))
