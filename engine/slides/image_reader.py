"""Plain-image backend: PNG, JPEG, BMP and non-pyramidal TIFF, so a patch or a photo opens like a slide.

The whole image is decoded into memory (plain images are small by nature); large images get a
small in-memory pyramid so thumbnails and zoomed-out views stay cheap.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from engine.errors import SlideOpenError
from engine.slides.base import ArrayReader

# Refuse to decode plain images above this many pixels (~1.5 GB of RGB): such files should be
# converted to a pyramidal TIFF, and decoding them would exhaust a workstation's memory.
MAX_PIXELS = 500_000_000
# Build 2x levels until the smallest is at most this many pixels on its longer side.
PYRAMID_MIN_SIDE = 2048
# Microns per pixel accepted from TIFF resolution tags; outside this range the tags describe
# print resolution (72 dpi = 353 um/px), not a microscope.
SANE_MPP = (0.02, 50.0)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
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


def _mpp_from_resolution(x_res: float | None, y_res: float | None, unit: int | None) -> tuple[float, float] | None:
    """Microns per pixel from TIFF XResolution/YResolution (pixels per unit) and ResolutionUnit.

    Unit 2 is inch, 3 is centimetre; unit 1 (none) carries no physical size. Returns ``None``
    unless the result is a plausible microscope resolution.
    """
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(int(unit) if unit is not None else 0)
    if per_unit_um is None or not x_res or not y_res:
        return None
    mx, my = per_unit_um / float(x_res), per_unit_um / float(y_res)
    if not (SANE_MPP[0] <= mx <= SANE_MPP[1] and SANE_MPP[0] <= my <= SANE_MPP[1]):
        return None
    return (mx, my)


def _read_tiff(path: str) -> tuple[np.ndarray, tuple[float, float] | None, dict[str, str]]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        if page.imagewidth * page.imagelength > MAX_PIXELS:
            raise SlideOpenError(f"{path}: the image is too large to open as a plain image; convert it to a pyramidal TIFF")
        tags = page.tags
        x_res = tags.get("XResolution")
        y_res = tags.get("YResolution")
        unit = tags.get("ResolutionUnit")

        def ratio(tag: object) -> float | None:
            if tag is None:
                return None
            v = tag.value  # type: ignore[attr-defined]
            if isinstance(v, tuple) and len(v) == 2:
                return v[0] / v[1] if v[1] else None
            return float(v)

        mpp = _mpp_from_resolution(ratio(x_res), ratio(y_res), int(unit.value) if unit is not None else None)
        arr = page.asarray()
        if page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:
            arr = np.iinfo(arr.dtype).max - arr if arr.dtype.kind in "ui" else arr
        props = {"tiff.Compression": str(page.compression.name), "tiff.Photometric": str(page.photometric.name)}
        # a planar (C, H, W) page
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
            arr = np.moveaxis(arr, 0, 2)
    return arr, mpp, props


def _read_pil(path: str) -> tuple[np.ndarray, dict[str, str]]:
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise SlideOpenError(f"{path}: the image is too large to open as a plain image; convert it to a pyramidal TIFF")
        fmt = img.format or "image"
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img)
        elif img.mode in ("RGBA", "LA", "PA", "P"):
            arr = np.asarray(img.convert("RGBA"))
        else:
            arr = np.asarray(img.convert("RGB"))
    return arr, {"image.format": fmt}


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
            if Path(p).suffix.lower() in (".tif", ".tiff"):
                arr, mpp, props = _read_tiff(p)
            else:
                arr, props = _read_pil(p)
            rgb = _to_rgb_uint8(arr)
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
