"""The notebook view of one neuron's top contexts: circuitsvis ``TopkSamples``, shown offline.

circuitsvis' own `RenderedHTML` pings google.com to choose between its CDN copy and its inlined
library; `OfflineView` always shows the inlined one, so a notebook shows it without a network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tl_culture._io import write_text_atomic
from tl_culture.errors import TLCultureError


def _rendered_html() -> Any:
    try:
        from circuitsvis.utils.render import RenderedHTML
    except ImportError:
        raise TLCultureError("neuron views need circuitsvis: pip install 'tl-culture[viz]'") from None
    return RenderedHTML


def topk_samples_view(label: str, contexts: Mapping[str, Sequence[Any]]):
    """circuitsvis ``TopkSamples`` of one neuron: one list of contexts per group (``group -> [Context]``).

    A group without contexts shows one empty sample. Returns an `OfflineView` whose ``data`` is
    ``contexts``.
    """
    RenderedHTML = _rendered_html()
    from circuitsvis.topk_samples import topk_samples

    tokens = [[[c.tokens for c in ctx] or [[""]] for ctx in contexts.values()]]
    values = [[[c.values for c in ctx] or [[0.0]] for ctx in contexts.values()]]
    cv = topk_samples(tokens, values, zeroth_dimension_name="Neuron", first_dimension_name="Group",
                      zeroth_dimension_labels=[label], first_dimension_labels=list(contexts))

    class OfflineView(RenderedHTML):
        """A circuitsvis view that shows from its inlined library (never pings the network).

        Attributes:
            data: the contexts shown, ``group -> [Context]``.
        """

        def _repr_html_(self) -> str:
            return self.local_src

        def save(self, path: str | os.PathLike) -> Path:
            """Write the view as one offline HTML file; returns the path."""
            write_text_atomic(path, f"<!DOCTYPE html>\n<meta charset='utf-8'>\n{self.local_src}\n")
            return Path(path)

    view = OfflineView(cv.local_src, cv.cdn_src)
    view.data = dict(contexts)
    return view
