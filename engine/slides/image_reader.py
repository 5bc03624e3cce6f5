"""Plain-image backend: PNG, JPEG, BMP and non-pyramidal TIFF, so a patch or a photo opens like a slide.

The whole image is decoded into memory (plain images are small by nature); large images get a
small in-memory pyramid so thumbnails and zoomed-out views stay cheap.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from engine.errors import SlideOpenError
from engine.slides.base import ArrayReader
from engine.slides.mpp import mpp_from_ome, mpp_from_tiff_tags

# Refuse to decode plain images above this many pixels (~1.5 GB of RGB): such files should be
# converted to a pyramidal TIFF, and decoding them would exhaust a workstation's memory.
MAX_PIXELS = 500_000_000
# Build 2x levels until the smallest is at most this many pixels on its longer side.
PYRAMID_MIN_SIDE = 2048

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Normalise a decoded image to ``uint8`` RGB ``(H, W, 3)``; alpha is composited over white."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"unsupported image shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            hi = 1.0 if float(np.nanmax(arr)) <= 1.0 else 255.0
            arr = np.clip(np.nan_to_num(arr) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        elif arr.dtype.kind in "ui":
            bits = arr.dtype.itemsize * 8
            arr = (np.clip(arr, 0, None).astype(np.uint64) >> (bits - 8)).astype(np.uint8)
        elif arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        else:
            raise ValueError(f"unsupported pixel type {arr.dtype}")
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:  # grey + alpha
        grey = arr[..., :1].astype(np.uint16)
        a = arr[..., 1:2].astype(np.uint16)
        return np.repeat(((grey * a + 255 * (255 - a) + 127) // 255).astype(np.uint8), 3, axis=2)
    if c >= 4:
        rgb = arr[..., :3].astype(np.uint16)
        a = arr[..., 3:4].astype(np.uint16)
        return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def tiff_to_rgb(raw: np.ndarray, photometric: int, colormap: np.ndarray | None) -> np.ndarray:
    """Decoded TIFF samples ``(H, W)`` or ``(H, W, S)`` to ``uint8`` RGB ``(H, W, 3)``.

    Palette indices go through the colour map, min-is-white grey is inverted and CMYK
    (``SEPARATED``) is converted; anything else is :func:`to_rgb_uint8`.
    """
    import tifffile

    p = tifffile.PHOTOMETRIC
    if photometric == p.PALETTE and colormap is not None:
        cmap = np.asarray(colormap)
        # 16-bit colour map entries (TIFF) -> 8-bit RGB lookup
        lut = ((cmap >> 8) if cmap.max() > 255 else cmap).astype(np.uint8).T
        idx = raw if raw.ndim == 2 else raw[..., 0]
        return lut[np.clip(idx.astype(np.int64), 0, lut.shape[0] - 1)]
    if photometric == p.MINISWHITE and raw.dtype.kind in "ui":
        raw = np.iinfo(raw.dtype).max - raw
    if photometric == p.SEPARATED and raw.ndim == 3 and raw.shape[2] >= 4:
        cmy = to_rgb_uint8(raw[..., :3]).astype(np.uint16)
        k = to_rgb_uint8(raw[..., 3:4])[..., :1].astype(np.uint16)
        return ((255 - cmy) * (255 - k) // 255).astype(np.uint8)
    return to_rgb_uint8(raw)


def _read_tiff(path: str) -> tuple[np.ndarray, tuple[float, float] | None, dict[str, str]]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        if page.imagewidth * page.imagelength > MAX_PIXELS:
            raise SlideOpenError(f"{path}: the image is too large to open as a plain image; convert it to a pyramidal TIFF")
        mpp = mpp_from_ome(tf.ome_metadata) if tf.is_ome else None
        if mpp is None:
            mpp = mpp_from_tiff_tags(page.tags)
        arr = page.asarray()
        props = {"tiff.Compression": str(page.compression.name), "tiff.Photometric": str(page.photometric.name)}
        # a planar (C, H, W) page
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
            arr = np.moveaxis(arr, 0, 2)
        arr = tiff_to_rgb(arr, page.photometric, page.colormap)
    return arr, mpp, props


def _read_pil(path: str) -> tuple[np.ndarray, dict[str, str]]:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise SlideOpenError(f"{path}: the image is too large to open as a plain image; convert it to a pyramidal TIFF")
        fmt = img.format or "image"
        # phone and camera photos store their rotation in EXIF; show them as any viewer does
        oriented = ImageOps.exif_transpose(img) or img
        if oriented.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(oriented)
        elif oriented.mode in ("RGBA", "LA", "PA", "P", "La", "RGBa"):
            arr = np.asarray(oriented.convert("RGBA"))
        else:
            arr = np.asarray(oriented.convert("RGB"))
    return arr, {"image.format": fmt}


def is_tiff_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with a TIFF or BigTIFF signature (whatever its name)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    except OSError:
        return False


class ImageReader(ArrayReader):
    """A plain image file as a one-level slide (or a small in-memory pyramid when large).

    Args:
        path: PNG, JPEG, BMP or non-pyramidal TIFF file.

    Raises:
        SlideOpenError: the file cannot be decoded as an image.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = os.fspath(path)
        mpp: tuple[float, float] | None = None
        try:
            # by content, not name: a JPEG saved as .tif or a TIFF named .png open all the same
            if is_tiff_file(p):
                arr, mpp, props = _read_tiff(p)
            else:
                arr, props = _read_pil(p)
            rgb = to_rgb_uint8(arr)
        except SlideOpenError:
            raise
        except MemoryError as exc:
            raise SlideOpenError(f"{p}: the image is too large to open as a plain image") from exc
        except Exception as exc:  # decoders raise many unrelated types for bad files
            raise SlideOpenError(f"{p}: not a readable image ({' '.join(str(exc).split()) or type(exc).__name__})") from exc
        levels = 1
        side = max(rgb.shape[0], rgb.shape[1])
        while side > PYRAMID_MIN_SIDE:
            side //= 2
            levels += 1
        super().__init__(rgb, mpp=None, levels=levels, name=p)
        self.info = dataclasses.replace(
            self.info,
            path=p,
            vendor="image",
            mpp=mpp,
            properties=props,
        )
