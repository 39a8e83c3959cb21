"""Running top-k: the order (value, then position), batch and process splits, windows."""

from __future__ import annotations

import torch

from tl_culture.explore.topk import RunningTopK, select_topk, window_index


def test_select_topk_breaks_ties_by_key():
    vals = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, float("-inf")]])
    keys = torch.tensor([[10, 4, 7, 1, 2, 0]])
    assert select_topk(vals, keys, 6).tolist() == [[4, 1, 2, 3, 0, 5]]
    assert select_topk(vals, keys, 2).tolist() == [[4, 1]]


def _one_shot(vals, keys, k):
    cols = select_topk(vals, keys, k)
    return vals.gather(1, cols), keys.gather(1, cols)


def test_union_of_parts_top_k_is_top_k_of_union():
    g = torch.Generator().manual_seed(0)
    vals = torch.randint(0, 5, (7, 60), generator=g).float()  # many ties
    keys = torch.randperm(60, generator=g).expand(7, -1).contiguous()
    want = _one_shot(vals, keys, 9)
    for split in ([0, 60], [0, 13, 29, 60], [0, 1, 2, 59, 60]):
        parts = []
        for a, b in zip(split, split[1:], strict=False):  # each part: its candidates after 9 empty slots
            empty = RunningTopK.empty(7, 9, 0, torch.device("cpu"))
            part = RunningTopK(torch.cat([empty.vals, vals[:, a:b]], 1), torch.cat([empty.keys, keys[:, a:b]], 1),
                               torch.cat([empty.win_ids, keys[:, a:b, None]], 1),
                               torch.cat([empty.win_vals, torch.zeros(7, b - a, 1)], 1)).ranked()
            parts.append(RunningTopK(*(t[:, :9] for t in (part.vals, part.keys, part.win_ids, part.win_vals))))
        merged = RunningTopK.merged(parts)
        assert torch.equal(merged.vals, want[0]) and torch.equal(merged.keys, want[1])
        assert torch.equal(merged.win_ids[..., 0], merged.keys)  # windows travel with their entries


def test_running_updates_equal_one_shot_with_windows():
    g = torch.Generator().manual_seed(1)
    B, T, n, k, w = 3, 8, 4, 5, 2
    acts = torch.randint(-2, 4, (4 * B, T, n), generator=g).float()
    ids = torch.randint(0, 100, (4 * B, T), generator=g)
    counted = torch.rand(4 * B, T, generator=g) > 0.2
    state = RunningTopK.empty(n, k, w, torch.device("cpu"))
    for b in range(4):
        rows = slice(b * B, (b + 1) * B)
        state.update(acts[rows], ids[rows], counted[rows], torch.arange(b * B, (b + 1) * B) * T)
    top = state.ranked()
    flat = acts.reshape(-1, n).T.masked_fill(~counted.reshape(1, -1), float("-inf"))
    vals, keys = _one_shot(flat, torch.arange(4 * B * T).expand(n, -1), k)
    assert torch.equal(top.vals, vals) and torch.equal(top.keys, keys)
    idx, inside = window_index(keys, T, w)
    inside &= counted.reshape(-1)[idx]
    assert torch.equal(top.win_ids, ids.reshape(-1)[idx].masked_fill(~inside, -1))
    want = acts.reshape(-1, n).T.gather(1, idx.reshape(n, -1)).reshape(idx.shape).masked_fill(~inside, 0)
    assert torch.equal(top.win_vals, want)
    assert torch.equal(top.win_vals[..., w], top.vals)  # the centre is the activation
