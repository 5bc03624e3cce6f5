"""The heatmap overlay: a probability grid placed on the slide in level-0 pixels, rendered to a
small ARGB QImage (one pixel per grid cell) that the viewer scales onto the slide.

Colormaps are built from a few anchor colours so the GUI does not import matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtGui import QColor, QImage

# anchor colours sampled from the matplotlib maps of the same names (perceptually ordered)
_ANCHORS: dict[str, list[tuple[int, int, int]]] = {
    # yellow -> orange -> crimson (ColorBrewer YlOrRd): high values stay saturated over purple H&E
    "heat": [(255, 255, 204), (255, 237, 160), (254, 217, 118), (254, 178, 76), (253, 141, 60), (252, 78, 42),
             (227, 26, 28), (177, 0, 38)],
    "inferno": [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                (250, 193, 39), (252, 255, 164)],
    "viridis": [(68, 1, 84), (70, 50, 126), (54, 92, 141), (39, 127, 142), (31, 161, 135), (74, 193, 109),
                (160, 218, 57), (253, 231, 37)],
    "turbo": [(48, 18, 59), (70, 107, 227), (40, 187, 236), (50, 242, 152), (164, 252, 60), (239, 205, 58),
              (251, 128, 34), (122, 4, 3)],
    "reds": [(255, 245, 240), (252, 201, 180), (251, 138, 106), (240, 68, 52), (188, 20, 26), (103, 0, 13)],
}
COLORMAPS: tuple[str, ...] = tuple(_ANCHORS)


def colormap_lut(name: str) -> np.ndarray:
    """256 RGB entries of a colormap, shape ``(256, 3)`` uint8."""
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    pos = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, pos, anchors[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def colormap_color(name: str, value: float) -> QColor:
    r, g, b = colormap_lut(name)[int(round(min(1.0, max(0.0, value)) * 255))]
    return QColor(int(r), int(g), int(b))


@dataclass(frozen=True, slots=True)
class GridGeometry:
    """Where the heatmap grid lies on the slide.

    Attributes:
        origin_xy: level-0 top-left of the tile in row 0, column 0.
        stride: level-0 pixels between neighbouring tiles.
        tile_size: level-0 side of one tile (>= stride when tiles overlap).
    """

    origin_xy: tuple[float, float]
    stride: float
    tile_size: float

    def cell_rect(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, w, h)`` of the area one cell paints (the tile's central stride square)."""
        inset = (self.tile_size - self.stride) / 2
        return (self.origin_xy[0] + col * self.stride + inset, self.origin_xy[1] + row * self.stride + inset,
                self.stride, self.stride)

    def tile_rect(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, w, h)`` of the tile the model saw."""
        return (self.origin_xy[0] + col * self.stride, self.origin_xy[1] + row * self.stride,
                self.tile_size, self.tile_size)

    def cell_at(self, x0: float, y0: float) -> tuple[int, int]:
        inset = (self.tile_size - self.stride) / 2
        col = math.floor((x0 - self.origin_xy[0] - inset) / self.stride)
        row = math.floor((y0 - self.origin_xy[1] - inset) / self.stride)
        return row, col


class HeatmapOverlay:
    """A value grid (float32 0-1, NaN where no tissue was analysed) and how to show it.

    The rendered image is kept between updates: :meth:`update_cells` colours only the cells of
    the new batch, so a live run costs the GUI thread per batch, not per grid.
    """

    def __init__(self, grid: np.ndarray, geometry: GridGeometry, value_label: str = "tumour probability") -> None:
        if grid.ndim != 2:
            raise ValueError("heatmap grid must be 2-D (rows, cols)")
        self.grid = grid
        self.geometry = geometry
        self.value_label = value_label
        self.colormap = "heat"
        self.threshold = 0.5
        self.opacity = 0.5
        self.visible = True
        self._image: QImage | None = None
        self._pixels: np.ndarray | None = None  # (rows, cols, 4) view of _image's memory
        self._lut: np.ndarray | None = None  # (256, 4) BGRA colours of the current colormap

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.grid.shape[0]), int(self.grid.shape[1])

    def extent_level0(self) -> tuple[float, float, float, float]:
        """Level-0 ``(x, y, w, h)`` covered by the rendered image."""
        rows, cols = self.shape
        x, y, _, _ = self.geometry.cell_rect(0, 0)
        return x, y, cols * self.geometry.stride, rows * self.geometry.stride

    def invalidate(self) -> None:
        """Forget the rendered image (a display setting changed)."""
        self._image = None
        self._pixels = None
        self._lut = None

    def update_cells(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        """Write one finished batch into the grid, recolouring only those cells."""
        r = np.asarray(rows, dtype=np.intp)
        c = np.asarray(cols, dtype=np.intp)
        v = np.asarray(values, dtype=np.float32)
        self.grid[r, c] = v
        if self._pixels is not None:
            self._pixels[r, c] = self._colours(v)

    def image(self) -> QImage:
        """The grid as premultiplied ARGB32 (one pixel per cell); cells below the threshold are
        transparent."""
        if self._image is None:
            self._render()
        return self._image  # type: ignore[return-value]

    def _colours(self, values: np.ndarray) -> np.ndarray:
        """Premultiplied BGRA ``uint8`` ``(..., 4)`` of ``values`` (transparent: NaN or below threshold)."""
        lut = self._lut
        if lut is None:
            rgb = colormap_lut(self.colormap)
            lut = np.empty((256, 4), dtype=np.uint8)
            lut[:, 0], lut[:, 1], lut[:, 2], lut[:, 3] = rgb[:, 2], rgb[:, 1], rgb[:, 0], 255
            self._lut = lut
        valid = np.isfinite(values)
        shown = valid & (np.where(valid, values, -1.0) >= self.threshold)
        idx = np.clip(np.nan_to_num(values, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        out = lut[idx]
        out[~shown] = 0  # premultiplied alpha: transparent pixels carry no colour
        return out

    def _render(self) -> None:
        rows, cols = self.shape
        img = QImage(cols, rows, QImage.Format.Format_ARGB32_Premultiplied)
        # write straight into the image's own memory (rows may be padded to bytesPerLine)
        mem = np.frombuffer(img.bits(), dtype=np.uint8).reshape(rows, img.bytesPerLine())
        pixels = mem[:, : 4 * cols].reshape(rows, cols, 4)
        pixels[...] = self._colours(self.grid)
        self._image, self._pixels = img, pixels

    def value_at(self, x0: float, y0: float) -> tuple[float, tuple[int, int, int, int]] | None:
        """Probability and level-0 tile rect ``(x, y, w, h)`` under a level-0 point, or None."""
        row, col = self.geometry.cell_at(x0, y0)
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            return None
        v = float(self.grid[row, col])
        if not math.isfinite(v):
            return None
        x, y, w, h = self.geometry.tile_rect(row, col)
        return v, (int(round(x)), int(round(y)), int(round(w)), int(round(h)))

    def analysed_count(self) -> int:
        return int(np.isfinite(self.grid).sum())

    def top_regions(self, n: int = 10, min_separation: int = 2) -> list[tuple[float, int, int]]:
        """The ``n`` highest cells as ``(probability, row, col)``, at least ``min_separation``
        cells apart so the list shows distinct regions rather than neighbours of one hotspot."""
        g = self.grid
        flat = np.where(np.isfinite(g), g, -np.inf).ravel()
        # only the best few hundred cells can be picked: partition (linear) before sorting them
        k = min(flat.size, max(n * 50, 500))
        best = np.argpartition(flat, flat.size - k)[flat.size - k:] if k < flat.size else np.arange(flat.size)
        order = best[np.argsort(flat[best], kind="stable")[::-1]]
        picked: list[tuple[float, int, int]] = []
        cols = g.shape[1]
        for i in order:
            v = flat[i]
            if not np.isfinite(v):
                break
            r, c = divmod(int(i), cols)
            if all(max(abs(r - pr), abs(c - pc)) >= min_separation for _, pr, pc in picked):
                picked.append((float(v), r, c))
                if len(picked) >= n:
                    break
        return picked
