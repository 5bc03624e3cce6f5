"""PyTorch DDP plumbing for runs launched under ``torchrun`` (env ``RANK``/``WORLD_SIZE``).

NCCL on GPUs, gloo on CPU. Outside torchrun everything here degrades to one process.

Collectives time out (default 10 minutes, env ``METASCOPE_DDP_TIMEOUT_S``): when one rank dies
the others fail with an error instead of waiting forever. The ranks on one machine share one
decoded training cache (:func:`cache_sharing`) instead of holding a copy each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError

#: seconds a collective (barrier, all-reduce, joining the group) may wait for the other ranks
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "METASCOPE_DDP_TIMEOUT_S"


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


def timeout_s() -> float:
    """The collective timeout: ``METASCOPE_DDP_TIMEOUT_S`` seconds, default :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def init_process_group(info: DistInfo, use_cuda: bool, timeout: float | None = None) -> None:
    """Join the process group once (idempotent).

    Args:
        timeout: seconds any collective waits for the other ranks before failing (default
            :func:`timeout_s`); without one a rank that died would hang the others forever.
    """
    import datetime

    import torch.distributed as dist

    if not info.distributed or dist.is_initialized():
        return
    wait = datetime.timedelta(seconds=timeout if timeout is not None else timeout_s())
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo", rank=info.rank, world_size=info.world_size, timeout=wait
    )


def local_world_size(info: DistInfo) -> int:
    """Ranks on this machine (torchrun's ``LOCAL_WORLD_SIZE``; the whole job when unset)."""
    try:
        n = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    except ValueError:
        n = 0
    return n if 0 < n <= info.world_size else info.world_size


def max_int(info: DistInfo, value: int, device: Any) -> int:
    """The largest ``value`` over all ranks (every rank gets it)."""
    if not info.distributed:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


#: where ranks of one machine can share a cache file: RAM-backed first, then the temp folder
def shared_dirs() -> list[Path]:
    dirs = [Path("/dev/shm")] if Path("/dev/shm").is_dir() else []
    return [*dirs, Path(tempfile.gettempdir())]


def shared_dir_choice(nbytes: int, dirs: list[Path] | None = None) -> int:
    """Index into :func:`shared_dirs` of the first folder with room for ``nbytes`` (plus 10 %
    and 256 MB to spare), or ``len(dirs)`` when none has: then every rank keeps its own copy."""
    dirs = shared_dirs() if dirs is None else dirs
    for i, d in enumerate(dirs):
        try:
            if shutil.disk_usage(d).free >= nbytes * 1.1 + (256 << 20) and os.access(d, os.W_OK):
                return i
        except OSError:
            continue
    return len(dirs)


def cache_sharing(info: DistInfo, run_dir: Path, nbytes: int, device: Any) -> tuple[Any, int]:
    """How this rank gets the decoded training cache of ``nbytes``.

    All ranks agree (a collective) on one shared folder with room: local rank 0 decodes into a
    file there and the other ranks of the machine map the same pages, so the machine holds one
    copy. Without room anywhere each rank decodes its own copy.

    Returns:
        ``(CacheSharing or None, copies of the cache this machine holds)``; ``(None, 1)`` for a
        single process.
    """
    from engine.train.loader import CacheSharing

    if not info.distributed:
        return None, 1
    dirs = shared_dirs()
    choice = max_int(info, shared_dir_choice(nbytes, dirs), device)  # the worst choice of any rank
    if choice >= len(dirs):
        return None, local_world_size(info)
    job = "|".join(
        [str(Path(run_dir).resolve()), os.environ.get("TORCHELASTIC_RUN_ID", ""), os.environ.get("MASTER_PORT", "")]
    )
    name = f"metascope-cache-{hashlib.sha1(job.encode()).hexdigest()[:16]}.u8"
    return CacheSharing(dirs[choice] / name, info.local_rank == 0, lambda: barrier(info)), 1


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


def destroy(info: DistInfo, synchronize: bool = False) -> None:
    """Leave the process group.

    Args:
        synchronize: wait for every rank first (a finished run), so no rank closes its
            connections while another is still writing its last files or inside a collective;
            gloo could abort a rank that tore down alone. Not after an error: the other ranks
            may never arrive.
    """
    if info.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            if synchronize:
                dist.barrier()
            dist.destroy_process_group()
