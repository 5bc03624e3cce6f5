"""Damaged slide data: tiles that cannot be decoded are recorded and left out, not fatal.

Real scanner files sometimes hold a few corrupt JPEG tiles. A tile read that fails with
:class:`~engine.errors.SlideOpenError` is recorded in an :class:`UnreadableLog` (position and
error), filled with a white placeholder and left out of the analysis; the slide goes on until
more than ``max_fraction`` of its tiles are unreadable, then it fails with one clear line.

Used by the heatmap pipeline, MIL feature extraction and annotated-slide datasets, and by
:func:`tolerant_thumbnail` for the thumbnails that tissue detection, QC and overlays are made on.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConfigError, SlideOpenError

if TYPE_CHECKING:
    from engine.slides.base import SlideReader
    from engine.slides.tiling import TilePlan

#: Default share of a slide's tiles that may be unreadable before the slide fails.
DEFAULT_MAX_UNREADABLE = 0.05
#: Unreadable tiles listed in ``heatmap.json`` (the count is always exact).
LISTED_MAX = 1000
#: Side in pixels of the blocks a damaged thumbnail level is re-read in.
THUMB_BLOCK_PX = 128
#: RGB of a placeholder for a tile that cannot be decoded (the viewer and the overlay).
PLACEHOLDER_RGB = (255, 0, 255)


def validate_max_unreadable(value: Any) -> float:
    """A share of unreadable tiles in 0-1.

    Raises:
        ConfigError: not a number within 0-1.
    """
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"max unreadable fraction must be a number within 0-1, got {value!r}") from exc
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ConfigError(f"max unreadable fraction must be within 0-1 (e.g. 0.05 for 5%), got {value!r}")
    return v


@dataclass(frozen=True, slots=True)
class UnreadableTile:
    """One tile that could not be decoded: plan row, level-0 corner, the decoder's message."""

    index: int
    x: int
    y: int
    error: str
    row: int = -1
    col: int = -1

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "x": self.x, "y": self.y, "error": self.error}
        if self.row >= 0:
            d["row"], d["col"] = self.row, self.col
        return d


class UnreadableLog:
    """Thread-safe record of the unreadable tiles of one slide.

    Args:
        total: tiles to be read (the denominator of the allowed share).
        max_fraction: the slide fails (:meth:`add` raises) once more than this share is unreadable.
        name: the slide's name, for the message.
    """

    def __init__(self, total: int, max_fraction: float = DEFAULT_MAX_UNREADABLE, name: str = "slide") -> None:
        self.total = int(total)
        self.max_fraction = validate_max_unreadable(max_fraction)
        self.name = name
        self._tiles: list[UnreadableTile] = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._tiles)

    @property
    def tiles(self) -> list[UnreadableTile]:
        """The unreadable tiles in plan order."""
        with self._lock:
            return sorted(self._tiles, key=lambda t: (t.y, t.x))

    @property
    def indices(self) -> np.ndarray:
        """Plan rows of the unreadable planned tiles."""
        return np.array([t.index for t in self.tiles if t.index >= 0], dtype=np.int64)

    def add(self, index: int, x: int, y: int, exc: BaseException) -> None:
        """Record a tile; raise when the slide now has too many unreadable tiles.

        Raises:
            SlideOpenError: more than ``max_fraction`` of the tiles are unreadable.
        """
        msg = " ".join(str(exc).split()) or type(exc).__name__
        # the reader's message starts with the path; the tile's position says more here
        if ": " in msg and self.name in msg.split(": ", 1)[0]:
            msg = msg.split(": ", 1)[1]
        with self._lock:
            self._tiles.append(UnreadableTile(int(index), int(x), int(y), msg))
            n = len(self._tiles)
        self.check(n)

    def add_cell(self, x: int, y: int, row: int, col: int, error: str) -> None:
        """Record a grid cell that could not be judged (index -1): it counts towards the total too.

        Raises:
            SlideOpenError: more than ``max_fraction`` of the tiles are unreadable.
        """
        with self._lock:
            self.total += 1
            self._tiles.append(UnreadableTile(-1, int(x), int(y), error, int(row), int(col)))
            n = len(self._tiles)
        self.check(n)

    def check(self, n: int | None = None) -> None:
        """Raise when more than ``max_fraction`` of the tiles are unreadable.

        Raises:
            SlideOpenError: with the count, the share, the limit and the first error.
        """
        n = self.count if n is None else n
        if n == 0 or self.total <= 0 or n <= self.max_fraction * self.total:
            return
        first = min(self._tiles, key=lambda t: (t.y, t.x))
        raise SlideOpenError(
            f"{self.name}: {n} of {self.total} tiles ({n / self.total:.0%}) cannot be decoded (reading stopped "
            f"there), more than the {self.max_fraction:.0%} allowed (--max-unreadable); first at x={first.x}, "
            f"y={first.y}: {first.error}"
        )

    def to_dict(self, limit: int = LISTED_MAX) -> dict[str, Any]:
        """JSON-ready: ``count``, ``fraction``, ``max_fraction``, ``tiles`` (at most ``limit``)."""
        tiles = self.tiles
        return {
            "count": len(tiles),
            "fraction": round(len(tiles) / self.total, 6) if self.total else 0.0,
            "max_fraction": self.max_fraction,
            "tiles": [t.to_dict() for t in tiles[:limit]],
            "listed": min(len(tiles), limit),
        }


def read_tiles_tolerant(
    reader: SlideReader,
    plan: TilePlan,
    level0_xy: np.ndarray,
    rows: np.ndarray,
    log: UnreadableLog,
    out: np.ndarray | None = None,
    check: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`engine.slides.tiling.read_tiles`, with undecodable tiles recorded instead of fatal.

    The batch is read as usual; only when that fails is it re-read tile by tile, so a healthy
    slide pays nothing. A tile that fails alone is filled white and recorded in ``log``.

    Args:
        reader, plan, level0_xy, out, check: as for ``read_tiles``.
        rows: int ``(N,)`` plan rows of the tiles (recorded in the log).
        log: where unreadable tiles go (it raises once too many are unreadable).

    Returns:
        ``(tiles, ok)``: ``uint8`` ``(N, S, S, 3)`` and bool ``(N,)`` False for unreadable tiles.

    Raises:
        SlideOpenError: too many unreadable tiles (from ``log``).
    """
    from engine.slides.tiling import read_tile, read_tiles

    xy = np.asarray(level0_xy, dtype=np.int64).reshape(-1, 2)
    n = xy.shape[0]
    ok = np.ones(n, dtype=bool)
    try:
        tiles = read_tiles(reader, plan, xy, out=out, check=check)
        return tiles, ok
    except SlideOpenError:
        pass  # some tile of the batch is damaged: read them one by one below and record which
    size = plan.config.tile_size_px
    tiles = out if out is not None else np.empty((n, size, size, 3), dtype=np.uint8)
    for j in range(n):
        if check is not None:
            check()
        try:
            tiles[j] = read_tile(reader, plan, xy[j])
        except SlideOpenError as exc:
            tiles[j] = 255
            ok[j] = False
            log.add(int(rows[j]), int(xy[j, 0]), int(xy[j, 1]), exc)
    return tiles, ok


def read_tile_or_none(reader: SlideReader, plan: TilePlan, level0_xy: np.ndarray) -> tuple[np.ndarray | None, str]:
    """One tile, or ``(None, error message)`` when it cannot be decoded."""
    from engine.slides.tiling import read_tile

    try:
        return read_tile(reader, plan, level0_xy), ""
    except SlideOpenError as exc:
        return None, " ".join(str(exc).split())


@dataclass(frozen=True, slots=True, eq=False)
class Thumbnail:
    """A thumbnail read around damaged data.

    Attributes:
        rgb: ``uint8`` ``(H, W, 3)``; unreadable blocks are white (glass: never tissue).
        damaged: bool ``(H, W)`` True where the data could not be decoded, or ``None``.
        level: pyramid level it was read from.
    """

    rgb: np.ndarray
    damaged: np.ndarray | None
    level: int

    @property
    def damaged_fraction(self) -> float:
        return 0.0 if self.damaged is None else float(self.damaged.mean())


def tolerant_thumbnail(reader: SlideReader, max_size: int) -> Thumbnail:
    """``reader.thumbnail(max_size)``, read block by block when the level holds damaged tiles.

    A level whose every block fails (a whole damaged level) is replaced by the next finer one
    that can be read (bounded: levels above ``WHOLE_LEVEL_MAX_PIXELS`` are not tried).

    Raises:
        SlideOpenError: no level can be read at all.
    """
    try:
        return Thumbnail(reader.thumbnail(max_size), None, -1)
    except SlideOpenError as exc:
        first_error = exc
    from engine.slides.resample import WHOLE_LEVEL_MAX_PIXELS, thumbnail_size

    info = reader.info
    (tw, th), scale = thumbnail_size(info.dimensions, max_size)
    start = info.best_level_for_downsample(scale)
    for level in range(start, -1, -1):
        lw, lh = info.level_dimensions[level]
        if lw * lh > WHOLE_LEVEL_MAX_PIXELS and level != start:
            break
        result = _blockwise_level(reader, level, (tw, th))
        if result is not None:
            return result
    raise SlideOpenError(" ".join(str(first_error).split())) from first_error


def _blockwise_level(reader: SlideReader, level: int, out_size: tuple[int, int]) -> Thumbnail | None:
    """Level ``level`` read in blocks, resized to ``out_size``; ``None`` when no block decodes."""
    from PIL import Image

    info = reader.info
    lw, lh = info.level_dimensions[level]
    ds = info.level_downsamples[level]
    tw, th = out_size
    # a huge level is read at reduced resolution per block so memory stays at one block + result
    fx, fy = tw / lw, th / lh
    out = np.full((th, tw, 3), 255, dtype=np.uint8)
    damaged = np.zeros((th, tw), dtype=bool)
    any_ok = False
    b = THUMB_BLOCK_PX
    for by in range(0, lh, b):
        for bx in range(0, lw, b):
            bw, bh = min(b, lw - bx), min(b, lh - by)
            ox0, oy0 = int(math.floor(bx * fx)), int(math.floor(by * fy))
            ox1 = max(ox0 + 1, min(tw, int(math.ceil((bx + bw) * fx))))
            oy1 = max(oy0 + 1, min(th, int(math.ceil((by + bh) * fy))))
            try:
                block = reader.read_region((int(round(bx * ds)), int(round(by * ds))), level, (bw, bh))
            except SlideOpenError:
                damaged[oy0:oy1, ox0:ox1] = True
                continue
            any_ok = True
            out[oy0:oy1, ox0:ox1] = np.asarray(Image.fromarray(block).resize((ox1 - ox0, oy1 - oy0), Image.BOX))
    if not any_ok:
        return None
    return Thumbnail(out, damaged, level)


#: A grid cell counts as unreadable when at least this share of it lies in damaged thumbnail data.
DAMAGED_CELL_FRACTION = 0.25


def record_damaged_cells(plan: TilePlan, log: UnreadableLog) -> int:
    """Record the grid cells the tissue thumbnail could not show (damaged data), not planned.

    Tissue detection sees damaged thumbnail blocks as white, so tissue there is never planned;
    those cells are unreadable, not background. Returns how many were recorded.

    Raises:
        SlideOpenError: too many unreadable tiles (from ``log``).
    """
    tissue = plan.tissue
    damaged = getattr(tissue, "damaged", None) if tissue is not None else None
    if damaged is None or not damaged.any():
        return 0
    from engine.slides.tissue import TissueMask

    dm = TissueMask(damaged, tissue.downsample, float(damaged.mean()), "damaged")
    rows, cols = plan.grid_shape
    rr, cc = np.meshgrid(np.arange(rows, dtype=np.int64), np.arange(cols, dtype=np.int64), indexing="ij")
    x = plan.origin_level0[0] + cc.ravel() * plan.stride_level0
    y = plan.origin_level0[1] + rr.ravel() * plan.stride_level0
    t0 = plan.tile_size_level0
    frac = dm.fraction_in_rects(x, y, x + t0, y + t0)
    planned = np.zeros((rows, cols), dtype=bool)
    planned[plan.grid_rc[:, 0], plan.grid_rc[:, 1]] = True
    hit = np.flatnonzero((frac >= DAMAGED_CELL_FRACTION) & ~planned.ravel())
    for i in hit.tolist():
        log.add_cell(
            int(x[i]), int(y[i]), int(rr.ravel()[i]), int(cc.ravel()[i]), "the slide data here cannot be decoded"
        )
    return int(hit.size)


#: Tiles decoded per batch by :func:`find_unreadable`.
VERIFY_BATCH = 64


def find_unreadable(
    reader: SlideReader,
    plan: TilePlan,
    level0_xy: np.ndarray,
    log: UnreadableLog,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """Decode tiles ``level0_xy`` of ``plan`` once; bool ``(N,)``: True where the tile decodes.

    Used where tiles are read much later (a training dataset) so that undecodable ones are left
    out up front instead of failing an epoch. Neighbours are read together (as the heatmap does).

    Raises:
        SlideOpenError: too many unreadable tiles (from ``log``).
    """
    xy = np.asarray(level0_xy, dtype=np.int64).reshape(-1, 2)
    ok = np.ones(len(xy), dtype=bool)
    size = plan.config.tile_size_px
    buf = np.empty((VERIFY_BATCH, size, size, 3), dtype=np.uint8)
    for s in range(0, len(xy), VERIFY_BATCH):
        rows = np.arange(s, min(s + VERIFY_BATCH, len(xy)))
        _tiles, good = read_tiles_tolerant(reader, plan, xy[rows], rows, log, out=buf[: len(rows)], check=check)
        ok[rows] = good
    return ok
