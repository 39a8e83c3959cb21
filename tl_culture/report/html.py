"""Offline HTML: the page template, circuitsvis views with their JavaScript inlined once, a check for external URLs.

circuitsvis renders a view in two ways: ``cdn_src`` imports its JavaScript from unpkg.com (no
good offline), ``local_src`` inlines the whole ~1.3 MB library in a ``<script type="module">``
next to a self-closing ``<div .../>`` (which HTML parses as an *open* div, so a second view on the
same page ends up inside the first one and is wiped when the first renders). We take the
``CircuitsVis.render(...)`` call out of ``local_src``, close the div, and put the library on the
page once as a classic script, so any number of views share it.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from tl_culture._io import write_text_atomic
from tl_culture.errors import TLCultureError

_RENDER_RE = re.compile(
    r'<div id="(?P<id>circuits-vis-[0-9a-f-]+)"[^>]*?/?>.*CircuitsVis\.render\(\s*"(?P=id)",\s*'
    r"CircuitsVis\.(?P<component>\w+),\s*(?P<props>.*)\)\s*</script>\s*$",
    re.S,
)


@lru_cache(maxsize=1)
def circuitsvis_library() -> str:
    """The circuitsvis browser bundle (``dist/cdn/iife.js``), safe to inline in a ``<script>``."""
    try:
        import circuitsvis
    except ImportError:
        raise TLCultureError("token views need circuitsvis: pip install 'tl-culture[viz]'") from None
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise TLCultureError(f"circuitsvis has no browser bundle at {path}; reinstall circuitsvis")
    return _script_safe(path.read_text(encoding="utf-8"))


def _script_safe(js: str) -> str:
    """Make JavaScript safe inside ``<script>``: no ``</`` can close the element early."""
    return js.replace("</", "<\\/").replace("<!--", "<\\!--")


def circuitsvis_call(local_src: str) -> tuple[str, str, str]:
    """Split a circuitsvis ``local_src`` into (element id, component name, render call JavaScript)."""
    m = _RENDER_RE.search(local_src)
    if m is None:
        raise TLCultureError("unexpected circuitsvis output (no CircuitsVis.render call); pin circuitsvis==1.43.*")
    call = f'CircuitsVis.render("{m["id"]}", CircuitsVis.{m["component"]}, {m["props"].strip()});'
    return m["id"], m["component"], _script_safe(call)


def render_view(element_id: str, call: str, with_library: bool = True) -> str:
    """A view's HTML: its ``<div>`` (closed), then the library (once per page) and its render call."""
    lib = f"<script>{circuitsvis_library()}</script>\n" if with_library else ""
    return f'<div id="{element_id}" class="cv-view"></div>\n{lib}<script>{call}</script>'


def views_html(views: Sequence[tuple[str, Any]], heading_level: int = 3) -> str:
    """HTML of several circuitsvis views sharing one inlined library: ``[(title, view), ...]``.

    Each ``view`` is a tl-culture token view (has ``element_id`` and ``call``) or any circuitsvis
    `RenderedHTML`.
    """
    parts = [f"<script>{circuitsvis_library()}</script>"]
    h = f"h{heading_level}"
    for title, view in views:
        if hasattr(view, "call"):
            element_id, call = view.element_id, view.call
        else:
            element_id, _, call = circuitsvis_call(view.local_src)
        view_html = render_view(element_id, call, with_library=False)
        parts.append(f'<div class="cv-block"><{h}>{html.escape(str(title))}</{h}>\n{view_html}</div>')
    return "\n".join(parts)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("tl_culture.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
#: The page's stylesheet (``templates/page.css``): screen and print (A4) layout.
PAGE_CSS = _TEMPLATES.loader.get_source(_TEMPLATES, "page.css")[0]


def render(template: str, **context: Any) -> Markup:
    """Render ``templates/{template}`` (HTML-escaped; pass ready-made HTML as `markupsafe.Markup`)."""
    return Markup(_TEMPLATES.get_template(template).render(**context))


def page(title: str, body: str, css: str = PAGE_CSS) -> str:
    """A complete offline HTML document (UTF-8, inline style, no external resource) around ``body`` (HTML)."""
    return render("page.html.j2", title=title, body=Markup(body), css=Markup(css))


def save_views(
    path: str | os.PathLike, views: Sequence[tuple[str, Any]], title: str = "tl-culture token views"
) -> Path:
    """Write circuitsvis views as one offline HTML page (atomic); returns the path."""
    body = f"<h1>{html.escape(title)}</h1>\n{views_html(views)}"
    text = page(title, body)
    bad = external_references(text)
    if bad:
        raise TLCultureError(f"refusing to write {path}: it would load {bad[0]} from the network")
    write_text_atomic(path, text)
    return Path(path)


# --------------------------------------------------------------------------- offline check
_URL = r"""(?:https?:|wss?:|ftp:)?//[^\s"'<>)]+"""
_EXTERNAL_PATTERNS = [
    # attributes that make the browser fetch: src, href (link/a/use/image), srcset, poster, data, action
    re.compile(
        r"""\b(?:src|href|xlink:href|srcset|poster|data|action|formaction|background)\s*=\s*["']?\s*("""
        + _URL + ")", re.I
    ),
    re.compile(r"""url\(\s*["']?\s*(""" + _URL + ")", re.I),  # CSS url(...)
    re.compile(r"""@import\s+(?:url\()?\s*["']?([^"';)\s]+)""", re.I),  # CSS @import, any target
    re.compile(r"""\bimport\s*(?:\(\s*|[\w{}\s,*]+\bfrom\s*)["'](""" + _URL + ")", re.I),  # ES module import
    re.compile(
        r"""<link\b[^>]*\brel\s*=\s*["']?"""
        r"""(?:stylesheet|preconnect|dns-prefetch|prefetch|preload|modulepreload|icon|manifest)[^>]*>""", re.I
    ),
    re.compile(r"""<(?:iframe|object|embed|base)\b[^>]*>""", re.I),
    re.compile(r"""<meta\b[^>]*http-equiv\s*=\s*["']?refresh[^>]*>""", re.I),
]


def external_references(text: str) -> list[str]:
    """Everything in an HTML document that would make a browser load something from elsewhere.

    Flags src/href/srcset/... attributes and CSS ``url(...)`` pointing to ``http(s):``, ``ws(s):``,
    ``ftp:`` or protocol-relative ``//`` URLs, any CSS ``@import``, ES module imports from a URL,
    ``<link rel=stylesheet|preconnect|...>``, ``<iframe>/<object>/<embed>/<base>`` and meta refresh.
    Plain text that merely mentions a URL (an XML namespace, a link in a JavaScript error message)
    is not a request and is not flagged. ``data:`` URIs and ``#fragment`` links are local.
    """
    found: list[str] = []
    for pat in _EXTERNAL_PATTERNS:
        for m in pat.finditer(text):
            found.append(m.group(1) if m.groups() else m.group(0))
    return found
