"""Safe loading: our files are safetensors + JSON; reference ``.pth`` files go through
``torch.load(weights_only=True)`` only, so a hostile pickle cannot run code."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from tl_culture import ActivationStats, NeuronSet, TLCultureError, load_corpus
from tl_culture.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "tl_culture"


class Hostile:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def hostile(tmp_path):
    marker = tmp_path / "PWNED"
    pth = tmp_path / "neurons.pth"
    torch.save([[torch.tensor([1, 2]), Hostile(marker)]], pth)  # looks like a reference file
    rows = tmp_path / "rows.pt"
    torch.save({"rows": Hostile(marker)}, rows)
    raw = tmp_path / "stats.safetensors"  # a plain pickle posing as one of our files
    raw.write_bytes(pickle.dumps(Hostile(marker)))
    return marker, pth, rows, raw


def test_the_payload_is_live(hostile):
    """Control: an unsafe load of the same file does run the payload (so the tests below mean something)."""
    marker, pth, _, _ = hostile
    torch.load(pth, weights_only=False)
    assert marker.exists()


def test_reference_file_is_refused(hostile):
    marker, pth, _, _ = hostile
    with pytest.raises(TLCultureError) as err:
        NeuronSet.load_reference(pth, ["a"])
    assert str(err.value) == (
        f"{pth}: refused: not a plain tensor-list file (UnpicklingError); "
        "only weights_only-safe reference files are read"
    )
    assert not marker.exists()


def test_pretokenized_rows_are_refused(hostile):
    marker, _, rows, _ = hostile
    with pytest.raises(TLCultureError, match=r"rows.pt: cannot read pre-tokenized rows \(UnpicklingError\)"):
        load_corpus(rows)
    assert not marker.exists()


def test_pickle_posing_as_our_file_is_refused(hostile):
    marker, _, _, raw = hostile
    for load in (ActivationStats.load, NeuronSet.load):
        with pytest.raises(TLCultureError, match="not a readable tl-culture file"):
            load(raw)
    assert not marker.exists()


def test_cli_refuses_hostile_files(hostile, tiny_hf_dir, capsys, tmp_path):
    marker, pth, rows, raw = hostile
    for argv in (
        ["neurons", str(pth), "--groups", "a"],
        ["collect", "--model", str(tiny_hf_dir), "--device", "cpu", "--corpus", f"en={rows}", "--out",
         str(tmp_path / "o.safetensors")],
        ["identify", str(raw), "--out", str(tmp_path / "n.safetensors")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("tl-culture: error: ") and "Traceback" not in err
    assert not marker.exists()


def test_plain_reference_file_still_loads(tmp_path):
    ref = [[torch.tensor([0, 3]), torch.tensor([], dtype=torch.long)], [torch.tensor([1]), torch.tensor([2, 3])]]
    torch.save(ref, tmp_path / "ok.pth")
    ns = NeuronSet.load_reference(tmp_path / "ok.pth", ["en", "zh"], n_layers=2, d_mlp=4)
    assert ns.masks.int().tolist() == [[[1, 0, 0, 1], [0, 0, 0, 0]], [[0, 1, 0, 0], [0, 0, 1, 1]]]
    torch.save({"rows": torch.arange(6).reshape(2, 3)}, tmp_path / "rows.pt")
    assert load_corpus(tmp_path / "rows.pt").rows.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_no_unsafe_deserialisation_in_the_package():
    """Every torch.load in tl_culture passes weights_only=True; nothing calls pickle/marshal loads."""
    torch_loads = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                torch_loads += 1
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                assert ok, f"{where}: torch.load without weights_only=True"
            unsafe = owner in ("pickle", "marshal", "dill", "cloudpickle") and node.func.attr in ("load", "loads")
            assert not unsafe, f"{where}: {owner}.{node.func.attr}"
    assert torch_loads >= 2  # NeuronSet.load_reference and the corpus rows loader
