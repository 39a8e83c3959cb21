"""`ActivationStats`: validation, probabilities, merging, and its file format."""

import pytest
import torch

from tl_culture import ActivationStats, TLCultureError


def test_save_load_and_merge(tmp_path):
    a = ActivationStats(
        ["x", "y"],
        torch.tensor([[[1, 2]], [[3, 4]]]),
        torch.tensor([5, 6]),
        torch.ones(2, 1, 2, dtype=torch.float64),
        {"model": "m"},
    )
    b = ActivationStats(
        ["y", "z"],
        torch.tensor([[[1, 1]], [[0, 2]]]),
        torch.tensor([2, 3]),
        torch.ones(2, 1, 2, dtype=torch.float64),
        {"model": "m"},
    )
    a.save(tmp_path / "a.safetensors")
    a2 = ActivationStats.load(tmp_path / "a.safetensors")
    assert torch.equal(a2.counts, a.counts) and torch.equal(a2.sums, a.sums) and a2.meta == {"model": "m"}
    m = a + b
    assert m.groups == ["x", "y", "z"]
    assert m.counts.tolist() == [[[1, 2]], [[4, 5]], [[0, 2]]]
    assert m.tokens.tolist() == [5, 8, 3]
    assert m.sums[1].tolist() == [[2.0, 2.0]]
    assert m.probabilities[1, 0, 1].item() == pytest.approx(5 / 8)
    assert m.mean_activation()[2, 0, 0].item() == pytest.approx(1 / 3)
    with pytest.raises(TLCultureError, match="different model"):
        a + ActivationStats(["q"], torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([1]))


def test_loading_a_foreign_file_is_refused(tmp_path):
    from tl_culture import NeuronSet

    NeuronSet(["a"], torch.zeros(1, 1, 2, dtype=torch.bool)).save(tmp_path / "n.safetensors")
    with pytest.raises(TLCultureError, match="holds a 'NeuronSet' object, expected 'ActivationStats'"):
        ActivationStats.load(tmp_path / "n.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(TLCultureError, match="not a readable tl-culture file"):
        ActivationStats.load(tmp_path / "junk.safetensors")


def test_invalid_stats_are_refused():
    with pytest.raises(TLCultureError, match="more tokens than its group has"):
        ActivationStats(["a"], torch.tensor([[[5]]]), torch.tensor([4]))
