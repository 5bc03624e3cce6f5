"""Faster exact reads: OpenSlide's view of a TIFF slide, pixels decoded by tifffile + imagecodecs.

OpenSlide decodes JPEG tiles through its own libjpeg with a per-call PIL/RGBA round trip; tifffile
with imagecodecs (libjpeg-turbo, OpenJPEG, zlib, LZW) decodes the same stored tiles in well under
half the time. Decoders may disagree, though (colour conversion of JPEG 2000, chroma upsampling),
so the faster path is taken only where it is proven identical, per file:

- the slide stays an OpenSlide slide: levels, downsamples, resolution, properties, associated
  images and everything not listed below come from OpenSlide;
- each OpenSlide level is matched to the tiled TIFF page of the same size; a level is read with
  tifffile only when its layout is one tifffile decodes to RGB bytes (3 samples of 8 bits, RGB or
  JPEG-YCbCr; no compression, JPEG, Aperio JPEG 2000, deflate, LZW) **and** a few regions read by
  both backends at open time are identical (a whole stored tile, a region across four stored
  tiles, the partial bottom-right corner tile);
- OpenSlide places a region at ``level0_xy / downsample`` with sub-pixel interpolation when that
  is not a whole pixel of the level, so only reads at whole level pixels take the tifffile path
  (always true on level 0, where heatmaps read); others, levels that differ or do not match,
  resized reads that reach past the slide's edge (OpenSlide resizes those with their transparent
  pixels) and a tile tifffile cannot decode (damaged data) are read by OpenSlide as before.

Neighbouring model tiles share stored tiles: the tifffile reader keeps decoded stored tiles in an
LRU cache and decodes each one once even when two read threads ask for it together.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from engine.errors import SlideOpenError
from engine.slides.base import SlideReader, checked_region_size
from engine.slides.resample import striped_thumbnail

log = logging.getLogger(__name__)

# OpenSlide vendors whose levels are plain tiled TIFF pages (NDPI, Philips, Ventana and Leica
# files are TIFF too but keep their own tile layouts: left to OpenSlide).
FAST_VENDORS = ("aperio", "generic-tiff")
# TIFF compressions read with tifffile: none, LZW, JPEG, Adobe deflate, deflate, Aperio JPEG 2000
# (YCbCr and RGB).
FAST_COMPRESSIONS = frozenset({1, 5, 7, 8, 32946, 33003, 33005})
# Environment variable: "0" turns the faster path off (every read through OpenSlide).
ENV_SWITCH = "METASCOPE_FAST_DECODE"
# Whole-level-pixel candidates tried when looking for check regions on a level whose downsample
# is not a whole number.
_ALIGN_TRIES = 256


def fast_decode_enabled() -> bool:
    """Whether :func:`engine.slides.open.open_slide` may use the faster reader (``METASCOPE_FAST_DECODE``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def reader_backend(reader: SlideReader) -> str:
    """A short name of the backend that decodes ``reader``'s pixels (for heatmap.json and logs)."""
    describe = getattr(reader, "backend_description", None)
    if callable(describe):
        return str(describe())
    name = type(reader).__name__
    return {
        "OpenSlideReader": "openslide",
        "TiffFileReader": "tifffile",
        "ImageReader": "image",
        "ArrayReader": "array",
    }.get(name, name)


class FastTiffReader(SlideReader):
    """An OpenSlide slide whose verified levels are decoded by tifffile + imagecodecs.

    Build with :func:`open_fast`. Safe for concurrent ``read_region`` calls (both backends are).

    Args:
        slow: the open OpenSlide reader (owned: closed with this reader).
        fast: a tifffile reader whose level ``i`` is OpenSlide's level ``i`` (owned).
        exact: per level, whether tifffile's pixels were proven identical to OpenSlide's.
    """

    def __init__(self, slow: SlideReader, fast: Any, exact: tuple[bool, ...]) -> None:
        self._slow = slow
        self._fast = fast
        self._exact = exact
        self.info = slow.info

    @property
    def exact_levels(self) -> tuple[int, ...]:
        """Levels read with tifffile."""
        return tuple(i for i, ok in enumerate(self._exact) if ok)

    def backend_description(self) -> str:
        levels = ", ".join(str(i) for i in self.exact_levels)
        return f"tifffile+imagecodecs (level {levels}, verified identical to OpenSlide; other reads: openslide)"

    def _level_xy(self, level0_xy: tuple[int, int], level: int) -> tuple[int, int] | None:
        """Level pixel ``(x, y)`` when the fast path applies to this read, else ``None``."""
        if not self._exact[level]:
            return None
        ds = self.info.level_downsamples[level]
        # the same double division OpenSlide does: a whole result means no sub-pixel shift
        fx, fy = float(level0_xy[0]) / ds, float(level0_xy[1]) / ds
        if fx.is_integer() and fy.is_integer():
            return int(fx), int(fy)
        return None

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """See :meth:`SlideReader.read_region`; identical to OpenSlide's pixels.

        Raises:
            SlideOpenError: the slide data cannot be decoded (by either backend).
            ValueError: ``level`` does not exist or ``size`` is not positive.
        """
        w, h = checked_region_size(self.info, level, size)
        xy = self._level_xy(level0_xy, level)
        if xy is not None:
            try:
                return self._fast.read_level_region(level, xy, (w, h))
            except SlideOpenError:
                pass  # a damaged tile: OpenSlide decides (it may decode it, or reports it its way)
        return self._slow.read_region(level0_xy, level, (w, h))

    def read_region_resized(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int], out_size: tuple[int, int]
    ) -> np.ndarray:
        """See :meth:`SlideReader.read_region_resized` (the same PIL resize OpenSlide's path uses)."""
        w, h = checked_region_size(self.info, level, size)
        xy = self._level_xy(level0_xy, level)
        lw, lh = self.info.level_dimensions[level]
        if xy is None or not (0 <= xy[0] <= lw - w and 0 <= xy[1] <= lh - h):
            # past the slide's edge OpenSlide resizes transparent pixels (premultiplied alpha)
            # before compositing on white: its own path keeps those pixels identical
            return self._slow.read_region_resized(level0_xy, level, (w, h), out_size)
        try:
            region = self._fast.read_level_region(level, xy, (w, h))
        except SlideOpenError:
            return self._slow.read_region_resized(level0_xy, level, (w, h), out_size)
        out = (int(out_size[0]), int(out_size[1]))
        if (w, h) == out:
            return region
        from PIL import Image

        return np.asarray(Image.fromarray(region).resize(out, Image.BILINEAR))

    def thumbnail(self, max_size: int) -> np.ndarray:
        return striped_thumbnail(self, max_size)

    def prefetch_level(self, level: int, stop: threading.Event) -> None:
        """See :meth:`TiffFileReader.prefetch_level` (levels read with tifffile only)."""
        if self._exact[level]:
            self._fast.prefetch_level(level, stop)

    def associated_image(self, name: str) -> np.ndarray:
        return self._slow.associated_image(name)

    def close(self) -> None:
        try:
            self._fast.close()
        finally:
            self._slow.close()


# ------------------------------------------------------------------------------------ building


def open_fast(slow: SlideReader, path: str | os.PathLike[str]) -> SlideReader:
    """``slow`` (an open OpenSlide reader) wrapped in a :class:`FastTiffReader` where that is exact.

    Returns ``slow`` itself when the vendor or layout is not one tifffile reads, or when no level's
    check regions decode identically. Never raises for a file OpenSlide opened.
    """
    if slow.info.vendor not in FAST_VENDORS:
        return slow
    try:
        pages = _matching_pages(os.fspath(path), slow.info.level_dimensions)
    except Exception as exc:  # tifffile's parse errors are many types; OpenSlide keeps the file
        log.info("%s: fast decoding not used (%s)", path, exc)
        return slow
    if not any(p is not None for p in pages):
        return slow
    from engine.slides.tifffile_reader import TiffFileReader

    # a placeholder page for unmatched levels keeps level numbers aligned; it is never read
    placeholder = next(p for p in pages if p is not None)
    try:
        fast = TiffFileReader(path, level_pages=[placeholder if p is None else p for p in pages])
    except SlideOpenError as exc:
        log.info("%s: fast decoding not used (%s)", path, exc)
        return slow
    exact = tuple(p is not None and _level_identical(slow, fast, level) for level, p in enumerate(pages))
    if not any(exact):
        fast.close()
        log.info("%s: tifffile pixels differ from OpenSlide's; reading with OpenSlide", path)
        return slow
    differ = [i for i, (p, ok) in enumerate(zip(pages, exact, strict=True)) if p is not None and not ok]
    if differ:
        log.info("%s: level(s) %s read with OpenSlide (tifffile pixels differ)", path, differ)
    reader = FastTiffReader(slow, fast, exact)
    log.info("%s: pixels decoded by %s", path, reader.backend_description())
    return reader


def _matching_pages(path: str, level_dimensions: tuple[tuple[int, int], ...]) -> list[int | None]:
    """Per OpenSlide level, the index of the top-level tiled page of that size tifffile reads as RGB."""
    import tifffile

    from engine.slides.tifffile_reader import codec_problem

    found: list[int | None] = [None] * len(level_dimensions)
    with tifffile.TiffFile(path) as tf:
        used: set[int] = set()
        for level, (w, h) in enumerate(level_dimensions):
            # the first unused tiled page of that size is the level (a later one of the same
            # size would be an associated image)
            for i, page in enumerate(tf.pages):
                if i in used or not getattr(page, "is_tiled", False):
                    continue
                if (int(page.imagewidth), int(page.imagelength)) != (w, h):
                    continue
                used.add(i)
                if _fast_layout(page) and codec_problem(page, path) is None:
                    found[level] = i
                break
    return found


def _fast_layout(page: Any) -> bool:
    """Whether tifffile decodes ``page`` straight to RGB bytes with a codec in :data:`FAST_COMPRESSIONS`."""
    import tifffile

    photometric = page.photometric
    compression = int(page.compression)
    ycbcr_ok = photometric == tifffile.PHOTOMETRIC.YCBCR and compression in (7, 33003)
    return (
        compression in FAST_COMPRESSIONS
        and int(page.samplesperpixel) == 3
        and page.dtype == np.uint8
        and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        and (photometric == tifffile.PHOTOMETRIC.RGB or ycbcr_ok)
        and int(page.imagedepth) == 1
    )


def check_regions(info: Any, level: int, tile: tuple[int, int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Regions ``(level-0 xy, size)`` that :func:`_level_identical` compares on ``level``.

    A whole stored tile in the middle, a region across the four stored tiles around the middle
    tile corner, and the (often partial) bottom-right corner tile, each at whole level pixels.
    """
    lw, lh = info.level_dimensions[level]
    ds = info.level_downsamples[level]
    tw, th = tile
    cols, rows = max(1, -(-lw // tw)), max(1, -(-lh // th))
    c, r = cols // 2, rows // 2
    wanted = [
        ((c * tw, r * th), (min(tw, lw - c * tw), min(th, lh - r * th))),
        ((max(0, c * tw - 37), max(0, r * th - 29)), (min(lw, 75), min(lh, 61))),
        (((cols - 1) * tw, (rows - 1) * th), (lw - (cols - 1) * tw, lh - (rows - 1) * th)),
    ]
    out = []
    for (x, y), size in wanted:
        xy0 = (_whole(x, ds, lw), _whole(y, ds, lh))
        if xy0[0] is not None and xy0[1] is not None:
            out.append(((xy0[0], xy0[1]), size))
    return out


def _whole(v: int, ds: float, limit: int) -> int | None:
    """A level-0 coordinate at or just after level pixel ``v`` that maps back to a whole level pixel."""
    for k in range(_ALIGN_TRIES):
        lv = v + k if v + k < limit else v - k
        if lv < 0:
            continue
        x0 = round(lv * ds)
        if (float(x0) / ds).is_integer():
            return int(x0)
    return None


def _level_identical(slow: SlideReader, fast: Any, level: int) -> bool:
    page = fast.level_page(level)
    tile = (int(page.tilewidth), int(page.tilelength))
    regions = check_regions(slow.info, level, tile)
    if not regions:
        return False
    ds = slow.info.level_downsamples[level]
    for xy0, size in regions:
        try:
            a = slow.read_region(xy0, level, size)
            b = fast.read_level_region(level, (int(xy0[0] / ds), int(xy0[1] / ds)), size)
        except SlideOpenError:
            return False  # a damaged check tile: no proof, OpenSlide reads this level
        if a.shape != b.shape or not np.array_equal(a, b):
            return False
    return True
