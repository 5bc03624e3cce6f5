"""The slide reader interface. Coordinates are level-0 pixels unless a name says otherwise."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import MissingMppError


@dataclass(frozen=True, slots=True)
class SlideInfo:
    """What is known about a slide.

    Attributes:
        path: file path ("" for in-memory slides).
        vendor: backend/vendor name, e.g. ``"aperio"``, ``"generic-tiff"``, ``"image"``, ``"array"``.
        level_dimensions: ``(width, height)`` per level, level 0 first.
        level_downsamples: downsample factor per level relative to level 0.
        mpp: ``(mpp_x, mpp_y)`` microns per level-0 pixel, or ``None`` when the file does not say.
        objective_power: scanner objective magnification, or ``None``.
        associated_images: names of label/macro/thumbnail images (not read unless asked).
        properties: raw backend properties (strings).
        mpp_from_user: True when ``mpp`` was supplied by the user (``--mpp``) rather than read
            from the file.
    """

    path: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None = None
    objective_power: float | None = None
    associated_images: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    mpp_from_user: bool = False

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def name(self) -> str:
        return Path(self.path).stem if self.path else "slide"

    def mpp_or(self, fallback: float | None) -> float:
        """Level-0 microns per pixel (mean of x and y), else ``fallback``.

        Raises:
            MissingMppError: the slide has no mpp and ``fallback`` is None.
        """
        if self.mpp is not None:
            return float((self.mpp[0] + self.mpp[1]) / 2)
        if fallback is None:
            raise MissingMppError(
                f"{self.name}: the slide does not record its resolution (microns per pixel); "
                "supply one with --mpp"
            )
        return float(fallback)

    def best_level_for_downsample(self, downsample: float) -> int:
        """Largest level whose downsample does not exceed ``downsample`` (small tolerance)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": list(self.mpp) if self.mpp is not None else None,
            "mpp_source": None if self.mpp is None else ("user" if self.mpp_from_user else "file"),
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_images),
        }


def checked_region_size(info: SlideInfo, level: int, size: tuple[int, int]) -> tuple[int, int]:
    """Validate a :meth:`SlideReader.read_region` request; returns its ``(w, h)`` in pixels.

    Raises:
        ValueError: ``level`` does not exist or ``size`` is not positive.
    """
    if not 0 <= level < info.level_count:
        raise ValueError(f"level {level} out of range (slide has {info.level_count})")
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"region size must be positive, got {size}")
    return w, h


class SlideReader(abc.ABC):
    """A whole-slide image (or a plain image) opened for reading. Use as a context manager.

    Implementations must be safe to call ``read_region`` from several threads at once.
    """

    info: SlideInfo

    @abc.abstractmethod
    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read pixels.

        Args:
            level0_xy: top-left corner in level-0 pixels.
            level: pyramid level to read from.
            size: ``(width, height)`` in pixels of that level.

        Returns:
            ``uint8`` array of shape ``(height, width, 3)`` (RGB). Areas outside the slide or
            transparent are white.
        """

    def read_region_resized(
        self, level0_xy: tuple[int, int], level: int, size: tuple[int, int], out_size: tuple[int, int]
    ) -> np.ndarray:
        """Read a region and resize it (antialiased bilinear) to ``out_size``.

        The tile hot path. This default reads with :meth:`read_region` and resizes with PIL;
        backends that can resize before converting to numpy (OpenSlide) override it.

        Args:
            level0_xy: top-left corner in level-0 pixels.
            level: pyramid level to read from.
            size: ``(width, height)`` in pixels of that level.
            out_size: ``(width, height)`` of the result.

        Returns:
            ``uint8`` RGB array ``(out_h, out_w, 3)``.
        """
        region = self.read_region(level0_xy, level, size)
        out = (int(out_size[0]), int(out_size[1]))
        if (region.shape[1], region.shape[0]) == out:
            return region
        from PIL import Image

        return np.asarray(Image.fromarray(region).resize(out, Image.BILINEAR))

    def thumbnail(self, max_size: int) -> np.ndarray:
        """RGB ``uint8`` image whose longer side is at most ``max_size`` (aspect preserved)."""
        from PIL import Image

        w0, h0 = self.info.dimensions
        scale = max(w0, h0) / max_size
        level = self.info.best_level_for_downsample(max(scale, 1.0))
        lw, lh = self.info.level_dimensions[level]
        region = self.read_region((0, 0), level, (lw, lh))
        tw = max(1, round(w0 / max(scale, 1.0)))
        th = max(1, round(h0 / max(scale, 1.0)))
        if (lw, lh) != (tw, th):
            region = np.asarray(Image.fromarray(region).resize((tw, th), Image.BILINEAR))
        return region

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (label, macro, ...) as RGB. Only called on explicit user request."""
        raise KeyError(name)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayReader(SlideReader):
    """An in-memory slide backed by a numpy RGB array; levels are built by 2x box downsampling.

    Serves tests and synthetic demos.
    """

    def __init__(
        self,
        image: np.ndarray,
        mpp: float | None = 0.5,
        levels: int = 1,
        name: str = "array",
        objective_power: float | None = None,
    ) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("ArrayReader needs a uint8 (H, W, 3) array")
        self._levels = [image]
        for _ in range(1, levels):
            prev = self._levels[-1]
            h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
            if h < 2 or w < 2:
                break
            p = prev[:h, :w].astype(np.uint16)
            self._levels.append(((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) // 4).astype(np.uint8))
        dims = tuple((lv.shape[1], lv.shape[0]) for lv in self._levels)
        downs = tuple(float(2**i) for i in range(len(self._levels)))
        self.info = SlideInfo(
            path=name if os.sep in name else "",
            vendor="array",
            level_dimensions=dims,
            level_downsamples=downs,
            mpp=(mpp, mpp) if mpp is not None else None,
            objective_power=objective_power,
        )
        self._name = name

    def read_region(self, level0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        arr = self._levels[level]
        ds = self.info.level_downsamples[level]
        x = int(level0_xy[0] // ds)
        y = int(level0_xy[1] // ds)
        w, h = int(size[0]), int(size[1])
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, arr.shape[1]), min(y + h, arr.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = arr[y0:y1, x0:x1]
        return out
