"""``tl-culture neurons``: the table of a neuron-set file and its overlaps."""

from __future__ import annotations

from tl_culture.cli import main
from tl_culture.selection.neurons import NeuronSet


def test_table_and_overlaps(cli_files, capsys):
    path = cli_files / "neurons.safetensors"
    ns = NeuronSet.load(path)
    assert main(["neurons", str(path)]) == 0
    assert capsys.readouterr().out.strip() == ns.table().strip()  # --bands defaults to NeuronSet.table's
    assert main(["neurons", str(path), "--bands", "2", "--overlaps"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(ns.table(bands=2)) and "Jaccard overlap" in out
    assert out.splitlines()[-1].split() == ["ru", "0.000", "1.000"]
