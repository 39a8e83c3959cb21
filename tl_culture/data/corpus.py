"""Named text corpora, held-out splits, and tokenization into fixed-length rows.

A `Corpus` is a list of documents (strings) or of pre-tokenized rows. Documents are never glued
together: packing joins them with a separator. Files of a folder are read in sorted order, so a
corpus (and its fingerprint) is the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int

from tl_culture.errors import TLCultureError

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_LANGUAGES = ("en", "de", "da", "zh", "ru", "fa")
SEPARATOR = "\n\n"


@dataclass
class Corpus:
    """One group's text.

    Attributes:
        name: group name (a language or a culture).
        documents: the documents, in order; None for a pre-tokenized corpus.
        rows: ``int64[row, pos]`` pre-tokenized rows (every position counted); None for text.
        source: where it came from (a path or a dataset name), for metadata.
    """

    name: str
    documents: list[str] | None = None
    rows: Int[torch.Tensor, "row pos"] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if (self.documents is None) == (self.rows is None):
            raise TLCultureError(f"corpus {self.name!r}: give either documents or rows")
        if self.rows is not None:
            if self.rows.dim() != 2 or self.rows.dtype not in (torch.int64, torch.int32):
                raise TLCultureError(f"corpus {self.name!r}: pre-tokenized rows must be an integer [row, pos] tensor")
            self.rows = self.rows.long()
        if len(self) == 0:
            raise TLCultureError(f"corpus {self.name!r} ({self.source or 'given'}) is empty; give it some text")

    def __len__(self) -> int:
        return len(self.documents) if self.documents is not None else int(self.rows.shape[0])

    @property
    def fingerprint(self) -> str:
        """sha256 of the content (documents joined with NUL, or the rows' bytes), 16 hex digits."""
        h = hashlib.sha256()
        if self.documents is not None:
            for d in self.documents:
                h.update(d.encode("utf-8"))
                h.update(b"\0")
        else:
            h.update(str(tuple(self.rows.shape)).encode())
            h.update(self.rows.numpy().tobytes())
        return h.hexdigest()[:16]

    def _take(self, idx: Sequence[int], suffix: str) -> Corpus:
        src = f"{self.source}#{suffix}" if self.source else suffix
        if self.documents is not None:
            return Corpus(self.name, documents=[self.documents[i] for i in idx], source=src)
        return Corpus(self.name, rows=self.rows[list(idx)], source=src)

    def split(self, eval_fraction: float = 0.1, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Deterministic split into (selection, held-out) by document.

        The held-out documents are a seeded random subset of round(eval_fraction * n) documents
        (at least one), spread over the whole corpus. Parallel corpora with the same number of
        documents get the same indices held out.
        """
        if not 0.0 < eval_fraction < 1.0:
            raise TLCultureError(f"eval fraction must be in (0, 1), got {eval_fraction}")
        n = len(self)
        if n < 2:
            raise TLCultureError(f"corpus {self.name!r} has {n} document; a held-out split needs two or more")
        k = min(n - 1, max(1, round(eval_fraction * n)))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        held = sorted(perm[:k])
        keep = sorted(perm[k:])
        return self._take(keep, "select"), self._take(held, "heldout")

    def halves(self, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Two disjoint random halves (for split-half stability)."""
        n = len(self)
        if n < 2:
            raise TLCultureError(f"corpus {self.name!r} has {n} document; halves need two or more")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        return self._take(sorted(perm[: n // 2]), "half0"), self._take(sorted(perm[n // 2 :]), "half1")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TLCultureError(f"{path}: not UTF-8 text (byte {exc.start}); convert it, e.g. iconv -t UTF-8") from None


def _lines(text: str) -> list[str]:
    return [s for s in (line.strip() for line in text.splitlines()) if s]


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise TLCultureError(f"{path}:{i}: not valid JSON; JSONL needs one object per line") from None
        if not isinstance(rec, dict) or text_field not in rec:
            raise TLCultureError(f"{path}:{i}: no field {text_field!r}; pass text_field=/--text-field")
        if str(rec[text_field]).strip():
            docs.append(str(rec[text_field]).strip())
    return docs


def _load_hf(spec: str, text_field: str, max_documents: int | None) -> tuple[list[str], str]:
    parts = spec[3:].split(":")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    try:
        import datasets
    except ImportError:
        raise TLCultureError("hf: corpora need the datasets package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        docs = []
        for rec in ds:
            text = str(rec.get(text_field, "")).strip()
            if text:
                docs.append(text)
            if max_documents is not None and len(docs) >= max_documents:
                break
    except Exception as exc:
        offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
        hint = "it is not in the local HF cache (offline mode)" if offline else "check the name and your network"
        raise TLCultureError(f"cannot stream dataset {spec!r}: {type(exc).__name__}; {hint}") from exc
    return docs, spec


def load_corpus(
    spec: str | os.PathLike | Sequence[str] | torch.Tensor,
    name: str | None = None,
    *,
    text_field: str = "text",
    max_documents: int | None = None,
) -> Corpus:
    """Load one group's corpus.

    Args:
        spec: a ``.txt`` file (one document per non-empty line), a folder (every ``*.txt`` below
            it, sorted by path, each line a document), a ``.jsonl`` file (``text_field`` of each
            record), ``hf:NAME[:CONFIG][:SPLIT]`` (a HuggingFace dataset, streamed), a
            ``.pt``/``.safetensors`` file of pre-tokenized rows (key ``rows``), a list of strings,
            or an integer ``[row, pos]`` tensor.
        name: group name; defaults to the file or folder name.
        text_field: field holding the text in JSONL and HF datasets.
        max_documents: keep at most this many documents (required to bound a streamed dataset).
    """
    if isinstance(spec, torch.Tensor):
        return Corpus(name or "rows", rows=spec, source="tensor")
    if isinstance(spec, (list, tuple)):
        docs = [str(d).strip() for d in spec if str(d).strip()]
        return Corpus(name or "texts", documents=docs[:max_documents], source="list")
    s = str(spec)
    if s.startswith("hf:"):
        docs, src = _load_hf(s, text_field, max_documents)
        return Corpus(name or s[3:].split(":")[0].split("/")[-1], documents=docs, source=src)
    path = Path(s).expanduser()
    default_name = name or path.stem
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise TLCultureError(f"{path}: folder has no *.txt files; point to a folder of UTF-8 text files")
        docs = [
            line for f in sorted(files, key=lambda p: p.relative_to(path).as_posix()) for line in _lines(_read_text(f))
        ]
        return Corpus(name or path.name, documents=docs[:max_documents], source=str(path))
    if not path.is_file():
        raise TLCultureError(f"{path}: no such file or folder; check the corpus path")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        docs = _read_jsonl(path, text_field)
    elif suffix in (".pt", ".pth", ".safetensors"):
        return Corpus(default_name, rows=_load_rows(path), source=str(path))
    else:
        docs = _lines(_read_text(path))
    return Corpus(default_name, documents=docs[:max_documents], source=str(path))


def _load_rows(path: Path) -> torch.Tensor:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TLCultureError(f"{path}: cannot read pre-tokenized rows ({type(exc).__name__})") from exc
    if isinstance(obj, dict):
        obj = obj.get("rows")
    if not isinstance(obj, torch.Tensor):
        raise TLCultureError(f"{path}: expected a [row, pos] LongTensor (or a dict with key 'rows')")
    return obj


def load_murel(path: str | os.PathLike, languages: Sequence[str] | None = None) -> dict[str, Corpus]:
    """Load a MUREL-layout folder ``{path}/{lang}/**/*.txt`` as one corpus per language.

    ``path`` may be the repository root (with a ``data/`` folder) or the ``data`` folder itself.
    """
    root = Path(path).expanduser()
    if (root / "data").is_dir() and not any((root / lang).is_dir() for lang in (languages or DEMO_LANGUAGES)):
        root = root / "data"
    if not root.is_dir():
        raise TLCultureError(f"{root}: no such MUREL folder; expected {root}/<lang>/*.txt")
    langs = list(languages) if languages else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not langs:
        raise TLCultureError(f"{root}: no language folders; expected {root}/<lang>/*.txt")
    return {lang: load_corpus(root / lang, name=lang) for lang in langs}


def demo_corpora() -> tuple[dict[str, Corpus], dict[str, Corpus]]:
    """The project's own demo corpus: (languages, cultures), both keyed en, de, da, zh, ru, fa."""
    langs = {c: load_corpus(DEMO_DIR / c / "general.txt", name=c) for c in DEMO_LANGUAGES}
    cults = {c: load_corpus(DEMO_DIR / c / "culture.txt", name=c) for c in DEMO_LANGUAGES}
    return langs, cults


def as_corpus(name: str, x: Any) -> Corpus:
    """Coerce a corpus-like value (Corpus, path, list of strings, tensor) into a named `Corpus`."""
    if isinstance(x, Corpus):
        return x if x.name == name else Corpus(name, x.documents, x.rows, x.source)
    return load_corpus(x, name=name)


def as_corpora(corpora: Mapping[str, Any]) -> dict[str, Corpus]:
    """Coerce a mapping ``name -> corpus-like`` into named corpora, keeping the order."""
    if not corpora:
        raise TLCultureError("no corpora given; give at least one NAME=PATH")
    return {str(k): as_corpus(str(k), v) for k, v in corpora.items()}


# --------------------------------------------------------------------------- tokenization
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

    def shard(self, rank: int, world_size: int) -> TokenRows:
        """Rows ``rank, rank + world_size, ...`` (deterministic data-parallel shard)."""
        sl = slice(rank, None, world_size)
        return TokenRows(self.input_ids[sl], self.attention_mask[sl], self.count_mask[sl], dict(self.meta))

    def slice(self, start: int, stop: int) -> TokenRows:
        return TokenRows(
            self.input_ids[start:stop], self.attention_mask[start:stop], self.count_mask[start:stop], dict(self.meta)
        )


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


class RowStream:
    """The rows of `encode`, produced block by block: memory O(block), not O(corpus).

    Documents are tokenized ``chunk_documents`` at a time and packed (or truncated) into rows as
    they come, so a 100M-token corpus never exists as token ids all at once. Iterating yields
    `TokenRows` of ``block_rows`` rows (the last block may be shorter); concatenated they are
    exactly `encode`'s rows (block ``b`` = rows ``[b * block_rows, (b + 1) * block_rows)``), up
    to right padding, which the model never sees (`Counter` trims all-padding columns).

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
        bos = getattr(tokenizer, "bos_token_id", None) if add_bos and corpus.rows is None else None
        self.prefix = [int(bos)] if bos is not None else []
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
