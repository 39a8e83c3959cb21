"""Δ NLL controls: draws outside the selected neurons; paired CIs from the same resamples."""

import math

import pytest
import torch

from tl_culture.evaluation.bootstrap import control_seed
from tl_culture.evaluation.controls import cell_statistics, control_ablations, matrix_statistics, unit_counts
from tl_culture.evaluation.units import bootstrap_cis
from tl_culture.intervene.controls import selected_union
from tl_culture.intervene.interventions import random_like
from tl_culture.selection.neurons import NeuronSet


@pytest.fixture()
def sets():
    m = torch.zeros(2, 3, 40, dtype=torch.bool)
    m[0, 0, :6] = True
    m[0, 2, 10:20] = True
    m[1, 2, 15:30] = True
    return NeuronSet(["a", "b"], m), NeuronSet(["a", "b"], m.roll(5, dims=2))


def test_control_draws_exclude_every_selected_neuron(sets):
    lang, cult = sets
    union = selected_union(lang, cult)
    draws = control_ablations(lang, ["a", "b"], 5, seed=0, exclude=union)
    assert len(draws) == 10
    for (g, _), edit in draws.items():
        assert torch.equal(edit.mask.sum(1), lang.mask(g).sum(1))
        assert not bool((edit.mask & union).any())
    # without exclusion: the draws of random_like with the same seeds
    plain = control_ablations(lang, ["a", "b"], 2, seed=3)
    for k in range(2):
        for gi, g in enumerate(["a", "b"]):
            assert torch.equal(plain[g, k].mask, random_like(lang, g, seed=control_seed(3, k, gi)).mask)


def test_paired_ci_is_the_direct_computation():
    gen = torch.Generator().manual_seed(1)
    base = torch.rand(200, generator=gen, dtype=torch.float64) * 3
    abl = base + 0.5 + 0.1 * torch.rand(200, generator=gen, dtype=torch.float64)
    ctl = [base + 0.05 * torch.rand(200, generator=gen, dtype=torch.float64) for _ in range(3)]
    units = torch.arange(200) // 7
    out = cell_statistics(base, abl, ctl, units, n_boot=400, generator=torch.Generator().manual_seed(9))
    d = abl - base
    c = torch.stack(ctl).mean(0) - base
    assert out["delta"] == pytest.approx(float(d.mean())) and out["control_delta"] == pytest.approx(float(c.mean()))
    assert out["paired_delta"] == pytest.approx(float(d.mean() - c.mean()))
    lo, hi = bootstrap_cis(torch.stack([d, c, d - c]), units, n_boot=400, generator=torch.Generator().manual_seed(9))
    for i, name in enumerate(("delta", "control", "paired")):
        assert (out[f"{name}_ci_low"], out[f"{name}_ci_high"]) == (float(lo[i]), float(hi[i]))
    assert out["paired_ci_low"] > 0  # the ablation beats the control, paired
    none = cell_statistics(base, abl, [], units, n_boot=0, generator=torch.Generator())
    assert set(none) == {"delta"}


def test_matrix_statistics_and_unit_warning():
    base = {"x": torch.zeros(40, dtype=torch.float64), "y": torch.zeros(10, dtype=torch.float64)}
    nll = {"baseline": base, ("ablate", "a"): {e: v + 1 for e, v in base.items()},
           ("control", "a", 0): {e: v + 0.25 for e, v in base.items()}}
    units = {"x": torch.arange(40) // 4, "y": torch.arange(10)}
    cells = matrix_statistics(nll, ["a"], ["x", "y"], units, controls=1, n_boot=50, seed=0)
    assert cells["paired_delta"].tolist() == [[0.75, 0.75]] and cells["paired_ci_low"][0, 0] == pytest.approx(0.75)
    with pytest.warns(UserWarning, match="fewer than 30 documents"):
        assert unit_counts(units) == {"x": 10, "y": 10}
    assert unit_counts({"z": torch.arange(40)}, warn=True) == {"z": 40}
    assert math.isnan(float(matrix_statistics(nll, ["a"], ["x"], {"x": torch.zeros(40, dtype=torch.long)},
                                               controls=1, n_boot=5, seed=0)["delta_ci_low"][0, 0]))


def test_matrix_records_units_and_paired_cis(tiny_hf_model, tmp_path):
    import json

    from tl_culture.data.corpus import Corpus
    from tl_culture.evaluation.delta import delta_nll
    from tl_culture.evaluation.matrix import NLLMatrix

    docs = [f"the cat sat on the mat number {i}" for i in range(40)]
    ev = {"x": Corpus("x", documents=docs), "y": Corpus("y", documents=["der Hund schläft " * 80])}
    m = NeuronSet(["a"], torch.zeros(1, 2, 48, dtype=torch.bool))
    m.masks[0, 1, :6] = True
    with pytest.warns(UserWarning, match="fewer than 30 documents for {'y'"):
        res = delta_nll(tiny_hf_model, ev, m, seq_len=32, max_tokens=None, controls=2, bootstrap=50,
                        progress=False, allow_overlap=True, control_cells="all")
    assert res.bootstrap_units.tolist()[0] == 40  # one unit per document
    assert 1 <= res.bootstrap_units.tolist()[1] == int(res.tokens[1]) // 128  # a long document in blocks
    assert res.meta["bootstrap_units"] == "documents" and res.meta["control_excludes_selected"]
    torch.testing.assert_close(res.paired_delta, res.delta - res.control_delta)
    path = tmp_path / "m.json"
    res.save(path)
    d = json.loads(path.read_text())
    assert d["eval_tokens"] == res.tokens.tolist() and d["bootstrap_units"] == res.bootstrap_units.tolist()
    back = NLLMatrix.load(path)
    assert torch.equal(back.paired_ci_low, res.paired_ci_low) and "paired" in back.table()
    for k in ("eval_tokens", "bootstrap_units", "paired_delta", "paired_ci_low", "paired_ci_high"):
        d.pop(k)
    path.write_text(json.dumps(d))
    old = NLLMatrix.load(path)  # a file written before these fields still loads
    assert old.bootstrap_units is None and old.paired_delta is None
