"""Feeding patches to the training loop.

Two paths, chosen by ``TrainConfig.cache``: small datasets (PCam-sized: 20,000 patches = 0.55 GB)
are decoded once into one uint8 array and every epoch is then pure slicing, so the data pipeline
costs almost nothing next to the network; larger datasets are read per batch by a
``torch.utils.data.DataLoader`` with worker processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DatasetError
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report


def _read_checked(ds: Any, i: int, size: tuple[int, int]) -> np.ndarray:
    img = ds.read(int(i))
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != tuple(size):
        raise DatasetError(
            f"patch {ds.ids[int(i)]} is {img.shape[1]}x{img.shape[0]} px, the dataset's patches are "
            f"{size[1]}x{size[0]}; all patches must have one size"
        )
    return img if img.dtype == np.uint8 else img.astype(np.uint8)


class _Reader:
    """A map-style dataset over a subset of a PatchDataset (picklable for worker processes)."""

    def __init__(self, ds: Any, indices: np.ndarray, size: tuple[int, int]) -> None:
        self.ds = ds
        self.indices = indices
        self.size = size

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, pos: int) -> np.ndarray:
        return _read_checked(self.ds, self.indices[pos], self.size)


def _collate(items: list[np.ndarray]) -> Any:
    import torch

    return torch.from_numpy(np.stack(items))


@dataclass(frozen=True, slots=True)
class CacheSharing:
    """One decoded cache shared by the DDP ranks of one machine (see :func:`engine.train.ddp.cache_sharing`).

    Attributes:
        path: the file every local rank maps (same name on all of them).
        leader: this rank decodes into it (local rank 0); the others only map it.
        barrier: waits for all ranks (a collective with a timeout).
    """

    path: Path
    leader: bool
    barrier: Callable[[], None]


def _shared_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new file-backed uint8 array, its space reserved up front (a RAM disk that runs full
    then fails here with an error, not later with SIGBUS)."""
    nbytes = int(np.prod(shape))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hasattr(os, "posix_fallocate") and nbytes:
            os.posix_fallocate(fd, 0, nbytes)
        else:
            os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)


class PatchSource:
    """Patches ``ds[indices]`` served as uint8 ``(n, H, W, 3)`` torch batches.

    Args:
        ds: a PatchDataset.
        indices: ``(M,)`` dataset indices this source serves; batches are addressed by position
            ``0..M-1`` into it.
        cache: decode everything into memory now.
        num_workers: DataLoader workers for the uncached path.
        pin_memory: pin batches for faster host-to-GPU copies.
        sharing: with ``cache``, share one decoded copy between the DDP ranks of this machine
            (the leader decodes, the others map its file) instead of decoding one per rank.
    """

    def __init__(
        self,
        ds: Any,
        indices: np.ndarray,
        cache: bool,
        num_workers: int = 0,
        pin_memory: bool = False,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        stage: str = "cache",
        sharing: CacheSharing | None = None,
    ) -> None:
        self.ds = ds
        self.indices = np.asarray(indices, dtype=np.int64)
        self.size = tuple(int(s) for s in ds.patch_size)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.images: np.ndarray | None = None
        if cache and sharing is not None:
            self.images = self._decode_shared(sharing, progress, cancel, stage)
        elif cache:
            h, w = self.size
            self.images = self._decode_all(np.empty((self.indices.size, h, w, 3), np.uint8), progress, cancel, stage)

    def __len__(self) -> int:
        return int(self.indices.size)

    def _decode_shared(
        self, sharing: CacheSharing, progress: ProgressCallback | None, cancel: CancelToken | None, stage: str
    ) -> np.ndarray:
        h, w = self.size
        shape = (int(self.indices.size), h, w, 3)
        images: np.ndarray | None = None
        if sharing.leader:
            images = self._decode_all(_shared_array(sharing.path, shape), progress, cancel, stage)
            images.flush()
        sharing.barrier()  # the file is complete
        if images is None:
            images = np.memmap(sharing.path, dtype=np.uint8, mode="r", shape=shape)
        sharing.barrier()  # every rank has mapped it
        if sharing.leader:
            with contextlib.suppress(OSError):  # the mappings keep the data; the name can go now
                sharing.path.unlink()
        return images

    def _decode_all(
        self, out: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None, stage: str
    ) -> np.ndarray:
        from engine.infer.session import available_cores

        h, w = self.size
        chunk = 256
        starts = list(range(0, self.indices.size, chunk))

        read_many = getattr(self.ds, "read_many", None)

        def work(start: int) -> int:
            stop = min(start + chunk, self.indices.size)
            if read_many is not None:
                # block reads: one HDF5 slice instead of 256 (formats without it loop per patch)
                block = read_many(self.indices[start:stop])
                if block.shape[1:] != (h, w, 3):
                    raise DatasetError(f"patches read as {block.shape[1:]}, expected {(h, w, 3)}")
                out[start:stop] = block
            else:
                for j in range(start, stop):
                    out[j] = _read_checked(self.ds, self.indices[j], self.size)
            return stop - start

        done = 0
        # image decoders release the GIL, so threads decode in parallel without pickling
        with ThreadPoolExecutor(max_workers=available_cores()) as pool:
            for n in pool.map(work, starts):
                check_cancel(cancel)
                done += n
                report(progress, ProgressEvent(stage, done, self.indices.size, "decoding patches into memory"))
        return out

    def batches(self, positions: list[np.ndarray]) -> Iterator[Any]:
        """Yield uint8 ``(n, H, W, 3)`` tensors for each array of positions, in order."""
        import torch

        if self.images is not None:
            for pos in positions:
                t = torch.from_numpy(self.images[pos])
                yield t.pin_memory() if self.pin_memory else t
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _Reader(self.ds, self.indices, self.size),
            batch_sampler=[p.tolist() for p in positions],
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )
        yield from loader


def cache_fits(n: int, size: tuple[int, int], limit_gb: float) -> bool:
    """Whether ``n`` decoded patches of ``size`` fit in ``limit_gb`` GiB."""
    return n * size[0] * size[1] * 3 <= limit_gb * 1024**3


def cache_patches_on_machine(n_train: int, n_val: int, train_copies: int) -> int:
    """Patches one machine holds when caching: the training set once per copy (one when the
    ranks share it, one per rank otherwise) plus the validation set (each rank caches its shard)."""
    return n_train * max(1, train_copies) + n_val
