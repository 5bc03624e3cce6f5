"""OpenSlide backend: SVS, NDPI, MRXS, SCN, BIF, VMS, generic tiled TIFF, DICOM (OpenSlide 4).

``openslide`` is imported lazily so that importing :mod:`engine.slides` stays cheap.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np

from engine.errors import SlideOpenError
from engine.slides.base import SlideInfo, SlideReader, checked_region_size
from engine.slides.mpp import mpp_from_ome, plausible_pair
from engine.slides.resample import striped_thumbnail

# Decoded-tile cache per open slide. OpenSlide's default (32 MiB) is smaller than one row of
# 256 px JPEG tiles across a 40,000 px slide, so a row-major tile scan would decode every source
# tile twice; 128 MiB holds two such rows.
DEFAULT_CACHE_BYTES = 128 * 1024 * 1024
# Property recording a resolution the file claims but that is not plausible (see file_mpp).
IGNORED_MPP_PROPERTY = "metascope.ignored-mpp"


def _openslide() -> Any:
    try:
        import openslide
    except ImportError as exc:  # pragma: no cover - openslide-bin is a hard dependency
        raise SlideOpenError(f"the OpenSlide library is not available: {exc}") from exc
    return openslide


def detect_vendor(path: str | os.PathLike[str]) -> str | None:
    """OpenSlide's vendor name for ``path`` (``"aperio"``, ``"generic-tiff"``, ...) or ``None``."""
    openslide = _openslide()
    try:
        return openslide.OpenSlide.detect_format(os.fspath(path))
    except (openslide.OpenSlideError, OSError):
        return None


def _positive_float(value: str | None) -> float | None:
    """``float(value)`` when it is a finite positive number, else ``None`` (never a guess)."""
    if value is None:
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    if not math.isfinite(f) or f <= 0:
        return None
    return f


def file_mpp(props: dict[str, str]) -> tuple[float, float] | None:
    """Level-0 ``(mpp_x, mpp_y)`` from OpenSlide properties, or ``None`` when not plausible.

    OpenSlide reports generic TIFF resolution tags as mpp, so a 72 dpi TIFF would claim
    353 um/px and an Aperio ``MPP = 0`` or ``1000`` passes through; such values are dropped
    (the user is asked for ``--mpp``) instead of silently producing a wrong heatmap. OME-TIFF
    files, which OpenSlide reads as generic TIFF, record mpp in their OME-XML.
    """
    raw_x = props.get("openslide.mpp-x")
    raw_y = props.get("openslide.mpp-y")
    if raw_x is not None or raw_y is not None:
        return plausible_pair(raw_x, raw_y)
    return mpp_from_ome(props.get("tiff.ImageDescription"))


def rgba_to_rgb_white(rgba: np.ndarray) -> np.ndarray:
    """Composite a straight-alpha RGBA ``uint8`` array ``(H, W, 4)`` over white -> ``(H, W, 3)``.

    OpenSlide returns transparent pixels outside the scanned area; on a slide those are glass,
    which is white.
    """
    alpha = rgba[..., 3]
    rgb = rgba[..., :3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[..., None]
    # rgb*a/255 + 255*(255-a)/255, rounded, in integer arithmetic
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class OpenSlideReader(SlideReader):
    """A slide opened with OpenSlide. Safe for concurrent ``read_region`` calls.

    Args:
        path: slide file (for MRXS the ``.mrxs`` file, for DICOM one ``.dcm`` file of the series).
        cache_bytes: size of the decoded-tile cache.

    Raises:
        SlideOpenError: OpenSlide cannot open the file.
    """

    def __init__(self, path: str | os.PathLike[str], cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        openslide = _openslide()
        self._path = os.fspath(path)
        self._openslide = openslide
        try:
            self._slide = openslide.OpenSlide(self._path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideOpenError(f"{self._path}: not a slide format OpenSlide can read") from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideOpenError(f"{self._path}: cannot open slide ({_one_line(exc)})") from exc
        self._cache: Any = None
        try:
            self._cache = openslide.OpenSlideCache(cache_bytes)
            self._slide.set_cache(self._cache)
        except (AttributeError, openslide.OpenSlideError):
            # older OpenSlide without cache control: the default cache still works
            self._cache = None
        # OpenSlide puts a handle into a permanent error state after one failed decode (every
        # later call on it fails): a damaged tile would take the whole slide down. A failed
        # read therefore replaces the handle; the old one is closed once no thread uses it.
        self._handle_lock = threading.Lock()
        self._users: dict[int, int] = {}
        self._retired: list[Any] = []
        self.info = self._read_info()

    def _read_info(self) -> SlideInfo:
        s = self._slide
        props = {str(k): str(v) for k, v in s.properties.items()}
        mpp = file_mpp(props)
        raw = (props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))
        if mpp is None and any(v is not None for v in raw):
            # say what the file claimed, so "no mpp" is not read as "the file is silent"
            props[IGNORED_MPP_PROPERTY] = " x ".join(str(v) for v in raw if v is not None)
        return SlideInfo(
            path=self._path,
            vendor=props.get("openslide.vendor") or "openslide",
            level_dimensions=tuple((int(w), int(h)) for w, h in s.level_dimensions),
            level_downsamples=tuple(float(d) for d in s.level_downsamples),
            mpp=mpp,
            objective_power=_positive_float(props.get("openslide.objective-power")),
            # names only: listing them does not decode the (possibly identifying) images
            associated_images=tuple(sorted(str(n) for n in s.associated_images)),
            properties=props,
        )

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """See :meth:`SlideReader.read_region`.

        Raises:
            SlideOpenError: the slide data cannot be decoded (damaged or truncated file).
            ValueError: ``level`` does not exist or ``size`` is not positive.
        """
        w, h = checked_region_size(self.info, level, size)
        return _pil_rgba_to_rgb(self._read(level0_xy, level, (w, h)))

    # a read that fails on a handle another thread has just put into the error state succeeds
    # on the fresh handle; a damaged tile fails every time
    READ_ATTEMPTS = 3

    def _read(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        """``read_region`` on the current handle, replacing a handle left in OpenSlide's error state.

        Raises:
            SlideOpenError: the region cannot be decoded (the reader stays usable).
        """
        err: BaseException | None = None
        for _ in range(self.READ_ATTEMPTS):
            handle = self._acquire()
            try:
                return handle.read_region((int(level0_xy[0]), int(level0_xy[1])), int(level), size)
            except self._openslide.OpenSlideError as exc:
                err = exc
                self._replace(handle)
            finally:
                self._release(handle)
        raise SlideOpenError(f"{self._path}: the slide is damaged or truncated ({_one_line(err) if err else 'no data'})") from err

    def _acquire(self) -> Any:
        with self._handle_lock:
            handle = self._slide
            self._users[id(handle)] = self._users.get(id(handle), 0) + 1
            return handle

    def _release(self, handle: Any) -> None:
        with self._handle_lock:
            n = self._users.get(id(handle), 1) - 1
            if n > 0:
                self._users[id(handle)] = n
                return
            self._users.pop(id(handle), None)
            if any(r is handle for r in self._retired):
                self._retired = [r for r in self._retired if r is not handle]
                handle.close()

    def _replace(self, bad: Any) -> None:
        """Open a fresh handle instead of ``bad`` (unless another thread already did)."""
        with self._handle_lock:
            if self._slide is not bad:
                return
            try:
                fresh = self._openslide.OpenSlide(self._path)
                if self._cache is not None:
                    fresh.set_cache(self._cache)
            except (self._openslide.OpenSlideError, OSError):
                return  # the file itself went away: the error is reported by the caller
            self._retired.append(bad)
            self._slide = fresh

    def read_region_resized(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int], out_size: tuple[int, int]
    ) -> np.ndarray:
        """Read a region and resize it (antialiased bilinear) to ``out_size`` in one pass.

        The tile hot path: resizing OpenSlide's RGBA image before converting to numpy avoids two
        full-size array copies. Alpha is premultiplied by PIL during the resize, so partly
        transparent edges still composite to white.

        Returns:
            ``uint8`` RGB array ``(out_h, out_w, 3)``.

        Raises:
            SlideOpenError: the slide data cannot be decoded.
        """
        from PIL import Image

        w, h = int(size[0]), int(size[1])
        if not 0 <= level < self.info.level_count or w <= 0 or h <= 0:
            raise ValueError(f"bad region: level {level}, size {size}")
        img = self._read(level0_xy, level, (w, h))
        out = (int(out_size[0]), int(out_size[1]))
        if _fully_opaque(img):
            rgb = img.convert("RGB")
            return np.asarray(rgb.resize(out, Image.BILINEAR) if (w, h) != out else rgb)
        if (w, h) != out:
            img = img.resize(out, Image.BILINEAR)  # premultiplies alpha internally
        return rgba_to_rgb_white(np.asarray(img))

    def thumbnail(self, max_size: int) -> np.ndarray:
        """See :meth:`SlideReader.thumbnail`; reads huge single-level slides in strips."""
        return striped_thumbnail(self, max_size)

    def associated_image(self, name: str) -> np.ndarray:
        """Decode one associated image (label, macro, thumbnail) as RGB ``(H, W, 3)``.

        Only called on an explicit user request: labels can carry patient identifiers.

        Raises:
            KeyError: the slide has no associated image of that name.
            SlideOpenError: the image cannot be decoded.
        """
        if name not in self.info.associated_images:
            raise KeyError(name)
        try:
            img = self._slide.associated_images[name]
        except self._openslide.OpenSlideError as exc:
            raise SlideOpenError(f"{self._path}: cannot read associated image {name!r} ({_one_line(exc)})") from exc
        return rgba_to_rgb_white(np.asarray(img.convert("RGBA")))

    def close(self) -> None:
        with self._handle_lock:
            retired, self._retired = self._retired, []
        for handle in retired:
            handle.close()
        self._slide.close()


def _fully_opaque(img: Any) -> bool:
    """Whether a PIL RGBA image has no transparent pixel (checked in C, no array copy)."""
    return img.getchannel("A").getextrema()[0] == 255


def _pil_rgba_to_rgb(img: Any) -> np.ndarray:
    """OpenSlide's RGBA PIL image as an RGB array, transparent areas white."""
    if _fully_opaque(img):
        return np.asarray(img.convert("RGB"))
    return rgba_to_rgb_white(np.asarray(img))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
