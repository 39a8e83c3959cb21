"""The tutorial notebook docs/tutorial.ipynb: in step with its source, recorded outputs, runs top to bottom."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "docs" / "tutorial.ipynb"
BUDGET_S = 900  # the whole notebook, on the CI machine; it takes a few minutes on 2 idle CPU cores


def _builder():
    spec = importlib.util.spec_from_file_location("build_tutorial", REPO / "scripts" / "build_tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_matches_its_source():
    b = _builder()
    assert b.notebook_cells(NOTEBOOK) == b.source_cells(), (
        "docs/tutorial.ipynb differs from docs/tutorial.py: run `.venv/bin/python scripts/build_tutorial.py`"
    )


def test_committed_notebook_keeps_the_outputs_of_a_run():
    cells = [c for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1)), "not executed top to bottom"
    assert all(o["output_type"] != "error" for c in cells for o in c["outputs"])
    kinds = {k for c in cells for o in c["outputs"] for k in o.get("data", {})}
    assert {"image/png", "text/html"} <= kinds, "the figures and token views should be in the outputs"


@pytest.mark.slow
def test_notebook_runs(tmp_path):
    import nbformat

    copy = tmp_path / NOTEBOOK.name  # executed from a copy: the committed file is never touched
    shutil.copyfile(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    seconds = _builder().execute(nb)  # raises CellExecutionError naming the failing cell
    nbformat.write(nb, copy)
    assert seconds < BUDGET_S, f"the tutorial took {seconds:.0f} s (budget {BUDGET_S} s); keep its token budgets small"
