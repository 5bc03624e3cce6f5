"""DDP without torchrun: collective timeout, one decoded training cache per machine."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.train import ddp
from engine.train.loader import CacheSharing, PatchSource, cache_fits, cache_patches_on_machine


class _Counting:
    """A tiny PatchDataset stand-in that counts how many patches were decoded."""

    def __init__(self, n: int = 40, size: int = 8) -> None:
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        self.patch_size = (size, size)
        self.ids = [str(i) for i in range(n)]
        self.reads = 0
        self.lock = threading.Lock()

    def read(self, i: int) -> np.ndarray:
        with self.lock:
            self.reads += 1
        return self.data[i]


def test_timeout_comes_from_the_environment_and_reaches_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.delenv(ddp.TIMEOUT_ENV, raising=False)
    assert ddp.timeout_s() == ddp.DEFAULT_TIMEOUT_S == 600
    monkeypatch.setenv(ddp.TIMEOUT_ENV, "90")
    assert ddp.timeout_s() == 90
    seen: dict = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    ddp.init_process_group(ddp.DistInfo(rank=1, world_size=2, local_rank=1), use_cuda=False)
    assert seen["timeout"] == datetime.timedelta(seconds=90) and seen["backend"] == "gloo" and seen["rank"] == 1
    for bad in ("0", "-5", "soon", "inf"):
        monkeypatch.setenv(ddp.TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=ddp.TIMEOUT_ENV):
            ddp.timeout_s()


def test_ranks_of_one_machine_share_one_decoded_cache(tmp_path: Path) -> None:
    ds = _Counting()
    idx = np.arange(3, 37)
    wait = threading.Barrier(2, timeout=60)
    path = tmp_path / "cache.u8"
    out: dict[int, PatchSource] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            out[r] = PatchSource(ds, idx, cache=True, sharing=CacheSharing(path, r == 0, wait.wait))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            wait.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert ds.reads == idx.size  # decoded once for both ranks, not once per rank
    assert not path.exists()  # the name is gone once every rank mapped it
    for r in (0, 1):
        assert np.array_equal(np.asarray(out[r].images), ds.data[idx])
        batch = next(out[r].batches([np.array([0, 5])]))
        assert np.array_equal(batch.numpy(), ds.data[idx[[0, 5]]])


def test_memory_check_counts_every_copy_a_machine_holds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    size = (96, 96)
    n_train, n_val = 20_000, 2_000  # 0.6 GB once
    assert cache_fits(cache_patches_on_machine(n_train, n_val, 1), size, 1.0)
    assert not cache_fits(cache_patches_on_machine(n_train, n_val, 4), size, 1.0)  # 4 ranks, 4 copies

    info = ddp.DistInfo(rank=0, world_size=8, local_rank=0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert ddp.local_world_size(info) == 4
    monkeypatch.setattr(ddp, "max_int", lambda _info, value, _device: value)
    monkeypatch.setattr(ddp, "shared_dirs", lambda: [tmp_path])
    sharing, copies = ddp.cache_sharing(info, tmp_path / "run", 1 << 20, "cpu")
    assert copies == 1 and sharing.leader and sharing.path.parent == tmp_path
    # no folder with room: each of the 4 local ranks decodes its own copy, and the check says so
    sharing, copies = ddp.cache_sharing(info, tmp_path / "run", 1 << 60, "cpu")
    assert sharing is None and copies == 4
    assert ddp.cache_sharing(ddp.DistInfo(), tmp_path, 1 << 20, "cpu") == (None, 1)
