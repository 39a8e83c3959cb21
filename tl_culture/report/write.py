"""One self-contained HTML report of a run folder: settings, neuron tables, figures, Δ NLL, token views.

    write_report("runs/demo")                       # figures + tables
    write_report("runs/demo", model=load_model())   # + circuitsvis token views of held-out text

The report is ``{run_dir}/report.html``: the sections of `tl_culture.report.sections` rendered
from the templates in ``tl_culture/report/templates``, with every figure inlined as SVG (PNG and
SVG copies are written to ``{run_dir}/figures/``) and circuitsvis' JavaScript inlined once, so it
opens with no network: it has no external script, style, font or image (checked before writing).
Everything it shows is read from the run folder (`RunDir`), the held-out texts of the token views
included (``samples.json``).
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from tl_culture.errors import TLCultureError
from tl_culture.experiment.rundir import RunContents, RunDir
from tl_culture.report.html import external_references, page, render
from tl_culture.report.sections import REPORT_SECTIONS, ReportContext

#: Section anchor -> its label in the table of contents, in page order.
SECTIONS = {s.key: s.label for s in REPORT_SECTIONS}


def load_run(run_dir: str | os.PathLike | RunDir) -> RunContents:
    """Read what the report shows from a run folder (see `RunContents`)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    return run.load()


def _named_texts(texts: Mapping[str, str] | Sequence[str] | None) -> dict[str, str] | None:
    if texts is None:
        return None
    if isinstance(texts, Mapping):
        return {str(k): str(v) for k, v in texts.items()}
    return {f"text {i + 1}": str(t) for i, t in enumerate(texts)}


def write_report(
    run_dir: str | os.PathLike | RunDir,
    model: Any = None,
    texts: Mapping[str, str] | Sequence[str] | None = None,
    *,
    max_tokens: int = 48,
    title: str | None = None,
) -> Path:
    """Write ``{run_dir}/report.html`` (and ``{run_dir}/figures/*.png|svg``).

    Args:
        run_dir: a run folder of `run_experiment` (summary.json, neurons/, optional nll/).
        model: a TransformerLens model; when given, the report has circuitsvis token views.
        texts: texts for the token views (``{name: text}`` or a list); default the first
            held-out document of each culture (``samples.json``).
        max_tokens: tokens shown per text.
        title: page title; default from the model name.

    Returns:
        The path of ``report.html``.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    ctx = ReportContext(run.load(), run.figures_dir, model, _named_texts(texts), max_tokens)
    title = title or f"Culture neurons of {ctx.model_name}"
    # run_experiment writes the report in its staging folder before moving it to config.out
    run_name = Path(ctx.run.summary.get("config", {}).get("out") or run.path.resolve()).name
    sections = [{"key": s.key, "label": s.label, "heading": s.heading, "html": Markup(s.render(ctx))}
                for s in REPORT_SECTIONS]
    body = render("report.html.j2", title=title, run_name=run_name, written=time.strftime("%Y-%m-%d %H:%M"),
                  sections=sections)
    text = page(title, body)
    bad = external_references(text)
    if bad:
        raise TLCultureError(f"report would load {bad[0]} from the network; remove that reference")
    return run.write_report(text)


def report_stage(run: RunDir, model: Any) -> None:
    """`run_experiment`'s report stage: write the report, or warn when the ``viz`` extra is missing."""
    missing = [m for m in ("matplotlib", "circuitsvis") if importlib.util.find_spec(m) is None]
    if missing:
        warnings.warn(
            f"no report: {', '.join(missing)} not installed; pip install 'tl-culture[viz]' and run "
            "tl-culture report RUN_DIR",
            stacklevel=2,
        )
        return
    write_report(run, model=model)
