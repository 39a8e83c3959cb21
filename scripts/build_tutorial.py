"""Build docs/tutorial.ipynb from its source docs/tutorial.py and execute it, keeping the outputs.

The source is in the "percent" format (as jupytext writes it): ``# %%`` starts a code cell,
``# %% [markdown]`` a markdown cell whose lines are comments. Run from anywhere:

    .venv/bin/python scripts/build_tutorial.py            # build, execute, write the notebook
    .venv/bin/python scripts/build_tutorial.py --no-run   # build without executing
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "tutorial.py"
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
CELL_TIMEOUT = 600


def source_cells(path: Path = SOURCE) -> list[tuple[str, str]]:
    """``[(cell_type, source)]`` of a percent-format script: code or markdown, blank edges trimmed."""
    cells: list[tuple[str, list[str]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            kind, lines = cells[-1]
            if kind == "markdown":
                line = line[2:] if line.startswith("# ") else line.lstrip("#")
            lines.append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def notebook_cells(path: Path = NOTEBOOK) -> list[tuple[str, str]]:
    """``[(cell_type, source)]`` of a notebook file."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def build(cells: list[tuple[str, str]]):
    """An nbformat v4 notebook of ``cells`` for the python3 kernel."""
    import nbformat.v4 as v4

    make = {"code": v4.new_code_cell, "markdown": v4.new_markdown_cell}
    nb = v4.new_notebook(cells=[make[kind](src) for kind, src in cells])
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: rebuilding does not churn the file
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def _kernel_manager(folder: Path):
    """A kernel manager for this interpreter's ipykernel (whatever kernels Jupyter's folders hold),
    talking over IPC sockets in ``folder`` (no TCP port)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs, transport="ipc", ip=str(folder / "kernel"))


def execute(nb, timeout: int = CELL_TIMEOUT) -> float:
    """Run ``nb`` top to bottom in a fresh python3 kernel, in a temporary folder; returns seconds."""
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as tmp:
        km = _kernel_manager(Path(tmp))
        client = NotebookClient(nb, km=km, timeout=timeout, record_timing=False, resources={"metadata": {"path": tmp}})
        start = time.perf_counter()
        client.execute()
        return time.perf_counter() - start


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children, e.g. an executed kernel."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def main() -> None:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-run", action="store_true", help="write the notebook without executing it")
    args = ap.parse_args()
    nb = build(source_cells())
    if not args.no_run:
        cpu = children_cpu()
        seconds = execute(nb)
        print(f"executed {NOTEBOOK.name} in {seconds:.0f} s (kernel CPU time {children_cpu() - cpu:.0f} s)")
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK} ({NOTEBOOK.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
