"""Synthetic H&E-like slides with known tumour regions, for the demo, tests and benchmarks.

The texture is procedural and deterministic: any region at any resolution is rendered from
hashes of absolute level-0 coordinates, so a 40,000 x 40,000 px pyramidal TIFF is written tile
by tile with bounded memory, and tests can render the exact ground truth of any region.

Appearance (physical sizes in microns, so a 0.25 um/px slide looks like a 0.5 um/px one at
half the magnification): white glass; tissue blobs of pink eosin stroma with sparse small dark
nuclei; tumour regions packed with large, dark purple hematoxylin nuclei on a purple-tinted
background.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ConfigError
from engine.fileio import atomic_path
from engine.jobs import CancelToken, ProgressCallback, ProgressEvent, check_cancel, report
from engine.slides.base import ArrayReader

# Optical density of one unit of each stain per RGB channel: eosin alone gives pink stroma
# (~235, 160, 195), hematoxylin alone dark purple nuclei (~77, 51, 140).
EOSIN_OD = np.array([0.08, 0.47, 0.27], dtype=np.float32)
HEMATOXYLIN_OD = np.array([1.2, 1.6, 0.6], dtype=np.float32)
GLASS_RGB = 250
# The label image carries a fake patient identifier so tests can check that it is never exported.
FAKE_PATIENT_ID = "SYNTH-PATIENT-0001"


@dataclass(frozen=True, slots=True)
class Ellipse:
    """A rotated ellipse in level-0 pixels.

    Attributes:
        cx, cy: centre.
        rx, ry: semi-axes.
        angle_deg: rotation of the x semi-axis, counter-clockwise in image coordinates.
    """

    cx: float
    cy: float
    rx: float
    ry: float
    angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if not (self.rx > 0 and self.ry > 0):
            raise ConfigError("ellipse semi-axes must be positive")

    def radial(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Normalised radius (1 on the boundary) at the grid ``ys[:, None], xs[None, :]``."""
        a = math.radians(self.angle_deg)
        ca, sa = math.cos(a), math.sin(a)
        dx = (xs - self.cx)[None, :].astype(np.float32)
        dy = (ys - self.cy)[:, None].astype(np.float32)
        u = (dx * ca + dy * sa) / self.rx
        v = (-dx * sa + dy * ca) / self.ry
        return np.sqrt(u * u + v * v)

    def bbox(self, margin: float = 1.0) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` bounding box, semi-axes scaled by ``margin``."""
        r = max(self.rx, self.ry) * margin
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def to_dict(self) -> dict[str, float]:
        return {"cx": self.cx, "cy": self.cy, "rx": self.rx, "ry": self.ry, "angle_deg": self.angle_deg}


# ------------------------------------------------------------------------------------ noise


def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic ``uint32`` hash of integer lattice coordinates (broadcasting)."""
    with np.errstate(over="ignore"):
        h = (ix.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * np.uint32(0x8DA6B343)
        h = h ^ (iy.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * np.uint32(0xD8163841)
        h ^= np.uint32((salt * 0xCB1AB31F) & 0xFFFFFFFF)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x7FEB352D)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x846CA68B)
        h ^= h >> np.uint32(16)
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """Map a ``uint32`` hash to floats in [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _runs(idx: np.ndarray, n: int) -> np.ndarray:
    """Run lengths of a non-decreasing index array starting at 0 (for ``np.repeat`` gathers)."""
    return np.bincount(idx, minlength=n)


def _value_noise(xs: np.ndarray, ys: np.ndarray, scale: float, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1) on the grid ``(len(ys), len(xs))``; features ~``scale`` px wide.

    ``xs`` and ``ys`` must be increasing (pixel centres), which turns the lattice gathers into
    ``np.repeat`` copies.
    """
    u = xs / scale
    v = ys / scale
    iu = np.floor(u).astype(np.int64)
    iv = np.floor(v).astype(np.int64)
    fu = (u - iu).astype(np.float32)
    fv = (v - iv).astype(np.float32)
    fu = fu * fu * (3 - 2 * fu)
    fv = fv * fv * (3 - 2 * fv)
    ux = np.arange(iu[0], iu[-1] + 2)
    vy = np.arange(iv[0], iv[-1] + 2)
    table = _unit(_hash(ux[None, :], vy[:, None], salt))  # (ny, nx)
    a = iu - ux[0]
    # interpolate along x on the few lattice rows, then expand rows along y
    rows = table[:, a] * (1 - fu) + table[:, a + 1] * fu  # (ny, W)
    b = iv - vy[0]
    counts = _runs(b, len(vy))
    top = np.repeat(rows, counts, axis=0)
    bottom = np.repeat(rows[1:], counts[:-1], axis=0)
    return top * (1 - fv)[:, None] + bottom * fv[:, None]


@dataclass(frozen=True, slots=True)
class _NucleusLayer:
    """Nuclei on a jittered grid: at most one per cell, drawn from its own cell only."""

    cell_um: float
    presence: float
    r_min_um: float
    r_max_um: float
    density: float
    salt: int
    offset_um: tuple[float, float] = (0.0, 0.0)


_STROMA_NUCLEI = (_NucleusLayer(14.0, 0.22, 1.6, 2.8, 1.25, 11),)
_TUMOUR_NUCLEI = (
    _NucleusLayer(12.0, 0.9, 3.4, 4.8, 1.05, 21),
    _NucleusLayer(15.0, 0.55, 2.8, 4.2, 0.95, 31, (5.0, 9.0)),
)


def _nuclei(xs: np.ndarray, ys: np.ndarray, layer: _NucleusLayer, mpp: float, pixel_um: float, seed: int) -> np.ndarray:
    """Hematoxylin density ``(len(ys), len(xs))`` of one nucleus layer.

    Disc edges are softened over one output pixel (antialiasing for lower pyramid levels);
    when a pixel is larger than a cell, the layer's mean density is used instead.
    """
    c = layer.cell_um / mpp
    if pixel_um >= layer.cell_um:
        r_mean = (layer.r_min_um + layer.r_max_um) / 2
        mean = layer.presence * math.pi * r_mean**2 / layer.cell_um**2 * layer.density
        return np.full((ys.size, xs.size), mean, dtype=np.float32)
    ox, oy = layer.offset_um[0] / mpp, layer.offset_um[1] / mpp
    gx = (xs - ox) / c
    gy = (ys - oy) / c
    ix = np.floor(gx).astype(np.int64)
    iy = np.floor(gy).astype(np.int64)
    cx = np.arange(ix.min(), ix.max() + 1)[None, :]
    cy = np.arange(iy.min(), iy.max() + 1)[:, None]
    salt = layer.salt + 1000 * seed
    r = (layer.r_min_um + (layer.r_max_um - layer.r_min_um) * _unit(_hash(cx, cy, salt + 1))) / mpp
    # jitter keeps the disc inside its cell where possible, so only the own cell is checked
    room = np.maximum(c / 2 - r, 0.0)
    params = np.stack(
        [
            (_unit(_hash(cx, cy, salt + 2)) * 2 - 1) * room,
            (_unit(_hash(cx, cy, salt + 3)) * 2 - 1) * room,
            r,
            np.where(_unit(_hash(cx, cy, salt)) < layer.presence, np.float32(layer.density), np.float32(0.0)),
        ]
    ).astype(np.float32)
    # pixels of one cell are contiguous runs along x and y: gather by repeating
    params = np.repeat(params, _runs(iy - cy[0, 0], cy.shape[0]), axis=1)
    jx, jy, rr, dens = np.repeat(params, _runs(ix - cx[0, 0], cx.shape[1]), axis=2)
    fx = ((gx - ix) * c - c / 2).astype(np.float32)  # pixel offset from its cell centre
    fy = ((gy - iy) * c - c / 2).astype(np.float32)
    dx = fx[None, :] - jx
    dy = fy[:, None] - jy
    # (r^2 - d^2) / 2r ~ r - d near the rim: a one-pixel soft edge without a square root
    pix = np.float32(max(pixel_um / mpp, 1.0))
    cover = (rr * rr - dx * dx - dy * dy) / (2 * pix * rr) + np.float32(0.5)
    np.clip(cover, 0.0, 1.0, out=cover)
    return cover * dens


_LUT: np.ndarray | None = None
_H_STEPS = 100.0  # LUT code units per unit hematoxylin density
_E_STEPS = 200.0  # LUT code units per unit eosin density
_GLASS_CODE = 255 * 256 + 255


def _colour_lut() -> np.ndarray:
    """``(65536, 3)`` uint8 RGB for code ``h * 256 + e`` (Beer-Lambert stain mix); the last code is glass."""
    global _LUT
    if _LUT is None:
        h = (np.arange(256, dtype=np.float32) / _H_STEPS)[:, None, None]
        e = (np.arange(256, dtype=np.float32) / _E_STEPS)[None, :, None]
        lut = np.clip(np.exp(-(h * HEMATOXYLIN_OD + e * EOSIN_OD)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        lut = lut.reshape(-1, 3)
        lut[_GLASS_CODE] = GLASS_RGB
        _LUT = lut
    return _LUT


# ------------------------------------------------------------------------------------ texture


@dataclass(frozen=True, slots=True)
class SyntheticTexture:
    """The procedural slide: regions plus the physical scale.

    Attributes:
        width, height: level-0 size in pixels.
        mpp: microns per level-0 pixel the texture is drawn at.
        tissue_regions: tissue blobs (their boundary is made irregular by noise).
        tumour_regions: tumour areas; tumour is drawn only where there is tissue.
        seed: varies the noise and the nuclei.
    """

    width: int
    height: int
    mpp: float
    tissue_regions: tuple[Ellipse, ...]
    tumour_regions: tuple[Ellipse, ...]
    seed: int = 0

    def _tissue_and_tumour(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boolean ``(len(ys), len(xs))`` masks at the given level-0 pixel-centre coordinates."""
        shape = (ys.size, xs.size)
        tissue = np.zeros(shape, dtype=bool)
        x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
        wobble: np.ndarray | None = None
        for k, e in enumerate(self.tissue_regions):
            bx0, by0, bx1, by1 = e.bbox(1.25)
            if bx1 < x0 or bx0 > x1 or by1 < y0 or by0 > y1:
                continue
            if wobble is None:
                # one noise field for the whole slide (its scale must not depend on the tile)
                scale = max(min(self.width, self.height) / 16, 8.0)
                wobble = (_value_noise(xs, ys, scale, 7 + 1000 * self.seed) - 0.5) * 0.35
            tissue |= e.radial(xs, ys) + wobble * (1 + 0.2 * k) < 1.0
        tumour = np.zeros(shape, dtype=bool)
        if tissue.any():
            for e in self.tumour_regions:
                bx0, by0, bx1, by1 = e.bbox(1.0)
                if bx1 < x0 or bx0 > x1 or by1 < y0 or by0 > y1:
                    continue
                tumour |= e.radial(xs, ys) < 1.0
            tumour &= tissue
        return tissue, tumour

    def render(self, x0: float, y0: float, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        """Render a region.

        Args:
            x0, y0: top-left corner in level-0 pixels.
            width, height: output size in pixels.
            downsample: level-0 pixels per output pixel.

        Returns:
            ``uint8`` RGB ``(height, width, 3)``.
        """
        xs = x0 + (np.arange(width, dtype=np.float64) + 0.5) * downsample
        ys = y0 + (np.arange(height, dtype=np.float64) + 0.5) * downsample
        tissue, tumour = self._tissue_and_tumour(xs, ys)
        if not tissue.any():
            return np.full((height, width, 3), GLASS_RGB, dtype=np.uint8)
        um = self.mpp
        pixel_um = downsample * um
        seed = self.seed
        # eosin: patchy at ~150 um, fibrous grain at ~8 um (stretched along x)
        eos = 0.55 + 0.5 * (_value_noise(xs, ys, 150.0 / um, 101 + 1000 * seed) - 0.5)
        if pixel_um < 8.0:
            eos += 0.3 * (_value_noise(xs * 0.35, ys, 8.0 / um, 103 + 1000 * seed) - 0.5)
        any_tumour = bool(tumour.any())
        all_tumour = any_tumour and bool(tumour[tissue].all())
        hem = np.float32(0.03) + np.float32(0.22) * tumour if any_tumour else np.full(tissue.shape, 0.03, np.float32)
        if any_tumour:
            eos -= np.float32(0.12) * tumour
        if not all_tumour:
            stroma_n = _nuclei(xs, ys, _STROMA_NUCLEI[0], um, pixel_um, seed)
            for layer in _STROMA_NUCLEI[1:]:
                np.maximum(stroma_n, _nuclei(xs, ys, layer, um, pixel_um, seed), out=stroma_n)
            hem += stroma_n * ~tumour if any_tumour else stroma_n
        if any_tumour:
            tum_n = _nuclei(xs, ys, _TUMOUR_NUCLEI[0], um, pixel_um, seed)
            for layer in _TUMOUR_NUCLEI[1:]:
                np.maximum(tum_n, _nuclei(xs, ys, layer, um, pixel_um, seed), out=tum_n)
            hem += tum_n * tumour
        hq = np.clip(hem * _H_STEPS + 0.5, 0, 254).astype(np.int32)
        eq = np.clip(eos * _E_STEPS + 0.5, 10, 255).astype(np.int32)
        code = np.where(tissue, hq * 256 + eq, _GLASS_CODE)
        return _colour_lut().take(code.ravel(), axis=0).reshape(height, width, 3)

    def masks(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Tissue and tumour masks ``(rows, cols)`` sampled at the centres of a grid covering the slide."""
        rows, cols = shape
        xs = (np.arange(cols, dtype=np.float64) + 0.5) * (self.width / cols)
        ys = (np.arange(rows, dtype=np.float64) + 0.5) * (self.height / rows)
        return self._tissue_and_tumour(xs, ys)


# ------------------------------------------------------------------------------------ slide


@dataclass(frozen=True, slots=True, eq=False)
class SyntheticSlide:
    """A synthetic slide (written to ``path`` or in memory) and its ground truth.

    Attributes:
        path: the TIFF file, or ``None`` for an in-memory slide.
        width, height: level-0 size in pixels.
        mpp: microns per level-0 pixel of the texture (recorded in the file only for the
            ``"aperio"`` flavour).
        mpp_in_file: whether a reader finds the mpp in the file.
        flavour: ``"aperio"`` or ``"generic"``.
        level_dimensions: ``(width, height)`` per level written.
        texture: the procedural texture (regions in level-0 pixels).
        label_text: text on the label image, ``None`` when there is no label.
        seconds: time taken to write the file.
    """

    path: Path | None
    width: int
    height: int
    mpp: float
    mpp_in_file: bool
    flavour: str
    level_dimensions: tuple[tuple[int, int], ...]
    texture: SyntheticTexture
    label_text: str | None = None
    seconds: float = 0.0

    @property
    def tumour_regions(self) -> tuple[Ellipse, ...]:
        return self.texture.tumour_regions

    @property
    def tissue_regions(self) -> tuple[Ellipse, ...]:
        return self.texture.tissue_regions

    def render_region(self, x0: float, y0: float, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        """Exact pixels of a region (before compression); see :meth:`SyntheticTexture.render`."""
        return self.texture.render(x0, y0, width, height, downsample)

    def _grid_shape(self, shape_or_downsample: tuple[int, int] | float) -> tuple[int, int]:
        if isinstance(shape_or_downsample, tuple):
            return (int(shape_or_downsample[0]), int(shape_or_downsample[1]))
        ds = float(shape_or_downsample)
        return (max(1, math.ceil(self.height / ds)), max(1, math.ceil(self.width / ds)))

    def tumour_mask(self, shape_or_downsample: tuple[int, int] | float) -> np.ndarray:
        """Ground-truth tumour ``bool`` mask.

        Args:
            shape_or_downsample: ``(rows, cols)`` of a grid covering the slide, or a downsample
                (level-0 px per mask px) giving ``ceil(H/ds) x ceil(W/ds)``.
        """
        return self.texture.masks(self._grid_shape(shape_or_downsample))[1]

    def tissue_mask(self, shape_or_downsample: tuple[int, int] | float) -> np.ndarray:
        """Ground-truth tissue ``bool`` mask; same grid rules as :meth:`tumour_mask`."""
        return self.texture.masks(self._grid_shape(shape_or_downsample))[0]

    def tumour_fraction(self, level0_xy: np.ndarray, tile_size_level0: float, samples: int = 8) -> np.ndarray:
        """Fraction of tumour in square tiles, sampled on a ``samples x samples`` grid per tile.

        Args:
            level0_xy: ``(N, 2)`` tile top-left corners in level-0 pixels.
            tile_size_level0: tile side in level-0 pixels.

        Returns:
            ``float32`` ``(N,)`` in 0-1 (e.g. to score a heatmap against the truth).
        """
        xy = np.asarray(level0_xy, dtype=np.float64).reshape(-1, 2)
        offs = (np.arange(samples) + 0.5) * (tile_size_level0 / samples)
        out = np.empty(len(xy), dtype=np.float32)
        for i, (x, y) in enumerate(xy):
            _, tum = self.texture._tissue_and_tumour(x + offs, y + offs)
            out[i] = tum.mean()
        return out

    def array_reader(self, levels: int = 3) -> ArrayReader:
        """The whole slide rendered into an :class:`ArrayReader` (small slides only)."""
        img = self.render_region(0, 0, self.width, self.height)
        return ArrayReader(img, mpp=self.mpp if self.mpp_in_file else None, levels=levels, name="synthetic")


def default_regions(width: int, height: int, seed: int = 0) -> tuple[tuple[Ellipse, ...], tuple[Ellipse, ...]]:
    """Two tissue blobs covering about half the slide and one tumour ellipse inside the first."""
    rng = np.random.default_rng(seed)
    w, h = float(width), float(height)
    t1 = Ellipse(w * 0.36, h * 0.5, w * 0.27, h * 0.36, float(rng.uniform(-20, 20)))
    t2 = Ellipse(w * 0.76, h * 0.45, w * 0.16, h * 0.3, float(rng.uniform(-30, 30)))
    tumour = Ellipse(t1.cx + w * 0.04, t1.cy - h * 0.04, w * 0.11, h * 0.13, float(rng.uniform(0, 180)))
    return (t1, t2), (tumour,)


def make_texture(
    width: int,
    height: int,
    mpp: float = 0.5,
    seed: int = 0,
    tumour_regions: Sequence[Ellipse] | None = None,
    tissue_regions: Sequence[Ellipse] | None = None,
) -> SyntheticTexture:
    """Build a :class:`SyntheticTexture` with default regions where none are given."""
    if width < 1 or height < 1:
        raise ConfigError("synthetic slide size must be positive")
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ConfigError("synthetic slide mpp must be positive")
    d_tissue, d_tumour = default_regions(width, height, seed)
    return SyntheticTexture(
        width=int(width),
        height=int(height),
        mpp=float(mpp),
        tissue_regions=tuple(d_tissue if tissue_regions is None else tissue_regions),
        tumour_regions=tuple(d_tumour if tumour_regions is None else tumour_regions),
        seed=int(seed),
    )


def render_region(
    x0: float,
    y0: float,
    width: int,
    height: int,
    downsample: float = 1.0,
    *,
    slide_size: tuple[int, int] = (4096, 3072),
    mpp: float = 0.5,
    seed: int = 0,
    tumour_regions: Sequence[Ellipse] | None = None,
    tissue_regions: Sequence[Ellipse] | None = None,
) -> np.ndarray:
    """Render a region of the synthetic slide that :func:`write_synthetic_slide` would write.

    Pixels outside ``slide_size`` are rendered too (the texture is unbounded); readers show
    them as white.

    Returns:
        ``uint8`` RGB ``(height, width, 3)``.
    """
    tex = make_texture(slide_size[0], slide_size[1], mpp, seed, tumour_regions, tissue_regions)
    return tex.render(x0, y0, width, height, downsample)


def _level_dimensions(width: int, height: int, levels: int | None) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while True:
        w, h = dims[-1]
        if levels is not None and len(dims) >= levels:
            break
        if levels is None and max(w, h) <= 1024:
            break
        if w < 2 or h < 2:
            break
        dims.append((max(1, w // 2), max(1, h // 2)))
    return dims


def _label_image(text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (400, 300), (236, 236, 228))
    draw = ImageDraw.Draw(img)
    draw.rectangle((12, 12, 388, 288), outline=(40, 40, 40), width=3)
    draw.text((30, 60), "MetaScope synthetic slide", fill=(0, 0, 0))
    draw.text((30, 120), f"Patient: {text}", fill=(0, 0, 0))
    draw.text((30, 180), "H&E  block A1", fill=(0, 0, 0))
    return np.asarray(img)


@contextmanager
def _shutdown(pool: ThreadPoolExecutor | None) -> Iterator[None]:
    try:
        yield
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def write_synthetic_slide(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    mpp: float = 0.5,
    flavour: str = "aperio",
    tile: int = 256,
    compression: str = "jpeg",
    seed: int = 0,
    tumour_regions: Sequence[Ellipse] | None = None,
    tissue_regions: Sequence[Ellipse] | None = None,
    with_label: bool = True,
    *,
    levels: int | None = None,
    quality: int = 90,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SyntheticSlide:
    """Write a pyramidal tiled TIFF with a synthetic H&E-like texture.

    Every level is a top-level tiled page (OpenSlide reads levels stored as SubIFDs only at
    level 0), each half the size of the previous one, rendered directly from the procedural
    texture at that resolution; the file is written tile by tile (bounded memory) to a
    temporary name and renamed when complete.

    Args:
        path: output ``.svs`` / ``.tif`` file.
        width, height: level-0 size in pixels.
        mpp: microns per level-0 pixel of the texture.
        flavour: ``"aperio"`` (OpenSlide reads it as SVS with mpp, objective power and a label)
            or ``"generic"`` (a generic tiled TIFF without mpp or associated images).
        tile: tile side in pixels (multiple of 16).
        compression: ``"jpeg"``, ``"zlib"`` (lossless, for exact tests), ``"lzw"`` or ``"none"``.
        seed: texture seed.
        tumour_regions, tissue_regions: ellipses in level-0 pixels; defaults from
            :func:`default_regions`. Pass ``tissue_regions=()`` for a blank slide.
        with_label: add a ``label`` associated image with a fake patient id (Aperio flavour).
        levels: number of pyramid levels; by default halve until the longer side is <= 1024.
        quality: JPEG quality.
        workers: threads rendering tiles (default: the CPU count, at most 8).
        progress: receives ``ProgressEvent(stage="synthetic", step=tile rows done)``.
        cancel: checked per row of tiles.

    Returns:
        The :class:`SyntheticSlide` with its ground truth.

    Raises:
        ConfigError: invalid arguments.
        OutputError: the file cannot be written.
    """
    import tifffile

    if flavour not in ("aperio", "generic"):
        raise ConfigError(f"flavour must be 'aperio' or 'generic', got {flavour!r}")
    if tile < 16 or tile % 16:
        raise ConfigError("tile must be a positive multiple of 16")
    comp = {"jpeg": "jpeg", "zlib": "zlib", "lzw": "lzw", "none": None}
    if compression not in comp:
        raise ConfigError(f"compression must be one of {', '.join(comp)}, got {compression!r}")
    texture = make_texture(width, height, mpp, seed, tumour_regions, tissue_regions)
    dims = _level_dimensions(int(width), int(height), levels)
    aperio = flavour == "aperio"
    label_text = FAKE_PATIENT_ID if (with_label and aperio) else None
    rows_total = sum(math.ceil(h / tile) for _, h in dims)
    # BigTIFF once the uncompressed pixels could pass the 4 GiB offset limit
    bigtiff = sum(w * h for w, h in dims) * 3 > 2**31
    app_mag = max(1, round(10.0 / mpp))
    t_start = time.perf_counter()
    rows_done = 0

    def tiles(level: int) -> Iterator[np.ndarray]:
        nonlocal rows_done
        lw, lh = dims[level]
        ds_x, ds_y = width / lw, height / lh
        ds = (ds_x + ds_y) / 2
        for ty in range(0, lh, tile):
            check_cancel(cancel)
            th = min(tile, lh - ty)

            def render(tx: int, ty: int = ty, th: int = th) -> np.ndarray:
                return texture.render(tx * ds_x, ty * ds_y, min(tile, lw - tx), th, ds)

            # one row of tiles at a time: numpy releases the GIL, memory stays one row
            xs = range(0, lw, tile)
            row = list(pool.map(render, xs)) if pool is not None else [render(tx) for tx in xs]
            rows_done += 1
            report(progress, ProgressEvent("synthetic", rows_done, rows_total, f"writing level {level}"))
            yield from row

    def description(level: int) -> str | None:
        if not aperio:
            return None
        lw, lh = dims[level]
        q = f"{compression.upper()}/RGB Q={quality}" if compression == "jpeg" else f"{compression.upper()}/RGB"
        size = f"{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})" if level == 0 else f"{width}x{height} -> {lw}x{lh}"
        return (
            f"Aperio Image Library v12.0.15 \r\n{size} {q}|AppMag = {app_mag}|StripeWidth = 2048"
            f"|ScanScope ID = SYNTHETIC|Filename = synthetic-{seed}|Title = MetaScope synthetic slide"
            f"|MPP = {mpp:g}|Left = 0|Top = 0"
        )

    extra: dict[str, object] = {}
    if compression == "jpeg":
        extra["compressionargs"] = {"level": int(quality)}
    n_workers = max(1, min(int(workers) if workers else (os.cpu_count() or 1), 8))
    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="synthetic") if n_workers > 1 else None
    with (
        _shutdown(pool),
        atomic_path(path) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw,
    ):
        for level, (lw, lh) in enumerate(dims):
            tw.write(
                tiles(level),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=comp[compression],
                description=description(level),
                metadata=None,
                subfiletype=0 if level == 0 else 1,
                software=False,
                **extra,
            )
        if label_text is not None:
            label = _label_image(label_text)
            tw.write(
                label,
                photometric="rgb",
                compression="zlib",
                description=f"Aperio Image Library v12.0.15\nlabel {label.shape[1]}x{label.shape[0]}",
                metadata=None,
                subfiletype=1,
                software=False,
            )
    return SyntheticSlide(
        path=Path(path),
        width=int(width),
        height=int(height),
        mpp=float(mpp),
        mpp_in_file=aperio,
        flavour=flavour,
        level_dimensions=tuple(dims),
        texture=texture,
        label_text=label_text,
        seconds=time.perf_counter() - t_start,
    )


def make_array_slide(
    width: int,
    height: int,
    mpp: float | None = 0.5,
    seed: int = 0,
    tumour_regions: Sequence[Ellipse] | None = None,
    tissue_regions: Sequence[Ellipse] | None = None,
    levels: int = 3,
) -> tuple[ArrayReader, SyntheticSlide]:
    """An in-memory synthetic slide (for fast tests) and its ground truth.

    Args:
        mpp: resolution the reader reports (``None`` for a slide without mpp; the texture is
            then drawn at 0.5 um/px).
    """
    texture = make_texture(width, height, mpp or 0.5, seed, tumour_regions, tissue_regions)
    reader = ArrayReader(texture.render(0, 0, width, height), mpp=mpp, levels=levels, name="synthetic")
    truth = SyntheticSlide(
        path=None,
        width=int(width),
        height=int(height),
        mpp=float(mpp or 0.5),
        mpp_in_file=mpp is not None,
        flavour="array",
        level_dimensions=reader.info.level_dimensions,
        texture=texture,
    )
    return reader, truth
