"""Data-parallel collection with ``torch.distributed`` (``torchrun``).

Every rank tokenizes the same corpora, takes a deterministic share of every group's batches
(batch ``b`` goes to rank ``b % world_size``), counts locally, and the ranks sum their results:

    counts[k] = Σ_r counts_r[k]     tokens[k] = Σ_r tokens_r[k]     sums[k] = Σ_r sums_r[k]

with one ``all_reduce(SUM)`` each. Each batch is the very batch (same rows, same padding) a
single process would run, so integer counts and tokens are bit-identical to a single-process run
with the same ``batch_size``; float64 sums differ only by the order of the additions (relative
error about 1e-16 per addition).

Backends: ``nccl`` when the ranks run on CUDA devices (rank ``LOCAL_RANK`` uses
``cuda:LOCAL_RANK``), ``gloo`` on CPU. `collect_under_torchrun` is the whole job of one process
(join, load, collect, rank 0 writes, leave); `init_distributed` and `close_distributed` are its
first and last steps, for scripts that do more in between. The collectives themselves are in
`tl_culture.counting.ranks`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tl_culture.counting.collect import collect
from tl_culture.counting.stats import ActivationStats
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


def check_writable(out: str | os.PathLike, flags: bool = False) -> None:
    """Raise `TLCultureError` if a file cannot be written at ``out`` (checked with a probe file that
    is removed again), so that a long run fails before it starts, not after.

    ``flags`` words the message for the command line (``--out``).
    """
    path, name = Path(out), "--out" if flags else "out"
    if path.is_dir():
        raise TLCultureError(f"{name} {out} is a folder; give a file name like stats.safetensors")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise TLCultureError(f"cannot write {out} ({why}); choose another {name}") from None


def collect_under_torchrun(
    load_model: Callable[[torch.device], Any],
    corpora: Mapping[str, Any],
    out: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    on_main: Callable[[ActivationStats, DistInfo], None] | None = None,
    flags: bool = False,
    **collect_kwargs: Any,
) -> ActivationStats:
    """`collect` as one process of a ``torchrun`` job, or as a single process without one.

    Joins the job described by torchrun's environment (`init_distributed`), checks on rank 0 that
    ``out`` can be written, loads the model on this rank's device (`resolve_device`: ``cuda``
    becomes ``cuda:LOCAL_RANK``), collects this rank's share of the batches, writes ``out`` on
    rank 0 only, and leaves the process group (`close_distributed`), also on errors. Progress bars
    show on rank 0 only.

    Args:
        load_model: ``device -> model``, e.g. ``lambda d: tl_culture.load_model("default", device=d)``.
        corpora: group name -> corpus-like, as for `collect`; every rank reads all of them.
        out: where rank 0 saves the statistics (None: not saved).
        device: ``cpu``, ``cuda`` or ``cuda:N``; default CUDA when available, else CPU.
        on_main: called on rank 0 with the statistics and the job's `DistInfo` after ``out`` is
            written (e.g. to report it).
        flags: word errors about ``out`` for the command line (``--out``).
        **collect_kwargs: the other settings of `collect` (``seq_len``, ``batch_size``, ...).

    Returns:
        The statistics summed over all ranks (every rank returns them).
    """
    info = init_distributed(device=device)
    try:
        if info.is_main and out is not None:
            check_writable(out, flags=flags)
        dev = resolve_device(device, info.local_rank, distributed=info.world_size > 1)
        model = load_model(dev)
        progress = collect_kwargs.pop("progress", True) and info.is_main
        stats = collect(model, corpora, progress=progress, **collect_kwargs)
        if info.is_main:  # every rank holds the reduced totals; one writes them
            if out is not None:
                stats.save(out)
            if on_main is not None:
                on_main(stats, info)
        return stats
    finally:
        close_distributed(info)


__all__ = [
    "DistInfo",
    "check_writable",
    "close_distributed",
    "collect_under_torchrun",
    "init_distributed",
    "resolve_device",
]
