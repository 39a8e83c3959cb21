"""Neuron sets: algebra on hand-made masks, reference files, categories, save/load."""

import pytest
import torch

from tl_culture import NeuronSet, TLCultureError, culture_categories


def ns(groups, rows):
    return NeuronSet(groups, torch.tensor(rows, dtype=torch.bool))


def test_set_algebra_by_hand():
    a = ns(["x", "y"], [[[1, 1, 0, 0]], [[0, 1, 1, 0]]])
    b = ns(["x", "y"], [[[0, 1, 1, 0]], [[0, 0, 1, 1]]])
    assert (a | b).masks.int().tolist() == [[[1, 1, 1, 0]], [[0, 1, 1, 1]]]
    assert (a & b).masks.int().tolist() == [[[0, 1, 0, 0]], [[0, 0, 1, 0]]]
    assert (a - b).masks.int().tolist() == [[[1, 0, 0, 0]], [[0, 1, 0, 0]]]
    assert a.counts() == {"x": 2, "y": 2}
    assert a.count() == 3  # union
    assert int(a.shared_mask(2).sum()) == 1
    assert [t.tolist() for t in a.indices("y")] == [[1, 2]]
    # Jaccard(x, y) = |{1}| / |{0,1,2}| = 1/3
    assert a.jaccard()[0, 1].item() == pytest.approx(1 / 3)
    assert a.layer_histogram().tolist() == [[2], [2]]


def test_algebra_refuses_mismatched_groups_and_shapes():
    a = ns(["x", "y"], [[[1, 0]], [[0, 1]]])
    with pytest.raises(TLCultureError, match="same groups"):
        a | ns(["y", "x"], [[[1, 0]], [[0, 1]]])
    with pytest.raises(TLCultureError, match="different models"):
        a & ns(["x", "y"], [[[1, 0, 0]], [[0, 1, 0]]])
    with pytest.raises(TLCultureError, match="unknown group 'z'"):
        a.mask("z")


def test_culture_categories_by_hand():
    lang = ns(["en", "de", "zz"], [[[1, 1, 0, 0, 1]], [[0, 0, 1, 1, 1]], [[1, 1, 1, 1, 1]]])
    cult = ns(["english", "german"], [[[1, 0, 0, 1, 1]], [[0, 0, 1, 0, 1]]])
    cats = culture_categories(lang, cult, {"english": "en", "german": "de"})
    assert cats["language"].groups == ["english", "german"]
    assert cats["compound"].masks.int().tolist() == [[[1, 0, 0, 0, 1]], [[0, 0, 1, 0, 1]]]
    assert cats["pure"].masks.int().tolist() == [[[0, 0, 0, 1, 0]], [[0, 0, 0, 0, 0]]]
    assert cats["generic"].groups == ["generic"]
    assert cats["generic"].masks.int().tolist() == [[[0, 0, 0, 0, 0]]]
    # a neuron pure for every culture is generic
    cult2 = ns(["english", "german"], [[[0, 0, 0, 1, 0]], [[1, 0, 0, 1, 0]]])
    lang2 = ns(["en", "de"], [[[0, 0, 0, 0, 0]], [[0, 0, 0, 0, 0]]])
    g = culture_categories(lang2, cult2, {"english": "en", "german": "de"})["generic"]
    assert g.masks.int().tolist() == [[[0, 0, 0, 1, 0]]]
    with pytest.raises(TLCultureError, match="--pair"):
        culture_categories(lang2, cult2)


def test_culture_categories_leave_their_arguments_alone():
    lang = NeuronSet(["en"], torch.tensor([[[1, 1, 0]]], dtype=torch.bool), {"source": "lang"})
    cult = NeuronSet(["english"], torch.tensor([[[0, 1, 1]]], dtype=torch.bool), {"source": "cult"})
    masks = lang.masks.clone(), cult.masks.clone()
    cats = culture_categories(lang, cult, {"english": "en"})
    assert lang.meta == {"source": "lang"} and cult.meta == {"source": "cult"}
    assert torch.equal(lang.masks, masks[0]) and torch.equal(cult.masks, masks[1])
    assert {name: ns.meta["category"] for name, ns in cats.items()} == {n: n for n in cats}
    assert cats["culture"] is not cult and cats["culture"] == cult and cats["culture"].meta["source"] == "cult"
    cats["culture"].masks[0, 0, 0] = True  # the results do not share masks with the arguments
    assert not cult.masks[0, 0, 0]


def test_save_load_round_trip(tmp_path):
    a = NeuronSet(["x", "y"], torch.rand(2, 3, 7) > 0.5, {"note": "hi"})
    a.save(tmp_path / "n.safetensors")
    b = NeuronSet.load(tmp_path / "n.safetensors")
    assert a == b and b.meta == {"note": "hi"}


def test_reference_round_trip():
    lists = [[torch.tensor([1, 3]), torch.tensor([], dtype=torch.long)], [torch.tensor([0]), torch.tensor([2, 3])]]
    n = NeuronSet.from_reference(lists, ["a", "b"], n_layers=2, d_mlp=4)
    assert n.counts() == {"a": 2, "b": 3}
    back = n.to_reference()
    assert [[t.tolist() for t in g] for g in back] == [[[1, 3], []], [[0], [2, 3]]]
    with pytest.raises(TLCultureError, match="out of range"):
        NeuronSet.from_reference([[torch.tensor([9])]], ["a"], n_layers=1, d_mlp=4)


def test_published_llama2_7b_file(shared_data, tmp_path):
    path = shared_data / "reference_neurons" / "LLaMA-2-7B.neuron.pth"
    langs = ["en", "zh", "fr", "es", "vi", "id", "ja"]
    n = NeuronSet.load_reference(path, langs, n_layers=32, d_mlp=11008)
    assert list(n.counts().values()) == [95, 583, 1022, 838, 836, 1068, 582]
    assert n.count() == 3523 == round(0.01 * 32 * 11008)
    assert int(n.shared_mask(2).sum()) == 1127
    # our save/load and the reference layout round-trip exactly
    n.save(tmp_path / "llama.safetensors")
    m = NeuronSet.load(tmp_path / "llama.safetensors")
    raw = torch.load(path, weights_only=True)
    assert all(torch.equal(x, y) for gx, gy in zip(raw, m.to_reference()) for x, y in zip(gx, gy))


def test_table_mentions_counts():
    a = ns(["x", "y"], [[[1, 1, 0, 0], [1, 0, 0, 0]], [[0, 1, 1, 0], [0, 0, 0, 0]]])
    t = a.table(bands=2)
    assert "x          3        2        1" in t
    assert "union 4 neurons; 1 in two or more groups" in t
