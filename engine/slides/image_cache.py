"""Large plain images (JPEG / PNG slides such as BALNMP's) as a cached tiled pyramid TIFF.

A plain image above :data:`LARGE_IMAGE_PIXELS` is decoded once and written as a tiled, pyramidal
TIFF (JPEG tiles, 2x levels as top-level pages, the way :class:`TiffFileReader` reads generic
pyramids). Every later open reads that file tile by tile through the bounded tile cache of the
TIFF reader instead of decoding the whole image again: memory is bounded after the first open.

The one-time conversion holds the decoded image in memory once (3 bytes per pixel, e.g. 1.5 GB
for a 500 Mpx slide, plus a quarter of that for the next level; JPEG and PNG cannot be decoded
piecewise) and writes the TIFF tile by tile from it. Pillow's decompression-bomb
guard is lifted for this conversion only (the user asked to open this file as a slide); the
global setting is restored right after.

Where the cache lives: ``<image folder>/.metascope-pyramids/`` next to the user's data when
that folder is writable, else ``<MetaScope cache>/pyramids/`` (:func:`engine.paths.cache_dir`).
A cache file is named by the image's stem, size and modification time, so an edited image gets
a new one; it is written atomically, so a conversion cut short leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import SlideOpenError
from engine.slides.base import SlideReader

#: plain images above this many pixels open through the pyramid cache (64 Mpx, 192 MB RGB)
LARGE_IMAGE_PIXELS = 64 * 1024 * 1024
#: tile side of the cached pyramid
TILE = 512
#: smallest level's longer side
MIN_LEVEL_SIDE = 1024
CACHE_FOLDER = ".metascope-pyramids"

_GUARD_LOCK = threading.Lock()


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of a JPEG / PNG from its header (no pixel decoding, no size guard)."""
    from PIL import Image

    with _GUARD_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as img:
                return img.size
        except Exception as exc:  # decoders raise many unrelated types for bad files
            raise SlideOpenError(f"{path}: not a readable image ({' '.join(str(exc).split()) or type(exc).__name__})") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def is_large_image(path: str | os.PathLike[str]) -> bool:
    """Whether a plain image is above :data:`LARGE_IMAGE_PIXELS` (opens through the cache)."""
    w, h = image_size(path)
    return w * h > LARGE_IMAGE_PIXELS


def _cache_name(src: Path) -> str:
    st = src.stat()
    return f"{src.stem}.{st.st_size}-{int(st.st_mtime)}.tif"


def cache_path(src: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the pyramid of ``src`` is (or will be) kept; see the module docstring."""
    p = Path(src).resolve()
    if cache_dir is not None:
        return Path(cache_dir) / _cache_name(p)
    beside = p.parent / CACHE_FOLDER
    existing = beside / _cache_name(p)
    if existing.is_file():
        return existing
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return existing
    except OSError:
        pass  # read-only data folder: fall back to the user's cache below
    from engine.paths import cache_dir as user_cache

    return user_cache() / "pyramids" / f"{abs(hash(str(p.parent))) & 0xFFFFFFFF:08x}-{_cache_name(p)}"


def _tiles(img: Any) -> Iterator[np.ndarray]:
    """The ``TILE x TILE`` RGB tiles of a Pillow image in row order (edge tiles padded)."""
    from engine.slides.image_reader import to_rgb_uint8

    w, h = img.size
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            tile = to_rgb_uint8(np.asarray(img.crop((x, y, x + TILE, y + TILE))))
            yield tile


def _write_levels(img: Any, tw: Any, quality: int) -> None:
    """Level 0 from ``img`` tile by tile, then 2x box-reduced levels (Pillow ``reduce``)."""
    level, first = img, True
    while True:
        w, h = level.size
        tw.write(
            _tiles(level), shape=(h, w, 3), dtype=np.uint8, photometric="rgb", tile=(TILE, TILE),
            compression="jpeg", compressionargs={"level": quality}, subfiletype=0 if first else 1, metadata=None,
        )
        first = False
        if max(w, h) <= MIN_LEVEL_SIDE or min(w, h) < 32:
            break
        level = level.reduce(2)


def build_pyramid(src: str | os.PathLike[str], dst: str | os.PathLike[str], quality: int = 90) -> Path:
    """Decode ``src`` once and write it as a tiled pyramidal TIFF at ``dst`` (atomically).

    Memory: the decoded image (3-4 bytes per pixel) plus its half-size copy; the TIFF is written
    tile by tile from it.

    Raises:
        SlideOpenError: ``src`` cannot be decoded (or is too large for this machine's memory).
    """
    import tifffile
    from PIL import Image, ImageOps

    from engine.fileio import atomic_path

    src_p, out = Path(src), Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _GUARD_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # lifted for this conversion only
        try:
            with Image.open(src_p) as img:
                img.load()
                # camera-style orientation tags only: transposing copies the whole image
                im = ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img
                if im.mode not in ("RGB", "RGBA"):
                    im = im.convert("RGBA" if im.mode in ("P", "PA", "LA", "La", "RGBa") else "RGB")
                with atomic_path(out) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
                    _write_levels(im, tw, quality)
        except MemoryError as exc:
            raise SlideOpenError(f"{src_p}: not enough memory to convert the image once into a tiled pyramid") from exc
        except SlideOpenError:
            raise
        except Exception as exc:  # decoders raise many unrelated types for bad files
            raise SlideOpenError(f"{src_p}: not a readable image ({' '.join(str(exc).split()) or type(exc).__name__})") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    return out


def open_large_image(
    path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> SlideReader:
    """Open a large JPEG / PNG through its pyramid cache (built on the first open).

    Returns:
        A :class:`~engine.slides.tifffile_reader.TiffFileReader` of the cache whose ``info.path``
        is the original image and whose properties name the cache file.
    """
    from engine.slides.tifffile_reader import TiffFileReader

    src = Path(path)
    dst = cache_path(src, cache_dir)
    if not dst.is_file():
        build_pyramid(src, dst)
    reader = TiffFileReader(dst)
    props = dict(reader.info.properties)
    props["metascope.pyramid_cache"] = str(dst)
    reader.info = dataclasses.replace(reader.info, path=os.fspath(src), vendor="image", mpp=None, properties=props)
    return reader
