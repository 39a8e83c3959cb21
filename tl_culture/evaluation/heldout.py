"""Which text a group may be evaluated on, and which eval text is its own.

`check_heldout` refuses eval text that overlaps the text the neurons were selected on.
`is_own_text` is the one rule for "this eval corpus is the group's own text" (the matched cells
of an NLL matrix, the marked diagonal of the report's heat maps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tl_culture.data.corpus import Corpus, as_corpora
from tl_culture.errors import TLCultureError
from tl_culture.selection.neurons import NeuronSet

_FIX = "evaluate on held-out text (Corpus.split) or pass allow_overlap=True (--allow-overlap)"


def is_own_text(group: str, eval_name: str, pairs: Mapping[str, str] | None = None) -> bool:
    """Whether ``eval_name`` is ``group``'s own text.

    True when the eval name, or its part after the first ``:`` (``lang:en`` -> ``en``,
    ``cult:de`` -> ``de``), equals the group or the group's paired language ``pairs[group]``.
    """
    own = {group, (pairs or {}).get(group, group)}
    return eval_name in own or eval_name.split(":", 1)[-1] in own


def _chain(source: str) -> tuple[str, list[str]]:
    base, *tags = str(source).split("#")
    return base, tags


def _check_recorded(eval_corpora: Mapping[str, Corpus], recorded: Mapping[str, Any]) -> None:
    for ename, ec in eval_corpora.items():
        efp, (ebase, etags) = ec.fingerprint, _chain(ec.source)
        for sname, info in recorded.items():
            info = info or {}
            if info.get("fingerprint") == efp:
                raise TLCultureError(f"eval corpus {ename!r} is the selection text of group {sname!r}; {_FIX}")
            sbase, stags = _chain(info.get("source") or "")
            nested = etags[: len(stags)] == stags or stags[: len(etags)] == etags
            if sbase and ebase == sbase and sbase not in ("list", "tensor") and nested:
                raise TLCultureError(
                    f"eval corpus {ename!r} ({ec.source}) overlaps the selection text of group {sname!r} "
                    f"({info.get('source')}); {_FIX}"
                )


def _check_documents(eval_corpora: Mapping[str, Corpus], selection: Mapping[str, Corpus]) -> None:
    for ename, ec in eval_corpora.items():
        if ec.documents is None:
            continue
        docs = set(ec.documents)
        for sname, sc in selection.items():
            n = len(docs.intersection(sc.documents or []))
            if n:
                raise TLCultureError(
                    f"eval corpus {ename!r} shares {n} document(s) with selection corpus {sname!r}; {_FIX}"
                )


def check_heldout(
    eval_corpora: Mapping[str, Corpus],
    neurons: NeuronSet,
    selection: Mapping[str, Any] | Sequence[Corpus] | None = None,
) -> None:
    """Refuse eval text that is (or contains, or lies inside) the text the neurons were selected on.

    Three checks, each against every selection corpus:

    1. content: the same fingerprint as a corpus recorded in ``neurons.meta["stats_meta"]["corpora"]``;
    2. provenance: the same source with nested split tags, e.g. eval ``en.txt`` or
       ``en.txt#select`` vs selection ``en.txt#select`` (sibling splits such as ``#heldout`` and
       ``#select`` of `Corpus.split` are disjoint by construction and pass);
    3. documents: when ``selection`` corpora are given, any document present in both.

    Raises:
        TLCultureError: naming the eval corpus and the selection corpus it overlaps.
    """
    recorded = ((neurons.meta or {}).get("stats_meta") or {}).get("corpora") or {}
    _check_recorded(eval_corpora, recorded)
    if selection:
        sel = as_corpora(selection) if isinstance(selection, Mapping) else {c.name: c for c in selection}
        _check_documents(eval_corpora, sel)


__all__ = ["check_heldout", "is_own_text"]
