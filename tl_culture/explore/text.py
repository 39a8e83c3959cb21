"""Token ids to the text they add, for contexts and promoted tokens.

A token's text is what it adds after another token: ``decode([anchor, id])`` minus
``decode([anchor])``, which keeps the leading space that SentencePiece tokenizers drop from a
text's first token. A token that ends inside a multi-byte character decodes to U+FFFD on its own;
a window holding one is decoded incrementally instead (token i shows ``decode(ids[:i+1])`` minus
the text already shown; a token that ends inside a character shows ``""`` and the one completing
it shows the character). Without a tokenizer a token's text is its id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"


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
        out: list[str] = []
        shown = ""
        for i in range(len(ids)):
            cur = self._decode(ids[: i + 1])
            if cur.endswith(REPLACEMENT) and i + 1 < len(ids):
                out.append("")
                continue
            out.append(cur[len(shown) :] if cur.startswith(shown) else pieces[i])
            shown = cur
        return out
