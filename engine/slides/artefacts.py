"""Drawing slide artefacts and damaging slide files, for QC tests and benchmarks.

Pen strokes, folds (tissue twice as thick: optical density doubled), blurred regions, air
bubbles, greyscale and DAB-only (IHC-like) versions of an H&E image, a tiled JPEG TIFF writer
(Aperio-style description with the resolution, so OpenSlide opens it) and :func:`corrupt_tiles`,
which zeroes the compressed data of chosen tiles after their first bytes (a valid JPEG header,
then nothing a decoder can use).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from engine.slides.qc import HED_FROM_RGB, RGB_FROM_HED, rgb_to_od

PEN_COLOURS = {"green": (30, 140, 60), "blue": (40, 60, 170), "black": (35, 35, 40)}


def draw_pen(
    rgb: np.ndarray, points: Iterable[tuple[float, float]], width: int = 12, colour: str = "green"
) -> np.ndarray:
    """Draw a marker stroke (a polyline through ``points``, ``(x, y)`` pixels) in place; returns ``rgb``."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    ImageDraw.Draw(img).line([tuple(map(float, p)) for p in points], fill=PEN_COLOURS[colour], width=int(width))
    # marker ink is translucent: the tissue shows through a little
    drawn = np.asarray(img)
    ink = np.any(drawn != rgb, axis=2)
    rgb[ink] = (0.85 * drawn[ink] + 0.15 * rgb[ink]).astype(np.uint8)
    return rgb


def add_fold(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Fold the tissue in ``box`` (x0, y0, x1, y1) over itself: optical density doubled, in place."""
    x0, y0, x1, y1 = box
    region = rgb[y0:y1, x0:x1].astype(np.float32)
    # the tissue folded onto itself (mirrored) and pressed: about three layers thick where it
    # folds; transmissions multiply (optical densities add)
    other = region[::-1, ::-1]
    t = (region / 255.0) * (other / 255.0) * (region / 255.0)
    rgb[y0:y1, x0:x1] = np.clip(255.0 * t * 0.9, 0, 255).astype(np.uint8)
    return rgb


def blur_region(rgb: np.ndarray, box: tuple[int, int, int, int], sigma: float = 4.0) -> np.ndarray:
    """Gaussian-blur ``box`` (x0, y0, x1, y1) in place (an out-of-focus area)."""
    from scipy import ndimage

    x0, y0, x1, y1 = box
    region = rgb[y0:y1, x0:x1].astype(np.float32)
    rgb[y0:y1, x0:x1] = np.clip(ndimage.gaussian_filter(region, (sigma, sigma, 0)), 0, 255).astype(np.uint8)
    return rgb


def add_bubble(rgb: np.ndarray, centre: tuple[int, int], radius: int) -> np.ndarray:
    """An air bubble: a washed-out grey disc with a dark neutral rim, in place."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - centre[0], yy - centre[1])
    inside = d < radius
    grey = rgb[inside].astype(np.float32).mean(axis=1, keepdims=True)
    rgb[inside] = np.clip(0.3 * grey + 0.7 * 200, 0, 255).astype(np.uint8)
    rim = (d >= radius - 3) & (d < radius + 2)
    rgb[rim] = (70, 70, 72)
    return rgb


def to_greyscale(rgb: np.ndarray) -> np.ndarray:
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(grey[..., None], 3, axis=2).round().astype(np.uint8)


def to_dab(rgb: np.ndarray, counterstain: float = 0.25) -> np.ndarray:
    """An IHC look-alike: the stain re-expressed as DAB with a light haematoxylin counterstain."""
    hed = np.clip(rgb_to_od(rgb) @ HED_FROM_RGB, 0, None)
    od = hed.sum(axis=-1, keepdims=True) * 0.7 * RGB_FROM_HED[2] + hed[..., :1] * counterstain * RGB_FROM_HED[0]
    return np.clip(255.0 * 10.0 ** (-od), 0, 255).astype(np.uint8)


def write_tiled_tiff(
    path: str | os.PathLike[str], rgb: np.ndarray, mpp: float = 0.5, tile: int = 128, levels: int = 2, quality: int = 90
) -> Path:
    """A tiled JPEG pyramid TIFF with an Aperio description (OpenSlide reads it as ``aperio``)."""
    import tifffile

    h, w = rgb.shape[:2]
    desc = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q={quality}|AppMag = 20|MPP = {mpp}"
    p = Path(path)
    with tifffile.TiffWriter(p) as tw:
        level = rgb
        for i in range(levels):
            tw.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                description=desc if i == 0 else None,
                metadata=None,
                subfiletype=0 if i == 0 else 1,
            )
            hh, ww = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            if hh < tile or ww < tile:
                break
            q = level[:hh, :ww].astype(np.uint16)
            level = ((q[0::2, 0::2] + q[1::2, 0::2] + q[0::2, 1::2] + q[1::2, 1::2]) // 4).astype(np.uint8)
    return p


def tile_grid(path: str | os.PathLike[str], page: int = 0) -> tuple[int, int, int]:
    """``(rows, cols, tile side)`` of a tiled TIFF page."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        pg = tf.pages[page]
        tl = int(pg.tilelength)
        return -(-int(pg.imagelength) // tl), -(-int(pg.imagewidth) // int(pg.tilewidth)), tl


def corrupt_tiles(
    path: str | os.PathLike[str], indices: Iterable[int] | None, page: int = 0, keep_bytes: int = 4
) -> int:
    """Zero the data of tiles ``indices`` (all of ``page`` when ``None``) after ``keep_bytes`` bytes.

    Returns:
        How many tiles were damaged.
    """
    import tifffile

    with tifffile.TiffFile(path) as tf:
        pg = tf.pages[page]
        offsets = [int(v) for v in pg.dataoffsets]
        counts = [int(v) for v in pg.databytecounts]
    chosen = range(len(offsets)) if indices is None else list(indices)
    n = 0
    with open(path, "r+b") as fh:
        for i in chosen:
            if counts[i] > keep_bytes:
                fh.seek(offsets[i] + keep_bytes)
                fh.write(b"\0" * (counts[i] - keep_bytes))
                n += 1
    return n
