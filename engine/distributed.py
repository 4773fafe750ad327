"""Multi-process training through ``torchrun``: process group, device choice, reductions.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything degrades to a single
process: rank 0 of a world of size 1, and the collectives below return their input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from misc.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this machine; picks the CUDA device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for ``--device auto|cpu|cuda|cuda:N``.

    ``auto`` (or None) picks CUDA when present; ``auto`` and ``cuda`` give each process of a
    multi-process run ``cuda:<local_rank>``; ``cuda:N`` is taken as given.

    Raises:
        UserError: not a device name, or CUDA asked for on a machine without it.
    """
    name = "auto" if name is None else str(name)
    try:
        device = torch.device("cuda" if name == "auto" else name)
    except RuntimeError:
        raise UserError(f"--device '{name}': not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        if name == "auto":
            return torch.device("cpu")
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the ``torchrun`` process group when launched by it (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def local_rank_from_env() -> int:
    """``LOCAL_RANK`` set by ``torchrun`` (0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def shutdown() -> None:
    """Leave the process group, when one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def mean_across(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over all processes (the tensor itself in a single process)."""
    if not info.distributed:
        return values
    reduced = values.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / info.world_size
