"""Data-parallel collection with ``torch.distributed`` (``torchrun``).

Every rank tokenizes the same corpora, takes a deterministic share of every group's batches
(batch ``b`` goes to rank ``b % world_size``), counts locally, and the ranks sum their results:

    counts[k] = Σ_r counts_r[k]     tokens[k] = Σ_r tokens_r[k]     sums[k] = Σ_r sums_r[k]

with one ``all_reduce(SUM)`` each. Each batch is the very batch (same rows, same padding) a
single process would run, so integer counts and tokens are bit-identical to a single-process run
with the same ``batch_size``; float64 sums differ only by the order of the additions (relative
error about 1e-16 per addition).

Backends: ``nccl`` when the ranks run on CUDA devices (rank ``LOCAL_RANK`` uses
``cuda:LOCAL_RANK``), ``gloo`` on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tl_culture.errors import TLCultureError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a data-parallel job.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes (1 for a single process).
        local_rank: rank on this node (selects the CUDA device).
        initialised_here: True when `init_distributed` created the process group (and
            `close_distributed` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and prints (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TLCultureError(
            f"environment variable {name}={value!r} is not a whole number; launch with torchrun"
        ) from None


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device: str | torch.device | None, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The device this rank runs on.

    ``None`` means CUDA when available, else CPU; under a data-parallel job a bare ``cuda``
    becomes ``cuda:LOCAL_RANK`` so that each rank of a node gets its own GPU.

    Raises:
        TLCultureError: a CUDA device is asked for on a machine without one.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise TLCultureError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TLCultureError(f"device {device!r} asked for, but this machine has no CUDA GPU; use --device cpu")
        if dev.index is None and distributed:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TLCultureError(
                f"device {dev} asked for, but this machine has {torch.cuda.device_count()} GPU(s); "
                "use fewer processes per node (--nproc-per-node)"
            )
    return dev


def init_distributed(device: str | torch.device | None = None, backend: str | None = None) -> DistInfo:
    """Join the data-parallel job described by torchrun's environment variables.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through
    ``init_method="env://"``). Without them, or with ``WORLD_SIZE=1``, nothing is initialised and
    a single-process `DistInfo` is returned. An already initialised process group is reused.

    Args:
        device: the device the ranks run on (``cpu``, ``cuda``); picks the backend.
        backend: ``"gloo"`` or ``"nccl"``; default nccl for CUDA devices, gloo otherwise.

    Returns:
        A `DistInfo`.
    """
    import torch.distributed as dist

    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo(0, 1, local_rank, False)
    if not dist.is_available():
        raise TLCultureError("this PyTorch build has no torch.distributed; run a single process")
    dev = resolve_device(device, local_rank, distributed=True)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(backend=backend, init_method="env://")
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TLCultureError(
            f"cannot join the data-parallel job (WORLD_SIZE={world}): {first}; launch with torchrun, "
            "or unset WORLD_SIZE for a single process"
        ) from exc
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, True)


def close_distributed(info: DistInfo) -> None:
    """Destroy the process group if `init_distributed` created it."""
    import torch.distributed as dist

    if info.initialised_here and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "any_rank",
    "close_distributed",
    "init_distributed",
    "rank_world",
    "resolve_device",
]
