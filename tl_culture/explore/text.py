"""Token ids to the text they add, for contexts and promoted tokens.

A token's text is what it adds after another token: ``decode([anchor, id])`` minus
``decode([anchor])``, which keeps the leading space that SentencePiece tokenizers drop from a
text's first token. A token that ends inside a multi-byte character decodes to U+FFFD on its own;
a window holding one is decoded incrementally instead (`decode_incrementally`: token i shows
``decode(ids[:i+1])`` minus the text already shown; a token that ends inside a character shows ``""``
and the one completing it shows the character). Without a tokenizer a token's text is its id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

REPLACEMENT = "\ufffd"


def decode_incrementally(
    decode: Callable[[list[int]], str], ids: Sequence[int], fallback: Callable[[int], str]
) -> list[str]:
    """The text each token of a run adds, decoded incrementally (multi-byte characters kept whole).

    Token i gets ``decode(ids[:i+1])`` minus the text already shown (the decoding of the last
    prefix that did not end inside a character). A token other than the last whose prefix decodes
    to a text ending in U+FFFD (it ends inside a character) gets ``""``, and the token completing
    the character gets the whole character. Where the decoding is not prefix-stable (the prefix
    does not start with the text already shown), token i gets ``fallback(i)``.

    Args:
        decode: Decodes a list of token ids to text.
        ids: The token ids, in order.
        fallback: The text of the token at position i, used where the decoding is not prefix-stable;
            called only there.

    Returns:
        One string per token of ``ids``.
    """
    ids = [int(i) for i in ids]
    out: list[str] = []
    shown = ""
    for i in range(len(ids)):
        cur = decode(ids[: i + 1])
        if cur.endswith(REPLACEMENT) and i + 1 < len(ids):
            out.append("")
            continue
        out.append(cur[len(shown) :] if cur.startswith(shown) else fallback(i))
        shown = cur
    return out


class TokenText:
    """Cached token texts of one tokenizer (None: ids shown as numbers)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}
        self._anchor: list[int] = []
        self._prefix = ""
        if tokenizer is not None:
            self._anchor = list(tokenizer("a", add_special_tokens=False)["input_ids"])[-1:]
            self._prefix = self._decode(self._anchor)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)

    def piece(self, token_id: int) -> str:
        """The text ``token_id`` adds after another token."""
        token_id = int(token_id)
        if token_id not in self._cache:
            if self.tokenizer is None:
                text = str(token_id)
            else:
                both = self._decode(self._anchor + [token_id])
                text = both[len(self._prefix) :] if self._anchor and both.startswith(self._prefix) else None
                text = self._decode([token_id]) if text is None else text
            self._cache[token_id] = text
        return self._cache[token_id]

    def window(self, ids: Sequence[int]) -> list[str]:
        """The texts of a run of consecutive tokens (see the module docstring)."""
        ids = [int(i) for i in ids]
        pieces = [self.piece(i) for i in ids]
        if self.tokenizer is None or not any(REPLACEMENT in p for p in pieces):
            return pieces
        return decode_incrementally(self._decode, ids, pieces.__getitem__)
