"""Random-neuron controls: per-layer counts, exclusion, and the draw without exclusion."""

import pytest
import torch

from tl_culture.errors import TLCultureError
from tl_culture.intervene.controls import random_edit, random_mask_excluding, selected_union
from tl_culture.intervene.interventions import ablate, random_mask, scale, set_to
from tl_culture.selection.neurons import NeuronSet


def _mask(seed: int, L: int = 4, N: int = 50, p: float = 0.1) -> torch.Tensor:
    return torch.rand(L, N, generator=torch.Generator().manual_seed(seed)) < p


def test_same_counts_and_never_excluded():
    mask, exclude = _mask(0), _mask(1, p=0.5)
    for seed in range(20):
        out = random_mask_excluding(mask, torch.Generator().manual_seed(seed), exclude)
        assert torch.equal(out.sum(1), mask.sum(1))
        assert not bool((out & exclude).any())


def test_without_exclusion_it_is_random_mask():
    mask = _mask(2)
    a = random_mask_excluding(mask, torch.Generator().manual_seed(7))
    b = random_mask(mask, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_too_few_free_neurons_warns_or_raises():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, :3] = True
    exclude = torch.zeros(2, 4, dtype=torch.bool)
    exclude[1, :2] = True
    with pytest.raises(TLCultureError, match="layer 1 has 2 neurons"):
        random_mask_excluding(mask, torch.Generator().manual_seed(0), exclude, strict=True)
    with pytest.warns(UserWarning, match="also draws excluded neurons"):
        out = random_mask_excluding(mask, torch.Generator().manual_seed(0), exclude)
    assert torch.equal(out.sum(1), mask.sum(1)) and bool(out[1, 2:].all())  # every free neuron, then excluded


def test_selected_union_and_random_edit_exclude_selected():
    m = torch.zeros(2, 3, 20, dtype=torch.bool)
    m[0, 0, :4] = True
    m[1, 2, 5:9] = True
    lang, cult = NeuronSet(["a", "b"], m), NeuronSet(["a", "b"], m.roll(3, dims=2))
    union = selected_union(lang, cult)
    assert torch.equal(union, m.any(0) | m.roll(3, dims=2).any(0))
    values = torch.arange(60, dtype=torch.float64).reshape(3, 20)
    for edit in (ablate(lang, "a"), scale(lang, "b", 4.0), set_to(lang, "a", values)):
        for seed in range(5):
            ctl = random_edit(edit, seed, exclude=union)
            assert torch.equal(ctl.mask.sum(1), edit.mask.sum(1))
            assert not bool((ctl.mask & union).any())
            e, c = edit.edits[0], ctl.edits[0]
            assert (c.kind, c.factor) == (e.kind, e.factor) and "random" in c.label
    ctl = random_edit(set_to(lang, "a", values), 3, exclude=union)
    idx, mul, add = ctl._maps[0]
    assert torch.equal(add, values[0, idx]) and not bool(mul.any())  # the random neurons' own values
    assert torch.equal(random_edit(edit, 1).mask, random_edit(edit, 1).mask)  # seeded
    assert not torch.equal(random_edit(edit, 1).mask, random_edit(edit, 2).mask)  # by its seed


def test_random_edit_reproduces_across_processes():
    """The same seed draws the same neurons in a fresh interpreter (no state carried between draws)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from tl_culture.intervene.controls import random_edit\n"
        "from tl_culture.intervene.interventions import ablate\n"
        "from tl_culture.selection.neurons import NeuronSet\n"
        "m = torch.zeros(1, 3, 20, dtype=torch.bool); m[0, :, :5] = True\n"
        "print(torch.nonzero(random_edit(ablate(NeuronSet(['a'], m), 'a'), 1).mask).flatten().tolist())\n"
    )
    m = torch.zeros(1, 3, 20, dtype=torch.bool)
    m[0, :, :5] = True
    torch.rand(7)  # this process's global generator is elsewhere than the child's
    here = torch.nonzero(random_edit(ablate(NeuronSet(["a"], m), "a"), 1).mask).flatten().tolist()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(here)
