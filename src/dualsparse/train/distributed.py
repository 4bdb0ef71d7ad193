"""Multi-process training with ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m dualsparse train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`init_distributed` reads them, joins the
process group (``gloo`` on CPU, ``nccl`` on CUDA) and picks the device. Without them it
returns a single-process :class:`DistInfo` and does nothing.

Conventions: ``--batch_size`` is per process; every process reads the same token stream and
takes its own block of batch columns, so all ranks run the same number of steps. Rank 0
writes checkpoints, logs and results.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dualsparse.train.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from exc


def init_distributed(device: str | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group if launched by ``torchrun``; pick the device.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or None (CUDA when available). Under
            ``torchrun`` (``WORLD_SIZE`` > 1) each process takes the GPU of its
            ``LOCAL_RANK``; a single process takes ``N`` of ``"cuda:N"`` (else GPU 0).
        backend: process-group backend; default ``nccl`` for CUDA, ``gloo`` for CPU.
    """
    chosen = resolve_device(device)
    want_cuda = chosen.type == "cuda"
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    if want_cuda:
        index = local
        if world == 1 and chosen.index is not None:
            index = chosen.index
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = chosen
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if want_cuda else "gloo"))
    return DistInfo(rank, world, local, dev)


def barrier(info: DistInfo) -> None:
    """Wait for all processes (no-op for a single process)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_flag(info: DistInfo, value: bool) -> bool:
    """Rank 0's value of ``value`` on every rank (e.g. 'this evaluation is the best')."""
    if not (info.enabled and dist.is_initialized()):
        return value
    t = torch.tensor([int(value)], device=info.device if info.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    """Leave the process group. Called normally (no exception in flight), the ranks first meet
    at a barrier so they leave together: a rank that destroys a gloo group while a peer still
    uses it can abort the peer ("terminate called without an active exception"). With an
    exception in flight there is no barrier (the peers may never arrive)."""
    if info.enabled and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


__all__ = ["DistInfo", "barrier", "broadcast_flag", "cleanup", "init_distributed"]
