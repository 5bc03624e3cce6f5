"""PyTorch DDP plumbing for runs launched under ``torchrun`` (env ``RANK``/``WORLD_SIZE``).

NCCL on GPUs, gloo on CPU. Outside torchrun everything here degrades to one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, n: int) -> tuple[int, int]:
        """``(offset, count)`` of this rank's contiguous part of ``n`` items (sizes differ by <= 1)."""
        base, extra = divmod(n, self.world_size)
        count = base + (1 if self.rank < extra else 0)
        offset = self.rank * base + min(self.rank, extra)
        return offset, count


def env_dist_info() -> DistInfo:
    """Read torchrun's environment; a single process when it is absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return DistInfo()
    if world <= 1:
        return DistInfo()
    return DistInfo(rank, world, local)


def init_process_group(info: DistInfo, use_cuda: bool) -> None:
    """Join the process group once (idempotent)."""
    import torch.distributed as dist

    if not info.distributed or dist.is_initialized():
        return
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=info.rank, world_size=info.world_size)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def any_flag(info: DistInfo, flag: bool, device: Any) -> bool:
    """True on every rank when ``flag`` is true on any rank (cancel reaches all ranks at once)."""
    if not info.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_scalars(info: DistInfo, values: list[float], device: Any) -> list[float]:
    """Element-wise sum of a few floats over all ranks."""
    if not info.distributed:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_arrays(info: DistInfo, arr: np.ndarray) -> list[np.ndarray]:
    """All ranks' arrays, in rank order (object all-gather; used for validation outputs only)."""
    if not info.distributed:
        return [arr]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, arr)
    return out


def destroy(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
