"""The streaming tile pipeline: tile reads overlapped with batched inference.

Generic over the model: it yields raw model outputs per batch, so the heatmap (patch classifiers,
:func:`engine.infer.pipeline.compute_heatmap`) and MIL feature extraction (feature extractors)
share it.

Design, for throughput on few cores:

- A job handles a whole batch (read + resample + preprocess into one float32 array), so Python
  overhead is per batch, not per tile.
- With the default reader, neighbouring tiles of a batch are read as one region and resized
  together (:func:`engine.slides.tiling.read_tiles`): fewer backend calls for the same pixels.
- On the CPU, with a :class:`~engine.infer.session.ModelSession` of ``T > 1`` onnxruntime threads,
  ``T`` workers each take a whole batch from reading to model output on a one-thread copy of the
  session (:meth:`ModelSession.worker_copy`): ``T`` batches at once, one per core, instead of one
  batch split over ``T`` cores while reads compete with it for the same cores. (Above
  :data:`~engine.infer.session.MAX_PARALLEL_BATCHES` cores the copies get several threads each:
  every batch in flight holds its own activations.) Split over threads, every inference waits for its slowest thread, and
  a read job that takes a core from one of them leaves the others idle; one thread per batch has
  no such barrier and costs about 15 % less CPU per tile. onnxruntime's CPU kernels split the
  work of a batch over threads without changing any sum's order, so the outputs are the same
  bits (the tests compare).
- Otherwise (CUDA, a one-thread session, a model object without ``worker_copy``) the reads
  run on ``read_workers`` threads and inference on the calling thread; onnxruntime and the tile
  decoders release the GIL, so they overlap.
- Buffers (uint8 tiles and float32 model input per worker thread; float32 batches handed to the
  calling thread go back to a free list) are reused, not reallocated: a fresh 7 MB array per
  batch costs page faults on every batch.
- At most ``2 x workers`` (one-thread copies) or ``read_workers + 1`` batches are in flight:
  memory is bounded by the batch size, never by the slide size.
- Batches come back in plan order, so results are deterministic.
- ``cancel`` is checked per tile read inside the jobs and per batch here; on cancel (or any
  error, or the consumer closing the generator) queued jobs are dropped and the pool is shut down
  before control returns.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from engine.errors import Cancelled, SlideOpenError
from engine.infer.preprocess import Preprocessor
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report
from engine.slides.damage import UnreadableLog, read_tiles_tolerant
from engine.slides.tiling import TilePlan, read_tiles

if TYPE_CHECKING:
    from engine.infer.session import ModelSession
    from engine.slides.base import SlideReader


class _Plan(Protocol):
    level0_xy: np.ndarray


TileReadFn = Callable[[Any, Any, np.ndarray], np.ndarray]
#: ``fn(tiles uint8 (B, S, S, 3), plan rows (B,)) -> bool (B,)``: which tiles to analyse.
TileScreen = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: what a job hands back: ``(model input or outputs, or None when no tile is left; ok (B,))``,
#: or ``None`` when the pipeline was stopped
_Done = tuple[np.ndarray | None, np.ndarray] | None


class _Stopped(Exception):
    """Raised inside a read job when the pipeline is stopped or cancelled."""


class _BatchJobs:
    """The work of one batch on a worker thread: read, screen, preprocess (and maybe infer)."""

    def __init__(
        self,
        reader: SlideReader,
        plan: _Plan,
        session: Any,
        batch_size: int,
        cancel: CancelToken | None,
        read_tile: TileReadFn | None,
        unreadable: UnreadableLog | None,
        screen: TileScreen | None,
    ) -> None:
        self.reader = reader
        self.plan = plan
        self.xy = np.asarray(plan.level0_xy, dtype=np.int64).reshape(-1, 2)
        self.preprocess = Preprocessor(session.metadata)
        self.batch_size = batch_size
        self.cancel = cancel
        self.read_tile = read_tile
        self.unreadable = unreadable
        self.screen = screen
        self.stop = threading.Event()
        # uint8 tiles (and float32 input of a batch inferred on the same thread) are private to
        # a worker thread; float32 batches handed to the consumer go back to the free list once
        # inference has used them
        self._local = threading.local()
        self._free: list[np.ndarray] = []
        self._free_lock = threading.Lock()
        self._new_buffer = getattr(session, "input_buffer", None)  # sessions that quack (MIL extractors) have none

    def stopped(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.cancelled)

    def check(self) -> None:
        if self.stopped():
            raise _Stopped

    def _tile_buffer(self, n: int, shape: tuple[int, ...]) -> np.ndarray:
        buf = getattr(self._local, "tiles", None)
        if buf is None or buf.shape[1:] != shape or buf.shape[0] < n:
            buf = self._local.tiles = np.empty((max(n, self.batch_size), *shape), dtype=np.uint8)
        return buf[:n]

    def _read(self, idx: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        ok = np.ones(len(idx), dtype=bool)
        if self.read_tile is None:
            tp = cast(TilePlan, self.plan)
            s = tp.config.tile_size_px
            buf = self._tile_buffer(len(idx), (s, s, 3))
            if self.unreadable is None:
                return read_tiles(self.reader, tp, self.xy[idx], out=buf, check=self.check), ok
            return read_tiles_tolerant(self.reader, tp, self.xy[idx], idx, self.unreadable, out=buf, check=self.check)
        tiles = None
        for j, i in enumerate(idx):
            self.check()
            try:
                tile = self.read_tile(self.reader, self.plan, self.xy[i])
            except SlideOpenError as exc:
                if self.unreadable is None:
                    raise
                self.unreadable.add(int(i), int(self.xy[i, 0]), int(self.xy[i, 1]), exc)
                ok[j] = False
                continue
            if tiles is None:
                tiles = self._tile_buffer(len(idx), tile.shape)
            tiles[j] = tile
        if tiles is not None and not ok.all():
            tiles[~ok] = 255
        return tiles, ok

    def _prepared(self, idx: np.ndarray, shared: bool) -> _Done:
        """Model input of the batch; ``shared``: in a buffer the consumer hands back (else this thread's)."""
        try:
            tiles, ok = self._read(idx)
        except _Stopped:
            return None
        if tiles is None:  # every tile of the batch unreadable
            return None, ok
        if self.screen is not None and ok.any():
            sel = np.flatnonzero(ok)
            ok[sel] = np.asarray(self.screen(tiles[sel], idx[sel]), dtype=bool)
        if not ok.any():
            return None, ok
        buf = None
        if len(idx) == self.batch_size:  # reused buffers all come from full batches of this model
            if shared:
                with self._free_lock:
                    buf = self._free.pop() if self._free else None
                if buf is None and self._new_buffer is not None:  # pinned host memory on CUDA; None on the CPU
                    buf = self._new_buffer(self.batch_size)
            else:
                buf = getattr(self._local, "batch", None)
        batch = self.preprocess(tiles, out=buf)
        if not shared and len(idx) == self.batch_size:
            self._local.batch = batch
        return batch, ok

    def load(self, idx: np.ndarray) -> _Done:
        """Read and preprocess a batch for inference on the consumer's thread."""
        return self._prepared(idx, shared=True)

    def recycle(self, batch: np.ndarray) -> None:
        """Hand a full batch's buffer back once inference has used it."""
        if batch.shape[0] == self.batch_size:
            with self._free_lock:
                self._free.append(batch)

    def infer(self, idx: np.ndarray, session: ModelSession) -> _Done:
        """Read, preprocess and run a batch on this thread: ``(outputs or None, ok)``."""
        done = self._prepared(idx, shared=False)
        if done is None or done[0] is None:
            return done
        if self.stopped():
            return None
        return session.run(done[0]), done[1]


def iter_tile_outputs(
    reader: SlideReader,
    plan: _Plan,
    session: ModelSession,
    batch_size: int = 64,
    read_workers: int = 2,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    indices: np.ndarray | None = None,
    stage: str = "inference",
    read_tile: TileReadFn | None = None,
    unreadable: UnreadableLog | None = None,
    screen: TileScreen | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Run ``session`` over the tiles of ``plan``, batch by batch.

    Args:
        reader: open slide (``read_region`` must be thread-safe, as the interface requires).
        plan: a :class:`engine.slides.tiling.TilePlan` (anything with ``level0_xy`` ``(N, 2)``).
        session: loaded model; its metadata drives preprocessing.
        batch_size: tiles per inference call.
        read_workers: threads reading and preprocessing tiles (>= 1); not used when batches run
            on copies of the session (see the module docstring): then one worker per copy's
            share of the session's ``intra_op_threads`` reads and infers whole batches.
        progress: receives ``ProgressEvent(stage, tiles_done, tiles_total)`` after each batch.
        cancel: checked per tile (read jobs) and per batch.
        indices: subset of plan rows to process, in this order (default: all).
        stage: stage name in progress events.
        read_tile: ``fn(reader, plan, level0_xy) -> uint8 (S, S, 3)``; default
            :func:`engine.slides.tiling.read_tiles` on the whole batch (neighbours read together).
        unreadable: when given, a tile that cannot be decoded is recorded there and left out
            (the log raises once too many are unreadable); without it such a tile is fatal.
        screen: ``fn(tiles, rows) -> keep`` called on every batch of tiles as read (e.g. the
            blur check of :mod:`engine.slides.qc`); tiles it drops are left out.

    Yields:
        ``(idx, outputs)``: ``idx`` int64 ``(B,)`` rows of the plan, ``outputs`` the raw model
        output ``(B, C)`` for those tiles (unreadable or screened-out tiles are not in ``idx``,
        so ``B`` may be smaller than the batch; a batch with no tile left is not yielded).

    Raises:
        Cancelled: ``cancel`` was set (the pool is already shut down when this propagates).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if read_workers < 1:
        raise ValueError("read_workers must be >= 1")
    jobs = _BatchJobs(reader, plan, session, batch_size, cancel, read_tile, unreadable, screen)
    order = np.arange(len(jobs.xy), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    make_copy = getattr(session, "worker_copy", None)
    copy = make_copy() if callable(make_copy) else None
    if copy is not None:
        workers = max(1, int(session.intra_op_threads) // int(copy.intra_op_threads))

        def job(idx: np.ndarray) -> _Done:
            return jobs.infer(idx, copy)

        def finish(done: tuple[np.ndarray | None, np.ndarray]) -> np.ndarray | None:
            return done[0]  # already the outputs

        depth = 2 * workers
    else:
        workers, job, depth = read_workers, jobs.load, read_workers + 1

        def finish(done: tuple[np.ndarray | None, np.ndarray]) -> np.ndarray | None:
            batch = done[0]
            if batch is None:
                return None
            outputs = session.run(batch)
            jobs.recycle(batch)
            return outputs

    yield from _drive(jobs, order, job, finish, workers, depth, progress, stage)


def _drive(
    jobs: _BatchJobs,
    order: np.ndarray,
    job: Callable[[np.ndarray], _Done],
    finish: Callable[[tuple[np.ndarray | None, np.ndarray]], np.ndarray | None],
    workers: int,
    depth: int,
    progress: ProgressCallback | None,
    stage: str,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Submit ``job`` per batch on ``workers`` threads (``depth`` in flight), ``finish`` them in
    plan order on this thread, report progress and yield the outputs."""
    cancel, batch_size = jobs.cancel, jobs.batch_size
    total = int(order.size)
    starts = iter(range(0, total, batch_size))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metascope-tiles")
    pending: deque[tuple[np.ndarray, Future[_Done]]] = deque()

    def submit_next() -> None:
        start = next(starts, None)
        if start is not None:
            idx = order[start : start + batch_size]
            pending.append((idx, pool.submit(job, idx)))

    done = 0
    t0 = time.perf_counter()
    try:
        for _ in range(depth):
            submit_next()
        report(progress, ProgressEvent(stage, 0, total, "reading tiles"))
        while pending:
            check_cancel(cancel)
            idx, fut = pending.popleft()
            loaded = fut.result()
            check_cancel(cancel)
            if loaded is None:  # only when stopped; keep the contract explicit
                raise Cancelled("cancelled by user")
            submit_next()
            outputs = finish(loaded)
            ok = loaded[1]
            done += len(idx)
            elapsed = time.perf_counter() - t0
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate else None
            extra = MappingProxyType({"tiles_per_s": rate, "eta_s": eta})
            report(progress, ProgressEvent(stage, done, total, f"{rate:.0f} tiles/s", extra))
            if outputs is None:
                continue  # nothing of this batch could be analysed
            if ok.all():
                yield idx, outputs
            else:
                yield idx[ok], outputs[ok]
    finally:
        jobs.stop.set()
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
