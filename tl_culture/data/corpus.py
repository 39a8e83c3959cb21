"""Named text corpora, their loaders, and held-out splits.

A `Corpus` is a list of documents (strings) or of pre-tokenized rows. Files of a folder are read
in sorted order, so a corpus (and its fingerprint) is the same on every machine. Tokenization into
rows of token ids is `tl_culture.data.rows`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int

from tl_culture.errors import TLCultureError

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_LANGUAGES = ("en", "de", "da", "zh", "ru", "fa")
#: How `Corpus.split` chooses the held-out documents: a seeded random subset, or the corpus's head.
SPLITS = ("random", "head")


@dataclass
class Corpus:
    """One group's text.

    Attributes:
        name: group name (a language or a culture).
        documents: the documents, in order; None for a pre-tokenized corpus.
        rows: ``int64[row, pos]`` pre-tokenized rows (every position counted); None for text.
        source: where it came from (a path or a dataset name), for metadata.
        origins: per document, where it is in ``source``: ``"file:line"`` (the file relative to
            a folder source, lines counted from 1); None when unknown (lists, streamed datasets).
    """

    name: str
    documents: list[str] | None = None
    rows: Int[torch.Tensor, "row pos"] | None = None
    source: str = ""
    origins: list[str] | None = None

    def __post_init__(self) -> None:
        if (self.documents is None) == (self.rows is None):
            raise TLCultureError(f"corpus {self.name!r}: give either documents or rows")
        if self.rows is not None:
            if self.rows.dim() != 2 or self.rows.dtype not in (torch.int64, torch.int32):
                raise TLCultureError(f"corpus {self.name!r}: pre-tokenized rows must be an integer [row, pos] tensor")
            self.rows = self.rows.long()
        if len(self) == 0:
            raise TLCultureError(f"corpus {self.name!r} ({self.source or 'given'}) is empty; give it some text")
        if self.origins is not None and len(self.origins) != len(self):
            raise TLCultureError(f"corpus {self.name!r}: {len(self.origins)} origins for {len(self)} documents")

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

    def take(self, idx: Sequence[int], suffix: str | None = None) -> Corpus:
        """The documents (or rows) at ``idx``, in that order; ``#suffix`` is added to the source when given."""
        src = self.source if suffix is None else (f"{self.source}#{suffix}" if self.source else suffix)
        origins = [self.origins[i] for i in idx] if self.origins is not None else None
        if self.documents is not None:
            return Corpus(self.name, documents=[self.documents[i] for i in idx], source=src, origins=origins)
        return Corpus(self.name, rows=self.rows[list(idx)], source=src)

    def split(self, eval_fraction: float = 0.1, seed: int = 0, how: str = "random") -> tuple[Corpus, Corpus]:
        """Deterministic split into (selection, held-out) by document.

        ``how="random"``: the held-out documents are a seeded random subset of
        round(eval_fraction * n) documents (at least one), spread over the whole corpus; parallel
        corpora with the same number of documents get the same indices held out.
        ``how="head"``: the held-out documents are the first round(eval_fraction * n) documents
        in corpus order (a contiguous head, as the reference protocol evaluates), the rest select.
        """
        if not 0.0 < eval_fraction < 1.0:
            raise TLCultureError(f"eval fraction must be in (0, 1), got {eval_fraction}")
        if how not in SPLITS:
            raise TLCultureError(f"unknown split {how!r}; use one of {', '.join(SPLITS)}")
        n = len(self)
        if n < 2:
            raise TLCultureError(f"corpus {self.name!r} has {n} document; a held-out split needs two or more")
        k = min(n - 1, max(1, round(eval_fraction * n)))
        if how == "head":
            return self.take(range(k, n), "select"), self.take(range(k), "heldout")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        held = sorted(perm[:k])
        keep = sorted(perm[k:])
        return self.take(keep, "select"), self.take(held, "heldout")

    def halves(self, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Two disjoint random halves (for split-half stability)."""
        n = len(self)
        if n < 2:
            raise TLCultureError(f"corpus {self.name!r} has {n} document; halves need two or more")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        return self.take(sorted(perm[: n // 2]), "half0"), self.take(sorted(perm[n // 2 :]), "half1")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TLCultureError(f"{path}: not UTF-8 text (byte {exc.start}); convert it, e.g. iconv -t UTF-8") from None


def _lines(text: str) -> list[str]:
    return [s for s in (line.strip() for line in text.splitlines()) if s]


def _numbered_lines(path: Path, label: str) -> tuple[list[str], list[str]]:
    """The non-empty stripped lines of a text file and their origins ``label:line``."""
    docs, origins = [], []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            docs.append(line.strip())
            origins.append(f"{label}:{i}")
    return docs, origins


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


_HF_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:CONFIG][:SPLIT]`` -> (NAME, CONFIG or None, SPLIT, default ``"train"``).

    Raises:
        TLCultureError: the spec has more than three parts, or NAME is not a dataset name
            (``name`` or ``owner/name``), or CONFIG or SPLIT contains whitespace.
    """
    parts = spec[3:].split(":") if spec.startswith("hf:") else []
    ok = 1 <= len(parts) <= 3 and _HF_NAME.fullmatch(parts[0]) and not any(re.search(r"\s", p) for p in parts)
    if not ok:
        raise TLCultureError(
            f"{spec!r} is not hf:NAME[:CONFIG][:SPLIT]; write it like hf:wikimedia/wikipedia:20231101.en:train"
        )
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return parts[0], config, split


def _load_hf(spec: str, text_field: str, max_documents: int | None) -> tuple[list[str], str]:
    name, config, split = parse_hf_spec(spec)
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
        max_documents: keep at most this many documents: a seeded random sample over the whole
            corpus (every file), kept in corpus order; a streamed dataset keeps its first ones
            (required to bound it).
    """
    if isinstance(spec, torch.Tensor):
        return Corpus(name or "rows", rows=spec, source="tensor")
    if isinstance(spec, (list, tuple)):
        docs = [str(d).strip() for d in spec if str(d).strip()]
        return _capped(Corpus(name or "texts", documents=docs, source="list"), max_documents)
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
        docs, origins = [], []
        for f in sorted(files, key=lambda p: p.relative_to(path).as_posix()):
            d, o = _numbered_lines(f, f.relative_to(path).as_posix())
            docs += d
            origins += o
        return _capped(Corpus(name or path.name, documents=docs, source=str(path), origins=origins), max_documents)
    if not path.is_file():
        raise TLCultureError(f"{path}: no such file or folder; check the corpus path")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        docs, origins = _read_jsonl(path, text_field), None
    elif suffix in (".pt", ".pth", ".safetensors"):
        return Corpus(default_name, rows=_load_rows(path), source=str(path))
    else:
        docs, origins = _numbered_lines(path, path.name)
    return _capped(Corpus(default_name, documents=docs, source=str(path), origins=origins), max_documents)


def _capped(corpus: Corpus, max_documents: int | None, seed: int = 0) -> Corpus:
    """At most ``max_documents`` documents: a seeded random sample over the whole corpus, in corpus order."""
    n = len(corpus)
    if max_documents is None or max_documents >= n:
        return corpus
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return corpus.take(sorted(perm[:max_documents]))


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
        return x if x.name == name else Corpus(name, x.documents, x.rows, x.source, x.origins)
    return load_corpus(x, name=name)


def as_corpora(corpora: Mapping[str, Any]) -> dict[str, Corpus]:
    """Coerce a mapping ``name -> corpus-like`` into named corpora, keeping the order."""
    if not corpora:
        raise TLCultureError("no corpora given; give at least one NAME=PATH")
    return {str(k): as_corpus(str(k), v) for k, v in corpora.items()}
