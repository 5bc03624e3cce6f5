"""Tile pyramid plumbing for the slide viewer: display levels, a byte-bounded LRU cache of
QImages, and a scheduler that reads tiles on a QThreadPool.

The GUI thread never reads pixels: it asks the scheduler for the tiles it would like to paint,
in priority order, and paints whatever the cache holds. Each request carries the slide
generation; results for a slide that has since been closed are dropped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from engine.slides.base import SlideInfo, SlideReader
from engine.slides.damage import tolerant_thumbnail

TILE_SIZE = 256
# largest source/display ratio a tile read may use: bounds one read to (256 * 16)^2 source pixels
MAX_SOURCE_RATIO = 16.0

TileKey = tuple[int, int, int]  # (display level index, tile column, tile row)


@dataclass(frozen=True, slots=True)
class DisplayLevel:
    """One level of the display pyramid.

    Attributes:
        downsample: level-0 pixels per display pixel.
        source_level: slide level the pixels are read from.
        source_downsample: downsample of ``source_level``.
    """

    downsample: float
    source_level: int
    source_downsample: float

    @property
    def ratio(self) -> float:
        """Source pixels per display pixel (1.0 for a real slide level)."""
        return self.downsample / self.source_downsample

    @property
    def loadable(self) -> bool:
        return self.ratio <= MAX_SOURCE_RATIO + 1e-6


def display_levels(info: SlideInfo, tile_size: int = TILE_SIZE) -> list[DisplayLevel]:
    """Real slide levels plus power-of-two virtual levels between and beyond them.

    Virtual levels keep zoomed-out views cheap on slides with few pyramid levels (a plain image
    or a one-level SVS): their tiles are read from the nearest finer real level and reduced.
    """
    w0, h0 = info.dimensions
    wanted = {float(d) for d in info.level_downsamples}
    top = max(1.0, max(w0, h0) / tile_size)
    k = 1.0
    while k <= top * 2:
        if all(abs(k - d) / d > 0.05 for d in info.level_downsamples):
            wanted.add(k)
        k *= 2.0
    levels = []
    for ds in sorted(wanted):
        src = info.best_level_for_downsample(ds)
        levels.append(DisplayLevel(ds, src, float(info.level_downsamples[src])))
    return levels


def level_for_downsample(levels: list[DisplayLevel], view_downsample: float) -> int:
    """Index of the coarsest display level that is still at least as sharp as the view."""
    best = 0
    for i, lv in enumerate(levels):
        if lv.downsample <= view_downsample * 1.01:
            best = i
    return best


def tile_rect_level0(
    level: DisplayLevel, tx: int, ty: int, dims: tuple[int, int], tile_size: int = TILE_SIZE
) -> tuple[float, float, float, float]:
    """Level-0 rectangle ``(x, y, w, h)`` of a tile, clipped to the slide."""
    span = tile_size * level.downsample
    x, y = tx * span, ty * span
    return x, y, max(0.0, min(span, dims[0] - x)), max(0.0, min(span, dims[1] - y))


def read_tile(reader: SlideReader, level: DisplayLevel, tx: int, ty: int, tile_size: int = TILE_SIZE) -> np.ndarray:
    """Pixels of one display tile as ``uint8`` RGB, shape ``(h, w, 3)`` (edge tiles are smaller)."""
    x, y, w, h = tile_rect_level0(level, tx, ty, reader.info.dimensions, tile_size)
    out_w = max(1, math.ceil(w / level.downsample))
    out_h = max(1, math.ceil(h / level.downsample))
    src_w = max(1, math.ceil(w / level.source_downsample))
    src_h = max(1, math.ceil(h / level.source_downsample))
    region = reader.read_region((int(x), int(y)), level.source_level, (src_w, src_h))
    if (src_w, src_h) != (out_w, out_h):
        from PIL import Image

        region = np.asarray(Image.fromarray(region).resize((out_w, out_h), Image.Resampling.BOX))
    return np.ascontiguousarray(region[:, :, :3])


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """Copy a ``(h, w, 3)`` uint8 array into a QImage that owns its memory.

    The image is 32-bit ``Format_RGB32``, the raster engine's native format: painting it is a
    plain copy, whereas a 24-bit image would be converted on every paint. The conversion is one
    Qt call, which runs without the GIL (tile threads then barely compete with the GUI thread).
    """
    rgb = np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    view = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return view.convertToFormat(QImage.Format.Format_RGB32)  # a new image: detached from ``rgb``


class TileCache:
    """LRU cache of tile QImages bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[TileKey, QImage] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: TileKey) -> QImage | None:
        img = self._items.get(key)
        if img is not None:
            self._items.move_to_end(key)
        return img

    def peek(self, key: TileKey) -> QImage | None:
        """Like :meth:`get` without refreshing recency (for painting fallback levels)."""
        return self._items.get(key)

    def put(self, key: TileKey, img: QImage) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.sizeInBytes()
        self._items[key] = img
        self.bytes += img.sizeInBytes()
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.sizeInBytes()

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


class _JobSignals(QObject):
    loaded = Signal(int, object, object)  # generation, key, QImage
    failed = Signal(int, object, str)  # generation, key, message
    thumbnail_loaded = Signal(int, object)  # generation, QImage
    thumbnail_failed = Signal(int, str)


class _TileJob(QRunnable):
    def __init__(self, signals: _JobSignals, reader: SlideReader, level: DisplayLevel, key: TileKey, gen: int) -> None:
        super().__init__()
        self._signals, self._reader, self._level, self._key, self._gen = signals, reader, level, key, gen

    def run(self) -> None:
        try:
            img = rgb_to_qimage(read_tile(self._reader, self._level, self._key[1], self._key[2]))
        except Exception as exc:  # noqa: BLE001 - a damaged region must not take the viewer down
            self._signals.failed.emit(self._gen, self._key, f"{type(exc).__name__}: {exc}")
            return
        self._signals.loaded.emit(self._gen, self._key, img)


class _ThumbnailJob(QRunnable):
    def __init__(self, signals: _JobSignals, reader: SlideReader, max_size: int, gen: int) -> None:
        super().__init__()
        self._signals, self._reader, self._max_size, self._gen = signals, reader, max_size, gen

    def run(self) -> None:
        try:
            # damaged blocks stay white instead of losing the whole overview
            img = rgb_to_qimage(tolerant_thumbnail(self._reader, self._max_size).rgb)
        except Exception as exc:  # noqa: BLE001 - reported to the user by the viewer
            self._signals.thumbnail_failed.emit(self._gen, f"{type(exc).__name__}: {exc}")
            return
        self._signals.thumbnail_loaded.emit(self._gen, img)


class TileScheduler(QObject):
    """Loads tiles for the current slide on a private thread pool, nearest-first.

    Only ``max_threads`` reads are in flight; the queue is replaced on every :meth:`request`, so
    tiles that scrolled out of view before their turn are never read.
    """

    tile_loaded = Signal(object)  # TileKey
    tile_failed = Signal(object, str)
    thumbnail_loaded = Signal(object)  # QImage
    thumbnail_failed = Signal(str)

    def __init__(self, max_threads: int = 2, cache_bytes: int = 256 << 20, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cache = TileCache(cache_bytes)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max(1, max_threads))
        self._max_inflight = max(1, max_threads)
        self._signals = _JobSignals()
        self._signals.loaded.connect(self._on_job_loaded)
        self._signals.failed.connect(self._on_job_failed)
        self._signals.thumbnail_loaded.connect(self._on_thumbnail_loaded)
        self._signals.thumbnail_failed.connect(self._on_thumbnail_failed)
        self._reader: SlideReader | None = None
        self._levels: list[DisplayLevel] = []
        self.generation = 0
        self._queue: list[TileKey] = []
        self._inflight: set[TileKey] = set()
        self._running = 0  # jobs running on the pool, any generation
        self.failed: set[TileKey] = set()
        self.stale_dropped = 0
        self._retired: list[SlideReader] = []

    @property
    def levels(self) -> list[DisplayLevel]:
        return self._levels

    def set_slide(self, reader: SlideReader | None, levels: list[DisplayLevel], thumbnail_size: int = 1024) -> None:
        """Switch to a new slide (or none); everything from the previous slide becomes stale."""
        self.generation += 1
        self._reader = reader
        self._levels = levels
        self._queue = []
        self._inflight = set()
        self.failed = set()
        self.cache.clear()
        if reader is not None:
            self._running += 1
            self._pool.start(_ThumbnailJob(self._signals, reader, thumbnail_size, self.generation), 1)

    def retire(self, reader: SlideReader) -> None:
        """Close ``reader`` once no read that uses it is still running."""
        self._retired.append(reader)
        self._close_retired()

    def _close_retired(self) -> None:
        if self._running == 0:
            while self._retired:
                self._retired.pop().close()

    def request(self, keys: Iterable[TileKey]) -> None:
        """Replace the wish list with ``keys`` (highest priority first) and start reads."""
        self._queue = [k for k in keys if k not in self.cache and k not in self._inflight and k not in self.failed]
        self._pump()

    @property
    def idle(self) -> bool:
        return not self._queue and not self._inflight

    def wait_idle(self, timeout_ms: int = 5000) -> bool:
        """Block until the pool has no running reads (tests and shutdown only)."""
        return self._pool.waitForDone(timeout_ms)

    def _pump(self) -> None:
        reader = self._reader
        while reader is not None and self._queue and self._running < self._max_inflight:
            key = self._queue.pop(0)
            self._inflight.add(key)
            self._running += 1
            self._pool.start(_TileJob(self._signals, reader, self._levels[key[0]], key, self.generation))

    def _on_job_loaded(self, gen: int, key: TileKey, img: QImage) -> None:
        self._running = max(0, self._running - 1)
        if gen != self.generation:
            self.stale_dropped += 1
        else:
            self._inflight.discard(key)
            self.cache.put(key, img)
            self.tile_loaded.emit(key)
        self._pump()
        self._close_retired()

    def _on_job_failed(self, gen: int, key: TileKey, message: str) -> None:
        self._running = max(0, self._running - 1)
        if gen == self.generation:
            self._inflight.discard(key)
            self.failed.add(key)
            self.tile_failed.emit(key, message)
        self._pump()
        self._close_retired()

    def _on_thumbnail_loaded(self, gen: int, img: QImage) -> None:
        self._running = max(0, self._running - 1)
        if gen == self.generation:
            self.thumbnail_loaded.emit(img)
        self._pump()
        self._close_retired()

    def _on_thumbnail_failed(self, gen: int, message: str) -> None:
        self._running = max(0, self._running - 1)
        if gen == self.generation:
            self.thumbnail_failed.emit(message)
        self._pump()
        self._close_retired()

    def shutdown(self) -> None:
        """Drop queued work and wait for running reads (call before closing the reader)."""
        self._queue = []
        self.generation += 1
        if self._pool.waitForDone(10000):
            # no pool thread is left; their queued result signals are stale and only count down
            while self._retired:
                self._retired.pop().close()
