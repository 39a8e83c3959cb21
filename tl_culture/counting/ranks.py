"""The collectives `collect` runs under an initialised ``torch.distributed`` process group.

Each is a no-op question without one: `rank_world` is ``(0, 1)`` for a single process. The ranks
sum their results with one ``all_reduce(SUM)`` per tensor, on the device the backend needs
(CUDA under ``nccl``, the CPU under ``gloo``).
"""

from __future__ import annotations

import torch


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def reduce_device(default: torch.device) -> torch.device:
    """Where tensors must live for ``all_reduce``: CUDA under nccl, else the CPU."""
    import torch.distributed as dist

    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and "gloo" not in backend:
        return default if default.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: list[torch.Tensor | None], device: torch.device) -> list[torch.Tensor | None]:
    """Sum each tensor over the ranks; returns CPU tensors (``None`` entries pass through)."""
    import torch.distributed as dist

    where = reduce_device(device)
    out: list[torch.Tensor | None] = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        x = t.to(where).contiguous()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        out.append(x.cpu())
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (a collective: every rank must call it)."""
    import torch.distributed as dist

    x = torch.tensor([1 if flag else 0], dtype=torch.int64, device=reduce_device(device))
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return bool(x.item())
