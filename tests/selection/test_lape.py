"""LAPE selection against a hand computation and a loop-by-loop re-derivation of the formula."""

import math

import pytest
import torch

from tl_culture import ActivationStats, TLCultureError, identify
from tl_culture.selection.lape import ACTIVATION_BAR_RATIO, FILTER_RATE, TOP_RATE, lape_entropy


def naive_lape(counts, tokens, top_rate, filter_rate, bar_ratio):
    """The LAPE formula of docs/method.md written out with Python loops and sorted lists, no torch ops."""
    G, L, N = len(counts), len(counts[0]), len(counts[0][0])
    P = [[[counts[k][l][j] / tokens[k] for j in range(N)] for l in range(L)] for k in range(G)]
    flat = sorted(P[k][l][j] for k in range(G) for l in range(L) for j in range(N))
    thr = flat[round(len(flat) * filter_rate) - 1]
    bar = flat[round(len(flat) * bar_ratio) - 1]
    H = {}
    for l in range(L):
        for j in range(N):
            col = [P[k][l][j] for k in range(G)]
            s = sum(col)
            pn = [p / s if s > 0 else 0.0 for p in col]
            h = -sum(p * math.log(p) for p in pn if p > 0)
            if not any(p > thr for p in col):
                h = math.inf
            H[(l, j)] = h
    order = sorted(H, key=lambda lj: (H[lj], lj[0] * N + lj[1]))[: round(L * N * top_rate)]
    return {(k, l, j) for (l, j) in order for k in range(G) if P[k][l][j] > bar}


def test_hand_computed_example():
    # 2 groups x 1 layer x 4 neurons, 10 tokens each.
    counts = torch.tensor([[[9, 1, 5, 0]], [[1, 9, 5, 0]]])
    stats = ActivationStats(["a", "b"], counts, torch.tensor([10, 10]))
    # P: a = [.9 .1 .5 0], b = [.1 .9 .5 0]. Entropies: n0 = n1 = -(.9 ln .9 + .1 ln .1) = 0.3251,
    # n2 = ln 2, n3 = 0 but never active. All 8 P sorted: 0 0 .1 .1 .5 .5 .9 .9;
    # filter 0.5 -> k = 4 -> thr = 0.1: n3 has no P > 0.1 -> H = inf.
    H = lape_entropy(stats.probabilities)[0]
    assert H[0].item() == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert H[2].item() == pytest.approx(math.log(2))
    # top_rate 0.5 -> 2 neurons: n0 and n1 (lowest H). bar ratio 0.75 -> k = 6 -> bar = 0.5.
    ns = identify(stats, top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.75)
    assert ns.mask("a").tolist() == [[True, False, False, False]]
    assert ns.mask("b").tolist() == [[False, True, False, False]]
    assert ns.meta["filter_threshold"] == pytest.approx(0.1)
    assert ns.meta["activation_bar"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_rederivation_on_random_counts(seed):
    g = torch.Generator().manual_seed(seed)
    G, L, N = 4, 3, 50
    tokens = torch.randint(50, 200, (G,), generator=g)
    probs = torch.rand(G, L, N, generator=g) ** 3  # skewed, many small
    counts = (probs * tokens[:, None, None]).long()
    counts[:, 0, :5] = 0  # some never-active neurons
    stats = ActivationStats([f"g{i}" for i in range(G)], counts, tokens)
    ns = identify(stats, top_rate=0.05, filter_rate=0.9, activation_bar_ratio=0.8)
    want = naive_lape(counts.tolist(), tokens.tolist(), 0.05, 0.9, 0.8)
    got = {tuple(x) for x in torch.nonzero(ns.masks).tolist()}
    assert got == want
    assert ns.meta["n_selected"] == round(L * N * 0.05)


def test_every_group_kept_even_when_empty():
    # group c never fires, so it gets no neuron; it stays in the result (the reference drops it).
    counts = torch.tensor([[[10, 0, 5, 5]], [[0, 10, 5, 5]], [[0, 0, 0, 0]]])
    stats = ActivationStats(["a", "b", "c"], counts, torch.tensor([10, 10, 10]))
    # 12 P values sorted: six 0, four .5, two 1 -> the 0.5 quantiles (k = 6) are 0.
    ns = identify(stats, top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5)
    assert ns.groups == ["a", "b", "c"]
    assert ns.mask("a").tolist() == [[True, False, False, False]]
    assert ns.count("c") == 0
    ref = ns.to_reference()
    assert len(ref) == 3 and [t.tolist() for t in ref[2]] == [[]]
    assert ns.count("a") + ns.count("b") == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_rate": 0.0}, "top_rate must be in (0, 1)"),
        ({"filter_rate": 1.5}, "filter_rate must be in (0, 1)"),
        ({"activation_bar_ratio": -1}, "activation_bar_ratio must be in (0, 1)"),
    ],
)
def test_bad_rates(kwargs, message):
    stats = ActivationStats(["a", "b"], torch.ones(2, 1, 4, dtype=torch.long), torch.tensor([2, 2]))
    with pytest.raises(TLCultureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        identify(stats, **kwargs)


def test_needs_two_groups_and_tokens():
    with pytest.raises(TLCultureError, match="at least two groups"):
        identify(ActivationStats(["a"], torch.ones(1, 1, 4, dtype=torch.long), torch.tensor([3])))
    with pytest.raises(TLCultureError, match=r"\['b'\] have no tokens"):
        identify(ActivationStats(["a", "b"], torch.zeros(2, 1, 4, dtype=torch.long), torch.tensor([3, 0])))


def test_defaults_are_the_published_constants():
    assert (TOP_RATE, FILTER_RATE, ACTIVATION_BAR_RATIO) == (0.01, 0.95, 0.95)
    g = torch.Generator().manual_seed(0)
    stats = ActivationStats(["a", "b"], torch.randint(0, 50, (2, 2, 100), generator=g), torch.tensor([50, 50]))
    ns = identify(stats)
    assert (ns.meta["top_rate"], ns.meta["filter_rate"], ns.meta["activation_bar_ratio"]) == (0.01, 0.95, 0.95)
    assert ns == identify(stats, top_rate=0.01, filter_rate=0.95, activation_bar_ratio=0.95)
