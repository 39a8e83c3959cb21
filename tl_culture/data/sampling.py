"""Token caps that sample documents across a whole corpus, and the record of what each stage read.

A token cap (``max_tokens`` of counting, ``eval_tokens`` of evaluation) takes the first tokens of
a stream of documents. In corpus order (files sorted by path) it would read the first files only,
so one genre could stand for a whole culture. Under a cap the documents are therefore first
shuffled with a seeded permutation (`capped_sample`): the cap takes a uniformly random sample of
documents from every file. Without a cap nothing is reordered.

`documents_used` says how many documents of that order a cap draws on (the last one possibly in
part); `covering_cap` raises a cap so that it covers a least number of documents (held-out
corpora of short documents then still give the document bootstrap enough units); and
`document_record` describes them for the run folder: per source file the number of
documents and their line numbers as ranges (``"3-5,9"``), so a reader can check overlap between
stages and the balance of files (genres).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from itertools import islice
from typing import Any

import torch

from tl_culture.data.corpus import Corpus
from tl_culture.data.rows import SEPARATOR


def shuffled(corpus: Corpus, seed: int) -> Corpus:
    """The corpus with its documents (or rows) in a seeded random order; its source is kept."""
    perm = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(int(seed))).tolist()
    return corpus.take(perm)


def capped_sample(corpus: Corpus, max_tokens: int | None, seed: int | None) -> Corpus:
    """What a cap of ``max_tokens`` reads: the documents shuffled (seeded) when capped, else as they are.

    ``seed=None`` keeps the corpus order under a cap too (the first tokens in file order).
    """
    if max_tokens is None or seed is None or len(corpus) < 2:
        return corpus
    return shuffled(corpus, seed)


def packed_lengths(corpus: Corpus, tokenizer: Any, separator: str = SEPARATOR) -> Iterator[int]:
    """Tokens each document of ``corpus`` adds to the packed stream, in order.

    Packing joins the documents with ``separator`` (`tl_culture.data.rows.encode`); a document's
    length includes the separator tokens before it (none before the first).
    """
    sep = len(tokenizer(separator, add_special_tokens=False)["input_ids"]) if separator else 0
    for i, doc in enumerate(corpus.documents or []):
        yield len(tokenizer(doc, add_special_tokens=False)["input_ids"]) + (sep if i else 0)


def documents_used(corpus: Corpus, tokenizer: Any, max_tokens: int | None, separator: str = SEPARATOR) -> int:
    """How many leading documents of ``corpus`` the first ``max_tokens`` packed tokens draw on.

    A document counts when at least one of its tokens (or of the separator before it) is within the cap.
    """
    if max_tokens is None or corpus.documents is None or tokenizer is None:
        return len(corpus)
    total = 0
    for i, n in enumerate(packed_lengths(corpus, tokenizer, separator)):
        total += n
        if total >= max_tokens:
            return i + 1
    return len(corpus)


def covering_cap(
    corpus: Corpus, tokenizer: Any, max_tokens: int | None, min_documents: int | None, separator: str = SEPARATOR
) -> int | None:
    """``max_tokens`` raised, where needed, to the packed tokens of the first ``min_documents`` documents.

    ``max(max_tokens, Σ_{i < min_documents} len_i)`` with ``len_i`` from `packed_lengths`: the cap
    then reads at least ``min_documents`` whole documents (every one when the corpus has fewer).
    No cap (None) stays None; so does a corpus of token rows (no documents), whose cap is kept.
    """
    if max_tokens is None or not min_documents or corpus.documents is None or tokenizer is None:
        return max_tokens
    total = sum(islice(packed_lengths(corpus, tokenizer, separator), min_documents))
    return max(max_tokens, total)


def line_ranges(lines: list[int]) -> str:
    """Sorted line numbers as ranges: ``[3, 4, 5, 9] -> "3-5,9"``."""
    out: list[str] = []
    last = None
    for n in sorted(set(lines)):
        if last is not None and n == last + 1:
            first = out[-1].split("-")[0]
            out[-1] = f"{first}-{n}"
        else:
            out.append(str(n))
        last = n
    return ",".join(out)


def document_record(corpus: Corpus, used: int | None = None) -> dict[str, Any]:
    """Which documents of ``corpus`` (its first ``used``, default all) a stage read, by source file.

    Returns:
        ``{"source", "documents" (in the corpus), "used", "files": {file: {"documents", "lines"}}}``;
        without origins, ``"indices"`` (positions in the corpus, as ranges) stands for ``"files"``.
    """
    n = len(corpus) if used is None else min(used, len(corpus))
    rec: dict[str, Any] = {"source": corpus.source, "documents": len(corpus), "used": n}
    if corpus.origins is None:
        rec["indices"] = line_ranges(list(range(n)))
        return rec
    by_file: dict[str, list[int]] = defaultdict(list)
    for origin in corpus.origins[:n]:
        file, _, line = origin.rpartition(":")
        by_file[file].append(int(line))
    rec["files"] = {f: {"documents": len(v), "lines": line_ranges(v)} for f, v in sorted(by_file.items())}
    return rec


__all__ = ["capped_sample", "covering_cap", "document_record", "documents_used", "line_ranges", "packed_lengths",
           "shuffled"]
