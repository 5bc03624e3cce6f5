"""Bounded-memory resampling helpers shared by the slide readers."""

from __future__ import annotations

import math

import numpy as np

from engine.slides.base import SlideReader

# A strip read for a thumbnail holds at most this many bytes of RGBA (the widest slides are
# ~200,000 px, so a strip is then ~80 rows).
STRIP_BUDGET_BYTES = 64 * 1024 * 1024
# Levels at most this many pixels are read in one piece for a thumbnail.
WHOLE_LEVEL_MAX_PIXELS = 16 * 1024 * 1024


def thumbnail_size(dimensions: tuple[int, int], max_size: int) -> tuple[tuple[int, int], float]:
    """Thumbnail ``(width, height)`` for a level-0 size and the level-0 px per thumbnail px.

    The longer side becomes ``max_size`` (never upsampled), the aspect ratio is kept.
    """
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    w0, h0 = dimensions
    scale = max(max(w0, h0) / max_size, 1.0)
    return (max(1, round(w0 / scale)), max(1, round(h0 / scale))), scale


def striped_thumbnail(reader: SlideReader, max_size: int, strip_budget_bytes: int = STRIP_BUDGET_BYTES) -> np.ndarray:
    """Thumbnail of ``reader`` with bounded memory.

    Reads the best pyramid level for the wanted downsample; when that level is large (a
    single-level slide of 100,000 px), it is read in full-width strips of rows and every strip
    is box-resampled to its share of the thumbnail, so peak memory is one strip plus the result.

    Args:
        reader: the slide.
        max_size: longer side of the result in pixels.
        strip_budget_bytes: upper bound on the bytes of one strip read.

    Returns:
        ``uint8`` RGB array of shape ``(th, tw, 3)``.
    """
    from PIL import Image

    info = reader.info
    (tw, th), scale = thumbnail_size(info.dimensions, max_size)
    level = info.best_level_for_downsample(scale)
    lw, lh = info.level_dimensions[level]
    level_ds = info.level_downsamples[level]
    if lw * lh <= WHOLE_LEVEL_MAX_PIXELS:
        from engine.slides.prefetch import prefetching

        # the stored tiles are decoded from both ends at once where the reader can
        with prefetching(reader, level):
            region = reader.read_region((0, 0), level, (lw, lh))
        if (lw, lh) == (tw, th):
            return region
        return np.asarray(Image.fromarray(region).resize((tw, th), Image.BOX))

    out = np.empty((th, tw, 3), dtype=np.uint8)
    # level rows per thumbnail row; whole thumbnail rows per strip keep the box filter exact
    rows_per_out = lh / th
    out_rows_per_strip = max(1, int(strip_budget_bytes // (4 * lw * max(rows_per_out, 1.0))))
    r0 = 0
    while r0 < th:
        r1 = min(th, r0 + out_rows_per_strip)
        y0f, y1f = r0 * rows_per_out, min(r1 * rows_per_out, lh)
        y0, y1 = int(math.floor(y0f)), min(lh, int(math.ceil(y1f)))
        strip = reader.read_region((0, int(round(y0 * level_ds))), level, (lw, max(1, y1 - y0)))
        img = Image.fromarray(strip)
        out[r0:r1] = np.asarray(img.resize((tw, r1 - r0), Image.BOX, box=(0.0, y0f - y0, float(lw), y1f - y0)))
        r0 = r1
    return out
