"""Running top-k with ties broken by position, and the context windows kept with it.

Every candidate is an activation ``v`` at a position key ``key = row * seq_len + pos`` (the row's
index in its group's row stream, the position in the row). The order is

    a before b   iff   v_a > v_b,  or  v_a == v_b and key_a < key_b

and the top k of a set of candidates are its first k in that order. `select_topk` computes them
with two stable sorts (by key, then by value, descending), so the result does not depend on how
the candidates were split into batches or between processes: the top k of a union equals the top
k of the union of the parts' top k. `RunningTopK` keeps, per neuron, the k best candidates seen so
far and the ±``window`` tokens around each (token ids and the neuron's activation on each token),
taken from the very forward that produced the candidate, so a context's centre value is its
activation exactly. Memory: ``O(neurons × k × (2·window + 1))``; a batch's ``[batch, pos, neurons]``
activations are only read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

#: The tensors of a `RunningTopK`, in order.
FIELDS = ("vals", "keys", "win_ids", "win_vals")
#: Key of an empty slot (fewer candidates than k so far); its value is -inf.
NO_KEY = -1


def select_topk(
    vals: Float[torch.Tensor, "n m"], keys: Int[torch.Tensor, "n m"], k: int, *, keys_sorted: bool = False
) -> Int[torch.Tensor, "n k"]:
    """Columns of the k best candidates of each row, in the order of the module docstring.

    Args:
        vals: candidate values; ``-inf`` marks a non-candidate (chosen only to fill up to k).
        keys: candidate position keys (ties in ``vals`` go to the smaller key).
        k: how many to keep (at most ``m``).
        keys_sorted: the columns are already in ascending key order (skips one sort).

    Returns:
        ``int64[n, k]`` column indices, best first.
    """
    if keys_sorted:
        order = torch.arange(vals.shape[1], device=vals.device).expand_as(vals)
    else:
        order = torch.sort(keys, dim=1, stable=True).indices
    by_value = torch.sort(vals.gather(1, order), dim=1, descending=True, stable=True).indices[:, :k]
    return order.gather(1, by_value)


def window_index(
    flat_pos: Int[torch.Tensor, "n k"], width: int, window: int
) -> tuple[Int[torch.Tensor, "n k w"], Bool[torch.Tensor, "n k w"]]:
    """Flat batch positions of the ±``window`` tokens around each ``flat_pos`` (``row * width + pos``),
    clamped into the row, and whether each lies inside the row."""
    offsets = torch.arange(-window, window + 1, device=flat_pos.device)
    row, pos = flat_pos // width, flat_pos % width
    at = pos[..., None] + offsets
    inside = (at >= 0) & (at < width)
    return row[..., None] * width + at.clamp(0, width - 1), inside


@dataclass
class RunningTopK:
    """The k best activations seen so far of ``n`` neurons, with their context windows.

    Attributes:
        vals: ``float32[n, k]`` activations, in ascending key order between updates (-inf: empty).
        keys: ``int64[n, k]`` position keys (`NO_KEY`: empty).
        win_ids: ``int64[n, k, 2 * window + 1]`` token ids around each (-1 outside the row's tokens).
        win_vals: ``float32[n, k, 2 * window + 1]`` the neuron's activation on those tokens (0 outside).
    """

    vals: Float[torch.Tensor, "n k"]
    keys: Int[torch.Tensor, "n k"]
    win_ids: Int[torch.Tensor, "n k w"]
    win_vals: Float[torch.Tensor, "n k w"]

    @classmethod
    def empty(cls, n: int, k: int, window: int, device: torch.device) -> RunningTopK:
        """No candidate yet."""
        w = 2 * window + 1
        return cls(
            torch.full((n, k), float("-inf"), device=device),
            torch.full((n, k), NO_KEY, dtype=torch.long, device=device),
            torch.full((n, k, w), -1, dtype=torch.long, device=device),
            torch.zeros((n, k, w), device=device),
        )

    @property
    def k(self) -> int:
        return int(self.vals.shape[1])

    @property
    def window(self) -> int:
        return (int(self.win_ids.shape[2]) - 1) // 2

    def update(
        self,
        acts: Float[torch.Tensor, "batch pos n"],
        ids: Int[torch.Tensor, "batch pos"],
        counted: Bool[torch.Tensor, "batch pos"],
        first_key: Int[torch.Tensor, " batch"],
    ) -> None:
        """Add one batch's activations; every key of the batch must exceed every key seen before.

        Args:
            acts: the neurons' activations on each token of the batch.
            ids: the batch's token ids.
            counted: True on the tokens that count (False on BOS and padding).
            first_key: the key of position 0 of each row (``row * seq_len``).
        """
        B, T, n = acts.shape
        a = acts.reshape(B * T, n).T.float()  # [n, B*T]
        mask = counted.reshape(-1)
        cand = a.masked_fill(~mask[None], float("-inf"))
        batch_keys = (first_key[:, None] + torch.arange(T, device=acts.device)[None]).reshape(-1)
        k = self.k
        cols = select_topk(
            torch.cat([self.vals, cand], 1), torch.cat([self.keys, batch_keys.expand(n, -1)], 1), k, keys_sorted=True
        )
        cols = cols.sort(dim=1).values  # back to ascending key order
        new = cols >= k
        flat = (cols - k).clamp(min=0)
        idx, inside = window_index(flat, T, self.window)
        inside &= mask[idx]
        w_vals = a.gather(1, idx.reshape(n, -1)).reshape(idx.shape).masked_fill(~inside, 0.0)
        w_ids = ids.reshape(-1)[idx].masked_fill(~inside, -1)
        old = cols.clamp(max=k - 1)
        old_w = old[..., None].expand(-1, -1, self.win_ids.shape[2])
        self.win_vals = torch.where(new[..., None], w_vals, self.win_vals.gather(1, old_w))
        self.win_ids = torch.where(new[..., None], w_ids, self.win_ids.gather(1, old_w))
        self.vals = torch.where(new, cand.gather(1, flat), self.vals.gather(1, old))
        self.keys = torch.where(new, batch_keys[flat], self.keys.gather(1, old))

    def ranked(self) -> RunningTopK:
        """The same entries, best first (value descending, ties by ascending key), on the CPU."""
        cols = select_topk(self.vals, self.keys, self.k)
        w = cols[..., None].expand(-1, -1, self.win_ids.shape[2])
        return RunningTopK(
            self.vals.gather(1, cols).cpu(), self.keys.gather(1, cols).cpu(),
            self.win_ids.gather(1, w).cpu(), self.win_vals.gather(1, w).cpu(),
        )

    @classmethod
    def merged(cls, parts: list[RunningTopK]) -> RunningTopK:
        """The top k of the union of several parts (e.g. one per process), best first."""
        if len(parts) == 1:
            return parts[0].ranked()
        cat = cls(*(torch.cat([getattr(p, f) for p in parts], 1) for f in FIELDS))
        k = parts[0].k
        cols = select_topk(cat.vals, cat.keys, k)
        w = cols[..., None].expand(-1, -1, cat.win_ids.shape[2])
        return cls(cat.vals.gather(1, cols), cat.keys.gather(1, cols), cat.win_ids.gather(1, w),
                   cat.win_vals.gather(1, w))
