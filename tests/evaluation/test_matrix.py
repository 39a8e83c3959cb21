"""NLLMatrix: JSON round trip (NaN as null), the text table, shape and file errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import xy_corpora
from tl_culture import TLCultureError
from tl_culture.evaluation.delta import delta_nll
from tl_culture.evaluation.matrix import NLLMatrix


def test_nll_matrix_roundtrip_and_table(tmp_path, tiny_models, ab_neurons):
    res = delta_nll(tiny_models["gated"], xy_corpora(), ab_neurons, seq_len=12, max_tokens=None, controls=1,
                    control_cells="all", bootstrap=20, progress=False)
    res.ablated[1, 0] = math.nan  # a missing cell survives as null
    p = tmp_path / "nll" / "culture.json"
    res.save(p)
    raw = json.loads(p.read_text())
    assert raw["ablated"][1][0] is None and raw["kind"] == "NLLMatrix"
    back = NLLMatrix.load(p)
    assert back.groups == ["a", "b"] and back.evals == ["x", "y"]
    assert torch.equal(back.ablated.nan_to_num(7), res.ablated.nan_to_num(7))
    assert torch.equal(back.control_ci_high, res.control_ci_high)
    assert back.cell("a", "y") == pytest.approx(float(res.ablated[0, 1] - res.baseline[1]))
    text = back.table()
    assert "baseline" in text and "random-neuron control" in text
    assert f"{float(res.baseline[0]):.3f}" in text and f"{float(res.delta[0, 1]):+.3f}" in text


def test_nll_matrix_errors(tmp_path):
    with pytest.raises(TLCultureError, match="no such file"):
        NLLMatrix.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TLCultureError, match="not a JSON NLLMatrix file"):
        NLLMatrix.load(bad)
    bad.write_text('{"kind": "NeuronSet"}')
    with pytest.raises(TLCultureError, match="holds a 'NeuronSet' object, not an NLLMatrix"):
        NLLMatrix.load(bad)
    with pytest.raises(TLCultureError, match=r"NLLMatrix ablated has shape \(1, 1\), expected \(2, 1\)"):
        NLLMatrix(["a", "b"], ["x"], [1.0], [[1.0]], [3])
    with pytest.raises(TLCultureError, match="one value per eval corpus"):
        NLLMatrix(["a"], ["x", "y"], [1.0], [[1.0, 2.0]], [3, 3])
    m = NLLMatrix(["a"], ["x"], [1.0], [[1.5]], [3])
    assert m.delta.tolist() == [[0.5]]
    with pytest.raises(TLCultureError, match="unknown eval corpus 'q'"):
        m.cell("a", "q")


def test_matrix_files_of_the_findings_still_load():
    from tests.conftest import REPO

    paths = sorted((REPO / "docs" / "findings" / "nll").glob("*.json"))
    assert [p.stem for p in paths] == sorted(["language", "culture", "compound", "pure", "generic"])
    for p in paths:
        m = NLLMatrix.load(p)
        assert m.delta.shape == (len(m.groups), len(m.evals)), p.name
        rows = json.loads(p.read_text(encoding="utf-8"))["delta"]
        written = torch.tensor([[math.nan if v is None else v for v in row] for row in rows], dtype=torch.float64)
        torch.testing.assert_close(written, m.ablated - m.baseline[None], rtol=0, atol=1e-12, equal_nan=True)
